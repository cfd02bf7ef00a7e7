"""TSP's clip protocol beside ours: the clips each side lists for pre-training and for extraction.

TSP (HumamAlwassel/TSP) lists clips in two datasets. ``train/untrimmed_video_dataset.py``
(``UntrimmedVideoDataset``) reads the segments of a ground-truth csv, clamps them to the video,
drops those shorter than one clip and gives ``clips_per_segment`` clips per segment: at a uniform
random position (training, ``temporal_jittering``) or evenly spaced (validation).
``extract_features/eval_video_dataset.py`` (``EvalVideoDataset``) lists every clip of a video at
a stride. ``benchmarks/reference/tsp_clips_vs_reference.py`` runs both from a checkout; this
module holds what needs no reference code:

* our own clip lists, through the datasets pre-training and extraction use (no decoding);
* the frames a clip reads on each side: ours by :func:`clap_bench.clips.frame_cache.nearest_frame_indices`,
  TSP's by the selection rule of torchvision's PyAV ``read_video`` (:func:`torchvision_read_video_frames`),
  which TSP calls and which torchvision no longer ships;
* the comparisons (segments, fixed clip positions, the extraction grid, the random starts) and
  the report.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

TSP_URL = "https://github.com/HumamAlwassel/TSP"
TSP_COMMIT = "9809875ece714d572e77f09b579a7bbb9d31c73b"
TSP_MARKER = "train/untrimmed_video_dataset.py"
TSP_EVAL_MODULE = "extract_features/eval_video_dataset.py"
KEY_DIGITS = 6  # segment times are matched to the microsecond (both sides read them from one csv)


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SegmentRow:
    """One segment a side samples clips from. ``label`` None: background."""

    video: str
    start: float
    end: float
    label: Optional[str]

    @property
    def length(self) -> float:
        return self.end - self.start

    def key(self) -> Tuple[str, float, float, Optional[str]]:
        return (self.video, round(self.start, KEY_DIGITS), round(self.end, KEY_DIGITS), self.label)


@dataclass(frozen=True)
class ListedClip:
    """One clip a side lists: its video, position, labels and (when known) the source frames it reads.

    ``segment`` is the segment it was drawn from (None for extraction clips), ``slot`` its
    clip slot in that segment (training and validation) or its index in the video (extraction).
    """

    video: str
    start: float
    end: float
    label: Optional[str]  # None: background
    segment: Optional[Tuple[float, float]] = None
    slot: Optional[int] = None
    frames: Optional[Tuple[int, ...]] = None

    @property
    def action(self) -> bool:
        return self.label is not None

    def segment_key(self) -> Tuple[str, float, float, Optional[str]]:
        seg = self.segment or (math.nan, math.nan)
        return (self.video, round(seg[0], KEY_DIGITS), round(seg[1], KEY_DIGITS), self.label)


# --------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class FrameTimes:
    """The frames of a video file: their presentation timestamps (stream units, sorted) and time base."""

    pts: np.ndarray  # int64, increasing
    time_base: float  # seconds per pts unit
    zero_pts: int  # the stream's start time: our decoder counts time from it
    average_rate: float  # the stream's average frame rate (what TSP's metadata csv records as fps)

    @property
    def seconds(self) -> np.ndarray:
        """Frame times as our decoder and frame cache count them: from the stream's start."""
        return (self.pts - self.zero_pts) * self.time_base

    def __len__(self) -> int:
        return len(self.pts)


