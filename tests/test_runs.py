"""The run store, plan hashing, resume, executors (local, debug), status and tables, on the toy plan."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import ConfigError, load_profile
from clap_bench.io import atomic_write_json
from clap_bench.runs import RunStore, build_plan, make_tables, parse_seeds, plan_status, render, run_plan
from clap_bench.runs.claims import StageClaim
from clap_bench.runs.fingerprints import read_stage_fingerprints
from clap_bench.runs.store import method_dir_name
from clap_bench.runs.tables import load_paper_tables
from test_runs_toy_plan import build_toy_plan, toy_profile, toy_score


def _run(plan, store, **kw):
    return run_plan(plan, store, executor=kw.pop("executor", "local"), progress=False, echo=lambda s: None, **kw)


# --------------------------------------------------------------------------- store
def test_store_builds_every_path_from_profile_method_seed_stage(tmp_path):
    store = RunStore(tmp_path)
    assert store.stage_dir("smoke", "clap", 3, "tal") == tmp_path / "smoke" / "clap" / "seed3" / "tal"
    assert store.stage_dir("smoke", None, None, "source") == tmp_path / "smoke" / "_shared" / "source"
    assert method_dir_name("features:/x/y/videoclip.h5") == "features-videoclip"
    assert method_dir_name("features:/x/feats") == "features-feats"


def test_atomic_writes_give_files_the_mode_the_umask_gives_a_plain_open(tmp_path):
    # A run store shared by a group needs its records group-readable (and writable where the umask
    # says so), not owner-only as the temporary file of an atomic write starts out.
    import subprocess
    import sys

    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        out = tmp_path / f"m{umask:o}.json"
        code = (f"import os; os.umask({umask}); from clap_bench.io import atomic_write_json; "
                f"atomic_write_json({str(out)!r}, {{'a': 1}})")
        subprocess.run([sys.executable, "-c", code], check=True)
        assert out.stat().st_mode & 0o777 == mode, oct(out.stat().st_mode)


def test_metrics_written_last_and_only_on_success(tmp_path):
    store, profile = RunStore(tmp_path), toy_profile()
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"fail_at": 2}))
    plan = build_toy_plan(profile, ["a"], [0], steps=4, control=str(control))
    report = _run(plan, store)
    train_dir = plan.stage_dir(store, plan.stages["a/seed0/pretrain"])
    assert list(report.failed) == ["a/seed0/pretrain"] and report.blocked == ["a/seed0/tal"]
    assert not (train_dir / "metrics.json").exists()
    record = json.loads((train_dir / "stage.json").read_text())
    assert record["status"] == "failed" and "toy failure at step 2" in (train_dir / "error.log").read_text()
    assert not list(train_dir.glob(".*.tmp"))  # no half-written files left behind
    # the failed stage resumes from its checkpoint (step 2), not from scratch
    control.write_text("{}")
    report = _run(plan, store)
    assert report.ok and report.ran == ["a/seed0/pretrain", "a/seed0/tal"]
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert metrics == {"steps": 4, "starts": 2, "resumed_from": 2, "checkpoint": "toy_checkpoint.json"}
    assert json.loads((train_dir / "stage.json").read_text())["status"] == "done"


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143)])
def test_a_stage_stopped_by_ctrl_c_or_a_stop_signal_is_recorded_interrupted_not_failed(tmp_path, stop):
    # Ctrl-C (KeyboardInterrupt) or a stop signal (the trainer's TrainingInterrupted is a SystemExit):
    # the stage did not fail, it was stopped; the record says so, the stop goes on up, and the next run resumes it.
    store = RunStore(tmp_path)
    plan = build_toy_plan(toy_profile(), ["a"], [0])
    tal = plan.stages["a/seed0/tal"]

    def stopped(ctx):
        raise stop

    plan.stages["a/seed0/tal"] = dataclasses.replace(tal, fn=stopped)
    with pytest.raises(type(stop)):
        _run(plan, store)
    tal_dir = plan.stage_dir(store, plan.stages["a/seed0/tal"])
    record = json.loads((tal_dir / "stage.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_by"] == (
        "KeyboardInterrupt" if isinstance(stop, KeyboardInterrupt) else "SystemExit(143)")
    assert not (tal_dir / "error.log").exists()
    assert {s.key: s.state for s in plan_status(plan, store)}["a/seed0/tal"] == "interrupted"
    [table] = make_tables(store, "toy", ["1"], baseline=None, include_paper=False)
    assert table.incomplete == ["a: seed 0 (interrupted)"]
    plan.stages["a/seed0/tal"] = tal
    assert _run(plan, store).ran == ["a/seed0/tal"]


def test_more_seeds_run_only_the_missing_seeds(tmp_path):
    store, profile = RunStore(tmp_path), toy_profile()
    first = _run(build_toy_plan(profile, ["a"], parse_seeds(2)), store)
    assert len(first.ran) == 4
    second = _run(build_toy_plan(profile, ["a"], parse_seeds(3)), store)
    assert second.ran == ["a/seed2/pretrain", "a/seed2/tal"]
    assert len(second.reused) == 4


def test_changed_config_makes_a_new_stage_and_archives_the_old(tmp_path):
    store, profile = RunStore(tmp_path), toy_profile()
    plan3 = build_toy_plan(profile, ["a"], [0], steps=3)
    _run(plan3, store)
    plan5 = build_toy_plan(profile, ["a"], [0], steps=5)
    assert plan5.hashes["a/seed0/pretrain"] != plan3.hashes["a/seed0/pretrain"]
    report = _run(plan5, store)
    assert report.ran == ["a/seed0/pretrain", "a/seed0/tal"]  # tal too: its upstream changed
    seed_dir = store.seed_dir("toy", "a", 0)
    archived = seed_dir / f"pretrain@{plan3.hashes['a/seed0/pretrain']}"
    assert json.loads((archived / "metrics.json").read_text())["steps"] == 3
    assert json.loads((seed_dir / "pretrain" / "metrics.json").read_text())["steps"] == 5
    # the archived folder is never read by the tables
    assert [t.rows[0].n for t in make_tables(store, "toy", ["1"], baseline=None, include_paper=False)] == [1]


def test_heads_trained_beside_a_stage_move_aside_with_it_when_its_config_changes(tmp_path):
    # analyze variance's extra heads are trained on the stage's inputs: after a config change they
    # belong to the archived stage, and a table of several heads must not average them with the new one.
    store, profile = RunStore(tmp_path), toy_profile()
    plan3 = build_toy_plan(profile, ["a"], [0], steps=3)
    _run(plan3, store)
    extra = store.variance_dir("toy", "a", 0, "tal", 1)
    extra.mkdir(parents=True)
    atomic_write_json(extra / "head.json", {"stage_hash": plan3.hashes["a/seed0/tal"]})  # trained for that stage
    atomic_write_json(extra / "metrics.json", {"mAP@0.5": 0.1, "mAP@0.75": 0.1, "mAP@0.95": 0.1, "average_mAP": 0.1})
    [table] = make_tables(store, "toy", ["1"], baseline=None, include_paper=False, heads=2)
    assert [r.seeds for r in table.rows if r.source == "ours"] == [[0]]
    _run(build_toy_plan(profile, ["a"], [0], steps=5), store)
    old = plan3.hashes["a/seed0/tal"]
    assert not extra.exists()
    assert (tmp_path / "toy" / "a" / "_variance" / "seed0" / f"tal@{old}" / "head1" / "metrics.json").is_file()
    [table] = make_tables(store, "toy", ["1"], baseline=None, include_paper=False, heads=2)
    assert not [r for r in table.rows if r.source == "ours"] and any("1 of 2 heads" in n for n in table.incomplete)


def test_seeds_made_under_an_earlier_config_stay_out_of_the_tables(tmp_path, monkeypatch):
    # Seeds 0 and 1 run with 3 steps; then seed 0 alone with 5 (the profile's last run). Seed 1's
    # stages are left in place under the old config (status: stale): a table must not average them
    # with seed 0's, and says why it left seed 1 out.
    import yaml

    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    store, profile = RunStore(tmp_path), toy_profile()

    def seeds_in_table():
        [table] = make_tables(store, "toy", ["1"], baseline=None, include_paper=False)
        return [r.seeds for r in table.rows if r.source == "ours"], table.incomplete

    monkeypatch.setenv("CLAPBENCH_TOY_STEPS", "3")
    _run(build_toy_plan(profile, ["a"], [0, 1]), store)
    assert seeds_in_table() == ([[0, 1]], [])
    monkeypatch.setenv("CLAPBENCH_TOY_STEPS", "5")
    _run(build_toy_plan(profile, ["a"], [0]), store)
    seeds, incomplete = seeds_in_table()
    assert seeds == [[0]]
    assert incomplete == ["a: seed 1 (stale: its tal stage was made under another config than the profile's "
                          "last run (clapbench status lists it; rerunning that seed redoes it))"]
    # An upstream stage that holds another run than the one the task read (its hash differs from
    # the one the task recorded): the task's figures are not of the stages in the store.
    pretrain = store.stage_dir("toy", "a", 0, "pretrain") / "config.yaml"
    record = yaml.safe_load(pretrain.read_text())
    pretrain.write_text(yaml.safe_dump({**record, "hash": "0000000000"}))
    seeds, incomplete = seeds_in_table()
    assert seeds == [] and incomplete[0].startswith("a: seed 0 (stale: pretrain was rerun (hash 0000000000) after the tal")


def test_debug_executor_runs_the_same_plan_through_submitit(tmp_path):
    store = RunStore(tmp_path)
    report = _run(build_toy_plan(toy_profile(), ["a"], [0, 1]), store, executor="debug")
    assert report.ok and len(report.ran) == 4
    assert store.is_done(store.stage_dir("toy", "a", 1, "tal"))


def _one_head_task(ctx):
    """What a task of one head does: it writes metrics.json into the stage's own folder itself."""
    metrics = {"mAP@0.5": 0.4, "mAP@0.75": 0.3, "mAP@0.95": 0.1, "average_mAP": 0.28}
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    return metrics


