"""The pre-training stage: build data, encoder and method from a profile, then run the trainer.

``pretrain`` trains one method on the ActivityNet training videos (segments of foreground and
background clips). ``source_pretrain`` is TAC on the trimmed set: on synthetic profiles it plays
the role Kinetics-400 weights play in the paper (run once per profile, cached, and used as the
initial weights of every method when ``encoder.weights: source``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

import torch

from clap_bench.config import (
    SOURCE_SEED, ConfigError, Profile, TrainConfig, config_hash, data_identity, identity_dict, resolve_datasets, source_seed,
    source_train_identity, to_dict,
)
from clap_bench.io import file_lock
from clap_bench.training.distributed import DistInfo, barrier, setup_distributed
from clap_bench.training.trainer import CHECKPOINT_FORMAT, FINAL_NAME, Trainer, seed_everything

PRETRAIN_DATASET = "activitynet"
CAPTIONS_DATASET = "activitynet-captions"
SOURCE_DATASET = "trimmed"

log = logging.getLogger(__name__)


def log_data_notes(stage: str, part: str, ann) -> None:
    """One log line with the drop count of the annotations ``ann`` a stage reads, then one per note."""
    log.info("%s: %s: %d videos; %d annotations dropped (why: the notes)", stage, part, len(ann.videos), ann.dropped)
    for note in ann.notes:
        log.info("%s: %s: note: %s", stage, part, note)


def _cache_dir(profile: Profile) -> Path:
    return Path(profile.data.cache_dir).expanduser()


def frame_cache_for(profile: Profile):
    from clap_bench.clips.frame_cache import frame_cache_for as _for

    return _for(profile)


@contextmanager
def _exclusive(path: Path, enabled: bool = True):
    """``file_lock`` unless disabled (under DDP the ranks synchronise with barriers instead)."""
    if not enabled:
        yield
        return
    with file_lock(path):
        yield


def resolve_classes(profile: Profile, spec: Optional[str | List[str]]) -> Optional[List[str]]:
    """A class subset: a list, ``base``/``val``/``test`` of the profile's few-shot split, or a file."""
    if spec is None or isinstance(spec, list):
        return spec
    if spec in ("base", "val", "test"):
        from clap_bench.data.loading import load_fewshot_split

        datasets = resolve_datasets(profile)
        if "fewshot-split" not in datasets:
            raise ConfigError(f"--classes {spec}: profile {profile.name!r} has no 'fewshot-split' dataset")
        return sorted(getattr(load_fewshot_split(datasets["fewshot-split"]), spec))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--classes {spec}: no such file; expected base, val, test or a file with one class per line")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--classes {path}: cannot read it as text ({e})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise ConfigError(f"--classes {path}: no class names; expected one class per line")
    return sorted(names)


# --------------------------------------------------------------------------- source pre-training
def default_source_dir(profile: Profile, seed: int = SOURCE_SEED) -> Path:
    """``<cache>/source_pretrain/<arch>-<hash>``, the hash over data, clips, encoder, training and,
    for a seed other than the shared model's, the seed."""
    identity = {
        "data": data_identity(profile),
        "clips": identity_dict(profile.clips),
        "encoder": [profile.encoder.arch, profile.encoder.width],
        "train": source_train_identity(profile),
    }
    if seed != SOURCE_SEED:
        identity["seed"] = seed
    return _cache_dir(profile) / "source_pretrain" / f"{profile.encoder.arch}-{config_hash(identity)}"


