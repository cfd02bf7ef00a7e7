"""``clapbench status``: the state of every (method, seed, stage) of a plan.

done     metrics.json present under the plan's config hash
stale    metrics.json present, but for another config (the next run redoes it)
running  a process holds its claim (the job or process is shown: SLURM job id, host and pid), or a
         SLURM job was submitted for it and is queued or running (job id and state from squeue/sacct)
failed   the stage raised (error.log), or its SLURM job ended without metrics (cancelled, timed out, ...)
cancelled  SLURM cancelled its job, or will never start it, because an upstream stage's job failed
         (the upstream stage that failed is named; the job never ran, so there is no log)
interrupted  stopped before it finished: Ctrl-C or a stop signal (its record says interrupted), or a
         process that died (its record says running, but no process holds the stage); the next run
         resumes it (``clapbench table`` names such a seed the same way)
damaged  one of its records (stage.json, metrics.json, slurm.json) is not valid JSON: the file and the
         error are shown; a run fails the stage until the file is deleted (``clapbench table`` leaves
         that seed out as unreadable)
missing  nothing yet
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from clap_bench.runs.claims import claim_holder, describe_owner
from clap_bench.runs.plan import Plan
from clap_bench.runs.slurm import ACTIVE_STATES, JobState, SlurmQueryError, job_details
from clap_bench.runs.store import (ERROR_FILE, SLURM_FILE, STAGE_FILE, RunStore, damaged_record_file, finished_metrics, read_json,
                                   tail_lines)

STATES = ("done", "stale", "running", "failed", "cancelled", "interrupted", "damaged", "missing")
log = logging.getLogger(__name__)


@dataclass
class StageStatus:
    key: str
    method: Optional[str]
    seed: Optional[int]
    stage: str
    state: str
    stage_dir: Path
    job_id: Optional[str] = None
    job_state: Optional[str] = None
    log_path: Optional[Path] = None
    error_tail: List[str] = field(default_factory=list)
    holder: Optional[dict] = None  # claim.json of the process running the stage now
    damaged: Optional[str] = None  # read_json's error for a record that is not valid JSON (it names the file)
    upstream: List[str] = field(default_factory=list)  # cancelled: the upstream stages (or jobs) that failed

    @property
    def detail(self) -> str:
        parts = []
        if self.holder is not None:
            parts.append(f"held by {describe_owner(self.holder)}")
        if self.job_id and not (self.holder and self.holder.get("slurm_job_id") == self.job_id):
            parts.append(f"job {self.job_id} {self.job_state or ''}".strip())
        if self.state == "cancelled":
            parts.append(f"upstream {', '.join(self.upstream)}" if self.upstream else "an upstream job failed")
        if self.log_path:
            parts.append(str(self.log_path))
        return "; ".join(parts)


def plan_status(plan: Plan, store: RunStore) -> List[StageStatus]:
    damaged = {key: damaged_record_file(plan.stage_dir(store, spec)) for key, spec in plan.stages.items()}
    slurm = {key: read_json(plan.stage_dir(store, spec) / SLURM_FILE) if not damaged[key] else None
             for key, spec in plan.stages.items()}
    holders = {key: claim_holder(plan.stage_dir(store, spec)) for key, spec in plan.stages.items()}
    try:
        jobs = job_details([s["job_id"] for s in slurm.values() if s and s.get("job_id")]
                           + [h["slurm_job_id"] for h in holders.values() if h and h.get("slurm_job_id")])
    except SlurmQueryError as e:
        log.warning("%s; the jobs' states are not shown", e)
        jobs = {}  # no information: a job is then neither running nor ended by its state
    states = {j: info.state for j, info in jobs.items()}
    out = []
    by_key = {}
    for key, spec in plan.stages.items():
        h = plan.hashes[key]
        stage_dir = plan.stage_dir(store, spec)
        status = StageStatus(key, spec.method, spec.seed, spec.name, "missing", stage_dir)
        if damaged[key]:  # its state cannot be read; a run fails it until the file is deleted
            status.state = "damaged"
            status.log_path, status.damaged = damaged[key]
            out.append(status)
            by_key[key] = status
            continue
        record = read_json(stage_dir / STAGE_FILE) or {}
        info = slurm.get(key)
        if info and info.get("hash") == h:
            status.job_id = info.get("job_id")
            status.job_state = states.get(status.job_id)
        holder = holders[key]
        if finished_metrics(stage_dir) is not None:
            status.state = "done" if record.get("hash") == h else "stale"
        elif holder is not None:  # a live process holds the claim, whatever the records say
            status.state = "running"
            status.holder = holder
            if holder.get("slurm_job_id"):
                status.job_id = holder["slurm_job_id"]
                status.job_state = states.get(status.job_id)
        elif record.get("hash") != h:
            status.state = "missing" if not record else "stale"
        elif status.job_id and jobs.get(status.job_id, JobState("UNKNOWN")).upstream_failed:
            # before "running": a job pending with DependencyNeverSatisfied never starts
            status.state = "cancelled"
            status.job_state = f"{status.job_state} ({jobs[status.job_id].reason})"
            status.upstream = _failed_upstream(spec, by_key) or [f"job {j}" for j in info.get("after") or []]
        elif status.job_id and status.job_state in ACTIVE_STATES:
            status.state = "running"
        elif status.job_id and status.job_state not in (None, "UNKNOWN"):
            # the job ended (cancelled, failed, timed out, or completed without writing metrics)
            status.state = "failed"
            status.log_path = Path(info["stderr"]) if info.get("stderr") else None
            error_file = stage_dir / ERROR_FILE
            status.error_tail = tail_lines(error_file) if error_file.is_file() else tail_lines(status.log_path) if status.log_path else []
            if (stage_dir / ERROR_FILE).is_file():
                status.log_path = stage_dir / ERROR_FILE
        elif record.get("status") == "failed":
            status.state = "failed"
            status.log_path = stage_dir / ERROR_FILE
            status.error_tail = tail_lines(status.log_path) or list(record.get("error_tail") or [])
        elif record.get("status") == "running" and _local_process_alive(record):
            status.state = "running"
        elif status.job_id and status.job_state in (None, "UNKNOWN") and record.get("status") == "submitted":
            status.state = "running"  # just submitted (not yet visible to squeue/sacct), or squeue failed
        elif record.get("status") in ("interrupted", "running"):
            status.state = "interrupted"  # stopped (Ctrl-C, a stop signal), or its process died while it ran
        out.append(status)
        by_key[key] = status
    return out


def _failed_upstream(spec, by_key: dict) -> List[str]:
    """The upstream stages at the root of a cancellation ("<key> <state>"): a cancelled upstream stage
    passes on the stages that cancelled it, so a chain names the stage that failed, not its neighbour."""
    names: List[str] = []
    for dep in spec.deps:
        up = by_key.get(dep)
        if up is None or up.state == "done":
            continue
        for name in (up.upstream if up.state == "cancelled" and up.upstream else [f"{dep} {up.state}"]):
            if name not in names:
                names.append(name)
    return names


def _local_process_alive(record: dict) -> bool:
    if record.get("slurm_job_id") or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return int(pid) != os.getpid()


def summarize(statuses: List[StageStatus]) -> dict:
    counts = {s: 0 for s in STATES}
    for st in statuses:
        counts[st.state] += 1
    return counts
