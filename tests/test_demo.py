"""The reduced demo end to end through the CLI: every stage, the table, the pictures, a rerun."""

import json
import time

import pytest
from typer.testing import CliRunner

from tedloc.cli import app

pytestmark = pytest.mark.slow


def test_quick_demo_runs_end_to_end_and_reruns_instantly(tmp_path):
    workdir = tmp_path / "demo"
    runner = CliRunner()
    result = runner.invoke(app, ["--log-level", "WARNING", "-w", str(workdir), "demo", "--quick"])
    assert result.exit_code == 0, result.output
    assert "| TeD-Loc" in result.output and "| CAM baseline" in result.output
    assert "| Centre prior (no learning) | no |" in result.output
    assert "MaxBoxAccV2" in result.output
    assert "By object size" in result.output and "| TeD-Loc (class-agnostic map) | >=0.30 |" in result.output

    for stage in ("text_embed", "pseudo_labels", "train", "evaluate/demo-test"):
        manifest = json.loads((workdir / stage / "manifest.json").read_text())
        assert manifest["format"] == f"tedloc.{stage.split('/')[0]}"
    evaluate = workdir / "evaluate" / "demo-test"
    results = json.loads((evaluate / "results.json").read_text())
    assert results["num_images"] == 48
    for key, method in results["methods"].items():
        # The centre prior has no classifier and no threshold chosen without GT.
        computed = ("max_box_acc_v2", "pxap") + (("top1_loc", "gt_known_loc", "top1_cls")
                                                  if key != "centre_prior" else ())
        for name in computed:
            assert 0.0 <= method["overall"][name] <= 100.0, (method["label"], name)
        assert sum(g["num_images"] for g in method["by_box_fraction"].values()) == 48
    predictions = (evaluate / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 48
    assert len(list((evaluate / "overlays").glob("*.png"))) > 0
    assert (evaluate / "boxacc_curve.png").stat().st_size > 0

    # A finished demo reruns from its artifacts: nothing recomputed, same table.
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    start = time.perf_counter()
    again = runner.invoke(app, ["--log-level", "WARNING", "-w", str(workdir), "demo", "--quick"])
    assert again.exit_code == 0, again.output
    assert time.perf_counter() - start < 10
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and ".lock" not in p.name}
    assert all(before[p] == mtime for p, mtime in after.items() if p in before)
    table = result.output[result.output.index("| Method"):].split("\n\n")[0]
    assert table in again.output
