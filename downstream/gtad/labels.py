"""Training targets of G-TAD, from ground-truth segments in normalised time ``[0, 1]``.

- IoU map ``(T, T)`` indexed ``[duration, start]``: the IoU of anchor ``[s/T, (s+d+1)/T]``
  with its best-matching ground-truth segment; zero on cells that are not anchors
  (``s + d >= T``).
- Start / end labels ``(T,)``: snippet ``i`` stands for the interval ``[(i-0.5)/T, (i+0.5)/T]``
  around its time ``i/T``. Every ground-truth start (end) is widened into a boundary region of
  ``boundary_width`` snippets centred on it (3 in G-TAD/BMN on ActivityNet); the label is the
  largest fraction of the snippet's interval covered by such a region (intersection over the
  snippet, IoA, not IoU). The losses count labels above 0.5 as positives.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def normalise_segments(segments: Sequence[Tuple[float, float]], duration: float) -> np.ndarray:
    """Segments in seconds -> ``(N, 2)`` array of ``[start, end]`` fractions of ``duration``, clipped to ``[0, 1]``."""
    if duration <= 0:
        raise ValueError(f"video duration must be > 0 s, got {duration}")
    arr = np.asarray(segments, dtype=np.float64).reshape(-1, 2) / duration
    return np.clip(arr, 0.0, 1.0)


def anchor_bounds(temporal_scale: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (normalised) and validity of every cell of the ``[duration, start]`` map, each ``(T, T)``."""
    d, s = np.meshgrid(np.arange(temporal_scale), np.arange(temporal_scale), indexing="ij")
    start = s / temporal_scale
    end = (s + d + 1) / temporal_scale
    return start, end, (s + d) < temporal_scale


def valid_anchor_mask(temporal_scale: int) -> np.ndarray:
    return anchor_bounds(temporal_scale)[2].astype(np.float32)


def interval_iou(a_start, a_end, b_start, b_end) -> np.ndarray:
    """IoU of intervals, broadcast over the inputs."""
    inter = np.clip(np.minimum(a_end, b_end) - np.maximum(a_start, b_start), 0.0, None)
    union = (a_end - a_start) + (b_end - b_start) - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def iou_map_labels(gt: np.ndarray, temporal_scale: int) -> np.ndarray:
    """``(T, T)`` float32: best IoU of each valid anchor with the ``(N, 2)`` normalised ground truth."""
    start, end, valid = anchor_bounds(temporal_scale)
    if len(gt) == 0:
        return np.zeros((temporal_scale, temporal_scale), np.float32)
    iou = interval_iou(start[None], end[None], gt[:, 0, None, None], gt[:, 1, None, None]).max(axis=0)
    return (iou * valid).astype(np.float32)


BOUNDARY_ANCHORS = ("snippet", "bmn")


def boundary_labels(
    gt: np.ndarray, temporal_scale: int, boundary_width: float = 3.0, anchors: str = "snippet"
) -> Tuple[np.ndarray, np.ndarray]:
    """Start and end labels ``(T,)`` float32 of the ``(N, 2)`` normalised ground truth (see module doc)."""
    if anchors not in BOUNDARY_ANCHORS:
        raise ValueError(f"boundary anchors: expected one of {BOUNDARY_ANCHORS}, got {anchors!r}")
    gap = 1.0 / temporal_scale
    centre = np.arange(temporal_scale) * gap
    lo, hi = centre - 0.5 * gap, centre + (0.5 if anchors == "snippet" else 1.5) * gap
    half = 0.5 * boundary_width * gap

    def ioa(points: np.ndarray) -> np.ndarray:
        if len(points) == 0:
            return np.zeros(temporal_scale, np.float32)
        inter = np.clip(np.minimum(hi[None], points[:, None] + half) - np.maximum(lo[None], points[:, None] - half), 0.0, None)
        return (inter / (hi - lo)[None]).max(axis=0).astype(np.float32)

    return ioa(gt[:, 0]), ioa(gt[:, 1])
