"""Our G-TAD beside the reference code (frostinassiky/gtad) on the same inputs, to float tolerance.

    python benchmarks/reference/gtad_vs_reference.py --reference /path/to/gtad

``/path/to/gtad`` is a checkout of https://github.com/frostinassiky/gtad at commit
6deb5b1bc6883b48bd22e0cc593069643c953e3d, fetched outside the project (never copied into it):

    git clone https://github.com/frostinassiky/gtad && git -C gtad checkout 6deb5b1bc6883b48bd22e0cc593069643c953e3d

The script imports the reference's own modules from that folder (``gtad_lib/dataset.py``,
``gtad_lib/loss_function.py``, ``gtad_postprocess.py``) and runs ``gtad_inference.py``, and
compares what they return with ours on the same inputs:

1. training targets: the IoU map and the start/end labels of every training video of the
   synthetic ActivityNet-like set (``ensure_synthetic(profile)``, read by our reader), at the
   profile's ``tasks.tal.temporal_scale``;
2. the losses (boundary, regression, classification, total) for the same random predictions
   (seeded) and those targets, batch by batch (``tasks.tal.batch_size``);
3. soft-NMS on the same proposal list;
4. the post-processing of the same network outputs: the proposals ``gtad_inference.py``
   enumerates and their fused score, then ``gtad_postprocess.py``'s detections (soft-NMS, top-k,
   top-2 video classes, conversion to seconds).

What runs where the reference needs what this machine lacks (all in ``reference_runtime``):

- The reference's SGAlign op (``gtad_lib/Align1D_cuda.cpp/.cu``) is a CUDA extension; nothing
  compared here imports it (the network itself is not compared, its outputs are given).
- The reference calls ``.cuda()`` on tensors it creates; while its functions run, ``Tensor.cuda``
  returns the tensor itself (CPU).
- ``gtad_inference.py`` runs as a script; its network and its THUMOS14 data set are replaced
  by stand-ins that return the given outputs for the given videos (one window per video, one
  snippet per frame), so what runs of it is its proposal enumeration and the csv files it writes.
- The regression loss samples anchors with ``np.random.rand``; it gets ``1 - d`` for our draws
  ``d`` so that both keep the same anchors.

Differences by design are verified, not just named: the report applies the cause to our side and
prints what is left, which must be within tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import runpy
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from clap_bench.config import from_dict, load_profile
from clap_bench.data import load_dataset
from clap_bench.downstream.gtad import GTADConfig
from clap_bench.downstream.gtad.labels import boundary_labels, iou_map_labels, normalise_segments, valid_anchor_mask
from clap_bench.downstream.gtad.losses import boundary_loss, gtad_loss, map_regression_loss
from clap_bench.downstream.gtad.postprocess import detections_for_video, proposals_from_outputs, soft_nms
from clap_bench.reference import ReferenceMissing
from clap_bench.reference.gtad import (
    GTAD_ANET_COMMIT,
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
from clap_bench.synth import ensure_synthetic

FLOAT_TOL = 1e-5  # float32 arithmetic on both sides, different operation orders
EXACT_TOL = 1e-9  # float64 on both sides


# --------------------------------------------------------------------------------------------
# Running the reference
# --------------------------------------------------------------------------------------------


class Reference:
    """The reference's modules, imported from its checkout (``gtad_lib`` registered as a package at that path)."""

    def __init__(self, root: Path):
        self.root = root
        package = types.ModuleType("gtad_lib")
        package.__path__ = [str(root / "gtad_lib")]
        sys.modules["gtad_lib"] = package
        self.dataset = importlib.import_module("gtad_lib.dataset")
        self.loss = importlib.import_module("gtad_lib.loss_function")
        spec = importlib.util.spec_from_file_location("gtad_postprocess", root / "gtad_postprocess.py")
        self.postprocess = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.postprocess)


@contextlib.contextmanager
def reference_runtime(draws: Optional[List[np.ndarray]] = None):
    """``Tensor.cuda`` as a no-op and, when given, ``np.random.rand`` returning ``draws`` in turn."""
    saved_cuda, saved_rand = torch.Tensor.cuda, np.random.rand
    queue = list(draws or [])

    def rand(*shape):
        if not queue:
            raise RuntimeError("the reference drew more random numbers than prepared")
        out = queue.pop(0)
        if out.shape != tuple(shape):
            raise RuntimeError(f"the reference drew shape {shape}, prepared {out.shape}")
        return out

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    if draws is not None:
        np.random.rand = rand
    try:
        yield
    finally:
        torch.Tensor.cuda = saved_cuda
        np.random.rand = saved_rand
    if queue:
        raise RuntimeError(f"the reference drew {len(draws) - len(queue)} of the {len(draws)} prepared arrays")


