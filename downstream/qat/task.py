"""The ``fstal`` task: few-shot temporal action localization with QAT on ActivityNet.

Stages, all on one feature file (an encoder pre-trained on base classes only):

1. **Base training.** G-TAD (the ``tal`` task's network) is trained on the base-class videos
   of ``base_subsets`` (the training subset); its backbone's snippet features (input
   convolution + GCNeXt blocks, ``(H, T)`` per video) are what the few-shot model reads.
2. **Meta-training.** The query-adaptive transformer is trained on base-class episodes from
   the same videos: for each episode the support prototype and bias are adapted on the support
   (as at test time), the transformer refines the prototype with the query's snippets, and the
   class-balanced cross-entropy of the query's foreground probabilities is minimised (``meta_loss``;
   ``foreground_ce``: fewshotQAT's, on the query's foreground snippets only) by Adam or plain SGD
   (``meta_optimizer``) on batches of ``meta_batch`` episodes. The
   transformer is scored (average mAP) on ``select_episodes`` episodes of the validation
   classes before the first step and every ``select_every`` steps, and its best state is kept.
   The untrained transformer adds nothing to the prototype (a LayerNorm of it), but the bias is
   still re-fitted on the support for ``adapt_steps`` more steps, so the state before meta-training
   is close to the plain prototype, not the same: selection can fall back to near it, and the
   ``prototype/`` metrics stay the plain prototype's own figures.
3. **Test.** ``runs`` x ``episodes_per_run`` ``shots``-shot episodes of the test classes drawn
   from ``episode_subsets`` (the validation subset), deterministic from the seed. Each query is
   localised with the refined prototype (QAT) and with the support-adapted prototype alone
   (``prototype/`` metrics), labelled with the episode's class, and each run is scored with the
   ActivityNet detection mAP; metrics are means over runs, with their standard deviation over
   runs under ``<name>_std_runs``.

No video of a validation or test class reaches stages 1 and 2 (``assert_no_leakage``);
validation-class videos are only scored, for model selection, and test-class videos only at test.

Writes into the output folder: ``episodes.json``; ``runs/run<k>/ground_truth.json``,
``predictions.json`` (QAT) and ``predictions_prototype.json`` in the ActivityNet formats, one
entry per episode keyed ``<query id>@run<k>-ep<i>`` (a query video can recur in a run);
``model.pt`` (backbone and transformer); ``train_log.json``; ``metrics.json`` last.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from clap_bench.config import from_dict
from clap_bench.data.readers import FewShotSplit
from clap_bench.data.schema import AnnotationSet, Video
from clap_bench.downstream.base import TaskContext, register_task
from clap_bench.downstream.gtad.data import GTADTrainSet, VideoItem, read_video_features
from clap_bench.downstream.gtad.model import GTAD, build_gtad
from clap_bench.downstream.gtad.task import detection_metrics
from clap_bench.downstream.gtad.train import train_gtad
from clap_bench.downstream.qat.config import QATConfig
from clap_bench.downstream.qat.localize import detections, foreground_mask, localise
from clap_bench.downstream.qat.model import (
    QueryAdaptiveTransformer,
    cosine_logits,
    foreground_ce_loss,
    foreground_loss,
    foreground_probability,
    normalise_snippets,
    refine_prototype,
    support_prototype,
)
from clap_bench.downstream.qat.protocol import (
    META_STREAM,
    SELECT_STREAM,
    TEST_STREAM,
    Episode,
    EpisodeSampler,
    assert_no_leakage,
    base_class_videos,
    videos_by_class,
    videos_needed,
)
from clap_bench.io import FeatureFileError, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
EVAL_SUBSET = "validation"  # the subset name episodes carry in their ground-truth files
PROTOTYPE_PREFIX = "prototype/"


# --------------------------------------------------------------------------- episode tensors
@dataclass
class EpisodeBatch:
    support: torch.Tensor  # (E, S, H, T)
    support_masks: torch.Tensor  # (E, S, T) bool
    query: torch.Tensor  # (E, H, T)
    query_masks: torch.Tensor  # (E, T) bool


def episode_batch(
    episodes: Sequence[Episode], features: Mapping[str, torch.Tensor], videos: Mapping[str, Video], device: str = "cpu"
) -> EpisodeBatch:
    """Stack the snippet features ``(H, T)`` and foreground masks of the episodes' videos."""
    t = next(iter(features.values())).shape[-1]

    def mask(vid: str, label: str) -> torch.Tensor:
        return torch.from_numpy(foreground_mask(videos[vid], label, t))

    support = torch.stack([torch.stack([features[v] for v in ep.support]) for ep in episodes])
    support_masks = torch.stack([torch.stack([mask(v, ep.label) for v in ep.support]) for ep in episodes])
    query = torch.stack([features[ep.query] for ep in episodes])
    query_masks = torch.stack([mask(ep.query, ep.label) for ep in episodes])
    return EpisodeBatch(support.to(device), support_masks.to(device), query.to(device), query_masks.to(device))


