"""One reader per real annotation format, all producing the schema of ``schema.py``.

Every reader is registered in ``READERS`` under its format name and is called as
``READERS.get(name)(path, subset=None, **options) -> AnnotationSet``.

Policies shared by all readers (the published files need them, see the tests on real files):

* Ids. ActivityNet-family ids are ``v_`` + the YouTube id: readers of sources whose ids are bare
  add the prefix to every id, even one that starts with ``v_`` itself (``v_Vg4a8igc0`` becomes
  ``v_v_Vg4a8igc0``, as TSP's file names, ActivityNet Captions and G-TAD spell it). Whether a JSON
  file's keys are bare is decided once per file (``v_prefixed_ids``), never per key.
  TSP csv files name the video file in ``filename`` (``v_<id>.mp4`` for ActivityNet,
  ``video_test_0000004.mp4`` for THUMOS14): the id is that file name without its extension,
  so THUMOS14 ids are left alone without a dataset hint.
* Subsets. Each format has its own subset names (``SUBSETS``). Files that do not store the
  subset take it from the ``subset`` argument or, when that is omitted, from a word of the
  file name (``train``/``training``, ``val``/``valid``/``validation``, ``test``/``testing``).
  ActivityNet Captions' original ``val_2.json`` is the grounding test set, so it maps to ``test``.
* Action segments (TSP csv, ActivityNet JSON, Kinetics csv) are kept as the source gives
  them, zero-length ones included (the published TSP csv has some); a negative time or an end
  before the start is an error. Segments that run past the video's duration are kept and
  counted in ``notes``, in two counts as clip sampling treats them: one that starts before the
  end is cut at it, one that lies wholly at or past the end is dropped (as TSP's dataset does;
  49 of the 52 THUMOS14 test segments that overrun). Zero-length segments within the video, which
  clip sampling drops too, are counted in a third note (9 rows of TSP's ActivityNet train csv, 2
  of its validation csv). Scorers compare against source times.
* Sentences (grounding queries) follow the published grounding loaders: the end is clipped
  to the video duration and a query whose start is not before its end (after clipping) is
  dropped and counted in ``dropped`` with a note saying why. Negative times are errors.
* Each subset's part of ``dropped`` and of the notes is recorded in ``AnnotationSet.subset_notes``
  (a file of one subset: all of it), so that ``AnnotationSet.subset`` keeps only its own; the
  notes count per video (``VideoTally``), so that a set restricted to some videos
  (``AnnotationSet.restrict_classes``) counts only those.
* Every malformed input raises ``AnnotationError(path, where, problem)`` with the csv/txt line
  (1-based, header included) or the JSON key path, and what was expected.
* ``filename`` is the video file name relative to the dataset's video folder: the source's own
  name when it has one (TSP ``filename``, TACoS keys), otherwise ``<id>.mp4``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from clap_bench.data.schema import AnnotationError, AnnotationSet, Segment, Sentence, Video, VideoTally, subset_notes_of
from clap_bench.registry import Registry

PathLike = Union[str, Path]

READERS = Registry("annotation format")

# Subset names per format, as the datasets' own files and loaders spell them.
SUBSETS: Dict[str, Tuple[str, ...]] = {
    "activitynet-json": ("training", "validation", "testing"),
    "tsp-csv": ("training", "validation", "testing"),
    "anet-captions": ("train", "val", "test"),
    "charades-sta": ("train", "test"),
    "tacos": ("train", "val", "test"),
    "kinetics-csv": ("train", "val", "test"),
    "class-split": (),
}

TSP_COLUMNS = (
    "video-name", "t-start", "t-end", "action-label", "video-duration",
    "filename", "fps", "video-frames", "temporal-region-label",
)
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
CHARADES_LENGTH_COLUMNS = ("id", "length")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v"}
DURATION_TOLERANCE = 1e-3  # seconds; the same video read from two files must agree this well


# --------------------------------------------------------------------------- small helpers
def json_key(*parts: Union[str, int]) -> str:
    """A JSON key path as used in error messages: ``key ["database"]["abc"]["annotations"][2]``."""
    return "key " + "".join(f"[{p}]" if isinstance(p, int) else f'["{p}"]' for p in parts)


def _line(n: int) -> str:
    return f"line {n}"


def _read_text(path: Path, expected: str) -> str:
    if not path.exists():
        raise AnnotationError(path, "file", f"not found; expected {expected}")
    if path.is_dir():
        raise AnnotationError(path, "file", f"is a directory; expected {expected}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise AnnotationError(path, f"byte {e.start}", f"not UTF-8 text; expected {expected}") from None
    if not text.strip():
        raise AnnotationError(path, "file", f"is empty; expected {expected}")
    return text


class _ObjectWithDuplicate(dict):
    """A JSON object in which ``key`` appeared twice (the parse goes on, so the key's path can be found)."""

    def __init__(self, pairs: List[Tuple[str, Any]], key: str):
        super().__init__(pairs)
        self.duplicate = key


def _duplicate_path(node: Any, path: tuple = ()) -> Optional[tuple]:
    """The key path of the first duplicated key under ``node``."""
    if isinstance(node, _ObjectWithDuplicate):
        return path + (node.duplicate,)
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if isinstance(child, (dict, list)):
            found = _duplicate_path(child, path + (key,))
            if found is not None:
                return found
    return None


def _load_json(path: Path, expected: str) -> Any:
    text = _read_text(path, expected)
    duplicated: List[str] = []

    def unique_keys(pairs: List[Tuple[str, Any]]) -> dict:
        out = dict(pairs)
        if len(out) == len(pairs):
            return out
        seen = set()
        for k, _ in pairs:
            if k in seen:
                duplicated.append(k)
                return _ObjectWithDuplicate(pairs, k)
            seen.add(k)
        return out  # pragma: no cover - a shorter dict always has a repeated key

    try:
        # A duplicated video id would otherwise silently keep only its last entry.
        data = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"line {e.lineno} column {e.colno}", f"not valid JSON ({e.msg}); expected {expected}") from None
    if duplicated:
        # Objects are built innermost first, so the hook cannot know where one sits: find it in the tree
        # (walked only then: ActivityNet Captions' train.json is large).
        raise AnnotationError(path, json_key(*_duplicate_path(data)), "appears twice in the same JSON object; expected unique keys")
    return data


