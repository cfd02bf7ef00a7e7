"""How many clips the extraction grid lays over each video, with and without
``extract.snap_duration_to_frames``, for both last-clip rules (FIDELITY.md, "Duration the extraction
grid is laid over").

    python benchmarks/snap_grid_counts.py --profile default --dataset charades-sta

Prints, per rule, the clips over all videos unsnapped and snapped, and how many videos change.
Reads the profile's (synthetic) benchmark, generating it on first use; probes each file's stream
rate where the annotation gives none.
"""

from __future__ import annotations

import argparse
import dataclasses

from clap_bench.config import load_profile
from clap_bench.features.extract import dataset_videos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="charades-sta")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    videos = dataset_videos(profile, args.dataset)
    print(f"{args.profile} {args.dataset}: {len(videos)} videos")
    for rule in ("span", "frames"):
        counts = {}
        for snap in (False, True):
            grid = dataclasses.replace(profile.extract, last_clip=rule, snap_duration_to_frames=snap)
            counts[snap] = [len(grid.video_clip_starts(v.duration, profile.clips, v.path, v.fps, v.num_frames))
                            for v in videos]
        changed = sum(a != b for a, b in zip(counts[False], counts[True]))
        print(f"last_clip={rule}: {sum(counts[False])} clips unsnapped, {sum(counts[True])} snapped; "
              f"{changed} of {len(videos)} videos change")


if __name__ == "__main__":
    main()
