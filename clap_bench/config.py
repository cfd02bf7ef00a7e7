"""Typed configuration: dataclasses with defaults, YAML profiles merged on top.

A profile (``smoke``, ``default``, ``paper`` or a user's YAML file) is data: a nested mapping
whose keys must match the dataclass fields below, checked on load so a typo names the key and
the file instead of being silently ignored. A profile may name another one under ``base:``
and then only states what differs.

Downstream tasks and pre-training methods declare their own defaults (their own dataclasses);
the profile carries only overrides for them under ``tasks.<name>`` and ``methods.<name>``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from importlib import resources

PROFILES_DIR = Path(str(resources.files("clap_bench.configs") / "profiles"))
PROFILE_NAMES = ("smoke", "default", "paper")
CACHE_ENV = "CLAPBENCH_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/clap_bench"


def default_cache_dir() -> str:
    """``$CLAPBENCH_CACHE`` if set, else ``~/.cache/clap_bench``: where generated data and the source model live.

    Read when a config is built, so the test suite (or a user) can keep its cache apart from the default one.
    """
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR


class ConfigError(ValueError):
    pass


# Field metadata: a key added after run stores existed is left out of config hashes while it holds
# its default, so adding it does not orphan every stage already run (``identity_dict``).
HASH_OMITS_DEFAULT = "hash_omits_default"


def added_field(default: Any) -> Any:
    """A dataclass field that config hashes leave out while it equals ``default``."""
    return field(default=default, metadata={HASH_OMITS_DEFAULT: True})


# --------------------------------------------------------------------------- sections
RESIZE_FILTERS = ("swscale", "bilinear")  # clap_bench.clips.decode.RESIZE_FILTERS


@dataclass
class ClipConfig:
    """How clips are cut from videos (TSP protocol: 16 frames at 15 fps, 128x171 -> 112)."""

    frames: int = 16
    fps: float = 15.0
    resize: List[int] = field(default_factory=lambda: [128, 171])  # (height, width)
    crop: int = 112
    clips_per_segment: int = 5
    # How frames are scaled to ``resize``: "swscale" (bilinear in the uint8 RGB conversion, which
    # averages over the source pixels when downscaling) or "bilinear" (TSP's T.Resize:
    # F.interpolate(bilinear, align_corners=False, no antialias) of the full-size RGB frame in
    # float, rounded back to uint8); see clap_bench.clips.decode.
    resize_filter: str = added_field("swscale")

    def __post_init__(self):
        if self.resize_filter not in RESIZE_FILTERS:
            raise ConfigError(f"resize_filter: expected one of {', '.join(RESIZE_FILTERS)}, got {self.resize_filter!r}")


@dataclass
class DatasetConfig:
    """One dataset: its annotation files in a real format and the folder holding its videos."""

    format: str = ""  # a reader name (clapbench list formats); empty: auto-detect
    annotations: List[str] = field(default_factory=list)
    videos: Optional[str] = None
    extra: Dict[str, str] = field(default_factory=dict)  # e.g. {"lengths": "Charades_v1_train.csv"}


@dataclass
class DataConfig:
    """Where the data comes from: the synthetic benchmark (generated on first use) or real paths."""

    synthetic: bool = True
    synth_profile: str = "default"
    synth_seed: int = 0
    cache_dir: str = field(default_factory=default_cache_dir)  # $CLAPBENCH_CACHE or ~/.cache/clap_bench
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    # Decode each video once into <cache_dir>/frames (clap_bench.clips.frame_cache): clip-level
    # batches then cost a memory-mapped slice instead of a seek and decode per clip. For the
    # small synthetic videos only (real datasets are thousands of hours).
    frame_cache: bool = False
    frame_cache_max_gb: float = 20.0


@dataclass
class EncoderConfig:
    arch: str = "r2plus1d_18"  # r2plus1d_18 | r3d_18 | r2plus1d_tiny
    width: float = 1.0  # channel multiplier of r2plus1d_tiny
    weights: Optional[str] = None  # "kinetics400" | path to .pth | "source" (synthetic source pre-training)
    text_model: Optional[str] = None  # Hugging Face path; None: the bundled all-MiniLM-L6-v2
    embed_dim: int = 512


BATCH_COMPOSITIONS = ("clips", "segments")
KEEP_EPOCHS = ("last", "best")  # TrainConfig.keep_epoch
DUPLICATE_TEXTS = ("exclude", "negatives")

@dataclass
class ContrastiveConfig:
    """The form of the contrastive loss (Eq. 3-5); FIDELITY.md says what the paper states for each."""

    normalize: bool = True  # L2-normalise z_v, z_t before the dot product (cosine); Eq. 4: plain dot product
    temperature: float = 0.07  # tau of Eq. 4 (the paper gives no value; 0.07 is CLIP's initial one)
    learn_temperature: bool = False
    # Pairs whose text is the same string as a pair's own: "exclude" drops them from that pair's
    # denominators; "negatives" keeps them there (Eq. 4 read literally: every other text in the batch).
    duplicate_texts: str = "exclude"

    def __post_init__(self) -> None:
        if self.duplicate_texts not in DUPLICATE_TEXTS:
            raise ConfigError(
                f"contrastive.duplicate_texts: expected one of {', '.join(DUPLICATE_TEXTS)}, got {self.duplicate_texts!r}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"contrastive.temperature: expected a number > 0, got {self.temperature!r}")
        if self.learn_temperature and self.temperature < 0.01:
            raise ConfigError(
                f"contrastive.temperature: a learned temperature is kept >= 0.01 (logit scale <= 100, as CLIP), "
                f"so it cannot start at {self.temperature!r}; start it at 0.01 or more, or set "
                "contrastive.learn_temperature: false to use a fixed temperature as given"
            )


@dataclass
class TrainConfig:
    epochs: int = 8
    # Clips per step and process (TSP: --batch-size is per GPU). Under DDP the global batch is
    # batch_size x world size, and with scale_lr_by_world_size the rates grow with it.
    batch_size: int = 32
    # "clips": one item per (segment, clip slot), shuffled across every segment of every video
    # (TSP's UntrimmedVideoDataset); "segments": one item = a segment with its clips_per_segment
    # clips (a batch then holds batch_size / clips_per_segment segments only).
    batch_composition: str = "clips"
    scale_lr_by_world_size: bool = True  # TSP: lr x world size
    freeze_stem: bool = True  # TSP: the backbone's stem trains at lr 0
    # Backbone stages (1-4) kept frozen besides the stem: 0 trains all of them (the paper). A CPU
    # budget trick: frozen lower stages cost no backward pass.
    frozen_stages: int = 0
    hflip: bool = True  # TSP: training clips are flipped horizontally with probability 0.5
    optimizer: str = "sgd"  # "sgd" (paper, TSP) | "adamw" (e.g. the synthetic source stage, trained from scratch)
    lr_backbone: float = 1e-4
    lr_heads: float = 2e-2
    momentum: float = 0.9
    weight_decay: float = 5e-3
    schedule: str = "step"  # "step": x gamma every step_epochs; "tsp": warm-up then x gamma at milestones
    lr_gamma: float = 0.01
    lr_step_epochs: int = 2
    warmup_epochs: int = 2
    milestones: List[int] = field(default_factory=lambda: [4, 6])
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    caption_prob: float = 0.5
    # Re-estimate the backbone's BatchNorm statistics after the last epoch (not in the paper or TSP;
    # the CPU profiles' short runs need it, see Trainer.recalibrate_batch_norm).
    bn_reestimate: bool = True
    # TSP details (FIDELITY.md). head_init_std: class/region heads drawn from N(0, std) with zero
    # bias (TSP: 0.01); None keeps PyTorch's default. short_segments: "drop" every segment shorter
    # than one clip (TSP) or "keep" (a clip is centred on a short action). gvf_scaling: "none"
    # (TSP) or "mean_norm" (GVFs divided by their mean L2 norm). caption_choice: see
    # clap_bench.clips.language.assign_caption.
    head_init_std: Optional[float] = None
    short_segments: str = "keep"
    gvf_scaling: str = "mean_norm"
    caption_choice: str = "largest_overlap"

    num_workers: int = 0
    amp: bool = True  # used on CUDA only
    # bfloat16 autocast on CPU (oneDNN: AMX or AVX-512 BF16 kernels where the CPU has them,
    # emulated, and slower, where it has not). Off: fp32, as every figure in the README.
    cpu_bf16: bool = added_field(False)
    # source_pretrain only: True gives seed k of every method its own source model (trained with
    # seed k; seed 0 is the shared one), so the seed spread includes the source model's draw. False:
    # one source model for every seed, as the paper's one set of Kinetics-400 weights.
    per_seed: bool = added_field(False)
    channels_last: bool = False
    max_segments_per_epoch: Optional[int] = None  # CPU profiles subsample the segment list
    log_every: int = 20  # the main process logs the epoch's running loss every this many steps (0: never)
    # Validation after every epoch (and before the first, as epoch 0) on held-out segments:
    # evenly spaced clips, no augmentation, every loss term, head accuracies and retrieval R@1.
    validate: bool = True
    val_max_segments: Optional[int] = None  # a fixed subset of the validation segments (CPU profiles)
    # Evenly spaced clips per validation segment; None: clips.clips_per_segment (TSP). One clip
    # (the segment's centre) on more segments costs the same and measures with less noise: the
    # clips of one segment are nearly the same sample (FIDELITY.md).
    val_clips_per_segment: Optional[int] = None
    # The encoder the stage keeps (final.pt): "last", the weights after the last epoch; "best", those
    # of the trained epoch (1..epochs, not epoch 0) whose validation figure is highest, the method's
    # ``selection_value`` (TAC, TSP: the mean of its heads' accuracies, TSP's "Avg Accuracy"); on a
    # tie the earlier epoch. Needs validate: true (FIDELITY.md).
    keep_epoch: str = added_field("last")
    # Segments with the same video, times and label (repeated csv rows: 30 training and 19 validation
    # action rows of TSP's ActivityNet csvs): "drop" samples one of them, "keep" each (TSP: every
    # csv row is a segment). FIDELITY.md.
    duplicate_segments: str = added_field("drop")

    def __post_init__(self) -> None:
        for key, allowed in (("short_segments", ("keep", "drop")), ("gvf_scaling", ("mean_norm", "none")),
                             ("duplicate_segments", ("drop", "keep")),
                             ("caption_choice", ("largest_overlap", "nearest_centre"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.head_init_std is not None and not self.head_init_std > 0:
            raise ConfigError(f"head_init_std: expected a number > 0 or null, got {self.head_init_std!r}")
        if self.batch_composition not in BATCH_COMPOSITIONS:
            raise ConfigError(
                f"batch_composition: expected one of {', '.join(BATCH_COMPOSITIONS)}, got {self.batch_composition!r}"
            )
        if self.log_every < 0:
            raise ConfigError(f"log_every: expected a number of steps >= 0 (0: no running-loss lines), got {self.log_every}")
        if not 0 <= self.frozen_stages <= 4:
            raise ConfigError(f"frozen_stages: expected 0-4 (backbone stages), got {self.frozen_stages}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive number of clips, got {self.batch_size}")
        if self.keep_epoch not in KEEP_EPOCHS:
            raise ConfigError(f"keep_epoch: expected one of {', '.join(KEEP_EPOCHS)}, got {self.keep_epoch!r}")
        if self.keep_epoch == "best" and not self.validate:
            raise ConfigError(
                "keep_epoch: best keeps the epoch with the best validation figure, but validate is false; "
                "set validate: true or keep_epoch: last"
            )
        if self.val_clips_per_segment is not None and self.val_clips_per_segment < 1:
            raise ConfigError(
                f"val_clips_per_segment: expected a positive number of clips or null, got {self.val_clips_per_segment}"
            )


# TrainConfig keys that choose which segments of the untrimmed videos pre-training samples
# (training.pretrain.segment_rules): ``pretrain`` only.
SEGMENT_KEYS = ("short_segments", "duplicate_segments")

LAST_CLIP_RULES = ("span", "frames")


@dataclass
class ExtractConfig:
    stride_frames: int = 16  # in frames at ClipConfig.fps; 16 = non-overlapping clips
    batch_size: int = 32
    num_workers: int = 0
    # The last clip of a video: "span" (its whole span inside the video) or "frames" (its frames
    # all shown before the end: TSP's EvalVideoDataset, one more feature on some videos);
    # see clap_bench.clips.sampling.extraction_clip_starts.
    last_clip: str = "span"
    # The duration the grid is laid over: false, the annotated one; true, the one the video's
    # source frames give (TSP: its real frame count), from the annotation's fps and frame count or,
    # when it has no fps, the video stream's rate. Lengths rounded to 0.01 s otherwise lose or add a
    # last clip on some videos (FIDELITY.md); see clap_bench.clips.sampling.frame_grid_duration.
    snap_duration_to_frames: bool = added_field(False)

    def __post_init__(self):
        if self.last_clip not in LAST_CLIP_RULES:
            raise ConfigError(f"last_clip: expected one of {', '.join(LAST_CLIP_RULES)}, got {self.last_clip!r}")
        if self.stride_frames < 1:
            raise ConfigError(f"stride_frames: expected a positive number of frames, got {self.stride_frames}")

    def clip_starts(
        self, duration: float, clips: "ClipConfig", source_fps: Optional[float] = None, num_frames: Optional[int] = None
    ):
        """Start (s) of every clip extraction reads from a video of ``duration`` seconds: one feature each.

        ``source_fps`` and ``num_frames`` (the video's own, where known) are read only with
        ``snap_duration_to_frames``.
        """
        from clap_bench.clips.sampling import extraction_clip_starts, frame_grid_duration

        if self.snap_duration_to_frames:
            duration = frame_grid_duration(duration, source_fps, num_frames)
        last_frame = (clips.frames - 1) / clips.fps if self.last_clip == "frames" else None
        return extraction_clip_starts(duration, clips.frames / clips.fps, self.stride_frames / clips.fps, last_frame)

    def video_clip_starts(
        self, duration: float, clips: "ClipConfig", path=None, source_fps: Optional[float] = None,
        num_frames: Optional[int] = None,
    ):
        """:meth:`clip_starts` of one video file: with ``snap_duration_to_frames`` and no ``source_fps``
        from the annotation, the rate of the file's video stream (``probe_video``: declared, or derived
        from its frames' timestamps; raises ``VideoDecodeError`` when the file cannot be opened or
        gives no rate)."""
        if self.snap_duration_to_frames and not source_fps and path is not None:
            from clap_bench.clips.decode import probe_video

            source_fps = probe_video(path).fps
        return self.clip_starts(duration, clips, source_fps, num_frames)


@dataclass
class RuntimeConfig:
    """How a stage process runs, where it changes results: torch's CPU thread count changes the
    order of floating-point reductions, so the same seed gives other numbers with another count."""

    threads: Optional[int] = None  # None: SLURM's allocation ($SLURM_CPUS_PER_TASK), else this machine's cores
    # Threads per stage kind (source, pretrain, extract, task) of stages run as SLURM jobs: filled
    # from the cluster profile's cpus_per_task when a sweep is submitted with ``threads`` unset, so
    # that each job runs as many threads as it was allocated CPUs (the plan is built, and the thread
    # count hashed, on the submitting machine, whose own core count says nothing about the jobs').
    job_threads: Dict[str, int] = field(default_factory=dict)
    # DDP processes (a job's nodes x tasks_per_node) per trained stage kind (source, pretrain) of
    # stages run as SLURM jobs, set from the cluster profile when a sweep is submitted: batch_size is
    # per process, so another count is another experiment. Only counts > 1 are kept, and only they
    # enter the stage's config (and hash), so single-process stages keep their hashes.
    job_processes: Dict[str, int] = field(default_factory=dict)


@dataclass
class CheckConfig:
    """``clapbench data check``: what counts as a problem and where the list of problems goes."""

    duration_tolerance: float = 2.0  # seconds between a file's duration and its annotated one
    problems_file: str = ""  # CSV of problem videos; empty: <data.cache_dir>/data_check/<profile>-problems.csv


@dataclass
class PreflightConfig:
    """``clapbench preflight``: the stand-in videos and what a CPU or CI run may shrink.

    None of these keys touches the profile's own shapes (frames, crop, temporal scale, map sizes,
    widths); the ``None`` ones, when set, only make the preflight itself cheaper, and its report
    names every one in force.
    """

    stand_in_fps: float = 30.0  # TSP re-encodes every video to a constant 30 fps (ffmpeg fps filter) ...
    stand_in_size: List[int] = field(default_factory=lambda: [360, 640])  # ... keeping the source size: set yours (height, width)
    max_video_seconds: Optional[float] = None  # cut the preflight's videos (real or stand-in) to this length
    batch_size: Optional[int] = None  # clips per pre-training step and process (None: pretrain.batch_size)
    extract_batch_size: Optional[int] = None  # clips per extraction forward pass (None: extract.batch_size)
    task_batch_size: Optional[int] = None  # videos / episodes / queries per G-TAD, QAT, 2D-TAN step (None: the task's)
    qat_adapt_steps: Optional[int] = None  # support-adaptation steps per QAT episode (None: tasks.fstal.adapt_steps)
    num_workers: Optional[int] = None  # DataLoader workers (None: pretrain.num_workers / extract.num_workers)
    cluster: str = ""  # cluster profile (slurm/*.yaml) for the projection; empty: slurm/example-gpu.yaml


@dataclass
class Profile:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    source_pretrain: TrainConfig = field(default_factory=TrainConfig)  # synthetic "Kinetics" stage
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    methods: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Plug-in modules imported before methods and tasks are looked up (clap_bench.plugins);
    # ``--import`` on the command line adds to them.
    imports: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pretrain.per_seed:
            raise ConfigError(
                "pretrain.per_seed: only the source stage has it (source_pretrain.per_seed: one source model "
                "per seed); a method's pre-training already runs once per seed"
            )
        if self.source_pretrain.keep_epoch != "last":
            raise ConfigError(
                f"source_pretrain.keep_epoch: {self.source_pretrain.keep_epoch!r}: the source stage has no validation "
                "to select an epoch on; only pretrain.keep_epoch can be best (source_pretrain.keep_epoch: last)"
            )
        # The source stage trains on one clip of each trimmed video (TrimmedClipDataset): there is no
        # list of untrimmed segments for these keys to choose from, so another value would only give
        # the source model another cache key and hash.
        for key in SEGMENT_KEYS:
            value, default = getattr(self.source_pretrain, key), getattr(TrainConfig, key)
            if value != default:
                raise ConfigError(
                    f"source_pretrain.{key}: {value!r}: it chooses the segments of the untrimmed videos and applies to "
                    f"pretrain only (pretrain.{key}); the source stage trains on one clip of each trimmed video. "
                    f"Remove it from source_pretrain (or set source_pretrain.{key}: {default})"
                )

    def task_config(self, task: str) -> Dict[str, Any]:
        """``tasks.<task>`` as the head reads it (``head_config``)."""
        return head_config(self.tasks.get(task))


# Keys of a ``tasks.<task>`` section that the run's task stage reads, not the head, with their
# defaults (``head_seeds``: see ``clap_bench.runs.plan.run_task_stage``).
TASK_STAGE_KEYS: Dict[str, Any] = {"head_seeds": 1}


def head_config(section: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A ``tasks.<task>`` section without the task stage's own keys: what the head's config reads."""
    return {k: v for k, v in (section or {}).items() if k not in TASK_STAGE_KEYS}


