"""Decode a video once: every frame, converted to the clip size, kept on disk for later clips.

Clip-level batches (TSP's protocol) decode one clip per item: a seek to the keyframe before it and
a forward pass, for 8-16 frames. On the small videos of the synthetic benchmark that costs far
more than the network step (measured 5.5x fewer clips/s than decoding a segment's 5 clips in one
pass). With ``data.frame_cache: true`` a video is decoded once per machine into
``<data.cache_dir>/frames/``: its frames at the clip resolution (uint8) and their timestamps.
Clips are then slices of a memory-mapped array.

Same frames as decoding: a wanted time takes the frame whose timestamp is nearest (ties to the
earlier frame), times before the first frame take the first, after the last the last, exactly
the rule of :func:`clap_bench.clips.decode.decode_frames_at`; a truncated file raises the same
``VideoDecodeError`` when a clip reaches past its last frame. Frames are converted by the same
call at the same size (the same ``resize_filter``), so cached and decoded clips are identical arrays.

Entries are keyed by the file (resolved path, size, mtime), the frame size and the resize filter
(an entry made with one filter is never read for the other), written to a
temporary name and renamed into place (concurrent writers of one entry are harmless: the last
rename wins and both wrote the same bytes). An entry that cannot be read (a crash, a full disk)
is rebuilt. ``max_bytes`` bounds the folder: the least recently used entries are removed first.
Real datasets are far too large for this (ActivityNet is thousands of hours); the ``paper``
profile keeps it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from clap_bench.clips.decode import (
    VideoDecodeError,
    _Converter,
    _declared_duration,
    _open,
    _stream_timing,
    check_resize_filter,
    clip_frame_times,
)

log = logging.getLogger(__name__)

PathLike = str | Path
FORMAT = 1


def _midpoints(frame_times: np.ndarray) -> np.ndarray:
    return (frame_times[1:] + frame_times[:-1]) / 2.0


def _nearest_by_midpoints(midpoints: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.searchsorted(midpoints, times, side="left")  # ties (a time on a midpoint) go to the earlier frame


def nearest_frame_indices(frame_times: Sequence[float] | np.ndarray, times: Sequence[float] | np.ndarray) -> np.ndarray:
    """Index of the frame (of increasing ``frame_times``, s) that each of ``times`` reads.

    The rule of the cache and of :func:`clap_bench.clips.decode.decode_frames_at`: the frame
    nearest the time, ties to the earlier frame, the first frame before it, the last after it.
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    return _nearest_by_midpoints(_midpoints(frame_times), times.reshape(-1)).reshape(times.shape)


