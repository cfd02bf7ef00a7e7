"""``clapbench data check``: is every annotated video there, readable and as long as annotated?

For each video of each dataset a profile uses (one that has a video folder), a worker process:

* resolves its file the way the stages do (:func:`clap_bench.clips.resolve_video_path`);
* opens it and reads what the container declares (duration, fps, size);
* decodes the frames at its first and last annotated second (the earliest start and the latest
  end among its segments and sentences; 0 and the duration when it has none);
* compares the declared duration with the annotated one (``check.duration_tolerance`` seconds).

Problems have one of three kinds: ``missing`` (no file), ``unreadable`` (empty, not a video,
truncated, undecodable at an annotated second) and ``duration mismatch``. They are written to a
CSV (``video,dataset,problem,detail``; ``check.problems_file``, by default
``<data.cache_dir>/data_check/<profile>-problems.csv``), and every video's measurements to a
second CSV beside it (``...-videos.csv``). Pre-training and feature extraction read the problem
list when it exists (:func:`drop_problem_videos`) and leave those videos out up front, with one
warning giving the count, instead of meeting them mid-epoch. A dataset checked through another
one's video folder shares its missing and unreadable files, not its duration mismatches
(:func:`load_problem_videos`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set

from clap_bench.config import Profile, resolve_datasets
from clap_bench.data.schema import AnnotationSet, Video
from clap_bench.io import atomic_write_text

log = logging.getLogger(__name__)

MISSING = "missing"
UNREADABLE = "unreadable"
DURATION_MISMATCH = "duration mismatch"
PROBLEM_KINDS = (MISSING, UNREADABLE, DURATION_MISMATCH)
PROBLEM_COLUMNS = ("video", "dataset", "problem", "detail")
VIDEO_COLUMNS = ("video", "dataset", "path", "annotated_duration", "duration", "fps", "width", "height", "bytes", "problem")
# Captions annotate ActivityNet's videos: without a folder of their own they are read from it.
VIDEO_FOLDER_FALLBACK = {"activitynet-captions": "activitynet"}


@dataclass(frozen=True)
class VideoToCheck:
    video: str
    dataset: str
    path: str
    annotated_duration: float
    first_second: float
    last_second: float


@dataclass
class VideoReport:
    video: str
    dataset: str
    path: str
    annotated_duration: float
    duration: Optional[float] = None
    fps: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    bytes: Optional[int] = None
    problem: str = ""  # "" or one of PROBLEM_KINDS
    detail: str = ""


def problems_path(profile: Profile) -> Path:
    """Where ``data check`` writes the problem list of ``profile`` and the stages read it."""
    if profile.check.problems_file:
        return Path(profile.check.problems_file).expanduser()
    return Path(profile.data.cache_dir).expanduser() / "data_check" / f"{profile.name}-problems.csv"


def videos_path(problems_csv: Path) -> Path:
    """The per-video CSV beside a problem list: ``X-problems.csv`` -> ``X-videos.csv``."""
    stem = problems_csv.stem
    stem = stem[: -len("-problems")] if stem.endswith("-problems") else stem
    return problems_csv.with_name(f"{stem}-videos.csv")


def annotated_span(video: Video) -> tuple:
    """(first, last) annotated second of ``video``: its earliest start and latest end, within the video."""
    times = [(s.start, s.end) for s in video.segments] + [(s.start, s.end) for s in video.sentences]
    duration = float(video.duration)
    if not times:
        return 0.0, duration
    first = max(0.0, min(t[0] for t in times))
    last = max(t[1] for t in times)
    if duration > 0:
        last = min(last, duration)
    return first, max(first, last)


def videos_to_check(profile: Profile, datasets: Optional[Sequence[str]] = None) -> Dict[str, List[VideoToCheck]]:
    """Per dataset key (those with a video folder, or ``datasets``), the videos to check, sorted by id."""
    from clap_bench.clips import resolve_video_path
    from clap_bench.data.loading import load_dataset

    configured = resolve_datasets(profile)
    keys = list(datasets) if datasets else sorted(configured)
    unknown = [k for k in keys if k not in configured]
    if unknown:
        raise KeyError(f"profile {profile.name!r} has no dataset {unknown[0]!r}; known: {', '.join(sorted(configured))}")
    out: Dict[str, List[VideoToCheck]] = {}
    for key in keys:
        cfg = configured[key]
        folder = cfg.videos
        if folder is None and key in VIDEO_FOLDER_FALLBACK and VIDEO_FOLDER_FALLBACK[key] in configured:
            folder = configured[VIDEO_FOLDER_FALLBACK[key]].videos
        if folder is None or not cfg.annotations:
            if datasets:
                raise ValueError(f"dataset {key!r}: no video folder configured (data.datasets.{key}.videos)")
            continue
        ann = load_dataset(cfg, key)
        rows = []
        for vid in sorted(ann.videos):
            v = ann.videos[vid]
            first, last = annotated_span(v)
            rows.append(VideoToCheck(vid, key, str(resolve_video_path(folder, v)), float(v.duration), first, last))
        out[key] = rows
    return out


def check_video(item: VideoToCheck, tolerance: float) -> VideoReport:
    """Check one file (see the module docstring); never raises for a bad file."""
    from clap_bench.clips.decode import VideoDecodeError, decode_frames_at, probe_video

    report = VideoReport(item.video, item.dataset, item.path, item.annotated_duration)
    path = Path(item.path)
    if not path.is_file():
        report.problem, report.detail = MISSING, f"no file {path}"
        return report
    report.bytes = os.path.getsize(path)
    try:
        info = probe_video(path)
        report.duration = info.duration or None
        report.fps, report.width, report.height = info.fps, info.width, info.height
        # The last annotated second, a little inside it: an annotation may end exactly at the end.
        last = max(item.first_second, item.last_second - 0.5)
        decode_frames_at(path, [item.first_second, last], size=(32, 32))
    except VideoDecodeError as e:
        report.problem, report.detail = UNREADABLE, e.reason
        return report
    except Exception as e:  # a decoder failure of any other kind is the file's problem, not the check's
        report.problem, report.detail = UNREADABLE, f"{type(e).__name__}: {e}"
        return report
    if report.duration is None:
        report.problem, report.detail = UNREADABLE, "the container declares no duration"
    elif abs(report.duration - item.annotated_duration) > tolerance:
        report.problem = DURATION_MISMATCH
        report.detail = (
            f"file lasts {report.duration:.2f} s, annotated {item.annotated_duration:.2f} s "
            f"(tolerance {tolerance:g} s)"
        )
    return report


def _check_many(items: Sequence[VideoToCheck], tolerance: float) -> List[VideoReport]:
    return [check_video(it, tolerance) for it in items]


def iter_checks(items: Sequence[VideoToCheck], tolerance: float, jobs: int = 1, chunk: int = 8) -> Iterator[VideoReport]:
    """Reports of ``items`` (in completion order), over ``jobs`` processes."""
    if jobs <= 1 or len(items) <= 1:
        for it in items:
            yield check_video(it, tolerance)
        return
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_check_many, c, tolerance) for c in chunks]
        from concurrent.futures import as_completed

        for f in as_completed(futures):
            yield from f.result()


@dataclass
class CheckResult:
    reports: List[VideoReport]
    problems_csv: Path
    videos_csv: Path

    @property
    def problems(self) -> List[VideoReport]:
        return [r for r in self.reports if r.problem]

    def summary(self) -> Dict[str, Dict[str, object]]:
        """Per dataset: videos, found, missing, unreadable, duration mismatch, and the most common fps and size."""
        out: Dict[str, Dict[str, object]] = {}
        for r in self.reports:
            s = out.setdefault(r.dataset, {"videos": 0, "found": 0, MISSING: 0, UNREADABLE: 0, DURATION_MISMATCH: 0,
                                           "_fps": Counter(), "_size": Counter()})
            s["videos"] += 1
            s["found"] += r.problem != MISSING
            if r.problem:
                s[r.problem] += 1
            if r.fps:
                s["_fps"][round(r.fps, 2)] += 1
            if r.width:
                s["_size"][f"{r.width}x{r.height}"] += 1
        for s in out.values():
            fps, size = s.pop("_fps"), s.pop("_size")
            s["fps"] = _most_common(fps)
            s["size"] = _most_common(size)
        return dict(sorted(out.items()))


def _most_common(c: Counter) -> str:
    """The most common value, with its share when not every video has it."""
    if not c:
        return "-"
    value, n = c.most_common(1)[0]
    total = sum(c.values())
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if n == total else f"{text} ({n}/{total})"


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def check_data(
    profile: Profile, datasets: Optional[Sequence[str]] = None, jobs: int = 1, progress: bool = True,
    out: Optional[Path] = None,
) -> CheckResult:
    """Check every annotated video of ``profile`` (or of ``datasets``); write the two CSVs atomically."""
    todo = videos_to_check(profile, datasets)
    items = [it for rows in todo.values() for it in rows]
    if not items:
        raise ValueError(f"profile {profile.name!r}: no dataset with a video folder to check")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="data check", unit="video")
    reports: List[VideoReport] = []
    try:
        for r in iter_checks(items, profile.check.duration_tolerance, jobs):
            reports.append(r)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    reports.sort(key=lambda r: (r.dataset, r.video))
    problems_csv = Path(out) if out is not None else problems_path(profile)
    videos_csv = videos_path(problems_csv)
    problems_csv.parent.mkdir(parents=True, exist_ok=True)
    # A dataset that was not checked this time keeps its earlier problems in the list.
    kept = [p for p in read_problems(problems_csv) if p["dataset"] not in todo] if problems_csv.exists() else []
    rows = [(p["video"], p["dataset"], p["problem"], p["detail"]) for p in kept]
    rows += [(r.video, r.dataset, r.problem, r.detail) for r in reports if r.problem]
    atomic_write_text(problems_csv, _csv_text(PROBLEM_COLUMNS, rows))
    atomic_write_text(videos_csv, _csv_text(VIDEO_COLUMNS, (
        [r.video, r.dataset, r.path, r.annotated_duration, _round(r.duration), _round(r.fps), r.width, r.height, r.bytes, r.problem]
        for r in reports)))
    return CheckResult(reports, problems_csv, videos_csv)


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else round(x, 3)


# --------------------------------------------------------------------------- the stages' side
def read_problems(path: Path) -> List[Dict[str, str]]:
    """Rows of a problem CSV, checked: the header and the problem kinds are those ``data check`` writes."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != PROBLEM_COLUMNS:
            raise ValueError(f"{path}: header {reader.fieldnames}; expected {','.join(PROBLEM_COLUMNS)} (written by clapbench data check)")
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["problem"] not in PROBLEM_KINDS:
                raise ValueError(f"{path}: line {line}: problem {row['problem']!r}; expected one of {', '.join(PROBLEM_KINDS)}")
            rows.append(row)
    return rows


