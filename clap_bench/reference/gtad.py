"""G-TAD beside its reference code (frostinassiky/gtad): the parts of the comparison that need no reference code.

``benchmarks/reference/gtad_vs_reference.py`` runs the reference's own label, loss, soft-NMS and
post-processing functions on our inputs and compares what they return with ours. This module
holds what that script needs besides the reference code, so that the test suite can check it:

- where the reference lives (``GTAD_URL``, ``GTAD_COMMIT``) and ``require_gtad``;
- our inputs in the reference's layouts: ground truth and snippet intervals in the units of its
  label code, the uniform draws its regression loss samples anchors with, proposals as its
  columns, frame rates that make its frame numbers our snippets;
- closed forms that attribute a difference to its cause (the classification loss with the count
  offsets of the THUMOS14 code, the anchor-sampling ratios of the regression loss);
- the comparison itself: largest absolute differences, detections grouped by class, the report.

The reference at ``GTAD_COMMIT`` (its default branch) is G-TAD's THUMOS14 code; the ActivityNet
code the paper's G-TAD runs is the commit ``GTAD_ANET_COMMIT``. The two share the label, loss and
soft-NMS functions up to the differences the report names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

from clap_bench.reference import require_reference

GTAD_URL = "https://github.com/frostinassiky/gtad"
GTAD_COMMIT = "6deb5b1bc6883b48bd22e0cc593069643c953e3d"
GTAD_MARKER = "gtad_lib/loss_function.py"
# The ActivityNet code (gtad_anet.sh, ActivityNet options and post-processing); cited, not run.
GTAD_ANET_COMMIT = "f9afd442a3efb7b1d1ec07d08a38ce69dd34fa09"


def require_gtad(path: Union[str, Path, None]) -> Path:
    """The G-TAD checkout at ``path``, or an error that says how to fetch it."""
    return require_reference(path, "G-TAD", GTAD_URL, GTAD_COMMIT, GTAD_MARKER)


# --------------------------------------------------------------------------------------------
# Our inputs in the reference's layouts
# --------------------------------------------------------------------------------------------


@dataclass
class WindowLabelInput:
    """One video as the label code of the reference's THUMOS14 data set reads a window of it.

    With one snippet per "frame" (``skip_videoframes = 1``) and the window covering the video's
    ``T`` snippets, its frame numbers are our snippet indices: ``gt_bbox`` holds the segments in
    snippets (``T`` times their fraction of the video), ``anchor_xmins`` / ``anchor_xmaxs`` the
    interval of each snippet.
    """

    gt_bbox: np.ndarray  # (N, 2)
    anchor_xmins: np.ndarray  # (T,)
    anchor_xmaxs: np.ndarray  # (T,)

    def as_data(self) -> Dict[str, list]:
        """The layout of the reference's ``VideoDataSet.data`` for a single window (index 0)."""
        return {
            "gt_bbox": [self.gt_bbox.tolist()],
            "anchor_xmins": [self.anchor_xmins],
            "anchor_xmaxs": [self.anchor_xmaxs],
        }


def window_label_input(
    segments: Sequence[Tuple[float, float]],
    duration: float,
    temporal_scale: int,
    snippet_bounds: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
) -> WindowLabelInput:
    """Segments in seconds -> the reference's label input (see ``WindowLabelInput``).

    ``snippet_bounds``: each snippet's interval as fractions of the video (e.g. the
    ``anchor_xmin`` / ``anchor_xmax`` lists the reference's ``_get_match_map`` builds); by default
    ``[(i-0.5)/T, (i+0.5)/T]``. Segments are not clipped to the video: the reference clips them
    itself where it does.
    """
    if duration <= 0:
        raise ValueError(f"video duration must be > 0 s, got {duration}")
    gt = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    if not len(gt):
        raise ValueError("the reference's label code needs at least one segment")
    if snippet_bounds is None:
        index = np.arange(temporal_scale, dtype=np.float64)
        lo, hi = (index - 0.5) / temporal_scale, (index + 0.5) / temporal_scale
    else:
        lo, hi = (np.asarray(b, dtype=np.float64) for b in snippet_bounds)
        if lo.shape != (temporal_scale,) or hi.shape != (temporal_scale,):
            raise ValueError(f"snippet bounds: expected two lists of {temporal_scale} values, got {lo.shape} and {hi.shape}")
    return WindowLabelInput(gt / duration * temporal_scale, lo * temporal_scale, hi * temporal_scale)


