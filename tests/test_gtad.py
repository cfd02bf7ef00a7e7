"""G-TAD head of the tal task: labels, SGAlign, losses, soft-NMS, and a small end-to-end run."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from clap_bench.config import ConfigError, from_dict
from clap_bench.data.schema import AnnotationSet, Segment, Video
from clap_bench.downstream.gtad import GTADConfig, build_gtad, read_video_features, rescale_features, soft_nms
from clap_bench.downstream.gtad.align import SGAlign, neighbour_mean
from clap_bench.downstream.gtad.labels import boundary_labels, iou_map_labels, normalise_segments, valid_anchor_mask
from clap_bench.downstream.gtad.losses import gtad_loss
from clap_bench.downstream.gtad.postprocess import detections_for_video, proposals_from_outputs
from clap_bench.downstream.video_classifier import VideoClassifierConfig

TINY = dict(temporal_scale=8, hidden_dim_1d=8, hidden_dim_2d=8, hidden_dim_3d=8, cardinality=2, group_width=2)


# ----------------------------------------------------------------------------- soft-NMS
def test_soft_nms_decays_each_overlap_by_gaussian_of_iou():
    props = np.array([[0.0, 10.0, 0.9], [1.0, 10.0, 0.8], [20.0, 30.0, 0.5]])
    kept = soft_nms(props, sigma=0.8, top_k=100)
    # IoU([0,10],[1,10]) = 0.9 -> 0.8 * exp(-0.81 / 0.8); the disjoint one keeps its score.
    expected = np.array([[0.0, 10.0, 0.9], [20.0, 30.0, 0.5], [1.0, 10.0, 0.8 * math.exp(-0.81 / 0.8)]])
    np.testing.assert_allclose(kept, expected, rtol=1e-12)
    assert math.isclose(kept[2, 2], 0.290650, rel_tol=1e-5)


def test_soft_nms_decays_again_after_each_kept_proposal_and_stops_at_top_k():
    # A=[0,4] 1.0, B=[2,6] 0.9, C=[4,8] 0.85. IoU(A,B) = IoU(B,C) = 1/3, IoU(A,C) = 0.
    props = np.array([[2.0, 6.0, 0.9], [0.0, 4.0, 1.0], [4.0, 8.0, 0.85]])
    decay = math.exp(-(1.0 / 9.0) / 0.8)
    kept = soft_nms(props, sigma=0.8, top_k=3)
    np.testing.assert_allclose(kept[:, 2], [1.0, 0.85, 0.9 * decay * decay], rtol=1e-12)
    np.testing.assert_allclose(kept[:, :2], [[0.0, 4.0], [4.0, 8.0], [2.0, 6.0]])
    assert soft_nms(props, sigma=0.8, top_k=2).shape == (2, 3)
    # Above the IoU threshold only: nothing overlaps by more than 0.5, so no score changes.
    np.testing.assert_allclose(soft_nms(props, 0.8, 3, iou_threshold=0.5)[:, 2], [1.0, 0.9, 0.85])


def test_proposal_scores_multiply_boundaries_and_both_map_outputs():
    t = 4
    anchor_map = torch.full((2, t, t), 0.5)
    anchor_map[0, 1, 1] = 0.8  # duration index 1, start 1: [1/4, 3/4]
    anchor_map[1, 1, 1] = 0.9
    start = torch.tensor([0.1, 0.6, 0.1, 0.1])
    end = torch.tensor([0.2, 0.2, 0.2, 0.7])
    props = proposals_from_outputs(anchor_map, start, end)
    # Anchors ending at the last boundary (s + d + 1 = T) have no end probability: 3 + 2 + 1 left.
    assert len(props) == 6
    row = props[(props[:, 0] == 0.25) & (props[:, 1] == 0.75)][0]
    assert math.isclose(row[2], 0.6 * 0.7 * 0.8 * 0.9, rel_tol=1e-6)
    dets = detections_for_video(np.array([[0.25, 0.75, 0.5]]), 20.0, [("jump", 0.6), ("run", 0.3)])
    assert [d["label"] for d in dets] == ["jump", "run"]
    assert dets[0]["segment"] == [5.0, 15.0] and math.isclose(dets[1]["score"], 0.15)



def test_map_score_and_boundary_peak_candidates_as_gtads_released_inference():
    t = 4
    anchor_map = torch.full((2, t, t), 0.5)
    anchor_map[0, 1, 1] = 0.8  # [1/4, 3/4]
    anchor_map[1, 1, 1] = 0.9
    start = torch.tensor([0.1, 0.6, 0.1, 0.1])  # candidates: 0 (always) and 1 (a local maximum)
    end = torch.tensor([0.2, 0.2, 0.2, 0.3])  # candidates: 3 (always), and 1, 2 (above half the maximum)
    props = proposals_from_outputs(anchor_map, start, end, score="map", candidates="all")
    assert len(props) == 6
    row = props[(props[:, 0] == 0.25) & (props[:, 1] == 0.75)][0]
    assert math.isclose(row[2], 0.8 * 0.9, rel_tol=1e-6)
    # Starts 0 and 1 only (2 is neither a peak nor above 0.3); anchors ending at T are never proposals.
    peaks = proposals_from_outputs(anchor_map, start, end, score="map", candidates="boundary_peaks")
    assert sorted(map(tuple, peaks[:, :2].tolist())) == [(0.0, 0.25), (0.0, 0.5), (0.0, 0.75), (0.25, 0.5), (0.25, 0.75)]
    end_low = torch.tensor([0.2, 0.2, 0.2, 0.7])  # now 1 and 2 are neither peaks nor above 0.35: ends at 3 only
    peaks = proposals_from_outputs(anchor_map, start, end_low, score="boundaries_and_map", candidates="boundary_peaks")
    np.testing.assert_allclose(peaks, [[0.25, 0.75, 0.6 * 0.7 * 0.8 * 0.9], [0.0, 0.75, 0.1 * 0.7 * 0.25]], rtol=1e-6)
    with pytest.raises(ValueError, match="proposal score"):
        proposals_from_outputs(anchor_map, start, end, score="start_end")

# ----------------------------------------------------------------------------- labels
def test_iou_map_labels_on_a_hand_worked_case():
    gt = normalise_segments([(2.5, 5.0)], duration=10.0)  # [0.25, 0.5]
    iou = iou_map_labels(gt, 8)  # anchors [s/8, (s+d+1)/8], indexed [d, s]
    assert iou.shape == (8, 8)
    assert iou[1, 2] == pytest.approx(1.0)  # [2/8, 4/8]
    assert iou[0, 2] == pytest.approx(0.5)  # [2/8, 3/8]
    assert iou[0, 3] == pytest.approx(0.5)  # [3/8, 4/8]
    assert iou[2, 1] == pytest.approx(2 / 3)  # [1/8, 4/8]
    assert iou[2, 2] == pytest.approx(2 / 3)  # [2/8, 5/8]
    assert iou[7, 0] == pytest.approx(0.25)  # the whole video
    assert iou[0, 0] == 0.0 and iou[0, 5] == 0.0  # disjoint
    assert iou[7, 1] == 0.0 and iou[1, 7] == 0.0  # not anchors: end after the video
    assert np.all(iou[valid_anchor_mask(8) == 0] == 0)
    # Two segments: the best match counts.
    two = iou_map_labels(np.array([[0.25, 0.5], [0.75, 1.0]]), 8)
    assert two[1, 6] == pytest.approx(1.0) and two[1, 2] == pytest.approx(1.0)


def test_start_end_labels_are_ioa_with_three_snippet_boundary_regions():
    gt = normalise_segments([(2.0, 5.0), (9.0, 12.0)], duration=10.0)  # second one clipped to [0.9, 1.0]
    np.testing.assert_allclose(gt, [[0.2, 0.5], [0.9, 1.0]])
    start, end = boundary_labels(gt[:1], 8, boundary_width=3.0)
    # Snippet i covers [(i-0.5)/8, (i+0.5)/8]; the start region is [0.2 - 1.5/8, 0.2 + 1.5/8].
    np.testing.assert_allclose(start, [0.4, 1, 1, 0.6, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(end, [0, 0, 0, 1, 1, 1, 0, 0], atol=1e-6)
    start2, end2 = boundary_labels(gt, 8)
    assert end2[7] == pytest.approx(1.0) and start2[7] == pytest.approx(1.0)  # 0.9 +- 0.1875 covers [6.5/8, 7.5/8]
    # BMN's and G-TAD's ActivityNet intervals: snippet i covers [(i-0.5)/8, (i+1.5)/8], two snippets;
    # in snippet units the start region is [0.1, 3.1] and the end region [2.5, 5.5].
    start, end = boundary_labels(gt[:1], 8, boundary_width=3.0, anchors="bmn")
    np.testing.assert_allclose(start, [0.7, 1, 0.8, 0.3, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(end, [0, 0, 0.5, 1, 1, 0.5, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="boundary anchors"):
        boundary_labels(gt, 8, anchors="frames")


# ----------------------------------------------------------------------------- SGAlign
def _align_loop(x: torch.Tensor, start: float, end: float, bins: int) -> torch.Tensor:
    """Plain per-anchor RoIAlign-1D, written from its definition: (C, T) -> (C, bins)."""
    c, t = x.shape
    length = max(end - start, 1.0)
    size = length / bins
    grid = math.ceil(length / bins)
    out = torch.zeros(c, bins, dtype=torch.float64)
    for b in range(bins):
        for i in range(grid):
            pos = start + b * size + (i + 0.5) * size / grid
            if pos < -1.0 or pos > t:
                continue
            pos = max(pos, 0.0)
            lo = int(pos)
            if lo >= t - 1:
                lo = hi = t - 1
                pos = float(lo)
            else:
                hi = lo + 1
            frac = pos - lo
            out[:, b] += ((1 - frac) * x[:, lo].double() + frac * x[:, hi].double()) / grid
    return out


def test_sgalign_matches_a_per_anchor_loop_reference():
    torch.manual_seed(0)
    t, c = 7, 3
    x = torch.randn(2, c, t)
    align = SGAlign(t, inner_samples=5, context_samples=2, expand_ratio=0.5, knn_k=3)
    out = align(x)
    assert out.shape == (2, c * 7, t, t)
    out = out.view(2, c, 7, t, t)
    context = neighbour_mean(x, 3)
    for n in range(2):
        # brute-force neighbours: mean of the 3 snippets nearest in feature space
        dist = torch.cdist(x[n].t(), x[n].t())
        brute = x[n][:, dist.argsort(dim=1)[:, :3]].mean(dim=2)
        torch.testing.assert_close(context[n], brute)
        for d in range(t):
            for s in range(t):
                cell = out[n, :, :, d, s].double()
                if s + d >= t:
                    assert torch.all(cell == 0)
                    continue
                lo, hi = s - 0.5 * (d + 1), s + d + 0.5 * (d + 1)
                torch.testing.assert_close(cell[:, :5], _align_loop(x[n], lo, hi, 5), atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(cell[:, 5:], _align_loop(brute, lo, hi, 2), atol=1e-5, rtol=1e-5)


def test_sgalign_gradient_reaches_every_sampled_snippet():
    x = torch.randn(1, 2, 6, requires_grad=True)
    SGAlign(6, inner_samples=4, context_samples=0)(x).sum().backward()
    assert torch.all(x.grad > 0)


# ----------------------------------------------------------------------------- model, losses
def test_gtad_forward_shapes_and_ranges():
    cfg = GTADConfig(**TINY)
    model = build_gtad(cfg, feat_dim=12)
    out = model(torch.randn(3, 12, 8))
    assert out.anchor_map.shape == (3, 2, 8, 8)
    assert out.start.shape == (3, 8) and out.end.shape == (3, 8)
    for y in out:
        assert torch.all((y > 0) & (y < 1))
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 12, 9))
    assert model.map_head[0].in_channels == 8 * (32 + 4)


def test_loss_is_weighted_sum_and_finite_without_positives():
    torch.manual_seed(0)
    t = 8
    mask = torch.from_numpy(valid_anchor_mask(t))
    anchor_map = torch.rand(2, 2, t, t) * 0.98 + 0.01
    start, end = torch.rand(2, t) * 0.98 + 0.01, torch.rand(2, t) * 0.98 + 0.01
    gt_iou = torch.from_numpy(np.stack([iou_map_labels(np.array([[0.25, 0.5]]), t)] * 2))
    s_lab, e_lab = (torch.from_numpy(np.stack([a] * 2)) for a in boundary_labels(np.array([[0.25, 0.5]]), t))
    losses = gtad_loss(anchor_map, start, end, gt_iou, s_lab, e_lab, mask, reg_weight=10.0)
    total = losses["boundary"] + 10.0 * losses["regression"] + losses["classification"]
    torch.testing.assert_close(losses["loss"], total)
    zero = torch.zeros(2, t)
    empty = gtad_loss(anchor_map, start, end, torch.zeros(2, t, t), zero, zero, mask)
    assert all(torch.isfinite(v) for v in empty.values())


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="tasks.tal.*temporal_scal"):
        from_dict(GTADConfig, {"temporal_scal": 32}, "tasks.tal")
    with pytest.raises(ConfigError, match="hidden_dim_1d"):
        GTADConfig(hidden_dim_1d=10, input_groups=4).validate()
    with pytest.raises(ConfigError, match="head"):
        GTADConfig(head="bmn").validate()
    with pytest.raises(ConfigError, match="proposal_candidates: expected one of all, boundary_peaks"):
        GTADConfig(proposal_candidates="peaks").validate()
    with pytest.raises(ConfigError, match="boundary_anchors"):
        GTADConfig(boundary_anchors="frames").validate()


# ----------------------------------------------------------------------------- features
def test_features_are_rescaled_linearly_and_bad_arrays_named(tmp_path):
    x = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # (T0=4, D=2)
    y = rescale_features(x, 8)
    assert y.shape == (2, 8)
    np.testing.assert_allclose(y[0].numpy(), [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["v_a"] = np.ones((5, 2), np.float32)
        f["v_bad"] = np.ones(5, np.float32)
    feats, missing = read_video_features(path, ["v_a", "v_gone"], 8)
    assert list(feats) == ["v_a"] and missing == ["v_gone"]
    with pytest.raises(ValueError, match=r"f\.h5.*v_bad.*\(T, D\)"):
        read_video_features(path, ["v_bad"], 8)


# ----------------------------------------------------------------------------- end to end
def _hand_made(informative: bool, n_train: int = 32, n_val: int = 6, dim: int = 16, snippets: int = 40):
    """Videos of 40 s, one feature per second; actions carry a class direction when informative."""
    rng = np.random.default_rng(0)
    classes = ["jump", "run"]
    direction = rng.normal(size=(2, dim)) * 2.0
    videos, feats = {}, {}
    for i in range(n_train + n_val):
        vid = f"v_{i:03d}"
        label = classes[i % 2]
        x = rng.normal(size=(snippets, dim))
        bounds = np.sort(rng.choice(np.arange(2, snippets - 2), size=2 * (1 + i % 2), replace=False))
        segments = []
        for s, e in bounds.reshape(-1, 2):
            e = max(int(e), int(s) + 3)
            segments.append(Segment(float(s), float(e), label))
            if informative:
                x[s:e] += direction[i % 2]
        videos[vid] = Video(vid, float(snippets), "training" if i < n_train else "validation", segments=segments)
        feats[vid] = x.astype(np.float32)
    return AnnotationSet("activitynet-json", "hand-made", videos, classes), feats


@pytest.fixture
def one_thread():
    # Tiny tensors: one thread is faster, and immune to other processes on the same cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_informative_features_localize_far_better_than_random_ones(tmp_path, one_thread):
    from clap_bench.downstream.gtad.task import run_gtad_detection

    cfg = GTADConfig(
        temporal_scale=16, hidden_dim_1d=16, hidden_dim_2d=16, hidden_dim_3d=32, cardinality=4, group_width=4,
        batch_size=8, epochs=8, lr_step_epochs=6, classifier=VideoClassifierConfig(hidden_dim=32, epochs=30),
    )
    results = {}
    for informative in (True, False):
        annotations, feats = _hand_made(informative)
        out = tmp_path / str(informative)
        out.mkdir()
        with h5py.File(out / "features.h5", "w") as f:
            for vid, x in feats.items():
                f[vid] = x
        results[informative] = run_gtad_detection(annotations, out / "features.h5", cfg, out, seed=0)
        assert json.loads((out / "metrics.json").read_text()) == results[informative]
        predictions = json.loads((out / "predictions.json").read_text())["results"]
        assert sorted(predictions) == sorted(v for v, x in annotations.videos.items() if x.subset == "validation")
        for dets in predictions.values():
            assert 0 < len(dets) <= 2 * cfg.proposals_per_video
            assert all(0.0 <= d["segment"][0] < d["segment"][1] <= 40.0 for d in dets)
    assert set(results[True]) == {"mAP@0.5", "mAP@0.75", "mAP@0.95", "average_mAP", "video_labels"}
    assert results[True]["video_labels"] == "built-in classifier"
    assert results[True]["mAP@0.5"] > 0.4
    assert results[True]["average_mAP"] > 3 * results[False]["average_mAP"] + 0.1


def test_same_seed_gives_identical_predictions(tmp_path, one_thread):
    from clap_bench.downstream.gtad.task import run_gtad_detection

    annotations, feats = _hand_made(True, n_train=6, n_val=2)
    with h5py.File(tmp_path / "features.h5", "w") as f:
        for vid, x in feats.items():
            f[vid] = x
    cfg = GTADConfig(**TINY, epochs=2, batch_size=4, classifier=VideoClassifierConfig(hidden_dim=8, epochs=3))
    runs = [run_gtad_detection(annotations, tmp_path / "features.h5", cfg, tmp_path / name, seed=3) for name in "ab"]
    assert runs[0] == runs[1]
    assert (tmp_path / "a" / "predictions.json").read_text() == (tmp_path / "b" / "predictions.json").read_text()

def test_cli_trains_and_writes_predictions_and_metrics(tmp_path, one_thread):
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.data import write_activitynet_json

    annotations, feats = _hand_made(True, n_train=6, n_val=3)
    write_activitynet_json(annotations, tmp_path / "gt.json")
    (tmp_path / "anet.yaml").write_text(f"format: activitynet-json\nannotations: [{tmp_path / 'gt.json'}]\n")
    with h5py.File(tmp_path / "features.h5", "w") as f:
        for vid, x in feats.items():
            f[vid] = x
    out = tmp_path / "out"
    args = ["downstream", "tal", "--features", str(tmp_path / "features.h5"), "--profile", "smoke",
            "--dataset-config", str(tmp_path / "anet.yaml"), "--out", str(out), "--set", "epochs=1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert set(json.loads((out / "predictions.json").read_text())["results"]) == {"v_006", "v_007", "v_008"}
    assert len(json.loads((out / "train_log.json").read_text())["epochs"]) == 1

    bad = CliRunner().invoke(app, args[:-3] + ["--set", "temporal_scal=8"])
    assert bad.exit_code == 2 and "temporal_scal" in bad.output


# ----------------------------------------------------------------------------- external video scores
def _cuhk_file(path, annotations, correct=True, classes=("jump", "run", "swim")):
    """Video scores in the layout of cuhk_val_simp_share.json: ids without 'v_', one score per class."""
    results = {}
    for vid, video in annotations.videos.items():
        if video.subset != "validation":
            continue
        label = video.segments[0].label
        scores = [0.1] * len(classes)
        scores[classes.index(label) if correct else (classes.index(label) + 1) % len(classes)] = 0.9
        results[vid[2:]] = scores
    path.write_text(json.dumps({"version": "CUHK val", "class": list(classes), "results": results}))
    return path


def test_external_video_scores_in_the_cuhk_layout_label_the_proposals(tmp_path, one_thread):
    from clap_bench.downstream.gtad.task import run_gtad_detection

    annotations, feats = _hand_made(True, n_train=6, n_val=3)
    with h5py.File(tmp_path / "features.h5", "w") as f:
        for vid, x in feats.items():
            f[vid] = x
    scores = _cuhk_file(tmp_path / "cuhk_val_simp_share.json", annotations)
    base = dict(**TINY, epochs=1, batch_size=4, classes_per_video=1, classifier=VideoClassifierConfig(hidden_dim=8, epochs=1))
    metrics = run_gtad_detection(annotations, tmp_path / "features.h5", GTADConfig(**base, video_scores=str(scores)),
                                 tmp_path / "ext", seed=0)
    assert metrics["video_labels"] == "external" and metrics["video_scores"] == str(scores)
    assert json.loads((tmp_path / "ext" / "metrics.json").read_text()) == metrics
    predictions = json.loads((tmp_path / "ext" / "predictions.json").read_text())
    assert predictions["external_data"]["used"] is True
    for vid, dets in predictions["results"].items():
        # every detection carries the file's top class (the true one here) and score x 0.9
        assert {d["label"] for d in dets} == {annotations.videos[vid].segments[0].label}
    wrong = _cuhk_file(tmp_path / "wrong.json", annotations, correct=False)
    worse = run_gtad_detection(annotations, tmp_path / "features.h5", GTADConfig(**base, video_scores=str(wrong)),
                               tmp_path / "wrong", seed=0)
    assert worse["average_mAP"] == 0.0 < metrics["average_mAP"]


def test_malformed_video_scores_name_the_file_and_the_key(tmp_path):
    from clap_bench.downstream.gtad.video_scores import VideoScoresError, read_video_scores

    cases = {
        "no_class.json": ({"results": {"abc": [0.5]}}, "class"),
        "short_row.json": ({"class": ["jump", "run"], "results": {"abc": [0.5]}}, "results.abc"),
        "text_score.json": ({"class": ["jump", "run"], "results": {"abc": [0.5, "high"]}}, "results.abc"),
        "no_results.json": ({"class": ["jump"]}, "results"),
    }
    for name, (content, key) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(content))
        with pytest.raises(VideoScoresError) as err:
            read_video_scores(path)
        assert str(err.value).startswith(f"{path}: {key}:"), str(err.value)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(VideoScoresError, match=r"broken\.json: line 1 column 2: invalid JSON"):
        read_video_scores(tmp_path / "broken.json")


def test_a_video_missing_from_the_scores_is_an_error_naming_it(tmp_path, one_thread):
    from clap_bench.downstream.gtad.task import run_gtad_detection
    from clap_bench.downstream.gtad.video_scores import VideoScoresError

    annotations, feats = _hand_made(True, n_train=6, n_val=3)
    with h5py.File(tmp_path / "features.h5", "w") as f:
        for vid, x in feats.items():
            f[vid] = x
    path = _cuhk_file(tmp_path / "scores.json", annotations)
    content = json.loads(path.read_text())
    del content["results"]["007"]
    path.write_text(json.dumps(content))
    cfg = GTADConfig(**TINY, epochs=1, batch_size=4, video_scores=str(path))
    with pytest.raises(VideoScoresError, match=r"scores\.json: results: no scores for video 'v_007'"):
        run_gtad_detection(annotations, tmp_path / "features.h5", cfg, tmp_path / "out", seed=0)
