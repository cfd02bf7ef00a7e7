"""Time the ActivityNet detection scorer against per-class loop references on a validation-sized case.

The case has the size of ActivityNet v1.3 validation: 4,728 videos, 200 classes, 1-3 ground-truth
segments per video, 100 detections per video (472,800 in all), random but seeded. Detections
mimic a localization head with a video classifier: most are jittered copies of ground-truth
segments or random segments labelled with the video's own classes, the rest carry random classes.

Two references follow the official ActivityNet algorithm literally (one class at a time, one
prediction at a time, one threshold at a time):

* the plain loop, in Python and NumPy, run on the whole case; our result must equal it;
* the pandas loop, which also keeps the official code's data access (data frames grouped by
  label and video, row iteration, row look-ups by label). That access is what makes the official
  scorer slow, and it is slow enough that it runs on a few classes only (``--pandas-classes``);
  its full time is extrapolated from its time per detection, and labelled so.

All scorers start from the parsed JSON objects, so JSON decoding is not timed; the end-to-end
time of our scorer from files on disk is printed separately. Times are CPU seconds of this
process (``time.process_time``; every scorer here is single-threaded), so that other work on a
shared machine does not distort the ratio; wall-clock seconds are printed beside them.

    python benchmarks/detection_eval.py            # full size, about a minute
    python benchmarks/detection_eval.py --videos 500 --pandas-classes 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clap_bench.eval import DEFAULT_TIOU_THRESHOLDS, evaluate_detection
from clap_bench.eval.detection import average_precision_per_class, read_ground_truth, read_predictions
from clap_bench.eval.detection_reference import interpolated_ap, reference_detection_map, segment_iou

# --------------------------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------------------------


def build_case(n_videos: int = 4728, n_classes: int = 200, detections_per_video: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = [f"activity {c:03d}" for c in range(n_classes)]
    database = {}
    results = {}
    for v in range(n_videos):
        video_id = f"v_{v:011d}"
        duration = float(rng.uniform(30, 240))
        # Every class occurs (video v's first segment has class v mod n_classes), as in the real
        # validation set; a video has one or two classes.
        video_classes = np.unique([v % n_classes, rng.integers(n_classes)])
        annotations = []
        for k in range(rng.integers(1, 4)):
            length = float(rng.uniform(0.05, 0.8)) * duration
            start = float(rng.uniform(0, duration - length))
            label = classes[v % n_classes if k == 0 else int(rng.choice(video_classes))]
            annotations.append({"segment": [round(start, 2), round(start + length, 2)], "label": label})
        database[video_id] = {"subset": "validation", "duration": duration, "annotations": annotations}

        gt = np.array([a["segment"] for a in annotations])
        n = detections_per_video
        pick = rng.integers(len(gt), size=n)
        near = gt[pick] + rng.normal(0, 0.1, size=(n, 2)) * (gt[pick, 1:] - gt[pick, :1])
        far = np.sort(rng.uniform(0, duration, size=(n, 2)), axis=1)
        segments = np.where(rng.random((n, 1)) < 0.6, near, far)
        segments = np.sort(segments.clip(0, duration), axis=1)
        own = rng.random(n) < 0.85
        labels = np.where(own, rng.choice(video_classes, size=n), rng.integers(min(n_classes, n_videos), size=n))
        scores = rng.random(n)
        results[video_id] = [
            {"label": classes[int(c)], "score": float(s), "segment": [float(a), float(b)]}
            for c, s, (a, b) in zip(labels, scores, segments)
        ]
    ground_truth = {"version": "VERSION 1.3", "taxonomy": [], "database": database}
    predictions = {"version": "VERSION 1.3", "results": results, "external_data": {}}
    return ground_truth, predictions


# --------------------------------------------------------------------------------------------
# References: the official algorithm written plainly (clap_bench.eval.detection_reference),
# and the same with the official code's pandas data access (below).
# --------------------------------------------------------------------------------------------


def pandas_class_ap(ground_truth: pd.DataFrame, prediction: pd.DataFrame, thresholds=DEFAULT_TIOU_THRESHOLDS):
    """One class, with the official code's data access: frames, groupby, iterrows, .loc look-ups."""
    ap = np.zeros(len(thresholds))
    if prediction.empty:
        return ap
    lock_gt = -np.ones((len(thresholds), len(ground_truth)))
    prediction = prediction.loc[prediction["score"].values.argsort()[::-1]].reset_index(drop=True)
    tp = np.zeros((len(thresholds), len(prediction)))
    fp = np.zeros((len(thresholds), len(prediction)))
    gt_by_video = ground_truth.groupby("video-id")
    for idx, row in prediction.iterrows():
        try:
            this_gt = gt_by_video.get_group(row["video-id"])
        except KeyError:
            fp[:, idx] = 1
            continue
        this_gt = this_gt.reset_index()
        tiou = segment_iou(row[["t-start", "t-end"]].values, this_gt[["t-start", "t-end"]].values)
        candidates = tiou.argsort()[::-1]
        for tidx, threshold in enumerate(thresholds):
            for jdx in candidates:
                if tiou[jdx] < threshold:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt.loc[jdx]["index"]] >= 0:
                    continue
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt.loc[jdx]["index"]] = idx
                break
            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall = tp_cumsum / float(len(ground_truth))
    precision = tp_cumsum / (tp_cumsum + fp_cumsum)
    for tidx in range(len(thresholds)):
        ap[tidx] = interpolated_ap(precision[tidx, :], recall[tidx, :])
    return ap


