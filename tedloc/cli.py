"""The ``tedloc`` command line (Typer).  Parses options and calls plain functions.

Stage commands are generated from the stage config dataclasses: one ``--option`` per
field, with the field's help text, so defaults are defined once (in ``tedloc.configs``).
Values come from, in increasing priority: the dataclass defaults, the ``--config`` file's
section for the stage, the command-line options actually given.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib
import inspect
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from tedloc.config import field_types, load_config_file
from tedloc.configs import STAGES
from tedloc.errors import TedlocError

log = logging.getLogger("tedloc")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="TeD-Loc weakly supervised object localization: a resumable pipeline of cached stages.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
stage_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Run one stage of the pipeline.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Dataset tools.")
app.add_typer(stage_app, name="stage")
app.add_typer(data_app, name="data")


@dataclasses.dataclass
class GlobalOptions:
    workdir: Path
    config_file: Path | None
    workdir_given: bool


def _configure_logging(level: str) -> None:
    numeric = getattr(logging, level.upper(), None)
    if not isinstance(numeric, int):
        raise typer.BadParameter(f"unknown log level {level!r}", param_hint="--log-level")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    # Third-party libraries are chatty at INFO; keep their warnings only.
    for noisy in ("transformers", "datasets", "h5py", "urllib3", "filelock", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


@app.callback()
def main_callback(
    ctx: typer.Context,
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", "-w", help="Directory of the run's artifacts [default: ./artifacts/<run>]."),
    run: str = typer.Option("default", "--run", help="Run name, used for the default --workdir."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="TOML or JSON file with a table per stage ([train], ...); options override it."),
) -> None:
    _configure_logging(log_level)
    ctx.obj = GlobalOptions(workdir=workdir or Path("artifacts") / run, config_file=config,
                            workdir_given=workdir is not None or run != "default")


_FULL = "free some space, then rerun: finished work is kept and the run resumes from it"
_NOT_WRITABLE = "is the workdir writable? (choose another with --workdir)"
_IN_THE_WAY = "a file stands where a folder is needed, or a folder where a file is: move it, or choose another path"
#: OS errors about the disk or the workdir, reported in one line (others keep their traceback).
_DISK_ERRORS = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL,
                errno.EROFS: _NOT_WRITABLE, errno.EACCES: _NOT_WRITABLE, errno.EPERM: _NOT_WRITABLE,
                errno.ENOTDIR: _IN_THE_WAY, errno.EISDIR: _IN_THE_WAY, errno.EEXIST: _IN_THE_WAY}


def _os_error_line(exc: OSError) -> str:
    """``FILE: reason; hint`` on one line (HDF5's messages span several lines)."""
    where = exc.filename or "workdir"
    reason = os.strerror(exc.errno) if exc.errno else " ".join(str(exc.strerror).split())
    return f"{where}: {reason}; {_DISK_ERRORS[exc.errno]}"


def reports_errors(func):
    """Turn tedloc's errors (and a full disk) into a one-line message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TedlocError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            if exc.errno in _DISK_ERRORS:
                typer.echo(f"error: {_os_error_line(exc)}", err=True)
                raise typer.Exit(1) from None
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted; finished work is kept and the next run resumes from it", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _option_type(tp: Any) -> tuple[Any, bool]:
    """The Typer annotation for a config field type, and whether it is a flag."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return Optional[list[inner]], False
    return Optional[tp], tp is bool


def resolve_config(config_cls: type, ctx: typer.Context, section: str, given: dict[str, Any]):
    """Defaults ← ``--config`` file section ← options given on the command line.

    The file's table is checked on its own first, so that a bad value is blamed on the
    file when it comes from there and on the command line otherwise.
    """
    values: dict[str, Any] = {}
    options: GlobalOptions = ctx.find_root().obj
    if options.config_file is not None:
        values.update(load_config_file(options.config_file).get(section, {}))
        config_cls.from_dict(values, source=f"{options.config_file} [{section}]")
    values.update({k: v for k, v in given.items() if v is not None})
    return config_cls.from_dict(values, source="command line")


def checked_workdir(ctx: typer.Context) -> Path:
    """The run's workdir, refused at once when it is a file or cannot be created."""
    from tedloc.paths import check_workdir

    return check_workdir(ctx.find_root().obj.workdir)


def make_stage_command(stage_name: str, config_module: str, stage_module: str):
    """Build the Typer command of one stage from its config dataclass."""
    config_cls = importlib.import_module(config_module).Config
    section = stage_name.replace("-", "_")
    types_ = field_types(config_cls)

    def command(ctx: typer.Context, overwrite: bool = False, **given: Any) -> None:
        config = resolve_config(config_cls, ctx, section, given)
        workdir = checked_workdir(ctx)
        runner = importlib.import_module(stage_module).run
        path = runner(config, workdir=workdir, overwrite=overwrite)
        typer.echo(f"{stage_name}: done -> {path}")

    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--overwrite",
                                               help="Recompute even if results with another config exist (deletes them).")),
    ]
    for field in dataclasses.fields(config_cls):
        annotation, is_flag = _option_type(types_[field.name])
        flag = "--" + field.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if is_flag else [flag]
        default = field.default
        shown = default if not isinstance(default, tuple) else ", ".join(map(str, default)) or "none"
        help_text = f"{field.metadata.get('help', '')} [default: {shown}]"
        params.append(inspect.Parameter(
            field.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
            default=typer.Option(None, *decls, help=help_text, show_default=False)))
    command.__signature__ = inspect.Signature(params)
    command.__doc__ = (importlib.import_module(config_module).__doc__ or "").strip().split("\n\n")[0]
    return reports_errors(command)


