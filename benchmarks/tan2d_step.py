"""2D-TAN training steps per second with the map convolutions' weights in the default memory layout
and in channels_last (``tasks.vlg.channels_last``), at a profile's shapes, measured in the same run.

    python benchmarks/tan2d_step.py [--profile default] [--steps 20] [--threads 2] [--repeats 2]

For each grounding dataset of the profile's ``tasks.vlg`` it builds the head with ``build_model``
(the task's own constructor), feeds random batches of the profile's batch size (features of
``--feature-dim`` channels, sentences of ``--words`` word vectors of 384 dimensions, scaled-IoU
targets) and times ``--steps`` whole steps (forward, masked BCE, backward, gradient clipping, Adam)
after 3 warm-up steps. The two layouts alternate ``--repeats`` times (A B A B ...), so that a
machine that speeds up or slows down during the run moves both; the figure is the median. Both
layouts start from the same weights and see the same batches; the largest difference between their
parameters after the timed steps is printed too (the layouts sum in different orders, so it is
rounding, not zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch


def _step_rate(cfg, d, feature_dim: int, words: int, steps: int, channels_last: bool):
    from clap_bench.downstream.tan2d.proposals import masked_bce_loss
    from clap_bench.downstream.tan2d.task import build_model

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
        loss = masked_bce_loss(model(video, text, lengths), targets, model.map_mask[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    cfg = from_dict(VLGConfig, profile.task_config("vlg"), "tasks.vlg").validate()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"profile {args.profile}: batch {cfg.batch_size}, hidden {cfg.hidden_size}, profile's channels_last {cfg.channels_last}")
    print("| dataset | map | default layout, steps/s | channels_last, steps/s | ratio | max param difference |")
    print("|---|---|---|---|---|---|")
    for key in cfg.datasets:
        d = cfg.for_dataset(key)
        rates = {False: [], True: []}
        params = {}
        for _ in range(args.repeats):
            for layout in (False, True):
                rate, params[layout] = _step_rate(cfg, d, args.feature_dim, args.words, args.steps, layout)
                rates[layout].append(rate)
        a, b = statistics.median(rates[False]), statistics.median(rates[True])
        diff = max(float((params[False][k] - params[True][k]).abs().max()) for k in params[False])
        print(f"| {key} | {d.num_clips}x{d.num_clips}, {len(d.map_kernel_sizes)} convs | {a:.2f} | {b:.2f} | {b / a:.2f}x | {diff:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