def source_pretrain(profile: Profile, seed: int = SOURCE_SEED, out_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """TAC on the ``trimmed`` dataset from random weights; returns its final checkpoint (cached,
    one folder per seed)."""
    from clap_bench.clips import TrimmedClipDataset, collate_segments
    from clap_bench.data import load_dataset
    from clap_bench.encoders import build_video_encoder
    from clap_bench.methods import PretrainModel, method_from_profile

    out_dir = Path(out_dir) if out_dir is not None else default_source_dir(profile, seed)
    final = out_dir / FINAL_NAME
    if final.exists():
        return final
    info = setup_distributed()
    with _exclusive(out_dir.parent / f".{out_dir.name}.lock", enabled=not info.distributed):
        if final.exists():
            return final
        datasets = resolve_datasets(profile, progress=progress and info.is_main)
        if SOURCE_DATASET not in datasets:
            raise KeyError(
                f"profile {profile.name!r}: encoder.weights 'source' needs a {SOURCE_DATASET!r} dataset "
                "(the synthetic benchmark provides it)"
            )
        cfg = datasets[SOURCE_DATASET]
        ann = load_dataset(cfg, SOURCE_DATASET)
        if "train" in ann.subsets or "training" in ann.subsets:
            ann = ann.subset(*[s for s in ("train", "training") if s in ann.subsets])
        method = method_from_profile("tac", profile.methods)
        seed_everything(seed)
        enc_cfg = dataclasses.replace(profile.encoder, weights=None)
        encoder = build_video_encoder(enc_cfg, weights=None)
        model = PretrainModel(encoder, method, num_classes=len(ann.classes))
        tcfg = profile.source_pretrain
        # One random clip per video and epoch, as Kinetics training does: a batch of clips from
        # a few videos only (5 clips each) is too correlated for a network trained from scratch
        # (measured: the loss stays at chance on the synthetic trimmed set).
        dataset = TrimmedClipDataset(
            ann, cfg.videos, profile.clips, train=True, classes=ann.classes, seed=seed,
            clips_per_video=1, max_videos=tcfg.max_segments_per_epoch,
        )
        meta = _meta(profile, method, enc_cfg, ann.classes, init=None, dataset=SOURCE_DATASET)
        trainer = Trainer(
            model, dataset, tcfg, out_dir, seed, collate_segments, 1,
            meta=meta, progress=progress, dist_info=info,
        )
        return trainer.fit()


def resolve_init_weights(profile: Profile, init: Optional[str | Path] = None, progress: bool = True,
                         seed: int = SOURCE_SEED) -> Optional[str]:
    """The initial backbone weights: ``init`` or ``encoder.weights``; ``source`` is trained if needed
    (the shared source model, or seed ``seed``'s with ``source_pretrain.per_seed``)."""
    w = init if init is not None else profile.encoder.weights
    if w is None:
        return None
    if str(w) == "source":
        return str(source_pretrain(profile, source_seed(profile, seed), progress=progress))
    return str(w)


# --------------------------------------------------------------------------- global video features
def _weights_key(weights: Optional[str]) -> str:
    if weights is None:
        return "random"
    if weights == "kinetics400":
        return "kinetics400"
    from clap_bench.encoders import file_hash

    return file_hash(weights)


# The ``extract.*`` keys TSP's GVFs are computed with (``global_video_features``, besides ``clips``):
# the pre-training stage of a method with GVFs carries them in its config, so its hash follows the
# grid (``clap_bench.runs.plan.gvf_grid_config``). ``batch_size`` and ``num_workers`` only say how
# the features are computed, not which.
GVF_GRID_KEYS = ("stride_frames", "last_clip", "snap_duration_to_frames")


def gvf_cache_path(profile: Profile, init_weights: Optional[str], videos, dataset_key: str) -> Path:
    """Where the GVFs of ``videos`` under ``init_weights`` are cached: keyed by the weights, the
    encoder, the extraction grid, the video ids and the dataset's data identity (its files: a
    dataset moved to other video files gets new GVFs)."""
    # identity_dict: keys added later count only away from their default, so caches made before stay valid
    grid = {"clips": identity_dict(profile.clips), "stride": profile.extract.stride_frames}
    if profile.extract.snap_duration_to_frames:
        grid["snap_duration_to_frames"] = True
    if profile.extract.last_clip != "span":  # the grid's last clip (span: the key's value before it counted)
        grid["last_clip"] = profile.extract.last_clip
    key = config_hash({"w": _weights_key(init_weights), "arch": [profile.encoder.arch, profile.encoder.width], **grid,
                       "videos": hashlib.sha256(",".join(v.id for v in videos).encode()).hexdigest(),
                       "data": data_identity(profile, dataset_key)})
    return _cache_dir(profile) / "gvf" / f"{dataset_key}-{key}.pt"


def global_video_features(
    profile: Profile, init_weights: Optional[str], videos, dataset_key: str, progress: bool = True, info: Optional[DistInfo] = None
) -> Dict[str, torch.Tensor]:
    """TSP's GVF: max-pool over each video of the initial encoder's clip features (cached on disk).

    Cached under ``<cache>/gvf/`` (``gvf_cache_path``: initial weights, encoder, extraction grid, videos, data identity).
    """
    from clap_bench.encoders import build_video_encoder
    from clap_bench.features.extract import encode_videos
    from clap_bench.training.trainer import save_atomic

    info = info or DistInfo()
    path = gvf_cache_path(profile, init_weights, videos, dataset_key)
    if not path.exists() and info.is_main:
        with _exclusive(path.with_name(path.name + ".lock")):
            if not path.exists():
                encoder = build_video_encoder(dataclasses.replace(profile.encoder, weights=None), weights=init_weights)
                gvf = {}
                failed = []
                for vid, feats, error in encode_videos(
                    encoder, videos, profile.clips, profile.extract.stride_frames, profile.extract.batch_size,
                    profile.extract.num_workers, progress=progress, desc="global video features",
                    last_clip=profile.extract.last_clip, snap_duration_to_frames=profile.extract.snap_duration_to_frames,
                ):
                    if error is not None:
                        failed.append(error)
                        continue
                    gvf[vid] = torch.from_numpy(feats).max(dim=0).values
                if failed:
                    raise RuntimeError(f"global video features: {len(failed)} video(s) unreadable, e.g. {failed[0]}")
                save_atomic(gvf, path)
    barrier()
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- pre-training
def short_segment_limits(cfg: TrainConfig, clips) -> dict:
    """``short_segments: drop`` (TSP): no segment shorter than one clip is sampled, action or background."""
    if cfg.short_segments != "drop":
        return {}
    clip_seconds = clips.frames / clips.fps
    return {"min_background": clip_seconds, "min_action": clip_seconds}


def segment_rules(cfg: TrainConfig, clips) -> dict:
    """What of ``cfg`` decides which segments pre-training samples, as ``SegmentClipDataset`` arguments:
    ``short_segment_limits`` and ``duplicate_segments``."""
    return {**short_segment_limits(cfg, clips), "duplicate_segments": cfg.duplicate_segments}


def method_train_config(cfg: TrainConfig, method) -> TrainConfig:
    """``pretrain`` as ``method`` trains with it: its own head rate (``methods.<name>.lr_heads``) when it sets one."""
    if getattr(method, "lr_heads", None) is None:
        return cfg
    return dataclasses.replace(cfg, lr_heads=method.lr_heads)


def _meta(profile: Profile, method, enc_cfg, classes, init, dataset: str) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "method": method.name,
        "method_config": method.to_dict(),
        "profile": profile.name,
        "encoder": to_dict(enc_cfg),
        "clips": to_dict(profile.clips),
        "classes": list(classes),
        "init": None if init is None else str(init),
        "dataset": dataset,
    }


