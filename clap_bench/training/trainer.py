"""The one trainer every pre-training method shares (and the synthetic source pre-training).

What it does, in order, for each step: take the next batch of items (a permutation that is a
function of (seed, epoch) only, sharded over processes as ``DistributedSampler`` does; an item is
one clip with the default ``batch_composition: clips``, a segment of K clips with ``segments``),
fetch the frozen text features of the batch's texts, run the model under autocast on CUDA, add
the method's loss terms, stop on a non-finite loss, step SGD and the per-step learning-rate
schedule. ``batch_size`` counts clips per process (TSP); with ``scale_lr_by_world_size`` both
rates are multiplied by the number of processes (TSP); with ``freeze_stem`` the backbone's stem
is not trained (TSP: lr 0), and ``frozen_stages`` freezes the lowest backbone stages as well (a
CPU budget option; frozen stages also keep their BatchNorm statistics). When the method's heads
hold a BatchNorm (g_v, g_t of the contrastive methods), a batch needs two clips: a last batch of
one clip is dropped, and a batch left with one clip after unreadable segments is skipped (logged);
other methods keep every batch, as TSP keeps its last short one.

Validation (``validation=`` a dataset of held-out segments, evenly spaced clips, no augmentation)
runs before the first epoch (recorded as epoch 0) and after every epoch: every loss term of the
method, class and region accuracy, and for contrastive methods clip->text and text->clip R@1
among the validation texts (with their chance levels). The figures go into the epoch's record
with a ``val_`` prefix.

Schedules (``TrainConfig``): ``step``: lr x ``lr_gamma`` every ``lr_step_epochs`` epochs (paper
§4.1: x0.01 every 2 epochs); ``tsp``: linear warm-up over ``warmup_epochs`` from factor 1e-5, then
x ``lr_gamma`` at each of ``milestones`` (TSP's own schedule, ``WarmupMultiStepLR``). Backbone and
heads have their own learning rates.

Checkpoints (``<out>/checkpoint.pt``, written atomically) after every epoch and when SIGTERM or
SIGUSR2 arrives (then mid-epoch, with the number of batches done; the previous handler, e.g.
submitit's requeue, runs afterwards). A signal during an epoch's validation stops the validation
at its next batch and checkpoints with every batch of the epoch done and the epoch not closed (no
record, schedule and best epoch as before validation): a resume finds no batch left and redoes that
epoch's validation from its start. A checkpoint holds the model, optimiser, schedule, AMP
scaler, the position in the epoch and, for each process (``ranks``, gathered to the main process),
its RNG states (python, numpy, torch, CUDA) and its running sums of the epoch's metrics; each process
resumes its own (a checkpoint of another number of processes, only resumable at an epoch boundary,
gives every process rank 0's RNG states). Resuming skips the batches already done, which reproduces the
epoch exactly because the order depends only on (seed, epoch) and clip sampling only on
(seed, epoch, item). When all epochs are done ``<out>/final.pt`` (weights and metadata, no
optimiser) is written and returned; a finished run is not trained again.

The weights ``final.pt`` holds (``keep_epoch``): ``last``, those after the last epoch; ``best``,
those of the trained epoch (1..epochs; epoch 0, before training, is never chosen, as TSP compares
its trained epochs only) whose validation figure, the method's ``selection_value`` (TSP: the mean
of its heads' accuracies), is highest; on a tie the earlier epoch. The main process keeps the best
epoch's weights so far in memory and in every checkpoint (one atomic file: a resumed run still
chooses among all epochs), each epoch's record notes ``val_selection`` and ``best_epoch``, and
``final.pt`` names its ``kept_epoch``. BatchNorm re-estimation (``bn_reestimate``) runs on the
kept weights.

Per-epoch metrics go to ``<out>/metrics.jsonl``: every loss term, head accuracies, clips/s.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clap_bench.config import ConfigError, TrainConfig
from clap_bench.io import CheckpointError, UnsafeCheckpointError, atomic_write_bytes, load_torch_file
from clap_bench.methods.model import PretrainModel, compute_losses
from clap_bench.training.distributed import (
    DistInfo,
    all_reduce_mean,
    any_process,
    barrier,
    gather_no_grad,
    gather_to_main,
    gather_with_grad,
    shard_order,
)

CHECKPOINT_FORMAT = "clap_bench.pretrain/1"
CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "final.pt"
METRICS_NAME = "metrics.jsonl"

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped and its last good checkpoint was kept."""


