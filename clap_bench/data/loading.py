"""Reading whole datasets (several files of one format), joining captions, and writing ground truth."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from clap_bench.config import DatasetConfig
from clap_bench.data.readers import (
    DURATION_TOLERANCE,
    ID_SPELLING_KEY,
    READERS,
    SUBSET_WORDS,
    SUBSETS,
    FewShotSplit,
    check_disjoint,
    clip_sentences,
    detect_format,
    marked_format,
    read_charades_lengths,
    read_class_split,
    read_fewshot_split,
    sniff_format,
    subset_from_name,
)
from clap_bench.data.schema import (AnnotationError, AnnotationSet, SubsetNotes, Video, VideoTally, join_subset_notes,
                                    subset_notes_of)
from clap_bench.io import atomic_write_text

PathLike = Union[str, Path]


def merge_sets(sets: Sequence[AnnotationSet]) -> AnnotationSet:
    """Merge sets of one format (e.g. the train and valid csvs of TSP).

    A video found in two files must have the same subset and duration; its segments and
    sentences are then concatenated. Anything else is an error naming both files.
    """
    if not sets:
        raise ValueError("merge_sets needs at least one AnnotationSet")
    formats = sorted({s.format for s in sets})
    if len(formats) > 1:
        raise ValueError(f"cannot merge annotation sets of different formats: {', '.join(formats)}")
    if len(sets) == 1:
        return sets[0]
    videos: Dict[str, Video] = {}
    origin: Dict[str, str] = {}
    for s in sets:
        for vid, video in s.videos.items():
            if vid not in videos:
                videos[vid] = copy.copy(video)
                videos[vid].segments = list(video.segments)
                videos[vid].sentences = list(video.sentences)
                origin[vid] = s.source
                continue
            seen = videos[vid]
            if seen.subset != video.subset:
                raise AnnotationError(
                    s.source, f"video {vid}",
                    f"is in subset {video.subset!r} here but {seen.subset!r} in {origin[vid]}; expected each video in one subset "
                    f"(read one subset at a time: subset=...)",
                )
            if abs(seen.duration - video.duration) > DURATION_TOLERANCE:
                raise AnnotationError(
                    s.source, f"video {vid}",
                    f"has duration {video.duration:g} s here but {seen.duration:g} s in {origin[vid]}; expected one duration per video",
                )
            seen.segments = sorted(seen.segments + video.segments, key=lambda g: (g.start, g.end))
            seen.sentences = seen.sentences + video.sentences
    classes = sorted({c for s in sets for c in s.classes})
    notes = [n for s in sets for n in s.notes]
    return AnnotationSet(formats[0], ", ".join(s.source for s in sets), videos, classes, sum(s.dropped for s in sets), notes,
                         all(s.lists_background for s in sets), join_subset_notes(s.subset_notes for s in sets))


def _expand(paths: Iterable[PathLike]) -> List[Path]:
    """Files named directly, plus the .json/.csv/.txt files of named directories (their README and hidden files excepted)."""
    out: List[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            # A folder's README describes its files; read, its prose would sniff as a class split.
            out.extend(
                f for f in sorted(p.iterdir())
                if f.is_file() and not f.name.startswith(".") and f.stem.lower() != "readme"
                and f.suffix.lower() in {".json", ".csv", ".txt"}
            )
        else:
            out.append(p)
    return out


def read_annotation_files(
    paths: Union[PathLike, Sequence[PathLike]],
    format: Optional[str] = None,
    subset: Optional[str] = None,
    **options,
) -> List[AnnotationSet]:
    """Read annotation files of one format (auto-detected when ``format`` is None), one set per file.

    Directories are expanded to the files in them whose format is recognised (label maps,
    metadata and the like are ignored; README files are not read) and to damaged files of that
    format (named like them, or carrying its marks), which its reader then rejects naming the line. For Charades-STA,
    ``Charades_v1_*.csv`` files among ``paths`` are the video lengths. ``subset`` selects: files whose name announces another
    subset are skipped, a file whose name announces none is read as that subset, and formats
    that store the subset per video keep only its videos.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    named = ", ".join(str(p) for p in paths) or "(no paths)"
    if format is not None and format not in READERS:
        raise AnnotationError(named, "format", f"unknown annotation format {format!r}; expected one of {', '.join(READERS.list())}")
    explicit = {Path(p).expanduser() for p in paths if not Path(p).expanduser().is_dir()}
    files = _expand(paths)
    if not files:
        raise AnnotationError(named, "paths", "no annotation files found; expected files or folders holding them")
    kinds: Dict[Path, Optional[str]] = {}
    for f in files:
        if f not in explicit:  # inside a folder: keep what is recognised; the rest is decided below
            kinds[f] = sniff_format(f)
        elif format is None:
            # A damaged file of a known format goes to its reader, which names the line; detect_format
            # raises with the explanation when the file carries no format's marks.
            kinds[f] = sniff_format(f) or marked_format(f) or detect_format(f)
        elif format == "charades-sta" and f.suffix.lower() == ".csv" and sniff_format(f) == "charades-lengths":
            kinds[f] = "charades-lengths"
        else:
            kinds[f] = format
    length_files = [f for f, k in kinds.items() if k == "charades-lengths"]
    annotation_files = [f for f, k in kinds.items() if k not in (None, "charades-lengths") and (format is None or k == format)]
    if not annotation_files:
        # No file sniffs as a format (a folder holding one damaged file): files carrying a format's
        # marks still go to its reader, which names the line, as in _damaged_in_folder.
        marks = {f: marked_format(f) for f, k in kinds.items() if k is None}
        annotation_files = [f for f, m in marks.items() if m is not None and (format is None or m == format)]
        kinds.update((f, marks[f]) for f in annotation_files)
    if not annotation_files and length_files:
        raise AnnotationError(
            length_files[0], "file",
            "is a Charades_v1 video-length csv, not annotations; expected it beside charades_sta_*.txt files",
        )
    if not annotation_files:
        raise AnnotationError(named, "paths", "no recognised annotation files; expected files of a known format")
    found = sorted({kinds[f] for f in annotation_files})
    if len(found) > 1:
        listing = "; ".join(f"{k}: {', '.join(f.name for f in annotation_files if kinds[f] == k)}" for k in found)
        raise AnnotationError(named, "paths", f"hold several formats ({listing}); expected files of one format")
    fmt = found[0]
    damaged = set(_damaged_in_folder(kinds, fmt, annotation_files))
    if damaged:
        annotation_files = [f for f in kinds if f in damaged or f in annotation_files]  # in the folder's order
    reader = READERS.get(fmt)
    if fmt == "charades-sta":
        if "lengths" not in options and length_files:
            options["lengths"] = length_files
        if isinstance(options.get("lengths"), (list, tuple, str, Path)):
            options["lengths"] = read_charades_lengths(options["lengths"])
    if subset is not None and fmt in SUBSETS and subset not in SUBSETS[fmt] and SUBSETS[fmt]:
        raise AnnotationError(named, "subset", f"unknown subset {subset!r} for {fmt}; expected one of {', '.join(SUBSETS[fmt])}")
    sets = []
    for f in annotation_files:
        if subset is not None and fmt in _NAMED_SUBSET_FORMATS:
            announced = subset_from_name(f, fmt)
            if announced is not None and announced != subset:
                continue
        sets.append(reader(f, subset=subset, **options))
    if not sets:
        raise AnnotationError(named, "subset", f"no file holds subset {subset!r}; expected a file name with that subset word")
    if fmt == "class-split" and len(sets) > 1:
        check_disjoint({Path(s.source): s.classes for s in sets})
    return sets


