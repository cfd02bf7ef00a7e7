"""TSP's clips beside ours: the same videos and csv, the clips each side lists, compared.

Run (the reference is fetched outside the project, never copied into it)::

    git clone https://github.com/HumamAlwassel/TSP && git -C TSP checkout 9809875ece714d572e77f09b579a7bbb9d31c73b
    python benchmarks/reference/tsp_clips_vs_reference.py --reference TSP [--profile default] [--epochs 4] [--lists DIR]

Inputs: the pre-training dataset of the profile (``activitynet``; on the synthetic profiles the
ActivityNet-like set in the cache: real mp4 files and TSP's ground-truth csv files with their
background rows and label-mapping files). TSP's settings are matched to the profile's:
``clip_length`` = ``clips.frames``, ``frame_rate`` = ``clips.fps``, ``clips_per_segment`` =
``clips.clips_per_segment``, ``stride`` = ``extract.stride_frames``.

TSP's side runs its own classes from the checkout: ``UntrimmedVideoDataset`` (training csv with
``temporal_jittering=True``, validation csv with ``False``, as its ``train.py``) and
``EvalVideoDataset`` (every video, with the metadata csv its ``generate_metadata_csv.py`` would
write: frame count and average rate of each file). Their ``__getitem__`` runs as is, except that
``read_video``, which torchvision 0.22 removed, is replaced at run time by a reader that returns,
instead of pixels, the indices of the frames torchvision's PyAV backend would have returned
(:func:`clap_bench.reference.tsp.torchvision_read_video_frames`) and records the times asked for;
the transforms are the identity. So every clip's time, label and source frames are TSP's own.

Our side: the datasets pre-training and extraction build (:func:`clap_bench.reference.tsp.our_protocol`),
with every segment, listed without decoding; the frames a clip reads come from our decoder's rule.

Printed: the segment lists (with the profile's ``pretrain.short_segments`` and with ``drop``,
TSP's rule), validation clips paired by (segment, slot), the training starts' ranges and
distribution (TSP draws them at random: their range and distribution are compared, and the
frames both sides read at TSP's own random starts), and the extraction grid per video. With
``--lists DIR`` every clip list (each side, each kind) is also written to ``DIR/<side>-<kind>.csv``
(video, start, end, label, region, segment, slot, source frames).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from clap_bench.config import load_profile
from clap_bench.reference import ReferenceMissing, require_reference
from clap_bench.reference import tsp as T

LABEL_COLUMNS = ["action-label", "temporal-region-label"]


# --------------------------------------------------------------------------- the reference
class FrameIndexReader:
    """Stands in for ``torchvision.io.read_video``: the indices of the frames it would return, as a (N, 1, 1, 1) tensor."""

    def __init__(self):
        self.frames: Dict[str, T.FrameTimes] = {}
        self.last: Tuple[str, float, float] = ("", math.nan, math.nan)

    def times(self, filename: str) -> T.FrameTimes:
        if filename not in self.frames:
            self.frames[filename] = T.read_frame_times(filename)
        return self.frames[filename]

    def __call__(self, filename, start_pts=0, end_pts=None, pts_unit="pts"):
        import torch

        if pts_unit != "sec":
            raise ValueError(f"TSP reads clips with pts_unit='sec', got {pts_unit!r}")
        end = math.inf if end_pts is None else float(end_pts)
        index = T.torchvision_read_video_frames(self.times(filename), float(start_pts), end)
        self.last = (filename, float(start_pts), end)
        return torch.from_numpy(index).view(-1, 1, 1, 1), torch.empty((1, 0)), {"video_fps": self.times(filename).average_rate}


def load_reference(root: Path, reader: FrameIndexReader):
    """TSP's two dataset modules, imported from the checkout, reading through ``reader``."""
    import torchvision.io

    # The modules import read_video by name; torchvision >= 0.22 has none. A placeholder lets the
    # import through, and each module's own name is then pointed at the frame-index reader.
    placeholder = not hasattr(torchvision.io, "read_video")
    if placeholder:
        torchvision.io.read_video = reader
    modules = []
    try:
        for name, rel in (("tsp_untrimmed_video_dataset", T.TSP_MARKER), ("tsp_eval_video_dataset", T.TSP_EVAL_MODULE)):
            spec = importlib.util.spec_from_file_location(name, root / rel)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.read_video = reader
            modules.append(module)
    finally:
        if placeholder:
            del torchvision.io.read_video
    return modules


