"""ActivityNet temporal action detection mAP, computed as the official ActivityNet evaluation does.

The official scorer (``Evaluation/eval_detection.py`` of the ActivityNet challenge) defines the
numbers every temporal-action-localization paper reports on ActivityNet v1.3. This module gives
the same numbers (the same operations on the same floats: bit for bit on every case we compared
with a literal re-implementation of the official loop) in a fraction of the time:
the official code walks every prediction in a Python loop over pandas rows, which takes minutes
on a validation-sized result file; here all tIoUs are computed in a few array operations and the
greedy matching runs for all thresholds and all (class, video) pairs at once.

Semantics, each one a choice of the official code that we keep:

* **Ground truth of one subset.** Only videos whose ``subset`` equals the requested one count.
  Predictions on any other video (a training video, an unknown id) are false positives.
* **Classes.** The class list is the set of labels annotated in that subset, indexed in order of
  first appearance in the file; the ``taxonomy`` is not read. mAP is the mean over exactly these
  classes, so a class without any prediction scores 0 and still counts in the mean.
* **Order of predictions.** Per class, predictions are taken in file order (videos in the order
  of ``results``, detections in list order: what the official code sees under Python 3, whose
  dicts keep the file's order) and sorted with ``numpy.argsort(scores)[::-1]``, the official
  call. NumPy's default sort is not stable, so the order among equal scores is whatever that
  call gives; we make the same call on the same float64 array, so ties resolve identically.
* **Matching.** At each tIoU threshold, a prediction looks at the ground-truth segments of its
  class and video sorted by tIoU with it (``argsort(tiou)[::-1]``, same call again), stops at the
  first one below the threshold, skips those already matched at this threshold, and matches the
  first one left; if none, it is a false positive. A second detection of an already matched
  segment is therefore a false positive.
* **Thresholds.** ``numpy.linspace(0.5, 0.95, 10)``, the official default, whose 9th value is
  0.8999999999999999, not 0.9: a tIoU that is 0.9 in decimal arithmetic but one rounding step
  below it in floats (ground truth [0.2, 1.2], detection [0.3, 1.2]) is a match there and would
  not be at the decimal 0.90. Every published ActivityNet number used these thresholds; others
  are taken only when asked for (``tiou_thresholds=``, ``clapbench eval detection --tiou``).
* **AP.** VOC all-point interpolated average precision of the precision/recall curve, recall
  relative to the number of ground-truth segments of the class in the subset.

Where we differ, on purpose:

* The official code fetches a list of "blocked" videos from a challenge server that no longer
  exists; we remove none (the official ``check_status=False``).
* ``taxonomy``/``version`` of the ground truth and ``version``/``external_data`` of the
  predictions are optional here (the official code insists on their presence and never reads them).
* A predicted label that no annotation of the ground-truth file carries is an error naming the
  label (the official code dies with a bare ``KeyError``). A predicted label that is annotated only
  in other subsets is also a ``KeyError`` there; here those predictions are dropped with a warning.
  A prediction only ever enters the AP of its own class, and such a class has no AP in this
  subset, so the result is what the official code gives once those predictions are removed.
* Malformed files raise :class:`DetectionFileError` naming the file, the key and what was
  expected, e.g. ``results.v_abc[3].segment: expected [start, end] with start <= end``.
* ActivityNet's own ground truth keys videos without the ``v_`` prefix that many feature and
  prediction files carry. Ids are compared as given; when no predicted id matches a ground-truth
  id but some would after adding or removing ``v_``, we raise an error saying so rather than
  score every prediction as a false positive.
"""

from __future__ import annotations

import itertools
import json
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

# The official scorer's own expression, so that the floats (0.8999999999999999 at "0.9") are its floats.
DEFAULT_TIOU_THRESHOLDS: Tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))

VIDEO_ID_PREFIX = "v_"

Source = Union[Mapping[str, Any], str, Path]


