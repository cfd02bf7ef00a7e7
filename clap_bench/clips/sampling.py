"""Where clips start: 5 per segment for pre-training, every clip at a stride for extraction.

TSP protocol (paper §4.1): a segment gives ``n`` clips (5), at random positions when training
and evenly spaced when evaluating. Every clip lies inside the video: a segment shorter than a
clip gets clips centred on it (then pushed inside ``[0, video_duration]``), and a clip that
would run past the end of the video starts early enough to end with it. When even the video is
shorter than one clip, clips start at 0 and the decoder repeats the last frame.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def clip_seconds(frames: int, fps: float) -> float:
    """Time a clip of ``frames`` frames at ``fps`` spans (16 at 15 fps: 1.0667 s)."""
    if frames < 1 or fps <= 0:
        raise ValueError(f"need frames >= 1 and fps > 0, got frames={frames}, fps={fps}")
    return frames / float(fps)


def start_range(
    seg_start: float, seg_end: float, clip_seconds: float, video_duration: Optional[float] = None
) -> tuple[float, float]:
    """The interval ``[lo, hi]`` of allowed clip starts for a segment, clamped as described above."""
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    seg_start, seg_end = float(seg_start), float(seg_end)
    if seg_end < seg_start:
        raise ValueError(f"segment ends before it starts: ({seg_start}, {seg_end})")
    if seg_end - seg_start >= clip_seconds:
        lo, hi = seg_start, seg_end - clip_seconds
    else:  # shorter than a clip: the one clip centred on the segment
        lo = hi = 0.5 * (seg_start + seg_end) - 0.5 * clip_seconds
    last_start = np.inf if video_duration is None else max(0.0, float(video_duration) - clip_seconds)
    lo = min(max(lo, 0.0), last_start)
    hi = min(max(hi, 0.0), last_start)
    return lo, max(lo, hi)


def sample_clip_starts(
    seg_start: float,
    seg_end: float,
    clip_seconds: float,
    n: int = 5,
    train: bool = False,
    rng: Optional[np.random.Generator] = None,
    video_duration: Optional[float] = None,
) -> np.ndarray:
    """``n`` clip start times (s) inside a segment: uniform random (train) or evenly spaced (eval).

    Evenly spaced: the first at the earliest start, the last at the latest (TSP); one clip is centred.

    Random starts are returned sorted (the clips of a segment are an unordered set; sorted
    starts let the decoder go through them in one forward pass). ``rng`` is required when
    training, so that every draw comes from a stream the caller seeded.
    """
    if n < 1:
        raise ValueError(f"need at least one clip per segment, got n={n}")
    lo, hi = start_range(seg_start, seg_end, clip_seconds, video_duration)
    if train:
        if rng is None:
            raise ValueError("sample_clip_starts(train=True) needs an rng (numpy.random.Generator)")
        return np.sort(rng.uniform(lo, hi, size=n)) if hi > lo else np.full(n, lo)
    if n == 1:
        return np.array([(lo + hi) / 2])  # one evenly spaced clip is the centred one, not the first
    return np.linspace(lo, hi, n)


def frame_grid_duration(duration: float, fps: Optional[float] = None, num_frames: Optional[int] = None) -> float:
    """A video's duration as its source frames give it (``extract.snap_duration_to_frames``).

    TSP lays the extraction grid over the video's real frame count. ``num_frames / fps`` when both
    are known; with ``fps`` alone, ``duration`` moved to the nearest whole number of source frames
    (an annotation that rounds lengths to 0.01 s is within half a frame of it); with neither,
    ``duration`` as it is.
    """
    duration = float(duration)
    if fps is None or not fps > 0:
        return duration
    fps = float(fps)
    if num_frames is not None and num_frames > 0:
        return int(num_frames) / fps
    return round(duration * fps) / fps


def extraction_clip_starts(
    duration: float, clip_seconds: float, stride_seconds: float, last_frame: Optional[float] = None
) -> np.ndarray:
    """Starts of every clip of a video at a fixed stride: 0, stride, 2*stride, ...

    Which clip is the last (``extract.last_clip``): with ``last_frame`` None (``span``), the
    last one whose whole span ``[start, start + clip_seconds]`` lies inside the video, so a
    video yields ``floor((duration - clip) / stride) + 1`` features. With ``last_frame``, the
    offset of a clip's last frame from its start (``(frames - 1) / fps``; ``frames``), the last
    one whose frames are all shown before the video ends (``start + last_frame < duration``):
    TSP's ``EvalVideoDataset`` when the video's frame rate is a multiple of the clip's, where a
    clip whose last frame is the video's last frame counts even though its span runs one source
    frame past the end. Either way a tail shorter than the stride has no clip of its own, and a
    video shorter than one clip still gets one clip at 0.
    """
    if stride_seconds <= 0:
        raise ValueError(f"stride must be positive, got {stride_seconds}")
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    if duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if last_frame is None:
        last_start = max(0.0, float(duration) - clip_seconds)
        count = int(np.floor(last_start / stride_seconds + 1e-9)) + 1
    else:
        if not 0 <= last_frame < clip_seconds:
            raise ValueError(f"last_frame must lie in [0, clip_seconds={clip_seconds}), got {last_frame}")
        # starts j * stride with j * stride + last_frame < duration (the 1e-6 absorbs rounding of
        # durations written as frames / fps)
        count = max(1, int(np.ceil((float(duration) - last_frame) / stride_seconds - 1e-6)))
    return np.arange(count, dtype=np.float64) * float(stride_seconds)