def pandas_frames(gt_data, pred_data, subset="validation"):
    """Ground truth and predictions as the official code holds them: one frame each, label as class index."""
    activity_index = {}
    gt_rows = []
    for video, v in gt_data["database"].items():
        if v["subset"] != subset:
            continue
        for ann in v["annotations"]:
            cidx = activity_index.setdefault(ann["label"], len(activity_index))
            gt_rows.append((video, float(ann["segment"][0]), float(ann["segment"][1]), cidx))
    pred_rows = [
        (video, float(d["segment"][0]), float(d["segment"][1]), activity_index[d["label"]], d["score"])
        for video, detections in pred_data["results"].items()
        for d in detections
    ]
    ground_truth = pd.DataFrame(gt_rows, columns=["video-id", "t-start", "t-end", "label"])
    prediction = pd.DataFrame(pred_rows, columns=["video-id", "t-start", "t-end", "label", "score"])
    return ground_truth, prediction, activity_index


# --------------------------------------------------------------------------------------------


def timed(fn, *args):
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4728)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--detections", type=int, default=100, help="detections per video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of our scorer; the fastest is reported")
    parser.add_argument("--pandas-classes", type=int, default=8, help="classes the pandas loop is timed on")
    args = parser.parse_args()

    ground_truth, predictions = build_case(args.videos, args.classes, args.detections, args.seed)
    n_segments = sum(len(v["annotations"]) for v in ground_truth["database"].values())
    n_detections = sum(len(d) for d in predictions["results"].values())
    print(
        f"case: {args.videos} videos, {n_segments} ground-truth segments, {n_detections} detections, "
        f"{args.classes} classes"
    )

    runs = [timed(evaluate_detection, ground_truth, predictions) for _ in range(args.repeats)]
    ours, ours_cpu, ours_wall = min(runs, key=lambda run: run[1])

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.json", Path(tmp) / "pred.json"
        gt_path.write_text(json.dumps(ground_truth))
        pred_path.write_text(json.dumps(predictions))
        from_files, file_cpu, file_wall = timed(evaluate_detection, gt_path, pred_path)

    (ref_map, ref_average), ref_cpu, ref_wall = timed(reference_detection_map, ground_truth, predictions)
    difference = float(np.max(np.abs(np.asarray(ours["mAP"]) - ref_map)))
    agree = difference <= 1e-12 and abs(ours["average_mAP"] - ref_average) <= 1e-12 and from_files == ours

    # The pandas loop on the first classes of the index; its AP must equal ours class by class.
    (gt_frame, pred_frame, activity_index), frame_cpu, frame_wall = timed(pandas_frames, ground_truth, predictions)
    ours_per_class = average_precision_per_class(read_ground_truth(ground_truth), read_predictions(predictions))
    gt_by_label, pred_by_label = gt_frame.groupby("label"), pred_frame.groupby("label")
    pandas_cpu = pandas_wall = 0.0
    pandas_detections = 0
    pandas_difference = 0.0
    for cidx in range(min(args.pandas_classes, len(activity_index))):
        class_gt = gt_by_label.get_group(cidx).reset_index(drop=True)
        class_pred = pred_by_label.get_group(cidx).reset_index(drop=True)
        class_ap, cpu, wall = timed(pandas_class_ap, class_gt, class_pred)
        pandas_cpu, pandas_wall = pandas_cpu + cpu, pandas_wall + wall
        pandas_detections += len(class_pred)
        pandas_difference = max(pandas_difference, float(np.max(np.abs(class_ap - ours_per_class[:, cidx]))))
    scale = n_detections / max(pandas_detections, 1)
    pandas_full_cpu = frame_cpu + pandas_cpu * scale
    agree = agree and pandas_difference <= 1e-12

    print(f"mAP@0.5 {100 * ours['mAP'][0]:.2f}%, average mAP {100 * ours['average_mAP']:.2f}%")
    print(
        f"max |ours - plain loop| over thresholds: {difference:.3g}; max |ours - pandas loop| over its "
        f"classes' APs: {pandas_difference:.3g}  ({'agree' if agree else 'DISAGREE'})"
    )
    n_pandas = min(args.pandas_classes, len(activity_index))
    rows = [
        (f"ours, parsed objects (best of {args.repeats})", ours_cpu, ours_wall),
        ("ours, from JSON files (incl. decoding)", file_cpu, file_wall),
        ("plain per-class loop, whole case", ref_cpu, ref_wall),
        (f"pandas per-class loop, {n_pandas} classes ({pandas_detections} detections)", pandas_cpu, pandas_wall),
    ]
    print(f"{'':58s} {'CPU s':>8s} {'wall s':>8s}")
    for label, cpu, wall in rows:
        print(f"{label:58s} {cpu:8.3f} {wall:8.3f}")
    print(f"{'pandas per-class loop, whole case: EXTRAPOLATED':58s} {pandas_full_cpu:8.1f}"
          f"   (frames {frame_cpu:.2f} s + loop time x {scale:.1f})")
    print(f"speed-up over the plain loop: {ref_cpu / ours_cpu:.1f}x (CPU), {ref_wall / ours_wall:.1f}x (wall)")
    print(f"speed-up over the pandas loop (extrapolated): {pandas_full_cpu / ours_cpu:.0f}x (CPU)")
    if not agree:
        raise SystemExit("the scorer and the references disagree")


if __name__ == "__main__":
    main()
