"""The grounding scorer (Rank@k at IoU > t, mIoU) on hand-worked cases, and its CLI."""

import json

import pytest

from clap_bench.eval.grounding import (
    GroundingFormatError,
    evaluate_grounding,
    flatten_metrics,
    temporal_iou,
)

GT = [
    {"id": "q1", "segment": [0, 10]},
    {"id": "q2", "segment": [10, 20]},
    {"id": "q3", "segment": [0, 4]},
    {"id": "q4", "segment": [5, 6]},  # never predicted
]
PRED = [
    {"id": "q1", "segments": [[0, 5], [0, 10]]},  # top-1 IoU exactly 0.5, top-2 exact
    {"id": "q2", "segments": [[12, 20]]},  # IoU 0.8
    # the exact moment is 6th: outside the top 5
    {"id": "q3", "segments": [[10, 20], [20, 30], [30, 40], [40, 50], [50, 60], [0, 4]]},
]


def test_temporal_iou_hand_values():
    ious = temporal_iou([[0, 5], [0, 10], [5, 15], [20, 30], [2, 2]], [0, 10])
    assert ious.tolist() == pytest.approx([0.5, 1.0, 5 / 15, 0.0, 0.0])


def test_hand_case_counts_strictly_greater_and_top5_and_missing_queries():
    m = evaluate_grounding(GT, PRED)
    # R@1: q1 has IoU 0.5 (counts at 0.1 and 0.3, not at 0.5: strictly greater), q2 has 0.8.
    assert m["R@1"] == pytest.approx({"0.1": 0.5, "0.3": 0.5, "0.5": 0.25, "0.7": 0.25})
    # R@5: q1 finds IoU 1.0 at rank 2; q3's exact moment is rank 6; q4 has no prediction.
    assert m["R@5"] == pytest.approx({"0.1": 0.5, "0.3": 0.5, "0.5": 0.5, "0.7": 0.5})
    assert m["mIoU"] == pytest.approx((0.5 + 0.8 + 0.0 + 0.0) / 4)
    assert m["num_queries"] == 4 and m["num_predicted"] == 3


def test_iou_equal_to_threshold_is_a_miss():
    m = evaluate_grounding([{"id": 7, "segment": [0, 10]}], [{"id": 7, "segments": [[0, 3]]}])
    assert m["R@1"]["0.3"] == 0.0 and m["R@1"]["0.1"] == 1.0
    assert m["mIoU"] == pytest.approx(0.3)


def test_flatten_metrics_names():
    flat = flatten_metrics(evaluate_grounding(GT, PRED), prefix="tacos/")
    assert flat["tacos/R@1@0.5"] == pytest.approx(0.25)
    assert flat["tacos/R@5@0.7"] == pytest.approx(0.5)
    assert set(flat) == {f"tacos/R@{k}@{t}" for k in (1, 5) for t in ("0.1", "0.3", "0.5", "0.7")} | {"tacos/mIoU"}


def test_unknown_prediction_id_is_an_error_naming_it():
    with pytest.raises(GroundingFormatError, match="'nope'"):
        evaluate_grounding(GT, PRED + [{"id": "nope", "segments": [[0, 1]]}])


@pytest.mark.parametrize(
    "gt, pred, message",
    [
        (GT + [{"id": "q1", "segment": [0, 1]}], PRED, "entry 4: duplicate query id 'q1'"),
        (GT, PRED + [{"id": "q2", "segments": []}], "entry 3: duplicate query id 'q2'"),
        ([{"id": "a", "segment": [3, 1]}], [], r"entry 0 \(id 'a'\): 'segment': end 1 is before start 3"),
        ([{"id": "a"}], [], "entry 0 \\(id 'a'\\): missing key 'segment'"),
        ([{"segment": [0, 1]}], [], "entry 0: missing key 'id'"),
        ([{"id": "a", "segment": [0, 1]}], [{"id": "a", "segments": [[0, "x"]]}], r"entry 0 \(id 'a'\): 'segments'\[0\]"),
        ([{"id": "a", "segment": [0, 1]}], [{"id": "a"}], "missing key 'segments'"),
        ({"id": "a"}, [], "expected a JSON list"),
        ([], [], "no ground-truth queries"),
    ],
)
def test_malformed_input_names_the_entry(gt, pred, message):
    with pytest.raises(GroundingFormatError, match=message):
        evaluate_grounding(gt, pred)


def test_reads_files_and_names_them(tmp_path):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(GT))
    pred_path.write_text(json.dumps(PRED))
    assert evaluate_grounding(gt_path, pred_path)["mIoU"] == pytest.approx(0.325)
    pred_path.write_text("{not json")
    with pytest.raises(GroundingFormatError, match="pred.json: not valid JSON"):
        evaluate_grounding(gt_path, pred_path)


def _cli():
    typer_testing = pytest.importorskip("typer.testing")
    from clap_bench.cli import app, COMMAND_MODULES

    if "grounding" not in COMMAND_MODULES:
        pytest.fail("clap_bench.cli.COMMAND_MODULES does not list 'grounding'")
    return typer_testing.CliRunner(), app


def test_cli_json_output(tmp_path):
    runner, app = _cli()
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(GT))
    pred_path.write_text(json.dumps(PRED))
    res = runner.invoke(app, ["eval", "grounding", str(gt_path), str(pred_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"R@1", "R@5", "mIoU"}
    assert out["R@1"] == pytest.approx({"0.1": 0.5, "0.3": 0.5, "0.5": 0.25, "0.7": 0.25})
    assert out["mIoU"] == pytest.approx(0.325)
    table = runner.invoke(app, ["eval", "grounding", str(gt_path), str(pred_path)])
    assert table.exit_code == 0 and "mIoU" in table.stdout and "32.50" in table.stdout


def test_cli_unknown_id_exits_nonzero(tmp_path):
    runner, app = _cli()
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(GT))
    pred_path.write_text(json.dumps([{"id": "zz", "segments": [[0, 1]]}]))
    res = runner.invoke(app, ["eval", "grounding", str(gt_path), str(pred_path), "--json"])
    assert res.exit_code == 1
    assert "'zz'" in json.loads(res.stdout.splitlines()[0])["error"]
