"""Decoding clips from video files with PyAV, by timestamp.

A clip is ``frames`` frames at ``fps`` starting at a time in seconds (16 frames at 15 fps in
the paper, about 1.07 s). Each clip frame is the source frame whose presentation time is
nearest the clip frame's time, so a video of any frame rate is read as it is, without
re-encoding it to a standard rate first.

How the cost is kept down (the figures are in ``benchmarks/clip_loading.py``):

* One decode serves many clips. :func:`decode_clips` seeks once, to the keyframe before the
  earliest clip, and decodes forward through all the clips of a segment;
  :func:`iter_video_clips` reads a whole video in one sequential pass and hands back every
  clip of it, in chunks, so a long video never sits in memory at once.
* Packets are read group of pictures (GOP) by GOP; a GOP that holds no wanted frame is
  dropped before it reaches the decoder, and a GOP is left as soon as its wanted frames are
  out (what a seek to the next clip would save, without the seek). Inside a GOP, the packet
  whose timestamp is nearest each pending time is decoded; frames nobody asked for are
  decoded only when later frames reference them (``skip_frame = NONREF`` for their packets).
  The nearest packet is found among the GOP's buffered packets, not within a fixed window of
  the nominal frame duration, and a seek goes back until it lands on a keyframe before the
  earliest time, so a variable-frame-rate file reads the same frames as the frame cache,
  which decodes every frame.
* Only the wanted frames are converted to RGB, each once, and they are resized in that same
  conversion (one swscale call at the target size, with one reusable scaler: building a new
  scaler for each frame costs more than decoding the frame).

How frames are resized (``resize_filter``, the profile's ``clips.resize_filter``):

* ``swscale``: swscale's BILINEAR in the RGB conversion, to uint8. When downscaling it averages
  over every source pixel under an output pixel (an antialiased, area-like filter).
* ``bilinear``: TSP's ``T.Resize`` (``F.interpolate(..., mode="bilinear",
  align_corners=False)``, no antialiasing) of the full-size RGB frame in float, rounded to the
  nearest uint8 (TSP keeps the float; the rounding moves a value by at most 0.5/255).

A file that cannot be read (missing, empty, corrupt, truncated, without a video stream)
raises :class:`VideoDecodeError` naming the file and the reason; datasets catch it and skip
the item. So does :func:`probe_video` on a stream that declares no frame rate and has too few
timestamped frames to derive one from.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

PathLike = Union[str, Path]
Size = Optional[Tuple[int, int]]  # (height, width); None keeps the source size
RESIZE_FILTERS = ("swscale", "bilinear")


class VideoDecodeError(RuntimeError):
    """A video file that cannot be decoded. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when sent back from a DataLoader worker
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream of a file."""

    duration: float  # seconds; 0.0 when the container does not say
    fps: float  # nominal frame rate: the declared one, else the mean rate of the frames' timestamps
    num_frames: int  # 0 when the container does not say
    width: int
    height: int


def clip_frame_times(starts: Sequence[float] | np.ndarray, frames: int, fps: float) -> np.ndarray:
    """Times (s) of the frames of clips starting at ``starts``: shape ``(len(starts), frames)``."""
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got frames={frames}")
    if fps <= 0:
        raise ValueError(f"clip fps must be positive, got {fps}")
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    return starts[:, None] + np.arange(frames, dtype=np.float64)[None, :] / float(fps)


# --------------------------------------------------------------------------- opening
def _open(path: PathLike, threads: int) -> Tuple["av.container.InputContainer", "av.video.stream.VideoStream"]:
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if path.is_dir():
        raise VideoDecodeError(path, "is a directory, expected a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(path, f"not a readable video container ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream in the file")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    # threads=1: one decoding thread (DataLoader workers supply the parallelism);
    # 0 lets FFmpeg pick, n uses n. Slice threading keeps the per-packet skip decisions exact.
    ctx.thread_count = int(threads)
    ctx.thread_type = "SLICE"
    return container, stream


def _declared_rate(stream) -> float:
    """The frame rate the stream declares (as FFmpeg reads it from the container and codec); 0.0 when none."""
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _stream_timing(stream) -> Tuple[float, int, float]:
    """(seconds per pts unit, pts of time zero, nominal frame duration in seconds).

    Decoding picks frames by their timestamps; the nominal frame duration only sizes its steps
    (how far back a seek starts, when a buffered GOP is decoded early, the slack of the truncation
    check) and dates a frame that carries no timestamp. A stream that declares no rate gets
    1/30 s for these (a frame without a timestamp in such a stream cannot be dated any better);
    :func:`probe_video`, which reports the rate, derives it from the timestamps instead.
    """
    time_base = float(stream.time_base) if stream.time_base else 0.0
    zero_pts = int(stream.start_time) if stream.start_time is not None else 0
    fps = _declared_rate(stream)
    frame_seconds = 1.0 / fps if fps > 0 else 1.0 / 30.0
    return time_base, zero_pts, frame_seconds


def _timestamp_rate(path: PathLike, container, stream, time_base: float) -> float:
    """The mean frame rate of the stream's timestamped packets, read without decoding: one less
    than the number of distinct timestamps over the time from the first to the last (rounding
    each timestamp to the time base would skew a rate taken from neighbouring frames). For a
    stream that declares no rate; ``VideoDecodeError`` when fewer than two packets carry a timestamp."""
    if time_base <= 0:
        raise VideoDecodeError(path, "video stream has no time base")
    stamps = set()
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size > 0:
                stamps.add(int(packet.pts))
    except av.error.FFmpegError as e:
        raise VideoDecodeError(path, f"cannot read packets ({e})") from None
    if len(stamps) < 2:
        raise VideoDecodeError(path, "the video stream declares no frame rate, and none can be derived from "
                                     f"{len(stamps)} timestamped frame(s)")
    return (len(stamps) - 1) / ((max(stamps) - min(stamps)) * time_base)


def _declared_duration(container, stream, time_base: float) -> float:
    if stream.duration is not None and time_base > 0:
        return float(stream.duration) * time_base
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return 0.0


def probe_video(path: PathLike) -> VideoInfo:
    """Duration, nominal fps, frame count and size as declared by the container (no decoding).

    A stream that declares no frame rate gets the mean rate of its frames' timestamps (its packets
    are read for it); one with fewer than two timestamped frames raises ``VideoDecodeError``.
    """
    container, stream = _open(path, threads=1)
    try:
        time_base, _, frame_seconds = _stream_timing(stream)
        declared = _declared_rate(stream) > 0
        return VideoInfo(
            duration=_declared_duration(container, stream, time_base),
            fps=1.0 / frame_seconds if declared else _timestamp_rate(path, container, stream, time_base),
            num_frames=int(stream.frames or 0),
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
        )
    finally:
        container.close()


# --------------------------------------------------------------------------- the core pass
def check_resize_filter(resize_filter: str) -> str:
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter: expected one of {', '.join(RESIZE_FILTERS)}, got {resize_filter!r}")
    return resize_filter


def bilinear_resize(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(h, w, 3)`` by TSP's ``T.Resize``: ``F.interpolate`` bilinear,
    ``align_corners=False``, no antialiasing, in float; rounded to the nearest integer."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False, antialias=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class _Converter:
    """Frame -> uint8 RGB array at the target size, with one reusable swscale context."""

    def __init__(self, size: Size, threads: int = 1, resize_filter: str = "swscale"):
        self.size = size
        self.threads = int(threads)  # swscale threads; 0 lets it pick (costs CPU time on small frames)
        self.resize_filter = check_resize_filter(resize_filter)
        self.reformatter = VideoReformatter()

    def __call__(self, frame: "av.VideoFrame") -> np.ndarray:
        if self.size is None:
            width, height = frame.width, frame.height
        else:
            height, width = int(self.size[0]), int(self.size[1])
        if self.resize_filter == "bilinear":
            rgb = self.reformatter.reformat(frame, format="rgb24", interpolation="BILINEAR", threads=self.threads).to_ndarray()
            return rgb if rgb.shape[:2] == (height, width) else bilinear_resize(rgb, (height, width))
        out = self.reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation="BILINEAR", threads=self.threads
        )
        return out.to_ndarray()


def _seek_before(path: PathLike, container, stream, t0: float) -> Iterator["av.Packet"]:
    """Seek to a keyframe at or before ``t0`` and demux from there (the packets read to check
    where the seek landed come first).

    The first try seeks one nominal frame duration before ``t0``; each time the keyframe it
    lands on lies after ``t0``, the frame before ``t0`` (perhaps the nearest) is in an earlier
    GOP, and the next try goes twice as far back, down to the start. At a variable frame rate
    that frame can lie many nominal frame durations before ``t0``.
    """
    time_base, zero_pts, frame_seconds = _stream_timing(stream)
    back = frame_seconds
    while True:
        target = t0 - back
        try:
            container.seek(zero_pts + int(math.floor(max(target, 0.0) / time_base)), stream=stream, backward=True,
                           any_frame=False)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(path, f"cannot seek to {t0:.2f}s ({e})") from None
        demux = container.demux(stream)
        head: List["av.Packet"] = []
        try:
            for packet in demux:
                head.append(packet)
                if packet.pts is not None or packet.size == 0:
                    break
        except av.error.FFmpegError as e:
            raise VideoDecodeError(path, f"cannot read packets ({e})") from None
        first = head[-1] if head else None
        if first is None or first.pts is None or (first.pts - zero_pts) * time_base <= t0 or target <= 0:
            return itertools.chain(head, demux)
        back *= 2


def _nearest_frames(
    path: PathLike,
    container,
    stream,
    times: np.ndarray,
    convert: Callable[["av.VideoFrame"], np.ndarray],
    seek: bool,
) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(i, rgb)`` for every wanted time ``times[i]`` (sorted, unique), in order of ``i``.

    ``rgb`` is the converted source frame nearest ``times[i]`` (ties go to the earlier frame);
    times before the first frame take the first frame, times after the last take the last.
    Consecutive times that share a source frame share the same array object.
    """
    n = len(times)
    if n == 0:
        return
    time_base, zero_pts, frame_seconds = _stream_timing(stream)
    if time_base <= 0:
        raise VideoDecodeError(path, "video stream has no time base")
    ctx = stream.codec_context

    demuxed: Iterator["av.Packet"] = container.demux(stream)
    if seek and times[0] - frame_seconds > 0:
        demuxed = _seek_before(path, container, stream, float(times[0]))

    def pts_time(pts: Optional[int]) -> Optional[float]:
        return None if pts is None else (pts - zero_pts) * time_base

    def marked(packets: List["av.Packet"], hi: Optional[float]) -> List[bool]:
        """Which of a GOP's packets to decode in full: for each pending time, the packet whose
        time is nearest it (ties to the earlier one), unless the next keyframe (at ``hi``) is
        nearer; packets without a timestamp always."""
        keep = [p.pts is None for p in packets]
        known = sorted((pts_time(p.pts), k) for k, p in enumerate(packets) if p.pts is not None)
        if not known:
            return keep
        cand = np.array([t for t, _ in known] + ([hi] if hi is not None else []), dtype=np.float64)
        which = [k for _, k in known]
        j = state["j"]
        # pending times the GOP can serve: before the next keyframe, or up to just past its last packet
        end = np.searchsorted(times, hi, side="left") if hi is not None else np.searchsorted(times, cand[-1], side="right") + 1
        pending = times[j : max(j, min(int(end), n))]
        if len(pending):
            nearest = np.searchsorted((cand[1:] + cand[:-1]) / 2.0, pending, side="left")
            for c in np.unique(nearest):
                if c < len(which):
                    keep[which[c]] = True
        return keep

    def gop_has_wanted(hi: Optional[float]) -> bool:
        """Whether a GOP ending at ``hi`` (the next keyframe's time) can serve a pending time.

        Times are assigned in order, so the pending ones are ``times[j:]``; a GOP is needed as
        soon as the earliest pending time lies before its end (its frames are the nearest
        candidates for it). Frames of a closed GOP all lie before the next keyframe.
        """
        j = state["j"]
        return j < n and (hi is None or times[j] < hi)

    state = {"j": 0, "prev_t": None, "prev_frame": None, "prev_rgb": None, "last_t": None}

    def rgb_of_prev() -> np.ndarray:
        if state["prev_rgb"] is None:
            state["prev_rgb"] = convert(state["prev_frame"])
        return state["prev_rgb"]

    def on_frame(frame) -> Iterator[Tuple[int, np.ndarray]]:
        t = pts_time(frame.pts)
        if t is None:  # no timestamp: assume it follows the previous frame at the nominal rate
            t = 0.0 if state["prev_t"] is None else state["prev_t"] + frame_seconds
        if state["prev_t"] is not None:
            if t <= state["prev_t"]:
                return  # repeated or out-of-order timestamp: keep the first frame seen for it
            midpoint = 0.5 * (state["prev_t"] + t)
            j = state["j"]
            while j < n and times[j] <= midpoint:
                yield j, rgb_of_prev()
                j += 1
            state["j"] = j
        state["prev_t"], state["prev_frame"], state["prev_rgb"] = t, frame, None
        state["last_t"] = t

    def decode_packets(packets: List["av.Packet"], hi: Optional[float] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """Decode a GOP's packets; ``hi``: the next keyframe's time, when known."""
        keep = marked(packets, hi)
        for packet, full in zip(packets, keep):
            if hi is not None and not gop_has_wanted(hi):
                # Every wanted time before the next keyframe has its frame: the rest of this
                # GOP serves nobody (frames still in the decoder's delay come out later).
                return
            ctx.skip_frame = "DEFAULT" if (packet.size == 0 or full) else "NONREF"
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                where = pts_time(packet.pts)
                at = f" at {where:.2f}s" if where is not None else ""
                raise VideoDecodeError(path, f"corrupt video data{at} ({e})") from None
            for frame in frames:
                yield from on_frame(frame)
                if state["j"] >= n:
                    return

    gop: List["av.Packet"] = []
    reached_end = False
    try:
        for packet in demuxed:
            if packet.size == 0:  # end of stream: decode what is left, then flush the decoder
                if gop and gop_has_wanted(None):
                    yield from decode_packets(gop)
                gop = []
                if state["j"] < n:
                    yield from decode_packets([packet])
                reached_end = True
                break
            t = pts_time(packet.pts)
            if packet.is_keyframe and gop:
                if gop_has_wanted(t):
                    yield from decode_packets(gop, hi=t)
                    if state["j"] >= n:
                        return
                gop = []
            gop.append(packet)
            # A GOP that already reaches past the last wanted time need not wait for its end.
            if t is not None and t > times[-1] + frame_seconds and gop_has_wanted(None):
                yield from decode_packets(gop)
                gop = []
                if state["j"] >= n:
                    return
        else:  # the demuxer ended without an empty flush packet: flush the decoder ourselves
            reached_end = True
            if gop and gop_has_wanted(None):
                yield from decode_packets(gop)
            if state["j"] < n:
                ctx.skip_frame = "DEFAULT"
                for frame in ctx.decode(None):
                    yield from on_frame(frame)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(path, f"cannot read packets ({e})") from None

    if state["prev_frame"] is None:
        raise VideoDecodeError(path, "no frames could be decoded")
    if state["j"] < n and reached_end:
        declared = _declared_duration(container, stream, time_base)
        last_t = state["last_t"]
        if declared > 0 and last_t is not None and last_t + max(1.0, 3 * frame_seconds) < declared and times[-1] > last_t:
            raise VideoDecodeError(
                path, f"truncated: frames stop at {last_t:.2f}s but the container declares {declared:.2f}s"
            )
    # Times after the last frame (a clip running past the end) take the last frame.
    for j in range(state["j"], n):
        yield j, rgb_of_prev()


# --------------------------------------------------------------------------- public API
def decode_frames_at(
    path: PathLike, times: Sequence[float] | np.ndarray, size: Size = None, threads: int = 1,
    resize_filter: str = "swscale",
) -> np.ndarray:
    """The source frames nearest ``times`` (any order, any shape), as uint8 ``(*times.shape, H, W, 3)``.

    One seek to the keyframe before the earliest time, then one forward pass. ``resize_filter``:
    how frames are scaled to ``size`` (``swscale`` | ``bilinear``, see the module docstring).
    """
    times = np.asarray(times, dtype=np.float64)
    flat = times.reshape(-1)
    if flat.size == 0:
        h, w = size if size is not None else (0, 0)
        return np.zeros(times.shape + (h, w, 3), np.uint8)
    unique, inverse = np.unique(flat, return_inverse=True)
    # positions[bounds[i]:bounds[i + 1]]: the places in the output that take unique time i
    positions = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[positions], np.arange(len(unique) + 1))
    out: Optional[np.ndarray] = None
    convert = _Converter(size, threads, resize_filter)
    container, stream = _open(path, threads)
    try:
        for i, rgb in _nearest_frames(path, container, stream, unique, convert, seek=True):
            if out is None:
                out = np.empty((flat.size,) + rgb.shape, np.uint8)
            out[positions[bounds[i] : bounds[i + 1]]] = rgb
    finally:
        container.close()
    return out.reshape(times.shape + out.shape[1:])


