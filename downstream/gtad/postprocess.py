"""From G-TAD outputs to ActivityNet detections: proposal scores, Gaussian soft-NMS, class labels.

Each valid anchor ``(d, s)`` is a proposal ``[s/T, (s+d+1)/T]``. Its score (``score``):

- ``"map"``: ``reg[d, s] * cls[d, s]``, the two map outputs, as G-TAD's released code scores
  proposals (``clr_score * reg_socre`` in ``gtad_postprocess.py``, ActivityNet and THUMOS14);
- ``"boundaries_and_map"``: ``start[s] * end[s+d+1] * reg[d, s] * cls[d, s]``, the boundary
  probabilities at its two ends times the map outputs, as BMN scores them.

Which anchors are proposals (``candidates``):

- ``"all"``: every anchor;
- ``"boundary_peaks"``: only anchors whose start is a candidate start and whose end a candidate
  end, as G-TAD's ActivityNet inference (and BMN) keep them: snippet 0 (for starts) and the last
  snippet (for ends) always; any inner snippet whose probability is a local maximum or above half
  the video's maximum.

Either way, as in both codes, an anchor ending at the video's last boundary (``s+d+1 = T``) has
no end probability and is not a proposal.

Gaussian soft-NMS (Bodla et al. 2017) as G-TAD applies it on ActivityNet: repeatedly keep the
highest-scoring proposal and multiply the score of every remaining proposal that overlaps it
(IoU > ``iou_threshold``, 0 by default) by ``exp(-IoU^2 / sigma)``; stop after ``top_k``.
(BMN's variant only decays above a width-dependent IoU threshold; G-TAD decays every overlap.)
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


PROPOSAL_SCORES = ("map", "boundaries_and_map")
PROPOSAL_CANDIDATES = ("all", "boundary_peaks")


def boundary_candidates(prob: torch.Tensor, always: int) -> torch.Tensor:
    """``(T,)`` bool: snippets that are local maxima of ``prob`` or above half its maximum, and ``always``.

    Only inner snippets (``1 .. T-2``) are tested, as in BMN and G-TAD: the first and last can
    only be candidates through ``always`` (0 for starts, ``T-1`` for ends).
    """
    t = prob.shape[0]
    keep = torch.zeros(t, dtype=torch.bool)
    inner = prob[1:-1]
    peak = (inner > prob[2:]) & (inner > prob[:-2])
    keep[1:-1] = peak | (inner > 0.5 * prob.max())
    keep[always] = True
    return keep


def proposals_from_outputs(
    anchor_map: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    score: str = "boundaries_and_map",
    candidates: str = "all",
) -> np.ndarray:
    """One video's outputs (``(2, T, T)``, ``(T,)``, ``(T,)``) -> ``(P, 3)`` ``[start, end, score]`` in normalised time."""
    if score not in PROPOSAL_SCORES:
        raise ValueError(f"proposal score: expected one of {PROPOSAL_SCORES}, got {score!r}")
    if candidates not in PROPOSAL_CANDIDATES:
        raise ValueError(f"proposal candidates: expected one of {PROPOSAL_CANDIDATES}, got {candidates!r}")
    t = start.shape[0]
    start = start.detach().float().cpu()
    end = end.detach().float().cpu()
    d, s = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    end_index = s + d + 1
    ok = end_index < t
    if candidates == "boundary_peaks":
        ok &= boundary_candidates(start, 0)[s] & boundary_candidates(end, t - 1)[end_index.clamp(max=t - 1)]
    d, s, end_index = d[ok], s[ok], end_index[ok]
    anchor_map = anchor_map.detach().float().cpu()
    value = anchor_map[0, d, s] * anchor_map[1, d, s]
    if score == "boundaries_and_map":
        value = start[s] * end[end_index] * value
    return torch.stack([s.double() / t, end_index.double() / t, value.double()], dim=1).numpy()


def soft_nms(proposals: np.ndarray, sigma: float = 0.8, top_k: int = 100, iou_threshold: float = 0.0) -> np.ndarray:
    """Gaussian soft-NMS of ``(P, 3)`` ``[start, end, score]`` rows; returns up to ``top_k`` rows, best first."""
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 3)
    starts, ends = proposals[:, 0].copy(), proposals[:, 1].copy()
    scores = proposals[:, 2].copy()
    remaining = np.ones(len(scores), dtype=bool)
    kept: List[Tuple[float, float, float]] = []
    while len(kept) < top_k and remaining.any():
        candidates = np.flatnonzero(remaining)
        best = candidates[np.argmax(scores[candidates])]  # first of equal scores: stable order
        kept.append((starts[best], ends[best], scores[best]))
        remaining[best] = False
        others = np.flatnonzero(remaining)
        if not len(others):
            break
        inter = np.clip(np.minimum(ends[others], ends[best]) - np.maximum(starts[others], starts[best]), 0.0, None)
        union = (ends[others] - starts[others]) + (ends[best] - starts[best]) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        decay = iou > iou_threshold
        scores[others[decay]] *= np.exp(-np.square(iou[decay]) / sigma)
    return np.asarray(kept, dtype=np.float64).reshape(-1, 3)


def detections_for_video(
    proposals: np.ndarray, duration: float, classes: Sequence[Tuple[str, float]]
) -> List[Dict]:
    """ActivityNet result entries: every proposal once per ``(class, probability)``, score times probability.

    ``proposals`` are normalised ``[start, end, score]`` rows; segments come back in seconds,
    clipped to the video.
    """
    out = []
    for label, prob in classes:
        for start, end, score in proposals:
            out.append({
                "label": label,
                "score": float(score * prob),
                "segment": [float(max(0.0, start) * duration), float(min(1.0, end) * duration)],
            })
    return out