def pretrain(
    profile: Profile,
    method: str,
    seed: int,
    out_dir: Path,
    classes: Optional[List[str]] = None,
    init: Optional[str | Path] = None,
    progress: bool = True,
) -> Path:
    """Pre-train ``method`` with ``seed`` into ``out_dir``; returns the final checkpoint path.

    Resumes from ``out_dir/checkpoint.pt`` when present; returns at once when already finished.
    ``classes`` restricts training to videos whose actions all belong to that subset (few-shot TAL).
    ``init`` overrides ``encoder.weights``.
    """
    from clap_bench.clips import SegmentClipDataset, collate_segments, resolve_video_path
    from clap_bench.data import load_dataset
    from clap_bench.data.check import drop_problem_videos
    from clap_bench.data.loading import attach_captions
    from clap_bench.encoders import TextEncoder, build_video_encoder
    from clap_bench.features.extract import VideoSource
    from clap_bench.methods import PretrainModel, method_from_profile

    from clap_bench.plugins import load_profile_imports

    out_dir = Path(out_dir)
    if (out_dir / FINAL_NAME).exists():
        return out_dir / FINAL_NAME
    load_profile_imports(profile)  # a plug-in method, in the process that trains it
    method_cfg = method_from_profile(method, profile.methods)
    info = setup_distributed()
    cfg = method_train_config(profile.pretrain, method_cfg)
    if info.is_main:
        resolve_datasets(profile, progress=progress)  # generate synthetic data once, before the others read it
    barrier()
    datasets = resolve_datasets(profile)
    if PRETRAIN_DATASET not in datasets:
        raise KeyError(f"profile {profile.name!r} has no {PRETRAIN_DATASET!r} dataset to pre-train on")
    ds_cfg = datasets[PRETRAIN_DATASET]
    ann = full_ann = load_dataset(ds_cfg, PRETRAIN_DATASET)
    train_subsets = [s for s in ("training", "train") if s in ann.subsets]
    if not train_subsets:
        raise ValueError(f"dataset {PRETRAIN_DATASET!r}: no training subset (subsets: {ann.subsets})")
    ann = ann.subset(*train_subsets)
    ann = drop_problem_videos(profile, PRETRAIN_DATASET, ann, f"{method} pre-training")
    if classes:
        unknown = sorted(set(classes) - set(ann.classes))
        if unknown:
            raise ValueError(f"classes not in {PRETRAIN_DATASET!r}: {unknown[:5]}")
        ann = ann.restrict_classes(classes)
        class_list = sorted(classes)
        if "fewshot-split" in datasets:
            # Few-shot protocol (paper §4.3): pre-training on the base classes must never see a
            # video of a validation or test class; checked against the split files themselves.
            from clap_bench.data.loading import load_fewshot_split
            from clap_bench.downstream.qat.protocol import assert_no_leakage

            split = load_fewshot_split(datasets["fewshot-split"])
            if set(class_list) <= set(split.base):
                assert_no_leakage(ann, split, stage=f"{method} pre-training on base classes")
    else:
        class_list = list(ann.classes)
    val_ann = None
    if cfg.validate:  # the data check's problem videos are left out here too (TSP reads every file for its GVFs)
        val_ann = drop_problem_videos(profile, PRETRAIN_DATASET, validation_annotations(full_ann, class_list),
                                      f"{method} pre-training validation")
    if method_cfg.uses_captions:
        if CAPTIONS_DATASET not in datasets:
            raise KeyError(f"method {method}: uses captions but profile {profile.name!r} has no {CAPTIONS_DATASET!r} dataset")
        captions = load_dataset(datasets[CAPTIONS_DATASET], CAPTIONS_DATASET)
        ann = attach_captions(ann, captions)
        if val_ann is not None:
            val_ann = attach_captions(val_ann, captions)

    init_weights = resolve_init_weights(profile, init, progress=progress, seed=seed)
    seed_everything(seed)
    enc_cfg = dataclasses.replace(profile.encoder, weights=None)
    encoder = build_video_encoder(enc_cfg, weights=init_weights)
    if not method_cfg.trains:
        return write_initial_weights(encoder, out_dir, _meta(profile, method_cfg, enc_cfg, class_list, init_weights, PRETRAIN_DATASET), seed, info)
    if info.is_main:  # what the readers dropped and noted about the videos trained and validated on, once
        log_data_notes(f"{method} pre-training", f"{PRETRAIN_DATASET} training", ann)
        if val_ann is not None:
            log_data_notes(f"{method} pre-training", f"{PRETRAIN_DATASET} validation", val_ann)
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"

    text = None
    text_dim = None
    if method_cfg.uses_text:
        text = TextEncoder(profile.encoder.text_model, _cache_dir(profile), device=device)
        text_dim = text.dim
    gvf = val_gvf = None
    gvf_dim = None
    if method_cfg.uses_gvf:
        videos = [
            VideoSource(v.id, resolve_video_path(ds_cfg.videos, v), float(v.duration), v.fps, v.num_frames)
            for v in sorted(ann.videos.values(), key=lambda v: v.id)
        ]
        gvf = global_video_features(profile, init_weights, videos, PRETRAIN_DATASET, progress=progress, info=info)
        # One scalar for all videos: GVFs get unit mean L2 norm. Max-pooling keeps the largest
        # activations of each channel, so raw GVFs can be much larger than clip features, and the
        # region head's SGD step then diverges; a common rescale keeps their geometry.
        mean_norm = torch.ones(())
        if cfg.gvf_scaling == "mean_norm":  # TSP feeds the raw max-pooled GVF ("none")
            mean_norm = torch.stack(list(gvf.values())).norm(dim=1).mean().clamp(min=1e-6)
            gvf = {k: v / mean_norm for k, v in gvf.items()}
        gvf_dim = encoder.out_dim
        if val_ann is not None:
            val_videos = [
                VideoSource(v.id, resolve_video_path(ds_cfg.videos, v), float(v.duration), v.fps, v.num_frames)
                for v in sorted(val_ann.videos.values(), key=lambda v: v.id)
            ]
            val_gvf = global_video_features(profile, init_weights, val_videos, PRETRAIN_DATASET, progress=progress, info=info)
            val_gvf = {k: v / mean_norm for k, v in val_gvf.items()}  # the training videos' scale
    seed_everything(seed)  # the heads' initialisation does not depend on what ran above
    model = PretrainModel(
        encoder, method_cfg, len(class_list), text_dim, gvf_dim,
        embed_dim=profile.encoder.embed_dim, contrastive=cfg.contrastive, head_init_std=cfg.head_init_std,
    )
    policy = method_cfg.text_policy(cfg)
    clip_level = cfg.batch_composition == "clips"
    dataset = SegmentClipDataset(
        ann, ds_cfg.videos, profile.clips, train=True, regions=method_cfg.regions, text_policy=policy,
        classes=class_list, seed=seed, max_segments=cfg.max_segments_per_epoch, clip_level=clip_level, hflip=cfg.hflip,
        frame_cache=frame_cache_for(profile), **segment_rules(cfg, profile.clips),
    )
    validation = None
    if val_ann is not None:
        # The same segments and texts for every seed and epoch (seed 0): figures are comparable.
        val_clips = profile.clips
        if cfg.val_clips_per_segment is not None:
            val_clips = dataclasses.replace(profile.clips, clips_per_segment=cfg.val_clips_per_segment)
        validation = SegmentClipDataset(
            val_ann, ds_cfg.videos, val_clips, train=False, regions=method_cfg.regions, text_policy=policy,
            classes=class_list, seed=0, max_segments=cfg.val_max_segments, clip_level=clip_level,
            frame_cache=frame_cache_for(profile), **segment_rules(cfg, profile.clips),
        )
        if len(validation) == 0:
            raise ValueError(
                f"dataset {PRETRAIN_DATASET!r}: validation subset {val_ann.subsets} has no segments of the "
                f"{len(class_list)} pre-training classes to validate on; set pretrain.validate: false to train without "
                "(with pretrain.keep_epoch: last: no epoch can be selected then)"
            )
    meta = _meta(profile, method_cfg, enc_cfg, class_list, init_weights, PRETRAIN_DATASET)
    trainer = Trainer(
        model, dataset, cfg, out_dir, seed, collate_segments, 1 if clip_level else profile.clips.clips_per_segment,
        text_features=text.encode if text is not None else None,
        on_epoch_end=text.flush if text is not None else None,
        gvf=gvf, meta=meta, progress=progress, device=device, dist_info=info,
        validation=validation, val_gvf=val_gvf,
    )
    return trainer.fit()


