"""Submission to SLURM and waiting for the jobs, without a cluster: submitit's executor, squeue and
scancel are replaced by fakes, and a "job" is its ``StageJob`` called in this process."""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import time
import types
from pathlib import Path

import pytest

from clap_bench.runs import RunStore, load_cluster
from clap_bench.io import atomic_write_json
from clap_bench.runs import executors, slurm
from clap_bench.runs.slurm import JobState, SlurmQueryError
from clap_bench.runs.store import read_json
from test_runs_toy_plan import build_toy_plan, toy_profile

REPO = Path(__file__).resolve().parent.parent
SQUEUE = f"squeue -h -u {getpass.getuser()} -o %A %T %r"  # this user's jobs only, as errors name the command
SQUEUE_RE = re.escape(SQUEUE)


class FakeSlurm:
    """submitit's AutoExecutor (jobs 100, 101, ... kept in ``jobs``), ``job_details`` (from ``states``,
    unless ``squeue=False``: then the real one, on whatever ``subprocess.run`` the test gives it) and ``cancel``."""

    def __init__(self, monkeypatch, states=None, squeue=True):
        self.jobs, self.cancelled, self.states = {}, [], dict(states or {})
        self.on_submit = None  # called with the StageJob while "sbatch" runs
        fake = self

        class Executor:
            def __init__(self, **kw):
                pass

            def update_parameters(self, **kw):
                pass

            def submit(self, job):
                if fake.on_submit is not None:
                    fake.on_submit(job)
                job_id = str(100 + len(fake.jobs))
                fake.jobs[job_id] = job
                return types.SimpleNamespace(job_id=job_id, paths=types.SimpleNamespace(stdout="out", stderr="err"))

        monkeypatch.setattr(executors.submitit, "AutoExecutor", Executor)
        if squeue:
            monkeypatch.setattr(executors, "job_details", lambda ids: {j: JobState(self.states.get(j, "UNKNOWN")) for j in ids if j})
        monkeypatch.setattr(executors, "cancel", lambda ids: self.cancelled.extend(ids) or True)

    def submit(self, plan, store, echo=None):
        lines = []
        report, job_of = executors._submit(plan, store, load_cluster(REPO / "slurm" / "local.yaml"), echo or lines.append,
                                           poll_s=0.01)
        return report, job_of, lines


def _local_run(plan, store, key, wait=True):
    spec = plan.stages[key]
    return executors.claim_and_run(str(store.root), plan.profile, spec, plan.hashes[key], executors._inputs(plan, store, spec),
                                   progress=False, prepare=executors._prepare_args(plan, spec), wait=wait, echo=lambda s: None)


def _status(plan, store, key):
    return (read_json(plan.stage_dir(store, plan.stages[key]) / "stage.json") or {}).get("status")


# --------------------------------------------------------------------------- the "submitted" record
def test_a_local_run_cannot_finish_a_stage_while_it_is_submitted_and_then_see_its_record_say_submitted(tmp_path, monkeypatch):
    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    key = "a/seed0/pretrain"
    stage_dir = plan.stage_dir(store, plan.stages[key])
    slurm, local = FakeSlurm(monkeypatch), {}

    def local_run_meanwhile(job):  # a `clapbench run` on the same store while sbatch takes its time
        if job.spec.key == key:
            local["outcome"] = _local_run(plan, store, key, wait=False)

    slurm.on_submit = local_run_meanwhile
    report, _, _ = slurm.submit(plan, store)
    assert local["outcome"].action == "held"  # the stage is claimed while it is submitted
    assert sorted(report.submitted) == [key, "a/seed0/tal"]
    # never metrics.json beside a record that is not done (the job would run the stage again)
    assert not (stage_dir / "metrics.json").exists() and _status(plan, store, key) == "submitted"
    assert read_json(stage_dir / "stage.json")["slurm_job_id"] == report.submitted[key]
    # the job runs it; a local run of the stage below then finds it done
    assert slurm.jobs[report.submitted[key]]() == {"steps": 2, "starts": 1, "resumed_from": 0, "checkpoint": "toy_checkpoint.json"}
    assert store.is_done(stage_dir, plan.hashes[key]) and _status(plan, store, key) == "done"
    assert _local_run(plan, store, "a/seed0/tal").action == "ran"


