"""Running the command line in tests, and what a bad input must look like there."""

from __future__ import annotations

from typer.testing import CliRunner

from tedloc.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, ["--log-level", "WARNING", *map(str, args)])


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code != 0, exactly one ``error:`` line containing every needle, no traceback."""
    output = result.output
    assert result.exit_code != 0, output
    # An exception the CLI did not turn into a message would show up here instead of SystemExit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]
