"""Time the demo end to end and per stage, its peak memory, the rerun of a finished demo,
and the throughput of pseudo-labels and evaluate against the bare encoder forward.

    python benchmarks/demo.py [--workdir /tmp/tedloc-bench] [--write benchmarks/RESULTS.md]

Steps, all in this one run:

1. ``tedloc demo`` from an empty workdir in a subprocess; wall time, per-stage times (from
   the demo's log) and the peak resident memory of the process tree (sampled every 50 ms);
2. the same command again (every stage finished): its wall time;
3. the bare encoder forward over the same images the stages read, at the stages' batch
   sizes, on images decoded and resized beforehand: for pseudo-labels the train split's
   images and, when flipped features are cached, their mirror images too (the stage
   forwards both); for evaluate the test split's images.  The stage's images/s divided
   by the bare forward's is the ratio (1.0 = the stage costs no more than its encoder).

Writes a Markdown report with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import rss_tree_kb  # noqa: E402

#: Everything from this line on in the report is kept when the demo section is rewritten.
OTHER_MARKER = "<!-- other benchmarks -->"


def run_demo(workdir: Path) -> dict:
    """Run ``tedloc demo`` in a subprocess; wall time, peak RSS of its tree, stage times."""
    command = [sys.executable, "-m", "tedloc.cli", "-w", str(workdir), "demo"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_kb = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_kb
        while not done.is_set():
            peak_kb = max(peak_kb, rss_tree_kb(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"tedloc demo failed (exit {proc.returncode}):\n{output[-3000:]}")
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"demo: (\S+) took ([0-9.]+) s", output)}
    table = output[output.find("| Method"):].split("\n\n")[0] if "| Method" in output else ""
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "stage_s": stages, "table": table}


def bare_forward_images_per_s(image_ids_split: str, *, encoder_spec: str, batch_size: int,
                              with_flip: bool, forward_batch_size: int = 0, limit: int = 0,
                              input_size: int | None = None, forward_batch: int | None = None
                              ) -> tuple[float, int]:
    """Images/s of the bare encoder forward over a demo split (pre-decoded, pre-resized to
    ``input_size``, default the encoder's), run as the stages run it: batches of ``batch_size``
    images, each as forwards of [k images; k mirror images] (``encode_batch``; k =
    ``forward_batch`` when given, else from ``forward_batch_size`` as the pseudo-labels stage
    resolves it; mirror images only ``with_flip``)."""
    import torch

    from tedloc.artifacts.cpu_memory import keep_freed_memory
    from tedloc.data.open import open_dataset
    from tedloc.pipeline.forwards import encode_batch, resolve_forward_batch
    from tedloc.pipeline.image_encoders import build_image_encoder, resize_batch

    torch.set_num_threads(os.cpu_count() or 1)
    keep_freed_memory()  # as the stages do on a CPU (their cpu_keep_freed_memory default)
    dataset = open_dataset("demo", image_ids_split)
    records = dataset.head(limit)
    encoder = build_image_encoder(encoder_spec, input_size=input_size)
    if forward_batch is None:
        forward_batch = resolve_forward_batch(forward_batch_size, encoder.device)
    pixels = torch.from_numpy(resize_batch([dataset.load_image(r) for r in records], encoder.input_size))
    encode_batch(encoder, pixels[:batch_size], with_flip=with_flip, forward_batch=forward_batch)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        encode_batch(encoder, pixels[i:i + batch_size], with_flip=with_flip, forward_batch=forward_batch)
    seconds = time.perf_counter() - start
    return len(records) / seconds, len(records)


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tedloc-bench-demo"))
    parser.add_argument("--write", type=Path, default=None, help="Markdown report to write.")
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)

    first = run_demo(args.workdir)
    rerun = run_demo(args.workdir)
    pseudo = json.loads((args.workdir / "pseudo_labels" / "manifest.json").read_text())
    evaluate = json.loads((args.workdir / "evaluate" / "demo-test" / "manifest.json").read_text())
    pl_config, ev_config = pseudo["config"], evaluate["config"]
    flip = bool(pseudo.get("has_flip_features"))
    pl_bare, n_train = bare_forward_images_per_s(
        "train", encoder_spec=pl_config["encoder"], batch_size=pl_config["batch_size"], with_flip=flip,
        forward_batch_size=pl_config.get("forward_batch_size", 0))
    # evaluate: the model's forward at its inference size, then the CAM baseline's at the
    # pseudo-labels' size (another pass of the encoder when the two differ), small forwards.
    import torch

    from tedloc.pipeline.forwards import inference_forward_batch

    train = json.loads((args.workdir / "train" / "manifest.json").read_text())
    model_size = int(train.get("inference_input_size") or pseudo["input_size"])
    baseline_size = int(ev_config.get("baseline_input_size") or pseudo["input_size"])
    sizes = [model_size] if baseline_size == model_size else [model_size, baseline_size]
    ev_seconds = 0.0
    for size in sizes:
        rate, n_test = bare_forward_images_per_s(
            "test", encoder_spec=pl_config["encoder"], batch_size=ev_config["batch_size"], with_flip=False,
            input_size=size, forward_batch=inference_forward_batch(size, torch.device("cpu")))
        ev_seconds += n_test / rate
    ev_bare = n_test / ev_seconds
    pl_stage = n_train / first["stage_s"]["pseudo-labels"]
    ev_stage = n_test / first["stage_s"]["evaluate"]

    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/demo.py --write benchmarks/RESULTS.md` ({time.strftime('%Y-%m-%d')}).",
        "",
        "## The demo (`tedloc demo`, from an empty workdir)",
        "",
        "| what | value |",
        "|---|---|",
        f"| whole demo, wall | {first['wall_s']:.1f} s |",
        *[f"| stage {name} | {seconds:.1f} s |" for name, seconds in first["stage_s"].items()],
        f"| peak resident memory (process tree) | {first['peak_rss_mb']:.0f} MB |",
        f"| rerun of the finished demo, wall | {rerun['wall_s']:.2f} s |",
        "",
        "## Stage throughput against the bare encoder forward",
        "",
        "The stage's time includes model loading, decoding, the classifier fit or the head, maps, "
        "boxes, HDF5 writing and (evaluate) the metrics; the bare forward runs on images decoded "
        "and resized beforehand, in the stage's batches"
        + (" (pseudo-labels: forwards of [k images; k mirror images], the stage caches flipped features)"
           if flip else "")
        + f"; evaluate: the encoder at the model's inference size, then at the CAM baseline's "
        f"({' and '.join(f'{size} px' for size in sizes)})"
        + ". The bare forward is timed after the demo, minutes from the stages, and this machine's "
        "speed drifts by ±20% over minutes: these ratios are indicative only (above 1 is drift). "
        "`benchmarks/pseudo_labels.py` alternates stage runs with bare passes for the measured ratio.",
        "",
        "| stage | images | stage images/s | bare encoder images/s | ratio |",
        "|---|---|---|---|---|",
        f"| pseudo-labels | {n_train} | {pl_stage:.1f} | {pl_bare:.1f} | {pl_stage / pl_bare:.2f} |",
        f"| evaluate | {n_test} | {ev_stage:.1f} | {ev_bare:.1f} | {ev_stage / ev_bare:.2f} |",
        "",
        "## The demo's results (test split)",
        "",
        first["table"],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        # Keep the hand-run benchmarks recorded below the marker in an existing report.
        kept = ""
        if args.write.exists() and OTHER_MARKER in args.write.read_text():
            kept = args.write.read_text()[args.write.read_text().index(OTHER_MARKER):]
        args.write.write_text(report + ("\n" + kept if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