def test_a_stage_finished_by_a_local_run_just_before_its_submission_is_not_submitted_nor_marked_submitted(tmp_path, monkeypatch):
    plan = build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    key = "a/seed0/pretrain"
    finished = []

    class LateStore(RunStore):
        """Answers "not done" once for the stage, and a local run finishes it right after that answer."""

        def is_done(self, stage_dir, config_hash=None):
            done = super().is_done(stage_dir, config_hash)
            if not done and not finished and stage_dir == plan.stage_dir(self, plan.stages[key]):
                finished.append(_local_run(plan, RunStore(self.root), key).action)
            return done

    store = LateStore(tmp_path / "runs")
    slurm = FakeSlurm(monkeypatch)
    report, job_of, lines = slurm.submit(plan, store)
    assert finished == ["ran"]
    assert report.reused == [key] and key not in report.submitted and key not in job_of
    assert f"{key}: finished meanwhile, not submitted" in lines
    assert store.is_done(plan.stage_dir(store, plan.stages[key]), plan.hashes[key]) and _status(plan, store, key) == "done"
    assert list(report.submitted) == ["a/seed0/tal"]
    tal = slurm.jobs[report.submitted["a/seed0/tal"]]
    assert tal()["average_mAP"] > 0  # no afterok on a job that was never submitted: it runs at once


# --------------------------------------------------------------------------- jobs of another config
def test_jobs_still_queued_under_an_earlier_config_are_cancelled_when_the_new_config_is_submitted(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "runs")
    old, new = (build_toy_plan(toy_profile(), ["a"], [0], steps=n) for n in (3, 5))
    slurm = FakeSlurm(monkeypatch)
    first, _, _ = slurm.submit(old, store)
    slurm.states = {job: "PENDING" for job in first.submitted.values()}
    report, _, lines = slurm.submit(new, store)
    assert sorted(slurm.cancelled) == sorted(first.submitted.values())
    for key in ("a/seed0/pretrain", "a/seed0/tal"):
        assert report.submitted[key] not in first.submitted.values()
        assert any(line.startswith(f"{key}: cancelled job(s) {first.submitted[key]} (config hash {old.hashes[key]})")
                   and new.hashes[key] in line for line in lines), lines
    assert report.submitted["a/seed0/pretrain"] in read_json(new.stage_dir(store, new.stages["a/seed0/tal"]) / "slurm.json")["after"]


def test_a_stage_job_refuses_an_upstream_folder_made_under_another_config(tmp_path, monkeypatch):
    # An earlier config's job that ran anyway (scancel failed; it was already running) moved the new
    # config's pre-training aside and left its own: the new config's task job must not read it.
    store = RunStore(tmp_path / "runs")
    old, new = (build_toy_plan(toy_profile(), ["a"], [0], steps=n) for n in (3, 5))
    slurm = FakeSlurm(monkeypatch)
    stale, _, _ = slurm.submit(old, store)
    fresh, _, _ = slurm.submit(new, store)
    slurm.jobs[fresh.submitted["a/seed0/pretrain"]]()
    slurm.jobs[stale.submitted["a/seed0/pretrain"]]()
    pre = new.stage_dir(store, new.stages["a/seed0/pretrain"])
    assert read_json(pre / "stage.json")["hash"] == old.hashes["a/seed0/pretrain"]
    with pytest.raises(RuntimeError, match=(rf"stage a/seed0/tal: upstream stage 'pretrain' in {pre} was made under config "
                                            rf"hash {old.hashes['a/seed0/pretrain']}, not {new.hashes['a/seed0/pretrain']}")):
        slurm.jobs[fresh.submitted["a/seed0/tal"]]()
    tal = new.stage_dir(store, new.stages["a/seed0/tal"])
    assert not (tal / "metrics.json").exists()
    # a local run of the plan redoes the pre-training under its config first
    assert executors.run_plan(new, store, progress=False, echo=lambda s: None).ok