class FrameCache:
    """Frames of whole videos at one size, decoded once into ``root``."""

    def __init__(self, root: PathLike, size: Tuple[int, int], max_bytes: Optional[int] = None,
                 resize_filter: str = "swscale"):
        """``size``: (height, width) of the stored frames (the profile's ``clips.resize``);
        ``resize_filter``: how they are scaled to it (``clips.resize_filter``)."""
        self.root = Path(root).expanduser()
        self.size = (int(size[0]), int(size[1]))
        self.resize_filter = check_resize_filter(resize_filter)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._open: dict = {}  # key -> (frames memmap, midpoints, last_t, declared, frame_seconds)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}  # DataLoader workers map the files themselves (a memmap would be copied)
        return state

    # ------------------------------------------------------------------ keys and files
    def key(self, path: PathLike) -> str:
        path = Path(path).resolve()
        st = path.stat()
        ident = [FORMAT, str(path), st.st_size, st.st_mtime_ns, self.size]
        if self.resize_filter != "swscale":  # swscale entries keep the keys they had before the filter was a choice
            ident.append(self.resize_filter)
        blob = json.dumps(ident)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _files(self, key: str) -> Tuple[Path, Path]:
        return self.root / f"{key}.frames.npy", self.root / f"{key}.meta.json"

    # ------------------------------------------------------------------ public
    def frames_at(self, path: PathLike, times: np.ndarray) -> np.ndarray:
        """The frames nearest ``times`` (any shape), uint8 ``(*times.shape, H, W, 3)``."""
        path = Path(path)
        if not path.is_file():
            _open(path, 1)  # raises the decoder's own error (missing, directory, empty)
        key = self.key(path)
        entry = self._open.get(key) or self._load(key)
        if entry is None:
            self.misses += 1
            self._build(path, key)
            entry = self._load(key)
            if entry is None:
                raise VideoDecodeError(path, f"frame cache entry {self._files(key)[0]} unreadable right after writing it")
        else:
            self.hits += 1
        frames, mid, last_t, declared, frame_seconds = entry
        times = np.asarray(times, dtype=np.float64)
        flat = times.reshape(-1)
        if flat.size and flat.max() > last_t and declared > 0 and last_t + max(1.0, 3 * frame_seconds) < declared:
            raise VideoDecodeError(path, f"truncated: frames stop at {last_t:.2f}s but the container declares {declared:.2f}s")
        index = _nearest_by_midpoints(mid, flat)
        out = np.asarray(frames[index])
        return out.reshape(times.shape + out.shape[1:])

    def clips(self, path: PathLike, starts: Sequence[float] | np.ndarray, frames: int, fps: float) -> np.ndarray:
        """Clips starting at ``starts`` (s): uint8 ``(K, frames, H, W, 3)``, as ``decode_clips`` gives."""
        return self.frames_at(path, clip_frame_times(starts, frames, fps))

    # ------------------------------------------------------------------ entries
    def _load(self, key: str):
        frames_file, meta_file = self._files(key)
        if not (frames_file.exists() and meta_file.exists()):
            return None
        try:
            meta = json.loads(meta_file.read_text())
            frames = np.load(frames_file, mmap_mode="r")
            times = np.asarray(meta["times"], dtype=np.float64)
            if frames.shape[0] != len(times) or tuple(frames.shape[1:3]) != self.size or len(times) == 0:
                raise ValueError(f"shape {frames.shape} does not match {len(times)} frames of {self.size}")
            if meta.get("resize_filter", "swscale") != self.resize_filter:
                raise ValueError(f"made with resize filter {meta.get('resize_filter', 'swscale')!r}, not {self.resize_filter!r}")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            log.warning("frame cache entry %s is unreadable (%s); decoding the video again", frames_file, e)
            for f in (frames_file, meta_file):
                f.unlink(missing_ok=True)
            return None
        os.utime(meta_file)  # least-recently-used order for the size bound
        entry = (frames, _midpoints(times), float(times[-1]), float(meta["declared"]), float(meta["frame_seconds"]))
        self._open[key] = entry
        return entry

    def _build(self, path: Path, key: str) -> None:
        container, stream = _open(path, 1)
        try:
            time_base, zero_pts, frame_seconds = _stream_timing(stream)
            if time_base <= 0:
                raise VideoDecodeError(path, "video stream has no time base")
            declared = _declared_duration(container, stream, time_base)
            convert = _Converter(self.size, 1, self.resize_filter)
            times, images = [], []
            prev_t = None
            try:
                for frame in container.decode(stream):
                    t = None if frame.pts is None else (frame.pts - zero_pts) * time_base
                    if t is None:  # no timestamp: assume it follows the previous frame at the nominal rate
                        t = 0.0 if prev_t is None else prev_t + frame_seconds
                    if prev_t is not None and t <= prev_t:
                        continue  # repeated or out-of-order timestamp: keep the first frame seen for it
                    times.append(t)
                    images.append(convert(frame))
                    prev_t = t
            except Exception as e:  # FFmpeg errors on corrupt data
                import av

                if isinstance(e, av.error.FFmpegError):
                    raise VideoDecodeError(path, f"corrupt video data after {prev_t or 0.0:.2f}s ({e})") from None
                raise
        finally:
            container.close()
        if not images:
            raise VideoDecodeError(path, "no frames could be decoded")
        frames = np.stack(images)
        self._make_room(frames.nbytes)
        self.root.mkdir(parents=True, exist_ok=True)
        frames_file, meta_file = self._files(key)
        tag = f".tmp-{os.getpid()}"
        tmp_frames = frames_file.with_name(frames_file.name + tag)
        with open(tmp_frames, "wb") as f:
            np.save(f, frames)
        tmp_meta = meta_file.with_name(meta_file.name + tag)
        tmp_meta.write_text(json.dumps({"video": str(path.resolve()), "times": times, "declared": declared,
                                        "frame_seconds": frame_seconds, "size": self.size,
                                        **({} if self.resize_filter == "swscale" else {"resize_filter": self.resize_filter})}))
        os.replace(tmp_frames, frames_file)  # frames first: an entry counts only once its meta exists
        os.replace(tmp_meta, meta_file)

    def _make_room(self, incoming: int) -> None:
        """Remove least recently used entries until ``incoming`` more bytes fit under ``max_bytes``."""
        if self.max_bytes is None or not self.root.is_dir():
            return
        metas = sorted(self.root.glob("*.meta.json"), key=lambda p: p.stat().st_mtime)
        sizes = {m: (m.with_name(m.name.replace(".meta.json", ".frames.npy"))) for m in metas}
        total = sum(f.stat().st_size for f in sizes.values() if f.exists())
        for meta in metas:
            if total + incoming <= self.max_bytes:
                break
            frames_file = sizes[meta]
            freed = frames_file.stat().st_size if frames_file.exists() else 0
            meta.unlink(missing_ok=True)
            frames_file.unlink(missing_ok=True)
            self._open = {k: v for k, v in self._open.items() if not str(frames_file).startswith(str(self.root / k))}
            total -= freed
        if total + incoming > self.max_bytes:
            log.warning("frame cache %s: a video of %.1f MB does not fit under the %.1f GB bound; cached anyway",
                        self.root, incoming / 1e6, self.max_bytes / 1e9)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("*.frames.npy")) if self.root.is_dir() else 0


def frame_cache_for(profile) -> Optional[FrameCache]:
    """The profile's frame cache (``data.frame_cache``), or None when videos are decoded for every clip."""
    if not profile.data.frame_cache:
        return None
    size = (int(profile.clips.resize[0]), int(profile.clips.resize[1]))
    root = Path(profile.data.cache_dir).expanduser() / "frames" / f"{size[0]}x{size[1]}"
    return FrameCache(root, size, max_bytes=int(profile.data.frame_cache_max_gb * 1e9),
                      resize_filter=profile.clips.resize_filter)
