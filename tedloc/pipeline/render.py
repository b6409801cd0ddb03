"""Pictures drawn with OpenCV (no plotting library): map overlays and the BoxAcc curve.

Every function returns a uint8 RGB image (H, W, 3); writing files is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

PRED_COLOR = (0, 200, 0)  # RGB green: predicted boxes
GT_COLOR = (230, 0, 0)  # RGB red: ground-truth boxes
_CURVE_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75)]


def heat_overlay(image: np.ndarray, scoremap: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET colouring of ``scoremap`` (float (h, w) in [0, 1], any size) over
    ``image`` (uint8 RGB (H, W, 3)); the map is resized to the image."""
    height, width = image.shape[:2]
    resized = cv2.resize(np.asarray(scoremap, dtype=np.float32), (width, height),
                         interpolation=cv2.INTER_LINEAR)
    heat_bgr = cv2.applyColorMap((np.clip(resized, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def draw_boxes(image: np.ndarray, boxes: np.ndarray | None, color: tuple[int, int, int], *,
               thickness: int | None = None) -> np.ndarray:
    """Draw ``x0y0x1y1`` boxes (pixels of ``image``, inclusive corners) on a copy of it.
    Empty boxes ``[0, 0, 0, 0]`` (no region found) are not drawn."""
    out = image.copy()
    if boxes is None:
        return out
    thickness = thickness or max(1, round(max(image.shape[:2]) / 200))
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        if x0 == y0 == x1 == y1 == 0:
            continue
        cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))),
                      color, thickness)
    return out


def overlay(image: np.ndarray, scoremap: np.ndarray, *, pred_boxes: np.ndarray | None = None,
            gt_boxes: np.ndarray | None = None, caption: str | None = None) -> np.ndarray:
    """Heat overlay of ``scoremap`` on ``image`` with predicted boxes (green) and GT boxes
    (red), boxes in ``image`` pixels; an optional one-line caption at the top-left."""
    out = heat_overlay(image, scoremap)
    out = draw_boxes(out, gt_boxes, GT_COLOR)
    out = draw_boxes(out, pred_boxes, PRED_COLOR)
    if caption:
        scale = max(0.4, min(out.shape[:2]) / 500)
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
        cv2.putText(out, caption, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def curve_plot(thresholds: Sequence[float], curves: Mapping[str, Sequence[float]], *,
               title: str = "BoxAcc vs. threshold", markers: Mapping[str, float] | None = None,
               width: int = 720, height: int = 480) -> np.ndarray:
    """Line plot of ``curves`` (name -> percent at each threshold) against ``thresholds``.

    x axis: τ in [0, 1]; y axis: 0–100 %.  ``markers`` (name -> τ) draws dashed vertical
    lines (e.g. the stored threshold).  Returns uint8 RGB (height, width, 3).
    """
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 170, 40, 50
    x_span, y_span = width - left - right, height - top - bottom
    font = cv2.FONT_HERSHEY_SIMPLEX

    def to_px(t: float, v: float) -> tuple[int, int]:
        return int(round(left + t * x_span)), int(round(top + (1 - v / 100.0) * y_span))

    # grid and axes
    for i in range(11):
        x, _ = to_px(i / 10, 0)
        _, y = to_px(0, i * 10)
        cv2.line(img, (x, top), (x, top + y_span), (225, 225, 225), 1)
        cv2.line(img, (left, y), (left + x_span, y), (225, 225, 225), 1)
        cv2.putText(img, f"{i / 10:.1f}", (x - 11, top + y_span + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{i * 10}", (left - 28, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + x_span, top + y_span), (0, 0, 0), 1)
    cv2.putText(img, "threshold", (left + x_span // 2 - 30, height - 12), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "%", (12, top + y_span // 2), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)

    ts = np.asarray(thresholds, dtype=np.float64)
    for k, (name, values) in enumerate(curves.items()):
        color = _CURVE_COLORS[k % len(_CURVE_COLORS)]
        points = np.array([to_px(t, v) for t, v in zip(ts, values, strict=True)], np.int32)
        if len(points):
            cv2.polylines(img, [points.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA)
        ly = top + 12 + 20 * k
        cv2.line(img, (left + x_span + 10, ly - 4), (left + x_span + 30, ly - 4), color, 2)
        cv2.putText(img, name, (left + x_span + 35, ly), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (name, tau) in enumerate((markers or {}).items()):
        x, _ = to_px(float(tau), 0)
        for y in range(top, top + y_span, 8):
            cv2.line(img, (x, y), (x, min(y + 4, top + y_span)), (90, 90, 90), 1)
        ly = top + 12 + 20 * (len(curves) + k)
        cv2.putText(img, f"| {name} {tau:.2f}", (left + x_span + 10, ly), font, 0.4, (90, 90, 90), 1,
                    cv2.LINE_AA)
    return img
