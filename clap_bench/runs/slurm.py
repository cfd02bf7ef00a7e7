"""SLURM side of the run store: cluster profiles (``slurm/*.yaml``) and job-state queries.

A cluster profile is a small YAML file; its keys map onto submitit's ``AutoExecutor``
parameters. ``stages`` overrides them per kind of stage (``source``, ``pretrain``, ``extract``,
``task``), e.g. several GPUs and tasks for pre-training (run as DDP), one for the heads::

    partition: gpu
    gpus_per_node: 1
    cpus_per_task: 8
    mem_gb: 32
    timeout_min: 240
    signal_delay_s: 90     # USR2 this long before the limit: checkpoint, requeue, resume
    max_num_timeout: 3     # requeues on reaching the time limit (then the job ends TIMEOUT)
    account: null
    qos: null
    setup: ["module load cuda/12.1", "source ~/venvs/clap/bin/activate"]
    stages:
      pretrain: {gpus_per_node: 4, tasks_per_node: 4, timeout_min: 1440}
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from clap_bench.config import ConfigError, deep_merge, from_dict

log = logging.getLogger(__name__)

STAGE_KINDS = ("source", "pretrain", "extract", "task")
DDP_KINDS = ("source", "pretrain")  # trained with DDP over a job's tasks; the others run in one process
SINGLE_PROCESS_KINDS = ("extract", "task")
# States in which a job still holds its stage (it may yet finish).
ACTIVE_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
}
FAILED_STATES = {
    "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "REVOKED",
}
# Why SLURM cancelled a job (sacct's Reason), or keeps it pending, when a job it depends on (afterok) did not succeed.
DEPENDENCY_REASONS = ("Dependency", "DependencyNeverSatisfied")


@dataclass
class ClusterProfile:
    partition: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None
    timeout_min: int = 60
    # SLURM sends USR2 this long before the time limit; submitit then checkpoints and requeues the
    # job (the trainer first writes its checkpoint at its next training or validation batch): leave at
    # least one such batch's time.
    signal_delay_s: int = 90
    # How many times a job that reaches its time limit is requeued to resume from its checkpoint
    # (submitit's max_num_timeout; preemptions do not count). A pre-training longer than
    # (max_num_timeout + 1) x timeout_min needs more.
    max_num_timeout: int = 3
    account: Optional[str] = None
    qos: Optional[str] = None
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (modules, venv)
    # further sbatch options, e.g. {constraint: a100, exclusive: true}: a string or an integer gives
    # --key=value, true a flag without value (--exclusive), false leaves the option out
    additional: Dict[str, Any] = field(default_factory=dict)
    stages: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per stage kind overrides
    source: str = ""  # the file it was read from

    def for_stage(self, kind: str) -> "ClusterProfile":
        """This profile with the ``stages.<kind>`` overrides applied."""
        over = self.stages.get(kind) or {}
        if not over:
            return self
        base = dataclasses.asdict(self)
        base.pop("stages")
        merged = deep_merge(base, over)
        merged["stages"] = {}
        return from_dict(ClusterProfile, merged, f"{self.source}: stages.{kind}")

    def submitit_parameters(self, name: str, dependency: Optional[str] = None) -> Dict[str, Any]:
        params: Dict[str, Any] = {
            "name": name,
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "timeout_min": self.timeout_min,
            "slurm_signal_delay_s": self.signal_delay_s,
            "slurm_setup": list(self.setup),
        }
        if self.nodes * self.tasks_per_node > 1:
            # A task that exits non-zero (a DDP rank that died) ends the whole step: the other ranks
            # would otherwise wait in their collectives until the process group's timeout (24 h).
            params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.account:
            params["slurm_account"] = self.account
        if self.qos:
            params["slurm_qos"] = self.qos
        extra = {key: value for key, value in self.additional.items() if value is not False}  # True: submitit writes a bare flag
        if dependency:
            # a job whose upstream failed or was cancelled is removed instead of pending forever
            extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
        params["slurm_additional_parameters"] = extra
        return params


def load_cluster(path: str | Path) -> ClusterProfile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: cluster profile not found (see slurm/local.yaml and slurm/example-gpu.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of cluster settings")
    raw["source"] = str(path)
    profile = from_dict(ClusterProfile, raw, str(path))
    unknown = sorted(set(profile.stages) - set(STAGE_KINDS))
    if unknown:
        raise ConfigError(f"{path}: stages: unknown stage kind(s) {unknown}; expected some of {list(STAGE_KINDS)}")
    for kind in profile.stages:
        profile.for_stage(kind)  # validate the override keys now, not at submission time
    for kind in STAGE_KINDS:
        if profile.for_stage(kind).max_num_timeout < 0:
            where = f"stages.{kind}.max_num_timeout" if "max_num_timeout" in (profile.stages.get(kind) or {}) else "max_num_timeout"
            raise ConfigError(f"{path}: {where}: expected an integer >= 0, got {profile.for_stage(kind).max_num_timeout}")
    for kind in STAGE_KINDS:
        over = (profile.stages.get(kind) or {}).get("additional") or {}
        for key, value in profile.for_stage(kind).additional.items():
            if not isinstance(value, (str, int)):  # bool is an int
                where = f"stages.{kind}.additional.{key}" if key in over else f"additional.{key}"
                raise ConfigError(f"{path}: {where}: expected a string, an integer, or true for an sbatch flag without "
                                  f"value (false leaves it out), got {value!r}")
    for kind in DDP_KINDS:
        stage = profile.for_stage(kind)
        if 0 < stage.gpus_per_node < stage.tasks_per_node:
            over = profile.stages.get(kind) or {}
            where = " and ".join(f"stages.{kind}.{key}" if key in over else key for key in ("tasks_per_node", "gpus_per_node"))
            raise ConfigError(
                f"{path}: {where}: the {kind} stages get tasks_per_node {stage.tasks_per_node} with gpus_per_node "
                f"{stage.gpus_per_node}; expected tasks_per_node <= gpus_per_node: each task runs one DDP process on "
                f"one GPU, and several processes would share a GPU (set stages.{kind}.tasks_per_node: {stage.gpus_per_node}, "
                "or gpus_per_node: 0 for DDP on CPUs)")
    for kind in SINGLE_PROCESS_KINDS:
        stage = profile.for_stage(kind)
        for key in ("nodes", "tasks_per_node"):
            value = getattr(stage, key)
            if value > 1:
                where = f"stages.{kind}.{key}" if key in (profile.stages.get(kind) or {}) else f"{key} (used by the {kind} stages)"
                raise ConfigError(
                    f"{path}: {where}: {value}; expected 1: {kind} stages run in one process, and each of several tasks "
                    f"would run the whole stage and write the same files (only {' and '.join(DDP_KINDS)} stages run DDP "
                    f"over several tasks; set stages.{kind}.{key}: 1)")
    return profile


# --------------------------------------------------------------------------- job states
def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("squeue") is not None


class SlurmQueryError(RuntimeError):
    """A SLURM command could not be run or failed (a busy or restarting controller): no information
    about the jobs, which is not the same as jobs SLURM does not know."""


@dataclass(frozen=True)
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ... or UNKNOWN
    reason: str = ""  # squeue's / sacct's reason: why it waits or ended ("None" or "" when there is none)

    @property
    def upstream_failed(self) -> bool:
        """SLURM cancelled the job (``kill-on-invalid-dep``), or will never start it, because a job it
        waits for (``afterok``) failed or was cancelled. A job a user cancels has reason None."""
        return ((self.state == "CANCELLED" and self.reason in DEPENDENCY_REASONS)
                or (self.state == "PENDING" and self.reason == "DependencyNeverSatisfied"))


def job_states(job_ids: Iterable[str]) -> Dict[str, str]:
    """Current state of each job id (``job_details``' states)."""
    return {j: info.state for j, info in job_details(job_ids).items()}


def job_details(job_ids: Iterable[str]) -> Dict[str, JobState]:
    """State and reason of each job id: ``squeue`` for live jobs, ``sacct`` for finished ones.

    A job the controller and the accounting database both ignore is ``UNKNOWN``. When ``squeue``
    fails, nothing is known and ``SlurmQueryError`` is raised. When only ``sacct`` fails (no
    accounting, slurmdbd down), the jobs squeue does not list are ``UNKNOWN``: not queued nor running.
    """
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    found: Dict[str, JobState] = {}
    out = _run(["squeue", "-h", *_own_jobs(), "-o", "%A %T %r"])
    for line in out.splitlines():
        parts = line.split(maxsplit=2)  # a reason may hold spaces
        if len(parts) >= 2 and parts[0] in ids:
            found[parts[0]] = JobState(parts[1], parts[2].strip() if len(parts) > 2 else "")
    rest = [j for j in ids if j not in found]
    if rest:
        try:
            out = _run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,Reason", "-j", ",".join(rest)])
        except SlurmQueryError as e:
            log.warning("%s; jobs squeue does not list count as UNKNOWN", e)
            out = ""
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) >= 2 and parts[0] in rest:
                # "CANCELLED by 0" -> CANCELLED
                found[parts[0]] = JobState((parts[1].split() or ["UNKNOWN"])[0], parts[2].strip() if len(parts) > 2 else "")
    return {j: found.get(j, JobState("UNKNOWN")) for j in ids}


