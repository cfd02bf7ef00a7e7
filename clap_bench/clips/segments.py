"""Temporally contiguous foreground (action) and background segments of a video.

Two kinds of sources, told apart per format (``AnnotationSet.lists_background``), never per video:

* Sources that list background themselves (TSP csv: rows with an empty label): their segments
  are used as given, clamped to ``[0, duration]``. A video without background rows has no
  background: TSP's csv leaves short background out on purpose (its shortest background row is
  5.33 s; 2,331 of its 10,024 training videos have none), and TSP trains on the rows as listed.
* Sources that list only actions (ActivityNet JSON, Kinetics-style sets): every annotated
  action is a foreground segment and background is derived from the gaps, i.e. the parts of
  ``[0, duration]`` that no action covers.

Overlapping actions stay separate foreground segments, each with its own label, as TSP's
segment lists keep them: each is a real annotated instance, and a clip in the overlap shows
both. Only the background depends on the overlap (it is the complement of their union).
Exact duplicates (same label, same times: the published TSP csvs repeat 30 training and 19
validation action rows) are kept once with ``duplicates="drop"``, or each as listed with
``"keep"``, as TSP's dataset keeps every csv row (``pretrain.duplicate_segments``).
"""

from __future__ import annotations

from typing import List

from clap_bench.data.schema import Segment, Video

DUPLICATE_SEGMENTS = ("drop", "keep")  # TrainConfig.duplicate_segments


def _clamped(segment: Segment, duration: float) -> Segment:
    return Segment(min(max(segment.start, 0.0), duration), min(max(segment.end, 0.0), duration), segment.label)


def background_gaps(actions: List[Segment], duration: float) -> List[Segment]:
    """The parts of ``[0, duration]`` no action covers, as background segments (label None)."""
    gaps: List[Segment] = []
    cursor = 0.0
    for action in sorted(actions, key=lambda s: (s.start, s.end)):
        if action.start > cursor:
            gaps.append(Segment(cursor, action.start, None))
        cursor = max(cursor, action.end)
    if duration > cursor:
        gaps.append(Segment(cursor, duration, None))
    return gaps


def contiguous_segments(
    video: Video, min_length: float = 0.0, min_action_length: float = 0.0, lists_background: bool = False,
    duplicates: str = "drop",
) -> List[Segment]:
    """Foreground and background segments of the video, sorted by (start, end).

    ``lists_background``: the video's source lists background itself (``AnnotationSet.lists_background``),
    so its background rows are the background, none when it has none; otherwise background is the
    gaps between actions, and a listed background segment is an error (the two rules would disagree).

    Every segment is clamped to ``[0, video.duration]``; empty ones are dropped. ``min_length``
    (s) drops background segments shorter than it (e.g. slivers between two adjacent
    actions). Actions are dropped only when shorter than ``min_action_length`` (default 0: never,
    however short: clip sampling centres a clip on them); the time they cover does not become
    background. TSP drops every segment shorter than one clip (``pretrain.short_segments: drop``).
    ``duplicates``: "drop" keeps one of segments with the same times and label, "keep" every one
    (TSP: each csv row is a segment; ``pretrain.duplicate_segments``).
    """
    if duplicates not in DUPLICATE_SEGMENTS:
        raise ValueError(f"duplicates: expected one of {', '.join(DUPLICATE_SEGMENTS)}, got {duplicates!r}")
    if video.duration <= 0:
        return []
    duration = float(video.duration)
    clamped = [_clamped(s, duration) for s in video.segments]
    clamped = [s for s in clamped if s.end > s.start]
    once = (lambda segments: list(dict.fromkeys(segments))) if duplicates == "drop" else list  # de-duplicate, keep order
    actions = once(s for s in clamped if s.is_foreground)
    if lists_background:
        background = once(s for s in clamped if not s.is_foreground)
    elif any(not s.is_foreground for s in video.segments):
        raise ValueError(
            f"video {video.id} has background segments but its source is read as listing none "
            "(lists_background=False); expected the AnnotationSet's lists_background for a source that lists background"
        )
    else:
        background = background_gaps(actions, duration)
    background = [s for s in background if s.length >= min_length and s.length > 0]
    actions = [s for s in actions if s.length >= min_action_length]
    return sorted(actions + background, key=lambda s: (s.start, s.end, s.label is None, s.label or ""))
