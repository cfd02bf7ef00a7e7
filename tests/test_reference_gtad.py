"""The reference-free helpers of benchmarks/reference/gtad_vs_reference.py (no G-TAD checkout needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clap_bench.downstream.gtad.labels import iou_map_labels, valid_anchor_mask
from clap_bench.downstream.gtad.losses import map_classification_loss, map_regression_loss
from clap_bench.reference import ReferenceMissing
from clap_bench.reference.gtad import (
    GTAD_COMMIT,
    Check,
    check_names_distinct,
    classification_loss_with_count_offset,
    compare_detections,
    detections_by_label,
    max_abs_diff,
    proposal_frame,
    proposals_from_frame,
    reference_regression_weights,
    reference_uniform_draws,
    render_checks,
    require_gtad,
    sampling_ratios,
    snippet_frame_rate,
    weighted_regression_loss,
    window_label_input,
)


def test_missing_or_wrong_checkout_says_how_to_fetch_it(tmp_path):
    with pytest.raises(ReferenceMissing, match=f"git clone https://github.com/frostinassiky/gtad.*{GTAD_COMMIT}"):
        require_gtad(None)
    with pytest.raises(ReferenceMissing, match="expected gtad_lib/loss_function.py"):
        require_gtad(tmp_path)
    (tmp_path / "gtad_lib").mkdir()
    (tmp_path / "gtad_lib" / "loss_function.py").write_text("")
    assert require_gtad(str(tmp_path)) == tmp_path


def test_window_label_input_puts_segments_and_snippet_intervals_in_snippet_units():
    window = window_label_input([(2.0, 5.0), (9.0, 12.0)], duration=10.0, temporal_scale=8)
    np.testing.assert_allclose(window.gt_bbox, [[1.6, 4.0], [7.2, 9.6]])  # not clipped: the reference clips itself
    np.testing.assert_allclose(window.anchor_xmins, np.arange(8) - 0.5)
    np.testing.assert_allclose(window.anchor_xmaxs, np.arange(8) + 0.5)
    data = window.as_data()
    assert data["gt_bbox"] == [[[1.6, 4.0], [7.2, 9.6]]] and len(data["anchor_xmins"]) == 1
    # Intervals given as fractions (the reference's _get_match_map lists: x_max starts one snippet later).
    lo = [(i - 0.5) / 8 for i in range(8)]
    hi = [(i + 0.5) / 8 for i in range(1, 9)]
    np.testing.assert_allclose(window_label_input([(2.0, 5.0)], 10.0, 8, (lo, hi)).anchor_xmaxs, np.arange(8) + 1.5)
    with pytest.raises(ValueError, match="two lists of 8 values"):
        window_label_input([(2.0, 5.0)], 10.0, 8, (lo[:7], hi))
    with pytest.raises(ValueError, match="at least one segment"):
        window_label_input([], 10.0, 8)
    with pytest.raises(ValueError, match="duration"):
        window_label_input([(2.0, 5.0)], 0.0, 8)


def test_reference_draws_keep_the_same_anchors_as_ours():
    g = torch.Generator().manual_seed(0)
    draws = torch.rand(4, 16, 16, generator=g)
    band = (torch.rand(4, 16, 16, generator=g) > 0.5).float()
    ratio = torch.tensor(0.37)
    (u,) = reference_uniform_draws([draws])
    np.testing.assert_allclose(u, 1.0 - draws.double().numpy())
    # The reference's rule, in float32 as it runs: (band * u) > 1 - ratio; ours: band and d < ratio.
    theirs = (band * torch.Tensor(u)) > (1.0 - ratio)
    ours = band.bool() & (draws < ratio)
    assert torch.equal(theirs, ours) and 0 < int(ours.sum()) < int(band.sum())


def test_sampling_ratios_and_the_classification_loss_with_count_offsets():
    t = 8
    mask = torch.from_numpy(valid_anchor_mask(t))
    gt = torch.from_numpy(np.stack([iou_map_labels(np.array([[0.25, 0.75]]), t), iou_map_labels(np.array([[0.0, 0.125]]), t)]))
    masked = gt * mask
    high = float((masked > 0.7).sum())
    mid = float(((masked > 0.3) & (masked <= 0.7)).sum())
    low = float(((masked > 0.0) & (masked <= 0.3)).sum())
    assert sampling_ratios(gt, mask) == pytest.approx((high / mid, high / low))
    assert high / mid < 1

    pred = torch.rand(2, t, t, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    ours = float(map_classification_loss(pred, masked, mask))
    assert classification_loss_with_count_offset(pred, gt, mask, 0.0) == pytest.approx(ours, rel=1e-6)
    pos = (masked > 0.9).double()
    neg = (masked <= 0.9).double() * mask
    s_pos = float((torch.log(pred.double() + 1e-6) * pos).sum())
    s_neg = float((torch.log(1 - pred.double() + 1e-6) * neg).sum())
    # The THUMOS14 form, written as its code counts: num_positive = 10 + P, num_entries = 10 + num_positive + N.
    n_pos = 10 + float(pos.sum())
    entries = 10 + n_pos + float(neg.sum())
    ratio = entries / n_pos
    thumos = -(0.5 * ratio * s_pos + 0.5 * ratio / (ratio - 1) * s_neg) / entries
    assert classification_loss_with_count_offset(pred, gt, mask, 10.0) == pytest.approx(thumos, rel=1e-9)
    assert not math.isclose(thumos, ours, rel_tol=1e-3)


def test_proposal_columns_round_trip_and_frame_rate_and_names():
    props = np.array([[0.1, 0.4, 0.9], [0.2, 0.6, 0.5]])
    frame = proposal_frame(props)
    assert list(frame.columns) == ["xmin", "xmax", "score"]
    np.testing.assert_array_equal(proposals_from_frame(frame[["score", "xmin", "xmax"]]), props)
    with pytest.raises(KeyError, match="'xmax' missing"):
        proposals_from_frame(frame[["xmin", "score"]])
    assert snippet_frame_rate(24, 12.0) == 2.0  # snippet 6 of 24 is frame 6, 3 s at 2 "frames" per s
    check_names_distinct(["v_a1", "v_b2"])
    with pytest.raises(ValueError, match="'v_a1' and 'v_a12'"):
        check_names_distinct(["v_a1", "v_a12"])


def test_max_abs_diff_and_verdicts():
    assert max_abs_diff(torch.tensor([1.0, 2.0]), np.array([1.0, 2.5]), "x") == 0.5
    assert max_abs_diff(np.zeros((0, 3)), np.zeros((0, 3)), "x") == 0.0
    assert math.isnan(max_abs_diff([1.0, float("nan")], [1.0, 2.0], "x"))
    with pytest.raises(ValueError, match="start labels: ours has shape \\(3,\\), the reference's \\(4,\\)"):
        max_abs_diff(np.zeros(3), np.zeros(4), "start labels")
    assert Check("a", 1e-7, 1e-5).verdict == "equal"
    assert Check("b", 0.6, 1e-5, explained="offset", explained_diff=1e-7).verdict == "by design"
    assert Check("c", 0.6, 1e-5, explained="offset", explained_diff=0.2).verdict == "DIFFERS"
    assert Check("d", 0.6, 1e-5).verdict == "DIFFERS"
    assert Check("e", float("nan"), 1e-5).verdict == "DIFFERS"
    report = render_checks([Check("a", 1e-7, 1e-5), Check("bb", 0.6, 1e-5, explained="the offset", explained_diff=1e-7)])
    first = report.splitlines()[1].split()
    assert first[0] == "a" and first[1:] == ["1e-07", "1e-05", "equal"]
    assert "- bb: the offset (left once applied: 1e-07)" in report
    assert report.splitlines()[2].endswith("by design")


def test_detections_grouped_by_label_keep_the_proposal_order_and_compare_row_by_row():
    ours = [  # class by class
        {"label": "jump", "score": 0.5, "segment": [1.0, 2.0]},
        {"label": "jump", "score": 0.25, "segment": [3.0, 4.0]},
        {"label": "run", "score": 0.2, "segment": [1.0, 2.0]},
        {"label": "run", "score": 0.1, "segment": [3.0, 4.0]},
    ]
    theirs = [  # proposal by proposal, the last proposal dropped
        {"label": "Jump", "score": 0.5000004, "segment": [1.0, 2.05]},
        {"label": "Run", "score": 0.2, "segment": [1.0, 2.05]},
    ]
    a = detections_by_label(ours)
    b = detections_by_label(theirs, rename={"Jump": "jump", "Run": "run"})
    np.testing.assert_array_equal(a["jump"], [[0.5, 1.0, 2.0], [0.25, 3.0, 4.0]])
    diff = compare_detections(a, b)
    assert diff.score == pytest.approx(4e-7) and diff.segment == pytest.approx(0.05)
    assert diff.counts == {"jump": (2, 1), "run": (2, 1)}
    with pytest.raises(ValueError, match="labels differ"):
        compare_detections(a, detections_by_label(theirs))
    with pytest.raises(ValueError, match="detection 0"):
        detections_by_label([{"label": "jump", "score": 1.0}])


def test_reference_regression_weights_are_ours_below_ratio_one_and_cover_the_map_above():
    t = 8
    mask = torch.from_numpy(valid_anchor_mask(t))
    gt = torch.from_numpy(np.stack([iou_map_labels(np.array([[0.25, 0.75]]), t), iou_map_labels(np.array([[0.5, 0.625]]), t)]))
    pred = torch.rand(2, t, t, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    draws = [torch.rand(gt.shape, generator=g) for _ in range(2)]
    ours = float(map_regression_loss(pred, gt * mask, mask, torch.Generator().manual_seed(4)))
    weights = reference_regression_weights(gt, mask, draws)
    assert set(weights.unique().tolist()) <= {0.0, 1.0}
    assert weighted_regression_loss(pred, gt * mask, weights) == pytest.approx(ours, rel=1e-6)

    # More anchors above 0.7 than in (0.3, 0.7] and in (0, 0.3]: every cell gets both bands' weights,
    # so anchors above 0.7 weigh 3 and every other cell, off the anchors too, 2.
    crafted = torch.where(mask.bool(), torch.tensor(0.8), torch.tensor(0.0)).expand(2, t, t).clone()
    crafted[:, 0, :3] = 0.5
    crafted[:, 1, :2] = 0.2
    assert min(sampling_ratios(crafted, mask)) > 1
    weights = reference_regression_weights(crafted, mask, draws)
    assert bool((weights[crafted == 0.8] == 3).all()) and bool((weights[crafted != 0.8] == 2).all())
