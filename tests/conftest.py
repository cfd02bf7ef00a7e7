"""Shared fixtures. ``real_annotations``: the folder of real annotation files, or a clean skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_ANNOTATIONS_ENV = "CLAPBENCH_REAL_ANNOTATIONS"


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The folder named by $CLAPBENCH_REAL_ANNOTATIONS (published annotation files); skip when unavailable."""
    value = os.environ.get(REAL_ANNOTATIONS_ENV)
    if not value:
        pytest.skip(f"{REAL_ANNOTATIONS_ENV} is not set (point it at the real annotation files)")
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.skip(f"{REAL_ANNOTATIONS_ENV}={value} is not a folder")
    return path


# ---------------------------------------------------------------- slurm_cluster (run store / SLURM tests)
SLURM_SCRIPTS = Path(__file__).resolve().parent.parent / "slurm"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (slurm/start_cluster.sh), started here when it is not up.

    Skips with the reason where it cannot run: not root, no apt to install the packages, or a
    start failure (the tail of the script's log is in the reason). A cluster this fixture started
    is stopped at the end of the session; one that was already running is left alone.
    """
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("the SLURM tests start a local cluster with slurm/start_cluster.sh, which needs root")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")

    def up() -> bool:
        try:
            out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "UP" in out

    was_up = up()
    try:
        proc = subprocess.run(["bash", str(SLURM_SCRIPTS / "start_cluster.sh")], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("slurm/start_cluster.sh did not finish within 600 s")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        pytest.skip(f"slurm/start_cluster.sh failed (exit {proc.returncode}):\n{tail}")
    yield {"partition": "debug", "started_here": not was_up}
    if not was_up:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop_cluster.sh")], capture_output=True, timeout=120)
# ---------------------------------------------------------------- end slurm_cluster