def write_initial_weights(encoder, out_dir: Path, meta: dict, seed: int, info: DistInfo) -> Path:
    """The final checkpoint of a method that does not train (``none``): the initial backbone as is."""
    from clap_bench.training.trainer import save_atomic

    final = Path(out_dir) / FINAL_NAME
    if info.is_main:
        final.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CHECKPOINT_FORMAT, "meta": meta, "seed": seed, "epoch": 0, "finished": True,
            "model": {f"backbone.{k}": v for k, v in encoder.state_dict().items()},
        }
        save_atomic(state, final)
    barrier()
    return final


VALIDATION_SUBSETS = ("validation", "val")


def validation_annotations(ann, classes: List[str]):
    """The held-out segments pre-training validates on: the dataset's validation subset.

    With a class subset (few-shot base-class pre-training) only videos whose actions all belong
    to it are kept: validation-subset videos of base classes, which no few-shot stage uses, so
    nothing of the validation or test classes is seen.
    """
    subsets = [s for s in VALIDATION_SUBSETS if s in ann.subsets]
    if not subsets:
        raise ValueError(
            f"dataset {PRETRAIN_DATASET!r}: no validation subset (expected one of {VALIDATION_SUBSETS}, found "
            f"{sorted(ann.subsets)}); set pretrain.validate: false to train without validation "
            "(with pretrain.keep_epoch: last: no epoch can be selected then)"
        )
    val = ann.subset(*subsets)
    if set(classes) != set(val.classes):
        val = val.restrict_classes(classes)
    if not val.videos:
        raise ValueError(f"dataset {PRETRAIN_DATASET!r}: validation subset {subsets[0]!r} has no video of the pre-training classes")
    return val
