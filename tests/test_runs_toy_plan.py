"""A toy plan for testing the run machinery (store, executors, status, tables) without training.

Its stage functions are small and deterministic: ``toy_train`` counts steps into a checkpoint
file (so resuming and restarting can be told apart), ``toy_task`` writes the metric keys the real
``tal`` task writes, derived from the method name and seed. They are module-level so SLURM jobs
can unpickle them (the job's PYTHONPATH includes this folder). The plan reaches the CLI through
``CLAPBENCH_PLAN_FACTORY=test_runs_toy_plan:build_toy_plan``.

The ``control`` file (JSON) steers a running stage from the test: ``sleep`` seconds per step and
``fail_at`` (raise at that step, to test failure and resume).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zlib
from pathlib import Path
from typing import Optional, Sequence

from clap_bench.config import Profile, load_profile
from clap_bench.io import atomic_write_json
from clap_bench.runs.plan import Plan, StageContext, StageSpec, parse_tasks

TOY_STEPS_ENV = "CLAPBENCH_TOY_STEPS"
TOY_CONTROL_ENV = "CLAPBENCH_TOY_CONTROL"


def _control(path: Optional[str]) -> dict:
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def toy_train(ctx: StageContext) -> dict:
    """Counts ``steps`` steps, one checkpoint per step; resumes from the checkpoint it finds."""
    ckpt = ctx.out_dir / "toy_checkpoint.json"
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "starts": 0}
    state["starts"] += 1
    resumed_from = state["step"]
    atomic_write_json(ckpt, state)
    while state["step"] < ctx.config["steps"]:
        control = _control(ctx.config.get("control"))
        if control.get("fail_at") is not None and state["step"] == control["fail_at"]:
            raise RuntimeError(f"toy failure at step {state['step']}")
        time.sleep(float(control.get("sleep", 0.0)))
        state["step"] += 1
        atomic_write_json(ckpt, state)
    return {"steps": state["step"], "starts": state["starts"], "resumed_from": resumed_from, "checkpoint": ckpt.name}


def toy_score(method: str, seed: int) -> float:
    """A deterministic stand-in score in [0.2, 0.6): distinct per method, varying with the seed."""
    return 0.2 + (zlib.crc32(method.encode()) % 1000) / 2500.0 + 0.01 * seed


def toy_task(ctx: StageContext) -> dict:
    upstream = json.loads((ctx.inputs["pretrain"] / "metrics.json").read_text())
    assert upstream["steps"] == ctx.config["steps"]
    s = toy_score(ctx.method, ctx.seed)
    return {"mAP@0.5": s + 0.1, "mAP@0.75": s, "mAP@0.95": s - 0.1, "average_mAP": s - 0.02}


def toy_profile(name: str = "toy") -> Profile:
    return load_profile("smoke", overrides={"name": name})


def build_toy_plan(profile: Profile, methods: Sequence[str], seeds: Sequence[int], tasks=None,
                   steps: Optional[int] = None, control: Optional[str] = None) -> Plan:
    """pretrain (toy_train) -> tal (toy_task) per (method, seed); same signature as ``build_plan``."""
    parse_tasks(tasks)
    steps = int(os.environ.get(TOY_STEPS_ENV, 3)) if steps is None else steps
    control = os.environ.get(TOY_CONTROL_ENV) if control is None else control
    plan = Plan(profile)
    for method in methods:
        for seed in seeds:
            train = plan.add(StageSpec("pretrain", method, seed, toy_train, {"steps": steps, "control": control},
                                       resources="pretrain"))
            plan.add(StageSpec("tal", method, seed, toy_task, {"steps": steps}, deps=(train.key,)))
    return plan


def test_toy_plan_is_a_chain_per_method_and_seed():
    plan = build_toy_plan(toy_profile(), ["a", "b"], [0, 1])
    assert len(plan) == 8
    assert plan.stages["a/seed1/tal"].deps == ("a/seed1/pretrain",)
    # the hash of a downstream stage depends on its upstream stage's config
    other = build_toy_plan(toy_profile(), ["a"], [1], steps=4)
    assert other.hashes["a/seed1/tal"] != plan.hashes["a/seed1/tal"]


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.5):
    """``condition()``'s first truthy value, polled every ``poll_s``; fails after ``timeout_s``."""
    end = time.time() + timeout_s
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# A requeued job is held back until a begin time slurmctld sets its credential lifetime (cred_expire,
# 120 s by default) ahead, so that slurmd cannot take the launch credential it revoked at the requeue
# for the new one. Tests start it sooner, but not at once: slurmd compares those times to the second,
# and a restart within the second of the requeue was refused ("Job credential revoked", "Job 27
# already killed, do not launch batch job" in slurmd's log) and ended the job. Moving the begin time
# a few seconds ahead instead left the job to the scheduler's next periodic pass (up to a minute).
REQUEUE_START_DELAY_S = 3


def start_requeued_job_soon(job_id: str, seen: dict) -> bool:
    """Start a requeued job that waits for its begin time, once it has waited ``REQUEUE_START_DELAY_S``
    seconds (``seen``: restart count -> when this job was first seen waiting, or None once started, so
    that callers can poll); True when it was started now."""
    import re

    state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout.split()
    if state != ["PENDING", "BeginTime"]:
        return False
    found = re.search(r"\bRestarts=(\d+)", slurm_job_report(job_id))
    restarts = int(found.group(1)) if found else -1
    first = seen.setdefault(restarts, time.time())
    if first is None or time.time() - first < REQUEUE_START_DELAY_S:
        return False
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    seen[restarts] = None
    return True


def slurm_job_report(job_id: str) -> str:
    """``scontrol show job`` of ``job_id`` (for a failure message)."""
    proc = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    return (proc.stdout + proc.stderr).strip()