def read_frame_times(path: str | Path) -> FrameTimes:
    """Every frame's timestamp, from the packets of the first video stream (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = float(stream.time_base)
        zero = int(stream.start_time) if stream.start_time is not None else 0
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        pts = sorted({int(p.pts) for p in container.demux(stream) if p.pts is not None})
    if not pts:
        raise ValueError(f"{path}: no video packet carries a timestamp")
    return FrameTimes(np.asarray(pts, dtype=np.int64), time_base, zero, rate)


def torchvision_read_video_frames(frames: FrameTimes, start: float, end: float) -> np.ndarray:
    """Indices of the frames ``torchvision.io.read_video(path, start, end, pts_unit="sec")`` returns.

    TSP decodes every clip with it (its environment pins torchvision 0.5; the call was removed in
    0.22). The rule of its PyAV backend, as stated in torchvision's ``io/video.py``: the bounds
    become stream units, ``floor(start / time_base)`` and ``ceil(end / time_base)``, and the
    frames whose timestamp lies between them (both included) are returned in time order; when
    ``start`` is past zero and no frame sits exactly on it, the last frame before it comes first.
    Timestamps are the stream's own (not counted from its start time).
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    lo = int(math.floor(start * (1.0 / frames.time_base)))
    hi = int(math.ceil(end * (1.0 / frames.time_base))) if end != math.inf else None
    pts = frames.pts
    first = int(np.searchsorted(pts, lo, side="left"))
    last = len(pts) if hi is None else int(np.searchsorted(pts, hi, side="right"))
    chosen = list(range(first, last))
    if lo > 0 and (first >= len(pts) or pts[first] != lo) and first > 0:
        chosen.insert(0, first - 1)
    return np.asarray(chosen, dtype=np.int64)


def our_clip_frames(frames: FrameTimes, starts: Sequence[float] | np.ndarray, clip_frames: int, clip_fps: float) -> np.ndarray:
    """Source frame indices ``(len(starts), clip_frames)`` our decoder and frame cache read for clips at ``starts``."""
    from clap_bench.clips.decode import clip_frame_times
    from clap_bench.clips.frame_cache import nearest_frame_indices

    return nearest_frame_indices(frames.seconds, clip_frame_times(starts, clip_frames, clip_fps))


def frame_difference_bound(video_fps: float, frame_rate: float) -> int:
    """The most (in source frames) the frames TSP and we read for one clip start can differ.

    TSP's clip frame ``k`` is the frame at or before the start (``read_video``) plus
    ``floor(k x step)`` frames, ``step = video_fps / frame_rate``; ours is the frame nearest
    ``start + k / frame_rate``. With a whole step only the start is rounded differently (at most
    one frame); with a fractional one both floors add up (at most two).
    """
    step = video_fps / frame_rate
    return 1 if abs(step - round(step)) < 1e-9 else 2


# --------------------------------------------------------------------------- our side
@dataclass
class OurProtocol:
    """Our pre-training and extraction inputs for one profile, as the stages build them."""

    profile: object  # clap_bench.config.Profile
    annotations: object  # the whole pre-training dataset (AnnotationSet)
    video_dir: Path
    train: object  # SegmentClipDataset of the training subset, every segment, clip-level
    validation: object  # SegmentClipDataset of the validation subset, every segment, clip-level
    extraction: Dict[str, np.ndarray]  # video id -> clip starts (s), every video of the dataset
    durations: Dict[str, float]  # video id -> the duration extraction reads
    csv_files: Dict[str, Path]  # "training" / "validation" -> the TSP csv the annotations come from


