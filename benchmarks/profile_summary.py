"""Where the time of a run goes, from a py-spy profile.

Record a run, then summarise it::

    py-spy record --rate 10 --subprocesses --format raw -o run.raw -- clapbench run --method clap --seeds 1
    python benchmarks/profile_summary.py run.raw [--top 5]

py-spy's raw format has one line per distinct stack, ``frame;frame;...;frame count``, outermost
frame first. The script prints the samples of each stage of the run (the innermost of
``run_source_stage``, ``run_pretrain_stage``, ``run_extract_stage``, ``run_task_stage`` and the
synthetic generation on the stack; ``run_task_stage`` split by the task's own entry point), and the
functions of the project with the most samples below them (inclusive), so a reader sees which stage
costs most and which call inside it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

STAGES = {
    "generate": "synthetic benchmark generation",
    "_write_scene": "synthetic benchmark generation",
    "run_source_stage": "source pre-training",
    "run_pretrain_stage": "pre-training",
    "run_extract_stage": "feature extraction",
    "run_tal": "tal: G-TAD",
    "run_fstal": "fstal: QAT",
    "run_vlg": "vlg: 2D-TAN",
    "run_task_stage": "task (other)",
}
FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def parse(path: Path):
    """Yield (frames, count); each frame as (function, file)."""
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw.strip())
            frames.append((m.group("func"), m.group("file")) if m else (raw.strip(), ""))
        yield frames, int(count)


def stage_of(frames) -> str:
    found = "outside any stage"
    for func, _ in frames:
        if func in STAGES:
            found = STAGES[func]  # the innermost match wins (a task inside run_task_stage)
    return found


def summarise(path: Path, top: int = 5) -> str:
    stages, functions, total = Counter(), Counter(), 0
    for frames, count in parse(path):
        total += count
        stages[stage_of(frames)] += count
        seen = set()
        for func, file in frames:
            if ("clap_bench" in file or "downstream" in file or "methods" in file) and (func, file) not in seen:
                seen.add((func, file))
                functions[f"{func} ({Path(file).parent.name}/{Path(file).name})"] += count
    if not total:
        raise SystemExit(f"{path}: no samples (expected py-spy's raw format: 'frame;frame count' lines)")
    out = [f"{total} samples", "", "by stage:"]
    for name, n in stages.most_common():
        out.append(f"  {100 * n / total:5.1f} %  {name}")
    out += ["", f"top {top} project functions below the stage entry points (inclusive):"]
    entry = {"run_source_stage", "run_pretrain_stage", "run_extract_stage", "run_task_stage", "run_plan",
             "_run_in_process", "claim_and_run", "_run_claimed", "run_stage", "main", "_execute", "run_cmd", "generate"}
    shown = 0
    for name, n in functions.most_common():
        if name.split(" ")[0].split(".")[-1] in entry or name.startswith("register.<locals>"):
            continue
        out.append(f"  {100 * n / total:5.1f} %  {name}")
        shown += 1
        if shown == top:
            break
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    print(summarise(args.profile, args.top), end="")


if __name__ == "__main__":
    main()
