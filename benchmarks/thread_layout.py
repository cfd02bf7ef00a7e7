"""How the suite lays out threads on a small machine: two figures, each against its baseline.

    python benchmarks/thread_layout.py [--seconds 20] [--profile default]

1. **OpenMP wait policy of an idle-priority job beside a busy core.** The test suite prepares the
   default benchmark in a background process at SCHED_IDLE while the tests run in the foreground.
   Here a pure-Python busy loop stands for the foreground (one core) and a 2-thread encoder
   training step loop (the profile's encoder, batch of ``source_pretrain.batch_size`` clips) for
   the background, once with OpenMP's default waits (spinning) and once with
   ``OMP_WAIT_POLICY=PASSIVE``. Printed: training steps/s of each and their ratio.
2. **Two 2D-TAN trainings side by side or one after the other.** The grounding acceptance test
   trains two 2D-TAN heads (trained and random features). Printed: the time of one step of each
   when they run one after the other at 2 threads, against two 1-thread processes stepping side by
   side, with the profile's Charades-like shapes, and their ratio.

Each measurement runs in its own process (the wait policy is read once, when OpenMP starts).
Both need the machine otherwise idle; on more than 2 cores the figures say little about a
2-core CI machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional


def _idle_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _encoder_steps(profile_name: str, seconds: float) -> float:
    """Training steps/s of the profile's video encoder on random clips (backward included)."""
    import torch

    from clap_bench.config import load_profile
    from clap_bench.encoders import build_video_encoder

    profile = load_profile(profile_name)
    torch.manual_seed(0)
    enc_cfg = profile.encoder.__class__(**{**profile.encoder.__dict__, "weights": None})
    model = build_video_encoder(enc_cfg)
    clips = torch.randn(profile.source_pretrain.batch_size, 3, profile.clips.frames, profile.clips.crop, profile.clips.crop)
    model(clips).sum().backward()  # warm-up
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        model(clips).sum().backward()
        steps += 1
    return steps / (time.perf_counter() - start)


def _tan_steps(profile_name: str, steps: int, start_at: float = 0.0) -> float:
    """Mean seconds of one 2D-TAN training step (forward, backward) with the profile's Charades-like
    shapes; the timed steps begin at ``start_at`` (epoch seconds) when given, after a warm-up step."""
    import torch

    from clap_bench.config import from_dict, load_profile
    from clap_bench.downstream.tan2d.task import VLGConfig, build_model
    from clap_bench.encoders import build_video_encoder

    profile = load_profile(profile_name)
    cfg = from_dict(VLGConfig, profile.task_config("vlg"), "tasks.vlg").validate()
    d = cfg.for_dataset("charades-sta")
    enc_cfg = profile.encoder.__class__(**{**profile.encoder.__dict__, "weights": None})
    feature_dim = build_video_encoder(enc_cfg).out_dim
    torch.manual_seed(0)
    model = build_model(cfg, d, feature_dim, 384)
    video = torch.randn(cfg.batch_size, d.num_sample_clips, feature_dim)
    words = torch.randn(cfg.batch_size, 12, 384)
    lengths = torch.full((cfg.batch_size,), 12)
    model(video, words, lengths).sum().backward()  # warm-up
    if start_at:  # side-by-side workers start their timed steps together
        time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    for _ in range(steps):
        model(video, words, lengths).sum().backward()
    return (time.perf_counter() - start) / steps


def _worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.idle:
        _idle_priority()
    if args.worker == "encoder":
        value = _encoder_steps(args.profile, args.seconds)
    elif args.worker == "tan":
        value = _tan_steps(args.profile, args.steps, args.start_at)
    else:  # "busy": the foreground stand-in, one core of pure Python until killed
        while True:
            pass
    print(json.dumps({"value": value}))


def _spawn(worker: str, args, threads: int, env: Optional[dict] = None, idle=False, start_at=0.0) -> subprocess.Popen:
    """This script as a worker process; ``env`` replaces the environment when given."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--threads", str(threads),
           "--profile", args.profile, "--seconds", str(args.seconds), "--steps", str(args.steps),
           "--start-at", str(start_at)]
    if idle:
        cmd.append("--idle")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env if env is not None else dict(os.environ))


def _value(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"worker failed with exit code {proc.returncode}")
    return float(json.loads(out.strip().splitlines()[-1])["value"])


def wait_policy(args) -> None:
    rates = {}
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy == "PASSIVE":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        busy = _spawn("busy", args, 1)
        try:
            rates[policy] = _value(_spawn("encoder", args, 2, env, idle=True))
        finally:
            busy.kill()
            busy.wait()
    print(f"1. encoder training steps/s at SCHED_IDLE, 2 threads, beside one busy core ({args.seconds:.0f} s each):")
    print(f"   OpenMP default waits {rates['default']:.3f}   OMP_WAIT_POLICY=PASSIVE {rates['PASSIVE']:.3f}"
          f"   ratio {rates['PASSIVE'] / max(rates['default'], 1e-9):.2f}x")


def side_by_side(args) -> None:
    sequential = [_value(_spawn("tan", args, 2)) for _ in range(2)]
    start_at = time.time() + 15.0  # time for both to import torch, build the model and warm up
    procs = [_spawn("tan", args, 1, start_at=start_at) for _ in range(2)]
    parallel = [_value(p) for p in procs]
    seq_pair = sum(sequential)
    par_pair = max(parallel)  # two steps done in the time of the slower one
    print(f"2. 2D-TAN training step, Charades-like shapes ({args.steps} steps each):")
    print(f"   one after the other at 2 threads: {sequential[0] * 1e3:.0f} + {sequential[1] * 1e3:.0f} ms = {seq_pair * 1e3:.0f} ms per pair")
    print(f"   side by side at 1 thread each:    {parallel[0] * 1e3:.0f} / {parallel[1] * 1e3:.0f} ms = {par_pair * 1e3:.0f} ms per pair")
    print(f"   ratio (one after the other / side by side) {seq_pair / par_pair:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds of each encoder measurement")
    ap.add_argument("--steps", type=int, default=40, help="timed 2D-TAN steps of each process")
    ap.add_argument("--worker", choices=["encoder", "tan", "busy"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    print(f"cores available: {len(os.sched_getaffinity(0))}; torch threads as stated per measurement")
    wait_policy(args)
    side_by_side(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