def label_mappings(csv_dir: Path) -> Tuple[List[dict], List[List[str]]]:
    """TSP's ``train.py`` mappings: each json file lists the names, a name's index is its position."""
    names = []
    for stem in ("activitynet_v1-3_action_label_mapping.json", "activitynet_v1-3_temporal_region_label_mapping.json"):
        path = csv_dir / stem
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TSP's label mapping file is missing (expected beside the csv files)")
        names.append(list(json.loads(path.read_text())))
    return [dict(zip(n, range(len(n)))) for n in names], names


def tsp_segments(dataset, names) -> List[T.SegmentRow]:
    rows = []
    for _, row in dataset.df.iterrows():
        label = int(row["action-label"])
        rows.append(T.SegmentRow(Path(row["filename"]).stem, float(row["t-start"]), float(row["t-end"]), names[0][label] if label >= 0 else None))
    return rows


def tsp_clips(dataset, reader: FrameIndexReader, names, passes: int) -> Tuple[List[T.ListedClip], List[str]]:
    """Every item of TSP's dataset ``passes`` times, through its own ``__getitem__``."""
    clips, problems = [], []
    n = len(dataset.df)
    for _ in range(passes):
        for idx in range(len(dataset)):
            row = dataset.df.iloc[idx % n]
            try:
                sample = dataset[idx]
            except RuntimeError as e:  # TSP's own check: fewer frames than clip_length
                problems.append(str(e).splitlines()[0][:200])
                continue
            filename, start, end = reader.last
            action, region = int(sample["action-label"]), int(sample["temporal-region-label"])
            label = names[0][action] if action >= 0 else None
            if (label is not None) != (names[1][region] == "Action"):
                problems.append(f"{filename}: action label {label!r} with region {names[1][region]!r}")
            clips.append(T.ListedClip(
                Path(filename).stem, start, end, label, (float(row["t-start"]), float(row["t-end"])), idx // n,
                tuple(int(i) for i in sample["clip"].reshape(-1).tolist()),
            ))
    return clips, problems


def tsp_extraction(module, reader: FrameIndexReader, root_dir: Path, videos: List[str], profile) -> Tuple[Dict[str, np.ndarray], List[T.ListedClip], dict]:
    """TSP's extraction clips of ``videos``: its grid from a metadata csv made as its script makes it."""
    import pandas as pd

    meta = []
    for vid in videos:
        times = reader.times(str(root_dir / f"{vid}.mp4"))
        meta.append({"filename": f"{vid}.mp4", "video-duration": len(times) / times.average_rate,
                     "fps": times.average_rate, "video-frames": len(times)})
    clips_cfg = profile.clips
    with tempfile.TemporaryDirectory() as out:
        dataset = module.EvalVideoDataset(pd.DataFrame(meta), str(root_dir), clips_cfg.frames, clips_cfg.fps,
                                          profile.extract.stride_frames, out, transforms=lambda x: x)
        grid: Dict[str, List[float]] = {vid: [] for vid in videos}
        listed = []
        for idx in range(len(dataset)):
            sample = dataset[idx]
            _, start, end = reader.last
            vid = Path(sample["filename"]).stem
            listed.append(T.ListedClip(vid, start, end, None, None, len(grid[vid]),
                                       tuple(int(i) for i in sample["clip"].reshape(-1).tolist())))
            grid[vid].append(start)
    return {v: np.asarray(s) for v, s in grid.items()}, listed, {m["filename"][:-4]: m for m in meta}