def our_protocol(profile, short_segments: Optional[str] = None, last_clip: Optional[str] = None, seed: int = 0) -> OurProtocol:
    """Build our clip lists for ``profile`` (pre-training dataset, ``activitynet``) without decoding.

    The datasets are those :func:`clap_bench.training.pretrain.pretrain` builds for a method that
    samples foreground and background (TSP's), with every segment (``max_segments_per_epoch`` and
    ``val_max_segments`` draw subsets of them, a budget, not a change of protocol) and every class.
    ``short_segments`` overrides ``pretrain.short_segments``, ``last_clip`` ``extract.last_clip``. Videos listed by ``clapbench data
    check`` as problems are not left out here: the comparison reads the csv as TSP does.
    """
    from clap_bench.clips import SegmentClipDataset
    from clap_bench.config import resolve_datasets
    from clap_bench.data import load_dataset
    from clap_bench.training.pretrain import PRETRAIN_DATASET, segment_rules, validation_annotations

    cfg = profile.pretrain if short_segments is None else dataclasses.replace(profile.pretrain, short_segments=short_segments)
    datasets = resolve_datasets(profile)
    if PRETRAIN_DATASET not in datasets:
        raise KeyError(f"profile {profile.name!r} has no {PRETRAIN_DATASET!r} dataset")
    ds_cfg = datasets[PRETRAIN_DATASET]
    if ds_cfg.format != "tsp-csv":
        raise ValueError(f"dataset {PRETRAIN_DATASET!r} is read from {ds_cfg.format!r} files; the comparison needs TSP's csv (format tsp-csv)")
    full = load_dataset(ds_cfg, PRETRAIN_DATASET)
    train_ann = full.subset(*[s for s in ("training", "train") if s in full.subsets])
    classes = list(train_ann.classes)
    val_ann = validation_annotations(full, classes)
    limits = segment_rules(cfg, profile.clips)
    common = dict(regions="all", classes=classes, max_segments=None, clip_level=True, **limits)
    train = SegmentClipDataset(train_ann, ds_cfg.videos, profile.clips, train=True, seed=seed, **common)
    validation = SegmentClipDataset(val_ann, ds_cfg.videos, profile.clips, train=False, seed=0, **common)
    clips = profile.clips
    # the durations and rule of clap_bench.features.extract (dataset_videos, encode_videos)
    durations = {vid: float(full.videos[vid].duration) for vid in sorted(full.videos)}
    grid = profile.extract if last_clip is None else dataclasses.replace(profile.extract, last_clip=last_clip)
    extraction = {vid: grid.clip_starts(d, clips, full.videos[vid].fps, full.videos[vid].num_frames) for vid, d in durations.items()}
    csv_files = {}
    for path in ds_cfg.annotations:
        name = Path(path).name
        csv_files["training" if "_train_" in name else "validation" if "_valid_" in name else name] = Path(path)
    return OurProtocol(profile, full, Path(ds_cfg.videos), train, validation, extraction, durations, csv_files)


def our_segments(dataset) -> List[SegmentRow]:
    """The segments a :class:`~clap_bench.clips.SegmentClipDataset` samples, in its order."""
    return [SegmentRow(it.video_id, it.start, it.end, it.label) for it in dataset.items]


def our_clips(dataset, epochs: Iterable[int] = (0,)) -> List[ListedClip]:
    """Every clip of every item of ``dataset`` for each epoch (positions only; nothing is decoded)."""
    out: List[ListedClip] = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item, starts, _, _ = dataset.clip_times(index)
            _, slot = dataset.locate(index)
            for start in starts:
                out.append(ListedClip(item.video_id, float(start), float(start) + dataset.clip_seconds, item.label,
                                      (item.start, item.end), slot))
    dataset.set_epoch(0)
    return out


# --------------------------------------------------------------------------- comparisons
@dataclass
class SegmentComparison:
    ours: int
    theirs: int
    common: int
    only_ours: List[Tuple[SegmentRow, str]] = field(default_factory=list)
    only_theirs: List[Tuple[SegmentRow, str]] = field(default_factory=list)

    @property
    def unexplained(self) -> int:
        return sum(1 for _, why in self.only_ours + self.only_theirs if why.startswith("unexplained"))


def _why_segment_differs(segment: SegmentRow, clip_length: int, frame_rate: float, theirs_side: bool, duplicates: Counter) -> str:
    """Why ``segment`` is only on one side (``theirs_side``: TSP's); ``duplicates`` counts that side's segments."""
    if segment.length * frame_rate < clip_length:
        kind = "action" if segment.label is not None else "background"
        rule = "TSP drops it" if not theirs_side else "we drop it"
        return f"{kind} shorter than one clip ({clip_length / frame_rate:.3f} s): {rule}"
    if duplicates[segment.key()] > 1:
        return "a repeated csv row: we keep one copy" if theirs_side else "a repeated csv row: TSP keeps one copy"
    return "unexplained"


