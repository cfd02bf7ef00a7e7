"""From a query's foreground probability to detections.

For every threshold (0.1, 0.2, ..., 0.9 by default) the snippets above it form a binary
curve; background gaps of at most ``max_gap`` snippets lying between two foreground snippets
are filled (holes inside an action), and each remaining run of foreground snippets
``[a, b)`` becomes the proposal ``[a/T, b/T]`` scored with the mean foreground probability
over it. Proposals found at several thresholds are kept once. G-TAD's Gaussian soft-NMS
then ranks them, and each gets the episode's class as its label.

Snippet ``i`` of ``T`` covers ``[i/T, (i+1)/T]`` of the video (features are rescaled with
``align_corners=False``), so a run of snippets maps onto the video without a half-snippet shift.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from clap_bench.data.schema import Video
from clap_bench.downstream.gtad.postprocess import soft_nms


def fill_gaps(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """A copy of the boolean ``mask`` with each False run of length <= ``max_gap`` between two True runs set True."""
    out = np.asarray(mask, dtype=bool).copy()
    if max_gap <= 0 or not out.any():
        return out
    on = np.flatnonzero(out)
    for left, right in zip(on[:-1], on[1:]):
        if 1 < right - left <= max_gap + 1:
            out[left + 1:right] = True
    return out


def runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """The ``[start, end)`` snippet ranges of the True runs of a boolean mask, in order."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def threshold_proposals(
    probability: np.ndarray, thresholds: Sequence[float], max_gap: int = 0, min_length: int = 1
) -> np.ndarray:
    """``(T,)`` foreground probabilities -> ``(P, 3)`` ``[start, end, score]`` in normalised time (unranked)."""
    prob = np.asarray(probability, dtype=np.float64).reshape(-1)
    t = len(prob)
    found: Dict[Tuple[int, int], float] = {}
    for th in thresholds:
        for a, b in runs(fill_gaps(prob > th, max_gap)):
            if b - a >= max(min_length, 1) and (a, b) not in found:
                found[(a, b)] = float(prob[a:b].mean())
    rows = [(a / t, b / t, score) for (a, b), score in found.items()]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def localise(
    probability: np.ndarray,
    thresholds: Sequence[float],
    max_gap: float,
    min_length: float,
    soft_nms_sigma: float,
    top_k: int,
) -> np.ndarray:
    """Ranked proposals ``(<= top_k, 3)`` of one query; ``max_gap`` and ``min_length`` are fractions of the video."""
    t = len(probability)
    props = threshold_proposals(probability, thresholds, int(round(max_gap * t)), max(1, int(round(min_length * t))))
    return soft_nms(props, sigma=soft_nms_sigma, top_k=top_k)


def detections(proposals: np.ndarray, duration: float, label: str) -> List[dict]:
    """ActivityNet result entries of one query, times in seconds clipped to the video."""
    return [
        {"label": label, "score": float(score), "segment": [float(max(0.0, s) * duration), float(min(1.0, e) * duration)]}
        for s, e, score in proposals
    ]


def foreground_mask(video: Video, label: str, temporal_scale: int) -> np.ndarray:
    """``(T,)`` bool: snippets more than half covered by actions of ``label`` (snippet ``i`` covers ``[i/T, (i+1)/T]``)."""
    if video.duration <= 0:
        raise ValueError(f"video {video.id!r}: duration must be > 0 s, got {video.duration}")
    lo = np.arange(temporal_scale) / temporal_scale
    hi = lo + 1.0 / temporal_scale
    cover = np.zeros(temporal_scale)
    for seg in video.actions:
        if seg.label != label:
            continue
        s, e = max(0.0, seg.start / video.duration), min(1.0, seg.end / video.duration)
        cover += np.clip(np.minimum(hi, e) - np.maximum(lo, s), 0.0, None)
    return cover * temporal_scale > 0.5