def decode_clips(
    path: PathLike,
    starts: Sequence[float] | np.ndarray,
    frames: int,
    fps: float,
    size: Size = None,
    threads: int = 1,
    resize_filter: str = "swscale",
) -> np.ndarray:
    """Clips starting at ``starts`` (s), decoded together: uint8 ``(K, frames, H, W, 3)``.

    The clips of one segment share one seek and one forward pass; GOPs between clips that
    hold none of their frames are skipped without being decoded.
    """
    return decode_frames_at(path, clip_frame_times(starts, frames, fps), size=size, threads=threads,
                            resize_filter=resize_filter)


def iter_video_clips(
    path: PathLike,
    starts: Sequence[float] | np.ndarray,
    frames: int,
    fps: float,
    size: Size = None,
    chunk: int = 64,
    threads: int = 1,
    resize_filter: str = "swscale",
) -> Iterator[Tuple[int, np.ndarray]]:
    """Every clip of a video in ONE sequential pass, ``chunk`` clips at a time.

    ``starts`` must be ascending (e.g. :func:`clap_bench.clips.sampling.extraction_clip_starts`).
    Yields ``(index of the first clip in the chunk, uint8 (c, frames, H, W, 3))``; frames are
    kept only until the clips that use them have been handed out.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    if len(starts) == 0:
        return
    if np.any(np.diff(starts) < 0):
        raise ValueError("iter_video_clips needs ascending clip starts")
    times = clip_frame_times(starts, frames, fps)  # (N, T)
    unique, inverse = np.unique(times.reshape(-1), return_inverse=True)
    inverse = inverse.reshape(times.shape)
    last_needed = inverse.max(axis=1)  # per clip: the last wanted-time index it uses
    first_needed = inverse.min(axis=1)
    convert = _Converter(size, threads, resize_filter)
    container, stream = _open(path, threads)
    try:
        held: dict = {}
        c0 = 0
        num = len(starts)
        for i, rgb in _nearest_frames(path, container, stream, unique, convert, seek=True):
            held[i] = rgb
            c1 = min(c0 + chunk, num)
            while c0 < num and last_needed[c1 - 1] <= i:
                first_image = held[int(inverse[c0, 0])]
                block = np.empty((c1 - c0, inverse.shape[1]) + first_image.shape, np.uint8)
                for r, row in enumerate(inverse[c0:c1]):
                    for t, k in enumerate(row):
                        block[r, t] = held[k]
                yield c0, block
                c0 = c1
                if c0 < num:
                    keep_from = int(first_needed[c0:].min())
                    for k in [k for k in held if k < keep_from]:
                        del held[k]
                c1 = min(c0 + chunk, num)
    finally:
        container.close()