def _name_pattern(path: Path) -> tuple:
    """A file name's words with the subset word replaced (``thumos14_test_tsp_groundtruth.csv`` and
    ``thumos14_valid_tsp_groundtruth.csv`` share one pattern), and its suffix."""
    words = [w for w in re.split(r"[^a-z0-9]+", path.stem.lower()) if w]
    return tuple("*" if w in SUBSET_WORDS else w for w in words) + (path.suffix.lower(),)


def _damaged_in_folder(kinds: Dict[Path, Optional[str]], fmt: str, annotation_files: List[Path]) -> List[Path]:
    """Files of a folder that sniff as no format but are damaged files of the folder's format ``fmt``.

    A side file (a label map, a metadata csv, G-TAD's csvs beside TSP's) sniffs as no format too and
    is ignored; a damaged annotation file must not be, or a whole subset would vanish without a word.
    One is told from the other by its name (named like the folder's annotation files but for the
    subset word) or by its content (it carries ``fmt``'s marks, see ``marked_format``). Such files go
    to ``fmt``'s reader, which names the line or key that is wrong.
    """
    patterns = {_name_pattern(f) for f in annotation_files}
    suffixes = {f.suffix.lower() for f in annotation_files}
    return [
        f for f, k in kinds.items()
        if k is None and f.suffix.lower() in suffixes and (_name_pattern(f) in patterns or marked_format(f) == fmt)
    ]


