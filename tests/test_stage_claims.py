"""Two runs on one run store: each stage is claimed by one process, the other waits and reuses it,
and a claim whose holder was killed is taken over (the stage resumes from its checkpoint). The other
DDP ranks of a SLURM job follow their rank 0, which holds the claim for the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.runs.claims import CLAIM_FILE, StageClaim, claim_holder
from clap_bench.runs.executors import START_LINE
from clap_bench.runs.store import read_json
from test_runs_toy_plan import wait_until

TESTS_DIR = Path(__file__).resolve().parent


def _clapbench(*args: str) -> list:
    return [sys.executable, "-m", "clap_bench", *args]


def _starts(stage_dir: Path) -> int:
    log = stage_dir / "stage.log"
    return sum(START_LINE in line for line in log.read_text().splitlines()) if log.exists() else 0


def test_a_claim_excludes_other_processes_until_its_holder_dies(tmp_path):
    stage = tmp_path / "toy" / "a" / "seed0" / "pretrain"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from clap_bench.runs.claims import StageClaim\n"
        f"c = StageClaim(Path({str(stage)!r})); c.acquire(); c.stage_dir.mkdir(parents=True, exist_ok=True); c.record_owner()\n"
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert claim_holder(stage)["pid"] == holder.pid
        mine = StageClaim(stage)
        assert not mine.acquire(wait=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert claim_holder(stage) is None  # the kernel released the lock with the process
    assert mine.acquire(wait=False)
    assert mine.previous_owner["pid"] == holder.pid  # the record it left says who died holding it
    mine.release()
    assert not (stage / CLAIM_FILE).exists()


@pytest.mark.slow  # 10-15 s against the cluster or two processes; the fast subset keeps the module's other tests
def test_killed_claim_holder_is_taken_over_by_the_waiting_run_which_resumes_its_checkpoint(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"sleep": 0.3}))
    env = {**os.environ, "CLAPBENCH_PLAN_FACTORY": "test_runs_toy_plan:build_toy_plan", "CLAPBENCH_TOY_STEPS": "300",
           "CLAPBENCH_TOY_CONTROL": str(control), "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ("CLAPBENCH_PLAN_FACTORY", "CLAPBENCH_TOY_STEPS", "CLAPBENCH_TOY_CONTROL"):
        monkeypatch.setenv(key, env[key])  # for the in-process clapbench status
    args = ["run", "--method", "clap", "--seeds", "1", "--tasks", "tal", "--profile", "smoke", "--runs-dir", str(runs), "-q"]
    stage = runs / "smoke" / "clap" / "seed0" / "pretrain"
    first = subprocess.Popen(_clapbench(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waiting_log = tmp_path / "second.err"
    second = None
    try:
        wait_until(lambda: (read_json(stage / "toy_checkpoint.json") or {}).get("step", 0) >= 2, 120,
                   "the first run to checkpoint two steps", poll_s=0.1)
        assert claim_holder(stage)["pid"] == first.pid
        # --no-wait: skips the held stage and the one below it, says so, and exits 0
        skipped = subprocess.run(_clapbench(*args, "--no-wait"), env=env, capture_output=True, text=True, timeout=120)
        assert skipped.returncode == 0, skipped.stderr[-2000:]
        assert f"claimed by pid {first.pid}" in skipped.stderr and "2 stage(s) skipped (--no-wait)" in skipped.stderr
        # clapbench status names the process that holds the stage
        status = CliRunner().invoke(app, ["status", "--runs-dir", str(runs), "--profile", "smoke"])
        line = next(line for line in status.output.splitlines() if " pretrain " in f" {line} ")
        assert "running" in line and f"held by pid {first.pid}" in line, status.output

        with open(waiting_log, "w") as err:
            second = subprocess.Popen(_clapbench(*args), env=env, stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: "waiting for it" in waiting_log.read_text(), 60, "the second run to wait for the claim", poll_s=0.1)
        assert f"claimed by pid {first.pid}" in waiting_log.read_text()
        step_at_kill = read_json(stage / "toy_checkpoint.json")["step"]
        first.send_signal(signal.SIGKILL)
        first.wait()
        control.write_text(json.dumps({"sleep": 0.0}))
        assert second.wait(timeout=120) == 0, waiting_log.read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    text = waiting_log.read_text()
    assert f"taking over from pid {first.pid}" in text, text[-3000:]
    metrics = read_json(stage / "metrics.json")
    assert metrics["steps"] == 300 and metrics["starts"] == 2 and metrics["resumed_from"] >= step_at_kill
    assert _starts(stage) == 2  # the killed start and the take-over, nothing else
    assert read_json(runs / "smoke" / "clap" / "seed0" / "tal" / "metrics.json")
    assert not (stage / CLAIM_FILE).exists() and claim_holder(stage) is None


@pytest.mark.slow
def test_two_runs_started_together_on_one_store_train_each_stage_once_and_match_a_single_run(tmp_path):
    # --tasks tal keeps it short: the shared source stage, then pre-training, extraction (an HDF5 file
    # the other process must not open while it is written) and G-TAD per seed
    args = ["run", "--method", "tac", "--seeds", "2", "--tasks", "tal", "--profile", "smoke", "-q"]
    together, alone = tmp_path / "together", tmp_path / "alone"
    logs = [tmp_path / f"run{i}.err" for i in range(2)]
    procs = []
    for log in logs:
        with open(log, "w") as err:
            procs.append(subprocess.Popen(_clapbench(*args, "--runs-dir", str(together)), stdout=subprocess.DEVNULL, stderr=err))
    codes = [p.wait(timeout=900) for p in procs]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    result = subprocess.run(_clapbench(*args, "--runs-dir", str(alone)), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    stage_dirs = sorted(p.parent for p in (together / "smoke").rglob("stage.json"))
    assert len(stage_dirs) == 1 + 2 * 3  # the shared source stage, then pretrain, extract-activitynet, tal per seed
    assert all((stage / "metrics.json").is_file() for stage in stage_dirs)
    for stage in stage_dirs:
        assert _starts(stage) == 1, f"{stage}: trained {_starts(stage)} times"
        assert not (stage / CLAIM_FILE).exists()
        if stage.name.startswith("pretrain"):
            epochs = [json.loads(line)["epoch"] for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
            assert epochs == [0, 1, 2], f"{stage}: epochs {epochs}"  # validation before training (0), each epoch once
        relative = stage.relative_to(together)
        if stage.name == "tal":
            assert read_json(stage / "metrics.json") == read_json(alone / relative / "metrics.json"), relative
    # both processes did some of the work: the stages were shared out, not run twice
    texts = [log.read_text() for log in logs]
    assert any("waiting for it" in t or "meanwhile, reused" in t for t in texts), texts


def test_a_feature_file_held_by_a_writer_is_neither_read_nor_moved_aside(tmp_path):
    from clap_bench.features.extract import read_features, write_features

    path = tmp_path / "activitynet.h5"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, h5py\n"
        f"f = h5py.File({str(path)!r}, 'w'); f['v_a'] = [[1.0]]; f.attrs['complete'] = True; f.flush()\n"
        "print('open', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(RuntimeError, match="being written by another process"):
            read_features(path)
        with pytest.raises(RuntimeError, match="open in another process"):
            write_features(path, {"checkpoint_hash": "x"}, [], lambda todo: iter(()))
        assert path.exists() and not path.with_name(path.name + ".unreadable").exists()
    finally:
        writer.kill()
        writer.wait()


# --------------------------------------------------------------------------- DDP ranks of one job
class _RankOne:
    """Rank 1 of SLURM job 4242 of two tasks, in a thread: ``claim_and_run(record=False)`` on a stage of one
    step whose function records when it runs (a real one would block in ``init_process_group``)."""

    def __init__(self, tmp_path, monkeypatch):
        from clap_bench.runs import RunStore, executors
        from clap_bench.runs.plan import Plan, StageSpec
        from test_runs_toy_plan import toy_profile

        monkeypatch.setattr(executors, "RANK_POLL_S", 0.05)
        self.calls, self.lines, self.result = [], [], {}
        self.plan = Plan(toy_profile())
        self.spec = self.plan.add(StageSpec("pretrain", "a", 0, self._stage, {}, resources="pretrain"))
        self.hash = self.plan.hashes[self.spec.key]
        self.store = RunStore(tmp_path / "runs")
        self.stage_dir = self.plan.stage_dir(self.store, self.spec)
        self._executors = executors

    def _stage(self, ctx):
        self.calls.append(time.monotonic())
        return {"by": "rank 1"}

    def start(self):
        def run():
            try:
                self.result["outcome"] = self._executors.claim_and_run(
                    str(self.store.root), self.plan.profile, self.spec, self.hash, {}, progress=False, record=False,
                    echo=self.lines.append)
            except Exception as e:  # noqa: BLE001 - handed to the test
                self.result["error"] = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def join(self):
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        if "error" in self.result:
            raise self.result["error"]
        return self.result["outcome"]

    def prepare(self):
        from clap_bench.runs.executors import _prepare_args

        self.store.prepare(self.stage_dir, self.hash, *_prepare_args(self.plan, self.spec))


def _slurm_task(monkeypatch, job_id="4242", restart=None):
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    if restart is not None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart)


def test_a_ddp_rank_other_than_0_waits_for_the_claim_and_reuses_the_result_rank_0_reuses(tmp_path, monkeypatch):
    # A local run holds the stage; rank 0 of the job waits for it, then reuses its result. Rank 1 must
    # do the same: run alone, it would block in init_process_group and fail the job (and its afterok chain).
    rank1 = _RankOne(tmp_path, monkeypatch)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    local = StageClaim(rank1.stage_dir)
    assert local.acquire(wait=False)
    rank1.prepare()
    local.record_owner()
    _slurm_task(monkeypatch)
    rank1.start()
    time.sleep(0.5)
    assert rank1.calls == [] and rank1.thread.is_alive()
    assert any("claimed by pid" in line and "waiting for rank 0" in line for line in rank1.lines), rank1.lines
    rank1.store.finish(rank1.stage_dir, {"by": "local run"})
    local.release()
    outcome = rank1.join()
    assert outcome.action == "reused" and outcome.metrics == {"by": "local run"} and rank1.calls == []


def test_a_ddp_rank_other_than_0_runs_the_stage_once_rank_0_of_its_own_job_holds_the_claim(tmp_path, monkeypatch):
    from clap_bench.runs.claims import held_by_this_job, owner_record

    _slurm_task(monkeypatch, restart="1")
    assert held_by_this_job(owner_record())
    assert not held_by_this_job({**owner_record(), "slurm_restart": None})  # left by the job's start before its requeue
    assert not held_by_this_job({**owner_record(), "slurm_job_id": "4243"})
    rank1 = _RankOne(tmp_path, monkeypatch).start()
    time.sleep(0.5)
    assert rank1.calls == [] and any("not claimed yet" in line for line in rank1.lines), rank1.lines
    rank0 = StageClaim(rank1.stage_dir)  # rank 0 takes the claim (a holder died: it takes over), prepares, says who it is
    assert rank0.acquire(wait=False)
    rank1.prepare()
    claimed_at = time.monotonic()
    rank0.record_owner()
    try:
        outcome = rank1.join()
    finally:
        rank0.release()
    assert outcome.action == "ran" and len(rank1.calls) == 1 and rank1.calls[0] >= claimed_at


def test_a_ddp_rank_other_than_0_gives_up_when_nobody_claims_the_stage(tmp_path, monkeypatch):
    from clap_bench.runs import executors

    _slurm_task(monkeypatch)
    rank1 = _RankOne(tmp_path, monkeypatch)
    monkeypatch.setattr(executors, "RANK_ORPHAN_S", 0.3)
    rank1.start()
    with pytest.raises(RuntimeError, match="nobody has claimed the stage .* rank 0 of job 4242 is gone"):
        rank1.join()
    assert rank1.calls == []