# --------------------------------------------------------------------------- generic helpers
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys (named with their path)."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a section's own check (__post_init__): say where the section was read
        raise ConfigError(f"{where}: {e}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_dataclass_type(tp):
        return from_dict(tp, value, where)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") if args else v for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)


def identity_dict(obj: Any) -> Any:
    """``to_dict`` for hashing: the same, except that ``added_field`` keys at their default are left
    out, so a config that does not use a newer key hashes as it did before the key existed."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get(HASH_OMITS_DEFAULT) and value == f.default:
                continue
            out[f.name] = identity_dict(value)
        return out
    if isinstance(obj, dict):
        return {k: identity_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(identity_dict(v) for v in obj)
    return copy.deepcopy(obj)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_hash(obj: Any, length: int = 10) -> str:
    """Stable hash of a (resolved) config, used to key run-store stages."""
    blob = json.dumps(identity_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def data_identity(profile: "Profile", dataset: Optional[str] = None) -> Dict[str, Any]:
    """What identifies a profile's data in cache and run-store keys (the cache folder does not).

    A synthetic profile includes the generator version: a new generator writes different videos
    for the same (profile, seed), and results computed on the old ones must not count as done.
    With ``dataset``, only that dataset's real-path entry is kept, and a generated dataset's
    revision (``clap_bench.synth.DATASET_REVISIONS``) is added when it is above 1, so that a
    dataset generated anew reruns its own stages while every other key stays as it was.
    """
    data = identity_dict(profile.data)
    for key in ("cache_dir", "frame_cache", "frame_cache_max_gb"):  # where and how videos are read, not what
        data.pop(key, None)
    if profile.data.synthetic:
        from clap_bench.synth import GENERATOR_VERSION

        data["generator_version"] = GENERATOR_VERSION
    if dataset is not None:
        data["datasets"] = {dataset: data["datasets"][dataset]} if dataset in data["datasets"] else {}
        if profile.data.synthetic and not data["datasets"]:  # generated, not a real-path entry
            from clap_bench.synth import dataset_revision

            if dataset_revision(dataset) > 1:
                data["dataset_revision"] = dataset_revision(dataset)
    return data


# The seed of the shared source model (the synthetic stand-in for the one set of Kinetics-400 weights).
SOURCE_SEED = 0


def source_seed(profile: "Profile", seed: int) -> int:
    """The seed of the source model that seed ``seed`` of a method starts from: the shared one, or
    with ``source_pretrain.per_seed`` its own (seed 0's is still the shared one)."""
    return seed if profile.source_pretrain.per_seed else SOURCE_SEED


def source_train_identity(profile: "Profile") -> Dict[str, Any]:
    """What of ``source_pretrain`` decides a source model's weights, for its keys (``per_seed`` only
    decides how many source models there are: with it, the seed-0 one is still the shared one)."""
    train = identity_dict(profile.source_pretrain)
    train.pop("per_seed", None)
    return train


def resolve_threads(profile: "Profile", kind: Optional[str] = None) -> int:
    """``runtime.threads``, else ``runtime.job_threads[kind]`` (a SLURM job's allocation), else
    ``$SLURM_CPUS_PER_TASK``, else the cores this process may run on."""
    if profile.runtime.threads is not None:
        if profile.runtime.threads < 1:
            raise ConfigError(f"runtime.threads: expected >= 1, got {profile.runtime.threads}")
        return profile.runtime.threads
    if kind is not None and kind in profile.runtime.job_threads:
        threads = profile.runtime.job_threads[kind]
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"runtime.job_threads.{kind}: expected an integer >= 1, got {threads!r}")
        return threads
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if allocated.isdigit() and int(allocated) > 0:
        return int(allocated)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- profiles
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _profile_path(name_or_path: str, where: str = "") -> Path:
    """The YAML file of a built-in profile name or a path. ``where`` (``"<file>: base: "``) prefixes
    the error of a profile named by another file's ``base`` key, so that the message names that file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"{where}unknown profile {name_or_path!r}; known: {', '.join(PROFILE_NAMES)} or a YAML file path")
    elif not path.exists():
        raise ConfigError(f"{where}{path}: profile file not found")
    return path


def _base_path(base: str, path: Path, where: str) -> str:
    """The profile a file's ``base`` key names: a built-in name, an absolute path, or a path
    relative to the folder of that file. A relative path not found there but found relative to the
    current directory (how bases were resolved before) is still taken, with a warning."""
    given = Path(base)
    if not given.suffix or given.is_absolute():
        return base
    beside = path.parent / given
    if beside.exists():
        return str(beside)
    if given.exists():
        import logging

        logging.getLogger(__name__).warning(
            "%s%s: not found beside %s, taken from the current directory (%s); a relative base is read from "
            "the folder of the file that names it: write it as %s", where, base, path, os.getcwd(),
            os.path.relpath(given.resolve(), path.parent.resolve()))
        return base
    raise ConfigError(f"{where}{base}: profile file not found (a relative base is read from the folder of the file "
                      f"that names it: {beside})")


def _resolve_raw(name_or_path: str, seen: tuple = (), where: str = "") -> tuple[dict, str]:
    path = _profile_path(name_or_path, where)
    if str(path.resolve()) in {str(Path(s).resolve()) for s in seen}:
        raise ConfigError(f"{path}: 'base' chain loops ({' -> '.join(seen)})")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected a profile name ({', '.join(PROFILE_NAMES)}) or a YAML file path, "
                              f"got {base!r}")
        where_base = f"{path}: base: "
        base_raw, _ = _resolve_raw(_base_path(base, path, where_base), seen + (str(path),), where=where_base)
        raw = deep_merge(base_raw, raw)
    return raw, str(path)


def load_profile(name_or_path: str = "default", overrides: Optional[dict] = None) -> Profile:
    raw, where = _resolve_raw(name_or_path)
    if overrides:
        raw = deep_merge(raw, overrides)
    from_file = "name" not in raw
    raw.setdefault("name", Path(name_or_path).stem)
    profile = from_dict(Profile, raw, where)
    check_profile_name(profile.name, f"{where}: name" + (" (the file's name, as it has no name key)" if from_file else ""))
    return profile


# A name that is a folder of the run store (a profile's ``<runs>/<name>/``, also part of cache paths;
# a method's ``<profile>/<method>/``; a task's stage folder): one plain path component, not one of the
# store's own folders (``_shared``, ``_submitit``) nor hidden, and nothing the CLI reads as a list (",")
# or a feature file (":").
STORE_FOLDER_NAME_RE = re.compile(r"[A-Za-z0-9+-][A-Za-z0-9._+-]*")


def check_profile_name(name: str, where: str = "name") -> None:
    if not STORE_FOLDER_NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: expected letters, digits, '.', '_', '+' and '-', not starting with '_' or '.' "
                          f"(the name is the profile's folder in the run store), got {name!r}")


def resolve_datasets(profile: Profile, progress: bool = False) -> Dict[str, DatasetConfig]:
    """The profile's datasets: generated synthetic ones (cached by profile and seed) or its real paths.

    Real dataset entries given in ``data.datasets`` override synthetic ones of the same key, so a
    config can mix (e.g. real Charades-STA with everything else synthetic).
    """
    datasets: Dict[str, DatasetConfig] = {}
    if profile.data.synthetic:
        from clap_bench.synth import ensure_synthetic

        datasets.update(
            ensure_synthetic(profile.data.synth_profile, profile.data.synth_seed, profile.data.cache_dir, progress=progress)
        )
    datasets.update(profile.data.datasets)
    if not datasets:
        raise ConfigError(
            f"profile {profile.name!r}: no datasets: set data.synthetic: true or list data.datasets "
            "(see configs/profiles/paper.yaml)"
        )
    return datasets
