"""2D-TAN training steps per second with the map convolutions' weights in the default memory layout
and in channels_last (``tasks.vlg.channels_last``), at a profile's shapes, measured in the same run;
with ``--bf16`` also channels_last under bfloat16 autocast (``tasks.vlg.cpu_bf16``, off in every
profile: bf16 trains other weights).

    python benchmarks/tan2d_step.py [--profile default] [--steps 20] [--threads 2] [--repeats 2] [--bf16]

For each grounding dataset of the profile's ``tasks.vlg`` it builds the head with ``build_model``
(the task's own constructor), feeds random batches of the profile's batch size (features of
``--feature-dim`` channels, sentences of ``--words`` word vectors of 384 dimensions, scaled-IoU
targets) and times ``--steps`` whole steps (forward, masked BCE, backward, gradient clipping, Adam)
after 3 warm-up steps, each one the task's own ``train_step``. The arms alternate ``--repeats`` times (A B A B ...), so that a machine
that speeds up or slows down during the run moves all of them; the figure is the median, and each
arm's ratio is to the arm before it (channels_last to the default layout, bf16 to channels_last). All
arms start from the same weights and see the same batches; the largest difference between each arm's
parameters and the default layout's after the timed steps is printed too (the layouts sum in
different orders, so for channels_last it is rounding, not zero; for bf16 it is bf16's rounding
carried through the steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch


def _step_rate(cfg, d, feature_dim: int, words: int, steps: int, channels_last: bool, bf16: bool = False):
    from clap_bench.downstream.tan2d.task import build_model, train_step

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, channels_last=channels_last), d, feature_dim, 384)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(1)
    n, b = d.num_clips, cfg.batch_size
    video = torch.randn(b, d.num_sample_clips, feature_dim, generator=g)
    text = torch.randn(b, words, 384, generator=g)
    lengths = torch.full((b,), words)
    targets = torch.rand(b, n, n, generator=g)

    def step():
        train_step(model, optimizer, video, text, lengths, targets, cfg.grad_clip, bf16=bf16)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps / (time.perf_counter() - t0)
    return rate, {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def main() -> None:
    from clap_bench.config import from_dict, load_profile
    from clap_bench.downstream.tan2d.task import VLGConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--feature-dim", type=int, default=128, help="feature channels (the default profile's encoder: 128)")
    ap.add_argument("--words", type=int, default=12)
    ap.add_argument("--bf16", action="store_true", help="add a third arm: channels_last under CPU bfloat16 autocast")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    cfg = from_dict(VLGConfig, profile.task_config("vlg"), "tasks.vlg").validate()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"profile {args.profile}: batch {cfg.batch_size}, hidden {cfg.hidden_size}, profile's channels_last {cfg.channels_last}")
    arms = [("default layout", False, False), ("channels_last", True, False)]
    if args.bf16:
        arms.append(("channels_last + bf16 autocast", True, True))
    print("| dataset | map | " + " | ".join(f"{name}, steps/s" for name, _, _ in arms) + " | "
          + " | ".join(f"{name} / {before}" for (before, _, _), (name, _, _) in zip(arms, arms[1:])) + " | "
          + " | ".join(f"max param difference, {name}" for name, _, _ in arms[1:]) + " |")
    print("|---|---|" + "---|" * (3 * len(arms) - 2))
    for key in cfg.datasets:
        d = cfg.for_dataset(key)
        rates = {name: [] for name, _, _ in arms}
        params = {}
        for _ in range(args.repeats):
            for name, channels_last, bf16 in arms:
                rate, params[name] = _step_rate(cfg, d, args.feature_dim, args.words, args.steps, channels_last, bf16)
                rates[name].append(rate)
        median = {name: statistics.median(r) for name, r in rates.items()}
        base = arms[0][0]
        ratios = [f"{median[name] / median[before]:.2f}x" for (before, _, _), (name, _, _) in zip(arms, arms[1:])]
        diffs = [f"{max(float((params[base][k] - params[name][k]).abs().max()) for k in params[base]):.1e}"
                 for name, _, _ in arms[1:]]
        print(f"| {key} | {d.num_clips}x{d.num_clips}, {len(d.map_kernel_sizes)} convs | "
              + " | ".join(f"{median[name]:.2f}" for name, _, _ in arms) + " | " + " | ".join(ratios) + " | "
              + " | ".join(diffs) + " |", flush=True)


if __name__ == "__main__":
    main()
