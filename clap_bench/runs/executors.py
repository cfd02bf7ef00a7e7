"""Running a plan: in this process (``local``), through submitit's debug executor (``debug``), or as
SLURM jobs through submitit (``slurm``).

Every executor skips a stage whose ``metrics.json`` exists under the same config hash (reuse)
and reruns any other: the stage functions resume from what their folder holds (checkpoints,
extracted videos), so an interrupted stage continues instead of restarting. A stage runs only
under its claim (``claims.py``), taken in the process that runs it (this one, or the SLURM job):
a stage another process is running is waited for and reused, never run twice, and one whose
holder died is taken over.

On SLURM each stage is one job; a stage waits for its upstream jobs with ``afterok``
dependencies (``kill-on-invalid-dep``: a job whose upstream failed is removed, not left pending; a
sweep waiting for its jobs reports its stage as cancelled, naming the upstream stage that failed).
Jobs are ``Checkpointable``: on timeout or preemption submitit requeues the same call, and the
stage resumes from its last checkpoint; a job requeued by the scheduler (``scontrol requeue``)
restarts the same call and resumes the same way. A job with several tasks (``tasks_per_node``
> 1 in the cluster profile, used for pre-training) exports the ``torch.distributed`` environment
of the job (``TorchDistributedEnvironment``) before the stage runs, so the trainer runs DDP; its
rank 0 claims the stage, and the other ranks run it only once ``claim.json`` names their job (or
reuse the result rank 0 reuses).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import submitit
from submitit.helpers import Checkpointable

from clap_bench.config import ConfigError, Profile
from clap_bench.io import atomic_write_json, file_lock
from clap_bench.runs.fingerprints import write_stage_fingerprints
from clap_bench.runs.plan import Plan, StageContext, StageSpec
from clap_bench.runs.slurm import ACTIVE_STATES, ClusterProfile, JobState, SlurmQueryError, cancel, job_details, slurm_available
from clap_bench.runs.claims import StageClaim, claim_holder, describe_owner, held_by_this_job, owner_record, slurm_job_id
from clap_bench.runs.store import (LOG_FILE, METRICS_FILE, SLURM_FILE, STAGE_FILE, RunStore, damaged_record, finished_metrics,
                                   read_json)

EXECUTORS = ("local", "debug", "slurm")
START_LINE = "stage started:"  # the first line a stage writes to its stage.log, once per start
log = logging.getLogger(__name__)


@dataclass
class RunReport:
    reused: List[str] = field(default_factory=list)
    ran: List[str] = field(default_factory=list)
    submitted: Dict[str, str] = field(default_factory=dict)  # stage key -> SLURM job id
    kept: Dict[str, str] = field(default_factory=dict)  # stage key -> job id of a job already queued
    failed: Dict[str, str] = field(default_factory=dict)  # stage key -> reason
    blocked: List[str] = field(default_factory=list)  # not run because an upstream stage failed
    held: Dict[str, str] = field(default_factory=dict)  # stage key -> who holds it (skipped without waiting)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


# --------------------------------------------------------------------------- one stage
@dataclass
class StageOutcome:
    """What ``claim_and_run`` did: ``ran`` the stage, ``reused`` a result (maybe after waiting for
    another process), or ``held`` (claimed elsewhere and ``wait=False``: nothing done)."""

    action: str
    metrics: Dict[str, Any] = field(default_factory=dict)
    holder: Optional[Dict[str, Any]] = None  # the claim holder waited for or skipped
    took_over: Optional[Dict[str, Any]] = None  # a holder that died before finishing


def claim_and_run(store_root: str, profile: Profile, spec: StageSpec, config_hash: str, inputs: Dict[str, str],
                  progress: bool = True, record: bool = True, prepare: Optional[tuple] = None, wait: bool = True,
                  echo: Optional[Callable[[str], None]] = None, input_hashes: Optional[Dict[str, str]] = None) -> StageOutcome:
    """Claim the stage's folder, then run it unless it is done; see ``clap_bench.runs.claims``.

    ``prepare=(record, resolved_config)`` prepares the folder (``RunStore.prepare``) under the claim.
    ``input_hashes`` (upstream stage name -> the plan's config hash of it): an upstream folder made
    under another config is not read (the stage fails, naming both hashes).
    ``record=False`` (non-zero DDP ranks of a job) neither claims nor records: rank 0 does both, and
    these ranks follow it (``_follow_rank_zero``).
    """
    echo = echo or _to_stderr  # in a SLURM job: its stderr log
    store = RunStore(store_root)
    stage_dir = store.stage_dir(profile.name, spec.method, spec.seed, spec.name)
    if store.is_done(stage_dir, config_hash):  # e.g. a requeued job whose stage had already finished
        return StageOutcome("reused", store.read_metrics(stage_dir) or {})
    if not record:
        reused = _follow_rank_zero(store, spec, config_hash, stage_dir, echo)
        if reused is not None:
            return StageOutcome("reused", reused)
        return StageOutcome("ran", _run_claimed(store, profile, spec, config_hash, inputs, stage_dir, progress, record=False,
                                                input_hashes=input_hashes))
    claim = StageClaim(stage_dir)
    holder: Dict[str, Any] = {}

    def on_wait(owner: Dict[str, Any]) -> None:
        holder.update(owner)
        echo(f"{spec.key}: claimed by {describe_owner(owner)}; waiting for it")

    if not claim.acquire(wait=wait, on_wait=on_wait):
        return StageOutcome("held", holder=claim_holder(stage_dir) or {})
    try:
        if store.is_done(stage_dir, config_hash):
            return StageOutcome("reused", store.read_metrics(stage_dir) or {}, holder=holder or None)
        if claim.previous_owner:
            echo(f"{spec.key}: taking over from {describe_owner(claim.previous_owner)}, which stopped before "
                 "finishing; resuming from what its folder holds")
        if prepare is not None:
            store.prepare(stage_dir, config_hash, *prepare)
        stage_dir.mkdir(parents=True, exist_ok=True)
        claim.record_owner()
        metrics = _run_claimed(store, profile, spec, config_hash, inputs, stage_dir, progress, record=True,
                               input_hashes=input_hashes)
        return StageOutcome("ran", metrics, holder=holder or None, took_over=claim.previous_owner)
    finally:
        claim.release()


RANK_POLL_S = 2.0  # how often a DDP rank other than 0 looks at the stage's claim
RANK_ORPHAN_S = 600.0  # ... and how long it waits for a claim nobody holds before it gives up


def _follow_rank_zero(store: RunStore, spec: StageSpec, config_hash: str, stage_dir: Path,
                      echo: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """On a DDP rank other than 0: wait for what rank 0 does with the stage's claim.

    Rank 0 may first wait for another holder, then reuse the result (returns its metrics: this rank
    reuses it too and its task exits 0, so the job succeeds) or run the stage, which it does once
    ``claim.json`` names this job (returns None: this rank runs the stage beside it and meets it in
    ``init_process_group``). A claim that nobody holds for ``RANK_ORPHAN_S`` while the stage is not done
    means rank 0 is gone (it failed before claiming): this rank fails instead of waiting for the time limit.
    """
    if slurm_job_id() is None:
        raise RuntimeError(f"stage {spec.key}: a rank other than 0 runs only in a SLURM job of several tasks "
                           "(it follows rank 0 by the job id in claim.json)")
    told: Optional[str] = None
    free_since: Optional[float] = None
    while True:
        if store.is_done(stage_dir, config_hash):
            if told is not None:
                echo(f"{spec.key}: done meanwhile; rank 0 reuses it, so does this rank")
            return store.read_metrics(stage_dir) or {}
        holder = claim_holder(stage_dir)
        if held_by_this_job(holder):
            echo(f"{spec.key}: rank 0 of this job holds the claim; running the stage with it")
            return None
        if holder is None:
            free_since = free_since or time.monotonic()
            if time.monotonic() - free_since > RANK_ORPHAN_S:
                raise RuntimeError(f"stage {spec.key}: nobody has claimed the stage for {RANK_ORPHAN_S:.0f} s and it is not "
                                   f"done ({stage_dir}); rank 0 of job {slurm_job_id()} is gone")
        else:
            free_since = None
        waiting = f"claimed by {describe_owner(holder)}" if holder is not None else "not claimed yet"
        if waiting != told:
            echo(f"{spec.key}: {waiting}; waiting for rank 0 of this job to claim it or to reuse its result")
            told = waiting
        time.sleep(RANK_POLL_S)


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_stage(store_root: str, profile: Profile, spec: StageSpec, config_hash: str, inputs: Dict[str, str],
              progress: bool = True, record: bool = True, prepare: Optional[tuple] = None,
              input_hashes: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run one stage in this process (waiting for another holder of its claim) and return its metrics."""
    return claim_and_run(store_root, profile, spec, config_hash, inputs, progress, record, prepare,
                         input_hashes=input_hashes).metrics


def _run_claimed(store: RunStore, profile: Profile, spec: StageSpec, config_hash: str, inputs: Dict[str, str],
                 stage_dir: Path, progress: bool, record: bool, input_hashes: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    stage_dir.mkdir(parents=True, exist_ok=True)
    for name, folder in inputs.items():  # never read an upstream stage's files before it finished, nor another config's
        if finished_metrics(Path(folder)) is None:
            raise RuntimeError(f"stage {spec.key}: upstream stage {name!r} has not finished ({folder}: no {METRICS_FILE} beside a record that says done)")
        expected = (input_hashes or {}).get(name)
        if expected is not None and not store.is_done(Path(folder), expected):
            recorded = (read_json(Path(folder) / STAGE_FILE) or {}).get("hash")
            raise RuntimeError(f"stage {spec.key}: upstream stage {name!r} in {folder} was made under config hash {recorded}, "
                               f"not {expected} as this plan's; rerun the plan to redo it under this config")
    if record:
        store.mark_running(stage_dir, {"slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    handler = logging.FileHandler(stage_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    if root_logger.level > logging.INFO:
        root_logger.setLevel(logging.INFO)
    try:
        if record:
            log.info("%s %s (hash %s) by %s", START_LINE, spec.key, config_hash, describe_owner(owner_record()))
        _set_threads(spec)
        ctx = StageContext(profile=profile, stage=spec.name, method=spec.method, seed=spec.seed, out_dir=stage_dir,
                           inputs={k: Path(v) for k, v in inputs.items()}, config=spec.config, progress=progress)
        metrics = spec.fn(ctx)
        if not isinstance(metrics, dict):
            raise TypeError(f"stage {spec.key}: {spec.fn.__module__}.{spec.fn.__name__} returned {type(metrics).__name__}, expected a dict")
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or a stop signal (TrainingInterrupted): not a failure
        if record:
            store.update_record(stage_dir, {"status": "interrupted", "interrupted_by": _stop_reason(e)})
        raise
    except BaseException:
        if record:
            store.mark_failed(stage_dir, traceback.format_exc())
        raise
    finally:
        root_logger.removeHandler(handler)
        handler.close()
    if record:
        write_stage_fingerprints(stage_dir, metrics)
        store.finish(stage_dir, metrics)
    return metrics


def _stop_reason(e: BaseException) -> str:
    """What stopped a stage: ``KeyboardInterrupt``, or ``SystemExit(<code>)`` (a subclass by its name)."""
    code = getattr(e, "code", None)
    return type(e).__name__ + (f"({code})" if code is not None else "")


def _set_threads(spec: StageSpec) -> None:
    """The stage's recorded thread count (``runtime.threads`` in its config, part of its hash), set once for the process."""
    threads = (spec.config.get("runtime") or {}).get("threads")
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if allocated.isdigit() and int(allocated) < int(threads):
        log.warning("stage %s: %d threads (runtime.threads, in its config hash) on %s allocated CPUs; "
                    "set runtime.threads in the profile to the jobs' cpus_per_task", spec.key, threads, allocated)


class StageJob(Checkpointable):
    """One stage as a submitit job; requeued with the same arguments on timeout or preemption."""

    def __init__(self, store_root: str, profile: Profile, spec: StageSpec, config_hash: str, inputs: Dict[str, str],
                 progress: bool = False, prepare: Optional[tuple] = None, input_hashes: Optional[Dict[str, str]] = None):
        self.store_root = store_root
        self.profile = profile
        self.spec = spec
        self.config_hash = config_hash
        self.inputs = inputs
        self.progress = progress
        self.prepare = prepare  # (record, resolved config): the folder is prepared again under the claim
        self.input_hashes = input_hashes  # upstream stage name -> the config hash this stage reads it under

    def __call__(self) -> Dict[str, Any]:
        from clap_bench.training.distributed import export_submitit_world

        rank = export_submitit_world()  # 0 when called directly, not inside a submitit job
        return run_stage(self.store_root, self.profile, self.spec, self.config_hash, self.inputs,
                         progress=self.progress, record=rank == 0, prepare=getattr(self, "prepare", None),
                         input_hashes=getattr(self, "input_hashes", None))  # getattr: jobs pickled before these existed


# --------------------------------------------------------------------------- whole plans
def run_plan(plan: Plan, store: RunStore, executor: str = "local", cluster: Optional[ClusterProfile] = None,
             wait: bool = True, progress: bool = True, echo: Callable[[str], None] = print,
             poll_s: float = 2.0, wait_for_claims: bool = True) -> RunReport:
    """Run (or submit) every stage of ``plan`` that is not done yet.

    A stage another process has claimed is waited for and reused (``wait_for_claims``), or skipped
    with the stages below it (``wait_for_claims=False``, reported in ``RunReport.held``).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: unknown {executor!r}; expected one of {', '.join(EXECUTORS)}")
    _record_profile(plan, store)
    if executor == "slurm":
        if cluster is None:
            raise ConfigError("--executor slurm needs --cluster slurm/<profile>.yaml")
        return _run_slurm(plan, store, cluster, wait, echo, poll_s)
    return _run_in_process(plan, store, executor, progress, echo, wait_for_claims)


def _record_profile(plan: Plan, store: RunStore) -> None:
    from clap_bench.config import to_dict

    atomic_write_json(store.profile_file(plan.profile.name), to_dict(plan.profile))


def _inputs(plan: Plan, store: RunStore, spec: StageSpec) -> Dict[str, str]:
    return {plan.stages[d].name: str(plan.stage_dir(store, plan.stages[d])) for d in spec.deps}


def _input_hashes(plan: Plan, spec: StageSpec) -> Dict[str, str]:
    return {plan.stages[d].name: plan.hashes[d] for d in spec.deps}


def _prepare_args(plan: Plan, spec: StageSpec) -> tuple:
    return ({"stage": spec.name, "method": spec.method, "seed": spec.seed, "profile": plan.profile.name},
            plan.resolved_config(spec))


def _run_in_process(plan: Plan, store: RunStore, executor: str, progress: bool, echo, wait_for_claims: bool = True) -> RunReport:
    report = RunReport()
    bad: set = set()
    held: set = set()
    debug_executor = None
    if executor == "debug":
        debug_executor = submitit.AutoExecutor(folder=str(store.submitit_dir(plan.profile.name) / "debug" / "%j"), cluster="debug")
    total = len(plan)
    for i, spec in enumerate(plan.seed_major(), start=1):
        h = plan.hashes[spec.key]
        stage_dir = plan.stage_dir(store, spec)
        where = f"[{i}/{total}] {spec.method or 'shared'}" + (f" seed {spec.seed}" if spec.seed is not None else "") + f": {spec.name}"
        damaged = damaged_record(stage_dir)
        if damaged is not None:
            bad.add(spec.key)
            report.failed[spec.key] = damaged
            echo(f"{where} FAILED: {damaged}")
            continue
        if store.is_done(stage_dir, h):
            report.reused.append(spec.key)
            echo(f"{where} (done, reused)")
            continue
        if any(d in bad for d in spec.deps):
            bad.add(spec.key)
            report.blocked.append(spec.key)
            echo(f"{where} (skipped: an upstream stage failed)")
            continue
        if any(d in held for d in spec.deps):
            held.add(spec.key)
            report.held[spec.key] = "upstream stage held by another process"
            echo(f"{where} (skipped: an upstream stage is held by another process)")
            continue
        echo(f"{where} -> {stage_dir}")
        start = time.time()
        try:
            if debug_executor is None:
                outcome = claim_and_run(str(store.root), plan.profile, spec, h, _inputs(plan, store, spec), progress=progress,
                                        prepare=_prepare_args(plan, spec), wait=wait_for_claims,
                                        input_hashes=_input_hashes(plan, spec),
                                        echo=lambda s, where=where: echo(f"{where}: {s.split(': ', 1)[-1]}"))
            else:
                job = debug_executor.submit(StageJob(str(store.root), plan.profile, spec, h, _inputs(plan, store, spec), progress,
                                                     prepare=_prepare_args(plan, spec), input_hashes=_input_hashes(plan, spec)))
                outcome = StageOutcome("ran", job.result())
        except KeyboardInterrupt:
            echo(f"{where} interrupted; rerun the same command to resume")
            raise
        except Exception as e:  # recorded in the stage folder; independent stages go on
            bad.add(spec.key)
            report.failed[spec.key] = f"{type(e).__name__}: {e}"
            echo(f"{where} FAILED after {time.time() - start:.1f}s: {type(e).__name__}: {e} (see {stage_dir / 'error.log'})")
            continue
        if outcome.action == "held":
            held.add(spec.key)
            report.held[spec.key] = describe_owner(outcome.holder)
            echo(f"{where} (skipped, --no-wait: claimed by {describe_owner(outcome.holder)})")
        elif outcome.action == "reused":
            report.reused.append(spec.key)
            echo(f"{where} (done by {describe_owner(outcome.holder)} meanwhile, reused)" if outcome.holder else f"{where} (done, reused)")
        else:
            report.ran.append(spec.key)
            echo(f"{where} done in {time.time() - start:.1f}s")
    return report


def _run_slurm(plan: Plan, store: RunStore, cluster: ClusterProfile, wait: bool, echo, poll_s: float) -> RunReport:
    if not slurm_available():
        raise ConfigError("--executor slurm: sbatch/squeue not found (start a local cluster with slurm/start_cluster.sh)")
    # One submission at a time per profile: two sweeps started together must each see the other's jobs.
    with file_lock(store.profile_dir(plan.profile.name) / ".submit.lock"):
        report, job_of = _submit(plan, store, cluster, echo, poll_s)
    if wait and job_of:
        _wait_for_jobs(plan, store, job_of, report, echo, poll_s)
    return report


def _submit(plan: Plan, store: RunStore, cluster: ClusterProfile, echo, poll_s: float = 2.0) -> tuple:
    """Submit every stage that is neither done nor queued or running under another job.

    Another job is known from the store: ``slurm.json`` (the job a submission recorded, while
    squeue/sacct call it active) and ``claim.json`` (the job or process holding the stage now).
    A stage held by a local process (no SLURM job) is submitted all the same: its job waits for the
    claim and then reuses the result, which keeps the ``afterok`` chain below it intact. A job still
    queued or running for the stage under another config hash (an earlier profile) is cancelled.
    """
    report = RunReport()
    folder = store.submitit_dir(plan.profile.name) / "%j"
    damaged = {key: damaged_record(plan.stage_dir(store, spec)) for key, spec in plan.stages.items()}
    damaged = {key: why for key, why in damaged.items() if why is not None}
    previous = {key: read_json(plan.stage_dir(store, spec) / SLURM_FILE) if key not in damaged else None
                for key, spec in plan.stages.items()}
    holders = {key: claim_holder(plan.stage_dir(store, spec)) for key, spec in plan.stages.items()}
    live = {job: info.state for job, info in _ask_job_states(
        [p["job_id"] for p in previous.values() if p]
        + [h["slurm_job_id"] for h in holders.values() if h and h.get("slurm_job_id")], echo, poll_s).items()}
    job_of: Dict[str, str] = {}  # stage key -> id of the job that will produce it
    fresh: set = set()  # stages (re)submitted now
    bad: set = set()  # stages with a damaged record, and the stages after them: not submitted
    for spec in plan:
        h = plan.hashes[spec.key]
        stage_dir = plan.stage_dir(store, spec)
        if spec.key in damaged:
            bad.add(spec.key)
            report.failed[spec.key] = damaged[spec.key]
            echo(f"{spec.key}: FAILED, not submitted: {damaged[spec.key]}")
            continue
        if store.is_done(stage_dir, h):
            report.reused.append(spec.key)
            continue
        if any(d in bad for d in spec.deps):
            bad.add(spec.key)
            report.blocked.append(spec.key)
            echo(f"{spec.key}: not submitted: an upstream stage failed")
            continue
        prev = previous.get(spec.key)
        holder = holders.get(spec.key) or {}
        holder_job = holder.get("slurm_job_id")
        other_config: Dict[str, str] = {}  # active job of the stage under another config -> its config hash
        if holder_job and live.get(holder_job) in ACTIVE_STATES:
            running = (read_json(stage_dir / STAGE_FILE) or {}).get("hash")
            if running == h:
                job_of[spec.key] = holder_job
                report.kept[spec.key] = holder_job
                echo(f"{spec.key}: running under job {holder_job} ({describe_owner(holder)}), not submitted again")
                continue
            other_config[holder_job] = running
        if prev and live.get(prev["job_id"]) in ACTIVE_STATES:
            if prev.get("hash") != h:
                other_config.setdefault(prev["job_id"], prev.get("hash"))
            elif not any(d in fresh for d in spec.deps):
                job_of[spec.key] = prev["job_id"]
                report.kept[spec.key] = prev["job_id"]
                echo(f"{spec.key}: job {prev['job_id']} already {live[prev['job_id']].lower()}")
                continue
            else:
                cancel([prev["job_id"]])  # its upstream is being rerun: it would wait on a dead job
        if other_config:
            # A job of another config would, when it runs, move this config's folder aside and leave
            # its own outputs there, for the jobs of the stages below to read.
            cancelled = cancel(list(other_config))
            echo(f"{spec.key}: {'cancelled' if cancelled else 'could not cancel'} job(s) "
                 + ", ".join(f"{j} (config hash {c})" for j, c in other_config.items()) + f" of another config than the plan's ({h})")
        # The stage is submitted under its claim when the claim is free: while this process holds it
        # nobody can finish the stage, so "not done" is checked again, the job submitted and the record
        # set to "submitted" with no gap in which a local run could finish the stage and then see its
        # "done" overwritten (the job itself waits for the claim, released just after). A claim held by
        # another process (a local run) is left alone: the job is submitted all the same (it waits for
        # the claim and reuses the result, keeping the afterok chain below it) and the holder keeps the record.
        claim = StageClaim(stage_dir)
        claimed = claim.try_acquire()
        try:
            if claimed and store.is_done(stage_dir, h):
                report.reused.append(spec.key)
                echo(f"{spec.key}: finished meanwhile, not submitted")
                continue
            if claimed:
                store.prepare(stage_dir, h, *_prepare_args(plan, spec))
            else:
                echo(f"{spec.key}: claimed by {describe_owner(claim_holder(stage_dir))}; its job will wait for the claim "
                     "and reuse the result")
            job, deps = _submit_stage(plan, store, cluster, folder, spec, job_of)
            history = ((prev or {}).get("history") or []) + ([prev["job_id"]] if prev else [])
            stage_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(stage_dir / SLURM_FILE, {
                "job_id": str(job.job_id), "hash": h, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "after": deps, "history": history,
            })
            if claimed:
                store.update_record(stage_dir, {"status": "submitted", "slurm_job_id": str(job.job_id)})
        finally:
            claim.release()
        job_of[spec.key] = str(job.job_id)
        fresh.add(spec.key)
        report.submitted[spec.key] = str(job.job_id)
        echo(f"{spec.key}: submitted job {job.job_id}" + (f" (after {', '.join(deps)})" if deps else ""))
    return report, job_of


def _submit_stage(plan: Plan, store: RunStore, cluster: ClusterProfile, folder: Path, spec: StageSpec,
                  job_of: Dict[str, str]) -> tuple:
    """Submit one stage's job, after the jobs of its upstream stages (``afterok``); returns (job, their ids).

    Each job gets an executor of its own: ``update_parameters`` merges into the executor's earlier
    settings and ``submitit_parameters`` leaves out the keys at 0/null, so a shared executor would
    pass one stage's GPUs, memory, partition, account or QOS on to the next stage's job."""
    deps = [job_of[d] for d in spec.deps if d in job_of]
    stage_cluster = cluster.for_stage(spec.resources)
    params = stage_cluster.submitit_parameters(
        name=f"{(spec.method or 'shared').replace('/', '_')}-s{spec.seed if spec.seed is not None else 'x'}-{spec.name}",
        dependency="afterok:" + ":".join(deps) if deps else None,
    )
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=stage_cluster.max_num_timeout)
    executor.update_parameters(**params)
    job = executor.submit(StageJob(str(store.root), plan.profile, spec, plan.hashes[spec.key], _inputs(plan, store, spec),
                                   prepare=_prepare_args(plan, spec), input_hashes=_input_hashes(plan, spec)))
    return job, deps


def _wait_for_jobs(plan: Plan, store: RunStore, job_of: Dict[str, str], report: RunReport, echo, poll_s: float) -> None:
    """Wait until every job in ``job_of`` (stage key -> job id) has ended, and report each stage: done,
    failed (its job ended without metrics), or, as ``clapbench status`` shows it, cancelled because an
    upstream stage failed (SLURM cancelled its job, ``kill-on-invalid-dep``, or will never start it):
    such a stage is not run because of another's failure (``report.blocked``), and the stage at the
    root of the chain is named. A job still pending after a stage that will never start is not waited
    for either: it would wait for ever."""
    pending = dict(job_of)  # in plan order: a stage's upstream stages come first, so are decided first
    roots: Dict[str, List[str]] = {}  # cancelled stage -> the upstream stages that failed
    while pending:
        jobs = _ask_job_states(pending.values(), echo, poll_s)
        for key, job_id in list(pending.items()):
            info = jobs[job_id]
            state = info.state
            spec = plan.stages[key]
            cancelled = info.upstream_failed or (state == "PENDING" and any(d in roots for d in spec.deps))
            if not cancelled and (state in ACTIVE_STATES or state == "UNKNOWN" and not _grace_over(store, plan, spec)):
                continue
            del pending[key]
            if store.is_done(plan.stage_dir(store, spec), plan.hashes[key]):
                report.ran.append(key)
                echo(f"{key}: done (job {job_id})")
            elif cancelled:
                roots[key] = _failed_upstream(spec, report, roots, pending, jobs)
                report.blocked.append(key)
                upstream = f"upstream {', '.join(roots[key])}" if roots[key] else "an upstream job failed"
                echo(f"{key}: cancelled (job {job_id} {state} ({info.reason})): {upstream}")
            else:
                report.failed[key] = f"job {job_id} ended {state}"
                echo(f"{key}: job {job_id} ended {state} without metrics")
        if pending:
            time.sleep(poll_s)


def _failed_upstream(spec: StageSpec, report: RunReport, roots: Dict[str, List[str]], pending: Dict[str, str],
                     jobs: Dict[str, JobState]) -> List[str]:
    """The upstream stages at the root of a cancellation, as ``clapbench status`` names them ("<key>
    failed"): a cancelled upstream stage passes on its own roots. An upstream stage still undecided
    (its job not yet known to squeue nor sacct) is named with its job's state."""
    names: List[str] = []
    for dep in spec.deps:
        if dep in roots:
            found = roots[dep] or [f"{dep} cancelled"]
        elif dep in report.failed:
            found = [f"{dep} failed"]
        elif dep in pending:
            found = [f"{dep} (job {pending[dep]} {jobs.get(pending[dep], JobState('UNKNOWN')).state})"]
        else:  # done, reused, or not waited for here
            found = []
        names.extend(name for name in found if name not in names)
    return names


QUERY_PATIENCE_S = 600.0  # how long squeue may keep failing before a submission or a wait gives up


def _ask_job_states(job_ids, echo, poll_s: float) -> Dict[str, JobState]:
    """``job_details`` (state and reason of each job), asked again while squeue cannot be reached (a
    busy or restarting controller): a failed query says nothing about the jobs, so nothing is decided on
    it. After ``QUERY_PATIENCE_S`` of failures in a row, ``SlurmQueryError`` names the command and its last error."""
    job_ids = list(job_ids)
    tries, since = 0, time.monotonic()
    while True:
        try:
            states = job_details(job_ids)
        except SlurmQueryError as e:
            tries += 1
            waited = time.monotonic() - since
            if waited >= QUERY_PATIENCE_S:
                raise SlurmQueryError(f"{e}; still failing after {tries} tries over {waited:.0f} s, so the job states are "
                                      "unknown (the jobs may still be running: see clapbench status)") from None
            if tries == 1:
                echo(f"cannot read the job states: {e}; asking again every {poll_s:g} s")
            time.sleep(poll_s)
            continue
        if tries:
            echo(f"job states read again after {tries} failed tries")
        return states


def _grace_over(store: RunStore, plan: Plan, spec: StageSpec, grace_s: float = 60.0) -> bool:
    """A job neither squeue nor sacct knows yet: wait a while (accounting lags) before calling it lost."""
    info = read_json(plan.stage_dir(store, spec) / SLURM_FILE) or {}
    try:
        submitted = time.mktime(time.strptime(info.get("submitted", ""), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return True
    return time.time() - submitted > grace_s