def _own_jobs() -> List[str]:
    """``-u <user>``: squeue lists only this user's jobs, not the whole cluster's (slow on a big one).
    Not ``-j <ids>``: some SLURM versions fail the whole call for an id that has left the queue. A job
    of another user (a shared run store) is then read from sacct, as a job that has left the queue."""
    try:
        return ["-u", getpass.getuser()]
    except (KeyError, OSError):  # no user name for this uid (a bare container): every user's jobs
        return []


def cancel(job_ids: Iterable[str]) -> bool:
    """``scancel`` the jobs; False (with a warning) when scancel failed."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return True
    try:
        _run(["scancel", *ids])
    except SlurmQueryError as e:
        log.warning("%s", e)
        return False
    return True


def _run(cmd: List[str], timeout_s: float = 30) -> str:
    """The command's stdout; ``SlurmQueryError`` naming the command when it cannot run, times out or fails."""
    what = " ".join(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SlurmQueryError(f"`{what}` timed out after {timeout_s:g} s") from None
    except OSError as e:
        raise SlurmQueryError(f"`{what}` could not run: {e}") from None
    if proc.returncode != 0:
        raise SlurmQueryError(f"`{what}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:] or 'no message'}")
    return proc.stdout


def with_job_threads(profile, cluster: "ClusterProfile"):
    """``profile`` with ``runtime.job_threads`` set from ``cluster``'s ``cpus_per_task`` per stage
    kind, unless ``runtime.threads`` pins one count (then jobs with fewer CPUs log a warning), and
    with ``runtime.job_processes`` set to the DDP process count (nodes x tasks_per_node) of the
    source and pretrain kinds where it is above 1 (it enters those stages' hashes)."""
    processes = {kind: cluster.for_stage(kind).nodes * cluster.for_stage(kind).tasks_per_node for kind in DDP_KINDS}
    runtime = dataclasses.replace(profile.runtime, job_processes={kind: n for kind, n in processes.items() if n > 1})
    if profile.runtime.threads is None:
        runtime = dataclasses.replace(runtime, job_threads={kind: cluster.for_stage(kind).cpus_per_task for kind in STAGE_KINDS})
    return dataclasses.replace(profile, runtime=runtime)