# --------------------------------------------------------------------------- squeue failing
class FlakySlurm:
    """``subprocess.run`` for squeue/sacct: squeue times out ``fail`` times (a busy controller), then lists
    ``queue`` (job id -> state); sacct knows the jobs in ``accounting``. ``then`` runs once squeue answers."""

    def __init__(self, monkeypatch, fail, queue=None, accounting=None, then=None):
        self.fail, self.queue, self.accounting, self.then, self.calls = fail, dict(queue or {}), dict(accounting or {}), then, []
        monkeypatch.setattr(slurm.subprocess, "run", self)

    def __call__(self, cmd, **kw):
        self.calls.append(cmd[0])
        if cmd[0] == "squeue":
            if self.fail:
                self.fail -= 1
                raise subprocess.TimeoutExpired(cmd, 30)
            then, self.then = self.then, None
            if then is not None:
                then()
            return subprocess.CompletedProcess(cmd, 0, "".join(f"{j} {s}\n" for j, s in self.queue.items()), "")
        if cmd[0] == "sacct":  # a running job may have no row yet; here accounting knows what the test says
            return subprocess.CompletedProcess(cmd, 0, "".join(f"{j}|{s}\n" for j, s in self.accounting.items()), "")
        raise AssertionError(cmd)


def test_a_failed_squeue_says_nothing_about_the_jobs_instead_of_calling_them_unknown(monkeypatch):
    FlakySlurm(monkeypatch, fail=1)
    with pytest.raises(SlurmQueryError, match=f"`{SQUEUE_RE}` timed out after 30 s"):
        slurm.job_states(["4242"])

    def down(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "slurm_load_jobs error: Unable to contact slurm controller")

    monkeypatch.setattr(slurm.subprocess, "run", down)
    with pytest.raises(SlurmQueryError, match=f"`{SQUEUE_RE}` failed \\(exit 1\\): slurm_load_jobs error: Unable to contact"):
        slurm.job_states(["4242"])
    assert not slurm.cancel(["4242"])  # scancel failing too: a warning, not an exception

    def no_accounting(cmd, **kw):  # squeue answers; sacct fails: the jobs squeue does not list are not live
        if cmd[0] == "squeue":
            return subprocess.CompletedProcess(cmd, 0, "4242 RUNNING\n", "")
        return subprocess.CompletedProcess(cmd, 1, "", "Slurm accounting storage is disabled")

    monkeypatch.setattr(slurm.subprocess, "run", no_accounting)
    assert slurm.job_states(["4242", "4243"]) == {"4242": "RUNNING", "4243": "UNKNOWN"}


class FakeSlurmCommands:
    """``squeue`` and ``sacct`` as programs on PATH (the real ``subprocess.run`` calls them) that record their
    arguments. ``queue``: job id -> (user, state[, reason]); squeue lists the user's jobs under ``-u``, every
    user's without. ``accounting``: job id -> (state, reason), what sacct knows of the jobs it is asked about."""

    def __init__(self, tmp_path, monkeypatch, queue=None, accounting=None):
        import json
        import sys

        self.dir = tmp_path / "fake-slurm"
        self.dir.mkdir()
        (self.dir / "queue.json").write_text(json.dumps(queue or {}))
        (self.dir / "accounting.json").write_text(json.dumps(accounting or {}))
        for name in ("squeue", "sacct"):
            (self.dir / name).write_text(f"#!{sys.executable}\n" + FAKE_SLURM_COMMAND.format(dir=str(self.dir), name=name))
            (self.dir / name).chmod(0o755)
        monkeypatch.setenv("PATH", f"{self.dir}:{os.environ['PATH']}")

    def calls(self, name):
        import json

        path = self.dir / f"{name}.calls"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


FAKE_SLURM_COMMAND = """
import json, sys
args = sys.argv[1:]
with open("{dir}/{name}.calls", "a") as f:
    f.write(json.dumps(args) + "\\n")
fmt = args[args.index("-o") + 1]
if "{name}" == "squeue":
    user = args[args.index("-u") + 1] if "-u" in args else None
    for job, (owner, state, *reason) in json.load(open("{dir}/queue.json")).items():
        if user in (None, owner):
            print(fmt.replace("%A", job).replace("%T", state).replace("%r", (reason or ["None"])[0]))
else:
    asked = args[args.index("-j") + 1].split(",")
    for job, (state, reason) in json.load(open("{dir}/accounting.json")).items():
        if job in asked:
            row = {{"JobIDRaw": job, "State": state, "Reason": reason}}
            print("|".join(row[field] for field in fmt.split(",")))
"""


