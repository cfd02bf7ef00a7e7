"""Clips per second per core: our clip loader against TSP's way of reading clips, on the same clips.

Run: ``python benchmarks/clip_loading.py`` (about a minute of CPU time, plus ~20 s to encode
the videos) or ``--quick`` (about 10 s).

The benchmark videos are encoded as TSP's standardisation does: 30 fps, H.264 (libx264) with
x264's default GOP of 250 frames, here at 128 pixels high. They show a moving textured
background with a moving object and sensor noise, so the encoder has real residuals to code.

Both loaders produce the same clips (16 frames at 15 fps, 128x171, crop 112, Kinetics
normalisation, paper sizes) from the same start times, with single-threaded decoding
(``thread_count=1``, slice threading, i.e. one thread) and ``torch.set_num_threads(1)``:

* TSP's approach, per clip: ``torchvision.io.read_video(path, start, end)``, which torchvision
  0.29 no longer has, written out with PyAV as it worked: open, seek to the keyframe before the
  clip, decode every frame up to the clip's end, convert each frame of the span to full-size
  RGB (``frame.to_rgb()``, here with its scaler held to one thread like everything else),
  then subsample 16 frames and resize them as float tensors (TSP's transforms).
* Ours (``clap_bench.clips``): extraction reads a video once for all its clips
  (``iter_video_clips``); training decodes each segment once for its 5 clips
  (``decode_clips``); wanted frames only are converted, scaled to 128x171 in that conversion.

Two uses are timed, each on its own clip set: extraction (every clip of each video at a
16-frame stride) and training (5 random clips per segment, the videos cut into contiguous
segments of 2-20 s; also reported by segment length, since the longer the segment, the less
its clips share). Everything a loader does is timed, opening the file included. Rates are
clips per CPU-second of this single-threaded process (clips/s per core), so a busy machine
changes them little. The extra column "TSP + one scaler" is TSP's approach with the RGB
conversion done by one reusable scaler, to separate what sharing the decoding brings.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from tabulate import tabulate

from clap_bench.clips import (
    clip_seconds,
    decode_clips,
    extraction_clip_starts,
    iter_video_clips,
    sample_clip_starts,
    transform_clips,
)
from clap_bench.clips.transforms import KINETICS_MEAN, KINETICS_STD

SOURCE_FPS = 30
GOP = 250  # x264's default keyint
HEIGHT, WIDTH = 128, 172  # 4:3-ish 128p; H.264 4:2:0 needs an even width
FRAMES, FPS, RESIZE, CROP, CLIPS_PER_SEGMENT = 16, 15.0, (128, 171), 112, 5
THREADS = 1


# --------------------------------------------------------------------------- benchmark videos
def encode_video(path: Path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=SOURCE_FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"g": str(GOP)}
    texture = rng.integers(0, 256, (2 * HEIGHT + 8, 2 * WIDTH + 8, 3)).astype(np.float32)
    for axis in (0, 1):  # smooth the noise into a texture
        texture = (np.roll(texture, 1, axis) + texture + np.roll(texture, -1, axis)) / 3
    texture = texture.astype(np.uint8)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    phase = rng.uniform(0, 2 * np.pi, 4)
    for i in range(int(seconds * SOURCE_FPS)):
        oy = int(HEIGHT / 2 * (1 + np.sin(i / 70 + phase[0])))
        ox = int(WIDTH / 2 * (1 + np.sin(i / 90 + phase[1])))
        img = texture[oy : oy + HEIGHT, ox : ox + WIDTH].copy()
        cy = HEIGHT / 2 + 0.3 * HEIGHT * np.sin(i / 15 + phase[2])
        cx = (i * 2 + 40 * phase[3]) % WIDTH
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = (200, 60, 40)
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def keyframe_interval(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        flags = [p.is_keyframe for p in container.demux(stream) if p.size]
    return len(flags) / max(1, sum(flags))


# --------------------------------------------------------------------------- TSP's approach
def read_video_span(path: Path, start: float, end: float, convert: Callable) -> np.ndarray:
    """What ``torchvision.io.read_video(path, start, end, pts_unit="sec")`` did with PyAV:
    seek to the keyframe before ``start``, decode every frame up to ``end``, convert each
    frame of [start, end] to full-size RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = THREADS
        stream.codec_context.thread_type = "SLICE"
        time_base = float(stream.time_base)
        start_pts, end_pts = int(np.floor(start / time_base)), int(np.ceil(end / time_base))
        container.seek(max(start_pts - 1, 0), stream=stream, backward=True, any_frame=False)
        frames = {}
        for frame in container.decode(stream):
            frames[frame.pts] = frame
            if frame.pts >= end_pts:
                break
        kept = [frames[p] for p in sorted(frames) if start_pts <= p <= end_pts]
        return np.stack([convert(f) for f in kept])