def reference_uniform_draws(draws: Iterable[torch.Tensor]) -> List[np.ndarray]:
    """The draws the reference's regression loss must get from ``np.random.rand`` to sample as ours did.

    Ours keeps an anchor when its draw ``d < ratio``, the reference when its draw ``u > 1 - ratio``;
    ``u = 1 - d`` makes the two choose the same anchors.
    """
    return [1.0 - d.detach().cpu().double().numpy() for d in draws]


def sampling_ratios(gt_iou: torch.Tensor, mask: torch.Tensor) -> Tuple[float, float]:
    """``(N_high / N_mid, N_high / N_low)`` of the regression loss over a batch's masked IoU maps.

    Above 1, the reference's sampling marks every cell of the map (its draws are compared after
    multiplying them by the band's mask, and ``0 > 1 - ratio`` holds), while ours keeps every
    anchor of the band only.
    """
    gt_iou = gt_iou * mask
    high = float((gt_iou > 0.7).sum())
    mid = float(((gt_iou <= 0.7) & (gt_iou > 0.3)).sum())
    low = float((((gt_iou <= 0.3) & (gt_iou > 0.0)).float() * mask).sum())
    return (high / mid if mid else float("inf")), (high / low if low else float("inf"))


def reference_regression_weights(gt_iou: torch.Tensor, mask: torch.Tensor, draws: Sequence[torch.Tensor]) -> torch.Tensor:
    """The anchor weights of the reference's regression loss for our ``draws`` (mid band, then low band).

    Written out to attribute a difference, not to train with: below ratio 1 they are ours (every
    anchor of IoU > 0.7, each of the other two bands kept when its draw is below the band's
    ratio); above ratio 1 the reference's comparison ``band * (1 - d) > 1 - ratio`` also holds
    where ``band`` is 0, so every cell of the map gets the band's weight (see ``sampling_ratios``).
    """
    gt_iou = gt_iou * mask
    high = (gt_iou > 0.7).float()
    mid = ((gt_iou <= 0.7) & (gt_iou > 0.3)).float()
    low = ((gt_iou <= 0.3) & (gt_iou > 0.0)).float() * mask
    weights = high.clone()
    for band, draw in ((mid, draws[0]), (low, draws[1])):
        ratio = high.sum() / band.sum()
        weights += ((band * (1.0 - draw)) > (1.0 - ratio)).float()
    return weights


def weighted_regression_loss(pred: torch.Tensor, gt_iou: torch.Tensor, weights: torch.Tensor) -> float:
    """``0.5 * sum((w * (pred - gt))^2) / sum(w)``: the reference's form (it weights the difference before squaring)."""
    return float(0.5 * ((weights * (pred - gt_iou)) ** 2).sum() / weights.sum())


def classification_loss_with_count_offset(
    pred: torch.Tensor, gt_iou: torch.Tensor, mask: torch.Tensor, count_offset: float
) -> float:
    """The map classification loss with ``count_offset`` added to both class counts.

    The balanced loss is ``-(0.5 S_pos / N_pos + 0.5 S_neg / N_neg)``, the mean log-likelihood of
    each class weighted equally (``S`` sums ``log(p + 1e-6)`` over positives, ``log(1 - p + 1e-6)``
    over negatives; positives are anchors with IoU > 0.9). ``count_offset = 0`` is BMN's and G-TAD's
    ActivityNet form (and ours); the THUMOS14 code adds 10 to the number of positives and 20 to
    the number of entries, which works out to ``N_pos + 10`` and ``N_neg + 10``.
    """
    gt_iou = (gt_iou * mask).double()
    pred = pred.double()
    positive = (gt_iou > 0.9).double()
    negative = (gt_iou <= 0.9).double() * mask.double()
    s_pos = float((torch.log(pred + 1e-6) * positive).sum())
    s_neg = float((torch.log(1.0 - pred + 1e-6) * negative).sum())
    return -(0.5 * s_pos / (float(positive.sum()) + count_offset) + 0.5 * s_neg / (float(negative.sum()) + count_offset))


def proposal_frame(proposals: np.ndarray) -> pd.DataFrame:
    """``(P, 3)`` ``[start, end, score]`` rows -> the reference's proposal columns ``xmin``, ``xmax``, ``score``."""
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 3)
    return pd.DataFrame({"xmin": proposals[:, 0], "xmax": proposals[:, 1], "score": proposals[:, 2]})


