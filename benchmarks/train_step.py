"""Training-step throughput (clips/s) and peak memory per configuration, and whether loading keeps up.

Run: ``python benchmarks/train_step.py`` (CPU: the CPU profiles' encoder, a few seconds per
configuration; CUDA: R(2+1)D-18 on 16x112x112 clips, batch 32, fp32 vs AMP vs AMP +
channels_last). ``--steps N`` sets the timed steps (after 2 warm-up steps), ``--loader-workers``
the DataLoader workers of the loading measurement, ``--no-loader`` skips it.

Each configuration times whole steps of the CLAP method (backbone, class/region heads,
projections, the masked contrastive loss, backward, SGD update) on random clips, so the
number is the model's rate, independent of decoding. The loading measurement then decodes
real clips (the synthetic ``default`` benchmark, generated on first use) at the same clip size
with the training DataLoader and reports its clips/s: loading keeps up when that rate is above
the training rate of the configuration used.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; the process's peak resident set on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import time

import torch

from clap_bench.config import ClipConfig, EncoderConfig
from clap_bench.encoders import build_video_encoder
from clap_bench.methods import PretrainModel, compute_losses, create_method


def _configs(device: str):
    if device == "cuda":
        clip = ClipConfig(frames=16, fps=15.0, resize=[128, 171], crop=112)
        enc = EncoderConfig(arch="r2plus1d_18")
        return clip, enc, 32, [("fp32", False, False), ("amp", True, False), ("amp+channels_last", True, True)]
    clip = ClipConfig(frames=8, fps=7.5, resize=[64, 86], crop=56)
    enc = EncoderConfig(arch="r2plus1d_tiny", width=0.25)
    return clip, enc, 20, [("fp32", False, False), ("fp32+channels_last", False, True),
                           ("bf16 autocast", True, False), ("bf16+channels_last", True, True)]


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_steps(device, clip, enc_cfg, batch, amp, channels_last, steps):
    torch.manual_seed(0)
    method = create_method("clap")
    model = PretrainModel(build_video_encoder(enc_cfg), method, num_classes=200, text_dim=384).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    # CPU autocast runs in bfloat16 (oneDNN: AMX or AVX-512 BF16 where the CPU has them, emulated otherwise).
    dtype = torch.bfloat16 if (device == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device == "cuda" and dtype == torch.float16)
    clips = torch.randn(batch, 3, clip.frames, clip.crop, clip.crop, device=device)
    if channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    text = torch.randn(batch, 384, device=device)
    region = (torch.arange(batch, device=device) % 3 != 0).long()
    label = torch.where(region == 1, torch.arange(batch, device=device) % 200, torch.full_like(region, -1))
    texts = [f"foreground of class {i % 7}" if r else "background of class 0" for i, r in enumerate(region.tolist())]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device, dtype=dtype, enabled=amp):
            out = model(clips, text)
        out = {k: v.float() for k, v in out.items()}
        loss = compute_losses(model, out, {"label": label, "region": region, "texts": texts})["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t), _peak_mb(device)


def loader_rate(clip: ClipConfig, batch: int, workers: int, steps: int) -> float:
    from clap_bench.clips import SegmentClipDataset, collate_segments
    from clap_bench.clips.language import TextPolicy
    from clap_bench.data import load_dataset
    from clap_bench.synth import ensure_synthetic

    datasets = ensure_synthetic("default", 0)
    cfg = datasets["activitynet"]
    ann = load_dataset(cfg, "activitynet").subset("training")
    clip = dataclasses.replace(clip, clips_per_segment=5)
    ds = SegmentClipDataset(ann, cfg.videos, clip, train=True, text_policy=TextPolicy(), seed=0)
    per_batch = max(1, batch // clip.clips_per_segment)
    loader = torch.utils.data.DataLoader(ds, batch_size=per_batch, shuffle=True, num_workers=workers, collate_fn=collate_segments)
    it = iter(loader)
    next(it)  # worker start-up is not part of the steady rate
    n, t = 0, time.perf_counter()
    for _ in range(steps):
        b = next(it)
        n += 0 if b["clips"] is None else b["clips"].shape[0]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    ap.add_argument("--loader-workers", type=int, default=None)
    ap.add_argument("--no-loader", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip, enc, batch, configs = _configs(device)
    steps = args.steps or (20 if device == "cuda" else 3)
    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"device: {name}; encoder {enc.arch}" + (f" (width {enc.width})" if enc.arch == "r2plus1d_tiny" else "")
          + f"; clips {clip.frames}x{clip.crop}x{clip.crop}; batch {batch}; torch {torch.__version__}")
    best = 0.0
    for label, amp, cl in configs:
        rate, peak = time_steps(device, clip, enc, batch, amp, cl, steps)
        best = max(best, rate)
        print(f"  {label:<20} {rate:8.1f} clips/s   peak memory {peak:8.0f} MiB")
    if not args.no_loader:
        workers = args.loader_workers if args.loader_workers is not None else (8 if device == "cuda" else 1)
        rate = loader_rate(clip, batch, workers, steps=max(10, steps))
        verdict = "keeps up" if rate >= best else f"does NOT keep up (needs {best / max(rate, 1e-9):.1f}x)"
        print(f"  loader ({workers} workers, synthetic default videos at {clip.resize[0]}x{clip.resize[1]}): "
              f"{rate:8.1f} clips/s -> {verdict} with the fastest configuration")


if __name__ == "__main__":
    main()
