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
temporary name (``.tmp-<host>-<pid>``) and renamed into place (concurrent writers of one entry
are harmless: the last rename wins and both wrote the same bytes). Temporary files a crashed
writer left are deleted by the next writer: those of a process no longer alive on this host, and
any older than ``STALE_TMP_SECONDS``. An entry that cannot be read (a crash, a full disk) is
rebuilt; one another process removed meanwhile is a miss. ``max_bytes`` bounds the folder,
temporary files included: the least recently used entries are removed first (a hit marks an
entry used, at most once per ``touch_every`` seconds per process).
Real datasets are far too large for this (ActivityNet is thousands of hours); the ``paper``
profile keeps it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
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
STALE_TMP_SECONDS = 3600.0  # a temporary file this old is a crashed writer's, whoever wrote it


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_stale_tmp(path: Path, now: float) -> bool:
    """A temporary entry file no live writer will rename: its writer's process (on this host) is
    gone, or it is older than ``STALE_TMP_SECONDS``."""
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_TMP_SECONDS:
        return True
    tag = path.name.rsplit(".tmp-", 1)[-1]
    host, _, pid = tag.rpartition("-")
    return host == _host() and pid.isdigit() and not _pid_alive(int(pid))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed by another process meanwhile
        return 0


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
        self.touch_every = 60.0  # seconds between two recency marks of one entry by this process
        self._open: dict = {}  # key -> (frames memmap, midpoints, last_t, declared, frame_seconds)
        self._touched: dict = {}  # key -> time.monotonic() of this process's last recency mark

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}  # DataLoader workers map the files themselves (a memmap would be copied)
        state["_touched"] = {}
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
        entry = self._open.get(key)
        if entry is not None and not self._touch(key):
            entry = None  # another process removed it: a miss
        entry = entry or self._load(key)
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
    def _touch(self, key: str, force: bool = False) -> bool:
        """Mark an entry used (its meta file's mtime orders the size bound's evictions), at most
        once per ``touch_every`` seconds; False when the entry no longer exists."""
        now = time.monotonic()
        if not force and now - self._touched.get(key, -float("inf")) < self.touch_every:
            return True
        try:
            os.utime(self._files(key)[1])
        except FileNotFoundError:
            self._open.pop(key, None)
            self._touched.pop(key, None)
            return False
        self._touched[key] = now
        return True

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
        except FileNotFoundError:  # removed by another process since the check: a miss
            return None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            log.warning("frame cache entry %s is unreadable (%s); decoding the video again", frames_file, e)
            for f in (frames_file, meta_file):
                f.unlink(missing_ok=True)
            return None
        entry = (frames, _midpoints(times), float(times[-1]), float(meta["declared"]), float(meta["frame_seconds"]))
        self._open[key] = entry
        if not self._touch(key, force=True):  # least-recently-used order for the size bound
            return None
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
        self._remove_stale_tmp()
        self._make_room(frames.nbytes)
        self.root.mkdir(parents=True, exist_ok=True)
        frames_file, meta_file = self._files(key)
        tag = f".tmp-{_host()}-{os.getpid()}"
        tmp_frames = frames_file.with_name(frames_file.name + tag)
        with open(tmp_frames, "wb") as f:
            np.save(f, frames)
        tmp_meta = meta_file.with_name(meta_file.name + tag)
        tmp_meta.write_text(json.dumps({"video": str(path.resolve()), "times": times, "declared": declared,
                                        "frame_seconds": frame_seconds, "size": self.size,
                                        **({} if self.resize_filter == "swscale" else {"resize_filter": self.resize_filter})}))
        os.replace(tmp_frames, frames_file)  # frames first: an entry counts only once its meta exists
        os.replace(tmp_meta, meta_file)

    def _tmp_files(self) -> list:
        return sorted(self.root.glob("*.tmp-*")) if self.root.is_dir() else []

    def _remove_stale_tmp(self) -> None:
        """Delete the temporary files of writers that crashed between writing and renaming."""
        now = time.time()
        for tmp in self._tmp_files():
            if _is_stale_tmp(tmp, now):
                log.info("frame cache: removing %s, left by a writer that did not finish", tmp)
                tmp.unlink(missing_ok=True)

    def _make_room(self, incoming: int) -> None:
        """Remove least recently used entries until ``incoming`` more bytes fit under ``max_bytes``
        (temporary files of writers at work count, but are not removed)."""
        if self.max_bytes is None or not self.root.is_dir():
            return

        def used(meta: Path) -> float:
            try:
                return meta.stat().st_mtime
            except FileNotFoundError:
                return -1.0

        metas = sorted(self.root.glob("*.meta.json"), key=used)
        sizes = {m: (m.with_name(m.name.replace(".meta.json", ".frames.npy"))) for m in metas}
        total = sum(_size(f) for f in sizes.values()) + sum(_size(t) for t in self._tmp_files())
        for meta in metas:
            if total + incoming <= self.max_bytes:
                break
            frames_file = sizes[meta]
            freed = _size(frames_file)
            meta.unlink(missing_ok=True)
            frames_file.unlink(missing_ok=True)
            self._open = {k: v for k, v in self._open.items() if not str(frames_file).startswith(str(self.root / k))}
            total -= freed
        if total + incoming > self.max_bytes:
            log.warning("frame cache %s: a video of %.1f MB does not fit under the %.1f GB bound; cached anyway",
                        self.root, incoming / 1e6, self.max_bytes / 1e9)

    def disk_bytes(self) -> int:
        """Bytes of the stored frames, temporary files included."""
        if not self.root.is_dir():
            return 0
        return sum(_size(f) for f in self.root.glob("*.frames.npy")) + sum(_size(t) for t in self._tmp_files())


def frame_cache_for(profile) -> Optional[FrameCache]:
    """The profile's frame cache (``data.frame_cache``), or None when videos are decoded for every clip."""
    if not profile.data.frame_cache:
        return None
    size = (int(profile.clips.resize[0]), int(profile.clips.resize[1]))
    root = Path(profile.data.cache_dir).expanduser() / "frames" / f"{size[0]}x{size[1]}"
    return FrameCache(root, size, max_bytes=int(profile.data.frame_cache_max_gb * 1e9),
                      resize_filter=profile.clips.resize_filter)
