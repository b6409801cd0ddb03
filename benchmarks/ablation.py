"""Ablation of TeD-Loc's losses and of the anchors' QR orthogonalization on the demo's val split.

    python benchmarks/ablation.py [--seeds 0 1] [--workdir DIR] [--write benchmarks/RESULTS.md]

Variants (every other setting is the demo's, ``tedloc.stages.demo.stage_configs``):

* L_KD only: ``lambda_p = lambda_i = 0``;
* L_KD + P_CL: ``lambda_i = 0``;
* L_KD + P_CL + I_CL, the full method (the demo's training);
* the full method on anchors that are not orthogonalized (text-embed ``orthogonalize = False``);
* the full method reading images at the training size (train ``inference_scale = 1``; the
  default reads them at twice that size).

The CAM baseline (the pseudo-labels' CAM of the GT class, at their input size) and the centre
prior come with every evaluation; they do not depend on the variant or the seed.  The full
method's evaluations compute the CAM baseline at the model's inference size instead
(evaluate ``baseline_input_size``): the like-for-like row.

Artifacts are shared where the stages' identities allow it: pseudo-labels run once, text-embed
once per ``orthogonalize`` setting (``<workdir>/upstream/``).  Each (variant, seed) run has its
own workdir (``<workdir>/runs/<variant>/seed<k>/``) whose ``text_embed`` and ``pseudo_labels``
are symbolic links to the shared ones; the run calls every stage through the CLI, so the
two upstream stages check that the linked artifact has the identity of the run's own config
(and refuse otherwise: they are never given ``--overwrite``), then train and evaluate (``--split
val``; the test split is never read).  Training records the upstream identities it read, as usual.

Each stage runs in its own process; its wall time and the peak resident memory of its process
tree (sampled every 50 ms) are recorded.  Runs found finished in the workdir return at once
(the stages resume); the report says how many were.  ``<workdir>/ablation.json`` keeps every
number the report is made from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import rss_tree_kb  # noqa: E402

#: The section this script owns in the report (replaced when it exists).
SECTION_TITLE = "## Ablation on the demo's val split"
#: Written by benchmarks/demo.py; sections below it survive the demo's rewrite of the report.
OTHER_MARKER = "<!-- other benchmarks -->"
SPLIT = "val"
#: The evaluation's name: its results are in ``<run>/evaluate/<EVALUATION>/``.
EVALUATION = "demo-val"
#: Metric key of evaluate's results.json -> column title, in table order.
METRICS = {
    "max_box_acc_v2": "MaxBoxAccV2",
    "top1_loc": "Top-1 Loc",
    "gt_known_loc": "GT-known Loc",
    "pxap": "PxAP",
    "top1_cls": "Top-1 Cls",
}
#: Group families of results.json and their keys, in table order.
GROUPS = {
    "by_box_fraction": ("<0.05", "0.05-0.15", "0.15-0.30", ">=0.30"),
    "by_num_boxes": ("1", "2+"),
}
GROUP_TITLES = {"<0.05": "< 0.05", "0.05-0.15": "0.05–0.15", "0.15-0.30": "0.15–0.30",
                ">=0.30": "≥ 0.30", "1": "1 object", "2+": "2+ objects"}
UPSTREAM_STAGES = ("text-embed", "pseudo-labels")
RUN_STAGES = ("text-embed", "pseudo-labels", "train", "evaluate")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One trained configuration: overrides of the demo's train and text-embed configs."""

    key: str
    label: str
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    text_embed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    evaluate: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def upstream(self) -> str:
        """Name of the shared upstream workdir this variant's text-embed lives in."""
        return "qr" if self.text_embed.get("orthogonalize", True) else "no_qr"