def test_squeue_is_asked_for_this_users_jobs_only_and_another_users_job_is_read_from_sacct(tmp_path, monkeypatch):
    me = getpass.getuser()
    fake = FakeSlurmCommands(tmp_path, monkeypatch, queue={"4242": (me, "RUNNING"), "4243": (me, "PENDING"),
                                                           "9000": ("someone", "RUNNING"), "5555": ("colleague", "RUNNING")},
                             accounting={"5555": ("RUNNING", "None"), "4100": ("COMPLETED", "None")})
    assert slurm.job_states(["4242", "4243", "5555", "4100", "4999"]) == {
        "4242": "RUNNING", "4243": "PENDING", "5555": "RUNNING", "4100": "COMPLETED", "4999": "UNKNOWN"}
    [squeue] = fake.calls("squeue")
    assert squeue[squeue.index("-u") + 1] == me and "-j" not in squeue  # -j fails on some versions for a job that left
    [sacct] = fake.calls("sacct")
    assert sorted(sacct[sacct.index("-j") + 1].split(",")) == ["4100", "4999", "5555"]


def _chain_plan():
    """The toy plan's pretrain -> tal, and a third stage after tal (a chain of cancellations)."""
    from clap_bench.runs.plan import StageSpec
    from test_runs_toy_plan import toy_task

    plan = build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    plan.add(StageSpec("vlg", "a", 0, toy_task, {"steps": 2}, deps=("a/seed0/tal",)))
    return plan


@pytest.mark.parametrize("how", ["cancelled", "never-starts"])
def test_status_shows_a_stage_whose_job_slurm_cancelled_for_its_failed_upstream_as_cancelled_naming_it(
        tmp_path, monkeypatch, how):
    from clap_bench.runs import plan_status

    store, plan = RunStore(tmp_path / "runs"), _chain_plan()
    report, _, _ = FakeSlurm(monkeypatch).submit(plan, store)
    pre, tal, vlg = (report.submitted[f"a/seed0/{name}"] for name in ("pretrain", "tal", "vlg"))
    me = getpass.getuser()
    if how == "cancelled":  # kill-on-invalid-dep: SLURM removed the jobs after the failed one (sacct)
        FakeSlurmCommands(tmp_path, monkeypatch, accounting={pre: ("FAILED", "None"), tal: ("CANCELLED", "Dependency"),
                                                             vlg: ("CANCELLED", "Dependency")})
    else:  # a cluster that keeps them: pending forever (squeue)
        FakeSlurmCommands(tmp_path, monkeypatch, queue={tal: (me, "PENDING", "DependencyNeverSatisfied"),
                                                        vlg: (me, "PENDING", "Dependency")},
                          accounting={pre: ("FAILED", "None")})
    statuses = {s.key: s for s in plan_status(plan, store)}
    assert statuses["a/seed0/pretrain"].state == "failed"
    for key in ("a/seed0/tal",) + (("a/seed0/vlg",) if how == "cancelled" else ()):
        status = statuses[key]
        assert status.state == "cancelled" and status.log_path is None and not status.error_tail
        assert status.upstream == ["a/seed0/pretrain failed"]  # the root of the chain, also for vlg
        assert status.detail.endswith("; upstream a/seed0/pretrain failed") and "err" not in status.detail
    if how == "never-starts":  # its upstream (tal) never starts: it waits, as SLURM says
        assert statuses["a/seed0/vlg"].state == "running"
    assert statuses["a/seed0/tal"].job_state == ("CANCELLED (Dependency)" if how == "cancelled"
                                                 else "PENDING (DependencyNeverSatisfied)")