# --------------------------------------------------------------------------- stage 1
def train_backbone(
    base: AnnotationSet,
    raw_features: Mapping[str, torch.Tensor],
    cfg: QATConfig,
    device: str = "cpu",
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> Tuple[GTAD, List[dict]]:
    """Train G-TAD on the base-class videos (``base``, already leakage-checked) that have features."""
    items = [VideoItem(v, raw_features[v.id]) for vid, v in sorted(base.videos.items()) if vid in raw_features and v.actions]
    if not items:
        raise ValueError(f"{base.source}: none of the {len(base.videos)} base-class videos has features")
    feat_dim = items[0].features.shape[0]
    loader = DataLoader(
        GTADTrainSet(items, cfg.gtad.temporal_scale, cfg.gtad.boundary_width, cfg.gtad.boundary_anchors),
        batch_size=cfg.gtad.batch_size, shuffle=True, generator=generator,
    )
    model = build_gtad(cfg.gtad, feat_dim)
    history = train_gtad(model, loader, cfg.gtad, device=device, generator=generator, progress=progress)
    return model, history


@torch.no_grad()
def snippet_features(model: GTAD, raw_features: Mapping[str, torch.Tensor], device: str = "cpu", batch_size: int = 16,
                     snippet_norm: str = "layernorm") -> Dict[str, torch.Tensor]:
    """The backbone's snippet features ``(H, T)`` of every video (GCNeXt output, as QAT reads them),
    centred and scaled over channels with ``snippet_norm: layernorm`` (``normalise_snippets``)."""
    model.to(device).eval()
    ids = sorted(raw_features)
    out: Dict[str, torch.Tensor] = {}
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        _, deep = model.backbone(torch.stack([raw_features[v] for v in chunk]).to(device))
        if snippet_norm == "layernorm":
            deep = normalise_snippets(deep)
        out.update({v: deep[j].detach().cpu() for j, v in enumerate(chunk)})
    return out


# --------------------------------------------------------------------------- stage 2
def selection_steps(steps: int, select_every: int) -> List[int]:
    """The meta-training steps after which :func:`meta_train` scores the transformer for selection:
    0 (before the first step), every ``select_every`` steps, and the last step if not just scored."""
    return [0] + [s for s in range(1, steps + 1) if s % select_every == 0 or s == steps]


def meta_optimizer(transformer: QueryAdaptiveTransformer, cfg: QATConfig) -> torch.optim.Optimizer:
    """The optimiser of meta-training (``cfg.meta_optimizer``): Adam, or plain SGD without momentum
    (fewshotQAT's ``TransformerRePRI``: ``torch.optim.SGD`` at 0.025), at ``meta_lr`` with ``meta_weight_decay``."""
    if cfg.meta_optimizer == "sgd":
        return torch.optim.SGD(transformer.parameters(), lr=cfg.meta_lr, momentum=0.0, weight_decay=cfg.meta_weight_decay)
    if cfg.meta_optimizer == "adam":
        return torch.optim.Adam(transformer.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
    raise ValueError(f"tasks.fstal.meta_optimizer: expected one of adam, sgd, got {cfg.meta_optimizer!r}")


def meta_train(
    transformer: QueryAdaptiveTransformer,
    sampler: EpisodeSampler,
    features: Mapping[str, torch.Tensor],
    videos: Mapping[str, Video],
    cfg: QATConfig,
    device: str = "cpu",
    progress: bool = False,
    select: Optional[Callable[[QueryAdaptiveTransformer], float]] = None,
) -> List[dict]:
    """Train the transformer on ``cfg.meta_episodes`` base-class episodes; returns the log per step.

    With ``select`` (a score, higher is better: average mAP on validation-class episodes), the
    transformer is scored before the first step, every ``cfg.select_every`` steps and after the
    last, and ends in its best-scoring state (the earliest on ties). Before the first step the
    transformer adds nothing (its attention output starts at zero: the refined prototype is the
    LayerNorm of the plain one), so a meta-training that only hurts on validation classes falls
    back to that state. It is close to the plain prototype but not the same classifier:
    ``refine_prototype`` re-fits the bias on the support for ``adapt_steps`` more steps.
    """
    transformer.to(device).train()
    opt = meta_optimizer(transformer, cfg)
    query_loss = foreground_ce_loss if cfg.meta_loss == "foreground_ce" else foreground_loss
    history: List[dict] = []
    steps = math.ceil(cfg.meta_episodes / cfg.meta_batch)
    best: Optional[Tuple[float, int, dict]] = None

    def checkpoint(step: int) -> None:
        nonlocal best
        score = float(select(transformer))
        transformer.train()
        if best is None or score > best[0]:
            best = (score, step, {k: v.detach().clone() for k, v in transformer.state_dict().items()})
        history.append({"step": step, "select_score": score})
        if progress:
            log.info("QAT selection at step %d: validation average mAP %.4f", step, score)

    scored_at = set(selection_steps(steps, cfg.select_every)) if select is not None else set()
    if 0 in scored_at:
        checkpoint(0)
    for step in range(steps):
        count = min(cfg.meta_batch, cfg.meta_episodes - step * cfg.meta_batch)
        batch = episode_batch(sampler.episodes(0, count, start=step * cfg.meta_batch), features, videos, device)
        proto, bias = support_prototype(batch.support, batch.support_masks, batch.query, cfg.temperature, cfg.adapt_steps, cfg.adapt_lr)
        refined, bias = refine_prototype(
            transformer, proto, bias, batch.support, batch.support_masks, batch.query, cfg.temperature, cfg.adapt_steps, cfg.adapt_lr
        )
        loss = query_loss(cosine_logits(refined, batch.query, bias, cfg.temperature), batch.query_masks).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"meta-training loss became {loss.item()} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step + 1, "episodes": count, "loss": float(loss.detach())})
        if progress and (step + 1) % max(1, steps // 10) == 0:
            log.info("QAT meta-training step %d/%d: loss %.4f", step + 1, steps, history[-1]["loss"])
        if step + 1 in scored_at:
            checkpoint(step + 1)
    if best is not None:
        transformer.load_state_dict(best[2])
        history.append({"selected_step": best[1], "select_score": best[0]})
    transformer.eval()
    return history


# --------------------------------------------------------------------------- test
@torch.no_grad()
def episode_probabilities(
    transformer: Optional[QueryAdaptiveTransformer], batch: EpisodeBatch, cfg: QATConfig
) -> Dict[str, torch.Tensor]:
    """Foreground probabilities ``(E, T)`` of the queries: ``"qat"`` (refined prototype) and ``"prototype"``."""
    proto, bias = support_prototype(batch.support, batch.support_masks, batch.query, cfg.temperature, cfg.adapt_steps, cfg.adapt_lr)
    out = {"prototype": foreground_probability(proto, batch.query, bias, cfg.temperature)}
    if transformer is not None:
        transformer.eval()
        refined, refined_bias = refine_prototype(
            transformer, proto, bias, batch.support, batch.support_masks, batch.query, cfg.temperature, cfg.adapt_steps, cfg.adapt_lr
        )
        out["qat"] = foreground_probability(refined, batch.query, refined_bias, cfg.temperature)
    return out


def episode_ground_truth(episodes: Sequence[Episode], videos: Mapping[str, Video]) -> dict:
    """ActivityNet ground truth with one entry per episode: the query's actions of the episode class."""
    database = {}
    for ep in episodes:
        v = videos[ep.query]
        database[ep.key] = {
            "subset": EVAL_SUBSET,
            "duration": v.duration,
            "annotations": [{"segment": [s.start, s.end], "label": s.label} for s in v.actions if s.label == ep.label],
        }
    return {"version": "VERSION 1.3", "database": database}


def evaluate_episodes(
    transformer: Optional[QueryAdaptiveTransformer],
    sampler: EpisodeSampler,
    features: Mapping[str, torch.Tensor],
    videos: Mapping[str, Video],
    cfg: QATConfig,
    out_dir: Optional[PathLike] = None,
    device: str = "cpu",
    batch_size: int = 50,
    progress: bool = False,
) -> Dict[str, float]:
    """Run the test episodes, score each run, and return means (and stds) over runs.

    Keys: ``mAP@0.5``, ``mAP@0.75``, ``mAP@0.95``, ``average_mAP`` for QAT (when a transformer
    is given) and the same under ``prototype/`` for the support-adapted prototype alone; each
    also as ``<key>_std_runs``.
    """
    from clap_bench.eval.detection import evaluate_detection

    variants = ["qat", "prototype"] if transformer is not None else ["prototype"]
    per_run: Dict[str, List[Dict[str, float]]] = {v: [] for v in variants}
    all_episodes = []
    for run in range(cfg.runs):
        episodes = sampler.episodes(run, cfg.episodes_per_run)
        all_episodes.extend(episodes)
        results: Dict[str, Dict[str, list]] = {v: {} for v in variants}
        for i in range(0, len(episodes), batch_size):
            chunk = episodes[i:i + batch_size]
            probs = episode_probabilities(transformer, episode_batch(chunk, features, videos, device), cfg)
            for variant in variants:
                for ep, p in zip(chunk, probs[variant].cpu().numpy()):
                    props = localise(p, cfg.thresholds, cfg.max_gap, cfg.min_length, cfg.soft_nms_sigma, cfg.proposals_per_video)
                    results[variant][ep.key] = detections(props, videos[ep.query].duration, ep.label)
        ground_truth = episode_ground_truth(episodes, videos)
        for variant in variants:
            predictions = {"version": "VERSION 1.3", "results": results[variant], "external_data": {"used": False}}
            scores = evaluate_detection(ground_truth, predictions, subset=EVAL_SUBSET)
            per_run[variant].append(detection_metrics(scores))
            if out_dir is not None:
                name = "predictions.json" if variant == "qat" else f"predictions_{variant}.json"
                atomic_write_json(Path(out_dir) / "runs" / f"run{run}" / name, predictions, indent=None)
        if out_dir is not None:
            atomic_write_json(Path(out_dir) / "runs" / f"run{run}" / "ground_truth.json", ground_truth, indent=None)
        if progress:
            log.info("QAT test run %d/%d: %s", run + 1, cfg.runs,
                     " ".join(f"{v}={per_run[v][-1]['average_mAP']:.4f}" for v in variants))
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "episodes.json", [
            {"run": e.run, "episode": e.index, "label": e.label, "query": e.query, "support": list(e.support)}
            for e in all_episodes
        ], indent=None)
    metrics: Dict[str, float] = {}
    for variant in variants:
        prefix = "" if variant == "qat" else PROTOTYPE_PREFIX
        for key in per_run[variant][0]:
            values = np.array([m[key] for m in per_run[variant]], dtype=np.float64)
            metrics[prefix + key] = float(values.mean())
            metrics[prefix + key + "_std_runs"] = float(values.std())
    return metrics


# --------------------------------------------------------------------------- the whole task
def _read_features(path: PathLike, ids: Sequence[str], temporal_scale: int, what: str) -> Dict[str, torch.Tensor]:
    found, missing = read_video_features(path, sorted(set(ids)), temporal_scale)
    if missing:
        log.warning("%s: %d of %d %s videos have no features (e.g. %s); they are left out",
                    path, len(missing), len(set(ids)), what, ", ".join(missing[:3]))
    return found


def run_fewshot_localization(
    annotations: AnnotationSet,
    split: FewShotSplit,
    features_path: PathLike,
    cfg: QATConfig,
    out_dir: PathLike,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Dict[str, float]:
    """Stages 1-3 on one feature file; writes the outputs listed in the module doc and returns the metrics."""
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    t = cfg.gtad.temporal_scale

    base = base_class_videos(annotations, split, cfg.base_subsets)
    test_pool = videos_by_class(annotations, split.test, cfg.episode_subsets, single_instance=cfg.single_instance)
    if not test_pool:
        raise ValueError(
            f"{annotations.source}: no video of subsets {cfg.episode_subsets} has only test-class actions"
            f"{' and exactly one action (tasks.fstal.single_instance)' if cfg.single_instance else ''} "
            f"({len(split.test)} test classes, e.g. {split.test[:3]})"
        )
    test_ids = [v for vids in test_pool.values() for v in vids]
    select_pool = (videos_by_class(annotations, split.val, cfg.episode_subsets, single_instance=cfg.single_instance)
                   if cfg.select_episodes > 0 else {})
    raw = _read_features(features_path, list(base.videos), t, "base-class")
    raw.update(_read_features(features_path, test_ids, t, "test-class"))
    raw.update(_read_features(features_path, [v for vids in select_pool.values() for v in vids], t, "val-class"))
    if not any(v in raw for v in base.videos):
        raise FeatureFileError(f"{features_path}: none of the {len(base.videos)} base-class videos has features")

    # Stage 1: G-TAD on base classes only.
    assert_no_leakage([base.videos[v] for v in base.videos if v in raw], split, "base training (G-TAD)")
    model, gtad_history = train_backbone(base, raw, cfg, device=device, generator=generator, progress=progress)
    feats = snippet_features(model, raw, device=device, batch_size=cfg.gtad.batch_size, snippet_norm=cfg.snippet_norm)
    hidden = next(iter(feats.values())).shape[0]

    # Stage 2: meta-training on base-class episodes.
    meta_pool = videos_by_class(base, split.base, cfg.base_subsets, single_instance=cfg.single_instance,
                                min_action_fraction=cfg.meta_min_action_fraction)
    meta_pool = {c: [v for v in vids if v in feats] for c, vids in meta_pool.items()}
    meta_sampler = EpisodeSampler(meta_pool, cfg.shots, seed, stream=META_STREAM, what="meta-training episodes (base classes)",
                                  support_sampling=cfg.support_sampling)
    assert_no_leakage([annotations.videos[v] for vids in meta_sampler.videos.values() for v in vids], split, "meta-training")
    transformer = QueryAdaptiveTransformer(hidden, cfg.heads, cfg.dropout, cfg.attention_dropout)
    select, select_sampler = None, None
    if cfg.select_episodes > 0:
        select_pool = {c: [v for v in vids if v in feats] for c, vids in select_pool.items()}
        if any(len(v) >= videos_needed(cfg.shots, cfg.support_sampling) for v in select_pool.values()):
            select_sampler = EpisodeSampler(select_pool, cfg.shots, seed, stream=SELECT_STREAM, what="selection episodes (val classes)",
                                            support_sampling=cfg.support_sampling)
            select_cfg = replace(cfg, runs=1, episodes_per_run=cfg.select_episodes)

            def select(t: QueryAdaptiveTransformer) -> float:
                return evaluate_episodes(t, select_sampler, feats, annotations.videos, select_cfg, device=device)["average_mAP"]
        else:
            log.warning("QAT: no validation class has %d videos in %s; the last meta-training step is kept",
                        videos_needed(cfg.shots, cfg.support_sampling), cfg.episode_subsets)
    meta_history = meta_train(transformer, meta_sampler, feats, annotations.videos, cfg, device=device, progress=progress, select=select)

    # Test: episodes of the test classes.
    test_pool = {c: [v for v in vids if v in feats] for c, vids in test_pool.items()}
    test_sampler = EpisodeSampler(test_pool, cfg.shots, seed, stream=TEST_STREAM, what="test episodes (test classes)",
                                  support_sampling=cfg.support_sampling)
    metrics = evaluate_episodes(transformer, test_sampler, feats, annotations.videos, cfg, out_dir, device=device, progress=progress)

    buffer = io.BytesIO()
    torch.save({"backbone": model.backbone.state_dict(), "transformer": transformer.state_dict(),
                "feat_dim": next(iter(raw.values())).shape[0], "config": _plain(cfg)}, buffer)
    atomic_write_bytes(out_dir / "model.pt", buffer.getvalue())
    atomic_write_json(out_dir / "train_log.json", {
        "gtad_epochs": gtad_history,
        "meta_steps": meta_history,
        "select_classes": select_sampler.classes if select_sampler is not None else [],
        "base_videos": len([v for v in base.videos if v in raw]),
        "base_classes": len(split.base),
        "meta_classes": meta_sampler.classes,
        "meta_classes_too_few_videos": meta_sampler.skipped,
        "test_classes": test_sampler.classes,
        "test_classes_too_few_videos": test_sampler.skipped,
        "test_videos": sum(len(v) for v in test_sampler.videos.values()),
        "episodes": cfg.runs * cfg.episodes_per_run,
    })
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _plain(cfg: QATConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


@register_task(
    "fstal", config_cls=QATConfig, datasets=("activitynet", "fewshot-split"),
    description="few-shot temporal action localization (QAT, 5-shot, 160/20/20 classes), mAP at tIoU 0.5:0.05:0.95",
)
def run_fstal(ctx: TaskContext) -> Dict[str, float]:
    from clap_bench.data import load_dataset, load_fewshot_split

    cfg = from_dict(QATConfig, ctx.overrides, "tasks.fstal")
    for key in ("activitynet", "fewshot-split"):
        if key not in ctx.datasets:
            raise KeyError(f"fstal task: dataset {key!r} missing; datasets given: {sorted(ctx.datasets)}")
    if "activitynet" not in ctx.features:
        raise KeyError(f"fstal task: features of 'activitynet' missing; features given: {sorted(ctx.features)}")
    annotations = load_dataset(ctx.datasets["activitynet"], key="activitynet")
    split = load_fewshot_split(ctx.datasets["fewshot-split"], known_classes=annotations.classes)
    return run_fewshot_localization(
        annotations, split, ctx.features["activitynet"], cfg, ctx.out_dir, seed=ctx.seed, device=ctx.device, progress=ctx.progress
    )
