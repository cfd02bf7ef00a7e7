"""Print how long each stage of a finished run took, from the run store's ``stage.json`` files.

    python benchmarks/stage_times.py results/runs --profile default --method clap
    python benchmarks/stage_times.py results/runs --profile default --method tsp,clap-no-cls   # or --method all

For each stage: its wall time per seed (``finished - started``, to the second) and the mean; for each
seed, the span from its first stage's start to its last stage's end; and the span of all seeds. A
stage that ran more than once (resumed, taken over) counts from its last start. With ``--cache DIR``
(the run's ``$CLAPBENCH_CACHE``) it also prints what the synthetic benchmark's manifest says its
generation took. Stages that have not finished are listed as such and left out of the sums.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def stage_times(method_dir: Path) -> dict:
    """``{seed: {stage: (started, finished or None)}}`` for every ``seed<k>/<stage>/stage.json``."""
    out: dict = {}
    for path in sorted(method_dir.glob("seed*/*/stage.json")):
        info = json.loads(path.read_text())
        seed = int(path.parent.parent.name[len("seed"):])
        started = _time(info["started"]) if info.get("started") else None
        finished = _time(info["finished"]) if info.get("status") == "done" and info.get("finished") else None
        out.setdefault(seed, {})[path.parent.name] = (started, finished)
    return out


def print_method(method_dir: Path) -> None:
    """The per-stage, per-seed wall times of one method folder, then its seeds' spans."""
    times = stage_times(method_dir)
    if not times:
        raise SystemExit(f"{method_dir}: no seed<k>/<stage>/stage.json")
    seeds = sorted(times)
    stages = sorted({s for per in times.values() for s in per}, key=lambda s: min(
        times[k][s][0] for k in seeds if s in times[k] and times[k][s][0]))

    print(f"{method_dir}: seeds {', '.join(map(str, seeds))}")
    header = f"{'stage':28s}" + "".join(f"{f'seed{k}':>9s}" for k in seeds) + f"{'mean':>9s}"
    print(header)
    for stage in stages:
        cells, done = [], []
        for k in seeds:
            started, finished = times[k].get(stage, (None, None))
            if started is None:
                cells.append("-")
            elif finished is None:
                cells.append("running")
            else:
                seconds = (finished - started).total_seconds()
                done.append(seconds)
                cells.append(f"{seconds:.0f}")
        mean = f"{statistics.mean(done):.0f}" if done else "-"
        print(f"{stage:28s}" + "".join(f"{c:>9s}" for c in cells) + f"{mean:>9s}")

    spans = []
    for k in seeds:
        starts = [s for s, _ in times[k].values() if s]
        ends = [f for _, f in times[k].values() if f]
        if ends and all(f for _, f in times[k].values()):
            spans.append((min(starts), max(ends)))
    if spans:
        cells = "".join(f"{(e - s).total_seconds():>9.0f}" for s, e in spans)
        print(f"{'seed (first start to last end)':28s}" + cells)
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        print(f"all finished seeds: {(last - first).total_seconds():.0f} s, from {first:%H:%M:%S} to {last:%H:%M:%S}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the run store (e.g. results/runs)")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--method", default="clap", help="a method folder, several comma-separated, or all")
    parser.add_argument("--cache", type=Path, help="the run's cache folder, for the benchmark's generation time")
    args = parser.parse_args()

    profile_dir = args.runs / args.profile
    if args.method == "all":
        methods = sorted(p.name for p in profile_dir.iterdir() if p.is_dir() and not p.name.startswith("_")) \
            if profile_dir.is_dir() else []
        if not methods:
            raise SystemExit(f"{profile_dir}: no method folders")
    else:
        methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for i, method in enumerate(methods):
        if i:
            print()
        print_method(profile_dir / method)

    if args.cache:
        manifests = sorted(args.cache.glob("synth/*/manifest.json"))
        for manifest in manifests:
            info = json.loads(manifest.read_text())
            if "generation_seconds" in info:
                print(f"{manifest.parent.name}: generation {info['generation_seconds']:.0f} s (manifest)")


if __name__ == "__main__":
    main()