def test_a_stage_killed_after_its_task_wrote_metrics_but_before_the_store_recorded_it_is_not_done(tmp_path, monkeypatch):
    # A one-head task writes metrics.json itself; the store then writes the fingerprints and the
    # record. A process killed in between (a time limit, Ctrl-C) leaves metrics.json beside a record
    # that says running: that stage must not count as done, nor enter a table, and the next run redoes it.
    import clap_bench.runs.executors as executors

    store = RunStore(tmp_path)
    plan = build_toy_plan(toy_profile(), ["a"], [0])
    tal = plan.stages["a/seed0/tal"]
    plan.stages["a/seed0/tal"] = dataclasses.replace(tal, fn=_one_head_task)
    real = executors.write_stage_fingerprints

    def killed(stage_dir, metrics):
        if stage_dir.name == "tal":
            raise KeyboardInterrupt("killed while the stage was being recorded")
        return real(stage_dir, metrics)

    monkeypatch.setattr(executors, "write_stage_fingerprints", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(plan, store)
    tal_dir = plan.stage_dir(store, plan.stages["a/seed0/tal"])
    assert (tal_dir / "metrics.json").is_file()
    assert json.loads((tal_dir / "stage.json").read_text())["status"] == "running"
    assert not store.is_done(tal_dir) and not store.is_done(tal_dir, plan.hashes["a/seed0/tal"])
    states = {s.key: s.state for s in plan_status(plan, store)}
    assert states["a/seed0/pretrain"] == "done" and states["a/seed0/tal"] == "interrupted"  # as the table names it
    [table] = make_tables(store, "toy", ["1"], baseline=None, include_paper=False)
    assert not [r for r in table.rows if r.source == "ours"]
    assert any("a: seed 0 (interrupted)" in n for n in table.incomplete)
    monkeypatch.setattr(executors, "write_stage_fingerprints", real)
    report = _run(plan, store)
    assert report.ran == ["a/seed0/tal"] and report.reused == ["a/seed0/pretrain"]
    assert store.is_done(tal_dir, plan.hashes["a/seed0/tal"])


# --------------------------------------------------------------------------- status
def test_status_reports_done_failed_stale_and_missing(tmp_path):
    store, profile = RunStore(tmp_path), toy_profile()
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"fail_at": 1}))
    _run(build_toy_plan(profile, ["a"], [0], control=str(control)), store)  # fails
    _run(build_toy_plan(profile, ["b"], [0]), store)  # done
    plan = build_toy_plan(profile, ["a", "b"], [0, 1], control=str(control))
    states = {s.key: s for s in plan_status(plan, store)}
    assert states["a/seed0/pretrain"].state == "failed"
    assert "toy failure at step 1" in "\n".join(states["a/seed0/pretrain"].error_tail)
    assert states["a/seed0/tal"].state == "missing"
    assert states["b/seed0/pretrain"].state == "stale"  # b ran without the control file: another config
    plan_b = build_toy_plan(profile, ["b"], [0, 1])
    states = {s.key: s.state for s in plan_status(plan_b, store)}
    assert states == {"b/seed0/pretrain": "done", "b/seed0/tal": "done", "b/seed1/pretrain": "missing", "b/seed1/tal": "missing"}