VARIANTS: tuple[Variant, ...] = (
    Variant("kd", "L_KD only", train={"lambda_p": 0.0, "lambda_i": 0.0}),
    Variant("kd_p", "L_KD + P_CL", train={"lambda_i": 0.0}),
    # The demo's inference size: Lite0's 224 × the default inference_scale 2.
    Variant("full", "L_KD + P_CL + I_CL (full)", evaluate={"baseline_input_size": 448}),
    Variant("full_no_qr", "full, anchors not orthogonalized", text_embed={"orthogonalize": False}),
    Variant("full_scale1", "full, images at the training size (inference_scale 1)", train={"inference_scale": 1}),
)
#: Rows that come with every evaluation (results.json method key -> row label).
REFERENCE_ROWS = {"cam_baseline": "CAM baseline (GT-known map)", "centre_prior": "Centre prior (no learning)"}
#: The CAM baseline of the full method's evaluations (at the model's inference size).
CAM_AT_INFERENCE = ("cam_at_inference", "CAM baseline at the inference size (448)")
#: (label, variant before, variant after): the differences the paper's ablation speaks about.
COMPARISONS = (
    ("+ P_CL (L_KD + P_CL minus L_KD only)", "kd", "kd_p"),
    ("+ I_CL (full minus L_KD + P_CL)", "kd_p", "full"),
    ("QR orthogonalization (full minus full without it)", "full_no_qr", "full"),
    ("full minus the CAM baseline", "cam_baseline", "full"),
    ("images at 2× the training size (full minus full at inference_scale 1)", "full_scale1", "full"),
    ("full minus the CAM baseline at the inference size", "cam_at_inference", "full"),
)


# --- configs and commands ---------------------------------------------------------------

def run_configs(variant: Variant, seed: int) -> dict[str, Any]:
    """The config of every stage of one (variant, seed) run: the demo's, with the variant's
    overrides, the seed, and evaluate on the val split."""
    from tedloc.configs.demo import Config as DemoConfig
    from tedloc.stages.demo import stage_configs

    configs = stage_configs(DemoConfig())
    overrides = {"text-embed": dict(variant.text_embed), "pseudo-labels": {},
                 "train": {**variant.train, "seed": seed},
                 "evaluate": {**variant.evaluate, "split": SPLIT, "name": EVALUATION}}
    return {stage: dataclasses.replace(config, **overrides[stage]) for stage, config in configs.items()}


def cli_options(config: Any) -> list[str]:
    """The ``tedloc stage`` options that give ``config``: one per field that differs from
    the stage's default (the CLI builds ``--field-name`` and ``--x/--no-x`` from the fields)."""
    default = type(config)()
    options: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value == getattr(default, field.name):
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            for item in value:
                options += [flag, _number(item)]
        else:
            options += [flag, _number(value)]
    return options


def _number(value: Any) -> str:
    """A value as the CLI reads it (``0.0`` as ``0``, so commands read naturally)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def stage_command(workdir: Path, stage: str, config: Any) -> list[str]:
    """argv of ``tedloc -w WORKDIR stage STAGE [options]`` run with this interpreter."""
    return [sys.executable, "-m", "tedloc.cli", "-w", str(workdir), "stage", stage, *cli_options(config)]


def shown_command(stage: str, config: Any) -> str:
    """The command as a reader would type it (``tedloc -w RUN stage ...``)."""
    return " ".join(["tedloc", "-w", "RUN", "stage", stage, *cli_options(config)])


def run_dir(root: Path, variant: Variant, seed: int) -> Path:
    return root / "runs" / variant.key / f"seed{seed}"


def link_upstream(run: Path, root: Path, variant: Variant) -> None:
    """Make ``run/text_embed`` and ``run/pseudo_labels`` links to the shared artifacts
    (relative, so the workdir can be moved whole)."""
    run.mkdir(parents=True, exist_ok=True)
    targets = {"text_embed": root / "upstream" / variant.upstream / "text_embed",
               "pseudo_labels": root / "upstream" / "qr" / "pseudo_labels"}
    for name, target in targets.items():
        link = run / name
        relative = Path(os.path.relpath(target, run))
        if link.is_symlink() and Path(os.readlink(link)) == relative:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise SystemExit(f"{link}: exists and is not a link to the shared {name}; use another --workdir")
        link.symlink_to(relative, target_is_directory=True)


# --- running ------------------------------------------------------------------------------

def run_stage(command: Sequence[str], log_path: Path) -> dict[str, float]:
    """Run one stage process, its output to ``log_path``; wall seconds and peak RSS (MB) of
    its process tree.  Stops the benchmark when the stage fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        peak_kb = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_kb
            while not done.is_set():
                peak_kb = max(peak_kb, rss_tree_kb(proc.pid))
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024}