def tsp_transform(frames: np.ndarray, src_fps: float, generator: torch.Generator, train: bool) -> torch.Tensor:
    """TSP's clip path after reading: resample to 16 frames at 15 fps, float, resize, crop, flip, normalise."""
    idx = np.minimum(np.floor(np.arange(FRAMES) * src_fps / FPS).astype(int), len(frames) - 1)
    x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    x = F.interpolate(x, size=RESIZE, mode="bilinear", align_corners=False)
    h, w = RESIZE
    if train:
        top = int(torch.randint(0, h - CROP + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - CROP + 1, (1,), generator=generator))
    else:
        top, left = (h - CROP) // 2, (w - CROP) // 2
    x = x[:, :, top : top + CROP, left : left + CROP]
    if train and bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).permute(1, 0, 2, 3).contiguous()  # (3, T, crop, crop)


def tsp_clips(path: Path, starts: np.ndarray, train: bool, convert: Callable) -> int:
    span = clip_seconds(FRAMES, FPS)
    generator = torch.Generator().manual_seed(0)
    for start in starts:
        frames = read_video_span(path, float(start), float(start) + span, convert)
        clip = tsp_transform(frames, SOURCE_FPS, generator, train)
        assert clip.shape == (3, FRAMES, CROP, CROP)
    return len(starts)


def per_frame_scaler(frame: "av.VideoFrame") -> np.ndarray:
    # frame.to_rgb(): a new swscale context for every frame, as torchvision did; one thread,
    # like every other step here.
    return frame.reformat(format="rgb24", threads=THREADS).to_ndarray()


def one_scaler() -> Callable:
    reformatter = VideoReformatter()
    return lambda frame: reformatter.reformat(frame, format="rgb24", threads=THREADS).to_ndarray()


# --------------------------------------------------------------------------- ours
def our_extraction(path: Path, starts: np.ndarray) -> int:
    count = 0
    for _, frames in iter_video_clips(path, starts, FRAMES, FPS, RESIZE, chunk=64, threads=THREADS):
        clips = transform_clips(frames, CROP, train=False)
        count += clips.shape[0]
    return count


def our_segment(path: Path, starts: np.ndarray, generator: torch.Generator) -> int:
    frames = decode_clips(path, starts, FRAMES, FPS, RESIZE, threads=THREADS)
    return transform_clips(frames, CROP, True, generator).shape[0]


# --------------------------------------------------------------------------- clip sets
def segment_starts(duration: float, rng: np.random.Generator) -> Tuple[List[np.ndarray], List[float]]:
    """Cut a video into contiguous segments of 2-20 s; 5 random clip starts in each."""
    span = clip_seconds(FRAMES, FPS)
    bounds = [0.0]
    while bounds[-1] < duration:
        bounds.append(min(duration, bounds[-1] + rng.uniform(2.0, 20.0)))
    starts, lengths = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        starts.append(sample_clip_starts(a, b, span, CLIPS_PER_SEGMENT, train=True, rng=rng, video_duration=duration))
        lengths.append(b - a)
    return starts, lengths


BUCKETS = ("< 5 s", "5-15 s", ">= 15 s")


def bucket(length: float) -> str:
    return BUCKETS[0] if length < 5 else BUCKETS[1] if length < 15 else BUCKETS[2]


