"""The evaluations of a workdir: one folder per named evaluation under ``<workdir>/evaluate/``.

An evaluation is a finished (or resumable) run of the evaluate stage on one dataset split,
written to ``<workdir>/evaluate/<NAME>/``.  The name defaults to ``<dataset>-<split>``
(``demo-test``, ``CUB_200_2011-test``), so evaluating a second dataset never touches the
first one's results; the same name resumes (or, with other inputs, is refused unless
``--overwrite``).  Workdirs of earlier versions hold one evaluation directly in
``<workdir>/evaluate/``: it is listed as such, and the names of its files and folders
cannot be used as evaluation names.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from tedloc.artifacts.evaluate import RESULTS_JSON, ordered_methods
from tedloc.artifacts.store import MANIFEST, SHARD_DIR
from tedloc.errors import ConfigError

#: The folder of a workdir that holds the evaluations.
EVALUATE_DIR = "evaluate"
#: What a name may hold: it becomes a folder name, and is typed in shells.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
#: Entries of an earlier version's single evaluation in ``evaluate/`` itself.
RESERVED_NAMES = frozenset({SHARD_DIR, "overlays", "scoremaps", MANIFEST, "results.json", "results.md",
                            "predictions.jsonl", "boxacc_curve.png", "index.html"})
#: The headline metrics listed for each evaluation (keys of results.json's ``overall``).
HEADLINE = {"max_box_acc_v2": "MaxBoxAccV2", "top1_loc": "Top-1 Loc", "pxap": "PxAP", "top1_cls": "Top-1 Cls"}


def _safe(text: str) -> str:
    """``text`` with every character a folder name should not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text).strip("._") or "dataset"


def dataset_label(spec: str, metadata: str = "") -> str:
    """A short name of a dataset for evaluation names: ``demo``; a folder's own name (with
    ``--metadata``, that of the metadata folder, e.g. ``CUB`` for ``metadata/CUB``); the last
    part of a Hugging Face name (``hf:user/birds?image=img`` -> ``birds``)."""
    if spec.startswith("hf:"):
        source = spec[3:].partition("?")[0].rstrip("/")
        return _safe(PurePosixPath(source.replace("\\", "/")).stem or source)
    if metadata:
        return _safe(Path(metadata).resolve().name)
    if spec == "demo":
        return "demo"
    return _safe(Path(spec).resolve().name)


def default_name(spec: str, split: str, metadata: str = "") -> str:
    """``<dataset>-<split>``: the evaluation name when none is given."""
    return f"{dataset_label(spec, metadata)}-{_safe(split)}"[:100]


def check_name(name: str) -> str:
    """Refuse a name that cannot be a folder of ``evaluate/`` (ConfigError); return it."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"evaluate: name {name!r} must start with a letter or digit and hold only letters, "
                          "digits and . _ + - (at most 100 characters)")
    if name in RESERVED_NAMES:
        raise ConfigError(f"evaluate: name {name!r} is used by the files of an evaluation; choose another")
    return name


def evaluation_dir(workdir: str | Path, name: str) -> Path:
    """``<workdir>/evaluate/<name>``."""
    return Path(workdir) / EVALUATE_DIR / check_name(name)


def is_legacy(folder: Path) -> bool:
    """Whether ``folder`` (a workdir's ``evaluate/``) is an earlier version's single evaluation."""
    return (folder / MANIFEST).is_file() or (folder / SHARD_DIR).is_dir()


def evaluation_dirs(workdir: str | Path) -> list[Path]:
    """The evaluation folders of a workdir, by name (an earlier version's ``evaluate/``
    itself first): finished ones and resumable ones (shards but no manifest)."""
    root = Path(workdir) / EVALUATE_DIR
    if not root.is_dir():
        return []
    found = [root] if is_legacy(root) else []
    found += sorted(p for p in root.iterdir() if p.is_dir() and p.name not in RESERVED_NAMES
                    and ((p / MANIFEST).is_file() or (p / SHARD_DIR).is_dir()))
    return found


def stage_dirs(workdir: str | Path, is_stage_dir) -> list[Path]:
    """The stage folders of a workdir (``is_stage_dir(path)`` decides), with ``evaluate/``
    replaced by its evaluations."""
    workdir = Path(workdir)
    dirs = [p for p in sorted(workdir.iterdir()) if p.is_dir() and p.name != EVALUATE_DIR and is_stage_dir(p)]
    return dirs + evaluation_dirs(workdir)


@dataclasses.dataclass
class EvaluationSummary:
    """One evaluation of a workdir, for listings: its ``name`` (``evaluate`` for an earlier
    version's single one), folder, whether it finished, what it scored and its headline
    metrics per method (``{method label: {metric key: value}}``)."""

    name: str
    path: Path
    finished: bool
    dataset: str = ""
    split: str = ""
    num_images: int | None = None
    class_agnostic: bool = False
    headline: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def list_evaluations(workdir: str | Path) -> list[EvaluationSummary]:
    """Every evaluation of ``workdir`` (see :func:`evaluation_dirs`), read from its manifest
    and ``results.json``; an unfinished one has only its name and folder."""
    out = []
    for folder in evaluation_dirs(workdir):
        manifest = _read_json(folder / MANIFEST) or {}
        results = _read_json(folder / RESULTS_JSON) if manifest.get("complete") else None
        summary = EvaluationSummary(name=folder.name, path=folder, finished=bool(manifest.get("complete")))
        if results is not None and isinstance(results.get("methods"), dict):
            summary.dataset = str(results.get("dataset", ""))
            summary.split = str(results.get("split", ""))
            summary.num_images = results.get("num_images")
            summary.class_agnostic = bool(results.get("class_agnostic", False))
            for _, method in ordered_methods(results):
                overall = method.get("overall") or {}
                summary.headline[str(method.get("label"))] = {k: overall.get(k) for k in HEADLINE}
        out.append(summary)
    return out


def render_evaluations(workdir: str | Path) -> str:
    """``tedloc inspect WORKDIR``'s list of evaluations, one block per evaluation ('' if none)."""
    summaries = list_evaluations(workdir)
    if not summaries:
        return ""
    lines = [f"evaluations ({len(summaries)}, in {Path(workdir) / EVALUATE_DIR}):"]
    for s in summaries:
        if not s.finished:
            lines.append(f"  {s.name}: not finished (resumable: rerun `tedloc stage evaluate --name {s.name}`)")
            continue
        mode = ", class-agnostic" if s.class_agnostic else ""
        lines.append(f"  {s.name}: {s.dataset} / {s.split}, {s.num_images} images{mode}")
        for label, values in s.headline.items():
            shown = ", ".join(f"{title} {values[key]:.1f}" for key, title in HEADLINE.items()
                              if isinstance(values.get(key), (int, float)))
            lines.append(f"    {label}: {shown or 'no metric computed'}")
    return "\n".join(lines)
