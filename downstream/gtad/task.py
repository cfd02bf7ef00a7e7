"""The ``tal`` task: temporal action localization on ActivityNet with a G-TAD head.

Train G-TAD on the features of the ``training`` videos, train a video-level classifier on the
same features (the published G-TAD takes video labels from an external classifier whose scores
we do not have, see ``clap_bench.downstream.video_classifier``), localise proposals on the
``validation`` videos, give each the top-2 classes of its video, and score the result with the
ActivityNet detection mAP. Writes into the output folder:

- ``predictions.json``: the detections in the ActivityNet result format (times in seconds);
- ``train_log.json``: the mean losses of each epoch;
- ``metrics.json`` (last): ``mAP@0.5``, ``mAP@0.75``, ``mAP@0.95``, ``average_mAP`` (fractions), and
  ``video_labels``: ``"external"`` (with ``video_scores``: the file) or ``"built-in classifier"``.

With ``tasks.tal.video_scores: PATH`` (classification results in the CUHK layout G-TAD reads, see
``video_scores.py``) the labels come from that file, as in the paper; the built-in classifier is
trained only when it is not given.

Times are normalised by the annotated duration of each video. (The released ActivityNet code
of G-TAD/BMN shortens the duration to the part covered by whole 16-frame clips of its
features; our snippet features are rescaled over the whole video instead.)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, Union

import torch
from torch.utils.data import DataLoader

from clap_bench.config import from_dict
from clap_bench.data.schema import AnnotationSet
from clap_bench.downstream.base import TaskContext, register_task
from clap_bench.downstream.gtad.config import GTADConfig
from clap_bench.downstream.gtad.data import GTADTrainSet, collect_videos
from clap_bench.downstream.gtad.model import build_gtad
from clap_bench.downstream.gtad.postprocess import detections_for_video
from clap_bench.downstream.gtad.train import predict_proposals, train_gtad
from clap_bench.downstream.gtad.video_scores import check_classes, read_video_scores
from clap_bench.downstream.video_classifier import predict_class_probs, top_classes, train_video_classifier
from clap_bench.io import atomic_write_json

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

REPORTED_TIOUS = {"mAP@0.5": 0.5, "mAP@0.75": 0.75, "mAP@0.95": 0.95}
# metrics.json["video_labels"]: where the proposals' classes came from ("external" or this).
BUILTIN_LABELS = "built-in classifier"


def ground_truth_database(annotations: AnnotationSet) -> dict:
    """The annotations in the ActivityNet ground-truth format (``{"database": {...}}``), actions only."""
    return {
        "version": "VERSION 1.3",
        "database": {
            vid: {
                "subset": v.subset,
                "duration": v.duration,
                "annotations": [{"segment": [s.start, s.end], "label": s.label} for s in v.actions],
            }
            for vid, v in annotations.videos.items()
        },
    }


def detection_metrics(scores: dict) -> Dict[str, float]:
    """``evaluate_detection`` output -> the task's flat metrics."""
    metrics = {}
    for name, tiou in REPORTED_TIOUS.items():
        hits = [m for t, m in zip(scores["tiou_thresholds"], scores["mAP"]) if math.isclose(t, tiou, abs_tol=1e-9)]
        if not hits:
            raise ValueError(f"scorer returned no mAP at tIoU {tiou}; thresholds: {scores['tiou_thresholds']}")
        metrics[name] = float(hits[0])
    metrics["average_mAP"] = float(scores["average_mAP"])
    return metrics