@pytest.mark.parametrize("how", ["cancelled", "never-starts"])
def test_a_sweep_waiting_for_its_jobs_reports_a_stage_slurm_cancelled_for_its_failed_upstream_as_cancelled_naming_it(
        tmp_path, monkeypatch, how):
    store, plan = RunStore(tmp_path / "runs"), _chain_plan()
    report, job_of, _ = FakeSlurm(monkeypatch).submit(plan, store)
    pre, tal, vlg = (job_of[f"a/seed0/{name}"] for name in ("pretrain", "tal", "vlg"))
    monkeypatch.setattr(executors, "job_details", slurm.job_details)  # from here on, squeue and sacct say
    me = getpass.getuser()
    if how == "cancelled":  # kill-on-invalid-dep: SLURM removed the jobs after the failed one (sacct)
        FakeSlurmCommands(tmp_path, monkeypatch, accounting={pre: ("FAILED", "None"), tal: ("CANCELLED", "Dependency"),
                                                             vlg: ("CANCELLED", "Dependency")})
    else:  # a cluster that keeps them: tal pending for ever, and vlg after it
        FakeSlurmCommands(tmp_path, monkeypatch, queue={tal: (me, "PENDING", "DependencyNeverSatisfied"),
                                                        vlg: (me, "PENDING", "Dependency")},
                          accounting={pre: ("FAILED", "None")})
    polls, real_sleep, poll_s = [], time.sleep, 0.0123

    def sleep(seconds):  # waiting on is an error here, not a hung test (subprocess sleeps too: other durations)
        if seconds == poll_s:
            polls.append(seconds)
            assert len(polls) < 20, "still waiting for jobs that will never run"
        real_sleep(seconds)

    monkeypatch.setattr(executors.time, "sleep", sleep)
    lines = []
    executors._wait_for_jobs(plan, store, job_of, report, lines.append, poll_s=poll_s)
    assert report.failed == {"a/seed0/pretrain": f"job {pre} ended FAILED"}
    assert report.blocked == ["a/seed0/tal", "a/seed0/vlg"] and not report.ok
    tal_state = "CANCELLED (Dependency)" if how == "cancelled" else "PENDING (DependencyNeverSatisfied)"
    vlg_state = "CANCELLED (Dependency)" if how == "cancelled" else "PENDING (Dependency)"
    assert lines == [f"a/seed0/pretrain: job {pre} ended FAILED without metrics",
                     f"a/seed0/tal: cancelled (job {tal} {tal_state}): upstream a/seed0/pretrain failed",
                     f"a/seed0/vlg: cancelled (job {vlg} {vlg_state}): upstream a/seed0/pretrain failed"]


def test_a_job_cancelled_by_a_user_while_it_waited_for_its_upstream_is_still_failed(tmp_path, monkeypatch):
    from clap_bench.runs import plan_status

    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    report, _, _ = FakeSlurm(monkeypatch).submit(plan, store)
    # scancel of a pending job: sacct says "CANCELLED by <uid>" and no reason
    FakeSlurmCommands(tmp_path, monkeypatch, accounting={job: ("CANCELLED by 0", "None") for job in report.submitted.values()})
    assert {s.key: s.state for s in plan_status(plan, store)} == {"a/seed0/pretrain": "failed", "a/seed0/tal": "failed"}


def _submitted_long_ago(plan, store, key, job_id):
    atomic_write_json(plan.stage_dir(store, plan.stages[key]) / "slurm.json", {
        "job_id": job_id, "hash": plan.hashes[key],
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 120))})  # past the grace


def test_waiting_for_jobs_goes_on_through_failed_squeue_calls(tmp_path, monkeypatch):
    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    key = "a/seed0/pretrain"
    _submitted_long_ago(plan, store, key, "4242")
    lines = []
    # squeue fails three times while the job runs (accounting has no row for it yet); when squeue
    # answers again, the job has finished the stage and left the queue

    def job_finished():
        _local_run(plan, store, key)
        flaky.accounting["4242"] = "COMPLETED"

    flaky = FlakySlurm(monkeypatch, fail=3, then=job_finished)
    report = executors.RunReport()
    executors._wait_for_jobs(plan, store, {key: "4242"}, report, lines.append, poll_s=0.01)
    assert report.ok and report.ran == [key], report.failed
    assert flaky.calls[:4] == ["squeue"] * 4
    assert any(line.startswith(f"cannot read the job states: `{SQUEUE}` timed out") for line in lines), lines
    assert "job states read again after 3 failed tries" in lines


