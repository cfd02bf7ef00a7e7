"""Which artefacts of a run depend on the CPU's instruction set: the fingerprints of one smoke run
on this machine's own kernels, side by side with the same run with every SIMD path the libraries
let a process switch off.

Two x86-64 machines of different CPU types run different code for the same call: x264 and FFmpeg
pick their assembly by CPU flags, torch's ATen kernels by CPU capability (AVX2, AVX-512), oneDNN
(convolutions) and MKL (matrix products) by instruction set. With one machine at hand, this script
makes a second one out of it: a process in which

- x264 encodes without assembly (``asm=0`` added to ``clap_bench.synth.generate.X264_OPTIONS``),
- FFmpeg's decoders and swscale run without SIMD (``av_force_cpu_flags(0)`` in PyAV's libavutil),
- torch's ATen kernels use the DEFAULT capability (``ATEN_CPU_CAPABILITY=default``),
- oneDNN stops at SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``), MKL at SSE4.2
  (``MKL_ENABLE_INSTRUCTIONS=SSE4_2``).

Each of the two processes generates the smoke benchmark into its own cache and runs
``clapbench run --method M --seeds 1 --profile smoke`` into its own run store, at the same torch
thread count. The script then prints, per artefact (cache folders, then each stage's
``fingerprints.json``), both fingerprints and whether they agree, and for stages that differ the
largest difference between their metrics; then each torch-side switch alone (and
``MKL_CBWR=COMPATIBLE``) on the text encoder's output, a matrix product and a 3D convolution. What agrees here is independent of the instruction set
as far as these switches reach; what differs will differ between two CPU types. (What the switches
do not reach, such as MKL's choices between CPUs of the same instruction set, is not covered.)

    python benchmarks/cpu_fingerprints.py [--method clap] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

MODES = ("native", "simd-off")
SIMD_OFF_ENV = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
CACHE_FOLDERS = ("synth", "frames", "text_features", "source_pretrain")


# --------------------------------------------------------------------------- the worker process
def _force_ffmpeg_plain_c() -> int:
    """``av_force_cpu_flags(0)`` in the libavutil PyAV loaded; returns the flags it had detected."""
    import ctypes
    import glob

    import av  # noqa: F401  (loads libavutil)

    here = os.path.dirname(av.__file__)
    candidates = sorted(glob.glob(os.path.join(here, "..", "av.libs", "libavutil*.so*"))) + \
        sorted(glob.glob(os.path.join(here, ".dylibs", "libavutil*")))
    if not candidates:
        import ctypes.util

        found = ctypes.util.find_library("avutil")
        candidates = [found] if found else []
    if not candidates:
        raise SystemExit("cannot find the libavutil PyAV uses (looked in av.libs/ and the system)")
    lib = ctypes.CDLL(candidates[0])
    detected = int(lib.av_get_cpu_flags())
    lib.av_force_cpu_flags(ctypes.c_int(0))
    if int(lib.av_get_cpu_flags()) != 0:
        raise SystemExit(f"{candidates[0]}: av_force_cpu_flags(0) did not take")
    return detected


def worker(mode: str, root: Path, method: str) -> None:
    import torch

    info = {"mode": mode, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads()}
    if mode == "simd-off":
        info["ffmpeg_cpu_flags_detected"] = _force_ffmpeg_plain_c()
        from clap_bench.synth import generate

        params = generate.X264_OPTIONS.get("x264-params", "")
        generate.X264_OPTIONS["x264-params"] = f"{params}:asm=0" if params else "asm=0"
        info["x264_options"] = dict(generate.X264_OPTIONS)
    from clap_bench.cli import app

    t0 = time.perf_counter()
    try:
        app(["run", "--method", method, "--seeds", "1", "--profile", "smoke", "--runs-dir", str(root / "runs"), "-q"],
            standalone_mode=False)
    finally:
        info["seconds"] = round(time.perf_counter() - t0, 1)
        (root / "info.json").write_text(json.dumps(info, indent=1))


# --------------------------------------------------------------------------- one switch at a time
# Each torch-side switch alone, in its own process: which of the three libraries changes the bits of
# the bundled text encoder's output, a matrix product and a 3D convolution.
SINGLE_SWITCHES = (None, "ATEN_CPU_CAPABILITY=default", "ONEDNN_MAX_CPU_ISA=SSE41", "MKL_ENABLE_INSTRUCTIONS=SSE4_2",
                   "MKL_CBWR=COMPATIBLE")
PROBE = """
import hashlib, torch
from transformers import AutoModel, AutoTokenizer
from clap_bench.encoders.text import resolve_text_model
torch.set_num_threads(THREADS)
path = resolve_text_model(None)
tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
batch = tokenizer(["a person opens the door", "someone is cooking pasta in a kitchen"], padding=True, return_tensors="pt")
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    outs = [model(**batch).last_hidden_state,
            torch.randn(64, 384, generator=g) @ torch.randn(384, 384, generator=g),
            torch.nn.functional.conv3d(torch.randn(2, 8, 8, 16, 16, generator=g), torch.randn(8, 8, 3, 3, 3, generator=g))]
