"""Where the spread between seeds comes from (``clapbench analyze variance``).

A downstream figure of one method varies with the pre-training seed (the encoder), with the seed of
the downstream head trained on its features, and with which test videos or queries happen to be in
the test set. For ``S`` pre-training seeds, each with ``H`` head seeds, the figures ``y[s, h]`` give
the first two parts by the balanced one-way random-effects analysis of variance::

    within  = mean over s of the variance of y[s, :]         (ddof 1)  -> sigma2_head
    between = H * variance of the row means                  (ddof 1)
    sigma2_pretrain = max(0, (between - within) / H)

``sigma2_pretrain + sigma2_head`` is the variance of one run (one pre-training, one head), the
spread a table of single-head seeds shows; averaging ``K`` heads per pre-training seed leaves
``sigma2_pretrain + sigma2_head / K``. The third part does not show in the seed spread at all (every
run scores the same test set) but bounds what the figures say about the task: its standard
deviation is estimated by resampling the test videos (TAL) or queries (grounding) with replacement
(bootstrap) for each run's predictions, averaged over the runs.

The seeds are those ``clapbench table`` aggregates: a finished task stage that is stale (it, or a
stage it read, was made under another config than the profile's last run: ``tables.ConfigCheck``)
is left out and named.

The extra head runs (head seed ``seed + 1000 * h`` for ``h >= 1``; ``h = 0`` is the task stage's own
run, or the stage's own heads where it ran ``tasks.<task>.head_seeds``) are written under
``<profile>/<method>/_variance/seed<k>/<task>/head<h>/`` of the run store
(outside the stage folders, so status and tables do not see them) and reused when the command runs
again: a head run is finished when its ``metrics.json`` exists, which the tasks write last. Each is
trained with the ``tasks.<task>`` section the task stage recorded in its ``config.yaml`` (a profile
that says otherwise is refused: it describes other stages), and its ``head.json`` records the stage's
config hash, the head seed and that task config. A head counts (here and in ``clapbench table
--heads``) only while that hash is the stage's in place; a head without ``head.json`` (trained before
heads recorded their stage) is of unknown config and counts as not matching: the table lists it, and
this command moves such a head aside (``head<h>@<hash>``, ``head<h>@unrecorded``) and trains it again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

# The figures of each task the decomposition reports (the tables' headline metrics).
TASK_METRICS = {
    "tal": ("average_mAP", "mAP@0.5"),
    "fstal": ("average_mAP", "mAP@0.5"),
    "vlg": ("charades-sta/R@1@0.5", "charades-sta/mIoU", "tacos/R@1@0.5", "tacos/mIoU"),
}
HEAD_SEED_STRIDE = 1000
# In each head folder under ``_variance/``: the task stage (config hash) the head was trained for, and
# the task config it was trained with (the stage's own)
HEAD_RECORD = "head.json"


def head_seed(seed: int, head: int) -> int:
    """The downstream head's seed for pre-training seed ``seed`` and head index ``head`` (0: the stage's own)."""
    return seed + HEAD_SEED_STRIDE * head


@dataclass
class Decomposition:
    seeds: int
    heads: int
    mean: float
    run_std: float  # std of single runs over all (seed, head) pairs, ddof 1
    pretrain_std: float
    head_std: float
    # std over the seeds of each seed's mean of its H heads (ddof 1): what a table of
    # ``head_seeds: H`` stages shows, observed rather than modelled
    observed_seed_std: float
    test_std: Optional[float]  # bootstrap over the test set; None when not computed

    def seed_mean_std(self, heads_per_seed: int) -> float:
        """Std of one seed's figure when it averages ``heads_per_seed`` heads."""
        return math.sqrt(self.pretrain_std ** 2 + self.head_std ** 2 / heads_per_seed)


