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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from importlib import resources

PROFILES_DIR = Path(str(resources.files("clap_bench.configs") / "profiles"))
PROFILE_NAMES = ("smoke", "default", "paper")


class ConfigError(ValueError):
    pass


# --------------------------------------------------------------------------- sections
@dataclass
class ClipConfig:
    """How clips are cut from videos (TSP protocol: 16 frames at 15 fps, 128x171 -> 112)."""

    frames: int = 16
    fps: float = 15.0
    resize: List[int] = field(default_factory=lambda: [128, 171])  # (height, width)
    crop: int = 112
    clips_per_segment: int = 5


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
    cache_dir: str = "~/.cache/clap_bench"
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)


@dataclass
class EncoderConfig:
    arch: str = "r2plus1d_18"  # r2plus1d_18 | r3d_18 | r2plus1d_tiny
    width: float = 1.0  # channel multiplier of r2plus1d_tiny
    weights: Optional[str] = None  # "kinetics400" | path to .pth | "source" (synthetic source pre-training)
    text_model: Optional[str] = None  # Hugging Face path; None: the bundled all-MiniLM-L6-v2
    embed_dim: int = 512


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32  # clips per step (segments x clips_per_segment)
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
    temperature: float = 0.07
    learn_temperature: bool = False
    caption_prob: float = 0.5
    num_workers: int = 0
    amp: bool = True  # used on CUDA only
    channels_last: bool = False
    max_segments_per_epoch: Optional[int] = None  # CPU profiles subsample the segment list
    log_every: int = 20


@dataclass
class ExtractConfig:
    stride_frames: int = 16  # in frames at ClipConfig.fps; 16 = non-overlapping clips
    batch_size: int = 32
    num_workers: int = 0


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
    check: CheckConfig = field(default_factory=CheckConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    methods: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict)


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
    return cls(**kwargs)


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
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)


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
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def data_identity(profile: "Profile", dataset: Optional[str] = None) -> Dict[str, Any]:
    """What identifies a profile's data in cache and run-store keys (the cache folder does not).

    A synthetic profile includes the generator version: a new generator writes different videos
    for the same (profile, seed), and results computed on the old ones must not count as done.
    With ``dataset``, only that dataset's real-path entry is kept.
    """
    data = to_dict(profile.data)
    data.pop("cache_dir", None)
    if profile.data.synthetic:
        from clap_bench.synth import GENERATOR_VERSION

        data["generator_version"] = GENERATOR_VERSION
    if dataset is not None:
        data["datasets"] = {dataset: data["datasets"][dataset]} if dataset in data["datasets"] else {}
    return data


# --------------------------------------------------------------------------- profiles
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _resolve_raw(name_or_path: str, seen: tuple = ()) -> tuple[dict, str]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown profile {name_or_path!r}; known: {', '.join(PROFILE_NAMES)} or a YAML file path")
    elif not path.exists():
        raise ConfigError(f"{path}: profile file not found")
    if str(path) in seen:
        raise ConfigError(f"{path}: 'base' chain loops ({' -> '.join(seen)})")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base:
        base_raw, _ = _resolve_raw(str(base), seen + (str(path),))
        raw = deep_merge(base_raw, raw)
    return raw, str(path)


def load_profile(name_or_path: str = "default", overrides: Optional[dict] = None) -> Profile:
    raw, where = _resolve_raw(name_or_path)
    if overrides:
        raw = deep_merge(raw, overrides)
    raw.setdefault("name", Path(name_or_path).stem)
    return from_dict(Profile, raw, where)


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