def _number(value: Any, path: Path, where: str, name: str, *, nonnegative: bool = True) -> float:
    if isinstance(value, bool):
        raise AnnotationError(path, where, f"{name} is {value!r}; expected a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(path, where, f"{name} is {value!r}; expected a number") from None
    if not math.isfinite(x):
        raise AnnotationError(path, where, f"{name} is {value!r}; expected a finite number")
    if nonnegative and x < 0:
        raise AnnotationError(path, where, f"{name} is {x:g}; expected a number >= 0")
    return x


def _positive(value: Any, path: Path, where: str, name: str) -> float:
    x = _number(value, path, where, name)
    if x <= 0:
        raise AnnotationError(path, where, f"{name} is {x:g}; expected a number > 0")
    return x


def _integer(value: Any, path: Path, where: str, name: str) -> int:
    x = _number(value, path, where, name)
    if x != int(x):
        raise AnnotationError(path, where, f"{name} is {value!r}; expected a whole number")
    return int(x)


def _expect_type(value: Any, tp: type, path: Path, where: str, expected: str) -> Any:
    if not isinstance(value, tp) or isinstance(value, bool):
        raise AnnotationError(path, where, f"is {type(value).__name__} {_short(value)}; expected {expected}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expect_keys(obj: dict, keys: Sequence[str], path: Path, where_parts: tuple) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise AnnotationError(
            path, json_key(*where_parts),
            f"missing key(s) {', '.join(repr(k) for k in missing)}; expected keys {', '.join(repr(k) for k in keys)}",
        )


# A top-level key of an ActivityNet JSON that says how its video ids are spelled (``write_activitynet_json``
# writes it): "bare" (YouTube ids: add ``v_`` to every key) or "project" (the project's ids: keep the keys).
ID_SPELLING_KEY = "video_ids"
ID_SPELLINGS = ("bare", "project")


def v_prefixed_ids(raw_ids: Iterable[str], spelling: Optional[str] = None) -> Dict[str, str]:
    """The project's ids (``v_`` + YouTube id, as TSP's file names, ActivityNet Captions and G-TAD spell them)
    of one file's keys, decided once for the whole file.

    A YouTube id may itself start with ``v_`` (two ActivityNet training videos: ``v_Vg4a8igc0`` and
    ``v_UmAH95xls``, whose project ids are ``v_v_Vg4a8igc0`` and ``v_v_UmAH95xls``), so a key that starts
    with ``v_`` is not proof that the prefix is there. ``spelling`` "bare" adds ``v_`` to every key and
    "project" keeps them; without it, keys are kept when every key starts with ``v_`` (a file written
    with the project's ids) and prefixed all otherwise (ActivityNet's own file, whose ids are bare).
    """
    raw_ids = [str(k) for k in raw_ids]
    if spelling is None:
        spelling = "project" if raw_ids and all(k.startswith("v_") for k in raw_ids) else "bare"
    return {k: ("v_" + k if spelling == "bare" else k) for k in raw_ids}


def _default_filename(video_id: str) -> str:
    return f"{video_id}.mp4"


# --------------------------------------------------------------------------- subsets
SUBSET_WORDS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
_CANONICAL_TO_FORMAT = {
    "activitynet-json": {"train": "training", "val": "validation", "test": "testing"},
    "tsp-csv": {"train": "training", "val": "validation", "test": "testing"},
    "anet-captions": {"train": "train", "val": "val", "test": "test"},
    "charades-sta": {"train": "train", "test": "test"},
    "tacos": {"train": "train", "val": "val", "test": "test"},
    "kinetics-csv": {"train": "train", "val": "val", "test": "test"},
}


def subset_from_name(path: PathLike, fmt: str) -> Optional[str]:
    """The subset a file name announces (``*_train_*``, ``val.json``, ...), in ``fmt``'s spelling.

    Returns None when no subset word appears; raises when the name is ambiguous or names a
    subset the format does not have.
    """
    path = Path(path)
    words = [w for w in re.split(r"[^a-z0-9]+", path.stem.lower()) if w]
    found = []
    for i, w in enumerate(words):
        if w not in SUBSET_WORDS:
            continue
        canonical = SUBSET_WORDS[w]
        # ActivityNet Captions ships val_1 / val_2; the grounding benchmarks test on val_2.
        if fmt == "anet-captions" and canonical == "val" and i + 1 < len(words) and words[i + 1] == "2":
            canonical = "test"
        found.append(canonical)
    found = sorted(set(found))
    if not found:
        return None
    if len(found) > 1:
        raise AnnotationError(path, "file name", f"names several subsets ({', '.join(found)}); pass the subset explicitly")
    mapping = _CANONICAL_TO_FORMAT.get(fmt, {})
    if found[0] not in mapping:
        raise AnnotationError(
            path, "file name",
            f"names subset {found[0]!r}, which {fmt} does not have; expected one of {', '.join(SUBSETS[fmt])}",
        )
    return mapping[found[0]]


def _resolve_subset(path: Path, fmt: str, subset: Optional[str]) -> str:
    if subset is not None:
        _check_subset(path, fmt, subset, "subset argument")
        return subset
    found = subset_from_name(path, fmt)
    if found is None:
        raise AnnotationError(
            path, "file name",
            f"does not say which subset it holds; expected a word train/val/test in the name or an explicit subset "
            f"(one of {', '.join(SUBSETS[fmt])})",
        )
    return found


def _check_subset(path: Path, fmt: str, subset: str, where: str) -> None:
    if subset not in SUBSETS[fmt]:
        raise AnnotationError(path, where, f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS[fmt])}")