def decompose(scores: np.ndarray, test_std: Optional[float] = None) -> Decomposition:
    """``scores[s, h]``: the figure of pre-training seed s with head seed h (balanced, S >= 2, H >= 2)."""
    y = np.asarray(scores, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"need a (seeds, heads) table with at least 2 of each, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("the figures contain NaN or infinity")
    s, h = y.shape
    within = float(y.var(axis=1, ddof=1).mean())
    between = float(h * y.mean(axis=1).var(ddof=1))
    return Decomposition(
        seeds=s, heads=h, mean=float(y.mean()), run_std=float(y.ravel().std(ddof=1)),
        pretrain_std=math.sqrt(max(0.0, (between - within) / h)), head_std=math.sqrt(within), test_std=test_std,
        observed_seed_std=float(y.mean(axis=1).std(ddof=1)),
    )


# ------------------------------------------------------------------ bootstrap over the test set
def bootstrap_std(units: Sequence[str], score: Callable[[List[str]], Dict[str, float]], samples: int,
                  seed: int = 0) -> Dict[str, float]:
    """Std of each figure ``score`` returns, over ``samples`` resamples (with replacement) of
    ``units`` of the same size (one scoring per resample gives every figure)."""
    if samples < 2:
        raise ValueError(f"bootstrap samples: expected >= 2, got {samples}")
    units = list(units)
    if not units:
        raise ValueError("bootstrap over an empty test set")
    rng = np.random.default_rng(seed)
    draws = [score([units[i] for i in rng.integers(0, len(units), len(units))]) for _ in range(samples)]
    return {k: float(np.std([d[k] for d in draws], ddof=1)) for k in draws[0]}


def detection_scorer(ground_truth: dict, predictions: dict, subset: str) -> tuple:
    """(test video ids, ``score(ids)`` -> the tal task's metrics) for ActivityNet detection: a
    resample is scored as a test set in which a video drawn k times appears k times (``<id>#<i>``)."""
    from clap_bench.downstream.gtad.task import detection_metrics
    from clap_bench.eval.detection import evaluate_detection

    database = ground_truth["database"]
    videos = sorted(v for v, item in database.items() if item.get("subset") == subset)
    results = predictions.get("results", {})

    def score(ids: List[str]) -> Dict[str, float]:
        gt = {"database": {f"{v}#{i}": database[v] for i, v in enumerate(ids)}}
        # a class no drawn video annotates has no AP of its own; its detections cannot match (the
        # task drops them from its predictions for the same reason)
        classes = {a["label"] for v in ids for a in database[v]["annotations"]}
        pred = {"results": {f"{v}#{i}": [d for d in results.get(v, []) if d["label"] in classes]
                            for i, v in enumerate(ids)}}
        return detection_metrics(evaluate_detection(gt, pred, subset=subset))

    return videos, score


def grounding_scorer(ground_truth: list, predictions: list) -> tuple:
    """(query ids, ``score(ids)`` -> ``{"R@1@0.5": x, "mIoU": y, ...}``) for grounding."""
    from clap_bench.eval.grounding import evaluate_grounding, flatten_metrics

    gt = {str(q["id"]): q for q in ground_truth}
    pred = {str(p["id"]): p for p in predictions}

    def score(ids: List[str]) -> Dict[str, float]:
        g = [{**gt[q], "id": f"{q}#{i}"} for i, q in enumerate(ids)]
        p = [{**pred[q], "id": f"{q}#{i}"} for i, q in enumerate(ids) if q in pred]
        return flatten_metrics(evaluate_grounding(g, p))

    return sorted(gt), score


def stage_bootstrap(task: str, out_dir: Path, metrics: Sequence[str], samples: int,
                    ground_truth: Optional[dict] = None, subset: str = "validation") -> Dict[str, float]:
    """Bootstrap std of each of ``metrics`` of one task run (its output folder); empty where the
    task's outputs do not allow it (few-shot TAL: its test set is the episodes the head seed draws)."""
    out_dir = Path(out_dir)
    if task == "tal":
        predictions = json.loads((out_dir / "predictions.json").read_text())
        stds = bootstrap_std(*detection_scorer(ground_truth, predictions, subset), samples)
        return {m: stds[m] for m in metrics}
    if task != "vlg":
        return {}
    out = {}
    for dataset in sorted({m.split("/", 1)[0] for m in metrics}):  # one bootstrap per dataset
        folder = out_dir / dataset
        gt = json.loads((folder / "ground_truth.json").read_text())
        pred = json.loads((folder / "predictions.json").read_text())
        stds = bootstrap_std(*grounding_scorer(gt, pred), samples)
        out.update({m: stds[m.split("/", 1)[1]] for m in metrics if m.startswith(dataset + "/")})
    return out


# ------------------------------------------------------------------ the runs
def variance_dir(store, profile: str, method: str, seed: int, task: str, head: int) -> Path:
    return store.variance_dir(profile, method, seed, task, head)


def stage_head(store, profile: str, method: str, seed: int, task: str, head: int) -> tuple:
    """``(folder, metrics or None)`` of head ``head`` as the task stage of (method, seed) trained it
    (``heads/head<h>/`` of a ``head_seeds`` stage; the stage's folder for head 0 of a one-head
    stage), or ``(None, None)`` when the stage trained fewer heads."""
    from clap_bench.runs.plan import HEADS_FILE, head_dir
    from clap_bench.runs.store import METRICS_FILE, finished_metrics, read_json

    stage = store.stage_dir(profile, method, seed, task)
    stage_heads = len((read_json(stage / HEADS_FILE) or {}).get("metrics", [])) or 1
    if head >= stage_heads:
        return None, None
    if stage_heads == 1:
        return stage, finished_metrics(stage)
    out = head_dir(stage, head)
    return out, read_json(out / METRICS_FILE)


def stage_hash(store, profile: str, method: str, seed: int, task: str) -> Optional[str]:
    """The config hash the ``task`` stage of (method, seed) recorded (``stage.json``), or None."""
    from clap_bench.runs.store import STAGE_FILE, read_json

    return (read_json(store.stage_dir(profile, method, seed, task) / STAGE_FILE) or {}).get("hash")


def extra_head(store, profile: str, method: str, seed: int, task: str, head: int) -> tuple:
    """``(folder, metrics or None, problem or None)`` of head ``head`` under ``_variance/``. ``metrics``:
    None while the head is not finished; ``problem``: why a finished head does not count (its
    ``head.json`` names another stage hash than the task stage's now, or it has none: trained before
    heads recorded their stage, so what it was trained under is unknown)."""
    from clap_bench.runs.store import METRICS_FILE, read_json

    out = variance_dir(store, profile, method, seed, task, head)
    metrics = read_json(out / METRICS_FILE)
    if metrics is None:
        return out, None, None
    record = read_json(out / HEAD_RECORD)
    current = stage_hash(store, profile, method, seed, task)
    if record is None:
        return out, metrics, (f"has no {HEAD_RECORD} naming the {task} stage it was trained for "
                              "(trained before heads recorded it: its config is unknown)")
    if current is None or record.get("stage_hash") != current:
        return out, metrics, (f"was trained for the {task} stage of config hash {record.get('stage_hash')}, "
                              f"not the one in place ({current})")
    return out, metrics, None


def locate_head(store, profile: str, method: str, seed: int, task: str, head: int,
                needed: Sequence[str] = ()) -> tuple:
    """``(folder, metrics or None)`` of head ``head`` of (method, seed)'s ``task`` stage for the
    decomposition: the stage's own head when it holds every metric of ``needed`` (a head of
    per-dataset head seeds may lack a dataset's figures), else the head under ``_variance/``
    (trained there on every dataset). ``metrics`` is ``None`` while that head is not finished (its
    ``metrics.json`` is written last), or when it was not trained for the stage in place (``extra_head``)."""
    out, result = stage_head(store, profile, method, seed, task, head)
    if out is not None and (result is None or all(m in result for m in needed)):
        return out, result
    out, result, problem = extra_head(store, profile, method, seed, task, head)
    return out, None if problem else result


def stage_task_config(store, profile: str, method: str, seed: int, task: str) -> Optional[Dict]:
    """``tasks.<task>`` as the ``task`` stage of (method, seed) recorded it in its ``config.yaml``
    (``overrides``), or None where it recorded none (a plug-in plan's stage)."""
    import yaml

    from clap_bench.runs.store import CONFIG_FILE

    path = store.stage_dir(profile, method, seed, task) / CONFIG_FILE
    recorded = yaml.safe_load(path.read_text()) if path.is_file() else None
    config = (recorded or {}).get("config") if isinstance(recorded, dict) else None
    if not isinstance(config, dict) or "overrides" not in config:
        return None
    return _plain(config["overrides"] or {})


def _plain(value):
    """As JSON gives it back (tuples as lists, keys as strings), to compare a YAML record with a profile."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def task_feature_files(store, profile: str, method: str, seed: int, task: str, config=None) -> Dict[str, Path]:
    """The feature files the task stage of (method, seed) read, from the finished extraction stages."""
    from clap_bench.config import ConfigError
    from clap_bench.runs.plan import EXTERNAL_PREFIX, external_feature_files, method_trains, task_features
    from clap_bench.runs.store import finished_metrics

    variant, datasets = task_features(task, config)  # config: the resolved profile, for tasks.<task>.datasets
    if method.startswith(EXTERNAL_PREFIX):  # the same files for every seed
        return external_feature_files(method, datasets)
    trains = method_trains(method)
    files = {}
    for d in datasets:
        name = f"extract-{d}" if (variant == "all" or not trains) else f"extract-base-{d}"
        stage = store.stage_dir(profile, method, seed if trains else 0, name)
        metrics = finished_metrics(stage)
        if metrics is None:
            raise ConfigError(f"{stage}: no finished feature extraction for {method} seed {seed}")
        files[d] = stage / metrics["features"]
    return files


def stale_seeds(store, profile_name: str, method: str, task: str, seeds: Sequence[int]) -> Dict[int, str]:
    """Of ``seeds`` (finished ``task`` stages of ``method``), those ``clapbench table`` leaves out as
    stale, with why: the stage, or a stage it read, was made under another config than the profile's
    last run (``tables.ConfigCheck``)."""
    from clap_bench.runs.tables import ConfigCheck

    check = ConfigCheck(store, profile_name)
    in_store = store.seeds(profile_name, method)
    out = {}
    for seed in seeds:
        why = check.why_stale(method, in_store, seed, task)
        if why is not None:
            out[seed] = why
    return out


def run_variance(store, profile_arg: str, method: str, task: str, heads: int = 3, bootstrap: int = 200,
                 seeds: Optional[Sequence[int]] = None, progress: bool = True, log: Callable[[str], None] = print,
                 warn: Optional[Callable[[str], None]] = None) -> Dict[str, Decomposition]:
    """Train the missing heads, bootstrap every run's test set, and decompose each of the task's
    metrics over the finished seeds of ``method`` (at least 2). A seed counts as ``clapbench table``
    counts it: its stage finished, and it and every stage it read were made under the profile's last
    run's config; the stale ones are left out and named (``warn``, default ``log``)."""
    import torch

    from clap_bench.config import ConfigError, resolve_datasets, resolve_threads
    from clap_bench.downstream.base import TaskContext, get_task
    from clap_bench.io import atomic_write_json
    from clap_bench.runs.store import METRICS_FILE, finished_metrics, read_json, with_store_threads

    warn = warn or log
    if task not in TASK_METRICS:
        raise ConfigError(f"--task: expected one of {', '.join(TASK_METRICS)}, got {task!r}")
    if heads < 2:
        raise ConfigError(f"--heads: expected >= 2 (the head part needs two heads per seed), got {heads}")
    profile = store.resolve_profile(profile_arg)  # the store's recorded config, or a built-in name / YAML file
    profile_name = profile.name
    finished = [s for s in store.seeds(profile_name, method)
                if finished_metrics(store.stage_dir(profile_name, method, s, task)) is not None]
    stale = stale_seeds(store, profile_name, method, task, finished if seeds is None else sorted(set(seeds) & set(finished)))
    if seeds is not None:
        missing = sorted(set(seeds) - set(finished))
        if missing:
            raise ConfigError(f"{method}: no finished {task} stage for seed(s) {missing} in {store.profile_dir(profile_name)}")
        if stale:
            raise ConfigError(f"{method}: seed(s) {sorted(stale)} of --seeds are stale, as clapbench table and status "
                              "call them: " + "; ".join(f"seed {s} ({why})" for s, why in sorted(stale.items())))
        finished = sorted(seeds)
    elif stale:
        warn(f"{method}: left out, as in clapbench table: " + "; ".join(f"seed {s} ({why})" for s, why in sorted(stale.items())))
        finished = [s for s in finished if s not in stale]
    if len(finished) < 2:
        raise ConfigError(f"{method}: {len(finished)} seed(s) with a finished {task} stage in "
                          f"{store.profile_dir(profile_name)}" + (f" ({len(stale)} more stale: seed(s) {sorted(stale)})" if stale else "")
                          + "; the decomposition needs 2 or more "
                          f"(run: clapbench run --method {method} --tasks {task} --seeds 3 --profile {profile_arg})")
    # The extra heads train as the stage's own head did: with the tasks.<task> its config.yaml recorded.
    # A profile (a YAML file) that says otherwise describes other stages than these: refused.
    from clap_bench.config import head_config

    given = _plain(profile.tasks.get(task) or {})
    recorded = {s: stage_task_config(store, profile_name, method, s, task) for s in finished}
    differ = {s: r for s, r in recorded.items() if r is not None and r != given}
    if differ:
        first = next(iter(differ.values()))
        keys = sorted(k for k in set(first) | set(given) if first.get(k) != given.get(k))
        shown = "; ".join(f"{k}: {given.get(k, '(not set)')!r} here, {first.get(k, '(not set)')!r} in the stage" for k in keys)
        raise ConfigError(
            f"--profile {profile_arg}: tasks.{task} differs from the config the {task} stage of seed(s) "
            f"{sorted(differ)} of {method} was made with "
            f"({store.stage_dir(profile_name, method, next(iter(differ)), task) / 'config.yaml'}): {shown}. The extra "
            f"heads must train as the stage's own head did: give --profile {profile_name} (the config the store "
            f"recorded), or rerun those stages under this profile first")
    datasets = resolve_datasets(profile)
    overrides = profile.task_config(task)
    spec = get_task(task)
    # the thread count the store's task stages ran with (a stage's hash covers it), as a rerun of them would take
    torch.set_num_threads(resolve_threads(with_store_threads(profile, store), "task"))

    ground_truth, subset = None, "validation"
    if task == "tal":
        from clap_bench.config import from_dict
        from clap_bench.data import load_dataset
        from clap_bench.downstream.gtad.config import GTADConfig
        from clap_bench.downstream.gtad.task import ground_truth_database

        subset = from_dict(GTADConfig, overrides, f"tasks.{task}").eval_subset
        ground_truth = ground_truth_database(load_dataset(datasets["activitynet"], "activitynet"))

    first = finished_metrics(store.stage_dir(profile_name, method, finished[0], task)) or {}
    metrics = [m for m in TASK_METRICS[task] if m in first]  # e.g. a profile grounding on one dataset
    if not metrics:
        raise ConfigError(f"{store.stage_dir(profile_name, method, finished[0], task) / METRICS_FILE}: none of "
                          f"{', '.join(TASK_METRICS[task])}")
    table = {m: np.zeros((len(finished), heads)) for m in metrics}
    boot = {m: [] for m in metrics}
    for i, seed in enumerate(finished):
        features = None
        for h in range(heads):
            out, result = locate_head(store, profile_name, method, seed, task, h, metrics)
            if result is None:
                _, _, problem = extra_head(store, profile_name, method, seed, task, h)
                if problem is not None and out.is_dir():  # kept aside, never read again; trained anew below
                    from clap_bench.runs.store import archive_stage

                    old = (read_json(out / HEAD_RECORD) or {}).get("stage_hash") or "unrecorded"
                    warn(f"{method} seed {seed}: {task} head {h} {problem}; moved to {archive_stage(out, old)}, trained again")
                features = features or task_feature_files(store, profile_name, method, seed, task, profile)
                log(f"{method} seed {seed}: {task} head {h} (head seed {head_seed(seed, h)}) -> {out}")
                out.mkdir(parents=True, exist_ok=True)
                head_overrides = head_config(recorded[seed]) if recorded[seed] is not None else overrides
                atomic_write_json(out / HEAD_RECORD, {
                    "stage_hash": stage_hash(store, profile_name, method, seed, task), "head_seed": head_seed(seed, h),
                    "task_config": head_overrides})
                spec.run(TaskContext(features=features, datasets=datasets, out_dir=out, seed=head_seed(seed, h),
                                     overrides=head_overrides, progress=progress))
                result = read_json(out / METRICS_FILE)
            for m in metrics:
                if m not in result:
                    raise ConfigError(f"{out / METRICS_FILE}: no metric {m!r} (has: {', '.join(sorted(result))})")
                table[m][i, h] = float(result[m])
            if bootstrap:
                for m, b in stage_bootstrap(task, out, metrics, bootstrap, ground_truth, subset).items():
                    boot[m].append(b)
    return {m: decompose(table[m], float(np.mean(boot[m])) if boot[m] else None) for m in metrics}


# ------------------------------------------------------------------ report
def format_report(method: str, task: str, parts: Dict[str, Decomposition], heads_per_seed: Sequence[int] = (1, 3, 5)) -> str:
    """A plain-text table, figures in percent points."""
    from tabulate import tabulate

    rows = []
    for metric, d in parts.items():
        row = [metric, f"{100 * d.mean:.2f}", f"{100 * d.run_std:.2f}", f"{100 * d.pretrain_std:.2f}",
               f"{100 * d.head_std:.2f}", "-" if d.test_std is None else f"{100 * d.test_std:.2f}"]
        row += [f"{100 * d.seed_mean_std(k):.2f}" for k in heads_per_seed]
        row.append(f"{100 * d.observed_seed_std:.2f}")
        rows.append(row)
    some = next(iter(parts.values()))
    headers = ["metric", "mean", "std of a run", "pre-training seed", "head seed", "test set (bootstrap)"]
    headers += [f"seed std, {k} head{'s' if k > 1 else ''}" for k in heads_per_seed]
    headers.append(f"seed std of the {some.heads}-head means (observed)")
    return (f"{method}, {task}: {some.seeds} pre-training seeds x {some.heads} head seeds (std in points)\n"
            + tabulate(rows, headers=headers, tablefmt="github") + "\n")