def compare_segments(ours: Sequence[SegmentRow], theirs: Sequence[SegmentRow], clip_length: int, frame_rate: float) -> SegmentComparison:
    """Match the two segment lists as multisets (video, start, end, label to the microsecond) and say why the rest differ."""
    ours_count, theirs_count = Counter(s.key() for s in ours), Counter(s.key() for s in theirs)
    common = sum((ours_count & theirs_count).values())
    result = SegmentComparison(len(ours), len(theirs), common)
    left_ours, left_theirs = ours_count - theirs_count, theirs_count - ours_count
    by_key = {s.key(): s for s in list(ours) + list(theirs)}
    for key, n in sorted(left_ours.items(), key=lambda kv: str(kv[0])):
        for _ in range(n):
            result.only_ours.append((by_key[key], _why_segment_differs(by_key[key], clip_length, frame_rate, False, ours_count)))
    for key, n in sorted(left_theirs.items(), key=lambda kv: str(kv[0])):
        for _ in range(n):
            result.only_theirs.append((by_key[key], _why_segment_differs(by_key[key], clip_length, frame_rate, True, theirs_count)))
    return result


@dataclass
class FixedClipComparison:
    """Clips at fixed positions (validation, or extraction), matched one to one by their key."""

    ours: int
    theirs: int
    matched: int
    within_tolerance: int
    max_start_diff: float
    label_mismatches: int
    only_ours: List[ListedClip] = field(default_factory=list)
    only_theirs: List[ListedClip] = field(default_factory=list)
    frames_compared: int = 0
    frames_same: int = 0
    frames_max_diff: int = 0  # in source frames
    frames_length_mismatches: int = 0  # clips for which the two sides read a different number of frames

    @property
    def all_within(self) -> bool:
        return self.within_tolerance == self.matched


def compare_fixed_clips(
    ours: Sequence[ListedClip],
    theirs: Sequence[ListedClip],
    tolerance: float,
    key: Callable[[ListedClip], tuple],
) -> FixedClipComparison:
    """Pair clips with the same ``key``; compare their start times (to ``tolerance`` s), labels and frames."""
    mine = {key(c): c for c in ours}
    other = {key(c): c for c in theirs}
    if len(mine) != len(ours) or len(other) != len(theirs):
        raise ValueError("clip keys are not unique; choose a key that names one clip")
    both = [k for k in mine if k in other]
    diffs = np.array([abs(mine[k].start - other[k].start) for k in both]) if both else np.zeros(0)
    result = FixedClipComparison(
        len(ours), len(theirs), len(both), int((diffs <= tolerance).sum()), float(diffs.max()) if both else 0.0,
        sum(1 for k in both if mine[k].label != other[k].label),
        [mine[k] for k in mine if k not in other], [other[k] for k in other if k not in mine],
    )
    for k in both:
        a, b = mine[k].frames, other[k].frames
        if a is None or b is None:
            continue
        result.frames_compared += 1
        if len(a) != len(b):
            result.frames_length_mismatches += 1
            continue
        d = int(np.abs(np.asarray(a) - np.asarray(b)).max())
        result.frames_same += d == 0
        result.frames_max_diff = max(result.frames_max_diff, d)
    return result


def segment_slot_key(clip: ListedClip) -> tuple:
    return clip.segment_key() + (clip.slot,)


def video_index_key(clip: ListedClip) -> tuple:
    return (clip.video, clip.slot)


def grid_clips(starts: Mapping[str, np.ndarray], clip_seconds: float) -> List[ListedClip]:
    """Extraction clips from ``{video: starts}``: slot = the clip's index (its feature's row)."""
    return [ListedClip(v, float(s), float(s) + clip_seconds, None, None, i) for v in sorted(starts) for i, s in enumerate(starts[v])]


@dataclass
class GridComparison:
    videos: int
    same_count: int
    ours_total: int
    theirs_total: int
    max_start_diff: float  # over the clips both grids have
    count_differences: List[Tuple[str, int, int, str]] = field(default_factory=list)  # video, ours, theirs, why