print(" ".join(hashlib.sha256(o.numpy().tobytes()).hexdigest()[:10] for o in outs))
"""


def single_switches(threads: int) -> List[list]:
    rows, base = [], None
    for switch in SINGLE_SWITCHES:
        env = {k: v for k, v in os.environ.items() if k not in SIMD_OFF_ENV and k != "MKL_CBWR"}
        if switch:
            key, value = switch.split("=")
            env[key] = value
        proc = subprocess.run([sys.executable, "-c", PROBE.replace("THREADS", str(threads))], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"probe with {switch or 'no switch'} failed:\n{proc.stderr[-2000:]}")
        hashes = proc.stdout.split()
        base = base or hashes
        rows.append([switch or "(none)"] + [h if switch is None else ("same" if h == b else "DIFFERS") for h, b in zip(hashes, base)])
    return rows


# --------------------------------------------------------------------------- the comparison
def frame_cache_fingerprints(folder: Path) -> Dict[str, str]:
    """The decoded clips of the frame cache, by video file name and frame times: an entry's file
    name hashes the video's absolute path, which differs between the two caches."""
    from clap_bench.runs.fingerprints import file_fingerprint

    out = {}
    for meta_path in sorted(folder.rglob("*.meta.json")):
        meta = json.loads(meta_path.read_text())
        frames = meta_path.with_name(meta_path.name[: -len(".meta.json")] + ".frames.npy")
        key = f"{Path(meta['video']).name} {meta.get('size')} {json.dumps(meta.get('times'))}"
        out[key] = file_fingerprint(frames)
    return out


def cache_fingerprints(cache: Path) -> Dict[str, str]:
    from clap_bench.runs.fingerprints import combined, folder_fingerprints

    out = {}
    for name in CACHE_FOLDERS:
        folder = cache / name
        if folder.is_dir():
            if name == "frames":
                files = frame_cache_fingerprints(folder)
            else:
                files = folder_fingerprints(folder)
                files = {k: v for k, v in files.items() if not k.endswith("manifest.json")}  # generation times
            out[f"cache/{name} ({len(files)} {'decoded videos' if name == 'frames' else 'files'})"] = combined(files)
    return out


def stage_records(runs: Path) -> Dict[str, dict]:
    from clap_bench.runs.store import read_json

    out = {}
    for path in sorted(runs.rglob("fingerprints.json")):
        rel = path.parent.relative_to(runs).as_posix()
        out[rel] = {"record": read_json(path), "metrics": read_json(path.parent / "metrics.json") or {}}
    return out


