"""Does post-pre-training learn? Epoch-0 vs last-epoch validation figures of every method.

Runs (or reuses) the ``pretrain`` stages of the given methods and seeds in a run store, exactly as
``clapbench run`` would (same stage hashes, so a later ``clapbench run``/``sweep`` on the same store
reuses them), then prints one row per (method, seed) and one per method with the mean:

* the method's own objective on the validation segments (its weighted sum of loss terms) before
  training and after the last epoch, and the relative improvement;
* validation class accuracy (methods with a class head) against chance;
* validation clip->text R@1 (contrastive methods) against chance.

and checks the targets: objective at least 20% lower, class accuracy at least 4x chance,
clip->text R@1 at least 4x chance.

    python benchmarks/pretrain_learning.py --profile default --seeds 3 [--runs-dir DIR] \
        [--methods tac,tsp,clap-clip,clap-mask,clap,clap-no-cls,clap-dagger] [--report-only]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from clap_bench.config import load_profile
from clap_bench.methods import create_method
from clap_bench.runs import RunStore, runs_root
from clap_bench.runs.executors import run_plan
from clap_bench.runs.plan import Plan, build_plan, parse_seeds
from clap_bench.runs.store import METRICS_FILE, read_json

TRAINED = ["tac", "tsp", "clap-clip", "clap-mask", "clap", "clap-no-cls", "clap-dagger"]
OBJECTIVE_GAIN = 0.20
CHANCE_FACTOR = 4.0


def pretrain_plan(profile, methods, seeds) -> Plan:
    """The source and ``pretrain`` stages of the product plan, with the product's hashes."""
    full = build_plan(profile, methods, seeds, tasks=["tal"])
    sub = Plan(profile)
    for spec in full:
        if spec.name in ("source", "pretrain"):
            sub.add(spec)
    return sub


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", default="3")
    ap.add_argument("--methods", default=",".join(TRAINED))
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--report-only", action="store_true",
                    help="read the finished pretrain stages of the store as they are (whatever their config hash); run nothing")
    args = ap.parse_args(argv)
    profile = load_profile(args.profile)
    methods = [m for m in args.methods.split(",") if m]
    seeds = parse_seeds(args.seeds)
    store = RunStore(runs_root(args.runs_dir))
    if not args.report_only:
        plan = pretrain_plan(profile, methods, seeds)
        t0 = time.perf_counter()
        report = run_plan(plan, store, "local", progress=False, echo=lambda s: print(s, file=sys.stderr))
        print(f"# {len(plan)} stages in {time.perf_counter() - t0:.0f} s (store {store.root}); profile {args.profile}")
        if getattr(report, "failed", None):
            print(f"# failed stages: {report.failed}")

    header = ["method", "seed", "val objective e0", "last", "gain", "class acc e0", "last", "chance",
              "clip->text R@1 e0", "last", "chance"]
    rows, verdicts = [], {}
    for method in methods:
        m = create_method(method)
        per_seed = []
        for seed in seeds:
            metrics = read_json(store.stage_dir(profile.name, method, seed, "pretrain") / METRICS_FILE) or {}
            if "val0_loss" not in metrics:
                rows.append([method, seed] + ["(no validation figures)"] + [""] * (len(header) - 3))
                continue
            gain = (metrics["val0_loss"] - metrics["val_loss"]) / abs(metrics["val0_loss"])
            fig = {"gain": gain, "e0": metrics["val0_loss"], "last": metrics["val_loss"]}
            if m.class_head:
                fig.update(c0=metrics.get("val0_class_acc"), c=metrics.get("val_class_acc"), cch=metrics.get("val_class_acc_chance"))
            if m.contrastive:
                fig.update(r0=metrics.get("val0_v2t_r1"), r=metrics.get("val_v2t_r1"), rch=metrics.get("val_v2t_r1_chance"))
            per_seed.append(fig)
            rows.append([method, seed, _f(fig["e0"]), _f(fig["last"]), f"{100 * gain:+.1f}%",
                         _f(fig.get("c0")), _f(fig.get("c")), _f(fig.get("cch")),
                         _f(fig.get("r0")), _f(fig.get("r")), _f(fig.get("rch"))])
        if not per_seed:
            continue
        mean = {k: float(np.mean([f[k] for f in per_seed])) for k in per_seed[0] if per_seed[0][k] is not None}
        checks = [all(f["gain"] >= OBJECTIVE_GAIN for f in per_seed)]
        if m.class_head:
            checks.append(all(f["c"] >= CHANCE_FACTOR * f["cch"] for f in per_seed))
        if m.contrastive:
            checks.append(all(f["r"] >= CHANCE_FACTOR * f["rch"] for f in per_seed))
        verdicts[method] = all(checks)
        rows.append([f"**{method}** (mean of {len(per_seed)})", "", _f(mean["e0"]), _f(mean["last"]), f"{100 * mean['gain']:+.1f}%",
                     _f(mean.get("c0")), _f(mean.get("c")), _f(mean.get("cch")), _f(mean.get("r0")), _f(mean.get("r")), _f(mean.get("rch"))])
    from tabulate import tabulate

    print(tabulate(rows, headers=header, tablefmt="github"))
    print(f"# targets (every seed): objective >= {OBJECTIVE_GAIN:.0%} lower than at epoch 0; class acc >= "
          f"{CHANCE_FACTOR:g}x chance; clip->text R@1 >= {CHANCE_FACTOR:g}x chance")
    for method, ok in verdicts.items():
        print(f"{method}: {'meets' if ok else 'MISSES'} the targets")
    return 0 if verdicts and all(verdicts.values()) else 1


def _f(x) -> str:
    return "" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