def compare_grids(
    ours: Mapping[str, np.ndarray],
    theirs: Mapping[str, np.ndarray],
    why: Callable[[str, int, int], str],
) -> GridComparison:
    """Compare the extraction grids video by video: clip counts, and the starts of the clips both have."""
    videos = sorted(set(ours) | set(theirs))
    result = GridComparison(len(videos), 0, sum(len(v) for v in ours.values()), sum(len(v) for v in theirs.values()), 0.0)
    for vid in videos:
        a = np.asarray(ours.get(vid, np.zeros(0)), dtype=np.float64)
        b = np.asarray(theirs.get(vid, np.zeros(0)), dtype=np.float64)
        n = min(len(a), len(b))
        if n:
            result.max_start_diff = max(result.max_start_diff, float(np.abs(a[:n] - b[:n]).max()))
        if len(a) == len(b):
            result.same_count += 1
        else:
            result.count_differences.append((vid, len(a), len(b), why(vid, len(a), len(b))))
    return result


def explain_grid_difference(
    n_ours: int, n_theirs: int, our_rule: str, last_start: float, duration: float, clip_frames: int, frame_rate: float, video_fps: float
) -> str:
    """Why a video's extraction grid has one clip more on one side; ``last_start``: the start of the side's extra clip.

    TSP resamples a video of ``video_fps`` to ``frame_rate`` with a slice ``[::step]`` when the
    step is a whole number (ceil(frames / step) frames: a last clip whose frames all exist
    counts, the ``frames`` rule) and with ``int(frames x frame_rate / fps)`` indices otherwise
    (the ``span`` rule).
    """
    step = video_fps / frame_rate
    whole = abs(step - round(step)) < 1e-9
    ends_past = last_start + clip_frames / frame_rate > duration + 1e-9
    frames_inside = last_start + (clip_frames - 1) / frame_rate < duration - 1e-9
    if n_theirs == n_ours + 1 and our_rule == "span" and whole and ends_past and frames_inside:
        return ("TSP keeps a last clip whose frames all exist though its span runs past the end of the video "
                f"(step {step:g}: the frames rule); ours: span")
    if n_ours == n_theirs + 1 and our_rule == "frames" and not whole and ends_past and frames_inside:
        return (f"TSP resamples by a fractional step ({step:g} source frames) and keeps int(frames x rate / fps) frames "
                "(the span rule); ours: frames")
    return "unexplained"


@dataclass
class RandomStartComparison:
    """Random training starts of one side: where they fall in their segment's allowed range."""

    clips: int
    epochs: int
    segments: int
    clips_per_segment_epoch: Tuple[int, int]  # (min, max) clips a segment gets in one epoch
    outside_range: int
    position_mean: float  # of (start - lo) / (hi - lo), 0.5 for a uniform draw
    ks_uniform_p: float  # Kolmogorov-Smirnov test of the positions against U(0, 1)
    positions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def random_starts(
    clips: Sequence[ListedClip],
    ranges: Mapping[tuple, Tuple[float, float]],
    epochs: int,
    tolerance: float = 1e-9,
) -> RandomStartComparison:
    """Positions of random ``clips`` inside their segment's start range (``ranges`` by segment key)."""
    from scipy import stats

    positions, outside = [], 0
    per_segment = Counter()
    for clip in clips:
        lo, hi = ranges[clip.segment_key()]
        per_segment[clip.segment_key()] += 1
        if clip.start < lo - tolerance or clip.start > hi + tolerance:
            outside += 1
        if hi - lo > tolerance:
            positions.append((clip.start - lo) / (hi - lo))
    pos = np.asarray(positions, dtype=np.float64)
    counts = [n / epochs for n in per_segment.values()] or [0]
    p = float(stats.kstest(pos, "uniform").pvalue) if len(pos) else math.nan
    return RandomStartComparison(len(clips), epochs, len(per_segment), (int(min(counts)), int(max(counts))), outside,
                                 float(pos.mean()) if len(pos) else math.nan, p, pos)