# --------------------------------------------------------------------------- sentences
def clip_sentences(
    raw: Iterable[Tuple[float, float, str]], duration: float
) -> Tuple[List[Sentence], int, int]:
    """Clip query ends to the duration; drop queries with start >= end. Returns (kept, clipped, dropped)."""
    kept: List[Sentence] = []
    clipped = dropped = 0
    for start, end, text in raw:
        if end > duration:
            end = duration
            clipped += 1
        if start >= end:
            dropped += 1
            continue
        kept.append(Sentence(start, end, text))
    return kept, clipped, dropped


def _per_video(counts: Dict[str, int]) -> Tuple[Tuple[str, int], ...]:
    return tuple((vid, n) for vid, n in counts.items() if n)


def _sentence_tallies(path: Path, clipped: Dict[str, int], dropped: Dict[str, int], unit: str = "query") -> List[VideoTally]:
    """The notes on the queries clipped and dropped (counts per video id)."""
    tallies = [
        VideoTally(f"{path.name}: ", f" {unit} end times past the video duration clipped to it", _per_video(clipped)),
        VideoTally(f"{path.name}: ", " queries dropped because start >= end after clipping", _per_video(dropped), dropped=True),
    ]
    return [t for t in tallies if t.count]


def _segments_past_end_tallies(path: Path, videos: Dict[str, Video], subset: str = "") -> List[VideoTally]:
    """The notes on the segments that run past their video's duration (counts per video id), told apart
    as clip sampling treats them (``clap_bench.clips.segments``, no tolerance): one that starts before the
    end is cut at it, one that starts at or after it is left empty and dropped (TSP's dataset clamps its
    end to the duration too, and its length check then drops it)."""
    cut = {vid: sum(1 for s in v.segments if s.start < v.duration < s.end) for vid, v in videos.items()}
    beyond = {vid: sum(1 for s in v.segments if s.start >= v.duration) for vid, v in videos.items()}
    # zero-length ones within the video (those at or past its end are counted with ``beyond``)
    empty = {vid: sum(1 for s in v.segments if s.start == s.end < v.duration) for vid, v in videos.items()}
    words = f" {subset + ' ' if subset else ''}segments"
    tallies = [
        VideoTally(f"{path.name}: ", f"{words} end after their video's duration (kept as given; clip sampling cuts them at it)",
                   _per_video(cut)),
        VideoTally(f"{path.name}: ", f"{words} lie wholly at or past their video's end (kept as given; dropped by clip sampling, "
                   "as TSP does)", _per_video(beyond)),
        VideoTally(f"{path.name}: ", f" zero-length{words} (start = end) within their video (kept as given; dropped by clip "
                   "sampling, as TSP's length check does)", _per_video(empty)),
    ]
    return [t for t in tallies if t.count]


def _tallied_set(fmt: str, path: Path, videos: Dict[str, Video], classes: List[str], subset: str,
                 tallies: List[VideoTally], lists_background: bool = False) -> AnnotationSet:
    """The set of a file that holds one subset, whose drops and notes are all ``tallies`` (that subset's)."""
    return AnnotationSet(fmt, str(path), videos, classes, sum(t.count for t in tallies if t.dropped), [t.text for t in tallies],
                         lists_background=lists_background, subset_notes=subset_notes_of(subset, tallies))


def _classes(videos: Dict[str, Video]) -> List[str]:
    return sorted({s.label for v in videos.values() for s in v.segments if s.label is not None})


