"""The one internal annotation schema every reader produces.

A video has an id, a duration in seconds, an fps when the source knows it, a subset
("training", "validation", "testing", ...), action segments (label ``None`` marks background)
and sentences with times in seconds. Everything downstream (clip sampling, heads, scorers)
reads only this schema, never a source format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple


class AnnotationError(ValueError):
    """A malformed annotation file. The message names the file, the line or key, and what was expected."""

    def __init__(self, path: Path | str, where: str, problem: str):
        self.path = str(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}")


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    label: Optional[str]  # None: background ("no action")

    @property
    def is_foreground(self) -> bool:
        return self.label is not None

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Sentence:
    start: float
    end: float
    text: str


@dataclass
class Video:
    id: str
    duration: float
    subset: str
    fps: Optional[float] = None
    num_frames: Optional[int] = None
    filename: Optional[str] = None  # file name of the video, relative to the dataset's video folder
    segments: List[Segment] = field(default_factory=list)
    sentences: List[Sentence] = field(default_factory=list)

    @property
    def actions(self) -> List[Segment]:
        return [s for s in self.segments if s.is_foreground]


@dataclass(frozen=True)
class VideoTally:
    """A note that counts things of single videos (segments past a video's end, queries dropped):
    its text is ``before`` + the count + ``after``, the count the sum of ``per_video``'s
    ``(video id, count)`` pairs. ``dropped``: the things counted were dropped, so the count is in
    the set's ``dropped`` too. Kept per video so that a part of a set counts only its own videos."""

    before: str
    after: str
    per_video: Tuple[Tuple[str, int], ...]
    dropped: bool = False

    @property
    def count(self) -> int:
        return sum(n for _, n in self.per_video)

    @property
    def text(self) -> str:
        return f"{self.before}{self.count}{self.after}"

    def of(self, video_ids) -> "VideoTally":
        """The tally of the videos ``video_ids`` only."""
        return replace(self, per_video=tuple((v, n) for v, n in self.per_video if v in video_ids))


@dataclass(frozen=True)
class SubsetNotes:
    """The part of an ``AnnotationSet``'s ``dropped`` and ``notes`` that one subset's videos caused.

    ``tallies``: those of ``notes`` that count per video (each one's ``text`` is one of ``notes``,
    and a dropping tally's count is part of ``dropped``)."""

    dropped: int = 0
    notes: Tuple[str, ...] = ()
    tallies: Tuple[VideoTally, ...] = ()


def subset_notes_of(subset: str, tallies: Iterable[VideoTally]) -> Dict[str, SubsetNotes]:
    """``AnnotationSet.subset_notes`` of one subset whose notes are all ``tallies`` (those counting something)."""
    tallies = tuple(t for t in tallies if t.count)
    if not tallies:
        return {}
    return {subset: SubsetNotes(sum(t.count for t in tallies if t.dropped), tuple(t.text for t in tallies), tallies)}


def join_subset_notes(parts: Iterable[Dict[str, SubsetNotes]]) -> Dict[str, SubsetNotes]:
    """``subset_notes`` of several sets as one (drops summed, notes and tallies in order)."""
    out: Dict[str, SubsetNotes] = {}
    for part in parts:
        for name, own in part.items():
            seen = out.get(name, SubsetNotes())
            out[name] = SubsetNotes(seen.dropped + own.dropped, seen.notes + own.notes, seen.tallies + own.tallies)
    return out


@dataclass
class AnnotationSet:
    """Videos of one dataset as read from one or more files of one format."""

    format: str
    source: str
    videos: Dict[str, Video] = field(default_factory=dict)
    classes: List[str] = field(default_factory=list)  # sorted action class names
    dropped: int = 0  # rows/queries dropped by the reader (reason in notes)
    notes: List[str] = field(default_factory=list)
    # True when the format lists background regions itself (TSP csv): a video without background rows
    # then has none (TSP's csv leaves short background out on purpose). False: background is the gaps
    # between actions. Decided per format, never per video.
    lists_background: bool = False
    # Which subset's videos caused which part of ``dropped`` and ``notes`` (that part is counted in
    # them too). The readers fill it, ``merge_sets`` joins it; ``subset()`` leaves out the other
    # subsets' part. Drops and notes not listed here (a caption join's, the data check's) are about
    # the whole set and stay with every part of it.
    subset_notes: Dict[str, SubsetNotes] = field(default_factory=dict)

    def subset(self, *names: str) -> "AnnotationSet":
        """The videos of the subsets ``names``, with their own drops and notes (not the other subsets')."""
        keep = {k: v for k, v in self.videos.items() if v.subset in names}
        return self._part(keep, list(self.classes), kept_subsets=set(names))

    def restrict_classes(self, classes: Iterable[str]) -> "AnnotationSet":
        """Videos whose every action belongs to ``classes`` (a video with any other action is dropped).

        Used for few-shot protocols, where no video of a held-out class may be seen. A subset with no
        video left loses its drops and notes; a subset with some keeps its notes that count per video
        (its ``tallies``) counted over the videos kept, and any other of its own notes whole.
        """
        allowed = set(classes)
        keep = {
            k: v
            for k, v in self.videos.items()
            if v.actions and all(s.label in allowed for s in v.actions)
        }
        return self._part(keep, sorted(allowed & set(self.classes)), kept_subsets={v.subset for v in keep.values()})

    def _part(self, videos: Dict[str, Video], classes: List[str], kept_subsets: set) -> "AnnotationSet":
        """A set of some of these videos, without the drops and notes of the subsets not in ``kept_subsets``,
        and with the kept subsets' per-video notes (``SubsetNotes.tallies``) counting ``videos`` only."""
        dropped, notes = self.dropped, list(self.notes)
        kept_notes: Dict[str, SubsetNotes] = {}
        for name, own in self.subset_notes.items():
            if name not in kept_subsets:
                dropped -= own.dropped
                for note in own.notes:
                    notes.remove(note)
                continue
            own_dropped, own_notes, tallies = own.dropped, list(own.notes), []
            for tally in own.tallies:
                part = tally.of(videos)
                if part.count == tally.count:
                    tallies.append(tally)
                    continue
                if tally.dropped:
                    own_dropped -= tally.count - part.count
                    dropped -= tally.count - part.count
                i, j = notes.index(tally.text), own_notes.index(tally.text)
                if part.count:
                    notes[i] = own_notes[j] = part.text
                    tallies.append(part)
                else:
                    del notes[i], own_notes[j]
            if own_dropped or own_notes:
                kept_notes[name] = SubsetNotes(own_dropped, tuple(own_notes), tuple(tallies))
        return AnnotationSet(self.format, self.source, videos, classes, dropped, notes, self.lists_background, kept_notes)

    @property
    def subsets(self) -> List[str]:
        return sorted({v.subset for v in self.videos.values()})

    def counts(self) -> dict:
        by_subset: Dict[str, dict] = {}
        for v in self.videos.values():
            c = by_subset.setdefault(v.subset, {"videos": 0, "segments": 0, "actions": 0, "sentences": 0})
            c["videos"] += 1
            c["segments"] += len(v.segments)
            c["actions"] += len(v.actions)
            c["sentences"] += len(v.sentences)
        return {
            "format": self.format,
            "source": self.source,
            "videos": len(self.videos),
            "segments": sum(c["segments"] for c in by_subset.values()),
            "actions": sum(c["actions"] for c in by_subset.values()),
            "queries": sum(c["sentences"] for c in by_subset.values()),
            "classes": len(self.classes),
            "subsets": by_subset,
            "dropped": self.dropped,
            "notes": list(self.notes),
        }
