"""Video language grounding scorer: Rank@{1,5} at temporal IoU {0.1, 0.3, 0.5, 0.7} and mIoU.

The protocol is the one 2D-TAN's evaluation computes (Zhang et al., AAAI 2020):

* a query counts as recalled at ``Rank@k, IoU@t`` when any of its first ``k`` predicted segments
  has a temporal IoU with the ground-truth segment **strictly greater** than ``t``;
* ``mIoU`` is the mean, over queries, of the IoU of the top-1 prediction.

The predictions are taken as given (already ranked best first, already non-maximum suppressed
by the model that made them). A query with no prediction counts as a miss at every threshold
and contributes IoU 0 to the mean.

Input formats (JSON files or the equivalent Python lists)::

    ground truth: [{"id": "vid#0", "segment": [start, end]}, ...]
    predictions:  [{"id": "vid#0", "segments": [[start, end], ...]}, ...]   # best first

Times are in seconds. Other keys (``video``, ``sentence``, ``duration``, ``scores``) are allowed
and ignored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

IOU_THRESHOLDS: Tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
RANKS: Tuple[int, ...] = (1, 5)

Source = Union[str, Path, List[dict]]


class GroundingFormatError(ValueError):
    """Malformed ground truth or predictions; the message names the source, the entry and the key."""


# --------------------------------------------------------------------------- IoU
def temporal_iou(segments: Any, reference: Sequence[float]) -> np.ndarray:
    """IoU of each ``[start, end]`` row of ``segments`` with one reference segment.

    ``segments`` is anything of shape ``(K, 2)``; the result has shape ``(K,)``. A pair whose
    union is empty (two zero-length segments at the same instant) has IoU 0.
    """
    segs = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    ref_start, ref_end = float(reference[0]), float(reference[1])
    inter = np.clip(np.minimum(segs[:, 1], ref_end) - np.maximum(segs[:, 0], ref_start), 0.0, None)
    union = np.maximum(segs[:, 1], ref_end) - np.minimum(segs[:, 0], ref_start)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


# --------------------------------------------------------------------------- reading
def _load(source: Source, what: str) -> Tuple[List[Any], str]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise GroundingFormatError(f"{path}: {what} file not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GroundingFormatError(f"{path}: not valid JSON ({e})") from None
        name = str(path)
    else:
        data, name = source, f"<{what}>"
    if not isinstance(data, list):
        raise GroundingFormatError(f"{name}: expected a JSON list of {what} entries, got {type(data).__name__}")
    return data, name


def _query_id(entry: Any, index: int, name: str) -> Union[str, int]:
    if not isinstance(entry, dict):
        raise GroundingFormatError(f"{name}: entry {index}: expected an object with 'id', got {type(entry).__name__}")
    if "id" not in entry:
        raise GroundingFormatError(f"{name}: entry {index}: missing key 'id'")
    qid = entry["id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise GroundingFormatError(f"{name}: entry {index}: 'id' must be a string or an integer, got {qid!r}")
    return qid


def _segment(value: Any, where: str) -> Tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise GroundingFormatError(f"{where}: expected [start, end] (two numbers), got {value!r}")
    start, end = value
    for v in (start, end):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise GroundingFormatError(f"{where}: expected [start, end] (two finite numbers), got {value!r}")
    if end < start:
        raise GroundingFormatError(f"{where}: end {end} is before start {start}")
    return float(start), float(end)


def read_ground_truth(source: Source) -> Dict[Union[str, int], Tuple[float, float]]:
    """Query id -> (start, end), checked: unique ids, ``end > start``."""
    data, name = _load(source, "ground truth")
    if not data:
        raise GroundingFormatError(f"{name}: no ground-truth queries")
    out: Dict[Union[str, int], Tuple[float, float]] = {}
    for i, entry in enumerate(data):
        qid = _query_id(entry, i, name)
        if "segment" not in entry:
            raise GroundingFormatError(f"{name}: entry {i} (id {qid!r}): missing key 'segment' ([start, end] in seconds)")
        start, end = _segment(entry["segment"], f"{name}: entry {i} (id {qid!r}): 'segment'")
        if end <= start:
            raise GroundingFormatError(f"{name}: entry {i} (id {qid!r}): 'segment' has zero length ({start}, {end})")
        if qid in out:
            raise GroundingFormatError(f"{name}: entry {i}: duplicate query id {qid!r}")
        out[qid] = (start, end)
    return out


def read_predictions(source: Source) -> Dict[Union[str, int], List[Tuple[float, float]]]:
    """Query id -> ranked list of (start, end), checked: unique ids, well-formed segments."""
    data, name = _load(source, "predictions")
    out: Dict[Union[str, int], List[Tuple[float, float]]] = {}
    for i, entry in enumerate(data):
        qid = _query_id(entry, i, name)
        if "segments" not in entry:
            raise GroundingFormatError(
                f"{name}: entry {i} (id {qid!r}): missing key 'segments' (a ranked list of [start, end])"
            )
        segs = entry["segments"]
        if not isinstance(segs, list):
            raise GroundingFormatError(
                f"{name}: entry {i} (id {qid!r}): 'segments' must be a list of [start, end], got {type(segs).__name__}"
            )
        parsed = [_segment(s, f"{name}: entry {i} (id {qid!r}): 'segments'[{k}]") for k, s in enumerate(segs)]
        if qid in out:
            raise GroundingFormatError(f"{name}: entry {i}: duplicate query id {qid!r}")
        out[qid] = parsed
    return out


# --------------------------------------------------------------------------- scoring
def _threshold_key(t: float) -> str:
    return f"{t:g}"


def evaluate_grounding(
    ground_truth: Source,
    predictions: Source,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    ranks: Sequence[int] = RANKS,
) -> Dict[str, Any]:
    """Score ranked grounding predictions against ground truth.

    Returns ``{"R@1": {"0.1": x, "0.3": x, "0.5": x, "0.7": x}, "R@5": {...}, "mIoU": x,
    "num_queries": n, "num_predicted": m}`` with fractions in [0, 1].
    Raises ``GroundingFormatError`` for malformed input, duplicate ids, or a prediction whose id
    is not a ground-truth query.
    """
    gt = read_ground_truth(ground_truth)
    preds = read_predictions(predictions)
    unknown = [qid for qid in preds if qid not in gt]
    if unknown:
        where = predictions if isinstance(predictions, (str, Path)) else "<predictions>"
        shown = ", ".join(repr(q) for q in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise GroundingFormatError(
            f"{where}: {len(unknown)} prediction id(s) not in the ground truth: {shown}"
        )

    hits = np.zeros((len(ranks), len(iou_thresholds)), dtype=np.int64)
    top1_iou_sum = 0.0
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    for qid, segment in gt.items():
        segs = preds.get(qid, [])
        if not segs:
            continue  # a miss everywhere, IoU 0
        ious = temporal_iou(segs, segment)
        top1_iou_sum += float(ious[0])
        for r, k in enumerate(ranks):
            best = ious[:k].max()
            hits[r] += best > thresholds  # strictly greater, as 2D-TAN counts
    n = len(gt)
    result: Dict[str, Any] = {}
    for r, k in enumerate(ranks):
        result[f"R@{k}"] = {_threshold_key(t): float(hits[r, j]) / n for j, t in enumerate(iou_thresholds)}
    result["mIoU"] = top1_iou_sum / n
    result["num_queries"] = n
    result["num_predicted"] = sum(1 for qid in gt if preds.get(qid))
    return result


def flatten_metrics(metrics: Dict[str, Any], prefix: str = "") -> Dict[str, float]:
    """``{"R@1": {"0.5": x}, "mIoU": y}`` -> ``{prefix + "R@1@0.5": x, prefix + "mIoU": y}`` (fractions)."""
    flat: Dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith("R@") and isinstance(value, dict):
            for t, v in value.items():
                flat[f"{prefix}{key}@{t}"] = float(v)
        elif key == "mIoU":
            flat[f"{prefix}mIoU"] = float(value)
    return flat


def format_grounding_table(metrics: Dict[str, Any]) -> str:
    """A plain-text table of the metrics, in percent, for people."""
    ranks = [k for k in metrics if k.startswith("R@")]
    thresholds = list(metrics[ranks[0]].keys()) if ranks else []
    header = [f"{r},IoU>{t}" for r in ranks for t in thresholds] + ["mIoU"]
    values = [f"{100 * metrics[r][t]:.2f}" for r in ranks for t in thresholds] + [f"{100 * metrics['mIoU']:.2f}"]
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(header, widths)),
        "  ".join(v.rjust(w) for v, w in zip(values, widths)),
    ]
    if "num_queries" in metrics:
        lines.append(f"queries: {metrics['num_queries']}, with predictions: {metrics.get('num_predicted', '?')}")
    return "\n".join(lines)
