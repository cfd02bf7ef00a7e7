"""The stage plan: which stages a (method, seed) needs, in which order, keyed by config hashes.

For each (method, seed)::

    source (once per profile, shared; synthetic profiles only: plays Kinetics' role)
      └─ pretrain (all classes) ─┬─ extract-activitynet ──────────── tal   (G-TAD)
                                 ├─ extract-charades-sta ─┐
                                 └─ extract-tacos ────────┴─────────── vlg   (2D-TAN)
      └─ pretrain-base (few-shot base classes) ─ extract-base-activitynet ─ fstal (QAT)

``--tasks`` keeps only the listed downstream tasks and the stages they need. A method
``features:PATH.h5`` (one HDF5 holding the videos of every dataset; ids never collide across
datasets) or ``features:DIR`` (``DIR/<dataset key>.h5`` per dataset) skips pre-training and
extraction: its task stages read those files.

A stage's hash covers the profile sections it depends on, the method, the seed and the hashes
of its upstream stages; a change anywhere upstream therefore changes every stage below it.

Stage functions are module-level (SLURM jobs unpickle them by reference) and take one
``StageContext``; they return the JSON-serialisable dict that becomes ``metrics.json``.

Hook: any ``Plan`` of ``StageSpec``s runs through the same executors, store and status
(``run_plan(plan, store, ...)``). The CLI builds its plan with the function named by the
environment variable ``CLAPBENCH_PLAN_FACTORY`` (``module:function`` with ``build_plan``'s
signature) when it is set, else with ``build_plan``; the tests use it to drive the CLI and
SLURM with a plan of small stage functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from clap_bench.config import (
    SOURCE_SEED, TASK_STAGE_KEYS, ConfigError, Profile, config_hash, data_identity, from_dict, head_config, identity_dict,
    resolve_threads, source_seed, source_train_identity,
)
from clap_bench.runs.slurm import DDP_KINDS, STAGE_KINDS
from clap_bench.runs.store import METRICS_FILE, RunStore, method_dir_name, method_folder_clash, read_json

log = logging.getLogger(__name__)

TASK_NAMES = ("tal", "fstal", "vlg")
# Which extracted features each downstream task reads, and from which encoder:
# "all" = pre-trained on all classes, "base" = on the few-shot base classes only (paper §4.3).
TASK_FEATURES: Dict[str, tuple] = {
    "tal": ("all", ("activitynet",)),
    "fstal": ("base", ("activitynet",)),
    "vlg": ("all", ("charades-sta", "tacos")),
}
EXTERNAL_PREFIX = "features:"


# --------------------------------------------------------------------------- data structures
@dataclass
class StageContext:
    """What a stage function gets: where to write, what its upstream stages produced, the profile."""

    profile: Profile
    stage: str
    method: Optional[str]
    seed: Optional[int]
    out_dir: Path
    inputs: Dict[str, Path]  # upstream stage name -> its folder (holding its metrics.json)
    config: Dict[str, Any]
    progress: bool = True
    _datasets: Optional[dict] = None

    @property
    def datasets(self) -> dict:
        if self._datasets is None:
            from clap_bench.config import resolve_datasets

            self._datasets = resolve_datasets(self.profile)
        return self._datasets

    def input_output(self, stage: str, key: str) -> Path:
        """A file an upstream stage recorded in its metrics.json under ``key`` (relative to its folder)."""
        folder = self.inputs[stage]
        metrics = read_json(folder / METRICS_FILE)
        if not metrics or key not in metrics:
            raise RuntimeError(f"{folder / METRICS_FILE}: upstream stage {stage!r} has no {key!r}; rerun it")
        path = Path(metrics[key])
        return path if path.is_absolute() else folder / path


@dataclass
class StageSpec:
    name: str
    method: Optional[str]  # None: shared by every method of the profile
    seed: Optional[int]
    fn: Callable[[StageContext], Dict[str, Any]]
    config: Dict[str, Any]
    deps: tuple = ()  # keys of upstream stages
    resources: str = "task"  # which cluster-profile section sizes its job: source|pretrain|extract|task

    @property
    def key(self) -> str:
        return stage_key(self.method, self.seed, self.name)


def stage_key(method: Optional[str], seed: Optional[int], name: str) -> str:
    """``<method>/seed<k>/<stage>``; a shared stage: ``_shared/<stage>``, or ``_shared/seed<k>/<stage>``
    when it exists once per seed (``source_pretrain.per_seed``)."""
    if method is None:
        return f"_shared/{name}" if seed is None else f"_shared/seed{seed}/{name}"
    return f"{method}/seed{seed}/{name}"


@dataclass
class Plan:
    """Stages in a runnable (topological) order, with their config hashes."""

    profile: Profile
    stages: Dict[str, StageSpec] = field(default_factory=dict)
    hashes: Dict[str, str] = field(default_factory=dict)
    _folders: Dict[str, str] = field(default_factory=dict, repr=False)  # method folder name -> its method

    def add(self, spec: StageSpec) -> StageSpec:
        if spec.key in self.stages:
            return self.stages[spec.key]
        if spec.method is not None:  # two methods in one folder would move each other's stages aside
            folder = method_dir_name(spec.method)
            other = self._folders.setdefault(folder, spec.method)
            if other != spec.method:
                raise ConfigError(method_folder_clash(self.profile.name, folder, spec.method, other, "both in this plan"))
        for dep in spec.deps:
            if dep not in self.stages:
                raise ValueError(f"stage {spec.key}: upstream {dep} must be added first")
        payload = {
            "stage": spec.name,
            "method": spec.method,
            "seed": spec.seed,
            "config": spec.config,
            "upstream": {self.stages[d].name: self.hashes[d] for d in spec.deps},
        }
        self.stages[spec.key] = spec
        self.hashes[spec.key] = config_hash(payload)
        return spec

    def __iter__(self):
        return iter(self.stages.values())

    def __len__(self) -> int:
        return len(self.stages)

    def seed_major(self) -> List[StageSpec]:
        """The stages with every method's seed k before any method's seed k + 1 (shared stages first),
        each seed's methods in the order they were added.

        Run one after the other, a sweep of several methods then has the same number of finished
        seeds for every method whenever it stops, so an interrupted sweep still gives a balanced
        table. A stage's upstream stages always have a lower or equal seed (``none`` shares its
        seed-0 encoder), so the order stays runnable; a plan where that does not hold (a plug-in
        plan factory) keeps the order it was built in."""
        rank = {key: i for i, key in enumerate(self.stages)}
        ordered = sorted(self.stages.values(), key=lambda s: (-1 if s.seed is None else s.seed, rank[s.key]))
        position = {spec.key: i for i, spec in enumerate(ordered)}
        if any(position[d] > position[spec.key] for spec in ordered for d in spec.deps):
            return list(self.stages.values())
        return ordered

    def stage_dir(self, store: RunStore, spec: StageSpec) -> Path:
        return store.stage_dir(self.profile.name, spec.method, spec.seed, spec.name)

    def resolved_config(self, spec: StageSpec) -> Dict[str, Any]:
        return {
            "profile": self.profile.name,
            "stage": spec.name,
            "method": spec.method,
            "seed": spec.seed,
            "hash": self.hashes[spec.key],
            "upstream": {self.stages[d].name: self.hashes[d] for d in spec.deps},
            "config": spec.config,
        }

    def describe(self, store: RunStore, seed_major: bool = False) -> List[str]:
        """One line per stage, in the order the local executors run them when ``seed_major``."""
        lines = []
        for spec in (self.seed_major() if seed_major else self):
            deps = ", ".join(self.stages[d].name for d in spec.deps) or "-"
            lines.append(f"{spec.key:<44} hash {self.hashes[spec.key]}  after: {deps}  -> {self.stage_dir(store, spec)}")
        return lines


# --------------------------------------------------------------------------- plan building
def parse_methods(methods: str) -> List[str]:
    """The methods of a comma-separated ``--methods`` list; one that names nothing ("," or "") is an
    error, not every method (a plan of no method would still rewrite the store's profile.json)."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--methods: expected comma-separated method names, got {methods!r}")
    return names


def parse_tasks(tasks: Optional[Iterable[str] | str]) -> List[str]:
    """The tasks to run: the paper's three by default (``all``), or the listed ones, which may be
    plug-in tasks (registered by an entry point or an imported module, see ``clap_bench.plugins``)."""
    if tasks is None or tasks == "" or tasks == "all":
        return list(TASK_NAMES)
    given = tasks
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    if not tasks:  # "," or an empty list: a plan of no task would run nothing but the shared stages
        raise ConfigError(f"--tasks: expected comma-separated task names (or all), got {given!r}")
    from clap_bench.downstream.base import list_tasks

    known = list(TASK_NAMES) + [t for t in list_tasks() if t not in TASK_NAMES]
    out = []
    for t in tasks:
        t = t.strip()
        if t not in known:
            raise ConfigError(f"--tasks: unknown task {t!r}; expected some of {', '.join(known)}")
        if t not in out:
            out.append(t)
    return out


def parse_seeds(seeds: int | str | Sequence[int]) -> List[int]:
    """``5`` -> seeds 0..4; ``"0,3,4"`` -> exactly those; ``"5-9"`` -> seeds 5..9 (ranges may be
    listed: ``"0,5-7"``); a list passes through."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"--seeds: expected a positive count, got {seeds}")
        return list(range(seeds))
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            if "," not in text and "-" not in text:
                return parse_seeds(int(text))
            out = set()
            for part in (p.strip() for p in text.split(",")):
                if "-" in part:
                    first, last = (int(x) for x in part.split("-"))
                    if first < 0 or last < first:
                        raise ValueError(part)
                    out.update(range(first, last + 1))
                elif part:
                    out.add(int(part))
            if not out:
                raise ValueError(text)
            return sorted(out)
        except ValueError:
            raise ConfigError(f"--seeds: expected a count (5), a list (0,3,4) or a range (5-9), got {seeds!r}") from None
    return sorted({int(s) for s in seeds})


def task_features(task: str, profile: Optional[Profile] = None) -> tuple:
    """(encoder variant, dataset keys) a task reads; a plug-in task reads the all-class encoder's
    features of the datasets its ``TaskSpec`` declares. With a ``profile`` whose ``tasks.<task>``
    section lists ``datasets`` (``tasks.vlg.datasets: [charades-sta]``), only those: nothing is
    extracted for a dataset the head will not read."""
    if task in TASK_FEATURES:
        variant, datasets = TASK_FEATURES[task]
    else:
        from clap_bench.downstream.base import get_task

        variant, datasets = "all", tuple(get_task(task).datasets)
    chosen = (profile.tasks.get(task) or {}).get("datasets") if profile is not None else None
    if chosen is None:
        return variant, datasets
    unknown = [d for d in chosen if d not in datasets]
    if unknown or not chosen:
        raise ConfigError(f"tasks.{task}.datasets: expected some of {', '.join(datasets)}, got {list(chosen)}")
    return variant, tuple(d for d in datasets if d in chosen)


def external_feature_files(method: str, datasets: Iterable[str]) -> Dict[str, Path]:
    """Feature files of a ``features:PATH.h5`` / ``features:DIR`` method, checked to exist."""
    target = Path(os.path.expanduser(method[len(EXTERNAL_PREFIX):]))
    if target.suffix == ".h5":
        if not target.is_file():
            raise ConfigError(f"--method {method}: feature file {target} not found")
        return {d: target.resolve() for d in datasets}
    if not target.is_dir():
        raise ConfigError(f"--method {method}: expected an .h5 file or a folder of <dataset>.h5 files; {target} is neither")
    files = {}
    for d in datasets:
        path = target / f"{d}.h5"
        if not path.is_file():
            raise ConfigError(f"--method {method}: {path} not found (a features folder holds one <dataset key>.h5 per dataset)")
        files[d] = path.resolve()
    return files


def needs_source_stage(profile: Profile) -> bool:
    """``encoder.weights: source`` (the synthetic profiles): every method starts from one shared
    source pre-training, the role Kinetics-400 weights play in the paper."""
    return profile.encoder.weights == "source"


def validate_run(profile: Profile, methods: Sequence[str], tasks: Sequence[str]) -> None:
    """Check every name a run uses before anything runs or is written: the methods (registry),
    the tasks, the dataset keys their stages read, and the profile's ``methods.<name>`` /
    ``tasks.<name>`` sections (names and keys). Raises ``ConfigError`` listing the known names."""
    from clap_bench.downstream.base import get_task, list_tasks
    from clap_bench.methods import list_methods, method_from_profile
    from clap_bench.plugins import load_profile_imports
    from clap_bench.training.pretrain import PRETRAIN_DATASET, SOURCE_DATASET

    load_profile_imports(profile)  # plug-in methods and tasks named by imports / --import
    unknown_kinds = sorted(set(profile.runtime.job_threads) - set(STAGE_KINDS))
    if unknown_kinds:
        raise ConfigError(f"profile {profile.name!r}: runtime.job_threads: unknown stage kind(s) {unknown_kinds}; "
                          f"expected some of {list(STAGE_KINDS)}")
    known_methods = list_methods()
    for method in methods:
        if not method.startswith(EXTERNAL_PREFIX) and method not in known_methods:
            raise ConfigError(f"--method: unknown method {method!r}; known: {', '.join(known_methods)} "
                              f"(or {EXTERNAL_PREFIX}PATH.h5 / {EXTERNAL_PREFIX}DIR)")
    for name in profile.methods:
        if name not in known_methods:
            raise ConfigError(f"profile {profile.name!r}: methods.{name}: unknown method; known: {', '.join(known_methods)}")
        method_from_profile(name, profile.methods)  # unknown keys: ConfigError naming methods.<name>.<key>
    known_tasks = list_tasks()
    for name in profile.tasks:
        if name not in known_tasks:
            raise ConfigError(f"profile {profile.name!r}: tasks.{name}: unknown task; known: {', '.join(known_tasks)}")
        spec = get_task(name)
        head_plan(profile.tasks[name], name, f"profile {profile.name!r}: tasks.{name}")
        from_dict(spec.config_cls, head_config(profile.tasks[name]), f"profile {profile.name!r}: tasks.{name}")
    needed: Dict[str, str] = {}  # dataset key -> who reads it
    for task in tasks:
        # Feature datasets the profile's tasks.<task>.datasets leaves out are neither extracted nor read.
        left_out = set(task_features(task)[1]) - set(task_features(task, profile)[1])
        for key in get_task(task).datasets:
            if key not in left_out:
                needed.setdefault(key, f"task {task}")
    if any(not m.startswith(EXTERNAL_PREFIX) for m in methods):
        needed.setdefault(PRETRAIN_DATASET, "pre-training")
        if needs_source_stage(profile):
            needed.setdefault(SOURCE_DATASET, "the source pre-training (encoder.weights: source)")
    available = set(profile.data.datasets)
    if profile.data.synthetic:
        from clap_bench.synth import dataset_keys

        available |= set(dataset_keys())
    for key, user in needed.items():
        if key not in available:
            where = "the synthetic benchmark and data.datasets provide" if profile.data.synthetic else "data.datasets has"
            raise ConfigError(f"profile {profile.name!r}: {user} needs dataset {key!r}; {where}: "
                              f"{', '.join(sorted(available)) or 'none'}")
    from clap_bench.data import READERS

    for key, ds in profile.data.datasets.items():
        if ds.format and ds.format not in READERS:
            raise ConfigError(f"profile {profile.name!r}: data.datasets.{key}.format: unknown format {ds.format!r}; "
                              f"known: {', '.join(READERS.list())}")


def build_plan(profile: Profile, methods: Sequence[str], seeds: Sequence[int], tasks: Optional[Sequence[str]] = None) -> Plan:
    """The product plan: real pre-training, extraction and downstream stages (names checked first)."""
    tasks = parse_tasks(tasks)
    validate_run(profile, methods, tasks)
    plan = Plan(profile)
    p = profile
    # The thread count changes a stage's numbers, so it is part of every stage's config (and hash);
    # the stage process sets it (``executors.run_stage``). The default resolves where the plan is
    # built, per stage kind when the stages are to run as SLURM jobs (``runtime.job_threads``).
    runtimes = {kind: {"threads": resolve_threads(p, kind)} for kind in STAGE_KINDS}
    # So does the number of DDP processes a trained stage runs as (batch_size is per process): only
    # counts > 1 enter, so every single-process stage keeps its hash (``runtime.job_processes``).
    for kind, processes in p.runtime.job_processes.items():
        if kind not in DDP_KINDS or not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ConfigError(f"runtime.job_processes.{kind}: expected an integer >= 1 for one of {list(DDP_KINDS)}, "
                              f"got {processes!r}")
        if processes > 1:
            runtimes[kind] = {**runtimes[kind], "processes": processes}
    wants_source = needs_source_stage(p) and any(not m.startswith(EXTERNAL_PREFIX) for m in methods)
    per_seed_source = wants_source and p.source_pretrain.per_seed

    def source_key(seed: int) -> Optional[str]:
        """The source stage seed ``seed`` starts from: the shared one (source seed 0), or with
        ``source_pretrain.per_seed`` one per seed (``_shared/seed<k>/source``; seed 0 is the shared one)."""
        if not wants_source:
            return None
        k = source_seed(p, seed)
        return plan.add(StageSpec(
            "source", None, None if k == SOURCE_SEED else k, run_source_stage,
            {"data": data_identity(p), "clips": identity_dict(p.clips), "encoder": identity_dict(p.encoder),
             "train": source_train_identity(p), "seed": k, "runtime": runtimes["source"]},
            resources="source",
        )).key

    if wants_source:
        source_key(SOURCE_SEED)
    for method in methods:
        external = method.startswith(EXTERNAL_PREFIX)
        if external:
            needed = sorted({d for t in tasks for d in task_features(t, p)[1]})
            files = external_feature_files(method, needed)
        for seed in seeds:
            if external:
                for task in tasks:
                    feats = {d: files[d] for d in task_features(task, p)[1]}
                    plan.add(StageSpec(
                        task, method, seed, run_task_stage,
                        {"task": task, "overrides": p.tasks.get(task, {}), "data": data_identity(p),
                         "features": {d: _file_identity(f) for d, f in feats.items()}, "runtime": runtimes["task"],
                         **_task_plugin(task)},
                    ))
                continue
            encoders = {}
            trains = method_trains(method)
            # A method that does not train (none) has one encoder whatever the seed or class
            # subset: every seed shares its seed-0 pre-training and extraction stages (unless each
            # seed has its own source model).
            encoder_seed = seed if (trains or per_seed_source) else 0
            plugin = method_plugin(method, p.methods.get(method, {}))
            for variant in sorted({task_features(t, p)[0] for t in tasks}):
                name = "pretrain" if (variant == "all" or not trains) else "pretrain-base"
                config = {"data": data_identity(p), "clips": identity_dict(p.clips), "encoder": identity_dict(p.encoder),
                          "method_overrides": p.methods.get(method, {}), "runtime": runtimes["pretrain"]}
                if trains:
                    config.update(train=identity_dict(p.pretrain), classes=variant)
                    config.update(gvf_grid_config(p, method))
                config.update(plugin)
                source = source_key(encoder_seed)
                encoders[variant] = plan.add(StageSpec(
                    name, method, encoder_seed, run_pretrain_stage, config,
                    deps=(source,) if source else (),
                    resources="pretrain",
                )).key
            for task in tasks:
                variant, datasets = task_features(task, p)
                extracts = []
                for d in datasets:
                    name = f"extract-{d}" if (variant == "all" or not trains) else f"extract-base-{d}"
                    extracts.append(plan.add(StageSpec(
                        name, method, encoder_seed, run_extract_stage,
                        {"dataset": d, "data": data_identity(p, d), "clips": identity_dict(p.clips),
                         "extract": identity_dict(p.extract), "runtime": runtimes["extract"]},
                        deps=(encoders[variant],),
                        resources="extract",
                    )).key)
                plan.add(StageSpec(
                    task, method, seed, run_task_stage,
                    {"task": task, "overrides": p.tasks.get(task, {}), "data": data_identity(p), "runtime": runtimes["task"],
                     **_task_plugin(task)},
                    deps=tuple(extracts),
                ))
    return plan


PLAN_FACTORY_ENV = "CLAPBENCH_PLAN_FACTORY"


def plan_factory() -> Callable[..., Plan]:
    """``build_plan``, or the function named by ``$CLAPBENCH_PLAN_FACTORY`` (``module:function``)."""
    name = os.environ.get(PLAN_FACTORY_ENV)
    if not name:
        return build_plan
    import importlib

    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"${PLAN_FACTORY_ENV}={name!r}: cannot load it ({e}); expected module:function") from None


# The extraction grid (``GVF_GRID_KEYS``) the ``smoke`` and ``default`` profiles have had since TSP's
# GVFs came in, and so the grid every TSP pre-training in their run stores was trained with while
# the pre-training stage's hash did not cover it. A profile of one of these names whose grid is the
# recorded one leaves the grid out of the stage config, so those stores keep their finished stages
# (as ``added_field`` keys at their default do); any other grid, and any other profile (``paper``,
# whose grid changed twice since, or a user's: what it ran with is unknown), carries it, so its
# GVF pre-training stages get new hashes once. Keyed by profile name as the run store's folders are.
GVF_GRID_BASELINES: Dict[str, Dict[str, Any]] = {
    "smoke": {"stride_frames": 4, "last_clip": "span", "snap_duration_to_frames": False},
    "default": {"stride_frames": 8, "last_clip": "span", "snap_duration_to_frames": False},
}


def gvf_grid_config(profile: Profile, method: str) -> Dict[str, Any]:
    """``{"gvf_grid": {...}}``: the ``extract.*`` keys the global video features of ``method``'s
    pre-training are computed with (``GVF_GRID_KEYS``), for the stage config of a method that trains
    with GVFs (TSP); ``{}`` for a method without them, or where the grid is the profile's recorded
    baseline (``GVF_GRID_BASELINES``)."""
    from clap_bench.methods import method_from_profile
    from clap_bench.training.pretrain import GVF_GRID_KEYS

    method_cfg = method_from_profile(method, profile.methods)
    if not (method_cfg.trains and method_cfg.uses_gvf):
        return {}
    grid = {key: getattr(profile.extract, key) for key in GVF_GRID_KEYS}
    if grid == GVF_GRID_BASELINES.get(profile.name):
        return {}
    return {"gvf_grid": grid}


def method_plugin(method: str, overrides: Optional[dict]) -> Dict[str, Any]:
    """``{"method_plugin": ...}`` for a plug-in method (its code version and full config, so a
    changed plug-in gets new stages), ``{}`` for a built-in (whose hashes stay as they were)."""
    from clap_bench.plugins import method_identity

    identity = method_identity(method, overrides)
    return {} if identity is None else {"method_plugin": identity}


def _task_plugin(task: str) -> Dict[str, Any]:
    from clap_bench.downstream.base import TASKS
    from clap_bench.plugins import plugin_identity

    identity = plugin_identity(getattr(TASKS.get(task), "__wrapped_task__", None))
    return {} if identity is None else {"task_plugin": identity}


def _file_identity(path: Path) -> Dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime": int(st.st_mtime)}


# --------------------------------------------------------------------------- product stage functions
def run_source_stage(ctx: StageContext) -> Dict[str, Any]:
    """Source pre-training on the synthetic trimmed set: the initial weights of every method.

    It trains into the machine-wide cache (``<data.cache_dir>/source_pretrain/<arch>-<hash>``), as
    Kinetics-400 weights live in the torch hub cache: every run store, test and ``clapbench
    pretrain`` of the same profile then shares one source model; the stage records its path.
    """
    from clap_bench.training import source_pretrain

    ctx.datasets  # generate the synthetic data first (cached), so the trainer finds it
    checkpoint = source_pretrain(ctx.profile, int(ctx.config.get("seed", SOURCE_SEED)), progress=ctx.progress)
    return {"checkpoint": str(Path(checkpoint).resolve())}


def method_trains(method: str) -> bool:
    """False for a registered method that does no post-pre-training (``none``)."""
    from clap_bench.methods import METHODS

    try:
        return bool(METHODS.get(method).trains)
    except KeyError:
        return True  # unknown names fail in their own pre-training stage, with the list of methods


def run_pretrain_stage(ctx: StageContext) -> Dict[str, Any]:
    from clap_bench.training import pretrain

    classes = None
    if ctx.config.get("classes") == "base":
        from clap_bench.data import load_fewshot_split

        if "fewshot-split" not in ctx.datasets:
            raise ConfigError(f"profile {ctx.profile.name!r}: few-shot TAL needs a 'fewshot-split' dataset (base/val/test class lists)")
        classes = list(load_fewshot_split(ctx.datasets["fewshot-split"]).base)
    init = ctx.input_output("source", "checkpoint") if "source" in ctx.inputs else None
    checkpoint = pretrain(ctx.profile, ctx.method, ctx.seed, ctx.out_dir, classes=classes, init=init, progress=ctx.progress)
    out: Dict[str, Any] = {"checkpoint": _relative(checkpoint, ctx.out_dir)}
    if classes is not None:
        out["classes"] = len(classes)
    out.update(validation_summary(ctx.out_dir))
    return out


def validation_summary(out_dir: Path) -> Dict[str, Any]:
    """Epoch-0 and last-epoch validation figures of a pre-training (``val0_*`` and ``val_*``), and with
    ``pretrain.keep_epoch: best`` the epoch whose weights the stage kept (``kept_epoch``)."""
    from clap_bench.training.trainer import read_epoch_records

    records = [r for r in read_epoch_records(out_dir) if any(k.startswith("val_") for k in r)]
    if not records:
        return {}
    first, last = records[0], records[-1]
    out: Dict[str, Any] = {f"val0_{k[4:]}": v for k, v in first.items() if k.startswith("val_")}
    out.update({k: v for k, v in last.items() if k.startswith("val_")})
    out["val_epoch"] = last.get("epoch")
    if "best_epoch" in last:
        out["kept_epoch"] = last["best_epoch"]
    return out


def run_extract_stage(ctx: StageContext) -> Dict[str, Any]:
    from clap_bench.features import extract_features

    dataset = ctx.config["dataset"]
    encoder_stage = next(iter(ctx.inputs))
    checkpoint = ctx.input_output(encoder_stage, "checkpoint")
    ctx.datasets  # the synthetic data must exist before extraction
    path = extract_features(ctx.profile, checkpoint, dataset, ctx.out_dir / f"{dataset}.h5", progress=ctx.progress)
    return {"features": _relative(path, ctx.out_dir), "dataset": dataset}


# ``tasks.<task>.head_seeds``: a key of the task stage, not of the head's config (every task has it).
HEAD_SEEDS_KEY = "head_seeds"
HEADS_FILE = "heads.json"


def head_plan(overrides: Optional[dict], task: str, where: str) -> List[Optional[List[str]]]:
    """The heads of a task stage: per head, the datasets it trains on (``None``: the task's own list).

    ``head_seeds: K`` (default 1) gives K heads on every dataset. ``head_seeds: {dataset: K, ...}``,
    for a task whose config has a ``datasets`` list (vlg), gives K heads on each named dataset and
    one on the others: head j trains on the datasets whose count exceeds j. That lets a cheap,
    noisy head (the Charades-like 2D-TAN) be averaged without multiplying a costly one (TACoS').
    """
    from clap_bench.downstream.base import get_task

    value = (overrides or {}).get(HEAD_SEEDS_KEY, TASK_STAGE_KEYS[HEAD_SEEDS_KEY])
    key = f"{where}.{HEAD_SEEDS_KEY}"

    def count(v, at: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{at}: expected an integer >= 1, got {v!r}")
        return v

    if not isinstance(value, dict):
        try:
            return [None] * count(value, key)
        except ConfigError:
            raise ConfigError(f"{key}: expected an integer >= 1 or a mapping dataset -> integer >= 1, got {value!r}") from None
    spec = get_task(task)
    active = getattr(from_dict(spec.config_cls, head_config(overrides), where), "datasets", None)
    if not isinstance(active, list):
        raise ConfigError(f"{key}: a mapping per dataset needs a task with a datasets list; "
                          f"{task} has none, give an integer >= 1")
    counts = {}
    for name, v in value.items():
        if name not in spec.datasets:
            raise ConfigError(f"{key}: unknown dataset {name!r}; expected some of {', '.join(spec.datasets)}")
        counts[name] = count(v, f"{key}.{name}")
    heads = max(counts.get(d, 1) for d in active) if active else 1
    return [[d for d in active if counts.get(d, 1) > j] for j in range(heads)]


def head_dir(stage_dir: Path, head: int) -> Path:
    """Where head ``head`` of a task stage with several head seeds writes its outputs."""
    return Path(stage_dir) / "heads" / f"head{head}"


def run_task_stage(ctx: StageContext) -> Dict[str, Any]:
    """One downstream head on the stage's features, or with ``tasks.<task>.head_seeds: K`` (K > 1)
    K heads (seeds ``seed + 1000 * j``; j = 0 is the seed itself) each in ``heads/head<j>/``, the
    stage's figures their mean and ``heads.json`` each head's. A finished head is not rerun when
    an interrupted stage resumes."""
    from clap_bench.downstream.base import TaskContext, get_task
    from clap_bench.plugins import load_profile_imports
    from clap_bench.runs.variance import head_seed

    load_profile_imports(ctx.profile)  # a plug-in task, in the process that runs the stage

    task = ctx.config["task"]
    if "features" in ctx.config:  # external features
        features = {d: Path(f["path"]) for d, f in ctx.config["features"].items()}
    else:
        features = {}
        for stage in ctx.inputs:
            metrics = read_json(ctx.inputs[stage] / METRICS_FILE) or {}
            features[metrics.get("dataset", stage.split("-", 1)[-1])] = ctx.input_output(stage, "features")
    spec = get_task(task)
    section = dict(ctx.config.get("overrides") or {})
    plan = head_plan(section, task, f"tasks.{task}")

    def run_head(out_dir: Path, seed: int, datasets: Optional[List[str]] = None) -> Dict[str, Any]:
        overrides = head_config(section)
        if datasets is not None:
            overrides["datasets"] = datasets
        metrics = spec.run(TaskContext(
            features=features, datasets=ctx.datasets, out_dir=out_dir, seed=seed,
            overrides=overrides, device=_device(), progress=ctx.progress,
        ))
        # Numbers are metrics; a string says how they were made (e.g. tal's "video_labels").
        return {k: v if isinstance(v, str) else float(v) for k, v in metrics.items()}

    if len(plan) == 1:
        return run_head(ctx.out_dir, ctx.seed)
    per_head = []
    for j, datasets in enumerate(plan):
        out = head_dir(ctx.out_dir, j)
        done = read_json(out / METRICS_FILE)  # the tasks write metrics.json last
        if done is None:
            out.mkdir(parents=True, exist_ok=True)
            done = run_head(out, head_seed(ctx.seed, j), datasets)
        per_head.append(done)
    from clap_bench.io import atomic_write_json

    per_dataset = plan[0] is not None
    record = {"seeds": [head_seed(ctx.seed, j) for j in range(len(plan))], "metrics": per_head}
    if per_dataset:
        record["datasets"] = plan
    atomic_write_json(ctx.out_dir / HEADS_FILE, record)
    # A figure is the mean of the heads that made it: with per-dataset counts, a dataset's figures
    # come from its own heads only; with one count, every head makes every figure.
    mean: Dict[str, Any] = {}
    for key in dict.fromkeys(k for head in per_head for k in head):
        values = [h[key] for h in per_head if key in h]
        if isinstance(values[0], str):
            mean[key] = values[0]
        elif per_dataset or len(values) == len(per_head):
            mean[key] = float(sum(values) / len(values))
    return mean


def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _relative(path: Path, base: Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)
