"""Stage claims and time limits on the real single-node SLURM cluster (``slurm_cluster`` fixture).

- Two sweeps submitted at the same moment submit each stage once: the second finds the first's
  jobs in the store and keeps them; ``clapbench status`` names the job that holds a stage.
- A stage that needs longer than its job's time limit is checkpointed on SLURM's warning signal
  (USR2, ``signal_delay_s`` before the limit), requeued by submitit, and finishes from its
  checkpoint with the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.io import atomic_write_json
from clap_bench.runs import RunStore, plan_status, run_plan
from clap_bench.runs.claims import claim_holder
from clap_bench.runs.executors import START_LINE
from clap_bench.runs.plan import Plan, StageContext, StageSpec
from clap_bench.runs.store import read_json
from test_runs_toy_plan import (TOY_CONTROL_ENV, TOY_STEPS_ENV, slurm_job_report, start_requeued_job_soon, toy_profile,
                                wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


def _starts(stage_dir: Path) -> int:
    log = stage_dir / "stage.log"
    return sum(START_LINE in line for line in log.read_text().splitlines()) if log.exists() else 0


# --------------------------------------------------------------------------- two sweeps at once
@pytest.mark.slow  # 10-15 s against the cluster; the fast subset keeps tests/test_slurm.py's sweep and the
# claims of tests/test_stage_claims.py
def test_two_sweeps_submitted_together_submit_each_stage_once_and_status_names_the_holding_job(tmp_path, cluster, monkeypatch):
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"sleep": 0.3}))
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump({k: v for k, v in dataclasses.asdict(cluster).items() if k != "source"}))
    env = {"CLAPBENCH_PLAN_FACTORY": "test_runs_toy_plan:build_toy_plan", TOY_STEPS_ENV: "20", TOY_CONTROL_ENV: str(control)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the sweeps below and the in-process status use the toy plan
    runs = tmp_path / "runs"
    args = ["sweep", "--methods", "clap", "--seeds", "2", "--profile", "smoke", "--runs-dir", str(runs),
            "--executor", "slurm", "--cluster", str(cluster_file)]
    full_env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-m", "clap_bench", *args], env=full_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    text = "\n".join(out + err for out, err in outputs)
    submitted = [line for line in text.splitlines() if ": submitted job " in line]
    assert len(submitted) == 4, text  # 2 seeds x (pretrain, tal), each submitted by one of the two sweeps
    # ... and found queued or running by the other (by its slurm.json, or its claim once the job runs)
    assert sorted(re.findall(r"Submitted (\d) job\(s\), (\d) already queued", text)) == [("0", "4"), ("4", "0")], text

    stage = runs / "smoke" / "clap" / "seed0" / "pretrain"
    holder = wait_until(lambda: (claim_holder(stage) or {}).get("slurm_job_id"), 120, "a job to claim seed 0's pre-training")
    status = CliRunner().invoke(app, ["status", "--runs-dir", str(runs), "--profile", "smoke"])
    line = next(line for line in status.output.splitlines() if " 0  pretrain " in f" {line} ")
    assert "running" in line and f"held by SLURM job {holder}" in line, status.output
    # a third submission while they run submits nothing
    again = subprocess.run([sys.executable, "-m", "clap_bench", *args], env=full_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and ": submitted job " not in again.stderr, again.stderr

    control.write_text(json.dumps({"sleep": 0.0}))
    store = RunStore(runs)
    from test_runs_toy_plan import build_toy_plan

    plan = build_toy_plan(toy_profile("smoke"), ["clap"], [0, 1], steps=20, control=str(control))
    wait_until(lambda: all(s.state == "done" for s in plan_status(plan, store)), 240, "every stage to finish", poll_s=1.0)
    for spec in plan:
        assert _starts(plan.stage_dir(store, spec)) == 1, spec.key


# --------------------------------------------------------------------------- time limit
def accumulate(ctx: StageContext) -> dict:
    """``steps`` steps of ``sleep`` s, each folding its index into a running value; checkpointed
    after every step, resumed from the checkpoint. The value depends on every step exactly once."""
    ckpt = ctx.out_dir / "accumulate.json"
    state = read_json(ckpt) if ckpt.exists() else {"step": 0, "value": 1, "starts": 0}
    state["starts"] += 1
    resumed_from = state["step"]
    atomic_write_json(ckpt, state)
    while state["step"] < ctx.config["steps"]:
        time.sleep(ctx.config["sleep"])
        state["value"] = (state["value"] * 1103515245 + 12345 + state["step"]) % 2**31
        state["step"] += 1
        atomic_write_json(ckpt, state)
    return {"value": state["value"], "steps": state["step"], "starts": state["starts"], "resumed_from": resumed_from}


def accumulate_plan(steps: int, sleep: float) -> Plan:
    plan = Plan(toy_profile())
    plan.add(StageSpec("pretrain", "acc", 0, accumulate, {"steps": steps, "sleep": sleep}, resources="pretrain"))
    return plan


@pytest.mark.slow
def test_stage_past_its_time_limit_is_checkpointed_requeued_and_finishes_like_an_uninterrupted_run(tmp_path, cluster):
    # 1-minute limit, warning 20 s before it; the stage needs 45 s of steps plus start-up
    limited = dataclasses.replace(cluster, timeout_min=1, signal_delay_s=20)
    store = RunStore(tmp_path / "runs")
    plan = accumulate_plan(steps=45, sleep=1.0)
    report = run_plan(plan, store, executor="slurm", cluster=limited, wait=False, echo=lambda s: None)
    [job_id] = report.submitted.values()
    stage_dir = plan.stage_dir(store, plan.stages["acc/seed0/pretrain"])

    requeues: dict = {}

    def finished_or_released() -> bool:
        if store.is_done(stage_dir):
            return True
        start_requeued_job_soon(job_id, requeues)  # rather than minutes after each requeue
        return False

    try:
        wait_until(finished_or_released, 420, "the stage to finish across its requeues", poll_s=1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{slurm_job_report(job_id)}") from None
    metrics = read_json(stage_dir / "metrics.json")
    assert metrics["steps"] == 45
    assert metrics["starts"] >= 2 and 0 < metrics["resumed_from"] < 45, metrics  # resumed, not restarted
    assert read_json(stage_dir / "slurm.json")["job_id"] == job_id  # the same job, requeued
    stdout = Path(read_json(stage_dir / "slurm.json")["stdout"]).read_text() + Path(read_json(stage_dir / "slurm.json")["stderr"]).read_text()
    assert "timed-out" in stdout, stdout[-2000:]  # submitit saw the warning signal as the time limit

    uninterrupted = accumulate_plan(steps=45, sleep=0.0)
    ref_store = RunStore(tmp_path / "reference")
    assert run_plan(uninterrupted, ref_store, executor="local", progress=False, echo=lambda s: None).ok
    reference = read_json(uninterrupted.stage_dir(ref_store, uninterrupted.stages["acc/seed0/pretrain"]) / "metrics.json")
    assert reference["starts"] == 1 and metrics["value"] == reference["value"]
