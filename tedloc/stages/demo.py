"""The demo: text-embed, pseudo-labels, train and evaluate on the bundled demo data.

Each stage runs with its own config (defaults, updated by the matching section of a
``--config`` file), with the dataset set to the demo's; ``quick`` shrinks the run for
smoke tests.  Every stage resumes from what is on disk, so a finished demo reruns in
seconds and an interrupted one carries on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tedloc.configs import STAGES
from tedloc.configs.demo import Config

log = logging.getLogger(__name__)

#: The columns of the demo's summary table (keys of evaluate's ``results.json``).
SUMMARY_COLUMNS = {
    "max_box_acc_v2": "MaxBoxAccV2",
    "top1_loc": "Top-1 Loc",
    "gt_known_loc": "GT-known Loc",
    "pxap": "PxAP",
    "top1_cls": "Top-1 Cls",
}


def stage_configs(config: Config, sections: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The config of every stage for this demo: stage defaults ← demo settings ← ``sections``."""
    import importlib

    sections = sections or {}
    data = {"dataset": config.dataset, "metadata": config.metadata, "class_names": config.class_names}
    demo_values: dict[str, dict[str, Any]] = {
        "text-embed": dict(data),
        "pseudo-labels": {**data, "split": "train"},
        "train": {},
        "evaluate": {**data, "split": "test", **({"name": config.name} if config.name else {})},
    }
    if config.quick:
        demo_values["pseudo-labels"]["limit"] = config.quick_train_images
        demo_values["train"]["epochs"] = config.quick_epochs
        demo_values["evaluate"]["limit"] = config.quick_test_images
    configs = {}
    for stage, (config_module, _) in STAGES.items():
        cls = importlib.import_module(config_module).Config
        section = stage.replace("-", "_")
        values = {**demo_values[stage], **dict(sections.get(section, {}))}
        configs[stage] = cls.from_dict(values, source=f"demo [{section}]")
    return configs


def run(config: Config, *, workdir: Path, overwrite: bool = False,
        sections: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Run the four stages; return evaluate's results (``results.json`` as a dict, with
    ``stage_seconds`` and the evaluation's folder as ``evaluation_dir``)."""
    import importlib

    from tedloc.artifacts.evaluate import read_results

    workdir = Path(workdir)
    timings: dict[str, float] = {}
    manifest = None
    for stage, stage_config in stage_configs(config, sections).items():
        start = time.perf_counter()
        log.info("demo: stage %s", stage)
        manifest = importlib.import_module(STAGES[stage][1]).run(stage_config, workdir=workdir, overwrite=overwrite)
        timings[stage] = time.perf_counter() - start
        log.info("demo: %s took %.1f s", stage, timings[stage])
    evaluation = Path(manifest).parent  # evaluate runs last: <workdir>/evaluate/<name>/manifest.json
    results = read_results(evaluation)
    results["stage_seconds"] = timings
    results["evaluation_dir"] = str(evaluation)
    return results


def summary_table(results: Mapping[str, Any]) -> str:
    """Markdown table: each method (TeD-Loc, the CAM baseline, the centre prior) × the demo's
    headline metrics, the margin of TeD-Loc over the CAM baseline, then the by-size table
    (method × box-fraction group)."""
    from tedloc.artifacts.evaluate import group_table, ordered_methods

    header = ["Method", "map uses GT label"] + list(SUMMARY_COLUMNS.values())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, method in ordered_methods(results):
        overall = method["overall"]
        cells = []
        for key in SUMMARY_COLUMNS:
            value = overall.get(key)
            cells.append("–" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join([method["label"], "yes" if method.get("uses_label") else "no", *cells]) + " |")
    methods = results["methods"]
    if "tedloc" in methods and "cam_baseline" in methods:
        ours, base = methods["tedloc"], methods["cam_baseline"]
        margins = [f"{title} {ours['overall'][key] - base['overall'][key]:+.1f}"
                   for key, title in SUMMARY_COLUMNS.items()
                   if ours["overall"].get(key) is not None and base["overall"].get(key) is not None]
        lines.append(f"\n{ours['label']} minus {base['label']}: " + ", ".join(margins))
    by_size = group_table(results, "by_box_fraction", digits=1)
    if by_size:
        lines += ["", "By object size (largest GT box / image area; Loc at each method's stored threshold):", ""]
        lines += by_size
    return "\n".join(lines)
