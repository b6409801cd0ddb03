"""A 2-process DDP run (gloo, CPU) of the train stage completes, and only rank 0 writes."""

import csv
import json
import os
import socket

import torch
import torch.multiprocessing as mp
from helpers_artifacts import make_pseudo_labels, make_text_embed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, workdir: str) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""})
    torch.set_num_threads(1)
    from tedloc.configs.train import Config
    from tedloc.stages import train

    config = Config(epochs=2, width=16, depth=1, batch_size=4, num_workers=0, progress=False, threshold_size=48,
                    device="cpu")
    train.run(config, workdir=workdir)
    assert not torch.distributed.is_initialized()  # the stage cleans up the group it made


def test_two_process_gloo_run_completes(tmp_path):
    make_text_embed(tmp_path)
    make_pseudo_labels(tmp_path, num_images=18)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert manifest["num_images"] == 18 and manifest["epochs"] == 2
    with open(tmp_path / "train" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # every image counted once per epoch across the two ranks (18 = 2 × 9, no padding)
    assert all(r["images"] == "18" for r in rows)
    leftovers = [p.name for p in (tmp_path / "train").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