def load_problem_videos(profile: Profile, dataset: str) -> Set[str]:
    """Ids of ``dataset``'s videos that ``clapbench data check`` found a problem with (empty when it never ran).

    A dataset checked through another one's video folder (``VIDEO_FOLDER_FALLBACK``: Captions through
    ActivityNet's) shares that folder's files, so a file found missing or unreadable under either
    counts for both. A duration mismatch counts only for the dataset it was found under: it compares
    the file with that dataset's own annotated duration, and Captions' durations come from another
    source than ActivityNet's (30 real videos differ by more than 2 s while matching ActivityNet's).
    """
    path = problems_path(profile)
    if not path.exists():
        return set()
    sharing = ({VIDEO_FOLDER_FALLBACK.get(dataset, dataset)} | {k for k, v in VIDEO_FOLDER_FALLBACK.items() if v == dataset}) - {dataset}
    return {
        row["video"] for row in read_problems(path)
        if row["dataset"] == dataset or (row["dataset"] in sharing and row["problem"] != DURATION_MISMATCH)
    }


def drop_problem_videos(profile: Profile, dataset: str, annotations: AnnotationSet, stage: str) -> AnnotationSet:
    """``annotations`` without the videos of the problem list (one warning with the count when any are left out)."""
    bad = load_problem_videos(profile, dataset) & set(annotations.videos)
    if not bad:
        return annotations
    log.warning(
        "%s: leaving out %d of %d %s videos listed as missing or broken in %s (clapbench data check)",
        stage, len(bad), len(annotations.videos), dataset, problems_path(profile),
    )
    kept = {vid: v for vid, v in annotations.videos.items() if vid not in bad}
    return AnnotationSet(annotations.format, annotations.source, kept, list(annotations.classes), annotations.dropped,
                         list(annotations.notes) + [f"{len(bad)} videos left out by the data check's problem list"],
                         annotations.lists_background, dict(annotations.subset_notes))


def report_dict(result: CheckResult) -> dict:
    return {
        "problems_csv": str(result.problems_csv),
        "videos_csv": str(result.videos_csv),
        "summary": result.summary(),
        "problems": [{k: getattr(r, k) for k in PROBLEM_COLUMNS if k != "problem"} | {"problem": r.problem} for r in result.problems],
        "videos": [asdict(r) for r in result.reports],
    }
