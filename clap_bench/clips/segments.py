"""Temporally contiguous foreground (action) and background segments of a video.

Two kinds of sources:

* Sources that list background themselves (TSP csv: rows with an empty label): their segments
  are used as given, clamped to ``[0, duration]``.
* Sources that list only actions (ActivityNet JSON, Kinetics-style sets): every annotated
  action is a foreground segment and background is derived from the gaps, i.e. the parts of
  ``[0, duration]`` that no action covers.

Overlapping actions stay separate foreground segments, each with its own label, as TSP's
segment lists keep them: each is a real annotated instance, and a clip in the overlap shows
both. Only the background depends on the overlap (it is the complement of their union).
Exact duplicates (same label, same times) are kept once.
"""

from __future__ import annotations

from typing import List

from clap_bench.data.schema import Segment, Video


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


def contiguous_segments(video: Video, min_length: float = 0.0, min_action_length: float = 0.0) -> List[Segment]:
    """Foreground and background segments covering the video, sorted by (start, end).

    Every segment is clamped to ``[0, video.duration]``; empty ones are dropped. ``min_length``
    (s) drops background segments shorter than it (e.g. slivers between two adjacent
    actions). Actions are dropped only when shorter than ``min_action_length`` (default 0: never,
    however short: clip sampling centres a clip on them); the time they cover does not become
    background. TSP drops every segment shorter than one clip (``pretrain.short_segments: drop``).
    """
    if video.duration <= 0:
        return []
    duration = float(video.duration)
    clamped = [_clamped(s, duration) for s in video.segments]
    clamped = [s for s in clamped if s.end > s.start]
    actions = list(dict.fromkeys(s for s in clamped if s.is_foreground))  # de-duplicate, keep order
    if any(not s.is_foreground for s in video.segments):
        background = list(dict.fromkeys(s for s in clamped if not s.is_foreground))
    else:
        background = background_gaps(actions, duration)
    background = [s for s in background if s.length >= min_length and s.length > 0]
    actions = [s for s in actions if s.length >= min_action_length]
    return sorted(actions + background, key=lambda s: (s.start, s.end, s.label is None, s.label or ""))