def _numbers(tree, prefix: str = "") -> Dict[str, float]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_numbers(v, f"{prefix}{k}/"))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.update(_numbers(v, f"{prefix}{i}/"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix.rstrip("/")] = float(tree)
    return out


def largest_difference(a: dict, b: dict) -> Optional[tuple]:
    """``(key, a, b)`` of the numeric metric that differs most (absolute), or None when all agree."""
    na, nb = _numbers(a), _numbers(b)
    worst = None
    for key in sorted(set(na) & set(nb)):
        x, y = na[key], nb[key]
        if math.isnan(x) and math.isnan(y):
            continue
        d = abs(x - y)
        if d > 0 and (worst is None or d > worst[0]):
            worst = (d, key, x, y)
    return None if worst is None else worst[1:]


def compare(roots: Dict[str, Path]) -> List[list]:
    caches = {m: cache_fingerprints(roots[m] / "cache") for m in MODES}
    stages = {m: stage_records(roots[m] / "runs") for m in MODES}
    rows = []
    for name in caches["native"]:
        a, b = caches["native"][name], caches["simd-off"].get(name, "-")
        rows.append([name, a, b, "yes" if a == b else "NO", ""])
    for name in stages["native"]:
        a = stages["native"][name]
        b = stages["simd-off"].get(name)
        fa = a["record"]["stage"]
        fb = b["record"]["stage"] if b else "-"
        note = ""
        if b and fa != fb:
            files = sorted(k for k, v in a["record"]["files"].items() if b["record"]["files"].get(k) != v)
            worst = largest_difference(a["metrics"], b["metrics"])
            note = f"files differ: {', '.join(Path(f.split(':')[0]).name for f in files) or 'none'}"
            if worst:
                note += f"; largest metric difference {worst[0]}: {worst[1]:.6g} vs {worst[2]:.6g}"
            elif a["record"]["metrics"] == b["record"]["metrics"]:
                note += "; metrics identical"
        rows.append([f"stage {name}", fa, fb, "yes" if fa == fb else "NO", note])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="clap")
    ap.add_argument("--keep", type=Path, default=None, help="keep both caches and run stores in this folder")
    ap.add_argument("--compare-only", action="store_true", help="compare the runs already in --keep")
    ap.add_argument("--worker", choices=MODES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.root, args.method)
        return 0

    base = args.keep or Path(tempfile.mkdtemp(prefix="cpu-fingerprints-"))
    roots = {m: base / m for m in MODES}
    try:
        for mode in () if args.compare_only else MODES:
            root = roots[mode]
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            env = {**os.environ, "CLAPBENCH_CACHE": str(root / "cache"), "CLAPBENCH_RUNS": str(root / "runs")}
            for key in SIMD_OFF_ENV:
                env.pop(key, None)
            if mode == "simd-off":
                env.update(SIMD_OFF_ENV)
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--root", str(root), "--method", args.method],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
                print(f"the {mode} run failed (exit {proc.returncode})", file=sys.stderr)
                return 1
        infos = {m: json.loads((roots[m] / "info.json").read_text()) for m in MODES}
        from tabulate import tabulate

        for m in MODES:
            i = infos[m]
            extra = ""
            if m == "simd-off":
                extra = (f", FFmpeg flags detected {i['ffmpeg_cpu_flags_detected']:#x} -> 0, "
                         f"x264-params {i['x264_options'].get('x264-params')}")
            print(f"# {m}: torch capability {i['torch_cpu_capability']}, {i['torch_threads']} threads{extra}; "
                  f"smoke run of {args.method} {i['seconds']} s")
        print(tabulate(compare(roots), headers=["artefact", "native", "SIMD off", "same", "where they differ"], tablefmt="github"))
        print(f"\n# one torch-side switch at a time ({infos['native']['torch_threads']} threads)")
        print(tabulate(single_switches(infos["native"]["torch_threads"]),
                       headers=["switch", "text encoder output", "matmul", "conv3d"], tablefmt="github"))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