def test_waiting_for_jobs_gives_up_naming_the_command_when_squeue_keeps_failing(tmp_path, monkeypatch):
    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    key = "a/seed0/pretrain"
    _submitted_long_ago(plan, store, key, "4242")
    FlakySlurm(monkeypatch, fail=10 ** 6)
    monkeypatch.setattr(executors, "QUERY_PATIENCE_S", 0.2)
    report = executors.RunReport()
    with pytest.raises(SlurmQueryError, match=rf"`{SQUEUE_RE}` timed out after 30 s; still failing after \d+ tries"):
        executors._wait_for_jobs(plan, store, {key: "4242"}, report, lambda s: None, poll_s=0.01)
    assert not report.failed  # nothing decided about the job


def test_a_submission_keeps_a_queued_job_through_a_failed_squeue_call(tmp_path, monkeypatch):
    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    key = "a/seed0/pretrain"
    _submitted_long_ago(plan, store, key, "4242")
    fake = FakeSlurm(monkeypatch, squeue=False)
    FlakySlurm(monkeypatch, fail=2, queue={"4242": "PENDING"})
    report, job_of, lines = fake.submit(plan, store)
    assert report.kept == {key: "4242"} and key not in report.submitted and job_of[key] == "4242"
    assert read_json(plan.stage_dir(store, plan.stages["a/seed0/tal"]) / "slurm.json")["after"] == ["4242"]



def test_status_during_a_failed_squeue_still_shows_a_submitted_stage_as_running(tmp_path, monkeypatch):
    from clap_bench.runs import plan_status

    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    FakeSlurm(monkeypatch).submit(plan, store)
    FlakySlurm(monkeypatch, fail=1)
    states = {s.key: (s.state, s.job_id, s.job_state) for s in plan_status(plan, store)}
    assert states == {"a/seed0/pretrain": ("running", "100", None), "a/seed0/tal": ("running", "101", None)}


# --------------------------------------------------------------------------- each job's own resources
def _sbatch_scripts(tmp_path, monkeypatch, cluster_text: str) -> dict:
    """The real submitit executor, up to its sbatch call: the sbatch script each job of the toy plan
    would get under the cluster profile ``cluster_text`` (stage key -> its lines)."""
    from submitit.slurm.slurm import _make_sbatch_string

    sbatch = {}

    class Recording(executors.submitit.AutoExecutor):
        def submit(self, job):
            params = dict(self._executor.parameters)
            text = _make_sbatch_string(command="python x", folder=str(tmp_path / "sub"), **params)
            job_id = str(100 + len(sbatch))
            sbatch[job.spec.key] = text.splitlines()
            return types.SimpleNamespace(job_id=job_id, paths=types.SimpleNamespace(stdout="out", stderr="err"))

    monkeypatch.setattr(executors.submitit, "AutoExecutor", Recording)
    monkeypatch.setattr(executors, "job_details", lambda ids: {j: JobState("UNKNOWN") for j in ids if j})
    (tmp_path / "c.yaml").write_text(cluster_text)
    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    executors._submit(plan, store, load_cluster(tmp_path / "c.yaml"), lambda s: None, poll_s=0.01)
    return sbatch


def _sbatch_lines(script: list) -> list:
    return [line for line in script if line.startswith("#SBATCH")]


def test_a_task_job_submitted_after_a_gpu_pretrain_job_asks_for_none_of_its_gpus_memory_or_partition(tmp_path, monkeypatch):
    sbatch = _sbatch_scripts(tmp_path, monkeypatch, (
        "cpus_per_task: 2\nstages:\n  pretrain: {gpus_per_node: 4, tasks_per_node: 4, mem_gb: 64, partition: gpu-long,"
        " account: lab, qos: high}\n"))
    pretrain, task = _sbatch_lines(sbatch["a/seed0/pretrain"]), _sbatch_lines(sbatch["a/seed0/tal"])
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--mem=64GB", "--partition=gpu-long", "--account=lab",
                 "--qos=high"):
        assert f"#SBATCH {line}" in pretrain
    assert "#SBATCH --ntasks-per-node=1" in task
    leaked = [line for line in task if any(k in line for k in ("gpus", "--mem", "partition", "account", "qos"))]
    assert not leaked


