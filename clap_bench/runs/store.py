"""The run store: where every stage of every (profile, method, seed) keeps its files.

Layout (the one place these paths are built)::

    <root>/<profile>/profile.json                      resolved profile of the last run
    <root>/<profile>/_shared/<stage>/                  stages run once per profile (source pre-training)
    <root>/<profile>/<method>/seed<k>/<stage>/         everything else
    <root>/<profile>/<method>/seed<k>/.<stage>.lock    the stage's claim (``claims.py``), beside its folder
    <root>/<profile>/<method>/_variance/seed<k>/<task>/head<h>/   heads ``analyze variance`` trained on
                                                       that task stage's inputs (``variance_dir``): the
                                                       task's outputs with its metrics.json, and head.json
                                                       {"stage_hash", "head_seed", "task_config"}: the
                                                       task stage it was trained for (a table averages
                                                       it only while that stage is in place), its head
                                                       seed and the tasks.<task> config it trained with
        config.yaml   the stage's resolved config (what its hash covers)
        stage.json    {"hash", "status", "stage", "method", "seed", times, host/pid, error tail}
        slurm.json    job id(s) when submitted to SLURM
        claim.json    who runs the stage now (host, pid, SLURM job): present while it runs, or left by one that died
        stage.log     the stage's own log lines; error.log on failure
        metrics.json  written atomically and LAST: its presence, with ``stage.json`` saying done under a
                      matching hash, means done (``finished_metrics``)
    <root>/<profile>/_submitit/                        submitit's job folders (stdout/stderr per job)

A stage is keyed by the hash of its resolved config (see ``plan.py``). When a stage is prepared
with a hash that differs from the one recorded in its folder, the old folder is kept but renamed
to ``<stage>@<old hash>`` (never read again, never aggregated) and the stage starts afresh in
``<stage>/``: so ``<stage>/`` always holds the latest config's run, and nothing is silently mixed.
The heads ``analyze variance`` trained beside a task stage move aside with it, under the same name.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import json
import yaml

from clap_bench.io import atomic_write_json, atomic_write_text

RUNS_ENV = "CLAPBENCH_RUNS"
DEFAULT_RUNS_DIR = Path("results") / "runs"
SHARED = "_shared"
SUBMITIT = "_submitit"
VARIANCE = "_variance"

METRICS_FILE = "metrics.json"
STAGE_FILE = "stage.json"
CONFIG_FILE = "config.yaml"
SLURM_FILE = "slurm.json"
LOG_FILE = "stage.log"
ERROR_FILE = "error.log"

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def runs_root(runs_dir: Optional[os.PathLike | str] = None) -> Path:
    """``--runs-dir`` if given, else ``$CLAPBENCH_RUNS``, else ``./results/runs``."""
    if runs_dir:
        return Path(runs_dir).expanduser()
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser() if env else DEFAULT_RUNS_DIR


def method_dir_name(method: str) -> str:
    """Folder name of a method. External features ``features:/x/videoclip.h5`` -> ``features-videoclip``."""
    if method.startswith("features:"):
        target = Path(method.split(":", 1)[1])
        stem = target.stem if target.suffix == ".h5" else target.name
        return "features-" + (_SAFE.sub("_", stem) or "external")
    return _SAFE.sub("_", method)


def same_method(a: str, b: str) -> bool:
    """Whether two method names mean one method: equal, or external features naming the same file
    or folder (``features:feats.h5`` and ``features:/abs/feats.h5`` typed from its folder)."""
    if a == b:
        return True
    prefix = "features:"
    if not (a.startswith(prefix) and b.startswith(prefix)):
        return False

    def target(m: str) -> Path:
        return Path(os.path.expanduser(m[len(prefix):])).resolve()

    return target(a) == target(b)


def folder_clash_advice(method: str) -> str:
    """What to do when ``method`` shares its folder with another method."""
    if method.startswith("features:"):
        target = Path(os.path.expanduser(method.split(":", 1)[1])).resolve()
        if not target.name:
            return "The folder of features:PATH is named after the file or folder name; name one of them differently"
        other = target.with_name(target.stem + "-2" + target.suffix) if target.suffix == ".h5" else target.with_name(target.name + "-2")
        return (f"The folder of features:PATH is named after the file or folder name; to keep both, name one "
                f"of them differently, e.g. through a link: ln -s {target} {other}, then features:{other} "
                f"(or run it with another --runs-dir)")
    return "The folder of a method is named after it; run one of them with another --runs-dir"


def method_folder_clash(profile: str, folder: str, method: str, other: str, where: str) -> str:
    return (f"methods {other!r} and {method!r} share the run store folder {folder!r} of profile {profile!r} "
            f"({where}): each run of one would move the other's stages aside, and the tables would show only one. "
            + folder_clash_advice(method))


class RunStore:
    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    def profile_dir(self, profile: str) -> Path:
        return self.root / profile

    def seed_dir(self, profile: str, method: str, seed: int) -> Path:
        return self.profile_dir(profile) / method_dir_name(method) / f"seed{seed}"

    def stage_dir(self, profile: str, method: Optional[str], seed: Optional[int], stage: str) -> Path:
        if method is None:  # shared by every method: once per profile, or once per seed
            shared = self.profile_dir(profile) / SHARED
            return shared / stage if seed is None else shared / f"seed{seed}" / stage
        return self.seed_dir(profile, method, seed) / stage

    def variance_dir(self, profile: str, method: str, seed: int, task: str, head: int) -> Path:
        """Where ``analyze variance`` trains head ``head`` of (method, seed)'s ``task`` stage."""
        return self.profile_dir(profile) / method_dir_name(method) / VARIANCE / f"seed{seed}" / task / f"head{head}"

    def submitit_dir(self, profile: str) -> Path:
        return self.profile_dir(profile) / SUBMITIT

    def profile_file(self, profile: str) -> Path:
        return self.profile_dir(profile) / "profile.json"

    def recorded_profile(self, profile: str):
        """The resolved profile the last run of ``profile`` used (``clap_bench.config.Profile``), or None."""
        from clap_bench.config import Profile, from_dict

        path = self.profile_file(profile)
        raw = read_json(path)
        return None if raw is None else from_dict(Profile, raw, str(path))

    def resolve_profile(self, arg: str):
        """The profile a ``--profile`` argument means when reading this store: for a name the store
        has runs of, the config those runs were made with (so a profile made from a YAML file is
        found by its name); otherwise ``load_profile(arg)`` (a built-in name or a YAML file, whose
        ``name`` is then the store's folder)."""
        from clap_bench.config import load_profile

        recorded = self.recorded_profile(arg) if not Path(arg).suffix else None
        return recorded if recorded is not None else load_profile(arg)

    def thread_counts(self, profile: str) -> Dict[str, int]:
        """The thread count per stage kind (source, pretrain, extract, task) the store's stages of
        ``profile`` were planned with: from ``profile.json`` (its ``runtime.job_threads``, else its
        ``runtime.threads``), or for a store recorded before the counts were (a local run leaves
        ``runtime`` empty), the one count its current stages' configs hold per kind. ``{}`` for a
        fresh store, or where the stages disagree."""
        from clap_bench.runs.slurm import STAGE_KINDS

        path = self.profile_file(profile)
        try:
            raw = read_json(path) or {}
        except ValueError as e:
            from clap_bench.config import ConfigError

            raise ConfigError(f"{e} (it records the profile's thread counts, and is written again by the next run)") from None
        runtime = raw.get("runtime") if isinstance(raw.get("runtime"), dict) else {}
        job_threads = runtime.get("job_threads") if isinstance(runtime.get("job_threads"), dict) else {}
        counts = {kind: job_threads.get(kind, runtime.get("threads")) for kind in STAGE_KINDS}
        counts = {kind: n for kind, n in counts.items() if isinstance(n, int) and not isinstance(n, bool) and n >= 1}
        if counts:
            return counts
        seen: Dict[str, set] = {}
        profile_dir = self.profile_dir(profile)
        for config_file in profile_dir.glob("**/" + CONFIG_FILE) if profile_dir.is_dir() else ():
            rel = config_file.relative_to(profile_dir).parts
            if any("@" in part for part in rel) or rel[0] in (SUBMITIT, VARIANCE) or VARIANCE in rel:
                continue
            try:
                resolved = yaml.safe_load(config_file.read_text())
                threads = resolved["config"]["runtime"]["threads"]
            except (OSError, yaml.YAMLError, KeyError, TypeError):
                continue
            if isinstance(threads, int) and threads >= 1:
                seen.setdefault(_stage_kind(str(resolved.get("stage") or rel[-2])), set()).add(threads)
        return {kind: next(iter(values)) for kind, values in seen.items() if len(values) == 1}

    # ------------------------------------------------------------------ listing
    def profiles(self) -> List[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_"))

    def methods(self, profile: str) -> List[str]:
        """Method folder names of a profile (shared stages and submitit folders excluded)."""
        base = self.profile_dir(profile)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("_"))

    def seeds(self, profile: str, method: str) -> List[int]:
        base = self.profile_dir(profile) / method_dir_name(method)
        if not base.is_dir():
            return []
        out = []
        for p in base.iterdir():
            m = re.fullmatch(r"seed(\d+)", p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def recorded_methods(self, profile: str, method_dir: str) -> Dict[str, Path]:
        """The methods the current stage records of a method folder name (``stage.json``'s ``method``),
        each with one of its stage folders; damaged records are left out (``status`` names them)."""
        found: Dict[str, Path] = {}
        for stage, method in self._stage_methods(profile, method_dir, archived=False):
            found.setdefault(method, stage)
        return found

    def _stage_methods(self, profile: str, method_dir: str, archived: bool = True) -> Iterator[Tuple[Path, str]]:
        """``(stage folder, method)`` of every stage record of a method folder that names its method, seed
        by seed; damaged records are passed over; ``archived=False`` leaves out stages moved aside (``@``)."""
        for seed in self.seeds(profile, method_dir):
            for stage in sorted(self.seed_dir(profile, method_dir, seed).iterdir()):
                # the stages' claim lock files sit beside their folders
                if not stage.is_dir() or (not archived and "@" in stage.name):
                    continue
                try:
                    record = read_json(stage / STAGE_FILE)
                except ValueError:
                    continue
                if record and record.get("method"):
                    yield stage, record["method"]

    def check_method_folder(self, profile: str, method: str) -> None:
        """Raise ``ConfigError`` when ``method``'s folder holds the stages of another method that maps
        to the same folder name (``features:/a/feats.h5`` and ``features:/b/feats.h5``): running it
        would move that method's stages aside, and rerunning either would flip them forever."""
        from clap_bench.config import ConfigError

        folder = method_dir_name(method)
        for other, stage in self.recorded_methods(profile, folder).items():
            if not same_method(other, method):
                raise ConfigError(method_folder_clash(profile, folder, method, other,
                                                      f"{self.profile_dir(profile) / folder} holds {other!r}'s stages, "
                                                      f"e.g. {stage / STAGE_FILE}"))

    def method_label(self, profile: str, method_dir: str) -> str:
        """The method as the user named it (``features:PATH`` keeps its path), read from a stage record;
        a damaged record is passed over (the table and status name it where they read that stage)."""
        return next((method for _, method in self._stage_methods(profile, method_dir)), method_dir)

    # ------------------------------------------------------------------ stage records
    def prepare(self, stage_dir: Path, config_hash: str, record: Dict[str, Any], config: Dict[str, Any]) -> None:
        """Make ``stage_dir`` hold the stage of ``config_hash``: archive a folder of another hash,
        then write the resolved config and a ``stage.json`` with status ``pending`` if none is there."""
        current = read_json(stage_dir / STAGE_FILE)
        asked, recorded = record.get("method"), (current or {}).get("method")
        if asked and recorded and not same_method(asked, recorded):  # never move another method's stage aside
            from clap_bench.config import ConfigError

            folder = stage_dir.parent.parent.name
            raise ConfigError(method_folder_clash(record.get("profile") or stage_dir.parent.parent.parent.name, folder,
                                                  asked, recorded, f"{stage_dir / STAGE_FILE} records {recorded!r}"))
        if current is not None and current.get("hash") != config_hash:
            _archive_with_variance_heads(stage_dir, current.get("hash") or "unknown")
            current = None
        elif current is None and stage_dir.is_dir() and any(stage_dir.iterdir()):
            # files without a record (e.g. a crash before the record was written): keep them aside
            _archive_with_variance_heads(stage_dir, "unrecorded")
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=True))
        if current is None:
            self.update_record(stage_dir, {**record, "hash": config_hash, "status": "pending", "created": _now()})

    def update_record(self, stage_dir: Path, changes: Dict[str, Any]) -> Dict[str, Any]:
        record = read_json(stage_dir / STAGE_FILE) or {}
        record.update(changes)
        record["updated"] = _now()
        atomic_write_json(stage_dir / STAGE_FILE, record)
        return record

    def mark_running(self, stage_dir: Path, extra: Optional[Dict[str, Any]] = None) -> None:
        (stage_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier failed attempt
        self.update_record(stage_dir, {"status": "running", "started": _now(), "host": socket.gethostname(),
                                       "pid": os.getpid(), **(extra or {})})

    def mark_failed(self, stage_dir: Path, error_text: str) -> None:
        atomic_write_text(stage_dir / ERROR_FILE, error_text)
        tail = error_text.strip().splitlines()[-8:]
        self.update_record(stage_dir, {"status": "failed", "finished": _now(), "error_tail": tail})

    def finish(self, stage_dir: Path, metrics: Dict[str, Any]) -> None:
        """Record success: ``stage.json`` first, ``metrics.json`` last (its presence = done)."""
        self.update_record(stage_dir, {"status": "done", "finished": _now()})
        atomic_write_json(stage_dir / METRICS_FILE, metrics)

    def is_done(self, stage_dir: Path, config_hash: Optional[str] = None) -> bool:
        if finished_metrics(stage_dir) is None:
            return False
        if config_hash is None:
            return True
        record = read_json(stage_dir / STAGE_FILE) or {}
        return record.get("hash") == config_hash

    def read_metrics(self, stage_dir: Path) -> Optional[Dict[str, Any]]:
        return read_json(stage_dir / METRICS_FILE)

    def iter_stage_dirs(self, profile: str) -> Iterator[Path]:
        """Every current stage folder of a profile (archived ``<stage>@<hash>`` folders excluded)."""
        for method in self.methods(profile):
            for seed in self.seeds(profile, method):
                for stage in sorted(self.seed_dir(profile, method, seed).iterdir()):
                    if stage.is_dir() and "@" not in stage.name:
                        yield stage


def _stage_kind(stage: str) -> str:
    """The stage kind (``runtime.job_threads`` key) of a stage of the store, from its name matched
    whole, as ``plan.py`` builds them: a plug-in task may begin as the other kinds' names do
    (``extractive-qa``, ``pretrain-probe``), and a task may not take one of their names (the task
    registry refuses ``source``, ``pretrain``, ``pretrain-base`` and ``extract-...``)."""
    if stage == "source":
        return "source"
    if stage in ("pretrain", "pretrain-base"):
        return "pretrain"
    if re.fullmatch(r"extract-.+", stage):
        return "extract"
    return "task"


def with_store_threads(profile, store: "RunStore", machine: bool = True):
    """``profile`` with the thread count of every stage kind pinned in ``runtime.job_threads``, so
    that a store keeps its thread count (a stage's hash covers it) whichever machine plans the run:

    ``runtime.threads`` set: the profile unchanged (that count, for every stage; another count than
    the stages' gives new stages). Else per kind: the profile's own ``job_threads`` (a SLURM cluster
    profile's ``cpus_per_task``, ``with_job_threads``), else the count the store recorded
    (``RunStore.thread_counts``), else this machine's (``resolve_threads``: what a fresh store gets,
    as before; with ``machine=False`` that kind is left unpinned). The run records the pinned counts
    in ``profile.json``, where ``status``, ``table`` and the next run find them."""
    import dataclasses

    from clap_bench.config import resolve_threads
    from clap_bench.runs.slurm import STAGE_KINDS

    if profile.runtime.threads is not None:
        return profile
    kept = store.thread_counts(profile.name)
    job_threads = {kind: profile.runtime.job_threads.get(kind) or kept.get(kind) or (resolve_threads(profile, kind) if machine else None)
                   for kind in STAGE_KINDS}
    job_threads = {kind: n for kind, n in job_threads.items() if n is not None}
    job_threads.update(profile.runtime.job_threads)  # keep any other entry for validate_run to name
    return dataclasses.replace(profile, runtime=dataclasses.replace(profile.runtime, job_threads=job_threads))


def _archive_with_variance_heads(stage_dir: Path, old_hash: str) -> None:
    """Archive a stage and the heads ``analyze variance`` trained on its inputs: those heads belong to
    the old config, and a table averaging them with the new stage's head would mix two configs."""
    archive_stage(stage_dir, old_hash)
    seed_dir = stage_dir.parent
    heads = seed_dir.parent / VARIANCE / seed_dir.name / stage_dir.name
    if re.fullmatch(r"seed\d+", seed_dir.name) and heads.is_dir():
        archive_stage(heads, old_hash)


def archive_stage(stage_dir: Path, old_hash: str) -> Path:
    target = stage_dir.with_name(f"{stage_dir.name}@{old_hash}")
    n = 1
    while target.exists():
        n += 1
        target = stage_dir.with_name(f"{stage_dir.name}@{old_hash}.{n}")
    stage_dir.rename(target)
    return target


def finished_metrics(stage_dir: Path) -> Optional[Dict[str, Any]]:
    """A stage's metrics if it finished, else None. Finished: ``metrics.json`` is there and the
    stage's record, where it has one, says ``done``. A task of one head writes ``metrics.json`` into
    the stage's own folder before ``RunStore.finish`` records the stage: a process killed between the
    two leaves the file beside a record that still says running, and that stage is not finished."""
    metrics = read_json(Path(stage_dir) / METRICS_FILE)
    if metrics is None:
        return None
    record = read_json(Path(stage_dir) / STAGE_FILE)
    return metrics if record is None or record.get("status") == "done" else None


RECORD_FILES = (STAGE_FILE, METRICS_FILE, SLURM_FILE)  # the JSON records a run reads in a stage's folder


def damaged_record(stage_dir: Path) -> Optional[str]:
    """The error of the first of the stage's records that is not valid JSON (``read_json``'s message names
    the file and says to delete it), or None. A run fails such a stage and goes on with the stages that do
    not read it, instead of stopping at its first look at the folder; ``status`` shows it damaged."""
    found = damaged_record_file(stage_dir)
    return None if found is None else found[1]


def damaged_record_file(stage_dir: Path) -> Optional[Tuple[Path, str]]:
    """``(file, error)`` of the first of the stage's records that is not valid JSON, or None."""
    for name in RECORD_FILES:
        try:
            read_json(Path(stage_dir) / name)
        except ValueError as e:
            return Path(stage_dir) / name, str(e)
    return None


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to rerun the stage") from None


def tail_lines(path: Path, n: int = 10) -> List[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-n:]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
