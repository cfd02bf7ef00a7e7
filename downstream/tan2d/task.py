"""The ``vlg`` downstream task: 2D-TAN on Charades-STA and TACoS over pre-extracted features.

One run trains and evaluates a separate 2D-TAN head per dataset, on that dataset's feature file
(``ctx.features["charades-sta"]``, ``ctx.features["tacos"]``), and writes into ``ctx.out_dir``::

    <dataset>/ground_truth.json    [{"id", "segment", "video", "duration", "sentence"}, ...]
    <dataset>/predictions.json     [{"id", "segments", "scores"}, ...]   top 5 after NMS, seconds
    <dataset>/metrics.json         the scorer's output (clap_bench.eval.grounding)
    metrics.json                   flat: {"charades-sta/R@1@0.5": x, ..., "tacos/mIoU": y}

A query's id is ``<video id>#<index of the sentence in the video>``.

Differences from the published 2D-TAN runs, on purpose or by necessity:

* Sentences: 2D-TAN reads GloVe (glove.6B.300d) vectors into its LSTM. GloVe is used when
  ``glove_path`` names a GloVe text file; otherwise the LSTM reads the frozen word-piece input
  embeddings of the project's text encoder (all-MiniLM-L6-v2, 384-d). See ``text.py``.
* Model selection: 2D-TAN's training script evaluates on the test set during training and the
  released checkpoints are the best of those. Here a dataset with a validation subset (TACoS
  ``val``) keeps the epoch that is best on it (``select_metric``) and drives the learning-rate
  schedule with it; the test subset is read only after training, once. Charades-STA has no
  validation subset: its last epoch is scored (and, as in 2D-TAN, whose plateau scheduler is only
  stepped on validation, its learning rate stays constant).
* Schedule: ``ReduceLROnPlateau`` with 2D-TAN's factor 0.8 and patience 20, stepped once per epoch
  on the validation loss. 2D-TAN passes the *negated* validation loss to a ``mode='min'``
  scheduler, which lowers the rate when the validation loss stops rising;
  ``plateau_metric: negated_val_loss`` (the paper profile) does the same, ``val_loss`` lowers it
  when the loss stops falling.
* Ranking: only cells of the sparse map are candidates (2D-TAN also ranked masked cells, with
  score 0, after all the others; this matters only when fewer than 5 moments survive NMS).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from clap_bench.config import ConfigError
from clap_bench.data.schema import AnnotationSet
from clap_bench.downstream.base import TaskContext, get_task, register_task
from clap_bench.downstream.tan2d.features import load_video_features
from clap_bench.downstream.tan2d.model import TAN2D, map_conv_output_size, sparse_map_mask
from clap_bench.downstream.tan2d.proposals import iou_map, masked_bce_loss, rank_moments, scaled_iou_targets
from clap_bench.downstream.tan2d.text import GLOVE_TOKENIZERS, build_word_vectors, embed_sentences, pad_words
from clap_bench.eval.grounding import IOU_THRESHOLDS, RANKS, evaluate_grounding, flatten_metrics
from clap_bench.io import atomic_write_json

DATASETS = ("charades-sta", "tacos")
PLATEAU_METRICS = ("val_loss", "negated_val_loss", "none")
SELECT_METRICS = tuple(f"R@{k}@{t}" for k in RANKS for t in IOU_THRESHOLDS) + ("mIoU",)


# --------------------------------------------------------------------------- configuration
@dataclass
class GroundingDatasetConfig:
    """Per-dataset settings of 2D-TAN (defaults: its Charades-STA 16x16 pool configuration)."""

    num_sample_clips: int = 256  # rows after average_to_fixed_length
    num_clips: int = 16  # N: clips after FrameAvgPool, the map is N x N
    num_scale_layers: List[int] = field(default_factory=lambda: [16])
    map_kernel_sizes: List[int] = field(default_factory=lambda: [5] * 8)
    map_paddings: List[int] = field(default_factory=lambda: [16, 0, 0, 0, 0, 0, 0, 0])
    map_dilations: List[int] = field(default_factory=lambda: [1] * 8)
    min_iou: float = 0.5  # IoU scaling of the BCE targets
    max_iou: float = 1.0
    nms_threshold: float = 0.45
    train_subset: str = "train"
    val_subset: Optional[str] = None  # drives the schedule and selects the epoch; None: last epoch
    test_subset: str = "test"
    epochs: Optional[int] = None  # None: VLGConfig.epochs
    lr: Optional[float] = None  # None: VLGConfig.lr


@dataclass
class CharadesSTAGroundingConfig(GroundingDatasetConfig):
    """2D-TAN-16x16-K5L8-pool: VGG features -> 256 rows -> 16 clips, dense map."""


@dataclass
class TACoSGroundingConfig(GroundingDatasetConfig):
    """2D-TAN-128x128-K5L8-pool: C3D features -> 256 rows -> 128 clips, sparse map [16, 8, 8, 8]."""

    num_clips: int = 128
    num_scale_layers: List[int] = field(default_factory=lambda: [16, 8, 8, 8])
    min_iou: float = 0.3
    max_iou: float = 0.7
    nms_threshold: float = 0.4
    val_subset: Optional[str] = "val"


@dataclass
class VLGConfig:
    """``tasks.vlg``: 2D-TAN settings shared by the datasets, and one section per dataset."""

    datasets: List[str] = field(default_factory=lambda: list(DATASETS))
    hidden_size: int = 512
    text_hidden_size: int = 512
    lstm_layers: int = 3
    glove_path: Optional[str] = None  # a GloVe text file; None: the text encoder's word-piece embeddings
    # How sentences are split into GloVe words: "whitespace" (2D-TAN: sentence.split(), punctuation
    # attached; a Charades-STA sentence loses its final period first) or "words" (punctuation apart).
    glove_tokenizer: str = "whitespace"
    text_model: Optional[str] = None  # Hugging Face folder for word pieces; None: bundled all-MiniLM-L6-v2
    normalize_features: bool = True  # L2-normalise feature rows before resampling
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    # ReduceLROnPlateau of 2D-TAN (TRAIN.FACTOR, TRAIN.PATIENCE), stepped per epoch on validation.
    lr_factor: float = 0.8
    lr_patience: int = 20
    plateau_metric: str = "val_loss"  # val_loss | negated_val_loss (2D-TAN's call) | none
    select_metric: str = "R@1@0.5"  # validation metric that picks the kept epoch (higher is better); "last": no selection
    top_k: int = 5
    max_train_queries: Optional[int] = None  # CPU profiles: a seeded subsample of the training queries
    # Map convolution weights in channels_last memory: the same model, its sums in another order
    # (parameters within 3e-8 of the default layout's after 20 steps); on a CPU with oneDNN it trains
    # faster (python benchmarks/tan2d_step.py prints both).
    channels_last: bool = False
    # bfloat16 autocast of the training steps on a CPU (oneDNN's AMX or AVX-512-BF16 kernels; emulated,
    # and slower, where the CPU has none). It trains other weights (bf16 rounding), so it is off in every
    # profile and no README figure uses it; validation and test scoring stay fp32, where bf16 logits
    # would tie many map cells. Ignored on CUDA. python benchmarks/tan2d_step.py --bf16 times it.
    cpu_bf16: bool = False
    log_every_epochs: int = 1
    charades_sta: CharadesSTAGroundingConfig = field(default_factory=CharadesSTAGroundingConfig)
    tacos: TACoSGroundingConfig = field(default_factory=TACoSGroundingConfig)

    def training_lr(self, dataset_cfg: GroundingDatasetConfig) -> float:
        """Adam's learning rate on a dataset: its own (``tasks.vlg.<dataset>.lr``), else ``tasks.vlg.lr``."""
        return dataset_cfg.lr if dataset_cfg.lr is not None else self.lr

    def for_dataset(self, key: str) -> GroundingDatasetConfig:
        if key not in DATASETS:
            raise ConfigError(f"tasks.vlg.datasets: unknown grounding dataset {key!r}; expected some of {', '.join(DATASETS)}")
        return getattr(self, key.replace("-", "_"))

    def validate(self) -> "VLGConfig":
        """Check the chosen datasets' map layouts and sizes before any data is read."""
        if not self.datasets:
            raise ConfigError(f"tasks.vlg.datasets is empty; expected some of {', '.join(DATASETS)}")
        for key in self.datasets:
            d = self.for_dataset(key)
            where = f"tasks.vlg.{key.replace('-', '_')}"
            if d.num_clips < 1 or d.num_sample_clips % d.num_clips:
                raise ConfigError(f"{where}: num_sample_clips ({d.num_sample_clips}) must be a positive multiple of num_clips ({d.num_clips})")
            try:
                sparse_map_mask(d.num_clips, d.num_scale_layers)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
            lengths = {len(d.map_kernel_sizes), len(d.map_paddings), len(d.map_dilations)}
            if len(lengths) != 1:
                raise ConfigError(f"{where}: map_kernel_sizes, map_paddings and map_dilations need one entry per layer")
            size = map_conv_output_size(d.num_clips, d.map_kernel_sizes, d.map_paddings, d.map_dilations)
            if size != d.num_clips:
                raise ConfigError(f"{where}: the map convolutions turn {d.num_clips} clips into {size}; adjust map_paddings")
            if d.lr is not None and not d.lr > 0:
                raise ConfigError(f"{where}.lr: expected a number > 0 or null (tasks.vlg.lr), got {d.lr}")
            if not d.max_iou > d.min_iou:
                raise ConfigError(f"{where}: max_iou ({d.max_iou}) must be greater than min_iou ({d.min_iou})")
        if self.glove_tokenizer not in GLOVE_TOKENIZERS:
            raise ConfigError(f"tasks.vlg.glove_tokenizer: expected one of {', '.join(GLOVE_TOKENIZERS)}, got {self.glove_tokenizer!r}")
        if self.plateau_metric not in PLATEAU_METRICS:
            raise ConfigError(f"tasks.vlg.plateau_metric: expected one of {', '.join(PLATEAU_METRICS)}, got {self.plateau_metric!r}")
        if self.select_metric != "last" and self.select_metric not in SELECT_METRICS:
            raise ConfigError(
                f"tasks.vlg.select_metric: expected 'last' or one of {', '.join(SELECT_METRICS)}, got {self.select_metric!r}"
            )
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"tasks.vlg.lr_factor: expected a number in (0, 1), got {self.lr_factor}")
        for name in ("epochs", "batch_size", "hidden_size", "text_hidden_size", "lstm_layers", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tasks.vlg.{name} must be >= 1, got {getattr(self, name)}")
        return self


# --------------------------------------------------------------------------- queries
@dataclass
class Query:
    id: str
    video: str
    start: float
    end: float
    duration: float
    sentence: str


def grounding_queries(annotations: AnnotationSet, subset: str) -> List[Query]:
    """Every sentence of the subset's videos, as a query (times clipped to the video, empty ones dropped)."""
    queries = []
    for vid in sorted(annotations.videos):
        video = annotations.videos[vid]
        if video.subset != subset:
            continue
        for k, s in enumerate(video.sentences):
            end = min(s.end, video.duration)
            if s.start < end:
                queries.append(Query(f"{vid}#{k}", vid, float(s.start), float(end), float(video.duration), s.text))
    return queries


def ground_truth_entries(queries: List[Query]) -> List[dict]:
    return [
        {"id": q.id, "segment": [q.start, q.end], "video": q.video, "duration": q.duration, "sentence": q.sentence}
        for q in queries
    ]


# --------------------------------------------------------------------------- train / evaluate one dataset
def _batches(n: int, batch_size: int, generator: Optional[torch.Generator]):
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _collate(queries: List[Query], idx: List[int], video_feats, words, device):
    video = torch.stack([video_feats[queries[i].video] for i in idx]).to(device)
    padded, lengths = pad_words([words[i] for i in idx])
    return video, padded.to(device), lengths


def train_and_evaluate(
    annotations: AnnotationSet,
    features_path: Path | str,
    dataset_cfg: GroundingDatasetConfig,
    cfg: VLGConfig,
    out_dir: Path | str,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    word_vectors=None,
    label: str = "",
    after_epoch: Optional[Callable[[int, TAN2D], None]] = None,
) -> Dict[str, object]:
    """Train 2D-TAN on ``train_subset`` queries, rank moments for ``test_subset``, score, write files.

    With a ``val_subset``, every epoch is scored on it: its loss drives the plateau schedule and
    the epoch best on ``select_metric`` is the one kept. The test subset is read only after
    training (queries, sentences, features), so nothing about it can reach training or selection.
    Returns the scorer's nested metrics. ``word_vectors`` (a callable ``text -> (L, E)``) overrides
    the ones ``cfg`` names (tests use it). ``after_epoch(epoch, model)`` is called after each epoch's
    training and validation (a diagnosis hook for benchmarks; the task stage never passes one, and
    it must leave the model and the random streams as it found them).
    """
    out_dir = Path(out_dir)
    label = label or annotations.source
    train_q = grounding_queries(annotations, dataset_cfg.train_subset)
    val_q = grounding_queries(annotations, dataset_cfg.val_subset) if dataset_cfg.val_subset else []
    for name, qs in ((dataset_cfg.train_subset, train_q), (dataset_cfg.val_subset, val_q)):
        if name and not qs:
            raise ValueError(
                f"{label}: no grounding queries in subset {name!r}; subsets present: {', '.join(annotations.subsets) or 'none'}"
            )
    rng = np.random.default_rng(seed)
    if cfg.max_train_queries is not None and len(train_q) > cfg.max_train_queries:
        keep = sorted(rng.choice(len(train_q), cfg.max_train_queries, replace=False).tolist())
        train_q = [train_q[i] for i in keep]

    video_feats = load_video_features(
        features_path, {q.video for q in train_q + val_q}, dataset_cfg.num_sample_clips, cfg.normalize_features
    )
    given_vectors = word_vectors
    # 2D-TAN's Charades-STA reader drops a sentence's final period before splitting it into words.
    tokens = {"tokenizer": cfg.glove_tokenizer, "drop_final_period": annotations.format == "charades-sta"}
    if word_vectors is None:
        word_vectors = build_word_vectors(cfg.glove_path, cfg.text_model, [q.sentence for q in train_q + val_q], **tokens)
    train_words = embed_sentences(word_vectors, [q.sentence for q in train_q])
    val_words = embed_sentences(word_vectors, [q.sentence for q in val_q])
    feature_dim = next(iter(video_feats.values())).shape[1]

    torch.manual_seed(seed)
    model = build_model(cfg, dataset_cfg, feature_dim, int(train_words[0].shape[1])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.training_lr(dataset_cfg), weight_decay=cfg.weight_decay)
    scheduler = None
    if val_q and cfg.plateau_metric != "none":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
    n = dataset_cfg.num_clips

    def targets_for(queries: List[Query], idx: List[int]) -> torch.Tensor:
        # Built per batch: kept for every query, TACoS' 128x128 maps would take gigabytes.
        return torch.stack([
            scaled_iou_targets(iou_map(n, queries[i].duration, (queries[i].start, queries[i].end)),
                               dataset_cfg.min_iou, dataset_cfg.max_iou)
            for i in idx
        ])

    epochs = dataset_cfg.epochs if dataset_cfg.epochs is not None else cfg.epochs
    bf16 = cfg.cpu_bf16 and torch.device(device).type == "cpu"
    generator = torch.Generator().manual_seed(seed)
    history, val_history = [], []
    selected = {"epoch": epochs, "on": "last epoch (no validation subset)" if not val_q else "last epoch"}
    best_score, best_state = None, None
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        total, steps = 0.0, 0
        for idx in _batches(len(train_q), cfg.batch_size, generator):
            video, words, lengths = _collate(train_q, idx, video_feats, train_words, device)
            loss = train_step(model, optimizer, video, words, lengths, targets_for(train_q, idx).to(device),
                              cfg.grad_clip, bf16=bf16)
            total += float(loss)
            steps += 1
        history.append(total / max(1, steps))
        if not math.isfinite(history[-1]):
            hint = " (under tasks.vlg.cpu_bf16: this CPU's bfloat16 kernels may fail on these shapes; set it to false)" if bf16 else ""
            raise FloatingPointError(f"{label}: training loss is {history[-1]} at epoch {epoch + 1}{hint}")
        if val_q:
            val_loss, val_predictions = validation_pass(model, val_q, video_feats, val_words, targets_for,
                                                        dataset_cfg.nms_threshold, cfg.top_k, cfg.batch_size, device)
            val_metrics = flatten_metrics(evaluate_grounding(ground_truth_entries(val_q), val_predictions))
            val_history.append({"epoch": epoch + 1, "loss": val_loss, "lr": optimizer.param_groups[0]["lr"], **val_metrics})
            if scheduler is not None:
                scheduler.step(-val_loss if cfg.plateau_metric == "negated_val_loss" else val_loss)
            if cfg.select_metric != "last":
                score = val_metrics[cfg.select_metric]
                if best_score is None or score > best_score:  # ties keep the earlier epoch
                    best_score = score
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    selected = {"epoch": epoch + 1, "on": f"{dataset_cfg.val_subset} {cfg.select_metric}", "value": score}
        if after_epoch is not None:
            after_epoch(epoch + 1, model)
        if progress and ((epoch + 1) % max(1, cfg.log_every_epochs) == 0 or epoch + 1 == epochs):
            extra = f" val loss {val_history[-1]['loss']:.4f}" if val_q else ""
            print(f"[vlg {label}] epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}{extra} ({time.time() - t0:.0f}s)", flush=True)
    if best_state is not None:
        model.load_state_dict(best_state)

    # Training and selection are over: only now is the test subset read.
    test_q = grounding_queries(annotations, dataset_cfg.test_subset)
    if not test_q:
        raise ValueError(
            f"{label}: no grounding queries in subset {dataset_cfg.test_subset!r}; "
            f"subsets present: {', '.join(annotations.subsets) or 'none'}"
        )
    test_feats = load_video_features(
        features_path, {q.video for q in test_q}, dataset_cfg.num_sample_clips, cfg.normalize_features
    )
    if given_vectors is None and cfg.glove_path:  # GloVe vectors were read for the training words only
        word_vectors = build_word_vectors(cfg.glove_path, cfg.text_model, [q.sentence for q in test_q], **tokens)
    test_words = embed_sentences(word_vectors, [q.sentence for q in test_q])
    predictions = predict(model, test_q, test_feats, test_words, dataset_cfg.nms_threshold, cfg.top_k,
                          cfg.batch_size, device)
    ground_truth = ground_truth_entries(test_q)
    metrics = evaluate_grounding(ground_truth, predictions)
    metrics["train_loss"] = history
    metrics["num_train_queries"] = len(train_q)
    metrics["selected_epoch"] = selected
    if val_history:
        metrics["validation"] = val_history
    atomic_write_json(out_dir / "ground_truth.json", ground_truth)
    atomic_write_json(out_dir / "predictions.json", predictions)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def train_step(model: TAN2D, optimizer: torch.optim.Optimizer, video: torch.Tensor, words: torch.Tensor,
               lengths: torch.Tensor, targets: torch.Tensor, grad_clip: float, bf16: bool = False) -> torch.Tensor:
    """One training step (forward, masked BCE, backward, gradient clipping, the optimizer's step); returns the
    loss. ``bf16``: the forward pass under CPU bfloat16 autocast, the loss on its logits taken in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(video, words, lengths)
    loss = masked_bce_loss(logits.float(), targets, model.map_mask[0])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def build_model(cfg: "VLGConfig", dataset_cfg, feature_dim: int, word_dim: int) -> TAN2D:
    """The 2D-TAN of a task config and one dataset's section (``cfg.for_dataset(key)``)."""
    model = TAN2D(
        feature_dim=feature_dim, word_dim=word_dim, num_sample_clips=dataset_cfg.num_sample_clips,
        num_clips=dataset_cfg.num_clips, num_scale_layers=dataset_cfg.num_scale_layers,
        hidden_size=cfg.hidden_size, text_hidden_size=cfg.text_hidden_size, lstm_layers=cfg.lstm_layers,
        map_kernel_sizes=dataset_cfg.map_kernel_sizes, map_paddings=dataset_cfg.map_paddings,
        map_dilations=dataset_cfg.map_dilations,
    )
    # Only 4-d tensors take the layout: the map convolutions' weights (the LSTM and 1-d layers keep theirs).
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _scored_batches(model: TAN2D, queries: List[Query], video_feats, words, batch_size: int, device: str):
    """``(indices, logits)`` of every batch of ``queries`` in order, the model in eval mode."""
    model.eval()
    for idx in _batches(len(queries), batch_size, None):
        video, padded, lengths = _collate(queries, idx, video_feats, words, device)
        yield idx, model(video, padded, lengths)


def _ranked(model: TAN2D, queries: List[Query], idx: List[int], logits: torch.Tensor, nms_threshold: float,
            top_k: int) -> List[dict]:
    scores = torch.sigmoid(logits) * model.map_mask[0]
    mask = model.map_mask[0, 0] > 0
    out = []
    for row, i in enumerate(idx):
        segs, s = rank_moments(scores[row], mask, queries[i].duration, nms_threshold, top_k)
        out.append({"id": queries[i].id, "segments": segs, "scores": s})
    return out


@torch.no_grad()
def validation_pass(model: TAN2D, queries: List[Query], video_feats, words, targets_for, nms_threshold: float,
                    top_k: int, batch_size: int, device: str):
    """The validation loss (masked BCE, what 2D-TAN's plateau scheduler sees) and the ranked moments
    of ``queries``, from one forward pass per batch: the figures of a loss pass and a ranking pass,
    with half the forward passes. The loss is the mean of the batches' losses, a short last batch
    counting as much as a full one, as 2D-TAN's ``engine.test`` averages it (``loss_meter.update(loss, 1)``)."""
    total, batches, predictions = 0.0, 0, []
    for idx, logits in _scored_batches(model, queries, video_feats, words, batch_size, device):
        total += float(masked_bce_loss(logits, targets_for(queries, idx).to(device), model.map_mask[0]))
        batches += 1
        predictions += _ranked(model, queries, idx, logits, nms_threshold, top_k)
    return total / max(1, batches), predictions


@torch.no_grad()
def predict(model: TAN2D, queries: List[Query], video_feats, words, nms_threshold: float, top_k: int,
            batch_size: int, device: str) -> List[dict]:
    """Top-``top_k`` moments (seconds) per query after NMS, in the scorer's prediction format."""
    out = []
    for idx, logits in _scored_batches(model, queries, video_feats, words, batch_size, device):
        out += _ranked(model, queries, idx, logits, nms_threshold, top_k)
    return out


# --------------------------------------------------------------------------- the registered task
@register_task("vlg", config_cls=VLGConfig, datasets=DATASETS,
               description="video language grounding with 2D-TAN on Charades-STA and TACoS (R@{1,5}, mIoU)")
def run_vlg(ctx: TaskContext) -> Dict[str, float]:
    from clap_bench.data import load_dataset

    cfg: VLGConfig = ctx.config(get_task("vlg")).validate()
    for key in cfg.datasets:
        if key not in ctx.features:
            raise KeyError(f"vlg: no feature file for dataset {key!r} (have: {', '.join(sorted(ctx.features)) or 'none'})")
        if key not in ctx.datasets:
            raise KeyError(f"vlg: dataset {key!r} is not configured (have: {', '.join(sorted(ctx.datasets)) or 'none'})")
    flat: Dict[str, float] = {}
    for key in cfg.datasets:
        annotations = load_dataset(ctx.datasets[key], key=key)
        metrics = train_and_evaluate(
            annotations, ctx.features[key], cfg.for_dataset(key), cfg, Path(ctx.out_dir) / key,
            seed=ctx.seed, device=ctx.device, progress=ctx.progress, label=key,
        )
        flat.update(flatten_metrics(metrics, prefix=f"{key}/"))
    atomic_write_json(Path(ctx.out_dir) / "config.json", asdict(cfg))
    atomic_write_json(Path(ctx.out_dir) / "metrics.json", flat)
    return flat
