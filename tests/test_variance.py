"""``clapbench analyze variance``: the decomposition against a hand-worked table and a simulation,
the bootstrap against the binomial formula, and the command on a smoke run store."""

from __future__ import annotations

import math
from typing import List

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.runs.variance import bootstrap_std, decompose, grounding_scorer


def test_decomposition_of_a_hand_worked_table():
    # rows (pre-training seeds) [1, 3] and [5, 7]: row variances 2 and 2 -> head variance 2;
    # row means 2 and 6 -> between = 2 heads x variance 8 = 16 -> pre-training variance (16 - 2) / 2 = 7
    d = decompose(np.array([[1.0, 3.0], [5.0, 7.0]]))
    assert (d.seeds, d.heads, d.mean) == (2, 2, 4.0)
    assert d.head_std == pytest.approx(math.sqrt(2.0))
    assert d.pretrain_std == pytest.approx(math.sqrt(7.0))
    assert d.run_std == pytest.approx(math.sqrt(20.0 / 3.0))  # deviations -3, -1, 1, 3
    assert d.seed_mean_std(2) == pytest.approx(math.sqrt(7.0 + 1.0))
    assert d.observed_seed_std == pytest.approx(math.sqrt(8.0))  # row means 2 and 6


def test_pretraining_part_is_zero_when_rows_differ_less_than_heads_do():
    d = decompose(np.array([[0.0, 4.0], [1.0, 3.0]]))  # row means equal
    assert d.pretrain_std == 0.0 and d.head_std == pytest.approx(math.sqrt((8.0 + 2.0) / 2))


def test_decomposition_recovers_simulated_parts():
    rng = np.random.default_rng(0)
    seeds, heads, sd_pre, sd_head = 400, 4, 2.0, 0.5
    y = 10 + sd_pre * rng.standard_normal((seeds, 1)) + sd_head * rng.standard_normal((seeds, heads))
    d = decompose(y)
    assert d.pretrain_std == pytest.approx(sd_pre, rel=0.1)
    assert d.head_std == pytest.approx(sd_head, rel=0.1)


@pytest.mark.parametrize("bad", [np.ones((1, 3)), np.ones((3, 1)), np.array([[1.0, np.nan], [1.0, 2.0]])])
def test_decomposition_rejects_tables_it_cannot_split(bad):
    with pytest.raises(ValueError):
        decompose(bad)


def test_bootstrap_of_a_recall_matches_the_binomial_standard_error():
    # 200 queries, 60 hits: the bootstrap std of the hit rate is close to sqrt(p (1 - p) / n)
    ground_truth = [{"id": i, "segment": [0.0, 10.0]} for i in range(200)]
    predictions = [{"id": i, "segments": [[0.0, 10.0] if i < 60 else [20.0, 30.0]], "scores": [1.0]} for i in range(200)]
    units, score = grounding_scorer(ground_truth, predictions)
    assert score(units)["R@1@0.5"] == pytest.approx(0.3) and score(units)["mIoU"] == pytest.approx(0.3)
    std = bootstrap_std(units, score, samples=150, seed=1)
    assert std["R@1@0.5"] == pytest.approx(math.sqrt(0.3 * 0.7 / 200), rel=0.2)
    assert std["R@1@0.5"] == pytest.approx(std["mIoU"])  # IoU here is 1 for a hit and 0 otherwise


