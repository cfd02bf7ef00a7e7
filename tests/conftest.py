"""Shared set-up of the test session.

- **Own cache and run store.** Before anything is imported or collected, ``$CLAPBENCH_CACHE`` is
  set to ``<repo>/.cache/test`` (ignored by git; the default benchmark and source model the tests
  generate are reused by later runs on the same checkout) and ``$CLAPBENCH_RUNS`` to a temporary
  folder removed at the end (``.ci/run`` checks that ``~/.cache/clap_bench`` and ``./results/runs``
  are unchanged by the suite).
- **Thread count.** Every test gets torch's global thread count back as it found it.
- ``real_annotations``: the real annotation files, from ``$CLAPBENCH_REAL_ANNOTATIONS`` or
  ``<repo>/../shared/real-annotations``, or a clean skip.
- ``slurm_cluster``: a local single-node SLURM cluster, started once before the first test (outside
  any test's timeout) when a selected test needs it. Where it cannot start, its tests skip with the
  reason, except under CI (``CI=true``), where they fail with the start script's output.
- ``default_benchmark`` tests (the acceptance checks on the default synthetic benchmark) run last.
  When one is selected, a background process at idle CPU priority generates the default benchmark,
  trains its source model and extracts that model's features of the two sets the tests read, into
  the test cache, from the start of the session, on the cycles the other tests leave free (about 13
  minutes of work on 2 cores, once per checkout); the tests then take the result through the
  cache's locks, or do the remaining work themselves if it failed.
  ``CLAPBENCH_TEST_BACKGROUND=0`` turns this off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = REPO / ".cache" / "test"
REAL_ANNOTATIONS_ENV = "CLAPBENCH_REAL_ANNOTATIONS"
REAL_ANNOTATIONS_BESIDE = REPO.parent / "shared" / "real-annotations"
SLURM_SCRIPTS = REPO / "slurm"

_session: dict = {}


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- own cache and run store
def pytest_configure(config):
    # Set before any test module imports the product, and inherited by the CLI subprocesses.
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["CLAPBENCH_CACHE"] = str(TEST_CACHE)
    runs = tempfile.mkdtemp(prefix="clapbench-test-runs-")
    os.environ["CLAPBENCH_RUNS"] = runs
    _session["runs"] = runs
    import torch  # the thread count every test ends with (see _restore_torch_threads)

    _session["threads"] = torch.get_num_threads()
    _session["deterministic"] = (torch.are_deterministic_algorithms_enabled(),
                                 torch.is_deterministic_algorithms_warn_only_enabled())


def pytest_sessionfinish(session, exitstatus):
    _stop_default_benchmark()
    _stop_slurm_cluster()
    if _session.get("runs"):
        shutil.rmtree(_session["runs"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests may pin torch's thread count; each test ends with the count the session started with.
    (Restoring the count a test *started* with is not enough: a module-scoped fixture that pinned one
    thread once left every later test of the session on one thread, and the default-benchmark
    acceptance tests 1.4x slower.) Likewise torch's deterministic-algorithms mode, which the
    product's ``seed_everything`` turns on for the rest of a stage's process."""
    import torch

    yield
    if torch.get_num_threads() != _session["threads"]:
        torch.set_num_threads(_session["threads"])
    enabled, warn_only = _session["deterministic"]
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (enabled, warn_only):
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# ---------------------------------------------------------------- real annotation files
@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """``$CLAPBENCH_REAL_ANNOTATIONS``, else ``<repo>/../shared/real-annotations``; skip when neither is a folder."""
    value = os.environ.get(REAL_ANNOTATIONS_ENV)
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            pytest.skip(f"{REAL_ANNOTATIONS_ENV}={value} is not a folder")
        return path
    if REAL_ANNOTATIONS_BESIDE.is_dir():
        return REAL_ANNOTATIONS_BESIDE
    pytest.skip(f"{REAL_ANNOTATIONS_ENV} is not set and {REAL_ANNOTATIONS_BESIDE} does not exist "
                "(point the variable at the real annotation files)")


# ---------------------------------------------------------------- default benchmark in the background
# What the acceptance tests of tests/test_main_job.py read: the default benchmark, its source model
# and that model's features of the ActivityNet-like and Charades-like sets, made with the thread count
# those tests use (the bits depend on it).
DEFAULT_BENCHMARK_DATASETS = ("activitynet", "charades-sta")
FEATURE_CODE = ("clap_bench/features", "clap_bench/clips", "clap_bench/encoders")
BACKGROUND_LOG = TEST_CACHE / "default-benchmark-background.log"


def default_benchmark_threads() -> int:
    return min(2, os.cpu_count() or 1)


def default_benchmark_features(dataset: str) -> Path:
    """The default profile's ``dataset`` through its source-pre-trained encoder, as an HDF5 file in
    the test cache, extracted on first use (under a lock: the background preparation and a test may
    ask at once). Keyed by the checkpoint's content, the dataset's identity (generator version and
    revision), the profile's clip and extraction settings and the code that extracts, so that a
    change to any of them extracts again."""
    import hashlib
    import json

    import torch

    from clap_bench.config import data_identity, load_profile
    from clap_bench.encoders import file_hash
    from clap_bench.features import extract_features
    from clap_bench.io import file_lock
    from clap_bench.training import source_pretrain

    before = torch.get_num_threads()
    torch.set_num_threads(default_benchmark_threads())
    try:
        profile = load_profile("default")
        checkpoint = source_pretrain(profile, progress=False)
        key = hashlib.sha256()
        key.update(json.dumps({"checkpoint": file_hash(checkpoint), "dataset": dataset, "data": data_identity(profile, dataset),
                               "threads": torch.get_num_threads(),
                               "clips": vars(profile.clips), "extract": vars(profile.extract)}, sort_keys=True, default=str).encode())
        for folder in FEATURE_CODE:
            for source in sorted((REPO / folder).rglob("*.py")):
                key.update(source.read_bytes())
        out = TEST_CACHE / "features" / f"default-{dataset}-{key.hexdigest()[:12]}.h5"
        with file_lock(out.with_name(out.name + ".lock")):
            return extract_features(profile, checkpoint, dataset, out, progress=False)
    finally:
        torch.set_num_threads(before)