class TrainingInterrupted(SystemExit):
    """A stop signal arrived; a checkpoint with the position in the epoch was written."""


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        # Same seed, same result: bit-for-bit on CPU; on CUDA cuDNN is made deterministic too.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> Dict[str, Any]:
    """Every RNG state as tensors, numbers, strings, lists and dicts: a checkpoint holding it loads
    with ``torch.load(weights_only=True)`` (no numpy arrays or other pickled objects)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@functools.lru_cache(maxsize=None)  # once per process: a flaky kernel could answer a second call otherwise
def cpu_bf16_conv3d_is_reliable(tries: int = 16) -> bool:
    """Whether this CPU's bfloat16 Conv3d weight gradient is finite and the same on every call.

    With torch 2.14.1 on an AVX-512-BF16 CPU without AMX (an AMD EPYC here), the weight gradient of
    a Conv3d of temporal kernel 3 over 2 frames under CPU bfloat16 autocast differed from the first
    call's in 184 of 200 calls on the same input and was NaN in 16: the per-step NaN check
    (``_check_cpu_bf16_gradients``) catches only the second kind. The probe runs that convolution
    ``tries`` times (milliseconds) on one input and one weight of its own generator, so the global
    random state is not touched."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 2, 7, 7, generator=g)
    weight = (torch.randn(16, 16, 3, 1, 1, generator=g) * 0.1).requires_grad_()
    first = None
    for _ in range(tries):
        weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.conv3d(x, weight, padding=(1, 0, 0))
        y.float().sum().backward()
        grad = weight.grad
        if not bool(torch.isfinite(grad).all()):
            return False
        if first is None:
            first = grad.clone()
        elif not torch.equal(grad, first):
            return False
    return True


