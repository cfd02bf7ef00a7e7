"""The ActivityNet detection scorer: hand-worked cases and agreement with a literal per-class loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.eval import DEFAULT_TIOU_THRESHOLDS, DetectionFileError, evaluate_detection
from clap_bench.eval.detection_reference import reference_detection_map


# --------------------------------------------------------------------------------------------
# Builders for small cases
# --------------------------------------------------------------------------------------------


def ground_truth(videos, taxonomy=True):
    """videos: {vid: (subset, [(start, end, label), ...])}"""
    data = {
        "database": {
            vid: {
                "subset": subset,
                "duration": 100.0,
                "annotations": [{"segment": [s, e], "label": label} for s, e, label in anns],
            }
            for vid, (subset, anns) in videos.items()
        }
    }
    if taxonomy:
        data["taxonomy"] = []
        data["version"] = "VERSION 1.3"
    return data


def predictions(results):
    """results: {vid: [(start, end, label, score), ...]}"""
    return {
        "version": "VERSION 1.3",
        "results": {
            vid: [{"segment": [s, e], "label": label, "score": score} for s, e, label, score in dets]
            for vid, dets in results.items()
        },
        "external_data": {},
    }


def ap_of(result, threshold=0.5):
    return result["mAP"][result["tiou_thresholds"].index(threshold)]


# --------------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------------


def test_perfect_detection_scores_one_at_every_threshold():
    gt = ground_truth({"a": ("validation", [(10, 20, "run")]), "b": ("validation", [(0, 5, "jump")])})
    pred = predictions({"a": [(10, 20, "run", 0.9)], "b": [(0, 5, "jump", 0.8)]})
    result = evaluate_detection(gt, pred)
    assert result["tiou_thresholds"] == list(DEFAULT_TIOU_THRESHOLDS)
    assert result["mAP"] == [1.0] * 10
    assert result["average_mAP"] == 1.0


def test_default_thresholds_are_the_official_linspace_floats():
    # What the official numpy.linspace(0.5, 0.95, 10) gives, written out float by float.
    official = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.8999999999999999, 0.95]
    assert list(DEFAULT_TIOU_THRESHOLDS) == official
    assert DEFAULT_TIOU_THRESHOLDS[8] == 0.8999999999999999 != 0.9


def test_tiou_at_the_decimal_point_nine_scores_as_the_official_linspace_loop():
    # GT [0.2, 1.2], detection [0.3, 1.2]: tIoU 0.9 / 1.0 = 0.9 in decimal arithmetic, but the
    # official segment_iou in floats gives 0.8999999999999999, which is the official 9th
    # threshold (a match there) and one step below the decimal 0.90 (no match there).
    gt = ground_truth({"a": ("validation", [(0.2, 1.2, "run")])})
    pred = predictions({"a": [(0.3, 1.2, "run", 0.9)]})
    tiou = (1.2 - 0.3) / ((1.2 - 0.3) + (1.2 - 0.2) - (1.2 - 0.3))
    assert tiou == 0.8999999999999999

    result = evaluate_detection(gt, pred)
    literal_loop = []
    for threshold in np.linspace(0.5, 0.95, 10):  # the official evaluation, threshold by threshold
        literal_loop.append(float(reference_detection_map(gt, pred, thresholds=[threshold])[0][0]))
    assert result["mAP"] == literal_loop
    assert result["mAP"] == [1.0] * 9 + [0.0]
    # The decimal 0.90, asked for explicitly, does not count it.
    assert evaluate_detection(gt, pred, tiou_thresholds=(0.85, 0.9))["mAP"] == [1.0, 0.0]


def test_second_detection_of_the_same_segment_is_a_false_positive():
    # Two GT of "run"; three detections: the top two both hit GT #1, the third hits GT #2.
    # Ranked: TP, FP (GT #1 already matched), TP -> precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # Interpolated AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = ground_truth({"a": ("validation", [(10, 20, "run"), (50, 60, "run")])})
    pred = predictions({"a": [(10, 20, "run", 0.9), (10, 20, "run", 0.8), (50, 60, "run", 0.7)]})
    result = evaluate_detection(gt, pred)
    assert result["mAP"] == pytest.approx([5 / 6] * 10, abs=1e-12)


def test_duplicate_is_matched_to_the_next_best_free_segment():
    # GT [0,10] and [2,12]; detection [1,11] has tIoU 9/11 (~0.818) with each (a tie). Of two
    # such detections the first takes one GT and the second the other, at every threshold up to
    # 0.8; above, both are false positives.
    gt = ground_truth({"a": ("validation", [(0, 10, "run"), (2, 12, "run")])})
    pred = predictions({"a": [(1, 11, "run", 0.9), (1, 11, "run", 0.8)]})
    result = evaluate_detection(gt, pred)
    for threshold, value in zip(result["tiou_thresholds"], result["mAP"]):
        assert value == (1.0 if threshold <= 9 / 11 else 0.0)


def test_prediction_on_a_video_without_ground_truth_of_its_class_is_a_false_positive():
    # "b" has GT only of "jump"; a "run" detection there is a FP for "run" and ranks first.
    # run: FP then TP -> precision 1/2 at recall 1 -> AP 1/2. jump: AP 1. mAP 3/4.
    gt = ground_truth({"a": ("validation", [(10, 20, "run")]), "b": ("validation", [(0, 5, "jump")])})
    pred = predictions(
        {"b": [(0, 5, "run", 0.95), (0, 5, "jump", 0.5)], "a": [(10, 20, "run", 0.9)], "zzz": [(1, 2, "jump", 0.1)]}
    )
    result = evaluate_detection(gt, pred)
    # jump: TP (0.5) then FP on the unknown video "zzz" (0.1) -> still AP 1.
    assert result["mAP"] == pytest.approx([0.75] * 10, abs=1e-12)


def test_class_without_predictions_scores_zero_and_counts_in_the_mean():
    gt = ground_truth(
        {"a": ("validation", [(10, 20, "run")]), "b": ("validation", [(0, 5, "jump"), (30, 40, "swim")])}
    )
    pred = predictions({"a": [(10, 20, "run", 0.9)], "b": [(0, 5, "jump", 0.8)]})
    result = evaluate_detection(gt, pred)
    assert result["mAP"] == pytest.approx([2 / 3] * 10, abs=1e-12)
    assert result["average_mAP"] == pytest.approx(2 / 3, abs=1e-12)


def test_only_the_chosen_subset_is_ground_truth():
    # "t" is a training video: its GT is ignored, so a perfect detection on it is a FP, and
    # "climb", annotated only in training, is not a class of the validation subset.
    gt = ground_truth(
        {
            "t": ("training", [(0, 10, "run"), (20, 30, "climb")]),
            "v": ("validation", [(10, 20, "run")]),
        }
    )
    pred = predictions({"t": [(0, 10, "run", 0.99)], "v": [(10, 20, "run", 0.5)]})
    result = evaluate_detection(gt, pred)
    assert result["mAP"] == pytest.approx([0.5] * 10, abs=1e-12)  # run: FP, TP -> AP 1/2; one class
    training = evaluate_detection(gt, pred, subset="training")
    # training classes run, climb: run TP (0.99) then FP on "v" -> AP 1; climb no prediction -> 0.
    assert training["mAP"] == pytest.approx([0.5] * 10, abs=1e-12)


def test_label_annotated_only_in_another_subset_is_ignored_with_a_warning():
    gt = ground_truth({"t": ("training", [(20, 30, "climb")]), "v": ("validation", [(10, 20, "run")])})
    pred = predictions({"v": [(10, 20, "climb", 0.99), (10, 20, "run", 0.5)]})
    with pytest.warns(UserWarning, match="climb"):
        result = evaluate_detection(gt, pred)
    assert result["mAP"] == [1.0] * 10


def test_tiou_exactly_at_a_threshold_counts_as_a_match():
    # GT [0, 10]; detection [0, 5]: tIoU 5/10 = 0.5 exactly -> TP at 0.5 only.
    # Detection [0, 7]: tIoU 0.7 exactly -> TP at 0.5 ... 0.7.
    gt = ground_truth({"a": ("validation", [(0, 10, "run")]), "b": ("validation", [(0, 10, "jump")])})
    pred = predictions({"a": [(0, 5, "run", 0.9)], "b": [(0, 7, "jump", 0.9)]})
    result = evaluate_detection(gt, pred)
    run = [1.0] + [0.0] * 9
    jump = [1.0] * 5 + [0.0] * 5
    assert result["mAP"] == pytest.approx([(r + j) / 2 for r, j in zip(run, jump)], abs=1e-12)
    # Halfway between two thresholds: a custom grid behaves the same way.
    custom = evaluate_detection(gt, pred, tiou_thresholds=(0.5, 0.5000001, 0.7, 0.7000001))
    assert custom["mAP"] == pytest.approx([1.0, 0.5, 0.5, 0.0], abs=1e-12)


def test_higher_tiou_ground_truth_is_taken_first():
    # Detection overlaps GT #1 with tIoU 0.6 and GT #2 with tIoU 0.9. It takes GT #2; a second
    # detection identical to GT #1 then takes GT #1 -> both TP at 0.5..0.6.
    gt = ground_truth({"a": ("validation", [(0, 10, "run"), (0, 6.6, "run")])})
    pred = predictions({"a": [(0, 6, "run", 0.9), (0, 10, "run", 0.8)]})
    result = evaluate_detection(gt, pred)
    ref, _ = reference_detection_map(gt, pred)
    np.testing.assert_allclose(result["mAP"], ref, rtol=0, atol=1e-12)
    assert result["mAP"][0] == 1.0


def test_score_ties_resolve_like_the_official_argsort():
    # Four detections of equal score on one GT: exactly one is the TP; which one (and so the AP)
    # depends on the order numpy's argsort(...)[::-1] puts the ties in, which the official uses.
    gt = ground_truth({"a": ("validation", [(0, 10, "run")])})
    dets = [(20, 30, "run", 0.5), (0, 10, "run", 0.5), (40, 50, "run", 0.5), (60, 70, "run", 0.5), (0, 9, "run", 0.7)]
    pred = predictions({"a": dets})
    result = evaluate_detection(gt, pred)
    ref, _ = reference_detection_map(gt, pred)
    assert result["mAP"] == list(ref)
    # Spelled out: the 0.7 detection [0, 9] (tIoU 0.9) ranks first and takes the GT at <= 0.9;
    # at 0.95 it is a FP and the GT goes to the tied [0, 10] wherever argsort ranks it.
    order = np.argsort(np.array([0.5, 0.5, 0.5, 0.5, 0.7]))[::-1]
    rank_of_exact = list(order).index(1)  # position of [0, 10] in the ranking
    assert result["mAP"][:9] == [1.0] * 9
    assert result["mAP"][9] == pytest.approx(1 / (rank_of_exact + 1), abs=1e-12)


def test_two_zero_length_segments_behave_as_in_the_official_code():
    # tIoU 0/0 = NaN there, and "NaN < threshold" is false: the detection is a match.
    gt = ground_truth({"a": ("validation", [(5, 5, "run"), (0, 10, "run")])})
    pred = predictions({"a": [(7, 7, "run", 0.9), (0, 10, "run", 0.8), (3, 3, "run", 0.7)]})
    result = evaluate_detection(gt, pred)
    np.testing.assert_allclose(result["mAP"], reference_detection_map(gt, pred)[0], rtol=0, atol=1e-12)


def test_unknown_predicted_label_is_an_error_naming_it():
    gt = ground_truth({"a": ("validation", [(0, 10, "run")])})
    pred = predictions({"a": [(0, 10, "run", 0.9), (0, 10, "Run", 0.8)]})
    with pytest.raises(DetectionFileError, match=r"results\.a\[1\]\.label: 'Run' is not a class"):
        evaluate_detection(gt, pred)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: p["results"]["a"][1].update(segment=[5, 3]),
            r"results\.a\[1\]\.segment: expected \[start, end\] with start <= end",
        ),
        (lambda p: p["results"]["a"][1].update(segment=[5]), r"results\.a\[1\]\.segment: expected \[start, end\]"),
        (lambda p: p["results"]["a"][1].update(segment=["1", 2]), r"results\.a\[1\]\.segment"),
        (lambda p: p["results"]["a"][0].update(score="high"), r"results\.a\[0\]\.score: expected a finite number"),
        (lambda p: p["results"]["a"][0].update(score=float("nan")), r"results\.a\[0\]\.score: expected a finite"),
        (lambda p: p["results"]["a"][0].update(score=True), r"results\.a\[0\]\.score: expected a finite number"),
        (lambda p: p["results"]["a"][0].pop("label"), r"results\.a\[0\]\.label: missing"),
        (lambda p: p["results"].update(a={"segment": [0, 1]}), r"results\.a: expected a list"),
        (lambda p: p.pop("results"), r"results: expected an object"),
    ],
)
def test_malformed_predictions_name_the_key(mutate, message):
    gt = ground_truth({"a": ("validation", [(0, 10, "run")])})
    pred = predictions({"a": [(0, 10, "run", 0.9), (1, 4, "run", 0.8)]})
    mutate(pred)
    with pytest.raises(DetectionFileError, match=message):
        evaluate_detection(gt, pred)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda g: g["database"]["a"]["annotations"][0].update(segment=[9, 1]),
            r"database\.a\.annotations\[0\]\.segment: expected \[start, end\] with start <= end",
        ),
        (
            lambda g: g["database"]["a"]["annotations"][0].update(label=3),
            r"database\.a\.annotations\[0\]\.label: expected a class name",
        ),
        (lambda g: g["database"]["a"].pop("subset"), r"database\.a\.subset"),
        (lambda g: g["database"]["a"].pop("annotations"), r"database\.a\.annotations: missing"),
        (lambda g: g.pop("database"), r"database: expected an object"),
    ],
)
def test_malformed_ground_truth_names_the_key(mutate, message):
    gt = ground_truth({"a": ("validation", [(0, 10, "run")])})
    mutate(gt)
    with pytest.raises(DetectionFileError, match=message):
        evaluate_detection(gt, predictions({"a": [(0, 10, "run", 0.9)]}))


def test_errors_name_the_file(tmp_path):
    gt_path = tmp_path / "gt.json"
    pred_path = tmp_path / "pred.json"
    gt_path.write_text(json.dumps(ground_truth({"a": ("validation", [(0, 10, "run")])})))
    pred_path.write_text('{"results": {"a": [')
    with pytest.raises(DetectionFileError, match=r"pred\.json: line 1 column \d+: invalid JSON"):
        evaluate_detection(gt_path, pred_path)
    pred_path.write_text(json.dumps(predictions({"a": [(0, 10, "run", -1)]})))
    assert evaluate_detection(gt_path, pred_path)["average_mAP"] == 1.0  # negative scores are fine


def test_subset_without_annotations_is_an_error_listing_the_subsets():
    gt = ground_truth({"a": ("training", [(0, 10, "run")]), "b": ("testing", [])})
    expected = r"no annotated segment in subset 'validation'.*'training' \(1 segments\)"
    with pytest.raises(DetectionFileError, match=expected):
        evaluate_detection(gt, predictions({}))


@pytest.mark.parametrize("gt_ids, pred_ids", [(["abc", "def"], ["v_abc"]), (["v_abc", "v_def"], ["abc", "def"])])
def test_video_ids_differing_only_by_the_v_prefix_are_an_error(gt_ids, pred_ids):
    gt = ground_truth({vid: ("validation", [(0, 10, "run")]) for vid in gt_ids})
    pred = predictions({vid: [(0, 10, "run", 0.9)] for vid in pred_ids})
    with pytest.raises(DetectionFileError, match=r"'v_' prefix"):
        evaluate_detection(gt, pred)


def test_unrelated_video_ids_are_just_false_positives():
    gt = ground_truth({"abc": ("validation", [(0, 10, "run")])})
    assert evaluate_detection(gt, predictions({"xyz": [(0, 10, "run", 0.9)]}))["average_mAP"] == 0.0


def test_in_memory_results_may_hold_numpy_numbers_and_tuples():
    gt = ground_truth({"a": ("validation", [(0, 10, "run")])})
    pred = {"results": {"a": [{"label": "run", "score": np.float32(0.5), "segment": (np.float64(0), np.int64(10))}]}}
    assert evaluate_detection(gt, pred)["average_mAP"] == 1.0


def test_taxonomy_and_version_are_optional_and_empty_results_score_zero():
    gt = ground_truth({"a": ("validation", [(0, 10, "run")])}, taxonomy=False)
    result = evaluate_detection(gt, {"results": {}})
    assert result["mAP"] == [0.0] * 10 and result["average_mAP"] == 0.0


# --------------------------------------------------------------------------------------------
# Randomised agreement with the literal reference
# --------------------------------------------------------------------------------------------


def random_case(seed, n_videos=30, n_classes=6, max_detections=25, grid=None):
    """Random GT and predictions. With ``grid``, times and scores are coarse, so ties abound."""
    rng = np.random.default_rng(seed)
    classes = [f"class {c}" for c in range(n_classes)]

    def time():
        return float(rng.integers(0, grid)) if grid else float(rng.uniform(0, 100))

    def segment():
        a, b = time(), time()
        return (min(a, b), max(a, b) + (1.0 if grid else 0.0))

    videos = {}
    for v in range(n_videos):
        subset = "validation" if rng.random() < 0.8 else "training"
        anns = [(*segment(), classes[rng.integers(n_classes)]) for _ in range(rng.integers(1, 5))]
        videos[f"v_{v:04d}"] = (subset, anns)
    # Make sure every class occurs in the validation subset (labels must be known there).
    videos["v_all"] = ("validation", [(*segment(), c) for c in classes])
    results = {}
    for v in list(videos)[: n_videos - 3] + ["v_unknown"]:
        dets = []
        for _ in range(rng.integers(0, max_detections)):
            score = float(rng.integers(0, 4)) / 4 if grid else float(rng.random())
            gt_anns = videos.get(v, ("", []))[1]
            if gt_anns and rng.random() < 0.6:  # jitter a GT segment so matches happen
                s, e, label = gt_anns[rng.integers(len(gt_anns))]
                if grid:
                    s, e = s + float(rng.integers(-1, 2)), e + float(rng.integers(-1, 2))
                else:
                    s, e = s + rng.normal(0, 2), e + rng.normal(0, 2)
                s, e = min(s, e), max(s, e)
                if rng.random() < 0.2:
                    label = classes[rng.integers(n_classes)]
            else:
                s, e = segment()
                label = classes[rng.integers(n_classes)]
            dets.append((s, e, label, score))
        results[v] = dets
    return ground_truth(videos), predictions(results)


@pytest.mark.filterwarnings("ignore:.*cannot affect its mAP")  # training lacks some classes
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("grid", [None, 12])
def test_matches_the_literal_reference_on_random_cases(seed, grid):
    gt, pred = random_case(seed, grid=grid)
    result = evaluate_detection(gt, pred)
    ref_map, ref_average = reference_detection_map(gt, pred)
    np.testing.assert_allclose(result["mAP"], ref_map, rtol=0, atol=1e-12)
    assert math.isclose(result["average_mAP"], ref_average, rel_tol=0, abs_tol=1e-12)
    training = evaluate_detection(gt, pred, subset="training")
    np.testing.assert_allclose(training["mAP"], reference_detection_map(gt, pred, "training")[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "seed, size, thresholds",
    [
        (1175, dict(n_videos=10, n_classes=3, max_detections=5, grid=None), DEFAULT_TIOU_THRESHOLDS),
        (1001, dict(n_videos=40, n_classes=2, max_detections=60, grid=4), (0.0, 0.1, 0.3)),
        (1002, dict(n_videos=25, n_classes=7, max_detections=30, grid=8), (0.7, 0.2, 0.5)),
        (1003, dict(n_videos=50, n_classes=1, max_detections=20, grid=20), (0.5,)),
    ],
)
def test_matches_the_reference_on_other_sizes_and_threshold_grids(seed, size, thresholds):
    gt, pred = random_case(seed, **size)
    result = evaluate_detection(gt, pred, tiou_thresholds=thresholds)
    ref_map, ref_average = reference_detection_map(gt, pred, thresholds=thresholds)
    assert result["tiou_thresholds"] == list(thresholds)
    np.testing.assert_allclose(result["mAP"], ref_map, rtol=0, atol=1e-12)
    assert math.isclose(result["average_mAP"], ref_average, rel_tol=0, abs_tol=1e-12)


def test_detections_far_from_every_segment_of_a_video_with_several():
    gt = ground_truth({"a": ("validation", [(0, 10, "run"), (20, 30, "run")]), "b": ("validation", [(0, 5, "run")])})
    pred = predictions({"a": [(50, 60, "run", 0.9), (70, 80, "run", 0.8)], "b": [(0, 5, "run", 0.1)]})
    # run: FP, FP, TP with 3 GT -> recall 1/3 at precision 1/3 -> AP 1/9.
    assert evaluate_detection(gt, pred)["mAP"] == pytest.approx([1 / 9] * 10, abs=1e-12)


def test_matches_the_reference_with_many_detections_per_video_and_class():
    # Long per-group sequences exercise the step-by-step matching (100 detections, one class).
    gt, pred = random_case(99, n_videos=8, n_classes=2, max_detections=150, grid=30)
    result = evaluate_detection(gt, pred)
    np.testing.assert_allclose(result["mAP"], reference_detection_map(gt, pred)[0], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_json_output_is_one_object_of_fractions(tmp_path):
    gt, pred = random_case(3)
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(pred))
    run = CliRunner().invoke(app, ["eval", "detection", str(gt_path), str(pred_path), "--json"])
    assert run.exit_code == 0, run.output
    printed = json.loads(run.stdout)
    assert set(printed) == {"tiou_thresholds", "mAP", "average_mAP"}
    assert printed == evaluate_detection(gt, pred)
    assert 0.0 < printed["average_mAP"] < 1.0
    assert printed["tiou_thresholds"][8] == 0.8999999999999999


def test_cli_other_thresholds_only_on_request(tmp_path):
    gt, pred = random_case(3)
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(pred))
    run = CliRunner().invoke(app, ["eval", "detection", str(gt_path), str(pred_path), "--json", "--tiou", "0.3,0.9"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout) == evaluate_detection(gt, pred, tiou_thresholds=(0.3, 0.9))
    bad = CliRunner().invoke(app, ["eval", "detection", str(gt_path), str(pred_path), "--tiou", "0.3,x"])
    assert bad.exit_code != 0 and "--tiou" in bad.output


def test_cli_table_in_percent_and_clear_error(tmp_path):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt = ground_truth({"a": ("training", [(0, 10, "run")]), "b": ("validation", [(0, 10, "run")])})
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(predictions({"a": [(0, 10, "run", 0.9)]})))
    run = CliRunner().invoke(app, ["eval", "detection", str(gt_path), str(pred_path), "--subset", "training"])
    assert run.exit_code == 0, run.output
    assert "100.00" in run.stdout and "average" in run.stdout.lower()
    pred_path.write_text(json.dumps(predictions({"a": [(0, 10, "walk", 0.9)]})))
    run = CliRunner().invoke(app, ["eval", "detection", str(gt_path), str(pred_path)])
    assert run.exit_code != 0
    assert "'walk' is not a class" in run.output
