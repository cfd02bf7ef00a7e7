"""Feature extraction: the backbone output h_v of every clip of every video, into one HDF5 file.

Layout (the one of TSP's released feature files, read as-is by the G-TAD / 2D-TAN loaders): a
flat HDF5 file, one float32 dataset of shape ``(T, D)`` per video, named by the video id; clip
``t`` starts at ``t * stride_frames / fps`` seconds and covers ``frames / fps`` seconds. File
attributes say how the features were made (method, seed, checkpoint hash, stride, fps, frames,
crop size, ...). ``finished=True`` is set once every video has been tried (readers accept the file
from then on; ``skipped_videos`` lists those that could not be read), ``complete=True`` only once
every video is in: a run on a finished file that skipped videos tries those again.

Crash safety and resuming: each video is written under a temporary name, flushed, then renamed to
its id, so a dataset named by a video id is always whole; temporary entries left by a crash are
deleted on the next start and videos already present are skipped. A file is reused or resumed
only when it was made the same way: the checkpoint hash and every grid and preprocessing
attribute (``IDENTITY_ATTRS``) must match, else the run stops naming the file and the attribute.

Sharding (``shard=(i, n)``): shard ``i`` of ``n`` writes the videos ``i, i+n, i+2n, ...`` of the
sorted id list into ``<out>.shard-i-of-n.h5``. The shard that finishes last (all shard files
complete) merges them into ``<out>`` (under a file lock) and removes the shard files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from clap_bench.io import file_lock
from clap_bench.config import ClipConfig, ConfigError, EncoderConfig, ExtractConfig, Profile, from_dict, resolve_datasets

FEATURES_FORMAT = "clap_bench.features/1"
_TMP_PREFIX = "__partial__"
# Attributes a file must share with an extraction to be reused or resumed by it (those the
# extraction states): which features, of which videos, on which clip grid, from which pixels.
IDENTITY_ATTRS = ("format", "dataset", "checkpoint_hash", "encoder", "feature_dim", "stride", "stride_frames",
                  "last_clip", "snap_duration_to_frames", "fps", "frames", "size", "resize", "resize_filter")
# The value of an identity attribute in files written before the attribute existed (or without it:
# snap_duration_to_frames is written only when on).
_LEGACY_ATTRS = {"resize_filter": "swscale", "last_clip": "span", "snap_duration_to_frames": False}


def _attr_value(value: object) -> object:
    """An attribute as plain Python (h5py gives numpy scalars and arrays back)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (np.ndarray, list, tuple)):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_identity(path: Path, found: Dict[str, object], wanted: Dict[str, object]) -> None:
    """Raise ValueError when a file's attributes ``found`` differ from ``wanted`` on an identity attribute."""
    for key in IDENTITY_ATTRS:
        if key not in wanted:
            continue
        want = _attr_value(wanted[key])
        if key not in found and key not in _LEGACY_ATTRS:
            what = f"does not record {key} (this extraction wants {key}={want!r})"
        else:
            have = _attr_value(found[key]) if key in found else _LEGACY_ATTRS[key]
            if have == want:
                continue
            what = (f"holds features of checkpoint {have}, not {want}" if key == "checkpoint_hash"
                    else f"made with {key}={have!r}, this extraction wants {key}={want!r}")
        raise ValueError(f"{path}: {what}; its features cannot be reused or resumed: delete the file or choose another --out")


def _is_finished(attrs) -> bool:
    """Every video tried (files written before ``finished`` existed: ``complete``)."""
    return bool(attrs.get("finished", attrs.get("complete", False)))


@dataclass(frozen=True)
class VideoSource:
    id: str
    path: Path
    duration: float
    fps: Optional[float] = None  # the source frame rate, where the annotation gives it
    num_frames: Optional[int] = None  # the source frame count, where the annotation gives it