def head_batch_norm(model: nn.Module) -> bool:
    """Whether the model's heads (everything outside the backbone) hold a BatchNorm."""
    heads = model.head_modules() if hasattr(model, "head_modules") else []
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for head in heads for m in head.modules())


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state({"bit_generator": npy["bit_generator"], "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
                         "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


TSP_WARMUP_FACTOR = 1e-5  # the rate factor at the start of TSP's warm-up


def lr_factor(cfg: TrainConfig, epoch_float: float) -> float:
    """Multiplier of the base learning rates at a (fractional) epoch."""
    if cfg.schedule == "step":
        return cfg.lr_gamma ** int(epoch_float // max(1, cfg.lr_step_epochs))
    if cfg.schedule == "tsp":
        # TSP's WarmupMultiStepLR (common/scheduler.py, warmup_factor=1e-5 in train.py): a linear
        # ramp from 1e-5 to 1 over the warm-up, times gamma per milestone passed.
        warmup = 1.0
        if epoch_float < cfg.warmup_epochs:
            alpha = epoch_float / cfg.warmup_epochs
            warmup = TSP_WARMUP_FACTOR * (1 - alpha) + alpha
        return warmup * cfg.lr_gamma ** sum(1 for m in cfg.milestones if epoch_float >= m)
    raise ValueError(f"train.schedule: expected 'step' or 'tsp', got {cfg.schedule!r}")


def save_atomic(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        ckpt = load_torch_file(path, "pre-training checkpoint")
    except UnsafeCheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pre-training checkpoint of this package (format {CHECKPOINT_FORMAT})")
    return ckpt


def frozen_backbone_modules(backbone: nn.Module, freeze_stem: bool, frozen_stages: int) -> List[nn.Module]:
    """The backbone modules that do not train: the stem (TSP) and the lowest ``frozen_stages`` stages."""
    stages = backbone.stages() if hasattr(backbone, "stages") else None
    if stages is None:
        if freeze_stem or frozen_stages:
            raise ValueError(f"{type(backbone).__name__} has no stages(); set freeze_stem: false and frozen_stages: 0")
        return []
    out = [stages[0]] if (freeze_stem or frozen_stages) else []
    return out + list(stages[1 : 1 + frozen_stages])


@torch.no_grad()
def retrieval_r1(
    model: PretrainModel,
    z_v: torch.Tensor,
    texts: List[str],
    foreground: torch.Tensor,
    text_features: Dict[str, torch.Tensor],
    foreground_only: bool,
    device: torch.device,
) -> Dict[str, float]:
    """Clip->text and text->clip R@1 among the distinct validation texts, with chance levels.

    Every distinct text is embedded once (eval mode). clip->text: a clip (foreground clips only
    when the method's loss is the masked one) is right when its own text scores highest among
    all distinct texts; chance 1 / #texts. text->clip: a text (of those clips) is right when the
    clip scoring highest among all clips carries it; chance = the share of clips carrying it.
    """
    distinct = sorted(text_features)
    index = {t: i for i, t in enumerate(distinct)}
    feats = torch.stack([text_features[t] for t in distinct]).to(device)
    z_t = _similarity_space(model, model.text_proj(feats.to(next(model.text_proj.parameters()).dtype)).float()).cpu()
    own = torch.tensor([index[t] for t in texts])
    queries = foreground if foreground_only else torch.ones_like(foreground)
    if not bool(queries.any()):
        return {}
    sim = z_v @ z_t.T  # (clips, texts)
    v2t = float((sim[queries].argmax(1) == own[queries]).float().mean())
    asked = sorted(set(own[queries].tolist()))
    best_clip = sim[:, asked].argmax(0)
    t2v = float((own[best_clip] == torch.tensor(asked)).float().mean())
    counts = torch.bincount(own, minlength=len(distinct)).float()
    return {
        "v2t_r1": v2t,
        "t2v_r1": t2v,
        "v2t_r1_chance": 1.0 / len(distinct),
        "t2v_r1_chance": float((counts[asked] / len(texts)).mean()),
        "texts": float(len(distinct)),
    }


def _similarity_space(model: PretrainModel, z: torch.Tensor) -> torch.Tensor:
    """Embeddings as the loss compares them: L2-normalised unless ``contrastive.normalize`` is off."""
    normalize = getattr(getattr(model, "contrastive", None), "normalize", True)
    return torch.nn.functional.normalize(z.float(), dim=-1) if normalize else z.float()


def format_validation(record: Dict[str, Any]) -> str:
    """One log line of an epoch record's validation figures."""
    keys = [("loss", "loss"), ("class_acc", "class acc"), ("region_acc", "region acc"), ("v2t_r1", "clip->text R@1"), ("t2v_r1", "text->clip R@1")]
    parts = [f"{label} {record[f'val_{k}']:.3f}" for k, label in keys if f"val_{k}" in record]
    return f"validation, epoch {record.get('epoch')}: " + ", ".join(parts)


def read_epoch_records(out_dir: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of ``<out_dir>/metrics.jsonl`` (epoch 0: validation before training).

    The file grows while the stage trains: a last line without its newline is a record still being
    written and is left out. Any other line that is not JSON is an error naming the file and line.
    """
    path = Path(out_dir) / METRICS_NAME
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")  # a complete file ends with "\n": its last piece is empty
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # not newline-terminated: being appended right now
                break
            raise ValueError(f"{path}: line {number} is not a JSON record ({e.msg}); expected one JSON object per epoch") from None
    return records


def _unwrap(model: nn.Module) -> PretrainModel:
    return model.module if hasattr(model, "module") else model


class _SignalFlag:
    """Records SIGTERM / SIGUSR2; the loop checkpoints at the next step boundary, then chains."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR2", None)) if s is not None)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    def __enter__(self) -> "_SignalFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

    def chain(self) -> None:
        """After the checkpoint: hand the signal to whoever handled it before (e.g. submitit)."""
        signum = self.received
        prev = self.previous.get(signum)
        self.__exit__()
        if callable(prev):
            prev(signum, None)
        raise TrainingInterrupted(128 + signum)


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Train ``model`` on ``dataset`` (items: one segment of K clips each) with ``cfg``.

    ``text_features(texts) -> (N, D) tensor`` supplies the frozen text features (contrastive
    methods); ``gvf`` maps a video id to its global video feature (TSP's region head).
    ``meta`` is stored in every checkpoint (method, profile, classes, ...).
    """

    def __init__(
        self,
        model: PretrainModel,
        dataset: torch.utils.data.Dataset,
        cfg: TrainConfig,
        out_dir: Path,
        seed: int,
        collate: Callable[[List[dict]], dict],
        clips_per_item: int,
        text_features: Optional[Callable[[List[str]], torch.Tensor]] = None,
        on_epoch_end: Optional[Callable[[], None]] = None,
        gvf: Optional[Dict[str, torch.Tensor]] = None,
        meta: Optional[Dict[str, Any]] = None,
        progress: bool = True,
        device: Optional[str] = None,
        dist_info: Optional[DistInfo] = None,
        bn_recalibration_batches: int = 20,
        validation: Optional[torch.utils.data.Dataset] = None,
        val_gvf: Optional[Dict[str, torch.Tensor]] = None,
    ):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.dataset = dataset
        self.collate = collate
        self.text_features = text_features
        self.on_epoch_end = on_epoch_end
        self.gvf = gvf
        self.meta = dict(meta or {})
        self.progress = progress
        self.dist = dist_info or DistInfo()
        self.bn_recalibration_batches = int(bn_recalibration_batches)
        self.validation = validation if cfg.validate else None
        # keep_epoch: best: the main process keeps the weights of the best trained epoch so far (in memory
        # and in every checkpoint) and writes them as final.pt.
        self.keep_best = cfg.keep_epoch == "best"
        if self.keep_best and self.validation is None:
            raise ValueError(
                "keep_epoch: best selects the epoch on validation figures, but this training has no validation "
                "set (pretrain.validate: true and a validation subset of the pre-training dataset); set keep_epoch: last"
            )
        self.best: Optional[Dict[str, Any]] = None  # {"epoch", "value", "model"} (main process)
        self.val_gvf = val_gvf
        self.clips_per_item = max(1, int(clips_per_item))
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # batch_size counts clips per process (TSP's --batch-size is per GPU).
        self.items_per_batch = max(1, cfg.batch_size // self.clips_per_item)
        # A BatchNorm in the method's heads (the projections g_v, g_t of contrastive methods) cannot
        # train on one clip; heads without one (TAC, TSP) train on any batch, as TSP keeps its last one.
        self.min_batch_clips = 2 if head_batch_norm(model) else 1
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        method = model.method
        if method.uses_text and text_features is None:
            raise ValueError(f"method {method.name} needs text features (text_features=...)")
        if method.uses_gvf and gvf is None:
            raise ValueError(f"method {method.name} needs global video features (gvf=...)")
        heads = model.head_parameters()
        self.frozen_modules = frozen_backbone_modules(model.backbone, cfg.freeze_stem, cfg.frozen_stages)
        for module in self.frozen_modules:
            module.requires_grad_(False)
        scale = self.dist.world_size if cfg.scale_lr_by_world_size else 1
        self.lr_scale = scale
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [g for g in (
            {"params": backbone, "lr": cfg.lr_backbone * scale, "name": "backbone"},
            {"params": heads, "lr": cfg.lr_heads * scale, "name": "heads"},
        ) if g["params"]]
        if cfg.optimizer == "sgd":  # the paper's and TSP's optimiser
            self.optimizer = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {cfg.optimizer!r}")
        self.steps_per_epoch = max(1, len(self._batch_slices(len(shard_order(len(dataset), 0, 0, 0, self.dist.world_size)))))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(cfg, step / self.steps_per_epoch)
        )
        cuda = self.device.type == "cuda"
        self.use_amp = bool(cfg.amp and cuda) or bool(cfg.cpu_bf16 and self.device.type == "cpu")
        # every process decides alike: one refusing alone would leave the others in their first collective
        if cfg.cpu_bf16 and self.device.type == "cpu" and any_process(not cpu_bf16_conv3d_is_reliable(), self.device):
            raise ConfigError(
                "cpu_bf16: this CPU's bfloat16 Conv3d kernels give weight gradients that change from one call to the "
                "next, some of them NaN (a Conv3d of temporal kernel 3 over 2 frames, the shape R(2+1)D's third stage "
                "sees on an 8-frame clip, run 16 times on the same input; seen with torch 2.14.1 on an AVX-512-BF16 "
                "CPU without AMX), so bf16 training here would not be repeatable; set pretrain.cpu_bf16 / "
                "source_pretrain.cpu_bf16: false"
            )
        self.amp_dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.epoch = 0
        self.batch_in_epoch = 0
        self.running: Dict[str, float] = {}
        self._resumed_rng: Optional[Dict[str, Any]] = None  # a mid-epoch checkpoint's RNG states, set again after its loader starts

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def final_path(self) -> Path:
        return self.out_dir / FINAL_NAME

    # ------------------------------------------------------------------ state
    def _own_state(self) -> Dict[str, Any]:
        """What differs from process to process: the running sums of the epoch's metrics (each
        process's own batches; the epoch record averages them over processes) and the RNG states."""
        return {"running": dict(self.running), "rng": rng_state()}

    def _state(self, ranks: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The checkpoint: ``ranks`` holds every process's ``_own_state`` in rank order; ``running`` and
        ``rng`` (rank 0's) stay for checkpoints read by a trainer that predates ``ranks``."""
        return {
            "format": CHECKPOINT_FORMAT,
            "meta": self.meta,
            "train": asdict(self.cfg),
            "seed": self.seed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "running": ranks[0]["running"],
            "rng": ranks[0]["rng"],
            "ranks": ranks,
            "world_size": self.dist.world_size,
            **({"best": self.best} if self.best is not None else {}),
        }

    def save_checkpoint(self) -> None:
        ranks = gather_to_main(self._own_state())  # every process takes part; rank 0 writes
        if self.dist.is_main:
            save_atomic(self._state(ranks), self.checkpoint_path)
        barrier()

    def _resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt.get("seed") != self.seed:
            raise ValueError(f"{self.checkpoint_path}: made with seed {ckpt.get('seed')}, not {self.seed}; use another --out")
        if ckpt.get("world_size", 1) != self.dist.world_size and ckpt["batch_in_epoch"]:
            raise ValueError(
                f"{self.checkpoint_path}: saved mid-epoch with {ckpt.get('world_size')} processes; "
                f"resume with the same number (now {self.dist.world_size})"
            )
        base_lrs = list(self.scheduler.base_lrs)  # this run's: scaled by this run's world size
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        if ckpt.get("world_size", 1) != self.dist.world_size:
            # At an epoch boundary with another number of processes: the saved schedule counted the
            # old run's steps per epoch and its rates were scaled by its world size. Both are this
            # run's now, at the start of epoch ``self.epoch``.
            self.scheduler.base_lrs = base_lrs
            self.scheduler.last_epoch = self.epoch * self.steps_per_epoch
            lrs = [base * rule(self.scheduler.last_epoch) for base, rule in zip(base_lrs, self.scheduler.lr_lambdas)]
            for group, base, lr in zip(self.optimizer.param_groups, base_lrs, lrs):
                group["initial_lr"], group["lr"] = base, lr
            self.scheduler._last_lr = lrs
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        own = self._own_saved_state(ckpt)
        self.running = dict(own.get("running") or {})
        if self.keep_best and self.dist.is_main:
            self.best = ckpt.get("best")
            if self.best is None and self.epoch >= 1:
                raise CheckpointError(
                    f"{self.checkpoint_path}: saved after epoch {self.epoch} without the weights of its best epoch "
                    "(it was trained with keep_epoch: last), so keep_epoch: best cannot choose among its epochs; "
                    "use another --out or keep_epoch: last"
                )
        set_rng_state(own["rng"])
        if self.batch_in_epoch:
            self._resumed_rng = own["rng"]
        self._trim_metrics()
        return True

    def _own_saved_state(self, ckpt: Dict[str, Any]) -> Dict[str, Any]:
        """This process's running sums and RNG states in ``ckpt``: its own entry of ``ranks`` when the
        checkpoint was written by as many processes. Otherwise rank 0's, the only ones a checkpoint
        without ``ranks`` holds: a checkpoint of another number of processes (at an epoch boundary
        only, where the sums are empty) gives every process rank 0's RNG states, as a fresh start gives
        every process the same seed. A mid-epoch checkpoint of several processes without ``ranks`` (an
        older trainer's) resumes as that trainer did: the epoch's training figures then count rank 0's
        sums for every process (logged)."""
        ranks = ckpt.get("ranks")
        saved_world = ckpt.get("world_size", 1)
        if isinstance(ranks, list) and len(ranks) == saved_world == self.dist.world_size:
            return ranks[self.dist.rank]
        if ranks is None and saved_world > 1 and ckpt["batch_in_epoch"] and self.dist.is_main:
            log.warning("%s: saved mid-epoch by %d processes without each process's running sums and RNG states; "
                        "every process resumes with rank 0's, so the training figures of epoch %d count rank 0's "
                        "batches for every process up to batch %d", self.checkpoint_path, saved_world,
                        int(ckpt["epoch"]) + 1, int(ckpt["batch_in_epoch"]))
        return {"running": ckpt.get("running"), "rng": ckpt["rng"]}

    def _trim_metrics(self) -> None:
        """Drop epoch records the checkpoint does not cover (written just before a crash)."""
        path = self.out_dir / METRICS_NAME
        if not self.dist.is_main or not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= self.epoch]
        if len(keep) != len(lines):
            atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())

    def _write_final(self, kept_epoch: int) -> Path:
        if self.dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "meta": self.meta,
                "train": asdict(self.cfg),
                "seed": self.seed,
                "model": self.model.state_dict(),
                "epoch": self.epoch,
                "kept_epoch": kept_epoch,  # whose weights "model" holds (keep_epoch)
                "finished": True,
            }
            if self.best is not None:
                state["selection"] = {"figures": list(self._unwrapped.method.selection_figures), "value": self.best["value"]}
            save_atomic(state, self.final_path)
        barrier()
        return self.final_path

    # ------------------------------------------------------------------ steps
    def _batch_slices(self, num_items: int) -> List[slice]:
        """Consecutive batches of ``items_per_batch`` items out of ``num_items``. A last batch of fewer
        than ``min_batch_clips`` clips is dropped; every process has as many items (``shard_order``
        pads), so all drop it together."""
        slices = [slice(i, min(i + self.items_per_batch, num_items)) for i in range(0, num_items, self.items_per_batch)]
        if slices and (slices[-1].stop - slices[-1].start) * self.clips_per_item < self.min_batch_clips:
            slices.pop()
        return slices

    def _batches(self, epoch: int) -> List[List[int]]:
        order = shard_order(len(self.dataset), self.seed, epoch, self.dist.rank, self.dist.world_size)
        return [order[b] for b in self._batch_slices(len(order))]

    def _loader(self, epoch: int, skip: int):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        batches = self._batches(epoch)[skip:]
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        ), len(batches)

    def _step(self, batch: dict) -> Dict[str, float]:
        model = self._unwrapped
        clips = batch["clips"].to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        label = batch["label"].to(self.device)
        region = batch["region"].to(self.device)
        text_feats = None
        if model.method.uses_text:
            text_feats = self.text_features(list(batch["texts"])).to(self.device)
        gvf = None
        if model.method.uses_gvf:
            try:
                gvf = torch.stack([self.gvf[v] for v in batch["video_ids"]]).to(self.device)
            except KeyError as e:
                raise KeyError(f"no global video feature for video {e.args[0]!r}") from None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.ddp_model(clips, text_feats, gvf)
        out = {k: v.float() for k, v in out.items()}
        losses = compute_losses(
            model,
            out,
            {"label": label, "region": region, "texts": list(batch["texts"]), "video_ids": list(batch.get("video_ids") or [])},
            gather=gather_with_grad if self.dist.distributed else None,
            gather_no_grad=gather_no_grad,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        loss = losses["loss"]
        bad = not bool(torch.isfinite(loss.detach()).all())
        if any_process(bad, self.device):
            terms = {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1} "
                f"(terms: {terms}); training stopped. The last good checkpoint is kept: "
                f"{self.checkpoint_path if self.checkpoint_path.exists() else 'none yet'}. "
                "Lower the learning rates, disable AMP, or check the input clips."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.use_amp and self.device.type == "cpu":
            self._check_cpu_bf16_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._unwrapped.clamp_logit_scale_()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}

    def _check_cpu_bf16_gradients(self) -> None:
        """Stop before a step that would write NaN into the weights. With a finite loss, non-finite
        gradients under CPU bfloat16 autocast come from the CPU's bf16 kernels: with torch 2.14.1 on
        an AVX-512-BF16 CPU without AMX, a Conv3d of temporal kernel 3 on an input of 2 frames gives a
        NaN weight gradient (R(2+1)D's third stage sees 2 frames of an 8-frame clip)."""
        bad = [name for name, p in self._unwrapped.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if any_process(bool(bad), self.device):
            raise NonFiniteLossError(
                f"non-finite gradients with a finite loss at epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1}, under "
                f"bfloat16 autocast on the CPU (pretrain.cpu_bf16 / source_pretrain.cpu_bf16), in {', '.join(bad[:4])}"
                f"{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}: this CPU's bfloat16 kernels fail on these shapes. "
                "Training stopped before the step; set cpu_bf16: false."
            )

    @property
    def _unwrapped(self) -> PretrainModel:
        return _unwrap(self.ddp_model)

    def _accumulate(self, values: Dict[str, float], clips: int, seconds: float) -> None:
        r = self.running
        r["steps"] = r.get("steps", 0.0) + 1
        r["clips"] = r.get("clips", 0.0) + clips
        r["seconds"] = r.get("seconds", 0.0) + seconds
        for k, v in values.items():
            r[f"sum_{k}"] = r.get(f"sum_{k}", 0.0) + v
            r[f"n_{k}"] = r.get(f"n_{k}", 0.0) + 1

    def _log_progress(self, batches: int) -> None:
        """Every ``log_every`` batches, the main process logs the epoch's running loss (this process's
        steps so far; the epoch's record averages over processes). Reads, never changes, the sums."""
        every = self.cfg.log_every
        if every <= 0 or not self.dist.is_main or self.batch_in_epoch % every:
            return
        r = self.running
        terms = sorted(k[4:] for k in r if k.startswith("sum_") and k != "sum_loss")
        parts = [f"{k} {r[f'sum_{k}'] / max(1.0, r[f'n_{k}']):.4f}" for k in terms]
        loss = f"{r['sum_loss'] / max(1.0, r['n_loss']):.4f}" if "sum_loss" in r else "n/a"
        log.info("epoch %d/%d, batch %d/%d: running loss %s (%s)", self.epoch + 1, self.cfg.epochs, self.batch_in_epoch,
                 batches, loss, ", ".join(parts))

    def _epoch_record(self) -> Dict[str, Any]:
        r = self.running
        keys = sorted(k[4:] for k in r if k.startswith("sum_"))
        # Loss terms: the mean over processes of each one's mean; clips and skipped segments: the sum.
        vals = torch.tensor([r[f"sum_{k}"] / max(1.0, r[f"n_{k}"]) for k in keys]
                            + [r.get("clips", 0.0), r.get("seconds", 0.0), r.get("skipped_segments", 0.0)], dtype=torch.float64)
        vals = all_reduce_mean(vals.to(self.device)).cpu()
        rec: Dict[str, Any] = {"epoch": self.epoch + 1}
        rec.update({k: float(v) for k, v in zip(keys, vals[: len(keys)])})
        clips = float(vals[len(keys)]) * self.dist.world_size
        secs = float(vals[len(keys) + 1])
        rec["clips"] = int(round(clips))
        rec["skipped_segments"] = int(round(float(vals[len(keys) + 2]) * self.dist.world_size))
        rec["clips_per_s"] = clips / secs if secs > 0 else None
        # The rates in force at the start of the epoch (the schedule moves them per step).
        start = lr_factor(self.cfg, float(self.epoch))
        rec["lr_backbone"] = self.cfg.lr_backbone * self.lr_scale * start
        rec["lr_heads"] = self.cfg.lr_heads * self.lr_scale * start
        return rec

    def _train_mode(self) -> None:
        self.ddp_model.train()
        for module in self.frozen_modules[1:]:
            module.eval()  # frozen stages beyond the stem are a fixed feature extractor (TSP's stem keeps training BN)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, stop: Optional[Callable[[], bool]] = None) -> Optional[Dict[str, float]]:
        """The method's loss terms, head accuracies and retrieval R@1 on the validation segments.

        Runs on the main process (others wait), in eval mode, in batches of ``batch_size`` clips
        in a fixed order, so that the figures of two epochs are comparable. Loss terms are
        averaged over batches weighted by their clips; accuracies and R@1 are over all clips.
        ``stop()`` is asked before each batch: when it says true, the pass ends there and None is
        returned (on the main process) instead of figures of part of the set.
        """
        if self.validation is None:
            return {}
        result: Optional[Dict[str, float]] = {}
        if self.dist.is_main:
            result = self._validate_here(stop)
        barrier()
        return result

    def _validate_here(self, stop: Optional[Callable[[], bool]] = None) -> Optional[Dict[str, float]]:
        model = self.model
        was_training = model.training
        model.eval()
        clip_level = getattr(self.validation, "clip_level", False)
        per_batch = max(1, self.cfg.batch_size // (1 if clip_level else getattr(self.validation, "clips_per_item", 1)))
        # One fixed shuffled order (the same every epoch): batches mix clips as training batches do.
        order = torch.randperm(len(self.validation), generator=torch.Generator().manual_seed(0)).tolist()
        loader = torch.utils.data.DataLoader(
            self.validation, batch_sampler=[order[i : i + per_batch] for i in range(0, len(order), per_batch)],
            collate_fn=self.collate, num_workers=self.cfg.num_workers, persistent_workers=False,
            generator=torch.Generator().manual_seed(0),  # leaves the global RNG (training's) untouched
        )
        method = model.method
        sums: Dict[str, float] = {}
        weight = 0
        hits = {"class": [0, 0], "region": [0, 0]}
        z_v_all, texts_all, fg_all = [], [], []
        text_cache: Dict[str, torch.Tensor] = {}
        for batch in loader:
            if stop is not None and stop():
                model.train(was_training)
                return None
            if batch.get("clips") is None:
                continue
            clips = batch["clips"].to(self.device)
            label = batch["label"].to(self.device)
            region = batch["region"].to(self.device)
            texts = list(batch["texts"])
            text_feats = self.text_features(texts).to(self.device) if method.uses_text else None
            gvf = None
            if method.uses_gvf:
                table = self.val_gvf if self.val_gvf is not None else self.gvf
                try:
                    gvf = torch.stack([table[v] for v in batch["video_ids"]]).to(self.device)
                except KeyError as e:
                    raise KeyError(f"validation: no global video feature for video {e.args[0]!r}") from None
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                out = model(clips, text_feats, gvf)
            out = {k: v.float() for k, v in out.items()}
            losses = compute_losses(model, out, {"label": label, "region": region, "texts": texts, "video_ids": list(batch.get("video_ids") or [])})
            n = int(clips.shape[0])
            for k in [k for k in losses if k not in ("v2t", "t2v", "temperature", "class_acc", "region_acc")]:
                sums[k] = sums.get(k, 0.0) + float(losses[k]) * n
            weight += n
            fg = region == 1
            if "class_logits" in out:
                keep = fg & (label >= 0)
                hits["class"][0] += int((out["class_logits"][keep].argmax(1) == label[keep]).sum())
                hits["class"][1] += int(keep.sum())
            if "region_logits" in out:
                hits["region"][0] += int((out["region_logits"].argmax(1) == region).sum())
                hits["region"][1] += n
            if "z_v" in out and hasattr(model, "text_proj"):  # retrieval in the space of g_v / g_t
                z_v_all.append(_similarity_space(model, out["z_v"]).cpu())
                texts_all.extend(texts)
                fg_all.append(fg.cpu())
                for t, f in zip(texts, text_feats):
                    text_cache.setdefault(t, f)
        result: Dict[str, float] = {k: v / max(1, weight) for k, v in sums.items()}
        result["clips"] = float(weight)
        for name, (right, total) in hits.items():
            if total:
                result[f"{name}_acc"] = right / total
        if hits["class"][1] and getattr(self.validation, "classes", None):
            result["class_acc_chance"] = 1.0 / len(self.validation.classes)
        if z_v_all:
            result.update(retrieval_r1(
                model, torch.cat(z_v_all), texts_all, torch.cat(fg_all), text_cache,
                foreground_only=method.retrieval_foreground_only, device=self.device,
            ))
        model.train(was_training)
        return result

    @torch.no_grad()
    def recalibrate_batch_norm(self) -> None:
        """Re-estimate the backbone's BatchNorm statistics with the final weights ("precise BN").

        Running statistics are exponential averages taken while the weights moved; after a short
        run (the CPU profiles train for a few dozen steps) they lag far behind the final weights
        and eval-mode features, which feature extraction uses, blow up. A forward pass over up to
        ``bn_recalibration_batches`` training batches with a cumulative average fixes them; the
        weights are untouched. The batches are those of a further epoch (seeded like the others).
        """
        if self.bn_recalibration_batches <= 0:
            return
        norms = [m for m in self.model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not norms:
            return
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
        self.model.train()
        loader, _ = self._loader(self.cfg.epochs, 0)
        done = 0
        for batch in loader:
            if batch.get("clips") is None:
                continue
            clips = batch["clips"].to(self.device)
            if self.cfg.channels_last:
                clips = clips.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                self.model.backbone(clips)
            done += 1
            if done >= self.bn_recalibration_batches:
                break
        for m, mom in zip(norms, saved):
            m.momentum = mom

    def _write_record(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.progress and any(k.startswith("val_") for k in record):
            print(format_validation(record), flush=True)

    def _consider_epoch(self, figures: Dict[str, float]) -> Dict[str, Any]:
        """keep_epoch: best, on the main process, after the validation of epoch ``self.epoch + 1``: keep
        this epoch's weights when its figure (the method's ``selection_value``) beats every earlier
        trained epoch's; a tie keeps the earlier epoch, a NaN figure never wins. Returns what the
        epoch's record notes: its figure and the best epoch so far."""
        if not (self.keep_best and self.dist.is_main):
            return {}
        value = float(self._unwrapped.method.selection_value(figures))
        rank = value if value == value else float("-inf")
        if self.best is None or rank > self.best["value"]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = {"epoch": self.epoch + 1, "value": rank, "model": state}
        return {"val_selection": value, "best_epoch": self.best["epoch"]}

    def _stop_on_signal(self, flag: "_SignalFlag") -> None:
        """Every process: checkpoint the position, then hand the stop signal on (raises TrainingInterrupted)."""
        self.save_checkpoint()
        flag.received = flag.received or signal.SIGTERM  # another process received it
        flag.chain()

    # ------------------------------------------------------------------ loop
    def fit(self) -> Path:
        if self.final_path.exists():
            return self.final_path
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self._resume() and self.dist.is_main:
            (self.out_dir / METRICS_NAME).unlink(missing_ok=True)  # records of a start that never checkpointed
        if self.validation is not None and self.epoch == 0 and self.batch_in_epoch == 0:
            figures = self.validate()
            if self.keep_best and self.dist.is_main:
                self._unwrapped.method.selection_value(figures)  # a figure validation lacks fails before training, not after
            self._write_record({"epoch": 0, **{f"val_{k}": v for k, v in figures.items()}})
        with _SignalFlag() as flag:
            while self.epoch < self.cfg.epochs:
                self._train_mode()
                loader, total = self._loader(self.epoch, self.batch_in_epoch)
                epoch_batches = total + self.batch_in_epoch
                bar = None
                if self.progress and self.dist.is_main:
                    from tqdm import tqdm

                    bar = tqdm(total=total + self.batch_in_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False)
                t_prev = time.perf_counter()
                batches = iter(loader)
                if self._resumed_rng is not None:
                    # Starting a loader draws its base seed from the global RNG. The uninterrupted run drew it
                    # at the start of the epoch, before the states a mid-epoch checkpoint holds; the resumed
                    # epoch's loader draws once more, so the states are set back for the rest to follow the same stream.
                    set_rng_state(self._resumed_rng)
                    self._resumed_rng = None
                for batch in batches:
                    self.running["skipped_segments"] = self.running.get("skipped_segments", 0.0) + float(batch.get("num_skipped", 0))
                    # A batch whose every segment was unreadable (or, with BatchNorm in the heads, all
                    # but one clip) is skipped by all processes together.
                    kept = 0 if batch.get("clips") is None else int(batch["clips"].shape[0])
                    if 0 < kept < self.min_batch_clips:
                        log.warning("epoch %d, batch %d: %d clip left after %d unreadable segment(s) were skipped; the "
                                    "method's heads need %d clips (BatchNorm), so the batch is skipped",
                                    self.epoch + 1, self.batch_in_epoch + 1, kept, int(batch.get("num_skipped", 0)),
                                    self.min_batch_clips)
                    if not any_process(kept < self.min_batch_clips, self.device):
                        values = self._step(batch)
                        now = time.perf_counter()
                        self._accumulate(values, int(batch["clips"].shape[0]), now - t_prev)
                        t_prev = now
                    else:
                        values = {"loss": float("nan")}
                    self.batch_in_epoch += 1
                    self._log_progress(epoch_batches)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{values['loss']:.3f}")
                    if any_process(flag.received is not None, self.device):
                        if bar is not None:
                            bar.close()
                        self._stop_on_signal(flag)
                if bar is not None:
                    bar.close()
                record = self._epoch_record()
                figures = self.validate(stop=lambda: flag.received is not None)
                if any_process(figures is None, self.device):
                    # Stopped during validation: every batch is done and the epoch is not closed, so the
                    # checkpoint's position (batch_in_epoch = the epoch's batch count) makes a resume skip
                    # the training batches and redo this validation (the figures of part of the set are dropped).
                    self._stop_on_signal(flag)
                record.update({f"val_{k}": v for k, v in figures.items()})
                record.update(self._consider_epoch(figures))
                self._write_record(record)
                if self.on_epoch_end is not None:
                    self.on_epoch_end()
                self.epoch += 1
                self.batch_in_epoch = 0
                self.running = {}
                self.save_checkpoint()
        kept = self.epoch
        if self.best is not None:  # keep_epoch: best (main process): the best epoch's weights, then BN re-estimation
            self.model.load_state_dict(self.best["model"])
            kept = self.best["epoch"]
            if self.progress:
                print(f"keep_epoch: best: epoch {kept} of {self.epoch} (validation figure {self.best['value']:.4f})", flush=True)
        if self.cfg.bn_reestimate:
            self.recalibrate_batch_norm()
        return self._write_final(kept)