@pytest.mark.slow  # four G-TAD trainings on the smoke set
def test_head_seeds_and_the_variance_command_on_a_smoke_run_store(tmp_path):
    """Two seeds of G-TAD on the same external features, each stage with ``head_seeds: 2``: the
    stage's figures are the mean of its two heads. The variance command with 3 heads per seed
    takes the stage's two and trains the third outside the stages, reuses it on a second call, and
    finds no pre-training part (one feature file for both seeds: they differ only in the heads)."""
    import json

    from clap_bench.config import load_profile, resolve_datasets
    from clap_bench.data import load_dataset

    ann = load_dataset(resolve_datasets(load_profile("smoke"))["activitynet"], "activitynet")
    folder = tmp_path / "feats"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(folder / "activitynet.h5", "w") as f:
        for vid, video in ann.videos.items():
            f[vid] = rng.standard_normal((max(4, int(video.duration)), 8)).astype(np.float32)
    profile = tmp_path / "heads2.yaml"
    profile.write_text("base: smoke\nname: heads2\ntasks:\n  tal:\n    head_seeds: 2\n")
    runs = tmp_path / "runs"
    method = f"features:{folder}"
    run = CliRunner().invoke(app, ["run", "--method", method, "--seeds", "2", "--tasks", "tal", "--profile", str(profile),
                                   "--runs-dir", str(runs), "-q"])
    assert run.exit_code == 0, run.output
    stage = next(runs.glob("heads2/*/seed1/tal"))
    heads = json.loads((stage / "heads.json").read_text())
    assert heads["seeds"] == [1, 1001] and len(heads["metrics"]) == 2
    assert all((stage / "heads" / f"head{j}" / "predictions.json").is_file() for j in (0, 1))
    stage_metrics = json.loads((stage / "metrics.json").read_text())
    assert stage_metrics["average_mAP"] == pytest.approx(np.mean([m["average_mAP"] for m in heads["metrics"]]))

    args = ["analyze", "variance", "-m", method, "--task", "tal", "--profile", str(profile), "--heads", "3",
            "--bootstrap", "5", "--runs-dir", str(runs), "-q"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 pre-training seeds x 3 head seeds" in first.output and "average_mAP" in first.output
    extra = sorted(runs.glob("heads2/*/_variance/seed*/tal/head*/metrics.json"))
    assert [p.parent.name for p in extra] == ["head2", "head2"]  # heads 0 and 1 came from the stages
    for p in extra:  # each names the stage it was trained for, and how
        record = json.loads((p.parent / "head.json").read_text())
        seed_stage = p.parents[4] / p.parents[2].name / "tal"
        assert record["stage_hash"] == json.loads((seed_stage / "stage.json").read_text())["hash"]
        assert record["head_seed"] == int(p.parents[2].name[4:]) + 2000 and "head_seeds" not in record["task_config"]
    stamps = [p.stat().st_mtime_ns for p in extra]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output == first.output  # reused, not retrained
    assert [p.stat().st_mtime_ns for p in extra] == stamps
    # The profile's name as the store files it: the config its runs were recorded with.
    by_name = CliRunner().invoke(app, [a if a != str(profile) else "heads2" for a in args])
    assert by_name.exit_code == 0 and by_name.output == first.output, by_name.output
    status = CliRunner().invoke(app, ["status", "--profile", "heads2", "--runs-dir", str(runs)])
    assert status.exit_code == 0 and "head2" not in status.output and "_variance/" not in status.output


def test_head_seeds_must_be_a_positive_integer(tmp_path):
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.runs.plan import validate_run

    for bad in ("0", "two", "1.5"):
        path = tmp_path / "bad.yaml"
        path.write_text(f"base: smoke\ntasks:\n  tal:\n    head_seeds: {bad}\n")
        with pytest.raises(ConfigError, match=r"tasks\.tal\.head_seeds: expected an integer >= 1"):
            validate_run(load_profile(str(path)), ["clap"], ["tal"])
    ok = tmp_path / "ok.yaml"
    ok.write_text("base: smoke\ntasks:\n  tal:\n    head_seeds: 3\n")
    profile = load_profile(str(ok))
    validate_run(profile, ["clap"], ["tal"])
    assert "head_seeds" not in profile.task_config("tal")


def test_variance_command_errors_name_what_is_missing(tmp_path):
    result = CliRunner().invoke(app, ["analyze", "variance", "-m", "clap", "--profile", "smoke", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "0 seed(s) with a finished tal stage" in result.output
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(app, ["analyze", "variance", "-m", "clap", "--task", "nope", "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--task: expected one of tal, fstal, vlg" in bad.output
    heads = CliRunner().invoke(app, ["analyze", "variance", "-m", "clap", "--heads", "1", "--runs-dir", str(tmp_path)])
    assert heads.exit_code == 2 and "--heads: expected >= 2" in heads.output
    # --seeds reads as in clapbench run: a count, a list or a range.
    for given, named in (("3", "[0, 1, 2]"), ("5,7", "[5, 7]"), ("8-9", "[8, 9]")):
        chosen = CliRunner().invoke(app, ["analyze", "variance", "-m", "clap", "--profile", "smoke", "--seeds", given,
                                          "--runs-dir", str(tmp_path)])
        assert chosen.exit_code == 2 and f"no finished tal stage for seed(s) {named}" in chosen.output, chosen.output
    unreadable = CliRunner().invoke(app, ["analyze", "variance", "-m", "clap", "--seeds", "two", "--runs-dir", str(tmp_path)])
    assert unreadable.exit_code == 2 and "--seeds: expected a count (5), a list (0,3,4) or a range (5-9)" in unreadable.output


@pytest.fixture
def toy_grounding_task():
    """A task named ``toy-grounding`` over both grounding datasets, whose figure on a dataset is the
    head seed plus the dataset's place in the list; records every call. The registry is restored after."""
    import json
    from dataclasses import dataclass, field

    from clap_bench.downstream.base import TASKS, list_tasks, register_task

    list_tasks()  # built-ins discovered before the snapshot
    saved = dict(TASKS._entries), dict(TASKS._origins)
    calls = []

    @dataclass
    class ToyConfig:
        datasets: List[str] = field(default_factory=lambda: ["charades-sta", "tacos"])

    @register_task("toy-grounding", ToyConfig, ("charades-sta", "tacos"))
    def toy(ctx):
        cfg = ctx.config(TASKS.get("toy-grounding")())
        calls.append((ctx.seed, list(cfg.datasets)))
        metrics = {f"{d}/R@1@0.5": float(ctx.seed + k) for k, d in enumerate(cfg.datasets)}
        (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    yield calls
    TASKS._entries, TASKS._origins = saved


def _toy_stage(tmp_path, head_seeds):
    from clap_bench.config import load_profile
    from clap_bench.runs.plan import StageContext

    out = tmp_path / "stage"
    out.mkdir(parents=True, exist_ok=True)
    features = {d: {"path": str(tmp_path / f"{d}.h5")} for d in ("charades-sta", "tacos")}
    return StageContext(profile=load_profile("smoke"), stage="toy-grounding", method="m", seed=3, out_dir=out, inputs={},
                        config={"task": "toy-grounding", "features": features, "overrides": {"head_seeds": head_seeds}},
                        progress=False, _datasets={})


def test_head_seeds_per_dataset_average_one_dataset_and_train_the_other_once(tmp_path, toy_grounding_task):
    """``head_seeds: {charades-sta: 3}``: three heads on the Charades-like set, one on TACoS (not
    named: 1); each figure is the mean of the heads that made it, and a resumed stage reruns none."""
    import json

    from clap_bench.runs.plan import run_task_stage

    ctx = _toy_stage(tmp_path, {"charades-sta": 3})
    metrics = run_task_stage(ctx)
    assert toy_grounding_task == [(3, ["charades-sta", "tacos"]), (1003, ["charades-sta"]), (2003, ["charades-sta"])]
    assert metrics == {"charades-sta/R@1@0.5": (3 + 1003 + 2003) / 3, "tacos/R@1@0.5": 3 + 1}
    heads = json.loads((ctx.out_dir / "heads.json").read_text())
    assert heads["seeds"] == [3, 1003, 2003]
    assert heads["datasets"] == [["charades-sta", "tacos"], ["charades-sta"], ["charades-sta"]]
    assert run_task_stage(ctx) == metrics and len(toy_grounding_task) == 3  # every head reused

    # One count for all: every head on every dataset, as before.
    toy_grounding_task.clear()
    ctx = _toy_stage(tmp_path / "all", 2)
    assert run_task_stage(ctx) == {"charades-sta/R@1@0.5": 503.0, "tacos/R@1@0.5": 504.0}
    assert toy_grounding_task == [(3, ["charades-sta", "tacos"]), (1003, ["charades-sta", "tacos"])]
    assert "datasets" not in json.loads((ctx.out_dir / "heads.json").read_text())


def test_head_seeds_per_dataset_is_checked(tmp_path):
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.runs.plan import head_plan, validate_run

    assert head_plan({"head_seeds": {"charades-sta": 3}}, "vlg", "tasks.vlg") == [
        ["charades-sta", "tacos"], ["charades-sta"], ["charades-sta"]]
    # a dataset the run does not ground on adds no head
    assert head_plan({"head_seeds": {"tacos": 2}, "datasets": ["charades-sta"]}, "vlg", "tasks.vlg") == [["charades-sta"]]
    for bad, message in (
        ("{charades: 3}", r"tasks\.vlg\.head_seeds: unknown dataset 'charades'; expected some of charades-sta, tacos"),
        ("{charades-sta: 0}", r"tasks\.vlg\.head_seeds\.charades-sta: expected an integer >= 1, got 0"),
        ("[3]", r"tasks\.vlg\.head_seeds: expected an integer >= 1 or a mapping"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(f"base: smoke\ntasks:\n  vlg:\n    head_seeds: {bad}\n")
        with pytest.raises(ConfigError, match=message):
            validate_run(load_profile(str(path)), ["clap"], ["vlg"])
    path = tmp_path / "tal.yaml"
    path.write_text("base: smoke\ntasks:\n  tal:\n    head_seeds: {activitynet: 2}\n")
    with pytest.raises(ConfigError, match=r"tasks\.tal\.head_seeds: a mapping per dataset needs a task with a datasets list"):
        validate_run(load_profile(str(path)), ["clap"], ["tal"])


def test_locate_head_takes_a_stage_head_only_when_it_holds_every_figure(tmp_path):
    """A stage of ``head_seeds: {charades-sta: 2}``: its head 1 has no TACoS-like figures, so the
    decomposition of both datasets trains (and then reads) head 1 under ``_variance/``; of the
    Charades-like set alone it reads the stage's own head 1. Head 2 is always ``_variance/``'s."""
    import json

    from clap_bench.runs import RunStore
    from clap_bench.runs.plan import HEADS_FILE, head_dir
    from clap_bench.runs.variance import locate_head, stage_head, variance_dir

    store = RunStore(tmp_path)
    stage = store.stage_dir("p", "clap", 0, "vlg")
    per_head = [{"charades-sta/mIoU": 0.3, "tacos/mIoU": 0.1}, {"charades-sta/mIoU": 0.4}]
    for h, m in enumerate(per_head):
        head_dir(stage, h).mkdir(parents=True)
        (head_dir(stage, h) / "metrics.json").write_text(json.dumps(m))
    (stage / HEADS_FILE).write_text(json.dumps({"seeds": [0, 1000], "metrics": per_head}))
    both, charades = ["charades-sta/mIoU", "tacos/mIoU"], ["charades-sta/mIoU"]

    assert locate_head(store, "p", "clap", 0, "vlg", 0, both) == (head_dir(stage, 0), per_head[0])
    assert locate_head(store, "p", "clap", 0, "vlg", 1, charades) == (head_dir(stage, 1), per_head[1])
    assert locate_head(store, "p", "clap", 0, "vlg", 1, both) == (variance_dir(store, "p", "clap", 0, "vlg", 1), None)
    assert locate_head(store, "p", "clap", 0, "vlg", 2, charades) == (variance_dir(store, "p", "clap", 0, "vlg", 2), None)
    assert stage_head(store, "p", "clap", 0, "vlg", 2) == (None, None)


def _toy_variance_store(tmp_path, monkeypatch):
    """Toy-plan seeds 0-2 of method ``a`` (3 steps), then seeds 1 and 2 rerun under 5 steps (the
    profile's last run): seed 0 is stale, as ``clapbench table`` and ``status`` call it."""
    from clap_bench.runs import RunStore, run_plan
    from test_runs_toy_plan import build_toy_plan, toy_profile

    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    store, profile = RunStore(tmp_path), toy_profile()
    for steps, seeds in (("3", [0, 1, 2]), ("5", [1, 2])):
        monkeypatch.setenv("CLAPBENCH_TOY_STEPS", steps)
        assert run_plan(build_toy_plan(profile, ["a"], seeds), store, executor="local", progress=False,
                        echo=lambda s: None).ok
    return store


def _extra_head(store, seed: int, value: float, head: int = 1):
    """What analyze variance leaves after training head ``head`` of seed ``seed``'s tal stage."""
    import json

    from clap_bench.runs.variance import stage_hash, variance_dir

    out = variance_dir(store, "toy", "a", seed, "tal", head)
    out.mkdir(parents=True, exist_ok=True)
    (out / "head.json").write_text(json.dumps({"stage_hash": stage_hash(store, "toy", "a", seed, "tal")}))
    (out / "metrics.json").write_text(json.dumps({"mAP@0.5": value, "average_mAP": value}))
    return out


def test_variance_leaves_out_the_seeds_the_table_calls_stale_and_names_them(tmp_path, monkeypatch):
    from clap_bench.runs import make_tables

    store = _toy_variance_store(tmp_path, monkeypatch)
    for seed in (0, 1, 2):
        _extra_head(store, seed, 0.3 + 0.01 * seed)
    [table] = make_tables(store, "toy", ["1"], baseline=None, include_paper=False)
    assert [r.seeds for r in table.rows] == [[1, 2]] and "a: seed 0 (stale: " in table.incomplete[0]
    args = ["analyze", "variance", "-m", "a", "--task", "tal", "--heads", "2", "--bootstrap", "0", "--profile", "toy",
            "--runs-dir", str(tmp_path), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "a, tal: 2 pre-training seeds x 2 head seeds" in result.output
    assert "note: a: left out, as in clapbench table: seed 0 (stale: its tal stage was made under another config" in result.output
    chosen = CliRunner().invoke(app, args + ["--seeds", "0,1"])
    assert chosen.exit_code == 2 and "a: seed(s) [0] of --seeds are stale" in chosen.output, chosen.output
    # seed 2 alone under 7 steps: seeds 0 and 1 are stale, one seed is left, and the error says so
    from clap_bench.runs import run_plan
    from test_runs_toy_plan import build_toy_plan, toy_profile

    monkeypatch.setenv("CLAPBENCH_TOY_STEPS", "7")
    assert run_plan(build_toy_plan(toy_profile(), ["a"], [2]), store, executor="local", progress=False, echo=lambda s: None).ok
    few = CliRunner().invoke(app, args)
    assert few.exit_code == 2 and "1 seed(s) with a finished tal stage" in few.output, few.output
    assert "(2 more stale: seed(s) [0, 1])" in few.output


def _external_tal_stages(tmp_path, config):
    """A store ``tmp_path/runs`` with finished tal stages of seeds 0 and 1 of external features (profile
    ``ext``), each recording ``config`` in its config.yaml (hash ``h<seed>``): ``(store, method)``."""
    import json

    import yaml

    from clap_bench.runs import RunStore

    feats = tmp_path / "ext.h5"
    with h5py.File(feats, "w") as f:
        f["v"] = np.zeros((3, 4), np.float32)
    method = f"features:{feats}"
    store = RunStore(tmp_path / "runs")
    for seed in (0, 1):
        stage = store.stage_dir("ext", method, seed, "tal")
        stage.mkdir(parents=True)
        (stage / "stage.json").write_text(json.dumps({"status": "done", "hash": f"h{seed}", "method": method}))
        (stage / "config.yaml").write_text(yaml.safe_dump({"hash": f"h{seed}", "stage": "tal", "config": config}))
        (stage / "metrics.json").write_text(json.dumps({"mAP@0.5": 0.5 + 0.1 * seed, "average_mAP": 0.3 + 0.1 * seed}))
    return store, method


def test_extra_heads_are_recorded_for_their_stage_and_only_heads_of_the_stage_in_place_are_averaged(tmp_path, monkeypatch):
    """Two hand-made tal stages of external features made with ``tasks.tal.epochs: 2``. Their head 1
    under ``_variance/`` was trained by an older analyze variance (no head.json: unknown config) for
    seed 0, and for another stage (hash ``old``) for seed 1: ``table --heads 2`` names both and averages
    neither. analyze variance with a profile whose tasks.tal says ``epochs: 1`` is refused; with the
    stages' config it moves both heads aside and trains them again with the stage's recorded task
    config, recording the stage hash; the table then averages them."""
    import json


    import clap_bench.downstream.base as base
    from clap_bench.config import ConfigError, head_config, load_profile
    from clap_bench.runs import make_tables
    from clap_bench.runs.variance import run_variance, variance_dir

    same = tmp_path / "ext_a.yaml"
    same.write_text("base: smoke\nname: ext\ntasks:\n  tal:\n    epochs: 2\n")
    made_with = load_profile(str(same)).tasks["tal"]  # what a stage of that profile records in its config.yaml
    assert made_with["epochs"] == 2
    store, method = _external_tal_stages(tmp_path, {"task": "tal", "overrides": made_with})
    for seed in (0, 1):
        old = variance_dir(store, "ext", method, seed, "tal", 1)
        old.mkdir(parents=True)
        (old / "metrics.json").write_text(json.dumps({"mAP@0.5": 0.9, "average_mAP": 0.9}))
    (variance_dir(store, "ext", method, 1, "tal", 1) / "head.json").write_text(json.dumps({"stage_hash": "old"}))

    [table] = make_tables(store, "ext", ["1"], baseline=None, include_paper=False, heads=2)
    assert not [r for r in table.rows if r.source == "ours"]
    retrain = f"clapbench analyze variance -m {method} --task tal --heads 2 --profile ext trains it again"
    assert f"seed 0 (head 1 under {variance_dir(store, 'ext', method, 0, 'tal', 1)} has no head.json" in table.incomplete[0]
    assert "seed 1 (head 1 under" in table.incomplete[0] and "trained for the tal stage of config hash old, not the one in place (h1)" in table.incomplete[0]
    assert table.incomplete[0].count(retrain) == 2

    other = tmp_path / "ext_b.yaml"
    other.write_text("base: smoke\nname: ext\ntasks:\n  tal:\n    epochs: 1\n")
    with pytest.raises(ConfigError, match=r"--profile .*ext_b.yaml: tasks.tal differs from the config the tal stage of "
                                          r"seed\(s\) \[0, 1\].*epochs: 1 here, 2 in the stage"):
        run_variance(store, str(other), method, "tal", heads=2, bootstrap=0, log=lambda m: None)

    trained = []

    class FakeTal:
        def run(self, ctx):
            trained.append((ctx.seed, dict(ctx.overrides)))
            (ctx.out_dir / "metrics.json").write_text(json.dumps({"mAP@0.5": 0.4, "average_mAP": 0.2 + ctx.seed / 1e4}))

    monkeypatch.setattr(base, "get_task", lambda name: FakeTal())
    notes = []
    parts = run_variance(store, str(same), method, "tal", heads=2, bootstrap=0, log=lambda m: None, warn=notes.append)
    assert parts["average_mAP"].seeds == 2 and trained == [(1000, head_config(made_with)), (1001, head_config(made_with))]
    assert any("head 1 has no head.json" in n and "head1@unrecorded" in n for n in notes)
    assert any("config hash old" in n and "head1@old" in n for n in notes)
    for seed in (0, 1):
        record = json.loads((variance_dir(store, "ext", method, seed, "tal", 1) / "head.json").read_text())
        assert record == {"stage_hash": f"h{seed}", "head_seed": 1000 + seed, "task_config": head_config(made_with)}
    [table] = make_tables(store, "ext", ["1"], baseline=None, include_paper=False, heads=2)
    [row] = [r for r in table.rows if r.source == "ours"]
    assert row.seeds == [0, 1] and not table.incomplete
    assert row.by_seed["average_mAP"][1] == pytest.approx(100 * (0.4 + 0.2 + 1001 / 1e4) / 2)


def test_extra_heads_train_with_the_thread_count_the_store_recorded_not_this_machines(tmp_path, monkeypatch):
    """The store's task stages ran with 3 threads (their config.yaml, as a run on another machine or
    under ``taskset`` leaves it): the extra heads train with 3 threads, as a rerun of the stage would
    (``with_store_threads``), not with this machine's core count."""
    import json

    import torch

    import clap_bench.downstream.base as base
    from clap_bench.config import load_profile
    from clap_bench.runs.variance import run_variance

    yaml_file = tmp_path / "ext.yaml"
    yaml_file.write_text("base: smoke\nname: ext\n")
    prof = load_profile(str(yaml_file))
    store, method = _external_tal_stages(tmp_path, {"task": "tal", "overrides": prof.tasks["tal"], "runtime": {"threads": 3}})
    assert store.thread_counts("ext") == {"task": 3}
    threads = []

    class FakeTal:
        def run(self, ctx):
            threads.append(torch.get_num_threads())
            (ctx.out_dir / "metrics.json").write_text(json.dumps({"mAP@0.5": 0.4, "average_mAP": 0.2 + ctx.seed / 1e4}))

    monkeypatch.setattr(base, "get_task", lambda name: FakeTal())
    before = torch.get_num_threads()
    try:
        run_variance(store, str(yaml_file), method, "tal", heads=2, bootstrap=0, log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    assert threads == [3, 3]  # head 1 of each seed (head 0 is the stage's own)
