"""Stage claims: one process at a time runs a stage of the run store.

A process claims a stage folder before it runs (or prepares) the stage: an exclusive ``flock`` on
``.<stage>.lock`` beside the folder, which the kernel releases when the process ends, however it
ends (SIGKILL, a node's NFS lease expiring), plus ``claim.json`` in the folder saying who holds it
(host, pid, SLURM job id, since when). The lock file sits beside the folder, not in it, because a
folder of an old config hash is renamed aside (``store.archive_stage``) and must not take the
lock with it.

Another process that finds the stage claimed waits for the claim (saying who holds it), then
reuses the result or, when the holder died before finishing, takes the stage over: the stage
functions resume from what the folder holds (checkpoints, videos already extracted). A
``claim.json`` found by a process that just took the lock is therefore the record of a holder
that is gone. Holding the claim is also what makes reading safe: a stage's files (its HDF5
features) are read by downstream stages only after its ``metrics.json`` exists, and written only
by the claim's holder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from clap_bench.io import atomic_write_json

CLAIM_FILE = "claim.json"


def lock_path(stage_dir: Path) -> Path:
    stage_dir = Path(stage_dir)
    return stage_dir.parent / f".{stage_dir.name}.lock"


def owner_record() -> Dict[str, Any]:
    """Who this process is, as written into ``claim.json``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": slurm_job_id(),
            "slurm_restart": os.environ.get("SLURM_RESTART_COUNT"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def held_by_this_job(owner: Optional[Dict[str, Any]]) -> bool:
    """Whether ``owner`` (a claim record) is this SLURM job, in this start of it: the other tasks of a
    job of several tasks run a stage once their rank 0 holds its claim. The restart count tells a
    record left by an earlier start of a requeued job (same job id) from the current one."""
    job = slurm_job_id()
    return bool(owner and job and owner.get("slurm_job_id") == job
                and owner.get("slurm_restart") == os.environ.get("SLURM_RESTART_COUNT"))


def slurm_job_id() -> Optional[str]:
    # An array task is known to squeue as <array job>_<task>; a plain job by its id.
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def read_claim(stage_dir: Path) -> Optional[Dict[str, Any]]:
    import json

    try:
        return json.loads((Path(stage_dir) / CLAIM_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def describe_owner(owner: Optional[Dict[str, Any]]) -> str:
    if not owner:
        return "another process (it has not written claim.json yet)"
    text = f"pid {owner.get('pid')} on {owner.get('host')}"
    if owner.get("slurm_job_id"):
        text = f"SLURM job {owner['slurm_job_id']} ({text})"
    return text + (f" since {owner['since']}" if owner.get("since") else "")


def claim_holder(stage_dir: Path) -> Optional[Dict[str, Any]]:
    """The live holder of a stage's claim (``{}`` when it has not written its record yet), or None.

    Probes the lock with a shared, non-blocking ``flock``: it fails only while someone holds the
    exclusive claim. The probe is released at once.
    """
    path = lock_path(stage_dir)
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return read_claim(stage_dir) or {}
    finally:
        os.close(fd)  # closing drops the probe's lock too
    return None


class StageClaim:
    """The exclusive claim of this process on one stage folder (see the module docstring)."""

    def __init__(self, stage_dir: Path):
        self.stage_dir = Path(stage_dir)
        self.path = lock_path(self.stage_dir)
        self._fd: Optional[int] = None
        self.previous_owner: Optional[Dict[str, Any]] = None  # a claim.json left by a holder that died

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        self.previous_owner = read_claim(self.stage_dir)
        return True

    def acquire(self, wait: bool = True, on_wait: Optional[Callable[[Dict[str, Any]], None]] = None,
                poll_s: float = 0.5, retries_without_wait: int = 3) -> bool:
        """Take the claim; while another process holds it, wait (``wait=True``, calling ``on_wait``
        with the holder's record once) or give up (returns False). A few quick retries come first
        even without waiting: ``clapbench status`` probes the lock for an instant."""
        for _ in range(retries_without_wait):
            if self.try_acquire():
                return True
            time.sleep(0.1)
        if not wait:
            return False
        told = False
        while not self.try_acquire():
            if not told and on_wait is not None:
                owner = read_claim(self.stage_dir)
                if owner is None:  # the holder is just starting: give it a moment to say who it is
                    time.sleep(poll_s)
                    owner = read_claim(self.stage_dir)
                on_wait(owner or {})
                told = True
            time.sleep(poll_s)
        return True

    def record_owner(self) -> None:
        """Write ``claim.json`` (call once the folder is prepared: preparing may archive it)."""
        atomic_write_json(self.stage_dir / CLAIM_FILE, owner_record())

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            (self.stage_dir / CLAIM_FILE).unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StageClaim":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
