"""MaxBoxAccV2 of pseudo-label maps against GT boxes, scored as the maps are made.

A *diagnostic* of the pseudo-labels stage (the GT is never used to make or train on
pseudo-labels).  MaxBoxAccV2 (wsolevaluation's definition: boxes of every contour of the
map at 224×224, thresholds 0 to 0.99, IoU cuts 30/50/70) is a sum of per-image hits, so
images can be scored in any grouping and the counts added: :class:`BoxDiagnostic` takes
chunks of maps as the stage produces them and scores them in worker processes while the
stage goes on; its value equals scoring every image at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from tedloc.pipeline.workers import process_pool

#: Side of the square the maps and GT boxes are scored at (wsolevaluation's).
DIAGNOSTIC_SIZE = 224
#: Images per task of the worker processes (small, so the tasks left when the maps are
#: done spread evenly over the workers).
CHUNK = 16


def diagnostic_sample(ids: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` of ``ids`` (0 = all), evenly spaced in their order: deterministic,
    and spread over the split (class-sorted splits keep every part represented)."""
    if limit <= 0 or len(ids) <= limit:
        return list(ids)
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, limit).round().astype(int)]


def box_hits(cams: np.ndarray, boxes: Sequence[np.ndarray], sizes: np.ndarray, ids: Sequence[str],
             thresholds: np.ndarray, deltas: Sequence[int]) -> np.ndarray:
    """int64 (len(deltas), T): per IoU cut and threshold, how many of these images have a
    box of their map (upsampled to 224×224) matching one of their GT boxes.

    Args:
        cams: (N, h, w) maps at grid resolution.
        boxes: N arrays (K ≥ 1, 4) of GT ``x0y0x1y1`` boxes in original pixels.
        sizes: int (N, 2) original (width, height).
        ids: N image ids (named in errors).
    """
    from tedloc.pipeline.box_search import best_ious
    from tedloc.pipeline.metrics import evaluation_map, gt_boxes_at_eval_size

    hits = np.zeros((len(deltas), len(thresholds)), np.int64)
    for scoremap, gt_original, size, image_id in zip(cams, boxes, sizes, ids, strict=True):
        smap = evaluation_map(np.asarray(scoremap, np.float32), DIAGNOSTIC_SIZE, image_id=image_id)
        gt = gt_boxes_at_eval_size(gt_original, (int(size[0]), int(size[1])), DIAGNOSTIC_SIZE)
        # Thresholds at which no box can reach the lowest IoU cut count no hit: not searched.
        ious = best_ious(smap, gt, thresholds, multi_contour=True, floor=min(deltas) / 100)
        for d, delta in enumerate(deltas):
            hits[d] += ious >= delta / 100
    return hits


def _box_hits_task(args: tuple) -> np.ndarray:
    return box_hits(*args)


class BoxDiagnostic:
    """Accumulates MaxBoxAccV2 hits over chunks of images.

    With ``workers`` > 1 the chunks are scored in that many forked processes (they need
    only numpy and OpenCV, and start at once) while the caller goes on: the contour search
    at 100 thresholds costs about 3-8 ms of CPU per image and holds the GIL, so processes,
    not threads.  Use as a context manager (or call :meth:`close`) so that the processes end;
    they also end when the caller's process is killed (:mod:`tedloc.pipeline.workers`).
    """

    def __init__(self, thresholds: np.ndarray, deltas: Sequence[int] = (30, 50, 70), *, workers: int = 1):
        self.thresholds = np.asarray(thresholds)
        self.deltas = tuple(deltas)
        self.workers = max(1, workers)
        self.scored: set[str] = set()
        self._hits = np.zeros((len(self.deltas), len(self.thresholds)), np.int64)
        self._pending: list[Future] = []
        self._pool: ProcessPoolExecutor | None = None

    def add(self, ids: Sequence[str], cams: np.ndarray, boxes: Sequence[np.ndarray], sizes: np.ndarray) -> None:
        """Score N more images (see :func:`box_hits` for the arguments); an id already
        scored raises ValueError (it would count twice)."""
        if not len(ids) == len(cams) == len(boxes) == len(sizes):
            raise ValueError(f"{len(ids)} ids, {len(cams)} maps, {len(boxes)} box lists and {len(sizes)} sizes")
        again = self.scored.intersection(ids)
        if again or len(set(ids)) != len(ids):
            raise ValueError(f"images scored twice: {sorted(again) or 'duplicate ids'}")
        self.scored.update(ids)
        cams, sizes = np.asarray(cams), np.asarray(sizes)
        for start in range(0, len(ids), CHUNK):
            part = slice(start, start + CHUNK)
            task = (cams[part], list(boxes[part]), sizes[part], list(ids[part]), self.thresholds, self.deltas)
            if self.workers > 1:
                self._pending.append(self._executor().submit(_box_hits_task, task))
            else:
                self._hits += _box_hits_task(task)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = process_pool(self.workers, start_method="fork")
        return self._pool

    def value(self) -> float | None:
        """MaxBoxAccV2 (%) over every image added (waits for the workers); None if none."""
        pending, self._pending = self._pending, []
        for future in pending:
            self._hits += future.result()
        if not self.scored:
            return None
        return float(np.mean((self._hits / len(self.scored)).max(axis=1)) * 100)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> BoxDiagnostic:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def maxboxacc_v2(cams: np.ndarray, boxes: Sequence[np.ndarray], sizes: np.ndarray, ids: Sequence[str],
                 thresholds: np.ndarray, deltas: Sequence[int] = (30, 50, 70), *, workers: int = 1
                 ) -> float | None:
    """MaxBoxAccV2 (%) of grid maps (N, h, w) against GT boxes at 224×224, all at once."""
    with BoxDiagnostic(thresholds, deltas, workers=workers) as diagnostic:
        diagnostic.add(ids, cams, boxes, sizes)
        return diagnostic.value()
