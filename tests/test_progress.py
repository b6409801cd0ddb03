"""Progress off a terminal is a log line every tenth of the loop, never a redrawn bar."""

from __future__ import annotations

import io
import logging

from tedloc.pipeline.progress import LogProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_a_line_every_tenth(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="tedloc.progress"):
        with progress(total=200, desc="evaluate: maps", unit="img", stream=stream) as bar:
            assert isinstance(bar, LogProgress)
            for _ in range(100):
                bar.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10, lines  # 10 %, 20 %, ... 90 %, then the end
    assert lines[0].startswith("evaluate: maps: 20/200 img (10%), ") and "s left" in lines[0]
    assert lines[-1].startswith("evaluate: maps: 200/200 img (100%), ") and "took" in lines[-1]
    assert stream.getvalue() == ""  # nothing drawn


def test_uneven_steps_and_iterables(caplog):
    with caplog.at_level(logging.INFO, logger="tedloc.progress"):
        items = list(progress(range(7), desc="check test", unit="img", stream=io.StringIO()))
        bar = progress(total=1000, desc="big steps", stream=io.StringIO())
        bar.update(450)  # past 10 % to 40 % at once: one line, not four
        bar.set_postfix(loss="0.123")
        bar.update(550)
        bar.close()
        bar.close()  # once only
    assert items == list(range(7))
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("check test: ") for line in lines) == 7  # 7 items: each passes a tenth
    big = [line for line in lines if line.startswith("big steps")]
    assert len(big) == 2 and "450/1000" in big[0] and big[1].endswith("loss=0.123")


def test_a_terminal_gets_the_bar():
    stream = _Terminal()
    with progress(total=5, desc="maps", unit="img", stream=stream) as bar:
        assert not isinstance(bar, LogProgress)
        bar.update(5)
    assert "maps" in stream.getvalue() and "\r" in stream.getvalue()


def test_disabled_is_silent(caplog):
    with caplog.at_level(logging.INFO, logger="tedloc.progress"):
        with progress(total=3, desc="off", disable=True, stream=io.StringIO()) as bar:
            bar.update(3)
    assert not caplog.records


def test_evaluate_through_the_cli_logs_lines_not_bars(tmp_path):
    from tests.helpers_cli import invoke
    from tests.helpers_data import make_wsol_tree
    from tests.helpers_model import make_model_workdir

    root = make_wsol_tree(tmp_path, splits={"train": 4, "test": 20}, num_classes=2)
    workdir = make_model_workdir(tmp_path / "w", root, pseudo_labels=False)
    result = invoke("--log-level", "INFO", "--workdir", workdir, "stage", "evaluate", "--dataset", root,
                    "--num-workers", "0", "--device", "cpu", "--batch-size", "2", "--num-overlays", "0")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "|█" not in result.output
    maps = [line for line in result.output.splitlines() if "tedloc.progress: evaluate: maps: " in line]
    assert 5 <= len(maps) <= 11 and "20/20 img (100%)" in maps[-1]


def test_slow_items_read_as_seconds_per_item(caplog):
    """Under a second per item the rate reads ``img/s``; slower, ``s/batch`` (not 0.00641 batch/s)."""
    now = [0.0]
    with caplog.at_level(logging.INFO, logger="tedloc.progress"):
        slow = LogProgress(total=4, desc="encode", unit="batch", clock=lambda: now[0])
        for _ in range(4):
            now[0] += 150.0
            slow.update(1)
        slow.close()
        now[0] = 0.0
        fast = LogProgress(total=10, desc="maps", unit="img", clock=lambda: now[0])
        now[0] = 0.5
        fast.update(10)
        fast.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encode: 1/4 batch (25%), 150 s/batch, 450 s left", lines
    assert lines[-2] == "encode: 4/4 batch (100%), 150 s/batch, took 600.0 s", lines
    assert lines[-1] == "maps: 10/10 img (100%), 20 img/s, took 0.5 s", lines