def two_sample_p(a: RandomStartComparison, b: RandomStartComparison) -> float:
    """Two-sample Kolmogorov-Smirnov p-value: do both sides draw positions from one distribution?"""
    from scipy import stats

    if not len(a.positions) or not len(b.positions):
        return math.nan
    return float(stats.ks_2samp(a.positions, b.positions).pvalue)


def tsp_start_range(segment: SegmentRow, clip_seconds: float) -> Tuple[float, float]:
    """TSP's allowed clip starts in a (clamped, long enough) segment: ``[t-start, t-end - clip]``."""
    return segment.start, segment.end - clip_seconds


def our_start_range(segment: SegmentRow, clip_seconds: float, duration: float) -> Tuple[float, float]:
    from clap_bench.clips.sampling import start_range

    return start_range(segment.start, segment.end, clip_seconds, duration)


def compare_ranges(
    segments: Sequence[SegmentRow], clip_seconds: float, durations: Mapping[str, float], tolerance: float
) -> Tuple[int, int, float]:
    """(segments, with the same start range on both sides to ``tolerance``, largest difference in s)."""
    diffs = []
    for seg in segments:
        a = np.array(our_start_range(seg, clip_seconds, durations[seg.video]))
        b = np.array(tsp_start_range(seg, clip_seconds))
        diffs.append(float(np.abs(a - b).max()))
    d = np.asarray(diffs)
    return len(segments), int((d <= tolerance).sum()), float(d.max()) if len(d) else 0.0


# --------------------------------------------------------------------------- report
CSV_COLUMNS = ("video", "start", "end", "label", "region", "segment_start", "segment_end", "slot", "frames")


def clips_csv(clips: Sequence[ListedClip]) -> str:
    """A clip list as csv: one row per clip; ``region`` action or background (empty for extraction clips, which
    have no segment); ``frames`` the source frame indices, when known."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in clips:
        seg = c.segment or ("", "")
        writer.writerow([c.video, f"{c.start:.6f}", f"{c.end:.6f}", c.label or "",
                         "" if c.segment is None else "action" if c.action else "background",
                         *(f"{x:.6f}" if x != "" else "" for x in seg), "" if c.slot is None else c.slot,
                         " ".join(map(str, c.frames)) if c.frames is not None else ""])
    return buf.getvalue()


def count_by(rows: Iterable[Tuple[object, str]]) -> Dict[str, int]:
    """How many rows give each reason."""
    return dict(Counter(why for _, why in rows))


def describe_segments(name: str, c: SegmentComparison) -> List[str]:
    lines = [f"{name}: ours {c.ours}, TSP {c.theirs}, in both {c.common}, only ours {len(c.only_ours)}, only TSP {len(c.only_theirs)}"]
    for side, rows in (("only ours", c.only_ours), ("only TSP", c.only_theirs)):
        for why, n in sorted(count_by(rows).items()):
            lines.append(f"  {side}: {n} x {why}")
    return lines


def describe_fixed(name: str, c: FixedClipComparison, tolerance: float) -> List[str]:
    lines = [
        f"{name}: ours {c.ours}, TSP {c.theirs}, paired {c.matched}, start within {tolerance * 1000:.1f} ms "
        f"(one source frame) {c.within_tolerance}/{c.matched}, largest start difference {c.max_start_diff * 1000:.4f} ms, "
        f"label mismatches {c.label_mismatches}, only ours {len(c.only_ours)}, only TSP {len(c.only_theirs)}"
    ]
    if c.frames_compared:
        lines.append(f"  source frames read: identical in {c.frames_same}/{c.frames_compared} clips, "
                     f"largest difference {c.frames_max_diff} frame(s), different frame counts {c.frames_length_mismatches}")
    return lines


def describe_random(name: str, r: RandomStartComparison) -> str:
    lo, hi = r.clips_per_segment_epoch
    per = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return (f"{name}: {r.clips} clips over {r.epochs} epoch(s) of {r.segments} segments, {per} per segment per epoch, "
            f"outside the start range {r.outside_range}, mean position {r.position_mean:.3f} (uniform: 0.5), "
            f"KS vs uniform p = {r.ks_uniform_p:.3f}")
