"""Joining the process group: collectives wait long enough for the main process's solo work."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from clap_bench.training import distributed


def _join(monkeypatch) -> dict:
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    info = distributed.setup_distributed()
    assert (info.rank, info.world_size) == (0, 2)
    return seen


def test_the_process_group_waits_hours_not_torchs_default_minutes(monkeypatch):
    # TSP's global video features and each epoch's validation run on the main process alone while
    # the others wait at a barrier: NCCL's default 10 minutes would abort them on real data.
    monkeypatch.delenv("CLAPBENCH_DIST_TIMEOUT_MINUTES", raising=False)
    assert _join(monkeypatch)["timeout"] == timedelta(hours=24)
    monkeypatch.setenv("CLAPBENCH_DIST_TIMEOUT_MINUTES", "90")
    assert _join(monkeypatch)["timeout"] == timedelta(minutes=90)


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_timeout_that_is_not_a_positive_number_of_minutes_is_named(monkeypatch, value):
    monkeypatch.setenv("CLAPBENCH_DIST_TIMEOUT_MINUTES", value)
    with pytest.raises(ValueError, match=f"CLAPBENCH_DIST_TIMEOUT_MINUTES: expected a positive number of minutes, got '{value}'"):
        _join(monkeypatch)


# --------------------------------------------------------------------------- inside a submitit job of 2 tasks
def _submitit_task(monkeypatch, rank: int, inherited: dict) -> None:
    """The environment SLURM and submitit give task ``rank`` of a 2-task job; ``inherited``: variables
    the job took over from the shell that submitted it (all of torch's set first, so the test restores them)."""
    for name, value in dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_PROCID=str(rank),
                            SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
                            SLURM_JOB_NUM_NODES="1", SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS_PER_NODE="2").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SUBMITIT_FOLDER", "/nonexistent")
    for name in distributed.WORLD_VARS + ("CUDA_VISIBLE_DEVICES",):
        monkeypatch.setenv(name, "x")  # so that monkeypatch restores what the export writes
        monkeypatch.delenv(name)
    for name, value in inherited.items():
        monkeypatch.setenv(name, value)


INHERITED = [{}, {"MASTER_PORT": "29500"}, {"MASTER_ADDR": "elsewhere"}, {"RANK": "0"}, {"WORLD_SIZE": "1"},
             {"LOCAL_RANK": "0"}]


@pytest.mark.parametrize("inherited", INHERITED, ids=lambda d: ",".join(d) or "none")
def test_a_stage_job_task_joins_its_jobs_world_even_with_torch_variables_inherited_from_the_shell(monkeypatch, inherited):
    from clap_bench.runs import executors

    _submitit_task(monkeypatch, 1, inherited)
    seen = {}
    monkeypatch.setattr(executors, "run_stage", lambda *a, record=True, **k: seen.update(record=record) or {})
    executors.StageJob("/nonexistent", None, None, "h", {})()
    assert seen["record"] is False  # task 1 does not write the stage's record
    assert (distributed.os.environ["RANK"], distributed.os.environ["WORLD_SIZE"]) == ("1", "2")
    assert distributed.os.environ["MASTER_ADDR"] == "localhost"


@pytest.mark.parametrize("inherited", INHERITED, ids=lambda d: ",".join(d) or "none")
def test_the_trainer_joins_a_2_task_submitit_jobs_process_group_even_with_inherited_torch_variables(monkeypatch, inherited):
    _submitit_task(monkeypatch, 0, inherited)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)

    class Joined(Exception):
        pass

    def init_process_group(**kw):
        raise Joined(distributed.os.environ["WORLD_SIZE"])

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    with pytest.raises(Joined, match="^2$"):
        distributed.setup_distributed()


def test_a_2_task_job_whose_world_cannot_be_exported_fails_instead_of_running_each_task_alone(monkeypatch):
    import submitit

    _submitit_task(monkeypatch, 1, {})
    monkeypatch.setattr(submitit.helpers.TorchDistributedEnvironment, "export", lambda self, **kw: self)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="submitit job 4242 has 2 tasks but its process group was not set up"):
        distributed.setup_distributed()


def test_outside_a_submitit_job_the_rank_is_0_and_nothing_is_exported(monkeypatch):
    for name in ("SUBMITIT_EXECUTOR", "SUBMITIT_FOLDER", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.export_submitit_world() == 0
    assert "WORLD_SIZE" not in distributed.os.environ


@pytest.mark.parametrize("visible", ["2,3", None], ids=["gpus-2-3", "unset"])
def test_a_task_keeps_the_jobs_gpus_as_slurm_set_them_and_takes_its_local_ranks_one_of_them(monkeypatch, visible):
    # Without device cgroups SLURM gives the job physical GPUs 2 and 3; CUDA_VISIBLE_DEVICES=<local rank>
    # would put the tasks on GPUs 0 and 1, another job's.
    _submitit_task(monkeypatch, 1, {})
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert distributed.export_submitit_world() == 1
    assert distributed.os.environ.get("CUDA_VISIBLE_DEVICES") == visible
    assert distributed.os.environ["LOCAL_RANK"] == "1"

    chosen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: None)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 2)  # the two GPUs CUDA_VISIBLE_DEVICES shows
    monkeypatch.setattr(distributed.torch.cuda, "set_device", chosen.append)
    assert distributed.setup_distributed().local_rank == 1
    assert chosen == [1]  # the second visible GPU: physical GPU 3 under "2,3"
    assert distributed.os.environ.get("CUDA_VISIBLE_DEVICES") == visible
