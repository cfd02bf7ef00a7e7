"""The one internal annotation schema every reader produces.

A video has an id, a duration in seconds, an fps when the source knows it, a subset
("training", "validation", "testing", ...), action segments (label ``None`` marks background)
and sentences with times in seconds. Everything downstream (clip sampling, heads, scorers)
reads only this schema, never a source format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class SubsetNotes:
    """The part of an ``AnnotationSet``'s ``dropped`` and ``notes`` that one subset's videos caused."""

    dropped: int = 0
    notes: Tuple[str, ...] = ()


def join_subset_notes(parts: Iterable[Dict[str, SubsetNotes]]) -> Dict[str, SubsetNotes]:
    """``subset_notes`` of several sets as one (drops summed, notes in order)."""
    out: Dict[str, SubsetNotes] = {}
    for part in parts:
        for name, own in part.items():
            seen = out.get(name, SubsetNotes())
            out[name] = SubsetNotes(seen.dropped + own.dropped, seen.notes + own.notes)
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
        video left loses its drops and notes; a subset with some keeps all of its own (they are
        counted per subset, not per video).
        """
        allowed = set(classes)
        keep = {
            k: v
            for k, v in self.videos.items()
            if v.actions and all(s.label in allowed for s in v.actions)
        }
        return self._part(keep, sorted(allowed & set(self.classes)), kept_subsets={v.subset for v in keep.values()})

    def _part(self, videos: Dict[str, Video], classes: List[str], kept_subsets: set) -> "AnnotationSet":
        """A set of some of these videos, without the drops and notes of the subsets not in ``kept_subsets``."""
        dropped, notes = self.dropped, list(self.notes)
        for name, own in self.subset_notes.items():
            if name not in kept_subsets:
                dropped -= own.dropped
                for note in own.notes:
                    notes.remove(note)
        kept_notes = {name: own for name, own in self.subset_notes.items() if name in kept_subsets}
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
