"""The executors against a real single-node SLURM cluster (started by the ``slurm_cluster`` fixture).

The plan is the toy plan of ``test_runs_toy_plan`` (stage functions that count checkpointed steps),
so these tests pin down the machinery: submission through submitit with afterok chains, status
from squeue/sacct, resubmission after scancel, and resume after ``scontrol requeue``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.runs import RunStore, make_tables, plan_status, render, run_plan
from clap_bench.runs.store import read_json
from test_runs_toy_plan import TOY_CONTROL_ENV, TOY_STEPS_ENV, build_toy_plan, start_requeued_job_soon, toy_profile, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


def _step(stage_dir: Path) -> int:
    state = read_json(stage_dir / "toy_checkpoint.json") if (stage_dir / "toy_checkpoint.json").exists() else None
    return state["step"] if state else -1


def test_sweep_of_two_methods_and_two_seeds_ends_with_a_table(tmp_path, cluster):
    store, profile = RunStore(tmp_path / "runs"), toy_profile()
    plan = build_toy_plan(profile, ["tsp", "clap"], [0, 1], steps=2)
    report = run_plan(plan, store, executor="slurm", cluster=cluster, wait=True, echo=lambda s: None, poll_s=1.0)
    assert report.ok, report.failed
    assert len(report.submitted) == 8 and sorted(report.ran) == sorted(plan.stages)
    tal = read_json(plan.stage_dir(store, plan.stages["clap/seed1/tal"]) / "slurm.json")
    pre = read_json(plan.stage_dir(store, plan.stages["clap/seed1/pretrain"]) / "slurm.json")
    assert tal["after"] == [pre["job_id"]]  # chained with an afterok dependency
    [table] = make_tables(store, "toy", ["1"], baseline="tsp")
    ours = {r.method: r for r in table.rows if r.source == "ours"}
    assert ours["clap"].n == 2 and ours["tsp"].n == 2 and ours["clap"].p_value is not None
    text = render([table], "markdown")
    assert "| CLAP " in text and "| TSP " in text
    # a second sweep finds everything done and submits nothing
    again = run_plan(plan, store, executor="slurm", cluster=cluster, wait=True, echo=lambda s: None)
    assert not again.submitted and len(again.reused) == 8


@pytest.mark.slow  # 10-15 s against the cluster or two processes; the fast subset keeps the module's other tests
def test_cancelled_job_shows_failed_and_a_rerun_resubmits_it(tmp_path, cluster, monkeypatch):
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"sleep": 0.5}))
    monkeypatch.setenv(TOY_STEPS_ENV, "40")
    monkeypatch.setenv(TOY_CONTROL_ENV, str(control))
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    store, profile = RunStore(tmp_path / "runs"), toy_profile()
    plan = build_toy_plan(profile, ["clap"], [0])
    run_plan(plan, store, executor="slurm", cluster=cluster, wait=False, echo=lambda s: None)
    stage_dir = plan.stage_dir(store, plan.stages["clap/seed0/pretrain"])
    first = read_json(stage_dir / "slurm.json")["job_id"]
    wait_until(lambda: _step(stage_dir) >= 2, 60, "the job to checkpoint two steps")
    subprocess.run(["scancel", first], check=True)
    wait_until(lambda: {s.key: s.state for s in plan_status(plan, store)}["clap/seed0/pretrain"] == "failed", 90,
                "status to show the cancelled job as failed")
    result = CliRunner().invoke(app, ["status", "--runs-dir", str(store.root), "--profile", "toy"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if " pretrain " in f" {line} ")
    assert "failed" in line and f"job {first} CANCELLED" in line and "_log.err" in line

    control.write_text(json.dumps({"sleep": 0.0}))
    report = run_plan(plan, store, executor="slurm", cluster=cluster, wait=True, echo=lambda s: None, poll_s=1.0)
    assert report.ok, report.failed
    info = read_json(stage_dir / "slurm.json")
    assert info["job_id"] != first and first in info["history"]
    metrics = read_json(stage_dir / "metrics.json")
    assert metrics["starts"] == 2 and metrics["resumed_from"] >= 2 and metrics["steps"] == 40


@pytest.mark.slow  # about 15 s against the cluster
def test_a_stage_whose_job_slurm_cancelled_after_its_upstream_failed_shows_cancelled_naming_that_stage(tmp_path, cluster,
                                                                                                      monkeypatch):
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"fail_at": 0}))
    monkeypatch.setenv(TOY_CONTROL_ENV, str(control))
    monkeypatch.setenv("CLAPBENCH_PLAN_FACTORY", "test_runs_toy_plan:build_toy_plan")
    store, profile = RunStore(tmp_path / "runs"), toy_profile()
    plan = build_toy_plan(profile, ["clap"], [0])
    lines = []
    report = run_plan(plan, store, executor="slurm", cluster=cluster, wait=True, echo=lines.append, poll_s=1.0)
    assert set(report.failed) == {"clap/seed0/pretrain"} and report.blocked == ["clap/seed0/tal"]
    assert any(line.startswith("clap/seed0/tal: cancelled (job ") and line.endswith(": upstream clap/seed0/pretrain failed")
               for line in lines), lines
    states = {s.key: s for s in plan_status(plan, store)}
    assert states["clap/seed0/pretrain"].state == "failed"
    tal = states["clap/seed0/tal"]
    assert (tal.state, tal.upstream, tal.log_path) == ("cancelled", ["clap/seed0/pretrain failed"], None)
    result = CliRunner().invoke(app, ["status", "--runs-dir", str(store.root), "--profile", "toy"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if " tal " in f" {line} ")
    assert "cancelled" in line and "upstream clap/seed0/pretrain failed" in line and "_log.err" not in line, result.output


@pytest.mark.slow  # 10-15 s against the cluster or two processes; the fast subset keeps the module's other tests
def test_requeued_job_resumes_from_its_checkpoint(tmp_path, cluster):
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"sleep": 0.4}))
    store, profile = RunStore(tmp_path / "runs"), toy_profile()
    plan = build_toy_plan(profile, ["clap"], [0], tasks=["tal"], steps=40, control=str(control))
    run_plan(plan, store, executor="slurm", cluster=cluster, wait=False, echo=lambda s: None)
    stage_dir = plan.stage_dir(store, plan.stages["clap/seed0/pretrain"])
    job_id = read_json(stage_dir / "slurm.json")["job_id"]
    wait_until(lambda: _step(stage_dir) >= 3, 60, "the job to checkpoint three steps")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # the scheduler holds a requeued job back for a while before it may start again; let it start soon
    requeues: dict = {}
    wait_until(lambda: start_requeued_job_soon(job_id, requeues), 60, "the requeued job to be pending")
    wait_until(lambda: (read_json(stage_dir / "toy_checkpoint.json") or {}).get("starts") == 2, 60,
                "the requeued job to start the stage again")
    control.write_text(json.dumps({"sleep": 0.0}))
    wait_until(lambda: all(s.state == "done" for s in plan_status(plan, store)), 120, "the requeued job and its task to finish",
                poll_s=1.0)
    metrics = read_json(stage_dir / "metrics.json")
    assert metrics["starts"] == 2, metrics  # ran twice: before and after the requeue
    assert metrics["resumed_from"] >= 3  # ... and the second run continued from the checkpoint
    assert read_json(stage_dir / "slurm.json")["job_id"] == job_id  # the same job, requeued


def _task_1_fails_while_task_0_waits():
    """A DDP job whose rank 1 dies: rank 0 would wait in its next collective (here: a long sleep)."""
    import os
    import time

    if os.environ.get("SLURM_PROCID") == "1":
        raise SystemExit(3)
    time.sleep(600)


@pytest.mark.slow  # about 15 s against the cluster once the job starts (it takes both of the node's CPUs)
def test_a_task_that_fails_ends_its_jobs_other_tasks_instead_of_leaving_them_waiting(tmp_path, cluster):
    import dataclasses
    import time

    import submitit

    from clap_bench.runs.slurm import ACTIVE_STATES, job_states

    two = dataclasses.replace(cluster, tasks_per_node=2)  # the parameters a 2-task pretrain job gets
    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(**two.submitit_parameters("rank-dies"))
    job = executor.submit(_task_1_fails_while_task_0_waits)
    try:
        state = lambda: job_states([job.job_id])[job.job_id]  # noqa: E731
        wait_until(lambda: state() not in ("PENDING", "UNKNOWN"), 180, "the job to start (the node may be busy)", poll_s=1.0)
        started = time.time()
        ended = wait_until(lambda: (lambda s: s if s not in ACTIVE_STATES and s != "UNKNOWN" else None)(state()), 90,
                           "the job to end once its task 1 failed (task 0 sleeps 600 s)", poll_s=1.0)
        assert ended == "FAILED" and time.time() - started < 90
    finally:
        subprocess.run(["scancel", str(job.job_id)], capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_smoke_sweep_of_two_methods_on_slurm_ends_with_a_table(tmp_path, slurm_cluster):
    """The product plan (real pre-training, extraction and G-TAD stages of the smoke profile), each
    stage a SLURM job submitted through submitit and chained with afterok, ends with Table 1. One
    seed (6 jobs): the toy sweep above covers two seeds and the table's std."""
    runs = tmp_path / "runs"
    args = ["--profile", "smoke", "--runs-dir", str(runs)]
    result = subprocess.run(
        ["python", "-m", "clap_bench", "sweep", "--methods", "tac,clap", "--seeds", "1", "--tasks", "tal",
         "--executor", "slurm", "--cluster", str(REPO / "slurm" / "local.yaml"), "--wait", *args],
        capture_output=True, text=True, timeout=840,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for method in ("tac", "clap"):
        stage = runs / "smoke" / method / "seed0" / "tal"
        assert (stage / "metrics.json").exists(), method
        assert read_json(stage / "slurm.json"), f"{stage}: no SLURM job recorded"
    table = CliRunner().invoke(app, ["table", "--format", "csv", "--tables", "1", "--no-paper", *args])
    assert table.exit_code == 0, table.output
    rows = {line.split(",")[2]: line.split(",") for line in table.output.splitlines()[1:]}
    assert {"tac", "clap"} <= set(rows) and all(rows[m][3] == "1" for m in ("tac", "clap"))
