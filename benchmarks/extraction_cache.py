"""Feature extraction with and without the frame cache (``data.frame_cache``), same session.

Extracts the features of the first N videos of a dataset of a synthetic profile three times with
the same (source) encoder: decoding every video (``frame_cache: false``), with an empty frame cache
(cold: decodes each video once into the cache) and with the filled cache (warm: what every later
seed and method pays). Prints seconds, clips/s and ratios against decoding, and checks that the
three feature arrays are identical.

    python benchmarks/extraction_cache.py [--profile default] [--dataset charades-sta] [--videos 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clap_bench.clips.frame_cache import FrameCache
from clap_bench.config import load_profile
from clap_bench.encoders import build_video_encoder
from clap_bench.features.extract import dataset_videos, encode_videos
from clap_bench.training.pretrain import resolve_init_weights


def run(encoder, videos, profile, cache):
    t0 = time.perf_counter()
    feats = {vid: f for vid, f, err in encode_videos(encoder, videos, profile.clips, profile.extract.stride_frames,
                                                      profile.extract.batch_size, 0, frame_cache=cache)}
    return time.perf_counter() - t0, feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dataset", default="charades-sta")
    ap.add_argument("--videos", type=int, default=40)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    videos = dataset_videos(profile, args.dataset)[: args.videos]
    torch.manual_seed(0)
    encoder = build_video_encoder(dataclasses.replace(profile.encoder, weights=None), weights=resolve_init_weights(profile, progress=False))
    size = tuple(int(x) for x in profile.clips.resize)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FrameCache(Path(tmp) / "frames", size)
        runs = {"decode every time": run(encoder, videos, profile, None), "frame cache, cold": run(encoder, videos, profile, cache),
                "frame cache, warm": run(encoder, videos, profile, cache)}
        disk = cache.disk_bytes()
    clips = sum(len(f) for f in runs["decode every time"][1].values())
    base = runs["decode every time"][0]
    print(f"# {args.profile} profile, {args.dataset}: {len(videos)} videos, {clips} clips, torch threads {torch.get_num_threads()}")
    print("| extraction | seconds | clips/s | vs decoding |")
    print("|---|---|---|---|")
    for name, (secs, _) in runs.items():
        print(f"| {name} | {secs:.1f} | {clips / secs:.0f} | {base / secs:.2f}x |")
    ref = runs["decode every time"][1]
    same = all(np.array_equal(ref[v], f[v]) for _, f in runs.values() for v in ref)
    print(f"# identical features: {same}; frame cache on disk: {disk / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