# --------------------------------------------------------------------------- csv helpers
def _csv_rows(path: Path, text: str, required: Sequence[str], expected: str):
    """Yield (line_number, row dict) with the header checked; line numbers count the header as line 1."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:  # pragma: no cover - _read_text already rejects empty files
        raise AnnotationError(path, _line(1), f"no header; expected {expected}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(
            path, _line(1),
            f"header lacks column(s) {', '.join(missing)}; expected {expected} with columns {','.join(required)}",
        )
    index = {name: header.index(name) for name in required}
    width = len(header)
    previous_end = 1
    for row in reader:
        line = previous_end + 1
        previous_end = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:
            raise AnnotationError(path, _line(line), f"has {len(row)} fields; expected {width} as in the header")
        yield line, {name: row[i] for name, i in index.items()}


# --------------------------------------------------------------------------- ActivityNet JSON
@READERS.register("activitynet-json")
def read_activitynet_json(path: PathLike, subset: Optional[str] = None) -> AnnotationSet:
    """The official ActivityNet-1.3 ground truth: ``{"version", "taxonomy", "database": {id: ...}}``.

    Only actions are listed (background comes from the gaps, derived by the clip stage). Ids get
    the ``v_`` prefix unless every key has it already (a file written with the project's ids, see
    ``v_prefixed_ids``; a top-level ``"video_ids": "bare"`` or ``"project"`` says so outright).
    ``subset`` keeps only the videos of that subset.
    """
    fmt = "activitynet-json"
    path = Path(path)
    expected = 'an ActivityNet-1.3 JSON object {"version", "taxonomy", "database": {video id: {...}}}'
    data = _load_json(path, expected)
    _expect_type(data, dict, path, "top level", expected)
    _expect_keys(data, ("database",), path, ())
    database = _expect_type(data["database"], dict, path, json_key("database"), "an object mapping video ids to videos")
    if subset is not None:
        _check_subset(path, fmt, subset, "subset argument")
    spelling = data.get(ID_SPELLING_KEY)
    if spelling is not None and spelling not in ID_SPELLINGS:
        raise AnnotationError(path, json_key(ID_SPELLING_KEY), f"is {_short(spelling)}; expected one of {', '.join(repr(s) for s in ID_SPELLINGS)}")
    ids = v_prefixed_ids(database, spelling)  # decided over the whole file, whatever subset is kept
    videos: Dict[str, Video] = {}
    for raw_id, entry in database.items():
        where = ("database", raw_id)
        _expect_type(entry, dict, path, json_key(*where), 'an object {"subset", "duration", "annotations"}')
        _expect_keys(entry, ("subset", "duration", "annotations"), path, where)
        video_subset = entry["subset"]
        if video_subset not in SUBSETS[fmt]:
            raise AnnotationError(
                path, json_key(*where, "subset"),
                f"unknown subset {video_subset!r}; expected one of {', '.join(SUBSETS[fmt])}",
            )
        if subset is not None and video_subset != subset:
            continue
        duration = _positive(entry["duration"], path, json_key(*where, "duration"), "duration")
        annotations = _expect_type(entry["annotations"], list, path, json_key(*where, "annotations"), "a list of {\"segment\", \"label\"}")
        segments = []
        for i, ann in enumerate(annotations):
            a_where = where + ("annotations", i)
            _expect_type(ann, dict, path, json_key(*a_where), 'an object {"segment": [start, end], "label"}')
            _expect_keys(ann, ("segment", "label"), path, a_where)
            seg = ann["segment"]
            if not isinstance(seg, list) or len(seg) != 2:
                raise AnnotationError(path, json_key(*a_where, "segment"), f"is {_short(seg)}; expected [start, end] in seconds")
            start = _number(seg[0], path, json_key(*a_where, "segment", 0), "start")
            end = _number(seg[1], path, json_key(*a_where, "segment", 1), "end")
            if end < start:
                raise AnnotationError(path, json_key(*a_where, "segment"), f"ends ({end:g}) before it starts ({start:g}); expected start <= end")
            label = ann["label"]
            if not isinstance(label, str) or not label.strip():
                raise AnnotationError(path, json_key(*a_where, "label"), f"is {_short(label)}; expected a class name")
            segments.append(Segment(start, end, label.strip()))
        video_id = ids[str(raw_id)]  # distinct keys, distinct ids: the prefix is added to all or none
        segments.sort(key=lambda s: (s.start, s.end))
        videos[video_id] = Video(video_id, duration, video_subset, filename=_default_filename(video_id), segments=segments)
    # The file holds every subset: one note per subset, so that each subset keeps its own.
    tallies_of = {
        name: _segments_past_end_tallies(path, {k: v for k, v in videos.items() if v.subset == name}, name)
        for name in SUBSETS[fmt]
    }
    return AnnotationSet(fmt, str(path), videos, _classes(videos), 0, [t.text for ts in tallies_of.values() for t in ts],
                         subset_notes={k: v for name, ts in tallies_of.items() for k, v in subset_notes_of(name, ts).items()})


# --------------------------------------------------------------------------- TSP csv
@READERS.register("tsp-csv")
def read_tsp_csv(path: PathLike, subset: Optional[str] = None) -> AnnotationSet:
    """TSP's ground-truth csv (ActivityNet or THUMOS14): one row per action or background region.

    Background rows have an empty ``action-label`` (``temporal-region-label`` "No action") and
    become segments with label None. The id is ``filename`` without its extension, which
    carries the ``v_`` prefix for ActivityNet and none for THUMOS14; a row without a file name
    falls back to ``video-name``, the bare id (``v_`` + it when the other rows' files carry the prefix).
    The subset comes from ``subset`` or the file name (``*_train_*``, ``*_valid_*``, ``*_test_*``).
    """
    fmt = "tsp-csv"
    path = Path(path)
    expected = "a TSP ground-truth csv"
    text = _read_text(path, expected)
    video_subset = _resolve_subset(path, fmt, subset)
    videos: Dict[str, Video] = {}
    first_line: Dict[str, int] = {}
    meta: Dict[str, Tuple[float, Optional[float], Optional[int]]] = {}
    pending: Dict[str, List[Segment]] = {}
    for line, row in _csv_rows(path, text, TSP_COLUMNS, expected):
        where = _line(line)
        name = row["video-name"].strip()
        filename = row["filename"].strip()
        if not name and not filename:
            raise AnnotationError(path, where, "video-name and filename are empty; expected a video name")
        if filename:
            video_id = Path(filename).stem
            if name and video_id not in (name, "v_" + name):
                raise AnnotationError(path, where, f"filename {filename!r} does not match video-name {name!r}; expected {name}.<ext> or v_{name}.<ext>")
        else:
            video_id = name
            filename = None
        start = _number(row["t-start"], path, where, "t-start")
        end = _number(row["t-end"], path, where, "t-end")
        if end < start:
            raise AnnotationError(path, where, f"t-end {end:g} is before t-start {start:g}; expected t-start <= t-end")
        duration = _positive(row["video-duration"], path, where, "video-duration")
        fps = _positive(row["fps"], path, where, "fps") if row["fps"].strip() else None
        frames = _integer(row["video-frames"], path, where, "video-frames") if row["video-frames"].strip() else None
        label = row["action-label"].strip() or None
        region = row["temporal-region-label"].strip()
        if region and (region == "Action") != (label is not None):
            raise AnnotationError(
                path, where,
                f"temporal-region-label {region!r} with action-label {row['action-label']!r}; expected 'Action' with a label or 'No action' without one",
            )
        if video_id in meta:
            if meta[video_id] != (duration, fps, frames):
                raise AnnotationError(
                    path, where,
                    f"video {video_id} has video-duration/fps/video-frames {duration:g}/{fps}/{frames} but "
                    f"{meta[video_id][0]:g}/{meta[video_id][1]}/{meta[video_id][2]} on line {first_line[video_id]}; expected the same values on every row of a video",
                )
        else:
            meta[video_id] = (duration, fps, frames)
            first_line[video_id] = line
            videos[video_id] = Video(video_id, duration, video_subset, fps=fps, num_frames=frames, filename=filename)
            pending[video_id] = []
        pending[video_id].append(Segment(start, end, label))
    if not videos:
        raise AnnotationError(path, _line(2), f"no rows after the header; expected {expected} with at least one region")
    prefixed = any(v.startswith("v_") for v in videos if videos[v].filename)
    out: Dict[str, Video] = {}
    for video_id, video in videos.items():
        if video.filename is None:
            # video-name is the bare YouTube id, which may itself start with "v_" (v_Vg4a8igc0's file is v_v_Vg4a8igc0.mp4).
            video.id = "v_" + video_id if prefixed else video_id
            video.filename = _default_filename(video.id)
        video.segments = sorted(pending[video_id], key=lambda s: (s.start, s.end))
        if video.id in out:
            raise AnnotationError(path, _line(first_line[video_id]), f"video {video.id} appears under two names; expected one name per video")
        out[video.id] = video
    return _tallied_set(fmt, path, out, _classes(out), video_subset, _segments_past_end_tallies(path, out), lists_background=True)


# --------------------------------------------------------------------------- ActivityNet Captions
@READERS.register("anet-captions")
def read_anet_captions(path: PathLike, subset: Optional[str] = None) -> AnnotationSet:
    """ActivityNet Captions: ``{"v_xxx": {"duration", "timestamps": [[s, e], ...], "sentences": [...]}}``.

    Times are seconds. Sentences are stripped (the source starts most of them with a space).
    The subset comes from ``subset`` or the file name: train / val (``val_1``) / test (``val_2``).
    """
    fmt = "anet-captions"
    path = Path(path)
    expected = 'an ActivityNet Captions JSON object {video id: {"duration", "timestamps", "sentences"}}'
    data = _load_json(path, expected)
    _expect_type(data, dict, path, "top level", expected)
    video_subset = _resolve_subset(path, fmt, subset)
    ids = v_prefixed_ids(data)  # the published files' keys all carry the prefix (v_v_Vg4a8igc0 included)
    videos: Dict[str, Video] = {}
    clipped: Dict[str, int] = {}
    dropped: Dict[str, int] = {}
    for raw_id, entry in data.items():
        _expect_type(entry, dict, path, json_key(raw_id), 'an object {"duration", "timestamps", "sentences"}')
        _expect_keys(entry, ("duration", "timestamps", "sentences"), path, (raw_id,))
        duration = _positive(entry["duration"], path, json_key(raw_id, "duration"), "duration")
        raw = _timed_sentences(path, raw_id, entry, scale=1.0, unit="seconds")
        sentences, c, d = clip_sentences(raw, duration)
        video_id = ids[str(raw_id)]  # distinct keys, distinct ids: the prefix is added to all or none
        clipped[video_id], dropped[video_id] = c, d
        videos[video_id] = Video(video_id, duration, video_subset, filename=_default_filename(video_id), sentences=sentences)
    return _tallied_set(fmt, path, videos, [], video_subset, _sentence_tallies(path, clipped, dropped))


def _timed_sentences(path: Path, key: str, entry: dict, scale: float, unit: str) -> List[Tuple[float, float, str]]:
    stamps = _expect_type(entry["timestamps"], list, path, json_key(key, "timestamps"), f"a list of [start, end] in {unit}")
    texts = _expect_type(entry["sentences"], list, path, json_key(key, "sentences"), "a list of sentences")
    if len(stamps) != len(texts):
        raise AnnotationError(
            path, json_key(key),
            f"has {len(stamps)} timestamps but {len(texts)} sentences; expected one [start, end] per sentence",
        )
    out = []
    for i, (stamp, text) in enumerate(zip(stamps, texts)):
        if not isinstance(stamp, list) or len(stamp) != 2:
            raise AnnotationError(path, json_key(key, "timestamps", i), f"is {_short(stamp)}; expected [start, end] in {unit}")
        start = _number(stamp[0], path, json_key(key, "timestamps", i, 0), "start")
        end = _number(stamp[1], path, json_key(key, "timestamps", i, 1), "end")
        if not isinstance(text, str) or not text.strip():
            raise AnnotationError(path, json_key(key, "sentences", i), f"is {_short(text)}; expected a non-empty sentence")
        out.append((start * scale, end * scale, text.strip()))
    return out


# --------------------------------------------------------------------------- TACoS
@READERS.register("tacos")
def read_tacos(path: PathLike, subset: Optional[str] = None) -> AnnotationSet:
    """TACoS as the grounding benchmarks ship it: ``{"s13-d21.avi": {"timestamps", "sentences", "fps", "num_frames"}}``.

    Timestamps are frame indices, converted with ``fps``; duration is ``num_frames / fps``. The
    id is the key without its video extension; the key is the file name.
    """
    fmt = "tacos"
    path = Path(path)
    expected = 'a TACoS JSON object {video file: {"timestamps", "sentences", "fps", "num_frames"}}'
    data = _load_json(path, expected)
    _expect_type(data, dict, path, "top level", expected)
    video_subset = _resolve_subset(path, fmt, subset)
    videos: Dict[str, Video] = {}
    clipped: Dict[str, int] = {}
    dropped: Dict[str, int] = {}
    for key, entry in data.items():
        _expect_type(entry, dict, path, json_key(key), 'an object {"timestamps", "sentences", "fps", "num_frames"}')
        _expect_keys(entry, ("timestamps", "sentences", "fps", "num_frames"), path, (key,))
        fps = _positive(entry["fps"], path, json_key(key, "fps"), "fps")
        num_frames = _integer(entry["num_frames"], path, json_key(key, "num_frames"), "num_frames")
        if num_frames <= 0:
            raise AnnotationError(path, json_key(key, "num_frames"), f"is {num_frames}; expected a number of frames > 0")
        duration = num_frames / fps
        raw = _timed_sentences(path, key, entry, scale=1.0 / fps, unit="frames")
        sentences, c, d = clip_sentences(raw, duration)
        key_path = Path(key)
        if key_path.suffix.lower() in VIDEO_SUFFIXES:
            video_id, filename = key_path.stem, key
        else:
            video_id, filename = key, _default_filename(key)
        if video_id in videos:
            raise AnnotationError(path, json_key(key), f"is the same video as another key ({video_id}); expected unique videos")
        clipped[video_id], dropped[video_id] = c, d
        videos[video_id] = Video(video_id, duration, video_subset, fps=fps, num_frames=num_frames, filename=filename, sentences=sentences)
    return _tallied_set(fmt, path, videos, [], video_subset, _sentence_tallies(path, clipped, dropped))


# --------------------------------------------------------------------------- Charades-STA
_CHARADES_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s*##(.*)$")
# A Charades-STA line that lost its '##': a video id and two times, then the sentence.
_CHARADES_LINE_WITHOUT_SEPARATOR = re.compile(r"^\S+\s+\d+(?:\.\d+)?\s+\d+(?:\.\d+)?(?![\d.])")


def read_charades_lengths(paths: Union[PathLike, Sequence[PathLike]]) -> Dict[str, Tuple[float, str]]:
    """Video lengths (seconds) from ``Charades_v1_{train,test}.csv`` (columns ``id`` and ``length``).

    Returns ``{video id: (length, "file:line")}``; the same id in two files must have the same length.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    lengths: Dict[str, Tuple[float, str]] = {}
    for p in paths:
        p = Path(p)
        expected = "a Charades_v1 csv"
        text = _read_text(p, expected + " with columns id and length")
        for line, row in _csv_rows(p, text, CHARADES_LENGTH_COLUMNS, expected):
            where = _line(line)
            vid = row["id"].strip()
            if not vid:
                raise AnnotationError(p, where, "id is empty; expected a Charades video id")
            length = _positive(row["length"], p, where, "length")
            if vid in lengths and abs(lengths[vid][0] - length) > DURATION_TOLERANCE:
                raise AnnotationError(p, where, f"video {vid} has length {length:g} but {lengths[vid][0]:g} at {lengths[vid][1]}; expected one length per video")
            lengths[vid] = (length, f"{p.name}:{line}")
    return lengths


def _find_charades_lengths(path: Path, subset: str) -> List[Path]:
    beside = path.parent / f"Charades_v1_{subset}.csv"
    if beside.exists():
        return [beside]
    return sorted(path.parent.glob("Charades_v1_*.csv"))


@READERS.register("charades-sta")
def read_charades_sta(
    path: PathLike,
    subset: Optional[str] = None,
    lengths: Union[None, PathLike, Sequence[PathLike], Dict[str, Tuple[float, str]]] = None,
) -> AnnotationSet:
    """Charades-STA: ``VID start end##sentence`` lines plus video lengths from ``Charades_v1_*.csv``.

    ``lengths`` is one or several length csvs (or their parsed mapping); when omitted, the
    ``Charades_v1_<subset>.csv`` beside the txt file is used. Query ends are clipped to the
    video length; queries with start >= end afterwards are dropped and counted.
    """
    fmt = "charades-sta"
    path = Path(path)
    expected = "Charades-STA lines 'VIDEO start end##sentence'"
    text = _read_text(path, expected)
    video_subset = _resolve_subset(path, fmt, subset)
    if lengths is None:
        found = _find_charades_lengths(path, video_subset)
        if not found:
            raise AnnotationError(
                path, "file",
                f"no video lengths: expected Charades_v1_{video_subset}.csv beside it or lengths=<Charades_v1_*.csv>",
            )
        lengths = found
    length_map = lengths if isinstance(lengths, dict) else read_charades_lengths(lengths)
    raw: Dict[str, List[Tuple[float, float, str]]] = {}
    for n, text_line in enumerate(text.splitlines(), start=1):
        if not text_line.strip():
            continue
        m = _CHARADES_LINE.match(text_line.strip())
        if m is None:
            if "##" not in text_line and _CHARADES_LINE_WITHOUT_SEPARATOR.match(text_line.strip()):
                raise AnnotationError(
                    path, _line(n),
                    f"is {_short(text_line)}, without '##' between the times and the sentence; expected 'VIDEO start end##sentence'",
                )
            raise AnnotationError(path, _line(n), f"is {_short(text_line)}; expected 'VIDEO start end##sentence'")
        vid, s, e, sentence = m.groups()
        start = _number(s, path, _line(n), "start")
        end = _number(e, path, _line(n), "end")
        if not sentence.strip():
            raise AnnotationError(path, _line(n), "has no sentence after '##'; expected 'VIDEO start end##sentence'")
        if vid not in length_map:
            raise AnnotationError(path, _line(n), f"video {vid} has no length in the Charades_v1 csv(s); expected every video listed there")
        raw.setdefault(vid, []).append((start, end, sentence.strip()))
    videos: Dict[str, Video] = {}
    clipped: Dict[str, int] = {}
    dropped: Dict[str, int] = {}
    for vid, queries in raw.items():
        duration = length_map[vid][0]
        sentences, clipped[vid], dropped[vid] = clip_sentences(queries, duration)
        videos[vid] = Video(vid, duration, video_subset, filename=_default_filename(vid), sentences=sentences)
    return _tallied_set(fmt, path, videos, [], video_subset, _sentence_tallies(path, clipped, dropped))


# --------------------------------------------------------------------------- Kinetics-style csv
def kinetics_clip_id(youtube_id: str, time_start: int, time_end: int) -> str:
    """The name Kinetics download tools give a trimmed clip (without extension)."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


_KINETICS_SPLITS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}


@READERS.register("kinetics-csv")
def read_kinetics_csv(path: PathLike, subset: Optional[str] = None) -> AnnotationSet:
    """A Kinetics-400 style csv ``label,youtube_id,time_start,time_end,split`` of trimmed clips.

    Each row is one video (the trimmed clip file ``<youtube_id>_<start:06d>_<end:06d>.mp4``)
    whose single segment, the whole clip, carries the label. ``subset`` keeps one split.
    """
    fmt = "kinetics-csv"
    path = Path(path)
    expected = "a Kinetics-style csv"
    text = _read_text(path, expected)
    if subset is not None:
        _check_subset(path, fmt, subset, "subset argument")
    videos: Dict[str, Video] = {}
    first_line: Dict[str, int] = {}
    for line, row in _csv_rows(path, text, KINETICS_COLUMNS, expected):
        where = _line(line)
        label = row["label"].strip()
        if not label:
            raise AnnotationError(path, where, "label is empty; expected the clip's class name")
        youtube_id = row["youtube_id"].strip()
        if not youtube_id:
            raise AnnotationError(path, where, "youtube_id is empty; expected a video id")
        start = _integer(row["time_start"], path, where, "time_start")
        end = _integer(row["time_end"], path, where, "time_end")
        if end <= start:
            raise AnnotationError(path, where, f"time_end {end} is not after time_start {start}; expected a clip of positive length")
        split = _KINETICS_SPLITS.get(row["split"].strip().lower())
        if split is None:
            raise AnnotationError(path, where, f"split is {row['split']!r}; expected one of train, val, test")
        if subset is not None and split != subset:
            continue
        clip_id = kinetics_clip_id(youtube_id, start, end)
        if clip_id in videos:
            raise AnnotationError(path, where, f"clip {clip_id} is already listed on line {first_line[clip_id]}; expected each clip once")
        first_line[clip_id] = line
        duration = float(end - start)
        videos[clip_id] = Video(
            clip_id, duration, split, filename=f"{clip_id}.mp4", segments=[Segment(0.0, duration, label)]
        )
    if not videos and subset is None:
        raise AnnotationError(path, _line(2), f"no rows after the header; expected {expected} with at least one clip")
    return AnnotationSet(fmt, str(path), videos, _classes(videos), 0, [])


# --------------------------------------------------------------------------- class splits
def read_class_split(path: PathLike, known_classes: Optional[Iterable[str]] = None) -> List[str]:
    """Class names of a few-shot split file (comma-separated, spaces after commas, newlines allowed).

    With ``known_classes``, every name must be one of them (else the error names the closest).
    """
    path = Path(path)
    expected = "comma-separated class names"
    text = _read_text(path, expected)
    names: List[str] = []
    where_of: Dict[str, str] = {}
    for n, text_line in enumerate(text.splitlines(), start=1):
        if not text_line.strip():
            continue
        parts = text_line.split(",")
        for i, part in enumerate(parts):
            name = part.strip()
            if not name:
                if i == len(parts) - 1 and i > 0:
                    continue  # a trailing comma
                raise AnnotationError(path, _line(n), f"has an empty name at position {i + 1}; expected {expected}")
            if name in where_of:
                raise AnnotationError(path, _line(n), f"lists {name!r} twice (first on {where_of[name]}); expected each class once")
            where_of[name] = _line(n)
            names.append(name)
    if known_classes is not None:
        known = set(known_classes)
        for name in names:
            if name not in known:
                close = get_close_matches(name, sorted(known), n=3, cutoff=0.5)
                hint = f"closest known: {', '.join(repr(c) for c in close)}" if close else f"{len(known)} known classes, none close"
                raise AnnotationError(path, where_of[name], f"class {name!r} is not a known class; {hint}")
    return names


@dataclass
class FewShotSplit:
    """Disjoint base / validation / test classes of a few-shot protocol."""

    base: List[str]
    val: List[str]
    test: List[str]
    files: Dict[str, str]

    @property
    def classes(self) -> List[str]:
        return sorted(self.base + self.val + self.test)


def read_fewshot_split(
    base: PathLike, val: PathLike, test: PathLike, known_classes: Optional[Iterable[str]] = None
) -> FewShotSplit:
    """Read the three class lists of a few-shot split and check they are disjoint."""
    known = list(known_classes) if known_classes is not None else None
    files = {"base": Path(base), "val": Path(val), "test": Path(test)}
    lists = {k: read_class_split(p, known) for k, p in files.items()}
    check_disjoint({files[k]: v for k, v in lists.items()})
    return FewShotSplit(lists["base"], lists["val"], lists["test"], {k: str(p) for k, p in files.items()})


def check_disjoint(lists: Dict[Path, List[str]]) -> None:
    """Raise naming the class and both files when a class appears in two class lists."""
    owner: Dict[str, Path] = {}
    for p, names in lists.items():
        for name in names:
            if name in owner and owner[name] != p:
                raise AnnotationError(p, f"class {name!r}", f"is also listed in {owner[name]}; expected disjoint class splits")
            owner[name] = p


@READERS.register("class-split")
def read_class_split_set(
    path: PathLike, subset: Optional[str] = None, known_classes: Optional[Iterable[str]] = None
) -> AnnotationSet:
    """A class-split file as an ``AnnotationSet`` without videos (its ``classes`` are the file's names)."""
    path = Path(path)
    names = read_class_split(path, known_classes)
    label = subset or path.stem
    return AnnotationSet("class-split", str(path), {}, sorted(names), 0, [f"{path.name}: {len(names)} classes ({label})"])


# --------------------------------------------------------------------------- format detection
def _head_and_json(path: Path) -> tuple:
    """``(text without leading blanks, the parsed JSON or None)``: JSON when the text opens as JSON."""
    head = _read_text(path, "an annotation file").lstrip()
    return head, (_load_json(path, "an annotation JSON file") if head[:1] in "{[" else None)


def sniff_format(path: PathLike) -> Optional[str]:
    """The format a file's content looks like, ``"charades-lengths"`` for a Charades_v1 csv, or None."""
    path = Path(path)
    head, data = _head_and_json(path)
    if data is not None:
        if not isinstance(data, dict):
            return None
        if "database" in data and isinstance(data["database"], dict):
            return "activitynet-json"
        first = next(iter(data.values()), None)
        if isinstance(first, dict) and "timestamps" in first and "sentences" in first:
            if "fps" in first or "num_frames" in first:
                return "tacos"
            if "duration" in first:
                return "anet-captions"
        return None
    first_line = head.splitlines()[0].strip()
    header = {h.strip() for h in first_line.split(",")}
    if {"video-name", "t-start", "t-end"} <= header:
        return "tsp-csv"
    if {"youtube_id", "label"} <= header:
        return "kinetics-csv"
    if {"id", "length"} <= header:
        return "charades-lengths"
    if _CHARADES_LINE.match(first_line):
        return "charades-sta"
    if (path.suffix.lower() == ".txt" and "##" not in first_line and not re.search(r"\d+\.\d+\s+\d+\.\d+", first_line)
            and not _CHARADES_LINE_WITHOUT_SEPARATOR.match(first_line)):
        return "class-split"
    return None


# Columns that only a format's annotation rows have (a metadata csv shares video-duration, fps, ...).
_TSP_MARKS = {"video-name", "t-start", "t-end", "action-label", "temporal-region-label"}
_KINETICS_MARKS = {"youtube_id", "time_start", "time_end"}


def marked_format(path: PathLike) -> Optional[str]:
    """The format a file carries the marks of though it does not sniff as one (a damaged header,
    first line or first entry), or None.

    Its reader then says what is wrong on which line or key, where detection could only say that
    nothing matched. Label maps (JSON lists), metadata csvs and the like carry no format's marks.
    """
    path = Path(path)
    head, data = _head_and_json(path)
    if data is not None:
        if not isinstance(data, dict):
            return None
        if "database" in data or "taxonomy" in data:
            return "activitynet-json"
        first = next(iter(data.values()), None)
        if isinstance(first, dict) and {"timestamps", "sentences"} & set(first):
            return "tacos" if {"fps", "num_frames"} & set(first) else "anet-captions"
        return None
    first_line = head.splitlines()[0].strip()
    header = {h.strip() for h in first_line.split(",")}
    if header & _TSP_MARKS:
        return "tsp-csv"
    if header & _KINETICS_MARKS:
        return "kinetics-csv"
    if "##" in first_line or (path.suffix.lower() == ".txt" and _CHARADES_LINE_WITHOUT_SEPARATOR.match(first_line)):
        return "charades-sta"
    return None


def detect_format(path: PathLike) -> str:
    """The reader name for a file, from its content; a clear error when nothing matches."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "charades-lengths":
        raise AnnotationError(path, "file", "is a Charades_v1 video-length csv, not annotations; pass it with the charades_sta_*.txt file (lengths)")
    if fmt is None:
        first_line = _read_text(path, "an annotation file").lstrip().splitlines()[0]
        raise AnnotationError(
            path, "file",
            f"starts with {_short(first_line)}, which matches no known annotation format; expected one of: ActivityNet-1.3 JSON (\"database\"), "
            "ActivityNet Captions JSON (\"duration\", \"timestamps\", \"sentences\"), TACoS JSON (\"fps\", \"num_frames\"), "
            "TSP csv (video-name,t-start,t-end,...), Kinetics csv (label,youtube_id,...), Charades-STA txt "
            "('VIDEO start end##sentence'), class-split txt (comma-separated names); or pass the format explicitly",
        )
    return fmt
