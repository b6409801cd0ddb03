"""A 2-process DDP run (gloo, CPU) of the train stage: both ranks hold the same weights after
every epoch, the loss falls, only rank 0 writes, and every image counts once per epoch."""

import csv
import json
import os
import socket

import torch
import torch.multiprocessing as mp
from helpers_artifacts import make_pseudo_labels, make_text_embed

EPOCHS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, workdir: str) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""})
    torch.set_num_threads(1)
    from tedloc.configs.train import Config
    from tedloc.pipeline import model
    from tedloc.stages import train

    heads = []

    class RecordedHead(model.TedLocHead):
        """The stage's head, kept here so that each rank can save its weights."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            heads.append(self)

    model.TedLocHead = RecordedHead  # this process only (spawned)

    def save_weights(epoch: int) -> None:
        state = {k: v.detach().clone() for k, v in heads[0].state_dict().items()}
        torch.save(state, os.path.join(workdir, f"weights-rank{rank}-epoch{epoch}.pt"))

    config = Config(epochs=EPOCHS, width=16, depth=1, batch_size=4, num_workers=0, progress=False, inference_scale=1,
                    threshold_size=48, device="cpu")
    train.run(config, workdir=workdir, on_epoch_end=save_weights)
    assert len(heads) == 1
    assert not torch.distributed.is_initialized()  # the stage cleans up the group it made


def test_two_process_gloo_run_trains_one_model(tmp_path):
    from tedloc.artifacts.checkpoint import load_checkpoint

    make_text_embed(tmp_path)
    make_pseudo_labels(tmp_path, num_images=18)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert manifest["num_images"] == 18 and manifest["epochs"] == EPOCHS
    for epoch in range(EPOCHS):
        ranks = [torch.load(tmp_path / f"weights-rank{r}-epoch{epoch}.pt") for r in range(2)]
        assert ranks[0].keys() == ranks[1].keys()
        for name, value in ranks[0].items():
            assert torch.equal(value, ranks[1][name]), f"epoch {epoch}: {name} differs between ranks"
    last = load_checkpoint(tmp_path / "train" / "last.pt")["head_state"]
    first = torch.load(tmp_path / "weights-rank1-epoch0.pt")
    assert all(torch.equal(last[name], value) for name, value in ranks[1].items())  # what rank 0 saved
    assert not all(torch.equal(first[name], value) for name, value in ranks[1].items())  # it trained
    with open(tmp_path / "train" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == [str(e + 1) for e in range(EPOCHS)]
    # every image counted once per epoch across the two ranks (18 = 2 × 9, no padding)
    assert all(r["images"] == "18" for r in rows)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    leftovers = [p.name for p in (tmp_path / "train").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