def test_additional_sbatch_options_take_flags_without_value_integers_and_strings(tmp_path, monkeypatch):
    sbatch = _sbatch_scripts(tmp_path, monkeypatch, (
        "additional: {exclusive: true, requeue: false, constraint: a100, gpus-per-task: 1}\n"
        "stages:\n  task: {additional: {exclusive: false, nice: 10}}\n"))
    pretrain, task = _sbatch_lines(sbatch["a/seed0/pretrain"]), _sbatch_lines(sbatch["a/seed0/tal"])
    for line in ("--exclusive", "--constraint=a100", "--gpus-per-task=1"):
        assert f"#SBATCH {line}" in pretrain
    assert "#SBATCH --nice=10" in task and "#SBATCH --constraint=a100" in task
    assert not [line for line in pretrain + task if "requeue" in line]  # false leaves the option out
    assert not [line for line in task if "exclusive" in line]


@pytest.mark.parametrize("text, where", [
    ("additional: {constraint: [a100, h100]}\n", r"additional\.constraint"),
    ("stages:\n  pretrain: {additional: {mem-per-cpu: 1.5}}\n", r"stages\.pretrain\.additional\.mem-per-cpu"),
    ("additional: {nodelist: null}\n", r"additional\.nodelist"),
], ids=["list", "float-in-stage", "null"])
def test_an_additional_sbatch_option_of_another_type_is_refused_naming_its_key(tmp_path, text, where):
    from clap_bench.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {where}: expected a string, an integer, or true for an sbatch flag"):
        load_cluster(path)


@pytest.mark.parametrize("pretrain", ["{tasks_per_node: 2}", "{nodes: 2}"])
def test_a_job_of_several_tasks_ends_its_whole_step_when_one_task_fails_and_a_one_task_job_is_left_as_it_was(
        tmp_path, monkeypatch, pretrain):
    # A DDP rank that dies would leave the other ranks in their collectives until the 24 h timeout.
    sbatch = _sbatch_scripts(tmp_path, monkeypatch, f"stages:\n  pretrain: {pretrain}\n")
    [srun] = [line for line in sbatch["a/seed0/pretrain"] if line.startswith("srun ")]
    assert " --kill-on-bad-exit=1 " in srun
    [srun] = [line for line in sbatch["a/seed0/tal"] if line.startswith("srun ")]
    assert "kill-on-bad-exit" not in srun