# Formats whose files hold one subset each, announced by the file name.
_NAMED_SUBSET_FORMATS = ("tsp-csv", "anet-captions", "charades-sta", "tacos")


def read_annotations(
    paths: Union[PathLike, Sequence[PathLike]],
    format: Optional[str] = None,
    subset: Optional[str] = None,
    **options,
) -> AnnotationSet:
    """``read_annotation_files`` merged into one set (see ``merge_sets`` for the rules)."""
    return merge_sets(read_annotation_files(paths, format, subset, **options))


def combined_counts(sets: Sequence[AnnotationSet]) -> dict:
    """``AnnotationSet.counts()`` over several sets that may share videos across subsets.

    ActivityNet Captions' val and test files annotate the same videos, so they cannot be merged
    into one set; their counts can: ``videos`` counts distinct ids, each subset its own.
    Durations of a video found in several files must still agree.
    """
    if len(sets) == 1:
        return sets[0].counts()
    by_subset: Dict[str, dict] = {}
    durations: Dict[str, tuple] = {}
    subsets_of: Dict[str, set] = {}
    for s in sets:
        for vid, v in s.videos.items():
            if vid in durations and abs(durations[vid][0] - v.duration) > DURATION_TOLERANCE:
                raise AnnotationError(
                    s.source, f"video {vid}",
                    f"has duration {v.duration:g} s here but {durations[vid][0]:g} s in {durations[vid][1]}; expected one duration per video",
                )
            durations.setdefault(vid, (v.duration, s.source))
            subsets_of.setdefault(vid, set()).add(v.subset)
            c = by_subset.setdefault(v.subset, {"videos": set(), "segments": 0, "actions": 0, "sentences": 0})
            c["videos"].add(vid)
            c["segments"] += len(v.segments)
            c["actions"] += len(v.actions)
            c["sentences"] += len(v.sentences)
    for c in by_subset.values():
        c["videos"] = len(c["videos"])
    notes = [n for s in sets for n in s.notes]
    shared = sum(1 for subs in subsets_of.values() if len(subs) > 1)
    if shared:
        notes.append(f"{shared} videos appear in more than one subset")
    return {
        "format": sets[0].format,
        "source": ", ".join(s.source for s in sets),
        "videos": len(durations),
        "segments": sum(c["segments"] for c in by_subset.values()),
        "actions": sum(c["actions"] for c in by_subset.values()),
        "queries": sum(c["sentences"] for c in by_subset.values()),
        "classes": len({c for s in sets for c in s.classes}),
        "subsets": dict(sorted(by_subset.items())),
        "dropped": sum(s.dropped for s in sets),
        "notes": notes,
    }


def _resolve(path: str, root: Optional[PathLike]) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root) / p


def _known_classes(cfg: DatasetConfig, root: Optional[PathLike]) -> Optional[List[str]]:
    """Known class names from ``extra["known"]``: a JSON list (e.g. TSP's label mapping) or a class list file."""
    if "known" not in cfg.extra:
        return None
    path = _resolve(cfg.extra["known"], root)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AnnotationError(path, "file", "not found; expected a JSON list of known class names") from None
        except json.JSONDecodeError as e:
            raise AnnotationError(path, f"line {e.lineno} column {e.colno}", f"not valid JSON ({e.msg}); expected a list of class names") from None
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise AnnotationError(path, "top level", "expected a JSON list of class names")
        return data
    return read_class_split(path)


def load_fewshot_split(cfg: DatasetConfig, known_classes: Optional[Iterable[str]] = None, root: Optional[PathLike] = None) -> FewShotSplit:
    """The few-shot split named by ``cfg.extra`` (``base``, ``val``, ``test``), checked disjoint.

    Known classes come from the argument or from ``cfg.extra["known"]``.
    """
    missing = [k for k in ("base", "val", "test") if k not in cfg.extra]
    if missing:
        raise AnnotationError("dataset config", "extra", f"lacks {', '.join(missing)}; expected base, val and test class-list files")
    if known_classes is None:
        known_classes = _known_classes(cfg, root)
    return read_fewshot_split(
        _resolve(cfg.extra["base"], root), _resolve(cfg.extra["val"], root), _resolve(cfg.extra["test"], root), known_classes
    )


