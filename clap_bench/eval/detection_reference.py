"""The official ActivityNet detection evaluation written out plainly: one class, one prediction,
one threshold at a time, in the order ``Evaluation/eval_detection.py`` does it.

It is the yardstick for ``clap_bench.eval.detection`` (the vectorised scorer must agree with it to
1e-12; see the tests) and the baseline of ``benchmarks/detection_eval.py``. Too slow for real use.
"""

from __future__ import annotations

import numpy as np

# The official default, written as the official code writes it (not imported from the scorer, so
# that the scorer's thresholds are checked against it rather than assumed).
OFFICIAL_TIOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def segment_iou(target, candidates):
    start = np.maximum(target[0], candidates[:, 0])
    end = np.minimum(target[1], candidates[:, 1])
    intersection = (end - start).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersection.astype(float) / union


def interpolated_ap(precision, recall):
    mprec = np.hstack([[0], precision, [0]])
    mrec = np.hstack([[0], recall, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def class_ap(gt_rows, pred_rows, thresholds):
    """AP of one class at every threshold. gt_rows: [(video, start, end)], pred_rows: [(video, start, end, score)], both in file order."""
    ap = np.zeros(len(thresholds))
    if not pred_rows:
        return ap
    npos = float(len(gt_rows))
    lock_gt = -np.ones((len(thresholds), len(gt_rows)))
    sort_idx = np.array([p[3] for p in pred_rows], dtype=float).argsort()[::-1]
    pred_rows = [pred_rows[i] for i in sort_idx]
    tp = np.zeros((len(thresholds), len(pred_rows)))
    fp = np.zeros((len(thresholds), len(pred_rows)))
    gt_by_video = {}
    for index, (video, start, end) in enumerate(gt_rows):
        gt_by_video.setdefault(video, []).append((index, start, end))
    for idx, (video, start, end, _) in enumerate(pred_rows):
        if video not in gt_by_video:
            fp[:, idx] = 1
            continue
        this_gt = gt_by_video[video]
        tiou = segment_iou(np.array([start, end]), np.array([[s, e] for _, s, e in this_gt]))
        tiou_sorted_idx = tiou.argsort()[::-1]
        for tidx, threshold in enumerate(thresholds):
            for jdx in tiou_sorted_idx:
                if tiou[jdx] < threshold:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt[jdx][0]] >= 0:
                    continue
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt[jdx][0]] = idx
                break
            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall = tp_cumsum / npos
    precision = tp_cumsum / (tp_cumsum + fp_cumsum)
    for tidx in range(len(thresholds)):
        ap[tidx] = interpolated_ap(precision[tidx, :], recall[tidx, :])
    return ap


def reference_detection_map(gt_data, pred_data, subset="validation", thresholds=OFFICIAL_TIOU_THRESHOLDS):
    activity_index = {}
    gt_by_class = {}
    for video, v in gt_data["database"].items():
        if v["subset"] != subset:
            continue
        for ann in v["annotations"]:
            if ann["label"] not in activity_index:
                activity_index[ann["label"]] = len(activity_index)
            gt_by_class.setdefault(activity_index[ann["label"]], []).append(
                (video, float(ann["segment"][0]), float(ann["segment"][1]))
            )
    pred_by_class = {}
    for video, detections in pred_data["results"].items():
        for d in detections:
            if d["label"] not in activity_index:
                # The official code raises KeyError here; the scorer drops such predictions
                # (they cannot enter any AP of this subset), so the reference does too.
                continue
            cidx = activity_index[d["label"]]
            pred_by_class.setdefault(cidx, []).append(
                (video, float(d["segment"][0]), float(d["segment"][1]), d["score"])
            )
    ap = np.zeros((len(thresholds), len(activity_index)))
    for cidx in range(len(activity_index)):
        ap[:, cidx] = class_ap(gt_by_class[cidx], pred_by_class.get(cidx, []), thresholds)
    mean_ap = ap.mean(axis=1)
    return mean_ap, mean_ap.mean()