# --------------------------------------------------------------------------- encoding
class _VideoClipChunks(torch.utils.data.IterableDataset):
    """Decodes videos (split over DataLoader workers) into chunks of centre-cropped clips."""

    def __init__(self, videos: Sequence[VideoSource], clips: ClipConfig, stride_frames: int, chunk: int, frame_cache=None,
                 last_clip: str = "span", snap_duration_to_frames: bool = False):
        self.videos, self.clips, self.chunk = list(videos), clips, chunk
        # which clips a video gives
        self.grid = ExtractConfig(stride_frames=stride_frames, last_clip=last_clip, snap_duration_to_frames=snap_duration_to_frames)
        self.frame_cache = frame_cache  # clap_bench.clips.frame_cache.FrameCache: frames decoded once per machine

    def __iter__(self):
        from clap_bench.clips.decode import VideoDecodeError, iter_video_clips
        from clap_bench.clips.transforms import transform_clips

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        c = self.clips
        for video in self.videos[wid::nw]:
            starts = ()
            try:
                starts = self.grid.video_clip_starts(video.duration, c, video.path, video.fps, video.num_frames)
                if self.frame_cache is not None:
                    blocks = ((i, self.frame_cache.clips(video.path, starts[i : i + self.chunk], c.frames, c.fps))
                              for i in range(0, len(starts), self.chunk))
                else:
                    blocks = iter_video_clips(video.path, starts, c.frames, c.fps, size=tuple(c.resize), chunk=self.chunk,
                                              resize_filter=c.resize_filter)
                for first, block in blocks:
                    yield video.id, first, len(starts), transform_clips(block, c.crop, train=False), None
            except VideoDecodeError as e:
                yield video.id, 0, len(starts), None, str(e)


@torch.no_grad()
def encode_videos(
    encoder: torch.nn.Module,
    videos: Sequence[VideoSource],
    clips: ClipConfig,
    stride_frames: int,
    batch_size: int = 32,
    num_workers: int = 0,
    device: Optional[str] = None,
    progress: bool = False,
    desc: str = "extract",
    frame_cache=None,
    last_clip: str = "span",
    snap_duration_to_frames: bool = False,
) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[str]]]:
    """Yield ``(video_id, (T, D) float32 features, None)`` per video, or ``(id, None, error)``.

    Videos come back in the order they complete (workers decode different videos at once).
    ``last_clip`` and ``snap_duration_to_frames`` are ``extract.last_clip`` and
    ``extract.snap_duration_to_frames`` (see :meth:`clap_bench.config.ExtractConfig.clip_starts`).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = encoder.to(device).eval()
    data = _VideoClipChunks(videos, clips, stride_frames, batch_size, frame_cache, last_clip, snap_duration_to_frames)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda")
    pending: Dict[str, Tuple[int, Dict[int, np.ndarray]]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(videos), desc=desc, unit="video")
    try:
        for vid, first, total, block, error in loader:
            if error is not None:
                pending.pop(vid, None)
                if bar is not None:
                    bar.update(1)
                yield vid, None, error
                continue
            feats = encoder(block.to(device, non_blocking=True)).float().cpu().numpy()
            n, parts = pending.setdefault(vid, (total, {}))
            parts[first] = feats
            if sum(len(p) for p in parts.values()) >= n:
                del pending[vid]
                out = np.concatenate([parts[k] for k in sorted(parts)], axis=0).astype(np.float32)
                if bar is not None:
                    bar.update(1)
                yield vid, out, None
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------- files
def shard_path(out_path: Path, shard: Tuple[int, int]) -> Path:
    i, n = shard
    return out_path.with_name(f"{out_path.name}.shard-{i}-of-{n}.h5")


def _open_for_append(path: Path, attrs: Dict[str, object]) -> h5py.File:
    if path.exists():
        try:
            f = h5py.File(path, "a")
        except OSError as e:
            if isinstance(e, BlockingIOError) or "unable to lock file" in str(e):
                # another process has it open: never move aside a file that is being written
                raise RuntimeError(f"{path}: open in another process (HDF5 file lock held); "
                                   "run one extraction per output file at a time") from None
            broken = path.with_name(path.name + ".unreadable")
            os.replace(path, broken)
            print(f"{path}: unreadable ({e}); moved to {broken}, starting the file again")
            f = h5py.File(path, "w")
        else:
            try:
                check_identity(path, dict(f.attrs), attrs)
            except ValueError:
                f.close()
                raise
            for name in [k for k in f.keys() if k.startswith(_TMP_PREFIX)]:
                del f[name]  # a video whose write a crash interrupted
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w")
    for k, v in attrs.items():
        f.attrs[k] = v
    f.attrs["complete"] = False
    f.attrs["finished"] = False
    f.flush()
    return f


def write_features(
    path: Path,
    attrs: Dict[str, object],
    videos: Sequence[VideoSource],
    encode,
) -> Tuple[int, List[str]]:
    """Append the features of ``videos`` missing from ``path``; ``encode(todo)`` yields (id, feats, err).

    An existing file must have been made as ``attrs`` say (``check_identity``). Returns (number of
    videos written now, errors). Marks the file finished once every video was tried, and complete
    when every video is in (nothing failed, now or before); the videos that failed are listed in
    ``skipped_videos`` and tried again by the next call.
    """
    f = _open_for_append(path, attrs)
    errors: List[str] = []
    written = 0
    try:
        todo = [v for v in videos if v.id not in f]
        for vid, feats, error in encode(todo):
            if error is not None:
                errors.append(f"{vid}: {error}")
                continue
            tmp = _TMP_PREFIX + vid
            f.create_dataset(tmp, data=feats, dtype="float32")
            f.flush()
            f.move(tmp, vid)
            f.flush()
            written += 1
        skipped = sorted(e.split(":", 1)[0] for e in errors)
        f.attrs["skipped_videos"] = json.dumps(skipped)
        f.attrs["finished"] = True
        f.attrs["complete"] = not skipped and all(v.id in f for v in videos)
        f.flush()
    finally:
        f.close()
    return written, errors


def merge_feature_shards(out_path: Path, num_shards: int) -> Optional[Path]:
    """Merge finished shard files into ``out_path`` (atomically); None while a shard is unfinished.

    The merged file is complete when every shard is; a shard's skipped videos stay listed."""
    out_path = Path(out_path)
    shards = [shard_path(out_path, (i, num_shards)) for i in range(num_shards)]
    with file_lock(out_path.with_name(out_path.name + ".lock")):
        if out_path.exists() and _is_complete(out_path):
            return out_path
        for s in shards:
            if not s.exists() or not _is_finished(_read_attrs(s)):
                return None
        complete = all(_is_complete(s) for s in shards)
        tmp = out_path.with_name(f".{out_path.name}.merging")
        skipped: List[str] = []
        with h5py.File(tmp, "w") as dst:
            for s in shards:
                with h5py.File(s, "r") as src:
                    if not dst.attrs.keys():
                        for k, v in src.attrs.items():
                            dst.attrs[k] = v
                    skipped += json.loads(src.attrs.get("skipped_videos", "[]"))
                    for vid in src.keys():
                        src.copy(src[vid], dst, name=vid)
            dst.attrs["skipped_videos"] = json.dumps(sorted(skipped))
            dst.attrs["shards"] = num_shards
            dst.attrs["finished"] = True
            dst.attrs["complete"] = complete
        os.replace(tmp, out_path)
        for s in shards:
            s.unlink()
        return out_path


