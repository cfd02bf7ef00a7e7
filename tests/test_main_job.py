"""The main job end to end on the real stages (smoke profile), and the TAL acceptance check on
features of a trained encoder (default profile)."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import load_profile, resolve_datasets
from clap_bench.downstream.base import TaskContext, get_task

runner = CliRunner()


def _clapbench(*args: str) -> list:
    return [sys.executable, "-m", "clap_bench", *args]


def test_smoke_run_killed_then_rerun_finishes_only_the_missing_stages_and_tables_have_mean_and_std(tmp_path):
    runs = tmp_path / "runs"
    args = ["run", "--method", "clap", "--seeds", "2", "--profile", "smoke", "--runs-dir", str(runs), "-q"]
    # Kill -9 the run once seed 0's pre-training has finished (mid-way through the plan).
    proc = subprocess.Popen(_clapbench(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_done = runs / "smoke" / "clap" / "seed0" / "pretrain" / "metrics.json"
    deadline = time.time() + 300
    while not first_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first_done.exists(), "seed 0 pre-training never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}
    assert done_before and not (runs / "smoke" / "clap" / "seed1" / "vlg" / "metrics.json").exists()

    result = subprocess.run(_clapbench(*args), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # finished stages were reused, not run again
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    for seed in (0, 1):
        for stage in ("pretrain", "pretrain-base", "tal", "fstal", "vlg"):
            assert (runs / "smoke" / "clap" / f"seed{seed}" / stage / "metrics.json").exists(), (seed, stage)

    table = runner.invoke(app, ["table", "--format", "csv", "--profile", "smoke", "--runs-dir", str(runs), "--no-paper"])
    assert table.exit_code == 0, table.output
    rows = [r for r in csv.DictReader(io.StringIO(table.output)) if r.get("method") == "clap"]
    assert {r["table"] for r in rows} >= {"1", "2a", "2b", "3"}
    for row in rows:
        assert row["n"] == "2"
        metrics = [k[: -len(" mean")] for k in row if k.endswith(" mean") and row[k] != ""]
        assert metrics, row  # the table's own metrics have a mean and, with 2 seeds, a std
        assert all(row[f"{m} std"] != "" for m in metrics), row


def _trained_and_random_features(dataset: str, tmp_path: Path):
    """``tmp_path/trained.h5``: the default profile's ``dataset`` through the source-pre-trained
    encoder (cached after the first run); ``tmp_path/random.h5``: Gaussian features of the same
    shapes. Returns the profile and its datasets."""
    from clap_bench.features import extract_features
    from clap_bench.training import source_pretrain

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    profile = load_profile("default")
    datasets = resolve_datasets(profile)
    checkpoint = source_pretrain(profile, progress=False)
    trained = extract_features(profile, checkpoint, dataset, tmp_path / "trained.h5", progress=False)
    rng = np.random.default_rng(0)
    with h5py.File(trained, "r") as src, h5py.File(tmp_path / "random.h5", "w") as out:
        for key in src:
            out[key] = rng.standard_normal(src[key].shape).astype(np.float32)
    return profile, datasets


def test_tal_on_features_of_a_trained_encoder_beats_random_features_through_the_same_head(tmp_path):
    """Issue acceptance: G-TAD on synthetic features from a trained encoder (the default profile's
    source-pre-trained R(2+1)D, cached after the first run) clearly beats random features of the
    same shape. Takes a few minutes on a cold cache (benchmark generation + source pre-training)."""
    profile, datasets = _trained_and_random_features("activitynet", tmp_path)
    task = get_task("tal")
    scores = {}
    for name in ("trained", "random"):
        ctx = TaskContext(
            features={"activitynet": tmp_path / f"{name}.h5"}, datasets=datasets, out_dir=tmp_path / f"tal-{name}",
            seed=0, overrides=profile.tasks.get("tal", {}), progress=False,
        )
        scores[name] = task.run(ctx)
    print({k: v["average_mAP"] for k, v in scores.items()})
    assert scores["trained"]["average_mAP"] > 3 * scores["random"]["average_mAP"] + 0.02, scores
    assert scores["trained"]["mAP@0.5"] > scores["random"]["mAP@0.5"] + 0.03, scores


def test_grounding_on_features_of_a_trained_encoder_beats_random_features_through_the_same_head(tmp_path):
    """Issue acceptance: 2D-TAN on the default profile's Charades-like set ranks moments clearly
    better on features of a trained encoder (the cached source-pre-trained R(2+1)D) than on random
    features of the same shape. About 3 minutes on 2 cores once the source model is cached."""
    profile, datasets = _trained_and_random_features("charades-sta", tmp_path)
    task = get_task("vlg")
    overrides = {**profile.tasks.get("vlg", {}), "datasets": ["charades-sta"]}
    scores = {}
    for name in ("trained", "random"):
        ctx = TaskContext(
            features={"charades-sta": tmp_path / f"{name}.h5"}, datasets=datasets, out_dir=tmp_path / f"vlg-{name}",
            seed=0, overrides=overrides, progress=False,
        )
        scores[name] = task.run(ctx)
    print({k: {m: v[f"charades-sta/{m}"] for m in ("R@1@0.3", "R@1@0.5", "mIoU")} for k, v in scores.items()})
    for metric in ("R@1@0.3", "R@1@0.5"):
        key = f"charades-sta/{metric}"
        assert scores["trained"][key] > scores["random"][key] + 0.07, (metric, scores)
    assert scores["trained"]["charades-sta/mIoU"] > scores["random"]["charades-sta/mIoU"] + 0.05, scores


def test_fewshot_qat_is_not_below_its_plain_prototype_on_features_pre_trained_on_base_classes(tmp_path):
    """Issue acceptance: on the default synthetic benchmark, with features of encoders
    post-pre-trained (CLAP) on the base classes only, QAT's meta-trained transformer is not below
    the plain support prototype on the same test episodes. Average mAP, mean over the 5 seeds of
    ``clapbench run --tasks fstal`` (each its own pre-training, base training, meta-training and
    episodes): with 2 test classes one encoder's comparison is within noise. About 4 minutes."""
    import json

    from clap_bench.training import load_checkpoint, resolve_classes

    runs = tmp_path / "runs"
    result = subprocess.run(
        _clapbench("run", "--method", "clap", "--seeds", "5", "--tasks", "fstal", "--profile", "default",
                   "--runs-dir", str(runs), "-q"),
        capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    base = resolve_classes(load_profile("default"), "base")
    qat, prototype = [], []
    for seed in range(5):
        stages = runs / "default" / "clap" / f"seed{seed}"
        assert set(load_checkpoint(stages / "pretrain-base" / "final.pt")["meta"]["classes"]) <= set(base)
        metrics = json.loads((stages / "fstal" / "metrics.json").read_text())
        qat.append(metrics["average_mAP"])
        prototype.append(metrics["prototype/average_mAP"])
    print("QAT", np.round(qat, 4), "prototype", np.round(prototype, 4))
    assert np.mean(prototype) > 0.02  # the test classes are found at all
    assert np.mean(qat) >= np.mean(prototype), (qat, prototype)