def reference_labels(ref: Reference, window, temporal_scale: int):
    """The reference's ``VideoDataSet._get_train_label`` on one window (start, end, IoU map)."""
    data_set = ref.dataset.VideoDataSet.__new__(ref.dataset.VideoDataSet)  # its __init__ reads THUMOS14 files
    data_set.temporal_scale = temporal_scale
    data_set.temporal_gap = 1.0 / temporal_scale
    data_set.num_videoframes = temporal_scale
    data_set.max_duration = temporal_scale
    data_set.skip_videoframes = 1
    data_set._get_match_map()
    data_set.data = window.as_data()
    start, end, iou = data_set._get_train_label(0)
    return start.numpy(), end.numpy(), iou.numpy(), data_set


def run_reference_inference(ref: Reference, outputs: Dict[str, tuple], temporal_scale: int, out_dir: Path) -> Path:
    """Run ``gtad_inference.py`` with stand-ins for its network and data set; returns its results folder."""
    names = list(outputs)

    class GivenOutputs(nn.Module):  # the network: the outputs given for the video whose index it is fed
        def __init__(self, opt):
            super().__init__()

        def forward(self, index):
            return outputs[names[int(index.reshape(-1)[0])]]

    class GivenVideos(torch.utils.data.Dataset):  # one window per video, starting at frame 0
        def __init__(self, opt, subset="validation", mode="inference"):
            self.video_list = names
            self.data = {"indices": [np.arange(temporal_scale)] * len(names)}

        def __len__(self):
            return len(names)

        def __getitem__(self, i):
            return i, torch.tensor([float(i)])

    stand_ins = {
        "gtad_lib.models": types.SimpleNamespace(GTAD=GivenOutputs),
        "gtad_lib.dataset": types.SimpleNamespace(VideoDataSet=GivenVideos),
    }
    torch.save({"state_dict": {}}, out_dir / "GTAD_best.pth.tar")
    argv = ["gtad_inference.py", "--output", str(out_dir), "--temporal_scale", str(temporal_scale),
            "--max_duration", str(temporal_scale), "--skip_videoframes", "1"]
    saved_modules = {k: sys.modules.get(k) for k in stand_ins}
    saved_argv = sys.argv
    sys.modules.update(stand_ins)
    sys.argv = argv
    try:
        # Its DataLoader asks for 8 workers and pinned memory: fine here, but it warns about both.
        with reference_runtime(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            runpy.run_path(str(ref.root / "gtad_inference.py"), run_name="__main__")
    finally:
        sys.argv = saved_argv
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return out_dir / "results"


# --------------------------------------------------------------------------------------------
# The four comparisons
# --------------------------------------------------------------------------------------------


def compare_targets(ref: Reference, videos, cfg: GTADConfig) -> List[Check]:
    t = cfg.temporal_scale
    mask = valid_anchor_mask(t)
    worst = dict(iou=0.0, start=0.0, end=0.0, start_bmn=0.0, end_bmn=0.0, start_cross=0.0)
    for v in videos:
        segments = [(s.start, s.end) for s in v.actions]
        gt = normalise_segments(segments, v.duration)
        ours_iou = iou_map_labels(gt, t)
        ours_start, ours_end = boundary_labels(gt, t, cfg.boundary_width, "snippet")
        bmn_start, bmn_end = boundary_labels(gt, t, cfg.boundary_width, "bmn")
        ref_start, ref_end, ref_iou, data_set = reference_labels(ref, window_label_input(segments, v.duration, t), t)
        # The reference's map is not masked (its training multiplies it by the mask); ours is zero off the anchors.
        worst["iou"] = max(worst["iou"], max_abs_diff(ours_iou, ref_iou * mask, f"{v.id} IoU map"))
        worst["start"] = max(worst["start"], max_abs_diff(ours_start, ref_start, f"{v.id} start labels"))
        worst["end"] = max(worst["end"], max_abs_diff(ours_end, ref_end, f"{v.id} end labels"))
        # The same label code on the snippet intervals the reference's _get_match_map builds
        # (anchor_xmin / anchor_xmax, the ActivityNet code's intervals).
        bounds = (data_set.anchor_xmin, data_set.anchor_xmax)
        anet_start, anet_end, _, _ = reference_labels(ref, window_label_input(segments, v.duration, t, bounds), t)
        worst["start_bmn"] = max(worst["start_bmn"], max_abs_diff(bmn_start, anet_start, f"{v.id} start labels (bmn)"))
        worst["end_bmn"] = max(worst["end_bmn"], max_abs_diff(bmn_end, anet_end, f"{v.id} end labels (bmn)"))
        worst["start_cross"] = max(worst["start_cross"], max_abs_diff(ours_start, anet_start, f"{v.id} start labels"))
    return [
        Check("targets: IoU map (valid anchors)", worst["iou"], FLOAT_TOL),
        Check("targets: start labels (boundary_anchors=snippet vs THUMOS14 code)", worst["start"], FLOAT_TOL),
        Check("targets: end labels (boundary_anchors=snippet vs THUMOS14 code)", worst["end"], FLOAT_TOL),
        Check("targets: start labels (boundary_anchors=bmn vs _get_match_map intervals)", worst["start_bmn"], FLOAT_TOL),
        Check("targets: end labels (boundary_anchors=bmn vs _get_match_map intervals)", worst["end_bmn"], FLOAT_TOL),
        Check(
            "targets: start labels (boundary_anchors=snippet vs _get_match_map intervals)", worst["start_cross"], FLOAT_TOL,
            explained="ActivityNet code (and BMN) take snippet i as [(i-0.5)/T, (i+1.5)/T]; switch "
                      "tasks.tal.boundary_anchors (bmn in the paper profile); row above: bmn vs the reference",
            explained_diff=worst["start_bmn"],
        ),
    ]


def compare_losses(ref: Reference, videos, cfg: GTADConfig, seed: int) -> tuple:
    t = cfg.temporal_scale
    mask = torch.from_numpy(valid_anchor_mask(t))
    generator = torch.Generator().manual_seed(seed)
    worst = dict(boundary=0.0, regression=0.0, classification=0.0, cls_offset=0.0, total=0.0, total_offset=0.0,
                 thumos=0.0, thumos_offset=0.0)
    ratios = []
    for b, first in enumerate(range(0, len(videos), cfg.batch_size)):
        batch = videos[first:first + cfg.batch_size]
        targets = []
        for v in batch:
            gt = normalise_segments([(s.start, s.end) for s in v.actions], v.duration)
            start, end = boundary_labels(gt, t, cfg.boundary_width, cfg.boundary_anchors)
            targets.append((iou_map_labels(gt, t), start, end))
        gt_iou, gt_start, gt_end = (torch.from_numpy(np.stack(x)) for x in zip(*targets))
        n = len(batch)
        anchor_map = torch.rand(n, 2, t, t, generator=generator)
        pred_start = torch.rand(n, t, generator=generator)
        pred_end = torch.rand(n, t, generator=generator)

        draw_seed = seed * 1000 + b
        ours = gtad_loss(anchor_map, pred_start, pred_end, gt_iou, gt_start, gt_end, mask, cfg.reg_weight,
                         torch.Generator().manual_seed(draw_seed))
        draw_gen = torch.Generator().manual_seed(draw_seed)  # the same draws, in the same order, for the reference
        draws = reference_uniform_draws([torch.rand(gt_iou.shape, generator=draw_gen) for _ in range(2)])
        with reference_runtime(draws):
            total, tem, reg, cls = ref.loss.bmn_loss_func(anchor_map, pred_start, pred_end, gt_iou, gt_start, gt_end, mask)
        with reference_runtime(draws):  # the THUMOS14 training step's composition (gtad_train.py)
            masked = gt_iou * mask
            thumos = ref.loss.subgraph_loss_func(anchor_map, masked, mask) + ref.loss.node_loss_func(
                pred_start, pred_end, gt_start, gt_end)
        ratios.append(sampling_ratios(gt_iou, mask))

        cls_offset = classification_loss_with_count_offset(anchor_map[:, 1], gt_iou, mask, 10.0)
        ours_total_offset = float(ours["boundary"]) + cfg.reg_weight * float(ours["regression"]) + cls_offset
        ours_thumos = float(ours["boundary"]) + float(ours["regression"]) + 10.0 * cls_offset
        worst["boundary"] = max(worst["boundary"], abs(float(ours["boundary"]) - float(tem)))
        worst["regression"] = max(worst["regression"], abs(float(ours["regression"]) - float(reg)))
        worst["classification"] = max(worst["classification"], abs(float(ours["classification"]) - float(cls)))
        worst["cls_offset"] = max(worst["cls_offset"], abs(cls_offset - float(cls)))
        worst["total"] = max(worst["total"], abs(float(ours["loss"]) - float(total)))
        worst["total_offset"] = max(worst["total_offset"], abs(ours_total_offset - float(total)))
        worst["thumos"] = max(worst["thumos"], abs(float(ours["loss"]) - float(thumos)))
        worst["thumos_offset"] = max(worst["thumos_offset"], abs(ours_thumos - float(thumos)))
    offset = "the THUMOS14 code adds 10 to the positive count and 20 to the entries of the map classification loss " \
             "(N_pos + 10, N_neg + 10); BMN's and G-TAD's ActivityNet code (and ours) do not"
    checks = [
        Check("loss: boundary (start + end)", worst["boundary"], FLOAT_TOL),
        Check("loss: map regression", worst["regression"], FLOAT_TOL),
        Check("loss: map classification", worst["classification"], FLOAT_TOL, explained=offset,
              explained_diff=worst["cls_offset"]),
        Check("loss: total, boundary + 10 reg + cls (bmn_loss_func)", worst["total"], FLOAT_TOL, explained=offset,
              explained_diff=worst["total_offset"]),
        Check("loss: total of the THUMOS14 training step", worst["thumos"], FLOAT_TOL,
              explained="gtad_train.py (THUMOS14) weights the classification term by 10, not the regression "
                        "(subgraph_loss_func: reg + 10 cls); the ActivityNet code uses boundary + 10 reg + cls, as ours",
              explained_diff=worst["thumos_offset"]),
    ]
    return checks, ratios


def compare_edge_cases(ref: Reference, cfg: GTADConfig, seed: int) -> tuple:
    """Two cases the synthetic videos never produce, on constructed inputs: what each side does there."""
    t = cfg.temporal_scale
    mask = torch.from_numpy(valid_anchor_mask(t))
    gen = torch.Generator().manual_seed(seed + 3)
    # An IoU map with more anchors above 0.7 than in (0.3, 0.7] and in (0, 0.3] (ratios above 1).
    gt_iou = torch.where(mask.bool(), torch.tensor(0.8), torch.tensor(0.0)).expand(2, t, t).clone()
    gt_iou[:, 0, :3] = 0.5
    gt_iou[:, 1, :2] = 0.2
    pred = torch.rand(2, t, t, generator=gen)
    ours = float(map_regression_loss(pred, gt_iou, mask, torch.Generator().manual_seed(seed)))
    draw_gen = torch.Generator().manual_seed(seed)
    draws = [torch.rand(gt_iou.shape, generator=draw_gen) for _ in range(2)]
    with reference_runtime(reference_uniform_draws(draws)):
        theirs = float(ref.loss.pem_reg_loss_func(pred, gt_iou, mask))
    as_reference = weighted_regression_loss(pred, gt_iou, reference_regression_weights(gt_iou, mask, draws))
    r_mid, r_low = sampling_ratios(gt_iou, mask)
    checks = [Check(
        f"edge: map regression at sampling ratios {r_mid:.1f} / {r_low:.1f} (constructed map)", abs(ours - theirs), FLOAT_TOL,
        explained="above ratio 1 the reference's draws, compared after multiplying by the band's mask, mark every "
                  "cell of the map (off the anchors too; anchors above 0.7 then weigh 3); ours keeps the band's "
                  "anchors only (never reached by the synthetic videos, ratios printed below)",
        explained_diff=abs(as_reference - theirs),
    )]
    # A batch without any positive start label.
    pred_start = torch.rand(2, t, generator=gen)
    no_positive = torch.zeros(2, t)
    with reference_runtime():
        theirs = float(ref.loss.tem_loss_func(pred_start, pred_start, no_positive, no_positive))
    ours = float(boundary_loss(pred_start, no_positive) * 2)
    note = (f"edge: boundary loss of a batch without positive labels: reference {theirs:.4g} (it divides by the "
            f"number of positives), ours {ours:.4g} (at least one counted); not reached: every training video has an action")
    return checks, note


def compare_soft_nms(ref: Reference, cfg: GTADConfig, seed: int) -> List[Check]:
    t = cfg.temporal_scale
    gen = torch.Generator().manual_seed(seed + 1)
    proposals = proposals_from_outputs(torch.rand(2, t, t, generator=gen), torch.rand(t, generator=gen),
                                       torch.rand(t, generator=gen), score="map")
    # Keeping every proposal costs the reference's Python loop P^2 IoUs: that case runs on a
    # random subset of at most 300 (all of them at temporal scale 24).
    subset = proposals[np.sort(np.random.default_rng(seed).permutation(len(proposals))[:300])]
    checks = []
    top_k = cfg.proposals_per_video
    for props, k, label in ((proposals, top_k, f"top {top_k} of {len(proposals)}"), (subset, len(subset), f"all {len(subset)}")):
        ours = soft_nms(props, cfg.soft_nms_sigma, k)
        theirs = proposals_from_frame(ref.postprocess.Soft_NMS(proposal_frame(props), cfg.soft_nms_sigma, k))
        n = min(len(ours), len(theirs))
        checks.append(Check(f"soft-NMS, {label}: the {n} rows both keep", max_abs_diff(ours[:n], theirs[:n], "soft-NMS"), EXACT_TOL))
        checks.append(Check(
            f"soft-NMS, {label}: rows kept (ours {len(ours)}, ref {len(theirs)})", abs(len(ours) - len(theirs)), 0,
            explained="the reference's loop runs while more than one proposal is left (`while len(tscore) > 1`), "
                      "so it never keeps the last one",
            explained_diff=0 if len(ours) - len(theirs) == 1 == len(props) - len(theirs) else None,
        ))
    return checks


def compare_postprocessing(ref: Reference, videos, cfg: GTADConfig, seed: int, work: Path) -> List[Check]:
    t = cfg.temporal_scale
    names = [v.id for v in videos]
    check_names_distinct(names)
    gen = torch.Generator().manual_seed(seed + 2)
    outputs = {}
    for v in videos:
        outputs[v.id] = (torch.rand(1, 2, t, t, generator=gen), torch.rand(1, t, generator=gen), torch.rand(1, t, generator=gen))
    results = run_reference_inference(ref, outputs, t, work)

    # The reference's labels are THUMOS14 class names looked up by class index; the video-level
    # scores (20 classes, random) are given to both sides under those names.
    thumos_ids = np.array(sorted(ref.postprocess.thumos_class))
    class_names = [ref.postprocess.thumos_class[int(i)] for i in thumos_ids]
    class_scores = torch.rand(len(videos), len(class_names), generator=gen).numpy()

    worst = dict(enum=0.0, score=0.0, default_score=0.0, det_score=0.0, det_segment=0.0)
    counts_differ = []
    ref.postprocess.result = {}
    opt = {"output": str(work), "nms_thr": cfg.soft_nms_sigma}
    for row, v in enumerate(videos):
        confidence, start, end = (x[0] for x in outputs[v.id])
        files = sorted(results.glob(f"{v.id}_*.csv"))
        if len(files) != 1:
            raise RuntimeError(f"{results}: expected one result file for {v.id}, found {[f.name for f in files]}")
        table = pd.read_csv(files[0])
        theirs = np.stack([table["xmin"] / t, table["xmax"] / t, table["clr_score"] * table["reg_socre"]], axis=1)
        ours = proposals_from_outputs(confidence, start, end, score="map", candidates="all")
        ours_default = proposals_from_outputs(confidence, start, end, score="boundaries_and_map", candidates="all")
        worst["enum"] = max(worst["enum"], max_abs_diff(ours[:, :2], theirs[:, :2], f"{v.id} proposal bounds"))
        worst["score"] = max(worst["score"], max_abs_diff(ours[:, 2], theirs[:, 2], f"{v.id} proposal scores"))
        worst["default_score"] = max(worst["default_score"], max_abs_diff(ours_default[:, 2], theirs[:, 2], f"{v.id} scores"))

        # The THUMOS14 post-processing: soft-NMS per window, then again over the video's windows
        # (one window here), top 200, top-2 classes, frames -> seconds, rounded.
        ref.postprocess.result[v.id] = {"fps": snippet_frame_rate(t, v.duration), "num_frames": t}
        ref_entries = ref.postprocess._gen_detection_video(v.id, class_scores[row], thumos_ids - 1, opt)[v.id]
        order = np.argsort(-class_scores[row], kind="stable")[:2]
        classes = [(class_names[i], float(class_scores[row, i])) for i in order]
        kept = soft_nms(soft_nms(ours, cfg.soft_nms_sigma, 200), cfg.soft_nms_sigma, 200)
        our_entries = detections_for_video(kept, v.duration, classes)
        diff = compare_detections(detections_by_label(our_entries), detections_by_label(ref_entries))
        worst["det_score"] = max(worst["det_score"], diff.score)
        worst["det_segment"] = max(worst["det_segment"], diff.segment)
        counts_differ += [(v.id, label, c) for label, c in diff.counts.items() if c[0] != c[1]]

    count_note = sorted({c for _, _, c in counts_differ})
    return [
        Check("post-processing: proposal bounds (gtad_inference.py)", worst["enum"], EXACT_TOL),
        Check("post-processing: proposal score, proposal_score=map (clr * reg)", worst["score"], FLOAT_TOL),
        Check("post-processing: proposal score, proposal_score=boundaries_and_map", worst["default_score"], FLOAT_TOL,
              explained="the default profiles multiply in the start and end probabilities (BMN's score); "
                        "tasks.tal.proposal_score=map (paper profile) is G-TAD's; row above",
              explained_diff=worst["score"]),
        Check("post-processing: detection scores (the reference rounds to 6 decimals)", worst["det_score"], 5e-7 + 1e-7),
        Check("post-processing: detection times in s (the reference rounds to 0.1 s)", worst["det_segment"], 0.05 + EXACT_TOL),
        Check(f"post-processing: detections per video and class (ours, ref): {count_note or 'same'}",
              float(len(counts_differ)), 0,
              explained="the reference's second soft-NMS pass stops while one proposal is left and drops it; "
                        "every row both keep is compared above",
              explained_diff=0 if count_note and all(a - b == 1 for a, b in count_note) else None),
    ]


# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="folder of a G-TAD checkout (frostinassiky/gtad)")
    parser.add_argument("--profile", default="default", help="profile whose synthetic set and tasks.tal settings are used")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic benchmark (its cache key)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random predictions and draws")
    parser.add_argument("--videos", type=int, default=8, help="validation videos whose outputs are post-processed")
    parser.add_argument("--temporal-scale", type=int, help="instead of the profile's tasks.tal.temporal_scale (G-TAD's: 100)")
    args = parser.parse_args(argv)
    try:
        root = require_gtad(args.reference)
    except ReferenceMissing as err:
        print(err, file=sys.stderr)
        return 2
    ref = Reference(root)

    profile = load_profile(args.profile)
    cfg = from_dict(GTADConfig, profile.task_config("tal"), "tasks.tal")
    if args.temporal_scale:
        cfg.temporal_scale = args.temporal_scale
    cfg.validate()
    datasets = ensure_synthetic(args.profile, args.data_seed)
    annotations = load_dataset(datasets["activitynet"], key="activitynet")
    train = sorted((v for v in annotations.videos.values() if v.subset == cfg.train_subset and v.actions), key=lambda v: v.id)
    val = sorted((v for v in annotations.videos.values() if v.subset == cfg.eval_subset), key=lambda v: v.id)[:args.videos]
    print(f"G-TAD reference: {root} (expected commit {GTAD_COMMIT}; ActivityNet code cited: {GTAD_ANET_COMMIT})")
    print(f"inputs: synthetic '{args.profile}' seed {args.data_seed}, {len(train)} {cfg.train_subset} videos, "
          f"{len(val)} {cfg.eval_subset} videos; temporal_scale {cfg.temporal_scale}, batch_size {cfg.batch_size}, "
          f"soft-NMS sigma {cfg.soft_nms_sigma}, top {cfg.proposals_per_video}; prediction seed {args.seed}")

    checks = compare_targets(ref, train, cfg)
    loss_checks, ratios = compare_losses(ref, train, cfg, args.seed)
    checks += loss_checks
    edge_checks, edge_note = compare_edge_cases(ref, cfg, args.seed)
    checks += edge_checks
    checks += compare_soft_nms(ref, cfg, args.seed)
    with tempfile.TemporaryDirectory(prefix="gtad-ref-") as tmp:
        checks += compare_postprocessing(ref, val, cfg, args.seed, Path(tmp))
    print()
    print(render_checks(checks))
    r_mid = max(r for r, _ in ratios)
    r_low = max(r for _, r in ratios)
    print()
    print(edge_note)
    print(f"regression-loss sampling ratios over the batches: N_high/N_mid <= {r_mid:.3f}, N_high/N_low <= {r_low:.3f}"
          + ("" if max(r_mid, r_low) <= 1 else
             " (above 1: the reference then weights every cell of the map, ours every anchor of the band; "
             "the regression rows above include such batches)"))
    return 0 if all(c.verdict != "DIFFERS" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