def load_dataset(
    cfg: DatasetConfig, key: str = "", root: Optional[PathLike] = None, subset: Optional[str] = None
) -> AnnotationSet:
    """Read one configured dataset: all its annotation files, merged.

    ``cfg.format`` names the reader (empty: detected from the files). ``cfg.extra``:
    Charades-STA video lengths under ``lengths`` (several csvs joined with commas) or any key
    starting with ``lengths``; few-shot class lists under ``base``, ``val``, ``test`` (and
    optionally ``known``: a JSON list or class-list file of the classes they must belong to).
    Relative paths are taken relative to ``root`` when given. ``subset`` reads one subset only
    (needed where two subsets share videos, as ActivityNet Captions' val and test do).
    """
    label = f"dataset {key!r}" if key else "dataset"
    fmt = cfg.format or None
    if fmt is not None and fmt not in READERS:
        raise AnnotationError(label, "format", f"unknown annotation format {fmt!r}; expected one of {', '.join(READERS.list())}")
    files = [_resolve(p, root) for p in cfg.annotations]
    has_split = {"base", "val", "test"} <= set(cfg.extra)
    if has_split and fmt in (None, "class-split"):
        split = load_fewshot_split(cfg, root=root)
        reader = READERS.get("class-split")
        sets = [reader(p, subset=name) for name, p in split.files.items()]
        sets += read_annotation_files(files, format="class-split") if files else []
        if len(sets) > 1:
            check_disjoint({Path(s.source): s.classes for s in sets})
        merged = merge_sets(sets)
        merged.source = f"{label}: {merged.source}"
        return merged
    if not files:
        raise AnnotationError(label, "annotations", "no annotation files; expected at least one path (or extra base/val/test for a class split)")
    options = {}
    length_paths = [
        _resolve(p.strip(), root)
        for k, v in sorted(cfg.extra.items()) if k.startswith("lengths")
        for p in v.split(",") if p.strip()
    ]
    if length_paths and fmt in (None, "charades-sta"):
        fmt = "charades-sta"
        options["lengths"] = read_charades_lengths(length_paths)
    return read_annotations(files, format=fmt, subset=subset, **options)


def attach_captions(videos: AnnotationSet, captions: AnnotationSet) -> AnnotationSet:
    """A copy of ``videos`` whose videos carry the sentences of the caption video with the same id.

    Caption times are clipped to the action video's duration (the two sources round durations
    differently); a caption that ends up empty is dropped. As the readers do with queries, the
    clipped ends are counted in a note and the dropped captions in ``dropped`` and a note, per video
    (``VideoTally``: which videos, how many each) and filed under the subset of the videos they
    count, so that ``subset`` and ``restrict_classes`` count those of their own videos only. Videos
    without captions keep theirs; the note on how many videos were captioned is the whole set's.

    The caption reader's own drops and notes come along for the videos of ``videos`` that ``captions``
    has (its queries dropped never reach these videos either): its per-video notes
    (``SubsetNotes.tallies``) counted over those videos only, each filed under the subset of the
    videos it counts, so that ``subset`` and ``restrict_classes`` count them as they do the
    readers'; any other note of ``captions`` (and a drop count no such note explains) comes whole,
    as a note of the whole set.
    """
    out = AnnotationSet(videos.format, videos.source, {}, list(videos.classes), videos.dropped, list(videos.notes),
                        videos.lists_background, dict(videos.subset_notes))
    _carry_caption_notes(out, videos, captions)
    matched = 0
    clipped: Dict[str, Dict[str, int]] = {}  # subset -> video id -> captions whose end was clipped
    dropped: Dict[str, Dict[str, int]] = {}  # subset -> video id -> captions dropped (empty once clipped)
    for vid, video in videos.videos.items():
        copy_video = copy.copy(video)
        copy_video.segments = list(video.segments)
        cap = captions.videos.get(vid)
        if cap is not None and cap.sentences:
            matched += 1
            copy_video.sentences, c, d = clip_sentences(((s.start, s.end, s.text) for s in cap.sentences), video.duration)
            if c:
                clipped.setdefault(video.subset, {})[vid] = c
            if d:
                dropped.setdefault(video.subset, {})[vid] = d
        else:
            copy_video.sentences = list(video.sentences)
        out.videos[vid] = copy_video
    unmatched = sum(1 for vid in captions.videos if vid not in videos.videos)
    out.notes.append(f"captions from {captions.source}: {matched} of {len(videos.videos)} videos captioned; {unmatched} caption videos not in this set")
    parts = []
    for name in sorted(set(clipped) | set(dropped)):
        before = f"captions of {name} videos from {captions.source}: "
        tallies = [
            VideoTally(before, " caption end times past the video's duration in this set clipped to it",
                       tuple(clipped.get(name, {}).items())),
            VideoTally(before, " captions dropped because start >= end after clipping to the video's duration in this set",
                       tuple(dropped.get(name, {}).items()), dropped=True),
        ]
        part = subset_notes_of(name, tallies)
        out.dropped += part[name].dropped
        out.notes.extend(part[name].notes)
        parts.append(part)
    out.subset_notes = join_subset_notes([out.subset_notes, *parts])
    return out