def patch_classifier_untouched(run: Path) -> bool:
    """Whether the trained model's patch classifier g still has the weights it was initialized
    with (the head is built from the seed exactly as training builds it): what a run in which
    no loss reaches g must show."""
    import torch

    from tedloc.artifacts.checkpoint import load_checkpoint
    from tedloc.pipeline.model import HeadConfig, TedLocHead

    state = load_checkpoint(run / "train" / "model.pt", map_location="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(state["config"]["seed"]))
        initial = TedLocHead(HeadConfig.from_dict(dict(state["head_config"])), state["anchors"])
    trained = {k: v for k, v in state["head_state"].items() if k.startswith("patch_classifier.")}
    return bool(trained) and all(torch.equal(v, initial.state_dict()[k]) for k, v in trained.items())


def run_all(root: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Every stage of every run; the collected numbers (what ``ablation.json`` holds)."""
    from tedloc.artifacts.evaluate import read_results

    started = time.perf_counter()
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    stages: list[dict[str, Any]] = []
    # The shared upstream artifacts, each made once.
    for name in ("qr", "no_qr"):
        variant = next(v for v in VARIANTS if v.upstream == name)
        configs = run_configs(variant, seeds[0])
        for stage in UPSTREAM_STAGES if name == "qr" else ("text-embed",):
            workdir = root / "upstream" / name
            reused = (workdir / stage.replace("-", "_") / "manifest.json").exists()
            timing = run_stage(stage_command(workdir, stage, configs[stage]), workdir / "logs" / f"{stage}.log")
            stages.append({"run": f"upstream/{name}", "stage": stage, "reused": reused, **timing})
    runs: list[dict[str, Any]] = []
    for seed in seeds:  # seed-major: an interrupted benchmark has every variant of the first seeds
        for variant in VARIANTS:
            run = run_dir(root, variant, seed)
            link_upstream(run, root, variant)
            configs = run_configs(variant, seed)
            for stage in RUN_STAGES:
                reused = (run / stage.replace("-", "_") / "manifest.json").exists()
                timing = run_stage(stage_command(run, stage, configs[stage]), run / "logs" / f"{stage}.log")
                stages.append({"run": f"{variant.key}/seed{seed}", "stage": stage, "reused": reused, **timing})
            manifest = json.loads((run / "train" / "manifest.json").read_text())
            runs.append({
                "variant": variant.key, "seed": seed,
                "results": read_results(run / "evaluate" / EVALUATION),
                "train": {"model_epoch": manifest.get("model_epoch"), "threshold": manifest.get("threshold"),
                          "final": manifest.get("final"), "seconds_per_epoch": manifest.get("seconds_per_epoch")},
                "patch_classifier_untouched": patch_classifier_untouched(run),
                "commands": {stage: shown_command(stage, configs[stage]) for stage in RUN_STAGES},
            })
    text = {}
    for name in ("qr", "no_qr"):
        attrs = json.loads((root / "upstream" / name / "text_embed" / "manifest.json").read_text())
        text[name] = {k: attrs.get(k) for k in ("orthogonalization", "mean_abs_cos_before", "mean_abs_cos_after")}
    load_after = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {"split": SPLIT, "seeds": list(seeds), "runs": runs, "stages": stages, "text_embed": text,
            "wall_s": time.perf_counter() - started, "load_average": {"before": load_before, "after": load_after}}


# --- the report ------------------------------------------------------------------------------

def _values(summary: Mapping[str, Any], row: str, path: Sequence[str]) -> list[float | None]:
    """The values of one metric (``path`` into a method's results) for one table row: one per
    seed for a variant, one (the first run's) for a reference method."""
    def dig(method: Mapping[str, Any]) -> float | None:
        value: Any = method
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    if row in REFERENCE_ROWS:
        return [dig(summary["runs"][0]["results"]["methods"][row])]
    if row == CAM_AT_INFERENCE[0]:
        full = [run for run in summary["runs"] if run["variant"] == "full"]
        return [dig(full[0]["results"]["methods"]["cam_baseline"])] if full else [None]
    return [dig(run["results"]["methods"]["tedloc"]) for run in summary["runs"] if run["variant"] == row]


def _cell(values: Sequence[float | None]) -> str:
    """``mean (v1, v2, ...)`` with one decimal; one value alone; "–" when not computed."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    if len(values) == 1:
        return f"{present[0]:.1f}"
    mean = sum(present) / len(present)
    return f"{mean:.1f} ({', '.join('–' if v is None else f'{v:.1f}' for v in values)})"


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(row key, label): the CAM baseline, the variants, the centre prior."""
    return ([("cam_baseline", REFERENCE_ROWS["cam_baseline"]), CAM_AT_INFERENCE] + [(v.key, v.label) for v in VARIANTS]
            + [("centre_prior", REFERENCE_ROWS["centre_prior"])])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def overall_table(summary: Mapping[str, Any]) -> list[str]:
    rows = [[label] + [_cell(_values(summary, key, ("overall", metric))) for metric in METRICS]
            for key, label in _rows(summary)]
    return _table(["Method", *METRICS.values()], rows)


def group_table(summary: Mapping[str, Any]) -> list[str]:
    """MaxBoxAccV2 by object size and by object count, with each group's image count."""
    first = summary["runs"][0]["results"]["methods"]["tedloc"]
    header = ["Method"]
    for family, keys in GROUPS.items():
        for key in keys:
            count = first.get(family, {}).get(key, {}).get("num_images")
            header.append(f"{GROUP_TITLES[key]} ({count})" if count is not None else GROUP_TITLES[key])
    rows = [[label] + [_cell(_values(summary, row, (family, key, "max_box_acc_v2")))
                       for family, keys in GROUPS.items() for key in keys]
            for row, label in _rows(summary)]
    return _table(header, rows)


def _range(values: Sequence[float | None]) -> tuple[float, float] | None:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


def comparison_table(summary: Mapping[str, Any]) -> list[str]:
    """Differences of means for :data:`COMPARISONS`, each marked "(within seed noise)" when the
    two rows' ranges over seeds overlap (a reference row has one value, its range a point)."""
    rows = []
    for label, before, after in COMPARISONS:
        cells = [label]
        for metric in METRICS:
            a, b = _values(summary, before, ("overall", metric)), _values(summary, after, ("overall", metric))
            ra, rb = _range(a), _range(b)
            if ra is None or rb is None:
                cells.append("–")
                continue
            mean_a = sum(v for v in a if v is not None) / len([v for v in a if v is not None])
            mean_b = sum(v for v in b if v is not None) / len([v for v in b if v is not None])
            overlap = ra[0] <= rb[1] and rb[0] <= ra[1]
            cells.append(f"{mean_b - mean_a:+.1f}" + (" (within seed noise)" if overlap else ""))
        rows.append(cells)
    return _table(["Difference (means)", *METRICS.values()], rows)


def runs_table(summary: Mapping[str, Any]) -> list[str]:
    """One row per run: the checkpoint kept, its threshold, the last epoch's losses, whether g
    kept its initial weights, and the run's train and evaluate times and peaks."""
    by_run = {(s["run"], s["stage"]): s for s in summary["stages"]}
    rows = []
    for run in summary["runs"]:
        name = f"{run['variant']}/seed{run['seed']}"
        final = run["train"].get("final") or {}
        train, evaluate = by_run.get((name, "train"), {}), by_run.get((name, "evaluate"), {})
        rows.append([
            name, str(run["train"].get("model_epoch")), _fmt(run["train"].get("threshold"), 2),
            _fmt(final.get("loss_kd"), 3), _fmt(final.get("loss_p"), 3), _fmt(final.get("loss_i"), 3),
            "yes" if run["patch_classifier_untouched"] else "no",
            _seconds(train), _seconds(evaluate),
            f"{train.get('peak_rss_mb', 0):.0f} / {evaluate.get('peak_rss_mb', 0):.0f}",
        ])
    return _table(["run", "epoch kept", "τ (no GT)", "last L_KD", "last P_CL", "last I_CL",
                   "g at its init", "train s", "evaluate s", "peak MB train / evaluate"], rows)


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _seconds(stage: Mapping[str, Any]) -> str:
    if not stage:
        return "–"
    return f"{stage['seconds']:.1f}" + (" (reused)" if stage.get("reused") else "")


def render_section(summary: Mapping[str, Any], *, command: str, date: str, commit: str,
                   machine: str) -> str:
    """The report's section (Markdown), from the collected numbers alone."""
    seeds = summary["seeds"]
    stages = summary["stages"]
    computed = [s for s in stages if not s.get("reused")]
    upstream = [s for s in stages if s["run"].startswith("upstream/")]
    peak = max((s["peak_rss_mb"] for s in stages), default=0.0)
    peak_stage = max(stages, key=lambda s: s["peak_rss_mb"]) if stages else None
    text = summary.get("text_embed", {})
    runs = summary["runs"]
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}` ({date}, commit {commit}).",
        f"Machine: {machine}.",
        "",
        f"Every variant trained with the demo's train settings (`tedloc/configs/train.py` defaults) and seeds "
        f"{', '.join(map(str, seeds))} (train `seed`: the head's initialization, shuffling, flips and patch "
        f"sampling), evaluated on the demo's `{summary['split']}` split ({_num_images(runs)} images with boxes "
        f"and masks); the test split is not read. Values in %; a cell is the mean over seeds, then each seed's "
        f"value in seed order. The CAM baseline and the centre prior do not depend on the variant or the seed "
        f"(the same pseudo-labels artifact for every run): one value. Shared artifacts: one pseudo-labels run, "
        f"one text-embed per orthogonalization setting, linked into each run's workdir; each run calls "
        f"text-embed and pseudo-labels with its own config, which found the linked artifact's identity equal "
        f"to its own (no `--overwrite` is ever given).",
        "",
        *overall_table(summary),
        "",
        "MaxBoxAccV2 by the share of the image covered by its largest GT box and by the number of objects "
        "(images per group in brackets; each group's MaxBoxAcc is its own best threshold):",
        "",
        *group_table(summary),
        "",
        "Differences of the means (percentage points); \"within seed noise\" where the two rows' ranges "
        f"over the {len(seeds)} seeds overlap:",
        "",
        *comparison_table(summary),
        "",
    ]
    if text:
        parts = []
        for name, label in (("qr", "orthogonalized"), ("no_qr", "not orthogonalized")):
            t = text.get(name) or {}
            if t.get("mean_abs_cos_after") is not None:
                parts.append(f"{label} (`{t.get('orthogonalization')}`): {t['mean_abs_cos_after']:.3f}")
        before = (text.get("qr") or {}).get("mean_abs_cos_before")
        if parts and before is not None:
            lines += [f"Mean |cosine| between different classes' anchors: raw MiniLM embeddings "
                      f"{before:.3f}; " + "; ".join(parts) + ".", ""]
    lines += [
        "Runs (checkpoint kept = lowest mean training loss; τ chosen against pseudo boxes; the last "
        "epoch's mean losses, 0 where the loss's weight is 0 and it is not computed; \"g at its init\": the "
        "patch classifier's weights equal those it was initialized with; times of this invocation, "
        "\"(reused)\" where the stage found its finished artifact):",
        "",
        *runs_table(summary),
        "",
        f"Wall time of the whole benchmark: {summary['wall_s'] / 60:.1f} min ({len(computed)} of {len(stages)} "
        f"stage calls computed, the rest found finished; the shared upstream stages "
        f"{sum(s['seconds'] for s in upstream):.0f} s). Peak resident memory of a stage's process tree: "
        f"{peak:.0f} MB"
        + (f" ({peak_stage['stage']}, {peak_stage['run']})" if peak_stage else "")
        + f". Load average {' '.join(summary['load_average']['before']) or '?'} at the start, "
        f"{' '.join(summary['load_average']['after']) or '?'} at the end: other jobs shared the 2 cores, so "
        "the times are pessimistic; the accuracies do not depend on them.",
        "",
    ]
    return "\n".join(lines)


def _num_images(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return "?"
    return str(runs[0]["results"]["methods"]["tedloc"]["overall"].get("num_images_with_boxes", "?"))


def write_section(report: Path, section: str) -> None:
    """Put ``section`` into ``report``: in place of an earlier one (up to the next ``## ``
    heading), else right after :data:`OTHER_MARKER`, else at the end."""
    text = report.read_text() if report.exists() else ""
    body = section.rstrip("\n") + "\n"
    if SECTION_TITLE + "\n" in text:
        start = text.index(SECTION_TITLE + "\n")
        end = text.find("\n## ", start + len(SECTION_TITLE))
        rest = text[end + 1:] if end >= 0 else ""
        text = text[:start] + body + ("\n" + rest if rest else "")
    elif OTHER_MARKER in text:
        at = text.index(OTHER_MARKER) + len(OTHER_MARKER)
        text = text[:at] + "\n" + body + "\n" + text[at:].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + body
    report.write_text(text)


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Train seeds of every variant.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tedloc-ablation"),
                        help="Where the runs go (finished runs in it are reused).")
    parser.add_argument("--write", type=Path, default=None, help="Markdown report to put the section into.")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: each seed once")
    from demo import machine  # benchmarks/demo.py

    root = args.workdir.resolve()
    summary = run_all(root, args.seeds)
    (root / "ablation.json").write_text(json.dumps(summary, indent=1))
    command = "python benchmarks/ablation.py --seeds " + " ".join(map(str, args.seeds))
    if args.write:
        command += f" --write {args.write}"
    section = render_section(summary, command=command, date=time.strftime("%Y-%m-%d"), commit=_commit(),
                             machine=machine())
    print(section)
    if args.write:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