for _name, (_config_module, _stage_module) in STAGES.items():
    try:
        stage_app.command(_name)(make_stage_command(_name, _config_module, _stage_module))
    except ModuleNotFoundError as _exc:  # a stage whose config module does not exist yet
        if _exc.name != _config_module:
            raise


@app.command("inspect")
@reports_errors
def inspect_command(
    path: Path = typer.Argument(..., help="An HDF5 artifact, a stage directory or a whole workdir."),
    image: Optional[str] = typer.Option(None, "--image", help="Render this image id's arrays."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG file for --image."),
    verify: bool = typer.Option(False, "--verify", help="Check every file against its checksum; "
                                "list the damaged or missing ones (exit code 1 if any)."),
) -> None:
    """Describe artifacts: datasets, shapes, dtypes, attributes, config, progress."""
    from tedloc.artifacts.inspect import describe
    from tedloc.artifacts.inspect import verify as verify_files
    from tedloc.artifacts.inspect_image import render_image

    if verify:
        report = verify_files(path)
        typer.echo(report.render())
        if report.problems:
            raise typer.Exit(1)
        return
    if image is not None:
        if out is None:
            raise typer.BadParameter("--image needs --out FILE.png", param_hint="--out")
        written = render_image(path, image, out)
        typer.echo(f"wrote {written}")
        return
    typer.echo(describe(path))


@app.command("predict")
@reports_errors
def predict_command(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Model checkpoint [default: <workdir>/train/model.pt]."),
    out_json: Optional[Path] = typer.Option(None, "--out-json", help="Write the JSON here instead of stdout."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for one overlay PNG per image."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Map threshold for the boxes [default: the one stored in the checkpoint]."),
    on_bad_image: str = typer.Option("fail", "--on-bad-image", help="fail: stop naming the file; skip: go on."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    maps: bool = typer.Option(False, "--maps", help="Also output each image's map (the model's h×w grid)."),
) -> None:
    """Class, score, top-5 and boxes (original pixels) for arbitrary images, as JSON (maps with --maps)."""
    import json

    from tedloc.stages.predict import run_predict

    path = checkpoint or checked_workdir(ctx) / "train" / "model.pt"
    result = run_predict(images, checkpoint=path, out_json=out_json, overlays=overlays, threshold=threshold,
                         on_bad_image=on_bad_image, device=device, maps=maps)
    if out_json is None:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"predict: {len(result['predictions'])} images -> {out_json}", err=True)


@app.command("demo")
@reports_errors
def demo_command(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="Smoke run: a class-balanced slice and fewer epochs."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Dataset spec [default: the [demo] table's, else the bundled demo data]."),
    metadata: Optional[str] = typer.Option(
        None, "--metadata", help="wsolevaluation metadata folder kept apart from the images in --dataset."),
    class_names: Optional[str] = typer.Option(
        None, "--class-names", help="File of class names (one per line in label order, or 'synset,name' lines)."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Evaluation name: results in <workdir>/evaluate/<NAME>/ [default: <dataset>-test, demo-test]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute stages whose results differ."),
) -> None:
    """Run every stage on the bundled demo data and print TeD-Loc next to the CAM baseline and the centre prior."""
    import time

    from tedloc.configs.demo import Config
    from tedloc.paths import check_workdir
    from tedloc.stages.demo import run, summary_table

    options: GlobalOptions = ctx.find_root().obj
    sections = load_config_file(options.config_file) if options.config_file else {}
    # Options given override the [demo] table; options left out must not mask it.
    options_given = {"dataset": dataset, "metadata": metadata, "class_names": class_names, "name": name}
    given = {**({"quick": True} if quick else {}), **{k: v for k, v in options_given.items() if v is not None}}
    if "demo" in sections:
        Config.from_dict(sections["demo"], source=f"{options.config_file} [demo]")
    config = Config.from_dict({**sections.get("demo", {}), **given}, source="command line")
    default = Path("artifacts") / ("demo-quick" if config.quick else "demo")
    workdir = check_workdir(options.workdir if options.workdir_given else default)
    start = time.perf_counter()
    results = run(config, workdir=workdir, overwrite=overwrite, sections=sections)
    seconds = time.perf_counter() - start
    evaluate_dir = Path(results["evaluation_dir"])
    typer.echo(f"\nTeD-Loc on {results.get('dataset')} / {results.get('split')} "
               f"({results.get('num_images')} images), values in %:\n")
    typer.echo(summary_table(results))
    typer.echo(f"\nfull results: {evaluate_dir / 'results.md'}")
    if (evaluate_dir / "index.html").is_file():
        typer.echo(f"browse:       {evaluate_dir / 'index.html'} (every image, sortable by IoU)")
    typer.echo(f"pictures:     {evaluate_dir / 'overlays'}  and  {evaluate_dir / 'boxacc_curve.png'}")
    typer.echo(f"took {seconds:.1f} s (artifacts in {workdir}; a rerun resumes from them)")


@data_app.command("check")
@reports_errors
def data_check_command(
    dataset: Optional[str] = typer.Argument(None, metavar="[DATASET]",
                                            help="Dataset spec (a folder, 'demo', 'hf:NAME', ...)."),
    dataset_option: Optional[str] = typer.Option(None, "--dataset",
                                                 help="The dataset spec, as the stages spell it (instead of DATASET)."),
    split: list[str] = typer.Option(["train", "test"], "--split", help="Split(s) to check."),
    decode: bool = typer.Option(True, "--decode/--no-decode", help="Decode every image (slower, finds corrupt files)."),
    metadata: Optional[str] = typer.Option(
        None, "--metadata", help="wsolevaluation metadata folder kept apart from the images in DATASET."),
    class_names: Optional[str] = typer.Option(
        None, "--class-names", help="File of class names (one per line in label order, or 'synset,name' lines)."),
) -> None:
    """Validate a dataset: files, ids, labels, boxes; print counts and every problem."""
    from tedloc.data.check import check_dataset

    # The stages take `--dataset`; accepting it here too means a command copied from a stage works.
    if (dataset is None) == (dataset_option is None):
        raise typer.BadParameter("give the dataset once: as DATASET or as --dataset", param_hint="DATASET")
    dataset = dataset if dataset is not None else dataset_option
    report = check_dataset(dataset, splits=split, decode=decode, metadata=metadata, class_names=class_names)
    typer.echo(report.render())
    if report.problems:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="tedloc")


if __name__ == "__main__":
    sys.exit(main())