def run_gtad_detection(
    annotations: AnnotationSet,
    features_path: PathLike,
    cfg: GTADConfig,
    out_dir: PathLike,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Dict[str, Union[float, str]]:
    """Train G-TAD (and the video classifier unless ``cfg.video_scores``), detect on ``cfg.eval_subset``, score, write the outputs."""
    from clap_bench.eval.detection import evaluate_detection

    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    train_items = collect_videos(annotations, features_path, cfg.train_subset, cfg.temporal_scale, require_actions=True)
    eval_items = collect_videos(annotations, features_path, cfg.eval_subset, cfg.temporal_scale, require_actions=False)
    feat_dim = train_items[0].features.shape[0]
    classes = sorted({s.label for it in train_items for s in it.video.actions})
    external = None
    if cfg.video_scores:  # read and checked before any training: a bad file fails at once
        external = read_video_scores(cfg.video_scores)
        check_classes(external, classes)
        external_classes = external.top_classes([it.video.id for it in eval_items], cfg.classes_per_video)

    loader = DataLoader(
        GTADTrainSet(train_items, cfg.temporal_scale, cfg.boundary_width, cfg.boundary_anchors),
        batch_size=cfg.batch_size, shuffle=True, generator=generator,
    )
    model = build_gtad(cfg, feat_dim)
    history = train_gtad(model, loader, cfg, device=device, generator=generator, progress=progress)

    eval_feats = [it.features for it in eval_items]
    if external is not None:
        # The paper's protocol: G-TAD unchanged, labels from the external classifier's scores.
        video_classes = external_classes
        labels_from = {"video_labels": "external", "video_scores": external.path}
        details = f"video labels from the external classification results {external.path}"
    else:
        targets = torch.zeros(len(train_items), len(classes))
        for row, it in enumerate(train_items):
            for s in it.video.actions:
                targets[row, classes.index(s.label)] = 1.0
        train_feats = torch.stack([it.features for it in train_items])
        classifier = train_video_classifier(train_feats, targets, cfg.classifier, generator=generator, device=device)
        video_classes = top_classes(predict_class_probs(classifier, torch.stack(eval_feats)), classes, cfg.classes_per_video)
        labels_from = {"video_labels": BUILTIN_LABELS}
        details = "video labels from a classifier trained on the same features"
    proposals = predict_proposals(model, eval_feats, cfg, device=device)

    # A class never annotated in the scored subset has no AP of its own, and its detections
    # cannot match anything: dropping them leaves the mAP unchanged.
    scored_classes = {s.label for v in annotations.videos.values() if v.subset == cfg.eval_subset for s in v.actions}
    results = {}
    for it, props, labels in zip(eval_items, proposals, video_classes):
        labels = [(name, p) for name, p in labels if name in scored_classes]
        results[it.video.id] = detections_for_video(props, it.video.duration, labels)
    predictions = {
        "version": "VERSION 1.3",
        "results": results,
        "external_data": {"used": bool(cfg.video_scores), "details": details},
    }
    atomic_write_json(out_dir / "predictions.json", predictions, indent=None)
    atomic_write_json(out_dir / "train_log.json", {"epochs": history, "train_videos": len(train_items),
                                                   "eval_videos": len(eval_items), "classes": len(classes)})

    scores = evaluate_detection(ground_truth_database(annotations), predictions, subset=cfg.eval_subset)
    metrics = {**detection_metrics(scores), **labels_from}
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


@register_task(
    "tal", config_cls=GTADConfig, datasets=("activitynet",),
    description=(
        "temporal action localization on ActivityNet: G-TAD proposals, labels from external video scores "
        "(video_scores, as the paper) or a video classifier trained on the same features, mAP at tIoU 0.5:0.05:0.95"
    ),
)
def run_tal(ctx: TaskContext) -> Dict[str, float]:
    from clap_bench.data import load_dataset

    cfg = from_dict(GTADConfig, ctx.overrides, "tasks.tal")
    for key in ("activitynet",):
        if key not in ctx.datasets:
            raise KeyError(f"tal task: dataset {key!r} missing; datasets given: {sorted(ctx.datasets)}")
        if key not in ctx.features:
            raise KeyError(f"tal task: features of {key!r} missing; features given: {sorted(ctx.features)}")
    annotations = load_dataset(ctx.datasets["activitynet"], key="activitynet")
    return run_gtad_detection(
        annotations, ctx.features["activitynet"], cfg, ctx.out_dir, seed=ctx.seed, device=ctx.device, progress=ctx.progress
    )
