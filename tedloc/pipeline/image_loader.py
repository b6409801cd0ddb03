"""Batches of decoded, resized images from a dataset, decoded in DataLoader worker
processes or in threads of the calling process.

Decoding (JPEG/PNG) and resizing are the CPU-heavy part of running a frozen encoder.  Where
the encoder runs on an accelerator they run in ``num_workers`` processes while the main
process feeds it.  Where the encoder runs on the CPU, worker processes decoding beside the
forward preempt its intra-op threads, and every thread of a forward waits for the slowest:
on a 2-core machine two workers slowed EfficientNet-Lite0's forward by about 20% for about
2 ms of decoding per image.  There ``num_workers=0`` decodes each batch in the calling
process when it is asked for, between forwards, with ``decode_threads`` threads (OpenCV
releases the GIL), so decoding takes its own short turn on every core instead of
interrupting the forward.  :func:`resolve_decode_workers` picks between the two.
Normalization is left to the encoder (:meth:`ImageEncoder.normalize`) so that it runs on
the device.

A bad image (missing, empty, undecodable) is reported per image in ``ImageBatch.bad``
rather than raised in a worker, so that the caller decides: ``on_bad_image="fail"`` raises
the :class:`InputError` naming the file (done here, on receipt of the batch), ``"skip"``
leaves the id out of ``ids`` and reports it in ``bad``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from tedloc.data.records import Dataset, Record
from tedloc.errors import InputError, TedlocError
from tedloc.pipeline.workers import loader_worker_init

ON_BAD_IMAGE = ("fail", "skip")
#: Decoding processes when ``num_workers`` is "auto" (-1) and the encoder is on an accelerator.
ACCELERATOR_DECODE_WORKERS = 8


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_decode_workers(num_workers: int, device: torch.device) -> int:
    """Decoding processes: ``num_workers`` when ≥ 0; for -1 ("auto") 0 (decode in this
    process, between forwards) when the encoder runs on the CPU, else
    ``min(ACCELERATOR_DECODE_WORKERS, CPUs)``."""
    if num_workers >= 0:
        return num_workers
    if device.type == "cpu":
        return 0
    return min(ACCELERATOR_DECODE_WORKERS, cpu_count())


@dataclasses.dataclass
class ImageBatch:
    """One batch of B good images (bad ones removed).

    Attributes:
        ids: B image ids, in the order of the records given to the loader.
        labels: int64 (B,) class labels.
        pixels: uint8 tensor (B, S, S, 3), RGB, the whole image resized to S×S.
        sizes: int32 (B, 2) original (width, height).
        bad: id -> reason for the images of this batch that could not be read.
        errors: id -> (path, problem, line) of the same images (to rebuild the InputError).
    """

    ids: list[str]
    labels: np.ndarray
    pixels: torch.Tensor
    sizes: np.ndarray
    bad: dict[str, str]
    errors: dict[str, tuple] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


class _ResizedImages(TorchDataset):
    """Item i: (i, uint8 (S, S, 3) or None, (width, height), error tuple or None)."""

    def __init__(self, dataset: Dataset, records: Sequence[Record], input_size: int):
        self.dataset = dataset
        self.records = list(records)
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            image, size = self.dataset.load_resized(record, self.input_size)
        except InputError as exc:
            # Exceptions with custom __init__ do not survive pickling back from a worker.
            return index, None, (0, 0), (str(exc.path), exc.problem, exc.line)
        except TedlocError as exc:
            return index, None, (0, 0), (str(record.path or record.image_id), str(exc), None)
        return index, image, size, None


class _Collate:
    """Runs in the worker: it must not raise tedloc errors (they do not unpickle)."""

    def __init__(self, records: Sequence[Record], input_size: int):
        self.records = records
        self.input_size = input_size

    def __call__(self, items) -> ImageBatch:
        good = [item for item in items if item[1] is not None]
        bad: dict[str, str] = {}
        errors: dict[str, tuple] = {}
        for index, _, _, error in items:
            if error is None:
                continue
            path, problem, line = error
            where = f"{path}:{line}" if line is not None else path
            bad[self.records[index].image_id] = f"{where}: {problem}"
            errors[self.records[index].image_id] = error
        s = self.input_size
        pixels = np.stack([item[1] for item in good]) if good else np.zeros((0, s, s, 3), np.uint8)
        return ImageBatch(
            ids=[self.records[item[0]].image_id for item in good],
            labels=np.asarray([self.records[item[0]].label for item in good], dtype=np.int64),
            pixels=torch.from_numpy(pixels),
            sizes=np.asarray([item[2] for item in good], dtype=np.int32).reshape(-1, 2),
            bad=bad,
            errors=errors,
        )


class _InProcessBatches:
    """Batches decoded in the calling process, each when it is asked for (nothing is read
    ahead, so decoding never runs beside the caller's own work), its images spread over
    ``threads`` threads.  Same batches, in the same order, as the DataLoader."""

    def __init__(self, images: _ResizedImages, collate: _Collate, batch_size: int, threads: int,
                 pin_memory: bool):
        self.images = images
        self.collate = collate
        self.batch_size = batch_size
        self.threads = threads
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[ImageBatch]:
        total = len(self.images)
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tedloc-decode") as pool:
            for start in range(0, total, self.batch_size):
                items = pool.map(self.images.__getitem__, range(start, min(total, start + self.batch_size)))
                batch = self.collate(list(items))
                if self.pin_memory:
                    batch.pixels = batch.pixels.pin_memory()
                yield batch


class ImageLoader:
    """Iterable of :class:`ImageBatch`; raises the first bad image's InputError when
    ``on_bad_image == "fail"`` (in the calling process, where the error type survives)."""

    def __init__(self, loader: Iterable[ImageBatch], on_bad_image: str):
        self.loader = loader
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ImageBatch]:
        for batch in self.loader:
            if batch.errors and self.on_bad_image == "fail":
                path, problem, line = next(iter(batch.errors.values()))
                raise InputError(Path(path), problem, line)
            yield batch


def make_image_loader(dataset: Dataset, records: Sequence[Record], *, input_size: int,
                      batch_size: int, num_workers: int = 2, on_bad_image: str = "fail",
                      pin_memory: bool | None = None, decode_threads: int = 0) -> ImageLoader:
    """Batches (:class:`ImageBatch`) of ``records``, in order, no shuffling.

    Args:
        dataset: gives the pixels (``dataset.load_image(record)``).
        records: the images to load, in the order batches should come.
        input_size: S; every image is resized (whole, no crop) to S×S.
        batch_size: images per batch (the last one may be smaller, or smaller still after
            bad images are removed).
        num_workers: decoding processes (a DataLoader's workers, reading ahead); 0 decodes
            each batch in the calling process when it is asked for, with ``decode_threads``
            threads (see the module docstring; :func:`resolve_decode_workers`).
        on_bad_image: ``"fail"`` raise the InputError naming the file; ``"skip"`` report it
            in ``ImageBatch.bad``.
        pin_memory: page-locked batches for faster host-to-GPU copies (default: when CUDA
            is available).
        decode_threads: threads decoding a batch when ``num_workers`` is 0 (0 = one per CPU).
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    records = list(records)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    images = _ResizedImages(dataset, records, input_size)
    collate = _Collate(records, input_size)
    if num_workers <= 0:
        return ImageLoader(_InProcessBatches(images, collate, max(1, batch_size), decode_threads or cpu_count(),
                                             pin_memory), on_bad_image)
    loader = DataLoader(
        images,
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        # Two batches in flight per worker keep the device busy without holding many images.
        prefetch_factor=2,
        worker_init_fn=loader_worker_init(),
    )
    return ImageLoader(loader, on_bad_image)
