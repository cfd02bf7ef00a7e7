"""Between map cells and seconds: IoU targets, scaled targets, ranking with NMS.

Cell ``(i, j)`` of an ``N x N`` map covers ``[i / N * duration, (j + 1) / N * duration]`` seconds.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from clap_bench.eval.grounding import temporal_iou


def cell_segments(num_clips: int, duration: float) -> Tuple[np.ndarray, np.ndarray]:
    """Start and end times (s) of every cell, each ``(N, N)``: ``start[i, j] = i/N*d``, ``end[i, j] = (j+1)/N*d``."""
    idx = np.arange(num_clips, dtype=np.float64)
    starts = np.broadcast_to((idx / num_clips * duration)[:, None], (num_clips, num_clips))
    ends = np.broadcast_to(((idx + 1) / num_clips * duration)[None, :], (num_clips, num_clips))
    return starts, ends


def iou_map(num_clips: int, duration: float, segment: Sequence[float]) -> np.ndarray:
    """``(N, N)`` IoU of each cell's moment with ``segment``; cells with ``j < i`` are 0."""
    starts, ends = cell_segments(num_clips, duration)
    cells = np.stack([starts.ravel(), ends.ravel()], axis=1)
    iou = temporal_iou(cells, segment).reshape(num_clips, num_clips)
    return np.triu(iou)


def scaled_iou_targets(iou: torch.Tensor | np.ndarray, min_iou: float, max_iou: float) -> torch.Tensor:
    """2D-TAN's training targets: ``clamp((IoU - min_iou) / (max_iou - min_iou), 0, 1)``."""
    if not max_iou > min_iou:
        raise ValueError(f"IoU scaling needs max_iou > min_iou, got ({min_iou}, {max_iou})")
    iou = torch.as_tensor(iou, dtype=torch.float32)
    return ((iou - min_iou) / (max_iou - min_iou)).clamp(0.0, 1.0)


def masked_bce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(logits)`` against soft targets, averaged over valid map cells."""
    mask = mask.to(logits.dtype).expand_as(logits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def nms(segments: np.ndarray, threshold: float, top_k: int = -1) -> List[int]:
    """Greedy 1-D non-maximum suppression over ``segments`` ranked best first.

    Keeps the first segment, drops every later one whose IoU with it is **greater** than
    ``threshold`` (an IoU equal to the threshold survives), repeats; stops after ``top_k`` kept
    (``-1``: no limit). Returns the kept indices, in rank order.
    """
    segs = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    lengths = segs[:, 1] - segs[:, 0]
    order = np.arange(len(segs))
    keep: List[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if len(keep) == top_k:
            break
        rest = order[1:]
        # 2D-TAN's nms (lib/core/eval.py): the union as the two lengths less the intersection. It is
        # the hull wherever they overlap, but rounds otherwise, and on the map's grid IoUs equal to
        # the threshold are common (whole cells: 2/5 = 0.4 on TACoS), where the rounding decides.
        inter = np.maximum(0.0, np.minimum(segs[rest, 1], segs[best, 1]) - np.maximum(segs[rest, 0], segs[best, 0]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ious = inter / (lengths[best] + lengths[rest] - inter)
        order = rest[ious <= threshold]
    return keep


def rank_moments(
    scores: torch.Tensor,
    mask: torch.Tensor,
    duration: float,
    nms_threshold: float,
    top_k: int,
) -> Tuple[List[List[float]], List[float]]:
    """Map scores ``(N, N)`` -> the ``top_k`` moments (seconds) after NMS, best first, with their scores.

    Only cells of the sparse map are candidates; ties keep the row-major cell order.
    """
    n = scores.shape[-1]
    cells = torch.nonzero(mask, as_tuple=False)
    cell_scores = scores[cells[:, 0], cells[:, 1]].detach().cpu().double().numpy()
    order = np.argsort(-cell_scores, kind="stable")
    cells = cells.cpu()[torch.from_numpy(order)]
    # Times in float32, as 2D-TAN computes them (test.py: ``sorted_indexs.float() / target_size * duration``):
    # NMS decides ties at its threshold on their rounding.
    bounds = torch.stack([cells[:, 0], cells[:, 1] + 1], dim=1).float()
    segs = (bounds / n * float(duration)).double().numpy()
    keep = nms(segs, nms_threshold, top_k)
    return segs[keep].tolist(), cell_scores[order][keep].tolist()