def _carry_caption_notes(out: AnnotationSet, videos: AnnotationSet, captions: AnnotationSet) -> None:
    """Add to ``out`` the caption reader's drops and notes about the videos of ``videos`` (see ``attach_captions``)."""
    shared_by_subset: Dict[str, set] = {}
    for vid, video in videos.videos.items():
        if vid in captions.videos:
            shared_by_subset.setdefault(video.subset, set()).add(vid)
    tallies = [t for own in captions.subset_notes.values() for t in own.tallies]
    subset_notes = dict(out.subset_notes)
    for name, ids in shared_by_subset.items():
        parts = [t.of(ids) for t in tallies]
        parts = [VideoTally(f"captions of {name} videos from {t.before}", t.after, t.per_video, t.dropped) for t in parts if t.count]
        if not parts:
            continue
        own_dropped = sum(t.count for t in parts if t.dropped)
        out.dropped += own_dropped
        out.notes.extend(t.text for t in parts)
        seen = subset_notes.get(name, SubsetNotes())
        subset_notes[name] = SubsetNotes(seen.dropped + own_dropped, seen.notes + tuple(t.text for t in parts), seen.tallies + tuple(parts))
    out.subset_notes = subset_notes
    tallied = {t.text for t in tallies}
    untallied = [n for n in captions.notes if n not in tallied]
    out.notes.extend(f"captions from {captions.source}: {n}" for n in untallied)
    rest = captions.dropped - sum(t.count for t in tallies if t.dropped)
    if rest:
        out.dropped += rest
        if not untallied:
            out.notes.append(f"captions from {captions.source}: {rest} captions dropped by its reader")


# Subset names of the other formats in ActivityNet's spelling, so the file reads back.
_ACTIVITYNET_SUBSET_NAMES = {"train": "training", "val": "validation", "test": "testing"}


def write_activitynet_json(
    annotations: AnnotationSet,
    path: PathLike,
    subset: Optional[str] = None,
    version: str = "VERSION 1.3",
    strip_v_prefix: bool = False,
) -> None:
    """Write the official ActivityNet-1.3 ground-truth JSON (atomically).

    Only actions are written (background is implied by the gaps). Ids are written as the
    project spells them (``v_`` prefixed), so predictions keyed by the same ids score against
    the file; ``strip_v_prefix=True`` writes the bare ids of ActivityNet's own file instead
    (``v_v_Vg4a8igc0`` as ``v_Vg4a8igc0``). A top-level ``"video_ids"`` (``"project"`` or
    ``"bare"``; ActivityNet's evaluation ignores other keys) says which, so that the reader keeps
    the keys or adds the prefix back to every one, even when all of them start with ``v_``: either
    way the file reads back with the ids written. ``subset`` writes only that subset (named as
    in ``annotations``); subset names are written in ActivityNet's spelling (train -> training,
    val -> validation, test -> testing).
    """
    database = {}
    for vid, video in annotations.videos.items():
        if subset is not None and video.subset != subset:
            continue
        if strip_v_prefix and not vid.startswith("v_"):
            raise ValueError(f"video {vid!r} has no 'v_' prefix to strip; expected ActivityNet ids (v_ + YouTube id) with strip_v_prefix")
        key = vid[2:] if strip_v_prefix else vid
        database[key] = {
            "subset": _ACTIVITYNET_SUBSET_NAMES.get(video.subset, video.subset),
            "duration": video.duration,
            "annotations": [{"segment": [s.start, s.end], "label": s.label} for s in video.actions],
        }
    classes = sorted(set(annotations.classes) | {s.label for v in annotations.videos.values() for s in v.actions})
    taxonomy = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None}]
    taxonomy += [{"nodeId": i + 1, "nodeName": c, "parentId": 0, "parentName": "Root"} for i, c in enumerate(classes)]
    data = {"version": version, "taxonomy": taxonomy, "database": database, ID_SPELLING_KEY: "bare" if strip_v_prefix else "project"}
    atomic_write_text(path, json.dumps(data) + "\n")