def timed(fn: Callable[[], int]) -> Tuple[int, float, float]:
    """(clips, CPU seconds of this process, wall seconds). Per-core rates use CPU time, which a
    busy machine inflates far less than wall time (everything here runs on one thread)."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return n, time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4, help="number of benchmark videos")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each video (s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; each work unit counts with its fastest round")
    parser.add_argument("--quick", action="store_true", help="2 videos of 20 s, 1 round")
    parser.add_argument("--video-dir", type=Path, default=None, help="keep (and reuse) the encoded videos here")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.seconds, args.repeats = 2, 20.0, 1
    torch.set_num_threads(1)

    workdir = args.video_dir or Path(tempfile.mkdtemp(prefix="clip_loading_"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"bench_{i}_{int(args.seconds)}s.mp4" for i in range(args.videos)]
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        if not path.exists():
            encode_video(path, args.seconds, seed=i)
    encode_s = time.perf_counter() - t0
    gop = np.mean([keyframe_interval(p) for p in paths])
    print(f"videos: {args.videos} x {args.seconds:.0f} s, {WIDTH}x{HEIGHT}, {SOURCE_FPS} fps, libx264 keyint {GOP} "
          f"(measured: a keyframe every {gop:.0f} frames); encoded in {encode_s:.1f} s")
    print(f"clips: {FRAMES} frames at {FPS:g} fps, resize {RESIZE[0]}x{RESIZE[1]}, crop {CROP}; decoding threads: "
          f"{THREADS} (thread_count={THREADS}, thread_type=SLICE), torch threads: {torch.get_num_threads()}; "
          f"PyAV {av.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}")

    span = clip_seconds(FRAMES, FPS)
    rng = np.random.default_rng(0)
    extraction = {p: extraction_clip_starts(args.seconds, span, FRAMES / FPS) for p in paths}
    training, seg_lengths_of, lengths = {}, {}, []
    for p in paths:
        training[p], seg_lengths_of[p] = segment_starts(args.seconds, rng)
        lengths += seg_lengths_of[p]

    # Work units: one per video for extraction, one per segment for training. Each loader runs
    # every unit in every round (loaders interleaved, so a noisy neighbour hits all alike);
    # a unit counts with its fastest round.
    generator = torch.Generator().manual_seed(0)
    units: List[Tuple[str, Dict[str, Callable[[], int]]]] = []
    for p in paths:
        units.append(("extraction", {
            "ours": lambda p=p: our_extraction(p, extraction[p]),
            "tsp": lambda p=p: tsp_clips(p, extraction[p], False, per_frame_scaler),
            "tsp_scaler": lambda p=p: tsp_clips(p, extraction[p], False, one_scaler()),
        }))
    for p in paths:
        for starts, length in zip(training[p], seg_lengths_of[p]):
            units.append((f"training {bucket(length)}", {
                "ours": lambda p=p, st=starts: our_segment(p, st, generator),
                "tsp": lambda p=p, st=starts: tsp_clips(p, st, True, per_frame_scaler),
                "tsp_scaler": lambda p=p, st=starts: tsp_clips(p, st, True, one_scaler()),
            }))
    names = ("ours", "tsp", "tsp_scaler")
    cpu = np.full((len(units), len(names)), np.inf)
    wall = np.zeros_like(cpu)
    clips = np.zeros(len(units), dtype=int)
    for _ in range(args.repeats):
        for u, (_, fns) in enumerate(units):
            for k, name in enumerate(names):
                n, c, w = timed(fns[name])
                clips[u] = n
                if c < cpu[u, k]:
                    cpu[u, k], wall[u, k] = c, w

    groups = {"extraction": [], "training": []}
    for u, (use, _) in enumerate(units):
        groups.setdefault(use, []).append(u)
        if use.startswith("training "):
            groups["training"].append(u)
    rows = []
    for use in ["extraction", "training"] + [f"training {b}" for b in BUCKETS]:
        members = groups.get(use, [])
        if not members:
            continue
        n = int(clips[members].sum())
        rate = n / cpu[members].sum(axis=0)
        rows.append([use, len(members) if use != "extraction" else f"{len(members)} videos", n,
                     f"{rate[0]:.0f}", f"{rate[1]:.0f}", f"{rate[0] / rate[1]:.2f}x", f"{rate[2]:.0f}", f"{rate[0] / rate[2]:.2f}x"])
    print(f"training segments: {len(lengths)}, {np.mean(lengths):.1f} s on average; best of {args.repeats} round(s) per unit; "
          f"clips/s per core = clips / CPU seconds")
    print(tabulate(rows, headers=["use", "units", "clips", "ours clips/s", "TSP clips/s", "ours/TSP",
                                  "TSP + one scaler clips/s", "ours/(TSP + one scaler)"], tablefmt="github"))
    busy = float(np.max(wall / cpu))
    if busy > 1.3:
        print(f"note: wall time ran up to {busy:.1f}x the CPU time: the machine was busy, rates are per CPU-second")
    if args.video_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