def prepare_default_benchmark() -> None:
    """The background preparation's work (``python -c``, with the tests folder on ``PYTHONPATH``)."""
    for dataset in DEFAULT_BENCHMARK_DATASETS:
        print(f"{dataset} features:", default_benchmark_features(dataset), flush=True)


def pytest_collection_modifyitems(config, items):
    # Last, so that the background preparation has the rest of the session (a stable sort: the
    # order within each group is kept).
    items.sort(key=lambda item: item.get_closest_marker("default_benchmark") is not None)


def _idle_priority() -> None:
    """In the child before exec: run only on CPU time nothing else wants (SCHED_IDLE, else nice 19)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _start_default_benchmark() -> None:
    if os.environ.get("CLAPBENCH_TEST_BACKGROUND", "1").strip() == "0":
        return
    log = open(BACKGROUND_LOG, "w")
    # Passive OpenMP waits: with the default spinning, a thread of this idle-priority process that
    # got a free core spun at each barrier for its sibling, which had none (beside one busy core,
    # `python benchmarks/thread_layout.py`: 0.045 vs 0.340 encoder training steps/s, 7.6x). The
    # wait policy does not change the arithmetic.
    tests_dir = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    _session["background"] = subprocess.Popen(
        [sys.executable, "-c", "import conftest; conftest.prepare_default_benchmark()"], stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_idle_priority, cwd=REPO, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": path},
    )
    log.close()


def _stop_default_benchmark() -> None:
    """A preparation still running when the session ends (tests deselected or stopped early) is
    stopped; the cache's locks and checkpoints let the next session resume it."""
    proc = _session.get("background")
    if proc is None or proc.poll() is not None:
        return
    _session["background_stopped"] = True
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pytest_terminal_summary(terminalreporter):
    proc = _session.get("background")
    if proc is not None and proc.returncode not in (None, 0) and not _session.get("background_stopped"):
        terminalreporter.write_line(
            f"the background preparation of the default benchmark exited with {proc.returncode}; see {BACKGROUND_LOG}"
        )


# ---------------------------------------------------------------- SLURM cluster
def _scontrol_up() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in out


def _start_slurm_cluster() -> dict:
    """Run slurm/start_cluster.sh; returns ``{"ok": True, "started_here": bool}`` or ``{"ok": False, "reason": str}``."""
    if os.geteuid() != 0:
        return {"ok": False, "reason": "the SLURM tests start a local cluster with slurm/start_cluster.sh, which needs root"}
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return {"ok": False, "reason": "SLURM is not installed and there is no apt-get to install it"}
    was_up = _scontrol_up()
    try:
        proc = subprocess.run(["bash", str(SLURM_SCRIPTS / "start_cluster.sh")], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"ok": False, "reason": f"slurm/start_cluster.sh did not finish within 600 s; its output:\n{output[-3000:]}"}
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        tail = "\n".join(output.splitlines()[-40:]) or "(none)"
        return {"ok": False, "reason": f"slurm/start_cluster.sh failed (exit {proc.returncode}); its output:\n{tail}"}
    return {"ok": True, "started_here": not was_up}


def pytest_collection_finish(session):
    # pytest-timeout counts fixture set-up in the first test's time, so the cluster (an apt install
    # on a fresh machine) is brought up here, once the selected tests are known, before any test runs.
    if any(item.get_closest_marker("slurm") for item in session.items):
        _session["slurm"] = _start_slurm_cluster()
    if any(item.get_closest_marker("default_benchmark") for item in session.items):
        _start_default_benchmark()


def _stop_slurm_cluster() -> None:
    state = _session.pop("slurm", None)
    if state and state.get("ok") and state.get("started_here"):
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop_cluster.sh")], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The cluster started before the first test; a failed start skips, or fails under ``CI=true``."""
    state = _session.get("slurm")
    if state is None:  # a test that uses the fixture without the slurm marker
        state = _session["slurm"] = _start_slurm_cluster()
    if not state["ok"]:
        if _under_ci():
            pytest.fail(f"CI=true and the SLURM cluster is not available: {state['reason']}", pytrace=False)
        pytest.skip(state["reason"])
    return {"partition": "debug", "started_here": state["started_here"]}


@pytest.fixture
def cluster(slurm_cluster):
    """slurm/local.yaml, with the tests folder on the jobs' PYTHONPATH so they can unpickle test stages."""
    import dataclasses

    from clap_bench.runs import load_cluster

    profile = load_cluster(SLURM_SCRIPTS / "local.yaml")
    tests_dir = Path(__file__).resolve().parent
    return dataclasses.replace(profile, setup=profile.setup + [f"export PYTHONPATH={tests_dir}:${{PYTHONPATH:-}}"])