def proposals_from_frame(frame: pd.DataFrame) -> np.ndarray:
    """The reference's ``score``, ``xmin``, ``xmax`` columns -> ``(P, 3)`` ``[start, end, score]``, in its row order."""
    for column in ("xmin", "xmax", "score"):
        if column not in frame:
            raise KeyError(f"proposal table: column {column!r} missing; columns: {list(frame.columns)}")
    return np.stack([frame["xmin"].to_numpy(float), frame["xmax"].to_numpy(float), frame["score"].to_numpy(float)], axis=1)


def snippet_frame_rate(temporal_scale: int, duration: float) -> float:
    """Frames per second that make the reference's frame numbers our snippet indices (one "frame" per snippet)."""
    if duration <= 0:
        raise ValueError(f"video duration must be > 0 s, got {duration}")
    return temporal_scale / duration


def check_names_distinct(names: Sequence[str]) -> None:
    """The reference finds a video's result files by substring (``video_name in file_name``): no name may lie inside another."""
    for a in names:
        for b in names:
            if a != b and a in b:
                raise ValueError(f"video names {a!r} and {b!r}: the first lies inside the second, the reference would mix their results")


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def max_abs_diff(ours, theirs, what: str) -> float:
    """Largest absolute difference of two arrays of the same shape (0 for empty ones)."""
    a = np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    b = np.asarray(theirs.detach().cpu() if isinstance(theirs, torch.Tensor) else theirs, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{what}: ours has shape {a.shape}, the reference's {b.shape}")
    if not a.size:
        return 0.0
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    return float(np.max(np.abs(a - b)))


@dataclass
class Check:
    """One compared quantity: its largest difference and what it means.

    ``explained``: where ours differs by design, the cause and the largest difference left once
    that cause is applied to our side (``explained_diff``), which must itself be within tolerance.
    """

    name: str
    diff: float
    tolerance: float
    explained: str = ""
    explained_diff: Optional[float] = None

    @property
    def verdict(self) -> str:
        if self.diff <= self.tolerance:
            return "equal"
        if self.explained and self.explained_diff is not None and self.explained_diff <= self.tolerance:
            return "by design"
        return "DIFFERS"


def render_checks(checks: Sequence[Check]) -> str:
    """The report: one line per check, then the causes of the differences by design."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'compared':<{width}}  {'max |ours - ref|':>16}  {'tolerance':>9}  verdict"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.diff:>16.3g}  {c.tolerance:>9.0e}  {c.verdict}")
    designed = [c for c in checks if c.verdict != "equal" and c.explained]
    if designed:
        lines.append("")
        lines.append("where they differ:")
        for c in designed:
            left = "" if c.explained_diff is None else f" (left once applied: {c.explained_diff:.3g})"
            lines.append(f"- {c.name}: {c.explained}{left}")
    return "\n".join(lines)


def detections_by_label(entries: Iterable[Mapping], rename: Optional[Mapping[str, str]] = None) -> Dict[str, np.ndarray]:
    """ActivityNet result entries -> ``{label: (n, 3) [score, start, end]}``, in the order given.

    Ours list a video's entries class by class, the reference proposal by proposal; within a
    class both follow the proposals' order, which this keeps.
    """
    grouped: Dict[str, List[List[float]]] = {}
    for i, entry in enumerate(entries):
        try:
            label, score, (start, end) = entry["label"], entry["score"], entry["segment"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"detection {i}: expected label, score and a two-value segment, got {entry!r}") from err
        label = rename.get(label, label) if rename else label
        grouped.setdefault(label, []).append([float(score), float(start), float(end)])
    return {label: np.asarray(rows, dtype=np.float64) for label, rows in grouped.items()}


@dataclass
class DetectionDiff:
    score: float  # largest score difference over the rows both keep
    segment: float  # largest segment difference (s) over the rows both keep
    counts: Dict[str, Tuple[int, int]]  # label -> (ours, reference) numbers of detections


def compare_detections(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]) -> DetectionDiff:
    """Row by row within each label, over the first ``min(n_ours, n_ref)`` rows; the counts say how many each kept."""
    if set(ours) != set(theirs):
        raise ValueError(f"labels differ: ours {sorted(ours)}, the reference's {sorted(theirs)}")
    score = segment = 0.0
    counts = {}
    for label in ours:
        a, b = ours[label], theirs[label]
        n = min(len(a), len(b))
        counts[label] = (len(a), len(b))
        if n:
            score = max(score, max_abs_diff(a[:n, 0], b[:n, 0], f"{label} scores"))
            segment = max(segment, max_abs_diff(a[:n, 1:], b[:n, 1:], f"{label} segments"))
    return DetectionDiff(score, segment, counts)

