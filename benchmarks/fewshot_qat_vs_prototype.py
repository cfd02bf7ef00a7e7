"""QAT against its plain support prototype on the default synthetic benchmark: print, do not assert.

Runs the main job's few-shot stages (``clapbench run --method M --tasks fstal``: CLAP pre-training on
the base classes, extraction, base training, meta-training, test episodes) for each seed into a run
store, then prints, per seed, the average mAP of QAT and of the plain prototype on the same test
episodes, their means and standard deviations, and the paired difference with its standard error.
With 2 test classes one seed's comparison is within noise (and differs between machines); this
figure is a benchmark to report, not a test verdict.

    python benchmarks/fewshot_qat_vs_prototype.py --seeds 5 [--method clap] [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--method", default="clap")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--runs-dir", type=Path, default=None, help="run store (default: a temporary folder)")
    args = parser.parse_args()
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="qat-vs-prototype-"))
    subprocess.run([sys.executable, "-m", "clap_bench", "run", "--method", args.method, "--seeds", str(args.seeds),
                    "--tasks", "fstal", "--profile", args.profile, "--runs-dir", str(runs), "-q"], check=True)
    qat, prototype = [], []
    for seed in range(args.seeds):
        metrics = json.loads((runs / args.profile / args.method / f"seed{seed}" / "fstal" / "metrics.json").read_text())
        qat.append(metrics["average_mAP"])
        prototype.append(metrics["prototype/average_mAP"])
        print(f"seed {seed}: QAT {100 * qat[-1]:.2f}  prototype {100 * prototype[-1]:.2f}")
    q, p = np.array(qat), np.array(prototype)
    d = q - p
    sd = lambda x: x.std(ddof=1) if len(x) > 1 else float("nan")  # noqa: E731
    print(f"average mAP (percent): QAT {100 * q.mean():.2f} ± {100 * sd(q):.2f}, prototype {100 * p.mean():.2f} ± {100 * sd(p):.2f}")
    print(f"paired difference QAT - prototype: {100 * d.mean():.2f} ± {100 * sd(d) / np.sqrt(len(d)):.2f} (standard error)")
    print(f"run store: {runs}")


if __name__ == "__main__":
    main()