class DetectionFileError(ValueError):
    """A malformed ground-truth or prediction file: the message names the file, the key and what was expected."""

    def __init__(self, source: str, where: str, problem: str):
        self.source = source
        self.where = where
        self.problem = problem
        super().__init__(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


@dataclass
class GroundTruth:
    """Ground truth of one subset, one row per annotated segment, in the file's order."""

    source: str
    classes: List[str]  # class index: order of first appearance in the subset
    video_ids: List[str]  # videos of the subset with at least one segment, in file order
    segment_video: np.ndarray  # (S,) int, index into video_ids
    segment_class: np.ndarray  # (S,) int, index into classes
    segments: np.ndarray  # (S, 2) float64 [start, end] in seconds
    all_video_ids: frozenset  # every video of the file, any subset
    all_labels: frozenset  # every label annotated in the file, any subset


@dataclass
class Predictions:
    """Detections in the file's order (videos in ``results`` order, then list order)."""

    source: str
    video_ids: List[str]  # distinct video ids, in file order
    detection_video: np.ndarray  # (N,) int, index into video_ids
    labels: List[str]  # (N,)
    scores: np.ndarray  # (N,) float64
    segments: np.ndarray  # (N, 2) float64


# --------------------------------------------------------------------------------------------
# Reading and checking the two files
# --------------------------------------------------------------------------------------------


def _load(source: Source, what: str) -> Tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, f"<{what}>"
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DetectionFileError(str(path), "", f"cannot read the {what} file ({e.strerror or e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DetectionFileError(str(path), f"line {e.lineno} column {e.colno}", f"invalid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise DetectionFileError(str(path), "", f"expected a JSON object at the top level, got {_kind(data)}")
    return data, str(path)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number_type(kind: type) -> bool:
    # Real numbers, NumPy scalars included (results built in memory often hold them); not booleans.
    return issubclass(kind, numbers.Real) and not issubclass(kind, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_number_type(type(value)) and bool(np.isfinite(value))


def _check_segment(value: Any, source: str, where: str) -> Tuple[float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not _is_number(value[0])
        or not _is_number(value[1])
        or float(value[0]) > float(value[1])
    ):
        raise DetectionFileError(
            source, where, f"expected [start, end] with start <= end (finite numbers), got {value!r}"
        )
    return float(value[0]), float(value[1])


def _check_label(value: Any, source: str, where: str) -> str:
    if not isinstance(value, str):
        raise DetectionFileError(source, where, f"expected a class name (string), got {_kind(value)}")
    return value


def read_ground_truth(source: Source, subset: str = "validation") -> GroundTruth:
    """Read an ActivityNet ground-truth file (``{"database": {video_id: {"subset", "annotations"}}}``)."""
    data, name = _load(source, "ground truth")
    database = data.get("database")
    if not isinstance(database, dict):
        raise DetectionFileError(
            name, "database", f"expected an object mapping video ids to videos, got {_kind(database)}"
        )

    class_index: Dict[str, int] = {}
    classes: List[str] = []
    video_ids: List[str] = []
    segment_video: List[int] = []
    segment_class: List[int] = []
    segments: List[Tuple[float, float]] = []
    all_labels = set()
    subset_counts: Dict[str, int] = {}

    for video_id, video in database.items():
        where = f"database.{video_id}"
        if not isinstance(video, dict):
            raise DetectionFileError(
                name, where, f"expected an object with 'subset' and 'annotations', got {_kind(video)}"
            )
        video_subset = video.get("subset")
        if not isinstance(video_subset, str):
            raise DetectionFileError(
                name, f"{where}.subset", f"expected a subset name (string), got {_kind(video_subset)}"
            )
        in_subset = video_subset == subset
        if "annotations" not in video:
            if in_subset:
                raise DetectionFileError(name, f"{where}.annotations", "missing; expected a list of {segment, label}")
            continue  # other subsets (e.g. ActivityNet's unannotated testing videos) may omit it
        annotations = video["annotations"]
        if not isinstance(annotations, list):
            raise DetectionFileError(
                name, f"{where}.annotations", f"expected a list of {{segment, label}}, got {_kind(annotations)}"
            )
        subset_counts[video_subset] = subset_counts.get(video_subset, 0) + len(annotations)
        video_index = None
        for k, annotation in enumerate(annotations):
            a_where = f"{where}.annotations[{k}]"
            if not isinstance(annotation, dict):
                raise DetectionFileError(
                    name, a_where, f"expected an object with 'segment' and 'label', got {_kind(annotation)}"
                )
            label = _check_label(annotation.get("label"), name, f"{a_where}.label")
            start, end = _check_segment(annotation.get("segment"), name, f"{a_where}.segment")
            all_labels.add(label)
            if not in_subset:
                continue
            if video_index is None:
                video_index = len(video_ids)
                video_ids.append(video_id)
            if label not in class_index:
                class_index[label] = len(classes)
                classes.append(label)
            segment_video.append(video_index)
            segment_class.append(class_index[label])
            segments.append((start, end))

    if not segments:
        present = ", ".join(f"{s!r} ({n} segments)" for s, n in sorted(subset_counts.items())) or "none"
        raise DetectionFileError(
            name, "database", f"no annotated segment in subset {subset!r}; subsets with annotations: {present}"
        )
    return GroundTruth(
        source=name,
        classes=classes,
        video_ids=video_ids,
        segment_video=np.asarray(segment_video, dtype=np.int64),
        segment_class=np.asarray(segment_class, dtype=np.int64),
        segments=np.asarray(segments, dtype=np.float64).reshape(-1, 2),
        all_video_ids=frozenset(database),
        all_labels=frozenset(all_labels),
    )


def read_predictions(source: Source) -> Predictions:
    """Read an ActivityNet result file (``{"results": {video_id: [{"label", "score", "segment"}]}}``).

    Checked in bulk for speed (half a million detections are common); the first offending entry
    is then located and named by :func:`_locate_prediction_error`.
    """
    data, name = _load(source, "predictions")
    results = data.get("results")
    if not isinstance(results, dict):
        raise DetectionFileError(
            name, "results", f"expected an object mapping video ids to lists of detections, got {_kind(results)}"
        )
    video_ids = list(results)
    per_video = list(results.values())
    try:
        if not set(map(type, per_video)) <= {list}:
            raise TypeError
        labels = [detection["label"] for detections in per_video for detection in detections]
        scores = [detection["score"] for detections in per_video for detection in detections]
        segments = [detection["segment"] for detections in per_video for detection in detections]
        distinct_labels = set(labels)
    except (KeyError, TypeError, IndexError):
        _locate_prediction_error(results, name)
        raise  # not reached: _locate_prediction_error raises

    well_formed = (
        all(isinstance(label, str) for label in distinct_labels)
        and all(map(_is_number_type, set(map(type, scores))))
        and set(map(type, segments)) <= {list, tuple}
        and set(map(len, segments)) <= {2}
        and all(map(_is_number_type, set(map(type, itertools.chain.from_iterable(segments)))))
    )
    if well_formed:
        seg = np.fromiter(itertools.chain.from_iterable(segments), dtype=np.float64, count=2 * len(segments))
        seg = seg.reshape(-1, 2)
        score = np.asarray(scores, dtype=np.float64)
        well_formed = bool(np.isfinite(seg).all() and np.isfinite(score).all() and (seg[:, 0] <= seg[:, 1]).all())
    if not well_formed:
        _locate_prediction_error(results, name)
    return Predictions(
        source=name,
        video_ids=video_ids,
        detection_video=np.repeat(np.arange(len(video_ids), dtype=np.int64), list(map(len, per_video))),
        labels=labels,
        scores=score,
        segments=seg,
    )


def _locate_prediction_error(results: Mapping[str, Any], name: str) -> None:
    """Walk the detections one by one and raise on the first malformed one."""
    for video_id, detections in results.items():
        where = f"results.{video_id}"
        if not isinstance(detections, list):
            raise DetectionFileError(
                name, where, f"expected a list of {{label, score, segment}}, got {_kind(detections)}"
            )
        for k, detection in enumerate(detections):
            d_where = f"{where}[{k}]"
            if not isinstance(detection, dict):
                raise DetectionFileError(
                    name, d_where, f"expected an object with 'label', 'score', 'segment', got {_kind(detection)}"
                )
            for key in ("label", "score", "segment"):
                if key not in detection:
                    raise DetectionFileError(name, f"{d_where}.{key}", "missing")
            _check_label(detection["label"], name, f"{d_where}.label")
            if not _is_number(detection["score"]):
                raise DetectionFileError(
                    name, f"{d_where}.score", f"expected a finite number, got {detection['score']!r}"
                )
            _check_segment(detection["segment"], name, f"{d_where}.segment")
    raise AssertionError("bulk check of the predictions failed but no single entry is malformed")


def _check_video_ids(gt: GroundTruth, pred: Predictions) -> None:
    """Refuse the one mistake that silently scores 0: ids that differ only by the ``v_`` prefix."""
    if not pred.video_ids or any(v in gt.all_video_ids for v in pred.video_ids):
        return

    def toggled(video_id: str) -> str:
        if video_id.startswith(VIDEO_ID_PREFIX):
            return video_id[len(VIDEO_ID_PREFIX):]
        return VIDEO_ID_PREFIX + video_id

    matching = [v for v in pred.video_ids if toggled(v) in gt.all_video_ids]
    if matching:
        example = matching[0]
        raise DetectionFileError(
            pred.source,
            "results",
            f"no predicted video id is a video of the ground truth ({gt.source}), but {len(matching)} of "
            f"{len(pred.video_ids)} would be after adding or removing the {VIDEO_ID_PREFIX!r} prefix "
            f"(e.g. {example!r} vs {toggled(example)!r}); write the ids the way the ground truth does",
        )


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _segment_tiou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """tIoU of ``pred[..., :]`` with ``gt[..., :]`` (broadcast), with the official expression order.

    The official code computes ``(gt_end - gt_start) + (pred_end - pred_start) - intersection``;
    the same operations here keep the value bit-identical. Two zero-length segments give 0/0 =
    NaN there, which then passes every threshold test (``NaN < t`` is false); kept as is.
    """
    start = np.maximum(pred[..., 0], gt[..., 0])
    end = np.minimum(pred[..., 1], gt[..., 1])
    intersection = (end - start).clip(0)
    union = (gt[..., 1] - gt[..., 0]) + (pred[..., 1] - pred[..., 0]) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersection / union


def _match(
    pred_segments: np.ndarray,
    pred_group: np.ndarray,
    grouped: np.ndarray,
    group_gt_start: np.ndarray,
    group_gt_count: np.ndarray,
    gt_segments: np.ndarray,
    thresholds: np.ndarray,
) -> np.ndarray:
    """Greedy matching for all (class, video) groups and all thresholds at once.

    ``pred_group[i]`` is the (class, video) group of detection ``i`` (every one has ground
    truth); ``grouped`` lists the detections group by group, each group in score order. Groups
    share no ground truth, so they are independent; within a group the official loop is
    sequential in score order.

    Returns a (T, N) bool array: true positive at threshold t.
    """
    n_thresholds = len(thresholds)
    true_positive = np.zeros((n_thresholds, len(pred_group)), dtype=bool)
    counts = group_gt_count[pred_group]

    # One ground-truth segment in the group (the common case): the first detection, in score
    # order, whose tIoU is not below the threshold takes it; every other one is a false positive.
    single = grouped[counts[grouped] == 1]
    if len(single):
        group = pred_group[single]
        tiou = _segment_tiou(pred_segments[single], gt_segments[group_gt_start[group]])
        passes = ~(tiou[None, :] < thresholds[:, None])  # NaN passes, as in the official test
        passed = np.cumsum(passes, axis=1)
        group_first = _first_of_run(group)
        passed_before_group = passed[:, group_first] - passes[:, group_first]
        true_positive[:, single] = passes & (passed - passed_before_group == 1)

    # Several segments: advance all groups together, one detection per group per step (step r
    # handles the r-th detection of every group), all thresholds at once.
    multi = grouped[counts[grouped] >= 2]
    if len(multi):
        group = pred_group[multi]
        width = int(counts[multi].max())
        # Each detection's candidates in the official order, argsort(tiou)[::-1] over the group's
        # segments. Computed per group size so that argsort sees exactly the official array (ties
        # among equal tIoUs then break the same way), then padded to a common width with -inf,
        # which is below every threshold: "end of the list, false positive".
        sorted_tiou = np.full((len(multi), width), -np.inf)
        sorted_gt = np.zeros((len(multi), width), dtype=np.int64)
        sizes = counts[multi]
        for m in np.unique(sizes):
            rows = np.flatnonzero(sizes == m)
            gt_index = group_gt_start[group[rows]][:, None] + np.arange(m)[None, :]
            tiou = _segment_tiou(pred_segments[multi[rows]][:, None, :], gt_segments[gt_index])
            order = np.argsort(tiou, axis=1)[:, ::-1]
            sorted_tiou[rows, :m] = np.take_along_axis(tiou, order, axis=1)
            sorted_gt[rows, :m] = np.take_along_axis(gt_index, order, axis=1)

        # A detection below the lowest threshold with its best candidate is a false positive
        # everywhere and locks nothing: only the others need the sequential pass.
        contender = ~(sorted_tiou[:, 0] < thresholds.min())
        multi, group = multi[contender], group[contender]
        sorted_tiou, sorted_gt = sorted_tiou[contender], sorted_gt[contender]
        step = np.arange(len(multi)) - _first_of_run(group)

        locked = np.zeros((n_thresholds, len(gt_segments)), dtype=bool)
        by_step = np.argsort(step, kind="stable")
        n_steps = int(step.max()) + 1 if len(step) else 0
        step_bounds = np.searchsorted(step[by_step], np.arange(n_steps + 1))
        for r in range(n_steps):
            rows = by_step[step_bounds[r] : step_bounds[r + 1]]
            candidates = sorted_gt[rows]  # (k, W)
            # The official loop stops at the first candidate below the threshold. Candidates are
            # in non-increasing tIoU order (a NaN, never "below", sorts first), so "below" is
            # false up to that point and true from there on: no cumulative test needed.
            below = sorted_tiou[rows][None, :, :] < thresholds[:, None, None]  # (T, k, W)
            eligible = ~below & ~locked[:, candidates]
            hit = eligible.any(axis=2)  # (T, k)
            first = eligible.argmax(axis=2)
            true_positive[:, multi[rows]] = hit
            t_hit, k_hit = np.nonzero(hit)
            locked[t_hit, candidates[k_hit, first[t_hit, k_hit]]] = True
    return true_positive


def _first_of_run(keys: np.ndarray) -> np.ndarray:
    """For each position of a grouped array, the position where its run of equal keys starts."""
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return np.repeat(starts, np.diff(np.concatenate([starts, [len(keys)]])))


def _average_precision(
    true_positive: np.ndarray, ranked_bounds: np.ndarray, positives: np.ndarray
) -> np.ndarray:
    """VOC all-point interpolated AP per threshold and class, as the official ``interpolated_prec_rec``.

    ``true_positive`` is (T, N) over the detections of all classes, class after class, each in
    score order. The official code builds the whole precision/recall curve; only the true
    positives matter, though: recall steps exactly there (from (k-1)/npos to k/npos at the k-th),
    and the envelope max(precision from here on) at a true positive is attained at a true
    positive, since precision only falls between two of them. The sum is taken over the same
    terms in the same order (a trailing 0 when recall never reaches 1) with ``np.sum`` as the
    official code does, so the floats are identical.
    """
    n_thresholds, n_classes = true_positive.shape[0], len(positives)
    ap = np.zeros((n_thresholds, n_classes))
    class_of_position = np.repeat(np.arange(n_classes), np.diff(ranked_bounds))
    hit_threshold, position = np.nonzero(true_positive)  # by threshold, then rank: classes contiguous
    if len(position) == 0:
        return ap
    hit_class = class_of_position[position]
    segment = hit_threshold * n_classes + hit_class
    k = (np.arange(len(segment)) - _first_of_run(segment) + 1).astype(np.float64)
    npos = positives[hit_class].astype(np.float64)
    recall = k / npos
    recall_step = recall - (k - 1.0) / npos
    precision = k / (position - ranked_bounds[hit_class] + 1).astype(np.float64)
    starts = np.flatnonzero(np.concatenate([[True], segment[1:] != segment[:-1]]))
    ends = np.concatenate([starts[1:], [len(segment)]])
    for a, b in zip(starts.tolist(), ends.tolist()):
        envelope = np.maximum.accumulate(precision[a:b][::-1])[::-1]
        terms = recall_step[a:b] * envelope
        if recall[b - 1] != 1.0:
            terms = np.append(terms, 0.0)  # the official last step, to recall 1 at precision 0
        ap[hit_threshold[a], hit_class[a]] = np.sum(terms)
    return ap


def average_precision_per_class(
    gt: GroundTruth, pred: Predictions, tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS
) -> np.ndarray:
    """(T, C) AP per threshold and class, columns in ``gt.classes`` order."""
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)
    n_classes = len(gt.classes)

    # Class of each detection; labels annotated only in other subsets are dropped (see module doc).
    class_index = {label: c for c, label in enumerate(gt.classes)}
    distinct = set(pred.labels)
    unknown = sorted(distinct - gt.all_labels)
    if unknown:
        first = pred.labels.index(unknown[0])
        video = pred.video_ids[pred.detection_video[first]]
        position = first - int(np.searchsorted(pred.detection_video, pred.detection_video[first]))
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DetectionFileError(
            pred.source,
            f"results.{video}[{position}].label",
            f"{unknown[0]!r} is not a class of the ground truth ({gt.source}); unknown labels: {shown}",
        )
    elsewhere = sorted(distinct - set(class_index))
    if elsewhere:
        warnings.warn(
            f"{pred.source}: {len(elsewhere)} predicted label(s) have no ground truth in this subset and "
            f"cannot affect its mAP; ignored: {', '.join(map(repr, elsewhere[:5]))}"
            + (" ..." if len(elsewhere) > 5 else ""),
            stacklevel=3,
        )
    detection_class = np.fromiter(
        map(class_index.get, pred.labels, itertools.repeat(-1)), dtype=np.int64, count=len(pred.labels)
    )

    # Detections of each class in file order (stable sort), then in the official score order.
    by_class = np.argsort(detection_class, kind="stable")
    class_bounds = np.searchsorted(detection_class[by_class], np.arange(-1, n_classes + 1))
    ranked_parts = []
    for c in range(n_classes):
        members = by_class[class_bounds[c + 1] : class_bounds[c + 2]]
        ranked_parts.append(members[np.argsort(pred.scores[members])[::-1]])
    ranked = np.concatenate(ranked_parts)
    ranked_bounds = np.concatenate([[0], np.cumsum([len(p) for p in ranked_parts])])

    # (class, video) groups of ground truth, segments of a group contiguous and in file order.
    # Video ids of both files share one numbering so that a group key is one integer.
    video_number = {v: i for i, v in enumerate(gt.video_ids)}
    pred_video_number = np.fromiter(
        map(video_number.get, pred.video_ids, itertools.repeat(-1)), dtype=np.int64, count=len(pred.video_ids)
    )
    n_videos = len(gt.video_ids)
    gt_key = gt.segment_class * n_videos + gt.segment_video
    gt_order = np.argsort(gt_key, kind="stable")
    group_keys, group_gt_start, group_gt_count = np.unique(gt_key[gt_order], return_index=True, return_counts=True)
    gt_segments = gt.segments[gt_order]

    ranked_video = pred_video_number[pred.detection_video[ranked]]
    ranked_key = detection_class[ranked] * n_videos + ranked_video
    slot = np.searchsorted(group_keys, ranked_key).clip(max=len(group_keys) - 1)
    # Detections elsewhere (no ground truth of their class in their video) stay false positives.
    matchable = np.flatnonzero((ranked_video >= 0) & (group_keys[slot] == ranked_key))
    group = slot[matchable]
    grouped = np.argsort(group, kind="stable")  # group by group, score order kept within a group

    true_positive = np.zeros((len(thresholds), len(ranked)), dtype=bool)
    true_positive[:, matchable] = _match(
        pred.segments[ranked[matchable]], group, grouped, group_gt_start, group_gt_count, gt_segments, thresholds
    )
    positives = np.bincount(gt.segment_class, minlength=n_classes)
    return _average_precision(true_positive, ranked_bounds, positives)


def evaluate_detection(
    ground_truth: Source,
    predictions: Source,
    subset: str = "validation",
    tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS,
) -> Dict[str, Any]:
    """ActivityNet detection mAP of ``predictions`` against the ``subset`` of ``ground_truth``.

    Both arguments are a path to the official JSON format or the already parsed object.
    Returns ``{"tiou_thresholds": [...], "mAP": [...], "average_mAP": x}`` as fractions:
    mAP per threshold (mean AP over the subset's classes) and its mean over the thresholds.
    """
    thresholds = [float(t) for t in tiou_thresholds]
    if not thresholds:
        raise ValueError("tiou_thresholds: expected at least one threshold")
    gt = read_ground_truth(ground_truth, subset)
    pred = read_predictions(predictions)
    _check_video_ids(gt, pred)
    ap = average_precision_per_class(gt, pred, thresholds)
    mean_ap = ap.mean(axis=1)
    return {
        "tiou_thresholds": thresholds,
        "mAP": [float(x) for x in mean_ap],
        "average_mAP": float(mean_ap.mean()),
    }