def _read_attrs(path: Path) -> Dict[str, object]:
    """A feature file's attributes; empty when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs)
    except OSError:
        return {}


def _is_complete(path: Path) -> bool:
    """Every video in: finished, and none skipped."""
    attrs = _read_attrs(path)
    return bool(attrs.get("complete", False)) and not json.loads(_attr_value(attrs.get("skipped_videos", "[]")) or "[]")


class FeatureFile:
    """Read-only, dict-like view of a feature file: ``ff[video_id] -> (T, D) float32 array``."""

    def __init__(self, path: Path | str, allow_partial: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"feature file not found: {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except BlockingIOError:
            raise RuntimeError(f"{self.path}: being written by another process (HDF5 file lock held); "
                               "read it once its extraction stage is done") from None
        self.attrs = dict(self._file.attrs)
        if not allow_partial and not _is_finished(self.attrs):
            self._file.close()
            raise ValueError(f"{self.path}: feature file is incomplete (extraction not finished; run it again to resume)")

    def keys(self) -> List[str]:
        return [k for k in self._file.keys() if not k.startswith(_TMP_PREFIX)]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, vid: object) -> bool:
        return isinstance(vid, str) and not vid.startswith(_TMP_PREFIX) and vid in self._file

    def __getitem__(self, vid: str) -> np.ndarray:
        try:
            return self._file[vid][()]
        except KeyError:
            raise KeyError(f"{self.path}: no features for video {vid!r}") from None

    def items(self):
        for k in self.keys():
            yield k, self[k]

    @property
    def dim(self) -> int:
        keys = self.keys()
        return int(self._file[keys[0]].shape[1]) if keys else int(self.attrs.get("feature_dim", 0))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_features(path: Path | str, allow_partial: bool = False) -> FeatureFile:
    """Open a feature file for reading (see ``FeatureFile``); refuses an unfinished one by default."""
    return FeatureFile(path, allow_partial)


# --------------------------------------------------------------------------- the stage
def dataset_videos(profile: Profile, dataset_key: str, subsets: Optional[Sequence[str]] = None) -> List[VideoSource]:
    """Every video of a configured dataset (sorted by id) with its file path and duration."""
    from clap_bench.clips import resolve_video_path
    from clap_bench.data import load_dataset
    from clap_bench.data.check import drop_problem_videos

    datasets = resolve_datasets(profile)
    if dataset_key not in datasets:
        raise ConfigError(f"profile {profile.name!r} has no dataset {dataset_key!r}; known: {', '.join(sorted(datasets))}")
    cfg = datasets[dataset_key]
    video_dir = cfg.videos
    if video_dir is None and dataset_key == "activitynet-captions" and "activitynet" in datasets:
        video_dir = datasets["activitynet"].videos  # Captions annotate the ActivityNet videos
    if video_dir is None:
        raise ValueError(f"dataset {dataset_key!r}: no video folder configured (data.datasets.{dataset_key}.videos)")
    ann = load_dataset(cfg, dataset_key)
    if subsets:
        ann = ann.subset(*subsets)
    ann = drop_problem_videos(profile, dataset_key, ann, f"extraction of {dataset_key}")
    out = []
    for vid in sorted(ann.videos):
        v = ann.videos[vid]
        out.append(VideoSource(vid, resolve_video_path(video_dir, v), float(v.duration), v.fps, v.num_frames))
    return out


def extract_features(
    profile: Profile,
    checkpoint: Path,
    dataset_key: str,
    out_path: Path,
    shard: Tuple[int, int] = (0, 1),
    progress: bool = True,
) -> Path:
    """Extract h_v of every clip of every video of ``dataset_key`` with the backbone of ``checkpoint``.

    Returns the merged file (or this shard's file while other shards are unfinished). Resumes a
    partial file, returns a complete one, and refuses one made otherwise (another checkpoint,
    clip grid or preprocessing: ``check_identity``). Videos that cannot be decoded are skipped
    and listed in the file's ``skipped_videos`` attribute; a later run tries them again.
    """
    from clap_bench.clips.frame_cache import frame_cache_for
    from clap_bench.encoders import build_video_encoder, file_hash
    from clap_bench.training.trainer import load_checkpoint

    checkpoint, out_path = Path(checkpoint), Path(out_path)
    i, n = shard
    if not (0 <= i < n):
        raise ValueError(f"shard {i}/{n}: expected 0 <= i < n")
    target = out_path if n == 1 else shard_path(out_path, shard)
    clips, ex = profile.clips, profile.extract
    grid = {
        "format": FEATURES_FORMAT,
        "dataset": dataset_key,
        "checkpoint_hash": file_hash(checkpoint),
        "stride": int(ex.stride_frames),
        "stride_frames": int(ex.stride_frames),
        "last_clip": str(ex.last_clip),
        "fps": float(clips.fps),
        "frames": int(clips.frames),
        "size": int(clips.crop),
        "resize": list(clips.resize),
        "resize_filter": str(clips.resize_filter),
        "snap_duration_to_frames": bool(ex.snap_duration_to_frames),
    }
    if out_path.exists():
        found = _read_attrs(out_path)
        if found:
            check_identity(out_path, found, grid)
        # A merged file is not extracted again shard by shard: its skipped videos stay listed.
        if _is_complete(out_path) or (n > 1 and _is_finished(found)):
            return out_path
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.get("meta", {})
    enc_cfg = from_dict(EncoderConfig, meta.get("encoder"), f"{checkpoint}: meta.encoder")
    encoder = build_video_encoder(enc_cfg, weights=None)
    encoder.load_weights(checkpoint)
    videos = dataset_videos(profile, dataset_key)[i::n]
    attrs = {
        **{k: v for k, v in grid.items() if k != "snap_duration_to_frames"},
        "method": str(meta.get("method", "")),
        "seed": int(ckpt.get("seed", -1)),
        "checkpoint": str(checkpoint),
        "encoder": enc_cfg.arch,
        "feature_dim": int(encoder.out_dim),
        "profile": profile.name,
    }
    if ex.snap_duration_to_frames:  # only when on: files made without the key keep their bytes
        attrs["snap_duration_to_frames"] = True
    _, errors = write_features(
        target,
        attrs,
        videos,
        lambda todo: encode_videos(
            encoder, todo, clips, ex.stride_frames, ex.batch_size, ex.num_workers, progress=progress, desc=f"extract {dataset_key}",
            frame_cache=frame_cache_for(profile), last_clip=ex.last_clip, snap_duration_to_frames=ex.snap_duration_to_frames,
        ),
    )
    if errors:
        print(f"{target}: {len(errors)} video(s) could not be read and were skipped, e.g. {errors[0]}")
    if n == 1:
        return target
    merged = merge_feature_shards(out_path, n)
    return merged if merged is not None else target