def test_status_command_lists_every_stage(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    _run(build_toy_plan(toy_profile(), ["a"], [0]), store)
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    result = CliRunner().invoke(app, ["status", "--runs-dir", str(tmp_path), "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "2 done, 2 missing" in result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["a", "1", "tal", "missing"] in rows and ["a", "0", "pretrain", "done"] in rows


def test_status_command_says_interrupted_for_a_stage_recorded_interrupted(tmp_path, monkeypatch):
    # A stage stopped by Ctrl-C records interrupted: status says so (and counts it), as the table does, not missing.
    store = RunStore(tmp_path)
    plan = build_toy_plan(toy_profile(), ["a"], [0])
    tal = plan.stages["a/seed0/tal"]

    def stopped(ctx):
        raise KeyboardInterrupt()

    plan.stages["a/seed0/tal"] = dataclasses.replace(tal, fn=stopped)
    with pytest.raises(KeyboardInterrupt):
        _run(plan, store)
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    result = CliRunner().invoke(app, ["status", "--runs-dir", str(tmp_path), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["a", "0", "tal", "interrupted"] in rows and ["a", "0", "pretrain", "done"] in rows
    assert "1 done, 1 interrupted" in result.output


def test_status_lists_every_stage_and_marks_one_with_a_damaged_record(tmp_path, monkeypatch):
    # A truncated stage.json (or metrics.json) is that stage's state, as a run fails that stage and a
    # table leaves its seed out: status lists every other stage, marks it damaged, names the file and
    # what is wrong, and exits 0 as it does for a failed stage.
    store = RunStore(tmp_path)
    _run(build_toy_plan(toy_profile(), ["a"], [0, 1]), store)
    record = store.stage_dir("toy", "a", 0, "pretrain") / "stage.json"
    record.write_text('{"status": "do')  # cut short
    metrics = store.stage_dir("toy", "a", 1, "tal") / "metrics.json"
    metrics.write_text('{"average_mAP": 0.3')
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    result = CliRunner().invoke(app, ["status", "--runs-dir", str(tmp_path), "--seeds", "2"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    rows = [line.split()[:4] for line in result.output.splitlines()]
    assert ["a", "0", "pretrain", "damaged"] in rows and ["a", "1", "tal", "damaged"] in rows
    assert ["a", "0", "tal", "done"] in rows and ["a", "1", "pretrain", "done"] in rows
    assert "2 done, 2 damaged" in result.output
    assert f"a/seed0/pretrain damaged: {record}: not valid JSON" in result.output
    assert f"a/seed1/tal damaged: {metrics}: not valid JSON" in result.output and "delete it to rerun the stage" in result.output
    states = {s.key: s.state for s in plan_status(build_toy_plan(toy_profile(), ["a"], [0, 1]), store)}
    assert states == {"a/seed0/pretrain": "damaged", "a/seed0/tal": "done", "a/seed1/pretrain": "done", "a/seed1/tal": "damaged"}


# --------------------------------------------------------------------------- tables
def _fake_results(store: RunStore, profile: str, values: dict, task: str = "tal", incomplete: dict = None):
    """Hand-made finished task stages: {method: [average_mAP per seed]}."""
    for method, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            d = store.stage_dir(profile, method, seed, task)
            d.mkdir(parents=True)
            atomic_write_json(d / "stage.json", {"status": "done", "method": method, "hash": "x"})
            atomic_write_json(d / "metrics.json", {"mAP@0.5": v + 0.1, "mAP@0.75": v, "mAP@0.95": v / 4, "average_mAP": v})
    for method, seeds in (incomplete or {}).items():
        for seed in seeds:
            d = store.stage_dir(profile, method, seed, task)
            d.mkdir(parents=True)
            atomic_write_json(d / "stage.json", {"status": "running", "method": method, "hash": "x"})


def test_table_mean_std_best_and_welch_p_value(tmp_path):
    store = RunStore(tmp_path)
    clap, tsp = [0.352, 0.350, 0.355], [0.347, 0.346, 0.349]
    _fake_results(store, "p", {"clap": clap, "tsp": tsp}, incomplete={"clap": [3]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp")
    ours = {r.method: r for r in table.rows if r.source == "ours"}
    assert ours["clap"].n == 3 and ours["clap"].seeds == [0, 1, 2]  # seed 3 is running: not aggregated
    assert ours["clap"].mean["average_mAP"] == pytest.approx(100 * np.mean(clap))
    assert ours["clap"].std["average_mAP"] == pytest.approx(100 * np.std(clap, ddof=1))
    expected_p = stats.ttest_ind(np.array(clap) * 100, np.array(tsp) * 100, equal_var=False).pvalue
    assert ours["clap"].p_value == pytest.approx(expected_p)
    assert ours["tsp"].p_value is None
    assert ours["clap"].best["average_mAP"] and not ours["tsp"].best["average_mAP"]
    assert ours["clap"].paper["average_mAP"] == 35.23  # the R(2+1)D-18 row of the paper, not Res3D-18
    assert any(r.source == "paper" and r.label.startswith("VideoCLIP") for r in table.rows)
    # Its record says running but no process holds the stage (the run was killed): interrupted.
    assert table.incomplete == ["clap: seed 3 (interrupted)"]
    claim = StageClaim(store.stage_dir("p", "clap", 3, "tal"))
    assert claim.try_acquire()
    try:
        [table] = make_tables(store, "p", ["1"], baseline="tsp")
    finally:
        claim.release()
    assert table.incomplete == ["clap: seed 3 (running)"]

    md = render([table], "markdown")
    assert f"**{100 * np.mean(clap):.2f} ± {100 * np.std(clap, ddof=1):.2f}** [35.23]" in md
    assert f"{expected_p:.3f}" in md and "Incomplete (not aggregated): clap: seed 3 (running)" in md
    [bare] = make_tables(store, "p", ["1"], baseline="tsp", include_paper=False)  # --no-paper
    assert all(r.source == "ours" and not r.paper for r in bare.rows) and bare.ordering is None
    assert "[35.23]" not in render([bare], "markdown") and "VideoCLIP" not in render([bare], "markdown")
    tex = render([table], "latex")
    assert r"\textbf{" in tex and r"$\pm$" in tex and r"\begin{tabular}" in tex
    body = [line for line in tex.splitlines() if not line.startswith("% ")]  # the footer is in comments
    assert r"$\Delta$ vs tsp" in tex and all(line.isascii() for line in body)  # pdflatex takes no raw Unicode
    rows = list(csv.DictReader(io.StringIO(render([table], "csv"))))
    assert [r["method"] for r in rows] == ["tsp", "clap"]  # ours only, in the paper's method order
    clap_row = next(r for r in rows if r["method"] == "clap")
    assert float(clap_row["average_mAP mean"]) == pytest.approx(100 * np.mean(clap), abs=1e-4)
    assert float(clap_row["average_mAP std"]) == pytest.approx(100 * np.std(clap, ddof=1), abs=1e-4)
    assert clap_row["average_mAP best"] == "1" and clap_row["n"] == "3"
    assert float(clap_row["p_value"]) == pytest.approx(expected_p, rel=1e-5)


def test_table_ci_p_value_and_detectable_difference_against_hand_worked_numbers(tmp_path):
    # clap [4, 5, 6] %, tsp [1, 2, 3] %: equal sizes and variances (1.0 each), so Welch's
    # degrees of freedom are exactly 2n - 2 = 4. By hand: difference 3.0, standard error
    # sqrt(1/3 + 1/3) = 0.816497, t = 3.674235; t_{0.975, 4} = 2.776445 (t table), so the 95% CI
    # is 3 +- 2.266958 = [0.733042, 5.266958]. The two-sided p-value from the closed form of
    # Student's t with 4 degrees of freedom, F(t) = 1/2 + (3/4) s (1 - s^2 / 3), s = t / sqrt(4 + t^2).
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"clap": [0.04, 0.05, 0.06], "tsp": [0.01, 0.02, 0.03]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp", expected_seeds=5)
    clap = next(r for r in table.rows if r.method == "clap" and r.source == "ours")
    t = 3.0 / (2.0 / 3.0) ** 0.5
    s_ = t / (4 + t * t) ** 0.5
    p_hand = 2 * (1 - (0.5 + 0.75 * s_ * (1 - s_ * s_ / 3)))
    assert clap.diff == pytest.approx(3.0)
    assert clap.ci[0] == pytest.approx(3.0 - 2.776445 * 0.816497, abs=1e-5)
    assert clap.ci[1] == pytest.approx(3.0 + 2.776445 * 0.816497, abs=1e-5)
    assert clap.p_value == pytest.approx(p_hand, rel=1e-6) and clap.p_value == pytest.approx(0.021312, abs=1e-6)
    # Smallest detectable difference with 3 seeds, pooled std 1.0, 80% power, 5% level:
    # (t_{0.975, 4} + t_{0.80, 4}) * 1.0 * sqrt(2/3) = (2.776445 + 0.940965) * 0.816497 = 3.035265
    assert table.mdd == pytest.approx(3.035265, abs=1e-4) and table.mdd_n == 3
    md = render([table], "markdown")
    assert "+3.00* [+0.73, +5.27]" in md  # significant at the 5% level: starred
    assert "3/5 (!)" in md  # fewer seeds finished than asked
    assert ("Smallest detectable difference (average_mAP, 3 seeds per method, 80% power by the t approximation, 0.05 level"
            in md and "3.04 points" in md)
    # What "the t approximation" means: the exact power of that difference (noncentral t, the same
    # 4 degrees of freedom and noncentrality 3.035265 / sqrt(2/3)) is a little under 80 %.
    df, ncp = 4, 3.035265 / (2.0 / 3.0) ** 0.5
    exact_power = stats.nct.sf(2.776445, df, ncp) + stats.nct.cdf(-2.776445, df, ncp)
    assert 0.78 < exact_power < 0.80
    # Not significant: overlapping samples give no star.
    _fake_results(store, "q", {"clap": [0.020, 0.031, 0.025], "tsp": [0.021, 0.030, 0.024]})
    [table] = make_tables(store, "q", ["1"], baseline="tsp")
    md = render([table], "markdown")
    assert "+0.03 [-1.13, +1.20]" in md and "+0.03*" not in md


def test_table_without_comparisons_has_no_comparison_columns_and_a_legend_of_what_it_shows(tmp_path):
    # One method and the baseline absent (what `clapbench run --method clap` prints on a fresh store):
    # no Δ / p / Holm columns, no caption clause about them; the (!) legend only where a row is marked.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"clap": [0.04, 0.05, 0.06]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp", expected_seeds=3)
    md = render([table], "markdown")
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert "Holm p" not in header and "Δ" not in header and "p vs" not in header
    assert "Δ:" not in md and "(!)" not in md
    assert "p-values: baseline 'tsp' has no finished seeds" in md  # the note says why there are none
    assert header.count("|") == next(line for line in md.splitlines() if line.startswith("| CLAP ")).count("|")
    [short] = make_tables(store, "p", ["1"], baseline="tsp", expected_seeds=5)
    assert "3/5 (!)" in render([short], "markdown") and "fewer seeds finished than asked" in render([short], "markdown")
    assert r"\begin{tabular}{l" + "r" * (len(header.split("|")) - 3) + "}" in render([table], "latex")
    # With a comparison, the columns and the caption's clause are back.
    _fake_results(store, "q", {"clap": [0.04, 0.05, 0.06], "tsp": [0.01, 0.02, 0.03]})
    [compared] = make_tables(store, "q", ["1"], baseline="tsp")
    md = render([compared], "markdown")
    assert "Holm p (1 tests)" in md and "Δ: difference of means on average_mAP against tsp" in md


def test_detectable_difference_uses_the_seed_count_most_rows_have(tmp_path):
    # tsp [1, 2, 3] % and clap [4, 5, 6] % (variance 1.0 each), tac [2, 4] % (variance 2.0, one
    # seed short). Pooled std sqrt((2 * 1 + 2 * 1 + 1 * 2) / 5) = sqrt(1.2) = 1.095445; at 3 seeds
    # (two rows of three, one of two): (2.776445 + 0.940965) * 1.095445 * sqrt(2/3) = 3.324967.
    # At the smallest count (2) it would be (t_{0.975, 2} + t_{0.80, 2}) * 1.095445 * 1 =
    # (4.302653 + 1.060660) * 1.095445 = 5.875, set by one unfinished row.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"clap": [0.04, 0.05, 0.06], "tsp": [0.01, 0.02, 0.03], "tac": [0.02, 0.04]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp", expected_seeds=3)
    assert table.mdd_n == 3 and table.mdd_fewer == 1
    assert table.mdd == pytest.approx(3.324967, abs=1e-4)
    md = render([table], "markdown")
    assert "(average_mAP, 3 seeds per method," in md and "3.32 points. 1 row with fewer seeds needs a larger one." in md
    # A tie between counts goes to the fewer seeds.
    _fake_results(store, "q", {"clap": [0.04, 0.05, 0.06], "tac": [0.02, 0.04]})
    [table] = make_tables(store, "q", ["1"], baseline=None, expected_seeds=3)
    assert table.mdd_n == 2 and table.mdd_fewer == 0


def test_holm_adjustment_against_hand_worked_numbers():
    from clap_bench.runs.tables import holm

    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (never below the previous);
    # 0.20 x 1 = 0.20; and a large p is capped at 1
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])


def test_table_adjusts_the_p_values_of_every_comparison_with_the_baseline(tmp_path):
    # clap [4, 5, 6] % and tac [1.5, 2.5, 3.5] % against tsp [1, 2, 3] %: every variance is 1.0, so
    # both comparisons have 4 degrees of freedom and standard error sqrt(2/3); p from the closed
    # form of Student's t with 4 degrees of freedom (as above). Holm over the two: the smaller
    # p doubled, the larger one kept (it is above the doubled smaller one).
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"clap": [0.04, 0.05, 0.06], "tac": [0.015, 0.025, 0.035], "tsp": [0.01, 0.02, 0.03]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp")

    def p_t4(diff):
        t = diff / (2.0 / 3.0) ** 0.5
        s_ = t / (4 + t * t) ** 0.5
        return 2 * (1 - (0.5 + 0.75 * s_ * (1 - s_ * s_ / 3)))

    ours = {r.method: r for r in table.rows if r.source == "ours"}
    p_clap, p_tac = p_t4(3.0), p_t4(0.5)
    assert ours["clap"].p_value == pytest.approx(p_clap, rel=1e-6)
    assert ours["tac"].p_value == pytest.approx(p_tac, rel=1e-6)
    assert ours["clap"].p_holm == pytest.approx(2 * p_clap, rel=1e-6) and 2 * p_clap < p_tac
    assert ours["tac"].p_holm == pytest.approx(p_tac, rel=1e-6)
    assert ours["tsp"].p_holm is None
    md = render([table], "markdown")
    assert "Holm p (2 tests)" in md and f"{2 * p_clap:.3f}" in md
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render([table], "csv")))}
    assert float(rows["clap"]["p_holm"]) == pytest.approx(2 * p_clap, rel=1e-5) and rows["tsp"]["p_holm"] == ""


def test_ordering_against_the_papers_by_hand(tmp_path):
    # The paper's Table 1 (R(2+1)D-18): TAC 33.87 < TSP 34.71 < CLAP(clip) 34.76 < CLAP 35.23.
    # Ours swap TSP and CLAP(clip): 1 discordant pair of 6, tau = (5 - 1) / 6 = 2/3. Of the 24
    # orderings of 4 methods, 1 has no inversion, 3 have one, and as many have 5 or 6: the exact
    # two-sided p is (1 + 3 + 3 + 1) / 24 = 1/3.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"tac": [0.010, 0.011], "tsp": [0.030, 0.031], "clap-clip": [0.020, 0.021],
                               "clap": [0.040, 0.041]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp")
    assert table.ordering["methods"] == 4
    assert table.ordering["tau"] == pytest.approx(2 / 3)
    assert table.ordering["p"] == pytest.approx(1 / 3)
    assert "Kendall's tau +0.67, exact p 0.333" in render([table], "markdown")
    # Tied means have no exact null distribution here: the p is the asymptotic one, and says so.
    _fake_results(store, "t", {"tac": [0.010, 0.011], "tsp": [0.030, 0.031], "clap-clip": [0.010, 0.011],
                               "clap": [0.040, 0.041]})
    [table] = make_tables(store, "t", ["1"], baseline="tsp")
    md = render([table], "markdown")
    assert "asymptotic, tied values p" in md and "exact p" not in md
    # fewer than 3 methods with a paper number: no ordering line
    _fake_results(store, "q", {"tsp": [0.03, 0.031], "clap": [0.04, 0.041]})
    [table] = make_tables(store, "q", ["1"], baseline="tsp")
    assert table.ordering is None and "Kendall" not in render([table], "markdown")


def test_table_command_csv(tmp_path):
    _fake_results(RunStore(tmp_path), "smoke", {"clap": [0.30, 0.32], "tac": [0.25, 0.26]})
    result = CliRunner().invoke(app, ["table", "--format", "csv", "--tables", "1", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert {r["method"] for r in rows} == {"clap", "tac"}
    assert all(r["mAP@0.5 mean"] and r["mAP@0.5 std"] for r in rows)
    bad = CliRunner().invoke(app, ["table", "--tables", "4", "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown table '4'" in bad.output


def test_a_damaged_metrics_file_leaves_its_seed_out_and_names_the_file(tmp_path):
    store = RunStore(tmp_path)
    _fake_results(store, "smoke", {"clap": [0.30, 0.32, 0.31], "tac": [0.25, 0.26]})
    damaged = store.stage_dir("smoke", "clap", 1, "tal") / "metrics.json"
    damaged.write_text('{"average_mAP": 0.3')  # cut short
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--runs-dir", str(tmp_path), "--baseline", "tac"])
    assert result.exit_code == 0, result.output
    assert "clap: seed 1 (unreadable: " in result.output and str(damaged) in result.output
    [table] = make_tables(store, "smoke", ["1"], baseline=None, include_paper=False)
    assert {r.method: r.seeds for r in table.rows} == {"clap": [0, 2], "tac": [0, 1]}


def test_a_damaged_stage_record_leaves_its_seed_out_and_names_the_file(tmp_path):
    # The method's label is read from its stage records: a damaged one (here the first the label
    # would read) must not stop the table; that seed is listed unreadable, the rest is printed.
    store = RunStore(tmp_path)
    _fake_results(store, "smoke", {"clap": [0.30, 0.32, 0.31], "tac": [0.25, 0.26]})
    damaged = store.stage_dir("smoke", "clap", 0, "tal") / "stage.json"
    damaged.write_text('{"status": "do')  # cut short
    for args in (["--baseline", "tac"], ["--methods", "clap,tac"], ["--format", "csv"]):
        result = CliRunner().invoke(app, ["table", "--tables", "1", "--runs-dir", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert "seed 0 (unreadable: " in result.output  # the csv names the method in its row, the markdown before the seed
        assert str(damaged) in result.output
    [table] = make_tables(store, "smoke", ["1"], baseline=None, include_paper=False)
    assert {r.method: r.seeds for r in table.rows} == {"clap": [1, 2], "tac": [0, 1]}
    assert table.incomplete[0].startswith("clap: seed 0 (unreadable: ") and str(damaged) in table.incomplete[0]


def test_a_baseline_named_as_a_feature_file_is_the_row_of_that_file(tmp_path):
    # Rows of external features are filed under their folder name (features-videoclip); --baseline
    # may name them as --methods does, by the file.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"clap": [0.351, 0.349, 0.353], "features:/data/videoclip.h5": [0.330, 0.331, 0.329]})
    by_file, by_folder = (make_tables(store, "p", ["1"], baseline=b, include_paper=False)[0]
                          for b in ("features:/data/videoclip.h5", "features-videoclip"))
    clap = [next(r for r in t.rows if r.method == "clap") for t in (by_file, by_folder)]
    assert clap[0].diff == pytest.approx(2.1) and clap[0].p_value == pytest.approx(clap[1].p_value)
    assert not any("has no finished seeds" in n for n in by_file.notes)


def test_table_shows_each_seed_of_the_key_metric(tmp_path):
    # Seeds 0, 2 and 10 written out of order: the column lists them in seed order, each with its
    # value in percent, and only when asked (markdown); csv always carries them.
    store = RunStore(tmp_path)
    for seed, v in ((10, 0.125), (0, 0.0375), (2, 0.5)):
        d = store.stage_dir("p", "clap", seed, "tal")
        d.mkdir(parents=True)
        atomic_write_json(d / "metrics.json", {"mAP@0.5": v, "mAP@0.75": v, "mAP@0.95": v, "average_mAP": v})
    [plain] = make_tables(store, "p", ["1"], baseline=None, include_paper=False)
    assert "per seed" not in render([plain], "markdown")
    [table] = make_tables(store, "p", ["1"], baseline=None, include_paper=False, per_seed=True)
    md = render([table], "markdown")
    assert "per seed (Avg. mAP)" in md
    assert "0: 3.75, 2: 50.00, 10: 12.50" in md
    assert "0: 3.75, 2: 50.00, 10: 12.50" in render([table], "latex")
    [row] = list(csv.DictReader(io.StringIO(render([plain], "csv"))))
    assert row["key_metric per seed"] == "0:3.7500 2:50.0000 10:12.5000" and row["seeds"] == "0 2 10"
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--no-paper", "--per-seed", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "0: 3.75, 2: 50.00, 10: 12.50" in result.output



def test_a_grounding_run_on_one_dataset_fills_only_its_table(tmp_path):
    # Tables 2b and 3 read the same vlg stage. Seeds that grounded only the Charades-like set
    # (tasks.vlg.datasets: [charades-sta]) are rows of 2b; in 3 they are no row (not n seeds of
    # N.A.), and a note says why. A seed that has TACoS figures is a row of 3 with n counting it alone.
    store = RunStore(tmp_path)
    charades = {"charades-sta/R@1@0.5": 0.4, "charades-sta/R@1@0.7": 0.2, "charades-sta/mIoU": 0.35}
    tacos = {f"tacos/R@1@{iou}": 0.1 for iou in ("0.1", "0.3", "0.5", "0.7")} | {"tacos/mIoU": 0.2}
    for method, seeds in {"none": (0, 1), "tsp": (0, 1)}.items():
        for seed in seeds:
            d = store.stage_dir("p", method, seed, "vlg")
            d.mkdir(parents=True)
            both = method == "tsp" and seed == 1
            atomic_write_json(d / "metrics.json", charades | tacos if both else charades)
    t2b, t3 = make_tables(store, "p", ["2b", "3"], baseline=None, include_paper=False)
    assert [(r.method, r.n) for r in t2b.rows] == [("none", 2), ("tsp", 2)] and not t2b.notes
    assert [(r.method, r.n, r.seeds) for r in t3.rows] == [("tsp", 1, [1])]
    assert t3.notes == ["no row for none: their finished vlg stages hold no tacos figures "
                        "(the run's tasks.vlg.datasets left it out)"]
    assert "N.A. ± " not in render([t3], "markdown") and "no row for none" in render([t3], "markdown")

def test_table_with_heads_averages_the_stage_and_variance_heads_and_leaves_out_seeds_lacking_one(tmp_path):
    # --heads 3: seed 0's figure is the mean of the stage's own head and the two heads analyze
    # variance trained beside it; seed 1 has only one extra head (2 of 3), so it is not counted (and the
    # table says which command trains the rest). A stage of per-dataset head seeds gives its own
    # Charades-like heads, and for the TACoS-like figures (its heads 1, 2 lack them) the variance heads.
    from clap_bench.runs.plan import HEADS_FILE, head_dir
    from clap_bench.runs.variance import variance_dir

    store = RunStore(tmp_path)

    def figures(x):
        return {"charades-sta/R@1@0.5": x, "charades-sta/R@1@0.7": x / 2, "charades-sta/mIoU": x}

    for seed, extra in ((0, 2), (1, 1)):
        d = store.stage_dir("p", "tsp", seed, "vlg")
        d.mkdir(parents=True)
        atomic_write_json(d / "stage.json", {"status": "done", "hash": f"tsp{seed}"})
        atomic_write_json(d / "metrics.json", figures(0.30))
        for h in range(1, extra + 1):
            v = variance_dir(store, "p", "tsp", seed, "vlg", h)
            v.mkdir(parents=True)
            atomic_write_json(v / "head.json", {"stage_hash": f"tsp{seed}"})
            atomic_write_json(v / "metrics.json", figures(0.30 + 0.03 * h))
    tacos = {f"tacos/R@1@{iou}": 0.1 for iou in ("0.1", "0.3", "0.5", "0.7")} | {"tacos/mIoU": 0.1}
    stage = store.stage_dir("p", "clap", 0, "vlg")
    stage.mkdir(parents=True)
    per_head = [figures(0.40) | tacos, figures(0.43), figures(0.46)]
    for h, m in enumerate(per_head):
        head_dir(stage, h).mkdir(parents=True)
        atomic_write_json(head_dir(stage, h) / "metrics.json", m)
    atomic_write_json(stage / HEADS_FILE, {"seeds": [0, 1000, 2000], "metrics": per_head})
    atomic_write_json(stage / "stage.json", {"status": "done", "hash": "clap0"})
    atomic_write_json(stage / "metrics.json", figures(0.43) | tacos)
    for h in (1, 2):  # analyze variance's whole heads (both datasets)
        v = variance_dir(store, "p", "clap", 0, "vlg", h)
        v.mkdir(parents=True)
        atomic_write_json(v / "head.json", {"stage_hash": "clap0"})
        atomic_write_json(v / "metrics.json", figures(0.0) | {k: 0.1 + 0.3 * h for k in tacos})

    t2b, t3 = make_tables(store, "p", ["2b", "3"], baseline=None, include_paper=False, heads=3)
    rows = {r.method: r for r in t2b.rows}
    assert rows["tsp"].seeds == [0] and rows["tsp"].mean["charades-sta/mIoU"] == pytest.approx(33.0)
    assert rows["clap"].mean["charades-sta/mIoU"] == pytest.approx(43.0)  # the stage's own three heads
    assert next(r for r in t3.rows if r.method == "clap").mean["tacos/mIoU"] == pytest.approx(100 * (0.1 + 0.4 + 0.7) / 3)
    assert any("tsp: seed 1 (2 of 3 heads; clapbench analyze variance -m tsp --task vlg --heads 3 --profile p" in n
               for n in t2b.incomplete)
    assert any("the mean of its first 3 downstream heads" in n for n in t2b.notes)
    one = make_tables(store, "p", ["2b"], baseline=None, include_paper=False)[0]
    assert {r.method: r.n for r in one.rows} == {"tsp": 2, "clap": 1}  # --heads 1: the stages' own figures
    with pytest.raises(ConfigError, match="--heads: expected an integer >= 1"):
        make_tables(store, "p", ["2b"], heads=0)


def test_paper_tables_transcribed():
    t = load_paper_tables()
    clap = next(r for r in t["1"].rows if r.get("method") == "clap" and r["backbone"] == "r2plus1d_18")
    assert clap["values"]["average_mAP"] == 35.23 and clap["std"]["average_mAP"] == 0.07
    assert next(r for r in t["2a"].rows if r["name"] == "QAT")["values"]["mAP@0.5"] == 65.25
    assert next(r for r in t["2b"].rows if r.get("method") == "clap-dagger")["values"]["charades-sta/mIoU"] == 43.94
    assert next(r for r in t["3"].rows if r["name"] == "2D-TAN")["values"]["tacos/R@1@0.7"] is None
    assert [c["metric"] for c in t["3"].columns][-1] == "tacos/mIoU"


# --------------------------------------------------------------------------- product plan
def test_product_plan_keeps_only_the_stages_the_tasks_need():
    profile = load_profile("smoke")
    plan = build_plan(profile, ["clap"], [0], ["tal"])
    names = [s.name for s in plan if s.method == "clap"]
    assert names == ["pretrain", "extract-activitynet", "tal"]
    full = build_plan(profile, ["clap"], [0, 1], None)
    assert {s.name for s in full if s.seed == 1} == {
        "pretrain", "pretrain-base", "extract-activitynet", "extract-base-activitynet", "extract-charades-sta",
        "extract-tacos", "tal", "fstal", "vlg"}
    assert full.stages["clap/seed0/fstal"].deps == ("clap/seed0/extract-base-activitynet",)
    assert full.hashes["clap/seed0/tal"] == plan.hashes["clap/seed0/tal"]  # --tasks does not change hashes


def test_a_task_limited_to_some_datasets_extracts_only_those():
    profile = load_profile("smoke")
    only = dataclasses.replace(profile, tasks={**profile.tasks, "vlg": {**profile.tasks.get("vlg", {}), "datasets": ["charades-sta"]}})
    plan = build_plan(only, ["clap"], [0], ["vlg"])
    assert [s.name for s in plan if s.method == "clap"] == ["pretrain", "extract-charades-sta", "vlg"]
    assert plan.stages["clap/seed0/vlg"].deps == ("clap/seed0/extract-charades-sta",)
    both = build_plan(profile, ["clap"], [0], ["vlg"])  # a profile that does not say keeps every dataset
    assert both.stages["clap/seed0/vlg"].deps == ("clap/seed0/extract-charades-sta", "clap/seed0/extract-tacos")
    wrong = dataclasses.replace(profile, tasks={**profile.tasks, "vlg": {"datasets": ["charades"]}})
    with pytest.raises(ConfigError, match="tasks.vlg.datasets: expected some of charades-sta, tacos"):
        build_plan(wrong, ["clap"], [0], ["vlg"])


def test_local_executors_run_a_sweep_seed_by_seed_in_a_runnable_order():
    # none shares its seed-0 encoder with every seed: its seed-1 task depends on a seed-0 stage
    plan = build_plan(load_profile("smoke"), ["none", "tac", "clap"], [0, 1, 2], ["tal"])
    order = plan.seed_major()
    assert sorted(s.key for s in order) == sorted(plan.stages)
    position = {s.key: i for i, s in enumerate(order)}
    assert all(position[d] < position[s.key] for s in order for d in s.deps)
    seeds = [-1 if s.seed is None else s.seed for s in order]
    assert seeds == sorted(seeds) and order[0].key == "_shared/source"
    # within a seed, each method's chain in the order the methods were named
    assert [s.key for s in order if s.seed == 1] == [
        "none/seed1/tal", "tac/seed1/pretrain", "tac/seed1/extract-activitynet", "tac/seed1/tal",
        "clap/seed1/pretrain", "clap/seed1/extract-activitynet", "clap/seed1/tal"]


def test_a_plan_whose_seeds_cannot_go_in_order_keeps_the_order_it_was_built_in():
    from clap_bench.runs.plan import Plan, StageSpec

    # a plug-in plan where seed 0's stage reads seed 1's: seed by seed would run it too early
    plan = Plan(toy_profile())
    plan.add(StageSpec("pretrain", "a", 1, print, {}))
    plan.add(StageSpec("tal", "a", 0, print, {}, deps=("a/seed1/pretrain",)))
    assert [s.key for s in plan.seed_major()] == ["a/seed1/pretrain", "a/seed0/tal"]


def test_a_sweep_stopped_after_a_few_stages_has_balanced_seeds(tmp_path):
    # the toy plan is built method by method; run seed-major, stopping after 4 of its 8 stages
    # leaves both methods with seed 0 done and no method with seed 1
    store, profile = RunStore(tmp_path), toy_profile()
    plan = build_toy_plan(profile, ["a", "b"], [0, 1])
    ran = []

    def echo(line):
        if " done in " in line:  # a stage that ran to its end
            ran.append(line)
            if len(ran) == 4:
                raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, store, executor="local", progress=False, echo=echo)
    tables = make_tables(store, profile.name, ["1"], baseline=None, include_paper=False)
    assert {r.method: r.seeds for r in tables[0].rows} == {"a": [0], "b": [0]}


def test_dry_run_lists_stages_in_the_order_the_executor_runs_them(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--methods", "tac,clap", "--seeds", "2", "--profile", "smoke", "--tasks", "tal",
                                      "--executor", "local", "--runs-dir", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    keys = [line.split()[1] for line in result.output.splitlines() if line.startswith("  todo ")]
    assert keys.index("clap/seed0/tal") < keys.index("tac/seed1/pretrain")


def test_external_features_skip_pretraining(tmp_path):
    folder = tmp_path / "videoclip"
    folder.mkdir()
    for d in ("activitynet", "charades-sta", "tacos"):
        with h5py.File(folder / f"{d}.h5", "w") as f:
            f["v_x"] = np.zeros((3, 4), np.float32)
    plan = build_plan(load_profile("smoke"), [f"features:{folder}"], [0, 1], ["tal", "vlg"])
    assert [s.name for s in plan] == ["tal", "vlg", "tal", "vlg"] and all(not s.deps for s in plan)
    assert plan.stages[f"features:{folder}/seed0/vlg"].config["features"]["tacos"]["path"] == str(folder / "tacos.h5")
    with pytest.raises(ConfigError, match="fstal|activitynet.h5|not found"):
        (folder / "activitynet.h5").unlink()
        build_plan(load_profile("smoke"), [f"features:{folder}"], [0], ["tal"])



def _small_features(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["v_x"] = np.zeros((3, 4), np.float32)
    return path


def test_two_feature_files_of_one_name_are_refused_in_one_plan_naming_both_and_the_folder(tmp_path):
    # The folder of features:PATH is named after the file (features-features for both): the second
    # method's stages would move the first's aside and the table would show one row.
    a, b = _small_features(tmp_path / "r1" / "features.h5"), _small_features(tmp_path / "r2" / "features.h5")
    with pytest.raises(ConfigError) as info:
        build_plan(load_profile("smoke"), [f"features:{a}", f"features:{b}"], [0, 1], ["tal"])
    message = str(info.value)
    assert f"'features:{a}'" in message and f"'features:{b}'" in message and "'features-features'" in message
    assert "ln -s" in message  # says what to do
    # the same for any plan factory: the plan itself refuses a second method in a method's folder
    with pytest.raises(ConfigError, match="share the run store folder 'features-features'"):
        build_toy_plan(toy_profile(), ["features:/x/features.h5", "features:/y/features.h5"], [0])
    # names that do not collide keep their folders (existing stores stay valid)
    plan = build_plan(load_profile("smoke"), [f"features:{a}", f"features:{_small_features(tmp_path / 'videoclip.h5')}"], [0], ["tal"])
    assert {method_dir_name(s.method) for s in plan} == {"features-features", "features-videoclip"}


def test_a_run_into_a_folder_holding_another_methods_stages_is_refused_and_moves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    monkeypatch.chdir(tmp_path)
    first, second = "features:/data/r1/features.h5", "features:/data/r2/features.h5"
    args = ["--seeds", "2", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"), "-q"]
    assert CliRunner().invoke(app, ["run", "--method", first] + args).exit_code == 0
    folder = tmp_path / "runs" / "smoke" / "features-features"
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["run", "--method", second] + args + extra)
        assert result.exit_code == 2, result.output
        assert f"'{first}'" in result.output and f"'{second}'" in result.output and "'features-features'" in result.output
        assert str(folder) in result.output.replace("\n", "")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before  # nothing moved aside
    sweep = CliRunner().invoke(app, ["sweep", "--methods", f"{first},{second}", "--executor", "local"] + args[:-1])
    assert sweep.exit_code == 2 and "share the run store folder 'features-features'" in sweep.output, sweep.output
    store = RunStore(tmp_path / "runs")
    store.check_method_folder("smoke", first)  # the folder's own method goes on
    # the store itself refuses to prepare another method's stage folder
    stage = store.stage_dir("smoke", second, 0, "tal")
    with pytest.raises(ConfigError, match=f"records '{first}'"):
        store.prepare(stage, "other-hash", {"stage": "tal", "method": second, "seed": 0, "profile": "smoke"}, {})
    assert not list(stage.parent.glob("tal@*"))
    result = CliRunner().invoke(app, ["table", "--runs-dir", str(tmp_path / "runs"), "--profile", "smoke", "--tables", "1"])
    assert result.exit_code == 0 and first in result.output, result.output


def test_a_feature_file_named_by_a_relative_or_absolute_path_is_one_method(tmp_path, monkeypatch):
    from clap_bench.runs.store import same_method

    monkeypatch.chdir(tmp_path)
    _small_features(tmp_path / "r1" / "features.h5")
    assert same_method("features:r1/features.h5", f"features:{tmp_path}/r1/features.h5")
    assert same_method("features:./r1/../r1/features.h5", "features:r1/features.h5")
    assert not same_method("features:r1/features.h5", "features:r2/features.h5")
    assert not same_method("clap", "features:clap")
    store = RunStore(tmp_path / "runs")
    store.prepare(store.stage_dir("p", "features:r1/features.h5", 0, "tal"), "h1",
                  {"stage": "tal", "method": "features:r1/features.h5", "seed": 0, "profile": "p"}, {})
    store.check_method_folder("p", f"features:{tmp_path}/r1/features.h5")  # no error
    with pytest.raises(ConfigError, match="share the run store folder"):
        store.check_method_folder("p", "features:r2/features.h5")


def test_run_dry_run_prints_the_plan(tmp_path):
    result = CliRunner().invoke(app, ["run", "--method", "clap", "--seeds", "2", "--profile", "smoke", "--tasks", "tal",
                                      "--runs-dir", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "clap/seed1/extract-activitynet" in result.output and "fstal" not in result.output
    assert not (tmp_path / "smoke").exists()


def test_run_command_on_the_toy_plan_prints_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    args = ["run", "--method", "a", "--seeds", "2", "--profile", "smoke", "--runs-dir", str(tmp_path), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    mean = np.mean([100 * (toy_score("a", s) - 0.02) for s in (0, 1)])
    assert f"{mean:.2f} ±" in result.output and "| a " in result.output
    again = CliRunner().invoke(app, args[:4] + ["3"] + args[5:])
    assert again.exit_code == 0 and again.output.count("(done, reused)") == 4


def test_sweep_prints_its_table_with_the_test_asked_for_and_rejects_an_unknown_one_before_running(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    args = ["sweep", "--methods", "a,b", "--seeds", "3", "--profile", "smoke", "--executor", "local",
            "--runs-dir", str(tmp_path), "--baseline", "a"]
    bad = CliRunner().invoke(app, args + ["--test", "anova"])
    assert bad.exit_code == 2 and "--test: unknown 'anova'; expected one of welch, paired" in bad.output
    assert not (tmp_path / "smoke").exists()  # nothing ran
    result = CliRunner().invoke(app, args + ["--test", "paired"])
    assert result.exit_code == 0, result.output
    assert "p vs a, paired" in result.output and "paired by seed, 3 seeds" in result.output


def test_a_damaged_record_fails_its_stage_and_the_rest_of_the_sweep_goes_on(tmp_path, monkeypatch):
    # A truncated metrics.json: that stage fails with read_json's message (naming the file), every
    # independent stage runs (the one after it, finished under the same hash, is reused), and the sweep ends with exit 1 and a summary
    # naming the file; no traceback. --dry-run marks the stage and exits 1 the same way.
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    base = ["--seeds", "2", "--profile", "smoke", "--runs-dir", str(tmp_path), "-q"]
    assert CliRunner().invoke(app, ["run", "--method", "a", *base]).exit_code == 0
    damaged = RunStore(tmp_path).stage_dir("smoke", "a", 1, "pretrain") / "metrics.json"
    damaged.write_text('{"steps": 3, "sta')
    args = ["sweep", "--methods", "a,b", "--executor", "local", "--baseline", "a", *base[:-1]]
    dry = CliRunner().invoke(app, args + ["--dry-run"])
    assert dry.exit_code == 1 and "Traceback" not in dry.output, dry.output
    assert "  FAIL a/seed1/pretrain" in dry.output and "  todo b/seed0/pretrain" in dry.output
    assert f"a/seed1/pretrain: {damaged}: not valid JSON" in dry.output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 stage(s) failed, 0 not run because of them: a/seed1/pretrain" in result.output
    assert f"a/seed1/pretrain: {damaged}: not valid JSON" in result.output and "delete it to rerun the stage" in result.output
    assert result.output.count(" done in ") == 4  # b's four stages ran
    assert "| b " in result.output  # the tables still come, of what finished
    damaged.unlink()  # as the message says: the stage reruns, and the stage after it
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output


def test_table_refuses_a_method_the_store_has_no_runs_of_and_lists_those_it_has(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    run = CliRunner().invoke(app, ["sweep", "--methods", "a,b", "--seeds", "2", "--profile", "smoke", "--executor", "local",
                                   "--runs-dir", str(tmp_path), "--baseline", "a"])
    assert run.exit_code == 0, run.output
    table = ["table", "--tables", "1", "--no-paper", "--runs-dir", str(tmp_path)]
    bad = CliRunner().invoke(app, table + ["--methods", "a,nosuch,clap"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
    assert "--methods: no runs of nosuch, clap in profile smoke" in bad.output and "it has runs of: a, b" in bad.output
    ok = CliRunner().invoke(app, table + ["--methods", "b", "--profile", "smoke"])
    assert ok.exit_code == 0 and "| b " in ok.output and "| a " not in ok.output, ok.output


# --------------------------------------------------------------------------- Fig. 2a
def test_feature_quality_separates_foreground_from_background_features(tmp_path):
    from clap_bench.data.schema import AnnotationSet, Segment, Video
    from clap_bench.runs.feature_quality import feature_quality, plot_histogram, sample_triplets, summary

    videos = {}
    rng = np.random.default_rng(0)
    for i in range(30):
        vid = f"v_{i:03d}"
        videos[vid] = Video(vid, 20.0, "validation", segments=[Segment(5.0, 12.0, "jump")])
    ann = AnnotationSet("activitynet-json", "hand-made", videos, ["jump"])
    good, noise = tmp_path / "good.h5", tmp_path / "noise.h5"
    # 20 rows of 1 s each (stride 4 frames at 4 fps): foreground rows near one direction, background another
    with h5py.File(good, "w") as g, h5py.File(noise, "w") as n:
        for f in (g, n):
            f.attrs.update({"stride_frames": 4, "fps": 4.0, "frames": 4})
        for vid in videos:
            fg = np.zeros(20, bool)
            fg[5:12] = True
            rows = np.where(fg[:, None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) + 0.05 * rng.standard_normal((20, 3))
            g[vid] = rows.astype(np.float32)
            n[vid] = rng.standard_normal((20, 3)).astype(np.float32)
    triplets = sample_triplets(ann, clip_s=1.0, seed=3)
    assert len(triplets) == 30 and all(5.0 <= t.fg1[0] and t.fg1[1] <= 12.0 for t in triplets)
    assert all(t.bg[1] <= 5.0 or t.bg[0] >= 12.0 for t in triplets)
    diffs = feature_quality({"good": good, "noise": noise}, ann, clip_s=1.0, seed=3)
    assert summary(diffs["good"])["positive_fraction"] == 1.0 and diffs["good"].mean() > 1.0
    assert abs(diffs["noise"].mean()) < 0.5
    assert summary(diffs["good"])["videos"] >= 20  # draws on one shared row are left out, not all
    png = plot_histogram(diffs, tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feature_quality_of_random_features_is_centred_on_zero(tmp_path):
    """Two foreground clips reading the same feature row would be at distance 0 and push random
    features to positive differences; such draws are left out."""
    from clap_bench.data.schema import AnnotationSet, Segment, Video
    from clap_bench.runs.feature_quality import feature_quality, summary

    rng = np.random.default_rng(1)
    videos = {f"v_{i:03d}": Video(f"v_{i:03d}", 20.0, "validation", segments=[Segment(5.0, 8.0, "jump")]) for i in range(400)}
    ann = AnnotationSet("activitynet-json", "hand-made", videos, ["jump"])
    noise = tmp_path / "noise.h5"
    with h5py.File(noise, "w") as n:
        n.attrs.update({"stride_frames": 4, "fps": 4.0, "frames": 4})
        for vid in videos:
            n[vid] = rng.standard_normal((20, 16)).astype(np.float32)
    stats_ = summary(feature_quality({"noise": noise}, ann, clip_s=1.0, seed=0)["noise"])
    assert stats_["videos"] > 100 and 0.4 < stats_["positive_fraction"] < 0.6 and abs(stats_["mean"]) < 0.05


# --------------------------------------------------------------------------- thread count
def test_thread_count_is_in_every_product_stage_config_and_hash(monkeypatch):
    from clap_bench.config import resolve_threads

    one = build_plan(load_profile("smoke", {"runtime": {"threads": 1}}), ["clap"], [0], None)
    two = build_plan(load_profile("smoke", {"runtime": {"threads": 2}}), ["clap"], [0], None)
    for key, spec in one.stages.items():
        assert spec.config["runtime"] == {"threads": 1}, key
        assert two.stages[key].config["runtime"] == {"threads": 2}, key
        assert one.hashes[key] != two.hashes[key], key
        assert one.resolved_config(spec)["config"]["runtime"] == {"threads": 1}
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert resolve_threads(load_profile("smoke")) == 3  # what SLURM allocated
    assert resolve_threads(load_profile("smoke", {"runtime": {"threads": 1}})) == 1  # the key wins
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    import os

    assert resolve_threads(load_profile("smoke")) == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=r"runtime\.threads: expected >= 1, got 0"):
        resolve_threads(load_profile("smoke", {"runtime": {"threads": 0}}))


def test_stages_submitted_to_slurm_run_as_many_threads_as_their_job_has_cpus(tmp_path):
    """The plan is built on the submitting machine; a stage that will run as a SLURM job is planned
    (and hashed) with its job's cpus_per_task, per stage kind, not with the submitter's cores (which
    would oversubscribe the jobs' CPUs). ``runtime.threads`` still pins one count for every stage."""
    from clap_bench.runs import load_cluster
    from clap_bench.runs.slurm import with_job_threads

    repo = Path(__file__).resolve().parent.parent
    local = load_cluster(repo / "slurm" / "local.yaml")
    plan = build_plan(with_job_threads(load_profile("smoke"), local), ["clap"], [0], None)
    assert {spec.config["runtime"]["threads"] for spec in plan.stages.values()} == {local.cpus_per_task}

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("partition: gpu\ncpus_per_task: 6\nstages:\n  pretrain: {cpus_per_task: 8}\n  task: {cpus_per_task: 3}\n")
    prof = with_job_threads(load_profile("smoke"), load_cluster(cluster))
    assert prof.runtime.job_threads == {"source": 6, "pretrain": 8, "extract": 6, "task": 3}
    plan = build_plan(prof, ["clap"], [0], None)
    kinds = {spec.resources: spec.config["runtime"]["threads"] for spec in plan.stages.values()}
    assert kinds == {"source": 6, "pretrain": 8, "extract": 6, "task": 3}
    # the recorded profile carries the counts, so `status` rebuilds the same hashes
    from clap_bench.config import Profile, from_dict, to_dict

    again = build_plan(from_dict(Profile, json.loads(json.dumps(to_dict(prof))), "recorded"), ["clap"], [0], None)
    assert again.hashes == plan.hashes

    pinned = with_job_threads(load_profile("smoke", {"runtime": {"threads": 2}}), load_cluster(cluster))
    assert pinned.runtime.job_threads == {}
    assert {s.config["runtime"]["threads"] for s in build_plan(pinned, ["clap"], [0], None).stages.values()} == {2}
    with pytest.raises(ConfigError, match=r"runtime\.job_threads: unknown stage kind\(s\) \['gpu'\]"):
        build_plan(load_profile("smoke", {"runtime": {"job_threads": {"gpu": 2}}}), ["clap"], [0], None)



def test_the_ddp_process_count_of_submitted_source_and_pretrain_stages_is_in_their_hash_when_above_1(tmp_path):
    """batch_size is per process: 4 processes train another model than 1, so they must not share a hash;
    a count of 1 adds nothing, so single-process stages keep the hashes they had."""
    from clap_bench.config import Profile, from_dict, to_dict
    from clap_bench.runs import load_cluster
    from clap_bench.runs.slurm import with_job_threads

    plans = {}
    for n in (1, 4):
        cluster = tmp_path / f"c{n}.yaml"
        cluster.write_text(f"cpus_per_task: 2\nstages:\n  pretrain: {{tasks_per_node: {n}}}\n"
                           f"  source: {{nodes: {n}}}\n")
        prof = with_job_threads(load_profile("smoke"), load_cluster(cluster))
        plans[n] = build_plan(prof, ["clap"], [0], None)
    one, four = plans[1], plans[4]
    pinned = load_profile("smoke", {"runtime": {"job_threads": {k: 2 for k in ("source", "pretrain", "extract", "task")}}})
    assert build_plan(pinned, ["clap"], [0], None).hashes == one.hashes  # 1 process: as without a cluster profile
    for key, spec in four.stages.items():
        runtime = spec.config["runtime"]
        if spec.resources in ("source", "pretrain"):
            assert runtime == {"threads": 2, "processes": 4}, key
            assert four.hashes[key] != one.hashes[key], key
        else:
            assert runtime == {"threads": 2}, key
        assert one.stages[key].config["runtime"] == {"threads": 2}, key
    # the recorded profile carries the counts, so `status` rebuilds the same hashes
    again = build_plan(from_dict(Profile, json.loads(json.dumps(to_dict(four.profile))), "recorded"), ["clap"], [0], None)
    assert again.hashes == four.hashes
    # a pinned runtime.threads still records the process count
    threads = with_job_threads(load_profile("smoke", {"runtime": {"threads": 2}}), load_cluster(tmp_path / "c4.yaml"))
    assert threads.runtime.job_processes == {"source": 4, "pretrain": 4}
    with pytest.raises(ConfigError, match=r"runtime\.job_processes\.task: expected an integer >= 1 for one of"):
        build_plan(load_profile("smoke", {"runtime": {"job_processes": {"task": 2}}}), ["clap"], [0], None)



def _cores(monkeypatch, n: int) -> None:
    """This process may run on ``n`` cores (as under ``taskset``), outside SLURM."""
    import os

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))


def _finished_store(root: Path, profile, methods=("clap",), seeds=(0, 1), recorded=None) -> RunStore:
    """Stages of ``build_plan(profile)`` recorded done (no training), and ``profile.json`` as a run
    records it (``recorded``: another profile to record, e.g. one written before the thread counts were)."""
    from clap_bench.config import to_dict

    store = RunStore(root)
    plan = build_plan(profile, list(methods), list(seeds), ["tal"])
    atomic_write_json(store.profile_file(profile.name), to_dict(recorded or profile))
    for spec in plan:
        d = plan.stage_dir(store, spec)
        store.prepare(d, plan.hashes[spec.key], {"stage": spec.name, "method": spec.method, "seed": spec.seed,
                                                 "profile": profile.name}, plan.resolved_config(spec))
        metrics = {"average_mAP": 0.3 + 0.01 * spec.seed, "mAP@0.5": 0.5} if spec.name == "tal" else {"ok": 1}
        store.finish(d, metrics)
    return store


def test_a_fresh_store_plans_with_this_machines_thread_count_as_before(tmp_path, monkeypatch):
    from clap_bench.runs.slurm import STAGE_KINDS
    from clap_bench.runs.store import with_store_threads

    for name in ("smoke", "default", "paper"):
        prof = load_profile(name)
        pinned = with_store_threads(prof, RunStore(tmp_path / "fresh"))
        assert pinned.runtime.job_threads == {kind: len(__import__("os").sched_getaffinity(0)) for kind in STAGE_KINDS}
        assert build_plan(pinned, ["clap", "tsp"], [0, 1], None).hashes == build_plan(prof, ["clap", "tsp"], [0, 1], None).hashes
    explicit = load_profile("smoke", {"runtime": {"threads": 1}})
    assert with_store_threads(explicit, RunStore(tmp_path / "fresh")) is explicit


@pytest.mark.parametrize("recorded_counts", [True, False], ids=["recorded", "store-before-counts"])
def test_a_store_keeps_its_thread_count_on_a_machine_with_other_cores(tmp_path, monkeypatch, recorded_counts):
    """A store made on 4 cores: status, run and table on 1 core (taskset -c 0) see its stages done, as the
    store's thread count (profile.json, or for a store recorded before the counts were, its stages'
    configs) is reused while runtime.threads is unset; runtime.threads set to another count gives new stages."""
    from clap_bench.runs.slurm import STAGE_KINDS

    _cores(monkeypatch, 4)
    made = load_profile("smoke", {"runtime": {"job_threads": {kind: 4 for kind in STAGE_KINDS}}}) if recorded_counts \
        else load_profile("smoke")  # a local run before the counts were recorded: runtime left empty
    _finished_store(tmp_path / "runs", made)
    runs = ["--runs-dir", str(tmp_path / "runs")]
    _cores(monkeypatch, 1)
    status = CliRunner().invoke(app, ["status", "--profile", "smoke", "--tasks", "tal"] + runs)
    assert status.exit_code == 0 and "stale" not in status.output and "  7 done\n" in status.output, status.output
    dry = CliRunner().invoke(app, ["run", "--method", "clap", "--seeds", "2", "--tasks", "tal", "--profile", "smoke",
                                   "--dry-run"] + runs)
    assert dry.exit_code == 0 and "  todo " not in dry.output and dry.output.count("  done ") == 7, dry.output
    table = CliRunner().invoke(app, ["table", "--tables", "1", "--profile", "smoke"] + runs)
    assert table.exit_code == 0 and "Incomplete" not in table.output and "stale" not in table.output, table.output
    assert "| CLAP " in table.output and "30.50 ± 0.71" in table.output, table.output  # both seeds aggregated
    # an explicit count other than the stages' gives new stages, for run and status alike
    two = tmp_path / "two.yaml"
    two.write_text("base: smoke\nruntime:\n  threads: 2\n")
    dry = CliRunner().invoke(app, ["run", "--method", "clap", "--seeds", "2", "--tasks", "tal", "--config", str(two),
                                   "--dry-run"] + runs)
    assert dry.exit_code == 0 and "  done " not in dry.output, dry.output
    status = CliRunner().invoke(app, ["status", "--config", str(two), "--tasks", "tal"] + runs)
    assert status.exit_code == 0 and "  7 stale\n" in status.output, status.output



def test_a_store_before_counts_takes_a_stage_s_kind_from_its_whole_name(tmp_path):
    # A store recorded before profile.json held the thread counts, made by a SLURM sweep whose kinds ran
    # with their own counts, with two plug-in tasks whose names begin as pre-training's and extraction's
    # stage names do: they are task stages (the whole name decides, not its beginning), so each kind keeps its count.
    store = RunStore(tmp_path)
    atomic_write_json(store.profile_file("p"), {"name": "p", "runtime": {}})
    stages = {  # folder: (stage config, threads)
        "_shared/source": ({"seed": 0, "train": {}}, 8),
        "m/seed0/pretrain": ({"method_overrides": {}}, 8),
        "m/seed0/extract-activitynet": ({"dataset": "activitynet", "extract": {}}, 4),
        "m/seed0/extract-base-activitynet": ({"dataset": "activitynet", "extract": {}}, 4),
        "m/seed0/tal": ({"task": "tal"}, 2),
        "m/seed0/extractive-qa": ({"task": "extractive-qa"}, 2),
        "m/seed0/pretrain-probe": ({"task": "pretrain-probe"}, 2),
    }
    for folder, (config, threads) in stages.items():
        stage = folder.split("/")[-1]
        store.prepare(store.profile_dir("p") / folder, "h", {"stage": stage, "method": None if stage == "source" else "m"},
                      {"profile": "p", "stage": stage, "config": {**config, "runtime": {"threads": threads}}})
    assert store.thread_counts("p") == {"source": 8, "pretrain": 8, "extract": 4, "task": 2}


def test_table_and_status_agree_on_a_seed_made_under_another_thread_count(tmp_path, monkeypatch):
    """Seed 1 rerun with runtime.threads: 2 after both seeds ran with 1 thread: status calls seed 0
    stale, and the table, whose recorded profile now pins the count, leaves it out as well."""
    _cores(monkeypatch, 4)
    method = f"features:{_small_features(tmp_path / 'videoclip.h5')}"
    root = tmp_path / "runs"
    _finished_store(root, load_profile("smoke", {"runtime": {"threads": 1}}), methods=(method,))
    _finished_store(root, load_profile("smoke", {"runtime": {"threads": 2}}), methods=(method,), seeds=(1,))
    status = CliRunner().invoke(app, ["status", "--profile", "smoke", "--tasks", "tal", "--runs-dir", str(root)])
    assert status.exit_code == 0 and "1 done, 1 stale" in status.output, status.output
    [table] = make_tables(RunStore(root), "smoke", ["1"], baseline=None, include_paper=False)
    assert [r.seeds for r in table.rows] == [[1]]
    assert len(table.incomplete) == 1 and "seed 0 (stale: " in table.incomplete[0], table.incomplete


def test_a_run_records_the_thread_counts_it_planned_with_and_the_next_run_keeps_them(tmp_path, monkeypatch):
    from clap_bench.runs.slurm import STAGE_KINDS

    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    args = ["run", "--method", "a", "--seeds", "1", "--profile", "smoke", "--runs-dir", str(tmp_path), "-q"]
    _cores(monkeypatch, 3)
    assert CliRunner().invoke(app, args).exit_code == 0
    recorded = json.loads((tmp_path / "smoke" / "profile.json").read_text())["runtime"]
    assert recorded == {"threads": None, "job_threads": {kind: 3 for kind in STAGE_KINDS}, "job_processes": {}}
    _cores(monkeypatch, 1)
    assert CliRunner().invoke(app, args).exit_code == 0
    assert json.loads((tmp_path / "smoke" / "profile.json").read_text())["runtime"] == recorded
    assert RunStore(tmp_path).recorded_profile("smoke").runtime.job_threads == {kind: 3 for kind in STAGE_KINDS}


@pytest.mark.slow
def test_smoke_run_with_the_same_seed_and_thread_count_gives_identical_results(tmp_path):
    """Pre-training, extraction and G-TAD twice from scratch (the shared source model is cached):
    same seed, same ``runtime.threads`` -> the same features, bit for bit, and the same metrics.
    The stage process sets the recorded thread count whatever the caller had set."""
    import torch

    profile = load_profile("smoke", {"runtime": {"threads": 1}})
    results = []
    for name, caller_threads in (("a", 2), ("b", 1)):
        torch.set_num_threads(caller_threads)  # the stage sets its own count; the fixture restores ours
        store = RunStore(tmp_path / name)
        plan = build_plan(profile, ["tsp"], [0], ["tal"])
        report = _run(plan, store)
        assert report.ok, report.failed
        assert torch.get_num_threads() == 1
        metrics = store.read_metrics(plan.stage_dir(store, plan.stages["tsp/seed0/tal"]))
        features = plan.stage_dir(store, plan.stages["tsp/seed0/extract-activitynet"]) / "activitynet.h5"
        with h5py.File(features, "r") as f:
            arrays = {k: f[k][:] for k in f}
        fingerprints = {key: read_stage_fingerprints(plan.stage_dir(store, spec)) for key, spec in plan.stages.items()}
        results.append((metrics, arrays, fingerprints))
    (m_a, f_a, p_a), (m_b, f_b, p_b) = results
    assert sorted(f_a) == sorted(f_b) and all(np.array_equal(f_a[k], f_b[k]) for k in f_a)
    assert m_a == m_b
    # every stage's outputs (checkpoints, features, predictions) have the same fingerprints
    assert set(p_a) == {"_shared/source", "tsp/seed0/pretrain", "tsp/seed0/extract-activitynet", "tsp/seed0/tal"}
    for key in p_a:
        assert p_a[key] is not None and p_a[key] == p_b[key], (key, p_a[key], p_b[key])
    assert any(name.endswith(".pt") for name in p_a["tsp/seed0/pretrain"]["files"])
    assert "activitynet.h5" in p_a["tsp/seed0/extract-activitynet"]["files"]
    shown = CliRunner().invoke(app, ["status", "--fingerprints", "--profile", "smoke", "--runs-dir", str(tmp_path / "a")])
    assert shown.exit_code == 0, shown.output
    assert "synthetic data " in shown.output and p_a["tsp/seed0/tal"]["stage"] in shown.output


def test_a_stage_that_records_a_file_elsewhere_is_fingerprinted_by_its_content_not_its_path(tmp_path):
    # The source stage records its model's absolute path in the machine-wide cache: two machines
    # with the same model in different folders must show the same fingerprint, and another model
    # another one.
    from clap_bench.runs.fingerprints import write_stage_fingerprints

    records = []
    for name, content in (("a", b"weights"), ("b", b"weights"), ("c", b"other weights")):
        model = tmp_path / f"cache-{name}" / "source.pt"
        model.parent.mkdir()
        model.write_bytes(content)
        stage = tmp_path / f"store-{name}" / "_shared" / "source"
        stage.mkdir(parents=True)
        records.append(write_stage_fingerprints(stage, {"checkpoint": str(model)}))
    a, b, c = records
    assert a["stage"] == b["stage"] and a["files"] == b["files"] and a["metrics"] == b["metrics"]
    assert c["stage"] != a["stage"]


def test_paired_test_by_seed_against_hand_worked_numbers(tmp_path):
    # clap [10, 12, 11, 13] % and tsp [9, 10, 10, 11] %, seeds 0-3: the seed-by-seed differences are
    # 1, 2, 1, 2: mean 1.5, std sqrt(4 * 0.25 / 3) = 0.577350, standard error 0.288675, t = 3 sqrt(3)
    # with 3 degrees of freedom. Student's t with 3 degrees of freedom has the closed form
    # P(|T| > t) = 1 - (2 / pi) (theta + sin(theta) cos(theta)), theta = atan(t / sqrt(3)) = atan(3),
    # sin cos = tan / (1 + tan^2) = 0.3, so p = 1 - (2 / pi) (atan(3) + 0.3) = 0.013847.
    # t_{0.975, 3} = 3.182446 (t table): 95% CI 1.5 +- 0.918693. Welch's test on the same numbers
    # sees the seeds' shared part as noise (standard error 0.763763, p about 0.1).
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"clap": [0.10, 0.12, 0.11, 0.13], "tsp": [0.09, 0.10, 0.10, 0.11]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp", test="paired")
    clap = next(r for r in table.rows if r.method == "clap" and r.source == "ours")
    p_hand = 1 - (2 / math.pi) * (math.atan(3.0) + 0.3)
    assert clap.diff == pytest.approx(1.5) and clap.n_paired == 4
    assert clap.p_value == pytest.approx(p_hand, rel=1e-6) and clap.p_value == pytest.approx(0.013847, abs=1e-6)
    assert clap.ci == pytest.approx((1.5 - 3.182446 * 0.288675, 1.5 + 3.182446 * 0.288675), abs=1e-5)
    # Smallest detectable difference, paired, 4 seeds, std of the differences 0.577350:
    # (t_{0.975, 3} + t_{0.80, 3}) * 0.577350 / sqrt(4) = (3.182446 + 0.978472) * 0.288675 = 1.201154
    assert table.mdd == pytest.approx(1.201154, abs=1e-4) and table.mdd_n == 4 and table.paired_rows
    md = render([table], "markdown")
    assert "+1.50* [+0.58, +2.42]" in md and "p vs tsp, paired" in md and "95% paired-t confidence interval" in md
    assert "(average_mAP, paired by seed, 4 seeds," in md and "1.20 points" in md
    row = next(r for r in csv.DictReader(io.StringIO(render([table], "csv"))) if r["method"] == "clap")
    assert row["test"] == "paired" and row["n_paired"] == "4" and float(row["p_value"]) == pytest.approx(p_hand, rel=1e-5)
    [welch_table] = make_tables(store, "p", ["1"], baseline="tsp")
    welch_clap = next(r for r in welch_table.rows if r.method == "clap" and r.source == "ours")
    assert welch_clap.diff == pytest.approx(1.5) and welch_clap.p_value > 0.05 and welch_clap.n_paired is None
    assert "p vs tsp, paired" not in render([welch_table], "markdown")


def test_csv_carries_the_seeds_asked_the_incomplete_seeds_and_the_notes(tmp_path):
    # What the markdown table says around its rows: "n 2/3 (!)", "Incomplete (not aggregated): ..." and
    # its notes; in the CSV as the columns expected, fewer_than_expected, incomplete and notes. tac has no
    # finished seed: no figures, but a row that carries its incomplete seed.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"tsp": [0.09, 0.10, 0.10], "clap": [0.10, 0.12]}, incomplete={"clap": [2], "tac": [0]})
    [table] = make_tables(store, "p", ["1"], baseline="tsp", seeds=[0, 1, 2, 3])
    md = render([table], "markdown")
    assert "2/4 (!)" in md and "Incomplete (not aggregated): tac: seed 0 (interrupted); clap: seed 2 (interrupted)" in md
    table.notes.append("a note")
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render([table], "csv")))}
    assert set(rows) == {"tsp", "clap", "tac"}
    assert (rows["clap"]["n"], rows["clap"]["expected"], rows["clap"]["fewer_than_expected"]) == ("2", "4", "1")
    assert rows["clap"]["incomplete"] == "seed 2 (interrupted)" and rows["tsp"]["incomplete"] == ""
    assert rows["tsp"]["fewer_than_expected"] == "1" and rows["tsp"]["n"] == "3"
    assert rows["tac"]["n"] == "0" and rows["tac"]["incomplete"] == "seed 0 (interrupted)" and rows["tac"]["average_mAP mean"] == ""
    assert all(r["notes"] == "a note" for r in rows.values())
    [all_seeds] = make_tables(store, "p", ["1"], baseline="tsp")
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render([all_seeds], "csv")))}
    assert rows["clap"]["expected"] == "" and rows["clap"]["fewer_than_expected"] == "0"


def test_paired_test_uses_the_seeds_both_finished_and_says_so(tmp_path):
    # tac has seeds 0-2 and 5, tsp 0-3: the pairs are seeds 0, 1, 2, differences 1, 1, 4
    # (mean 2, std sqrt(3)); tac's seed 5 and tsp's seed 3 take no part in the test.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"tsp": [0.09, 0.10, 0.10, 0.11], "tac": [0.10, 0.11, 0.14]})
    d = store.stage_dir("p", "tac", 5, "tal")
    d.mkdir(parents=True)
    atomic_write_json(d / "metrics.json", {"mAP@0.5": 0.5, "mAP@0.75": 0.5, "mAP@0.95": 0.5, "average_mAP": 0.5})
    [table] = make_tables(store, "p", ["1"], baseline="tsp", test="paired")
    tac = next(r for r in table.rows if r.method == "tac" and r.source == "ours")
    assert tac.n == 4 and tac.n_paired == 3 and tac.diff == pytest.approx(2.0)
    # t = 2 / (sqrt(3) / sqrt(3)) = 2 with 2 degrees of freedom: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    assert tac.p_value == pytest.approx(1 - 2 / math.sqrt(6), rel=1e-6)
    assert "paired test on the seeds both a row and tsp finished" in render([table], "markdown")
    assert "TAC 0, 1, 2" in render([table], "markdown")
    with pytest.raises(ConfigError, match="--test: unknown 'anova'"):
        make_tables(store, "p", ["1"], baseline="tsp", test="anova")
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--test", "paired", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "p vs tsp, paired" in result.output
    bad = CliRunner().invoke(app, ["table", "--tables", "1", "--test", "anova", "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--test: unknown 'anova'" in bad.output


def test_table_seeds_selects_the_seeds_it_aggregates_as_run_does(tmp_path):
    # tsp has seeds 0-4, clap seeds 0-2 and 5-6 (a later, confirmatory run in the same store).
    # --seeds 5 means seeds 0..4 as in `clapbench run`: clap's 5 and 6 are left out (and said so),
    # its row has 3 of 5 and is marked; --seeds 5,6 takes those two only.
    store = RunStore(tmp_path)
    _fake_results(store, "p", {"tsp": [0.10, 0.11, 0.12, 0.13, 0.14], "clap": [0.20, 0.21, 0.22]})
    for seed, v in ((5, 0.50), (6, 0.52)):
        d = store.stage_dir("p", "clap", seed, "tal")
        d.mkdir(parents=True)
        atomic_write_json(d / "metrics.json", {"mAP@0.5": v, "mAP@0.75": v, "mAP@0.95": v, "average_mAP": v})
    [everything] = make_tables(store, "p", ["1"], baseline="tsp")
    assert next(r for r in everything.rows if r.method == "clap").seeds == [0, 1, 2, 5, 6]
    [first] = make_tables(store, "p", ["1"], baseline="tsp", seeds=[0, 1, 2, 3, 4])
    clap = next(r for r in first.rows if r.method == "clap")
    assert clap.seeds == [0, 1, 2] and clap.mean["average_mAP"] == pytest.approx(21.0) and clap.expected == 5
    md = render([first], "markdown")
    assert "3/5 (!)" in md and "seeds in the store but not asked for (--seeds), left out: clap 5, 6" in md
    [later] = make_tables(store, "p", ["1"], baseline="tsp", seeds=[5, 6])
    rows = {r.method: r for r in later.rows if r.source == "ours"}
    assert set(rows) == {"clap"} and rows["clap"].seeds == [5, 6] and rows["clap"].mean["average_mAP"] == pytest.approx(51.0)
    assert "left out: tsp 0, 1, 2, 3, 4; clap 0, 1, 2" in render([later], "markdown")
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--seeds", "5,6", "--format", "csv", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [row] = list(csv.DictReader(io.StringIO(result.output)))
    assert row["method"] == "clap" and row["seeds"] == "5 6"
    bad = CliRunner().invoke(app, ["table", "--tables", "1", "--seeds", "five", "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--seeds: expected a count (5), a list (0,3,4) or a range (5-9), got 'five'" in bad.output


def test_seeds_are_a_count_a_list_or_a_range():
    assert parse_seeds(3) == parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4,0,3") == [0, 3, 4] and parse_seeds("7,") == [7]
    assert parse_seeds("5-9") == [5, 6, 7, 8, 9] and parse_seeds("0,5-7") == [0, 5, 6, 7] and parse_seeds("7-7") == [7]
    for bad in ("9-5", "-3", "1-2-3", "a-b", ",", "0"):
        with pytest.raises(ConfigError, match="--seeds: expected a count"):
            parse_seeds(bad)


def test_status_reads_a_methods_list_as_run_and_table_do(tmp_path):
    """`--methods "clap, tac"` names clap and tac (spaces stripped, as parse_methods does), and `--methods ""`
    names nothing: exit 2, as table and sweep say, not every method of the store."""
    root = tmp_path / "runs"
    _finished_store(root, load_profile("smoke"), methods=("clap", "tac"), seeds=(0,))
    ok = CliRunner().invoke(app, ["status", "--profile", "smoke", "--tasks", "tal", "--methods", "clap, tac", "--runs-dir", str(root)])
    assert ok.exit_code == 0, ok.output
    assert "tac" in ok.output and "clap" in ok.output and "missing" not in ok.output, ok.output
    empty = CliRunner().invoke(app, ["status", "--profile", "smoke", "--methods", "", "--runs-dir", str(root)])
    assert empty.exit_code == 2 and "--methods" in empty.output, empty.output