def test_a_slurm_sweep_without_sbatch_stops_before_preparing_data_or_writing_anything(tmp_path, monkeypatch):
    import clap_bench.config
    from typer.testing import CliRunner

    from clap_bench.cli import app

    which = slurm.shutil.which
    monkeypatch.setattr(slurm.shutil, "which", lambda name, *a, **k: None if name in ("sbatch", "squeue") else which(name, *a, **k))
    prepared = []
    monkeypatch.setattr(clap_bench.config, "resolve_datasets", lambda *a, **k: prepared.append(a))
    result = CliRunner().invoke(app, ["run", "--method", "clap", "--seeds", "1", "--profile", "smoke", "--executor", "slurm",
                                      "--cluster", str(REPO / "slurm" / "local.yaml"), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "--executor slurm: sbatch/squeue not found" in result.output
    assert not prepared and not list(tmp_path.rglob("*"))


@pytest.mark.parametrize("command", [["run", "--method", "clap", "--seeds", "1"], ["sweep", "--methods", "tac,clap", "--seeds", "1"]])
@pytest.mark.parametrize("executor", ["local", "debug"])
def test_a_local_run_under_torchrun_stops_before_preparing_data_or_running_a_stage(tmp_path, monkeypatch, command, executor):
    # Each torchrun process would run the plan: rank 0 holds a DDP stage's claim and waits in
    # init_process_group for rank 1, which waits for that claim (seen: until the process group's timeout).
    import clap_bench.config
    from typer.testing import CliRunner

    from clap_bench.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    prepared, ran = [], []
    monkeypatch.setattr(clap_bench.config, "resolve_datasets", lambda *a, **k: prepared.append(a))
    import clap_bench.runs

    monkeypatch.setattr(clap_bench.runs, "run_plan", lambda *a, **k: ran.append(a))  # what the command calls
    result = CliRunner().invoke(app, [*command, "--profile", "smoke", "--executor", executor, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert f"--executor {executor} under torchrun (WORLD_SIZE=2): a run is one process" in result.output
    assert not prepared and not ran and not list(tmp_path.rglob("*"))


# --------------------------------------------------------------------------- cluster profiles
@pytest.mark.parametrize("text, where", [
    ("tasks_per_node: 2\n", r"tasks_per_node \(used by the extract stages\): 2; expected 1"),
    ("nodes: 2\nstages:\n  extract: {nodes: 1}\n", r"nodes \(used by the task stages\): 2; expected 1"),
    ("stages:\n  extract: {tasks_per_node: 4}\n", r"stages\.extract\.tasks_per_node: 4; expected 1"),
    ("stages:\n  task: {nodes: 2}\n", r"stages\.task\.nodes: 2; expected 1"),
])
def test_a_cluster_profile_giving_extract_or_task_stages_several_tasks_is_refused_naming_file_and_key(tmp_path, text, where):
    from clap_bench.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {where}: .*would run the whole stage and write the same files"):
        load_cluster(path)


def test_several_tasks_for_pretrain_and_source_stages_only_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  pretrain: {nodes: 2, tasks_per_node: 4}\n  source: {tasks_per_node: 2}\n")
    cluster = load_cluster(path)
    assert cluster.for_stage("pretrain").tasks_per_node == 4 and cluster.for_stage("extract").tasks_per_node == 1
    for name in ("local.yaml", "example-gpu.yaml"):
        load_cluster(REPO / "slurm" / name)


def test_max_num_timeout_of_the_cluster_profile_sets_how_often_each_stages_job_is_requeued_on_its_time_limit(tmp_path, monkeypatch):
    requeues = {}

    class Recording(executors.submitit.AutoExecutor):
        def submit(self, job):
            requeues[job.spec.key] = self._executor.max_num_timeout
            return types.SimpleNamespace(job_id=str(100 + len(requeues)), paths=types.SimpleNamespace(stdout="o", stderr="e"))

    monkeypatch.setattr(executors.submitit, "AutoExecutor", Recording)
    monkeypatch.setattr(executors, "job_details", lambda ids: {j: JobState("UNKNOWN") for j in ids if j})
    (tmp_path / "c.yaml").write_text("max_num_timeout: 1\nstages:\n  pretrain: {max_num_timeout: 20}\n")
    store, plan = RunStore(tmp_path / "runs"), build_toy_plan(toy_profile(), ["a"], [0], steps=2)
    executors._submit(plan, store, load_cluster(tmp_path / "c.yaml"), lambda s: None, poll_s=0.01)
    assert requeues == {"a/seed0/pretrain": 20, "a/seed0/tal": 1}
    assert load_cluster(REPO / "slurm" / "local.yaml").max_num_timeout == 3  # submitit's default
    (tmp_path / "bad.yaml").write_text("stages:\n  task: {max_num_timeout: -1}\n")
    from clap_bench.config import ConfigError

    with pytest.raises(ConfigError, match=r"bad\.yaml: stages\.task\.max_num_timeout: expected an integer >= 0, got -1"):
        load_cluster(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text, kind, where", [
    ("gpus_per_node: 1\nstages:\n  pretrain: {tasks_per_node: 4}\n", "pretrain", r"stages\.pretrain\.tasks_per_node and gpus_per_node"),
    ("stages:\n  source: {gpus_per_node: 2, tasks_per_node: 4}\n", "source",
     r"stages\.source\.tasks_per_node and stages\.source\.gpus_per_node"),
], ids=["pretrain-4-on-1", "source-4-on-2"])
def test_more_ddp_tasks_than_gpus_per_node_is_refused_naming_file_stage_kind_and_both_values(tmp_path, text, kind, where):
    from clap_bench.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(text)
    gpus = 1 if kind == "pretrain" else 2
    with pytest.raises(ConfigError, match=(f"^{path}: {where}: the {kind} stages get tasks_per_node 4 with gpus_per_node {gpus}; "
                                           "expected tasks_per_node <= gpus_per_node: .*several processes would share a GPU")):
        load_cluster(path)


def test_ddp_tasks_up_to_the_gpu_count_or_on_cpus_only_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("gpus_per_node: 1\nstages:\n  pretrain: {gpus_per_node: 4, tasks_per_node: 4}\n"
                    "  source: {gpus_per_node: 0, tasks_per_node: 2}\n")
    cluster = load_cluster(path)
    assert (cluster.for_stage("pretrain").tasks_per_node, cluster.for_stage("source").tasks_per_node) == (4, 2)