# --------------------------------------------------------------------------- our frames
def with_our_frames(clips: List[T.ListedClip], reader: FrameIndexReader, video_dir: Path, profile) -> List[T.ListedClip]:
    """The same clips with the source frames our decoder reads for them."""
    out = []
    for clip in clips:
        frames = T.our_clip_frames(reader.times(str(video_dir / f"{clip.video}.mp4")), [clip.start], profile.clips.frames, profile.clips.fps)[0]
        out.append(T.ListedClip(clip.video, clip.start, clip.end, clip.label, clip.segment, clip.slot, tuple(int(i) for i in frames)))
    return out


def frame_agreement(theirs: List[T.ListedClip], ours: List[T.ListedClip]) -> Counter:
    """Per clip, the largest difference (in source frames) between the frames the two sides read at the same start
    (-1: a different number of frames)."""
    out = Counter()
    for a, b in zip(theirs, ours):
        out[int(np.abs(np.asarray(a.frames) - np.asarray(b.frames)).max()) if len(a.frames) == len(b.frames) else -1] += 1
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="folder of a TSP checkout (HumamAlwassel/TSP)")
    parser.add_argument("--profile", default="default", help="profile whose pre-training dataset and clip settings are compared (default: default)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of random training starts drawn on each side (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="our pre-training seed (TSP's dataset seeds its own generator with 42)")
    parser.add_argument("--lists", type=Path, help="folder to write every clip list into, one csv per side and kind")
    args = parser.parse_args(argv)
    try:
        root = require_reference(args.reference, "TSP", T.TSP_URL, T.TSP_COMMIT, T.TSP_MARKER)
    except ReferenceMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.time()
    profile = load_profile(args.profile)
    clips_cfg = profile.clips
    clip_seconds = clips_cfg.frames / clips_cfg.fps
    ours = T.our_protocol(profile, seed=args.seed)
    ours_drop = T.our_protocol(profile, short_segments="drop", seed=args.seed) if profile.pretrain.short_segments != "drop" else ours
    variants = [(f"ours ({profile.pretrain.short_segments})", ours)] + ([("ours (drop)", ours_drop)] if ours_drop is not ours else [])
    lists: Dict[str, List[T.ListedClip]] = {}  # what --lists writes
    reader = FrameIndexReader()
    untrimmed, evaluation = load_reference(root, reader)
    mappings, names = label_mappings(ours.csv_files["training"].parent)

    settings = dict(clip_length=clips_cfg.frames, frame_rate=clips_cfg.fps, clips_per_segment=clips_cfg.clips_per_segment,
                    stride=profile.extract.stride_frames)
    print(f"TSP {T.TSP_COMMIT} at {root}")
    print(f"profile {profile.name}: videos {ours.video_dir}")
    print(f"  csv: {ours.csv_files['training']}, {ours.csv_files['validation']}")
    print("  TSP settings matched to the profile: " + ", ".join(f"{k}={v}" for k, v in settings.items())
          + f" (a clip spans {clip_seconds:.4f} s); pretrain.short_segments={profile.pretrain.short_segments}")
    common = dict(clip_length=clips_cfg.frames, frame_rate=clips_cfg.fps, clips_per_segment=clips_cfg.clips_per_segment,
                  label_columns=list(LABEL_COLUMNS), label_mappings=mappings, transforms=lambda x: x)
    removed = io.StringIO()
    with contextlib.redirect_stdout(removed):
        tsp_train = untrimmed.UntrimmedVideoDataset(str(ours.csv_files["training"]), str(ours.video_dir), temporal_jittering=True, **common)
        tsp_valid = untrimmed.UntrimmedVideoDataset(str(ours.csv_files["validation"]), str(ours.video_dir), temporal_jittering=False, **common)
    for line in removed.getvalue().splitlines():
        print(f"  TSP says: {line.strip()}")

    # "the same clip" = starts within one source frame of the fastest video
    fps_values = [float(v.fps) for v in ours.annotations.videos.values() if v.fps]
    tolerance = 1.0 / max(fps_values) if fps_values else 1.0 / 30.0
    bound = max((T.frame_difference_bound(f, clips_cfg.fps) for f in set(fps_values)), default=2)
    print(f"  source frames of a clip: TSP's and ours may differ by up to {bound} (video fps {sorted(set(fps_values))} / "
          f"clip fps {clips_cfg.fps:g}: TSP floors the start and, with a fractional step, each frame's offset; ours is the nearest frame)")
    ok = True

    # ---- classes and regions
    print("\n== labels")
    same_classes = list(ours.train.classes) == names[0]
    print(f"action classes: ours {len(ours.train.classes)}, TSP {len(names[0])}, same index order: {same_classes}")
    print(f"region labels: TSP {dict(zip(names[1], range(len(names[1]))))}; ours region 1 = action, 0 = background "
          f"(an internal index of the region head; compared by name below)")
    ok &= same_classes

    # ---- segments
    print("\n== segments (the deterministic part of pre-training)")
    for subset, tsp_ds in (("training", tsp_train), ("validation", tsp_valid)):
        theirs = tsp_segments(tsp_ds, names)
        for name, protocol in variants:
            ds = protocol.train if subset == "training" else protocol.validation
            c = T.compare_segments(T.our_segments(ds), theirs, clips_cfg.frames, clips_cfg.fps)
            for line in T.describe_segments(f"{subset}, {name}", c):
                print(line)
            ok &= c.unexplained == 0
        print(f"{subset}: clips per epoch: TSP {len(tsp_ds)} ({len(tsp_ds.df)} segments x {tsp_ds.clips_per_segment}), "
              + ", ".join(f"{name} {len(ds)} ({len(ds.items)} x {ds.clips_per_item})"
                          for name, ds in ((n, p.train if subset == "training" else p.validation) for n, p in variants)))
    n, same, worst = T.compare_ranges(tsp_segments(tsp_train, names), clip_seconds, ours.durations, 1e-9)
    print(f"training start ranges [lo, hi] of TSP's segments: same on both sides for {same}/{n} (largest difference {worst:.2e} s)")
    ok &= same == n

    # ---- validation: fixed positions
    print("\n== validation clips (evenly spaced, deterministic), paired by segment and slot")
    theirs_val, problems_val = tsp_clips(tsp_valid, reader, names, 1)
    lists["tsp-validation"] = theirs_val
    for name, protocol in variants:
        ours_val = with_our_frames(T.our_clips(protocol.validation), reader, ours.video_dir, profile)
        lists[f"{name.replace(' (', '-').rstrip(')')}-validation"] = ours_val
        c = T.compare_fixed_clips(ours_val, theirs_val, tolerance, T.segment_slot_key)
        for line in T.describe_fixed(name, c, tolerance):
            print(line)
        short = sum(1 for clip in c.only_ours if clip.segment[1] - clip.segment[0] < clip_seconds)
        if c.only_ours:
            print(f"  only ours: {short} of {len(c.only_ours)} are clips of segments shorter than one clip")
        ok &= c.all_within and c.label_mismatches == 0 and not c.only_theirs and short == len(c.only_ours)
        ok &= c.frames_max_diff <= bound and not c.frames_length_mismatches
    if problems_val:
        print(f"  TSP raised on {len(problems_val)} clip(s), e.g. {problems_val[0]}")

    # ---- training: random positions
    print(f"\n== training clips (random positions), {args.epochs} epoch(s) each side")
    theirs_train, problems_train = tsp_clips(tsp_train, reader, names, args.epochs)
    tsp_segs = tsp_segments(tsp_train, names)
    tsp_ranges = {s.key(): T.tsp_start_range(s, clip_seconds) for s in tsp_segs}
    r_tsp = T.random_starts(theirs_train, tsp_ranges, args.epochs)
    print(T.describe_random("TSP", r_tsp))
    lists["tsp-training"] = theirs_train
    for name, protocol in variants:
        ds = protocol.train
        mine = T.our_clips(ds, range(args.epochs))
        lists[f"{name.replace(' (', '-').rstrip(')')}-training"] = mine
        ranges = {s.key(): T.our_start_range(s, clip_seconds, ours.durations[s.video]) for s in T.our_segments(ds)}
        r = T.random_starts(mine, ranges, args.epochs)
        print(T.describe_random(name, r) + f"; same distribution as TSP's: two-sample KS p = {T.two_sample_p(r, r_tsp):.3f}")
        ok &= r.outside_range == 0
    ok &= r_tsp.outside_range == 0
    agreement = frame_agreement(theirs_train, with_our_frames(theirs_train, reader, ours.video_dir, profile))
    print("frames read at TSP's own random starts (ours by nearest frame, TSP's through read_video): largest difference per clip "
          + ", ".join(f"{k} frame(s): {v}" if k >= 0 else f"different frame counts: {v}" for k, v in sorted(agreement.items())))
    ok &= max(agreement) <= bound and -1 not in agreement
    if problems_train:
        print(f"  TSP raised on {len(problems_train)} clip(s), e.g. {problems_train[0]}")

    # ---- extraction grid
    print("\n== extraction clips (every clip at the stride), every video of both csv files")
    videos = sorted(ours.extraction)
    tsp_grid, tsp_listed, meta = tsp_extraction(evaluation, reader, ours.video_dir, videos, profile)
    lists["tsp-extraction"] = tsp_listed
    frames_mismatch = [v for v in videos if ours.annotations.videos[v].num_frames not in (None, meta[v]["video-frames"])]
    print(f"videos: {len(videos)}; csv video-frames equal to the files' frame counts: {len(videos) - len(frames_mismatch)}/{len(videos)}")

    other_rule = {"span": "frames", "frames": "span"}[profile.extract.last_clip]
    for rule in (profile.extract.last_clip, other_rule):
        grid = ours.extraction if rule == profile.extract.last_clip else T.our_protocol(profile, last_clip=rule, seed=args.seed).extraction

        def why(vid: str, n_ours: int, n_theirs: int) -> str:
            extra = (tsp_grid[vid] if n_theirs > n_ours else grid[vid])[-1]
            return T.explain_grid_difference(n_ours, n_theirs, rule, float(extra), ours.durations[vid], clips_cfg.frames,
                                             clips_cfg.fps, meta[vid]["fps"])

        g = T.compare_grids(grid, tsp_grid, why)
        print(f"ours (last_clip={rule}): clips ours {g.ours_total}, TSP {g.theirs_total}; videos with the same count "
              f"{g.same_count}/{g.videos}; largest start difference over shared clips {g.max_start_diff * 1000:.4f} ms")
        for w, k in sorted(T.count_by([(None, w) for *_, w in g.count_differences]).items()):
            print(f"  {k} video(s): {w}")
        for vid, a, b, _ in g.count_differences[:3]:
            print(f"  e.g. {vid} ({meta[vid]['video-frames']} frames, {ours.durations[vid]:.3f} s): ours {a}, TSP {b}")
        ok &= all(w != "unexplained" for *_, w in g.count_differences)
        ours_listed = with_our_frames(T.grid_clips(grid, clip_seconds), reader, ours.video_dir, profile)
        lists[f"ours-{rule}-extraction"] = ours_listed
        c = T.compare_fixed_clips(ours_listed, tsp_listed, tolerance, T.video_index_key)
        for line in T.describe_fixed("  clips paired by video and index", c, tolerance):
            print(line)
        ok &= c.all_within and c.frames_max_diff <= bound and not c.frames_length_mismatches

    if args.lists is not None:
        from clap_bench.io import atomic_write_text

        for name, clips in sorted(lists.items()):
            atomic_write_text(args.lists / f"{name}.csv", T.clips_csv(clips))
        print(f"\nclip lists: {', '.join(sorted(lists))} (.csv) in {args.lists}")
    print(f"\n{'every difference explained' if ok else 'UNEXPLAINED DIFFERENCES (see above)'}; {time.time() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
