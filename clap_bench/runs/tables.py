"""The paper's tables from the run store: mean ± std over finished seeds, best per column marked,
the paper's reported numbers beside ours, and a t-test against a baseline method: Welch's, or
paired by seed (``test="paired"``: seed k of a method against seed k of the baseline).

The paper's numbers and each table's columns are data (``results/paper/table*.yaml``); a
column's ``metric`` is the key the downstream task writes in its ``metrics.json`` (fractions;
tables show percent). A seed counts for a table only when its task stage finished (its
``metrics.json`` exists); others are listed under the table as incomplete, never averaged.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import yaml

from clap_bench.config import ConfigError
from clap_bench.io import save_figure
from clap_bench.runs.claims import claim_holder
from clap_bench.runs.store import CONFIG_FILE, STAGE_FILE, RunStore, finished_metrics, method_dir_name, read_json

TABLE_IDS = ("1", "2a", "2b", "3")
FORMATS = ("markdown", "latex", "csv")
PAPER_DIR = Path(str(resources.files("clap_bench.results") / "paper"))


# --------------------------------------------------------------------------- the paper's tables
@dataclass
class PaperTable:
    table: str
    title: str
    task: str
    columns: List[Dict[str, str]]  # [{"metric": key in metrics.json, "label": header}]
    key_metric: str
    rows: List[Dict[str, Any]]

    @property
    def metrics(self) -> List[str]:
        return [c["metric"] for c in self.columns]


def load_paper_tables(paper_dir: Path = PAPER_DIR) -> Dict[str, PaperTable]:
    tables = {}
    for table_id in TABLE_IDS:
        path = paper_dir / f"table{table_id}.yaml"
        raw = yaml.safe_load(path.read_text())
        try:
            t = PaperTable(str(raw["table"]), raw["title"], raw["task"], raw["columns"], raw["key_metric"], raw["rows"])
        except KeyError as e:
            raise ConfigError(f"{path}: missing key {e}; expected table, title, task, columns, key_metric, rows") from None
        for i, row in enumerate(t.rows):
            unknown = set(row.get("values", {})) - set(t.metrics)
            if unknown or "name" not in row:
                raise ConfigError(f"{path}: rows[{i}]: needs a name and values for {t.metrics}; unknown {sorted(unknown)}")
        tables[table_id] = t
    return tables


def paper_method_names(paper_dir: Path = PAPER_DIR) -> Dict[str, str]:
    return yaml.safe_load((paper_dir / "methods.yaml").read_text())


# --------------------------------------------------------------------------- our results
@dataclass
class MethodResults:
    method: str  # as the user named it (registry name or features:PATH)
    method_dir: str
    seeds: Dict[int, Dict[str, float]] = field(default_factory=dict)  # finished seeds -> metrics
    incomplete: Dict[int, str] = field(default_factory=dict)  # seed -> why (status of its stage)
    left_out: List[int] = field(default_factory=list)  # seeds in the store but not among those asked for


class ConfigCheck:
    """Whether a finished task stage, and every stage it read, was made under the config the
    profile's last run recorded (``profile.json``): a run of some seeds after the profile changed
    leaves the other seeds' stages of the old config in place (``clapbench status`` calls them
    stale), and a table must not average the two configs.

    Configs are compared with their ``runtime`` section (the thread count) where the store says which
    count a stage kind has (``with_store_threads``: recorded in profile.json, or the one count of a
    store recorded before the counts were), as ``clapbench status`` compares them; else without it
    (the count would resolve on the machine making the table and call every stage stale). Each upstream
    stage's hash is compared with the one the stage after it recorded reading."""

    def __init__(self, store: RunStore, profile: str):
        self.store, self.profile = store, profile
        self.recorded = store.recorded_profile(profile)
        if self.recorded is not None:  # the thread counts the store keeps, where it says which
            from clap_bench.runs.store import with_store_threads

            self.recorded = with_store_threads(self.recorded, store, machine=False)
        self._plans: Dict[tuple, Any] = {}
        self.unchecked: List[str] = []

    def why_stale(self, method: str, seeds: Sequence[int], seed: int, task: str) -> Optional[str]:
        """None when (method, seed)'s ``task`` stage matches the recorded profile (or cannot be
        checked: no recorded profile, or a method or plan the recorded profile cannot build)."""
        if self.recorded is None:
            return None
        from clap_bench.runs.plan import plan_factory, stage_key

        key = (method, task)
        if key not in self._plans:
            try:
                self._plans[key] = plan_factory()(self.recorded, [method], sorted(seeds), [task])
            except (ConfigError, ValueError, KeyError, ImportError) as e:
                self._plans[key] = None
                self.unchecked.append(f"{method} ({e})")
        plan = self._plans[key]
        spec = plan.stages.get(stage_key(method, seed, task)) if plan is not None else None
        if spec is None:
            return None
        todo = [(spec, None)]
        while todo:
            spec, read_hash = todo.pop()
            folder = plan.stage_dir(self.store, spec)
            path = folder / CONFIG_FILE
            recorded = yaml.safe_load(path.read_text()) if path.is_file() else None
            if not isinstance(recorded, dict):
                return f"stale: {path} missing"
            if read_hash is not None and recorded.get("hash") != read_hash:
                return f"stale: {spec.name} was rerun (hash {recorded.get('hash')}) after the {task} stage read it ({read_hash})"
            keep = self._pinned(spec)
            ours, theirs = _without_runtime(recorded.get("config"), keep), _without_runtime(spec.config, keep)
            if not isinstance(ours, dict) or set(ours) != set(theirs):  # planned by another plan factory
                note = f"{method} (its stages were not planned as this plan plans them: another plan factory?)"
                if note not in self.unchecked:
                    self.unchecked.append(note)
                return None
            if ours != theirs:
                return (f"stale: its {spec.name} stage was made under another config than the profile's last run "
                        f"(clapbench status lists it; rerunning that seed redoes it)")
            upstream = recorded.get("upstream") or {}
            todo.extend((plan.stages[d], upstream.get(plan.stages[d].name)) for d in spec.deps)
        return None

    def _pinned(self, spec) -> bool:
        """Whether the store says which thread count ``spec``'s stage kind has; then the ``runtime``
        section is compared too, as ``clapbench status`` does."""
        runtime = self.recorded.runtime
        return runtime.threads is not None or spec.resources in runtime.job_threads


def _without_runtime(config: Any, keep: bool = False) -> Any:
    """A stage config as JSON would give it back, less its ``runtime`` section (unless ``keep``)."""
    import json

    config = json.loads(json.dumps(config, sort_keys=True, default=str)) if config is not None else None
    if isinstance(config, dict) and not keep:
        config.pop("runtime", None)
    return config


def collect_task_results(store: RunStore, profile: str, task: str, methods: Optional[Sequence[str]] = None,
                         heads: int = 1, seeds: Optional[Sequence[int]] = None,
                         check: Optional[ConfigCheck] = None) -> Dict[str, MethodResults]:
    """Per method folder: metrics of each seed whose ``task`` stage finished, and the unfinished seeds.
    ``seeds``: only those (the others a method has in the store are listed as left out).
    ``check``: seeds whose stages were made under another config than the profile's last run are
    not finished either (``ConfigCheck``).

    ``heads`` > 1: a seed's metrics are the mean of its first ``heads`` downstream heads, those its
    stage trained (``head_seeds``) and those ``clapbench analyze variance`` trained beside it (the
    same head seeds a ``head_seeds: heads`` stage would train); a seed lacking one is not finished.
    """

    wanted = {method_dir_name(m) for m in methods} if methods else None
    out: Dict[str, MethodResults] = {}
    for method_dir in store.methods(profile):
        if wanted is not None and method_dir not in wanted:
            continue
        res = MethodResults(store.method_label(profile, method_dir), method_dir)
        for seed in store.seeds(profile, method_dir):
            if seeds is not None and seed not in seeds:
                if (store.seed_dir(profile, method_dir, seed) / task).is_dir():
                    res.left_out.append(seed)
                continue
            seed_dir = store.seed_dir(profile, method_dir, seed)
            stage_dir = seed_dir / task
            try:
                metrics = finished_metrics(stage_dir)
                if metrics is not None and heads > 1:
                    metrics, why = _mean_of_heads(store, profile, method_dir, seed, task, heads, metrics)
                    if metrics is None:
                        res.incomplete[seed] = why
                        continue
                status = (read_json(stage_dir / STAGE_FILE) or {}).get("status", "incomplete") if metrics is None else None
            except ValueError as e:  # a damaged record (read_json names the file): that seed is left out
                res.incomplete[seed] = f"unreadable: {e}"
                continue
            stale = check.why_stale(res.method, store.seeds(profile, method_dir), seed, task) if (
                check is not None and metrics is not None) else None
            if stale is not None:
                res.incomplete[seed] = stale
            elif metrics is not None:
                res.seeds[seed] = metrics
            elif stage_dir.is_dir():
                why = status
                if why == "running" and claim_holder(stage_dir) is None:
                    why = "interrupted"  # its record says running, but no live process holds the stage
                res.incomplete[seed] = why
            elif any(p.is_dir() for p in seed_dir.iterdir()):
                res.incomplete[seed] = "not started"
        if res.seeds or res.incomplete or res.left_out:
            out[method_dir] = res
    return out


def _mean_of_heads(store: RunStore, profile: str, method_dir: str, seed: int, task: str, heads: int,
                   stage_metrics: Dict[str, Any]) -> tuple:
    """``(metrics, None)``: each of the stage's figures averaged over the first ``heads`` heads, a
    head's value taken from the stage's own head where it has it, else from the head analyze variance
    trained for this stage (its ``head.json`` names the stage's config hash); ``(None, why)`` when
    some head has no value for some figure, or the head that would give it was trained for another
    stage or does not say for which (``variance.extra_head``): then it is named, not averaged."""
    from clap_bench.runs.variance import extra_head, stage_head

    command = (f"clapbench analyze variance -m {store.method_label(profile, method_dir)} --task {task} --heads {heads} "
               f"--profile {profile}")
    needed = [k for k, v in stage_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    values: Dict[str, List[float]] = {k: [] for k in needed}
    for h in range(heads):
        own = stage_head(store, profile, method_dir, seed, task, h)[1] or {}
        extra = None
        for k in needed:
            value = own.get(k)
            if value is None:
                if extra is None:
                    folder, extra, problem = extra_head(store, profile, method_dir, seed, task, h)
                    if problem is not None:
                        return None, f"head {h} under {folder} {problem}: not averaged; {command} trains it again"
                    extra = extra or {}
                value = extra.get(k)
            if value is None:
                return None, f"{h} of {heads} heads; {command} trains the rest"
            values[k].append(float(value))
    return {k: float(np.mean(v)) for k, v in values.items()}, None


# --------------------------------------------------------------------------- table model
@dataclass
class Row:
    label: str
    source: str  # "ours" | "paper"
    method: Optional[str] = None
    n: Optional[int] = None
    seeds: List[int] = field(default_factory=list)
    mean: Dict[str, Optional[float]] = field(default_factory=dict)  # percent
    std: Dict[str, Optional[float]] = field(default_factory=dict)
    by_seed: Dict[str, Dict[int, float]] = field(default_factory=dict)  # percent, seed -> value (ours)
    paper: Dict[str, Optional[float]] = field(default_factory=dict)  # the paper's number for this method
    best: Dict[str, bool] = field(default_factory=dict)
    p_value: Optional[float] = None
    p_holm: Optional[float] = None  # p_value adjusted over the table's comparisons with the baseline (Holm)
    diff: Optional[float] = None  # mean minus the baseline's mean, key metric (points); paired: over common seeds
    ci: Optional[tuple] = None  # 95% confidence interval of ``diff`` (Welch, or paired t)
    n_paired: Optional[int] = None  # paired test: the seeds this row and the baseline both finished
    expected: Optional[int] = None  # seeds asked for; a row with fewer is marked
    note: str = ""

    def values(self, metric: str) -> List[float]:
        """Percent, one per finished seed in seed order (ours; empty for the paper's rows)."""
        return list(self.by_seed.get(metric, {}).values())


@dataclass
class Table:
    spec: PaperTable
    profile: str
    baseline: Optional[str]
    rows: List[Row]
    incomplete: List[str]
    notes: List[str] = field(default_factory=list)
    mdd: Optional[float] = None  # smallest key-metric difference the seeds can detect (80% power, 5% level)
    mdd_n: Optional[int] = None  # the seed count most of our rows have
    mdd_fewer: int = 0  # our rows with fewer seeds than mdd_n (they need a larger difference)
    # Kendall's tau between our key-metric means and the paper's numbers for the same methods,
    # with its exact two-sided p-value under random orderings: {"tau", "p", "methods"}
    ordering: Optional[Dict[str, Any]] = None
    per_seed: bool = False  # markdown / LaTeX: a column with each seed's key metric
    test: str = "welch"  # "welch" | "paired" (by seed)
    # method folder -> (label, {seed: why}) of the seeds not aggregated (``incomplete``, one entry per method)
    incomplete_seeds: Dict[str, tuple] = field(default_factory=dict)
    expected: Optional[int] = None  # seeds asked for (--seeds)

    @property
    def paired_rows(self) -> bool:
        """Some row was compared paired by seed (its Δ, CI, p and the detectable difference are paired)."""
        return self.test == "paired" and any(r.n_paired for r in self.rows)


TESTS = ("welch", "paired")


ALPHA = 0.05
POWER = 0.80


def _t_comparison(diff: float, se: float, df: float, level: float) -> Dict[str, float]:
    """A difference with standard error ``se`` and ``df`` degrees of freedom: its ``level`` t-interval
    and two-sided p-value (a zero standard error: the point itself, p 0 or 1)."""
    from scipy import stats

    if se == 0:
        return {"diff": diff, "lo": diff, "hi": diff, "df": float(df), "p": 0.0 if diff else 1.0}
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "df": float(df), "p": p}


def welch(a: Sequence[float], b: Sequence[float], level: float = 1 - ALPHA) -> Dict[str, float]:
    """Welch's comparison of two samples: difference of means, its ``level`` confidence interval,
    the Welch-Satterthwaite degrees of freedom and the two-sided p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se else len(a) + len(b) - 2
    return _t_comparison(float(a.mean() - b.mean()), se, df, level)


def paired(a: Dict[int, float], b: Dict[int, float], level: float = 1 - ALPHA) -> Dict[str, float]:
    """Paired t-test of two methods by seed: the differences ``a[k] - b[k]`` over the seeds both
    have, their mean, its ``level`` confidence interval, ``n - 1`` degrees of freedom and the
    two-sided p-value, with ``n`` and the differences' std ``sd``. Seeds fix more than the
    pre-training here (the downstream heads' seeds, few-shot TAL's test episodes), so what a seed
    does to every method cancels in the difference."""
    d = np.asarray([a[k] - b[k] for k in sorted(set(a) & set(b))], float)
    n, sd = len(d), float(d.std(ddof=1))
    return {**_t_comparison(float(d.mean()), sd / math.sqrt(n), n - 1, level), "n": n, "sd": sd}


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of m p-values (same order as given): the i-th smallest becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``. Comparing several methods with one baseline, a
    difference whose adjusted p is below the level is significant for the whole family of
    comparisons at that level (family-wise error), which the raw p-values are not."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_difference(std: float, n: int, alpha: float = ALPHA, power: float = POWER,
                                  paired: bool = False) -> float:
    """Smallest difference of two means of ``n`` seeds each, with standard deviation ``std``, that a
    two-sided t-test at level ``alpha`` detects with probability ``power``:
    ``(t_{1-alpha/2, 2n-2} + t_{power, 2n-2}) * std * sqrt(2 / n)``. ``paired``: ``std`` is that of
    the seed-by-seed differences, ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * std / sqrt(n)``.

    The usual approximation (it treats the test statistic under the alternative as a shifted
    central t): the exact power of that difference, from the noncentral t, is a little lower at few
    seeds (at 80 % asked: 79.9 % with 5 seeds a side, 79.1 % paired over 5, 76.6 % paired over 3),
    so the footer says "by the t approximation"."""
    from scipy import stats

    df, scale = (n - 1, math.sqrt(1.0 / n)) if paired else (2 * n - 2, math.sqrt(2.0 / n))
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * std * scale)


def _pooled_std(spread: Sequence[tuple]) -> float:
    """``spread``: (n, variance) pairs; the standard deviation pooled over them (n - 1 weights)."""
    return math.sqrt(sum((n - 1) * var for n, var in spread) / sum(n - 1 for n, _ in spread))


def _typical_count(counts: Sequence[int]) -> tuple:
    """The count most samples have (a tie: the fewer), and how many samples have fewer, so that one
    unfinished row does not raise the detectable difference of the whole table."""
    tally = Counter(counts)
    n = max(tally, key=lambda k: (tally[k], -k))
    return n, sum(c for k, c in tally.items() if k < n)


def _method_order(method_dir: str, names: Dict[str, str]) -> tuple:
    order = list(names)
    return (order.index(method_dir), "") if method_dir in order else (len(order), method_dir)


def build_table(spec: PaperTable, results: Dict[str, MethodResults], profile: str, baseline: Optional[str] = "tsp",
                backbone: str = "r2plus1d_18", include_paper: bool = True, names: Optional[Dict[str, str]] = None,
                expected_seeds: Optional[int] = None, test: str = "welch") -> Table:
    if test not in TESTS:
        raise ConfigError(f"--test: unknown {test!r}; expected one of {', '.join(TESTS)}")
    names = names if names is not None else paper_method_names()
    paper_for = {}
    for row in spec.rows:
        if row.get("method") and row.get("backbone") == backbone:
            paper_for[row["method"]] = row
    rows: List[Row] = []
    incomplete: List[str] = []
    incomplete_seeds: Dict[str, tuple] = {}
    key_by_seed: Dict[str, Dict[int, float]] = {}  # method -> seed -> key metric (percent)
    unmeasured: List[str] = []  # methods whose finished seeds hold none of this table's metrics
    left_out = []
    for method_dir in sorted(results, key=lambda m: _method_order(m, names)):
        res = results[method_dir]
        if res.left_out:
            left_out.append(f"{res.method} {', '.join(map(str, res.left_out))}")
        if res.incomplete:
            incomplete.append(f"{res.method}: " + ", ".join(f"seed {s} ({why})" for s, why in sorted(res.incomplete.items())))
            incomplete_seeds[method_dir] = (res.method, dict(sorted(res.incomplete.items())))
        # Tables 2b and 3 read the same task stage; a run that grounded one dataset only
        # (tasks.vlg.datasets) has finished seeds with nothing for the other table.
        seeds = {s: m for s, m in res.seeds.items() if any(m.get(k) is not None for k in spec.metrics)}
        if res.seeds and not seeds:
            unmeasured.append(res.method)
        if not seeds:
            continue
        row = Row(names.get(method_dir, res.method), "ours", method_dir, len(seeds), sorted(seeds), expected=expected_seeds)
        for metric in spec.metrics:
            row.by_seed[metric] = {seed: 100.0 * float(seeds[seed][metric]) for seed in sorted(seeds)
                                   if seeds[seed].get(metric) is not None}
            values = list(row.by_seed[metric].values())
            row.mean[metric] = float(np.mean(values)) if values else None
            row.std[metric] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            if metric == spec.key_metric:
                key_by_seed[method_dir] = row.by_seed[metric]
        match = paper_for.get(method_dir) if include_paper else None
        if match:
            row.paper = dict(match["values"])
        rows.append(row)
    # best mean per column among our rows (every metric here: higher is better)
    for metric in spec.metrics:
        means = [r.mean[metric] for r in rows if r.mean.get(metric) is not None]
        if means:
            top = max(means)
            for r in rows:
                r.best[metric] = r.mean.get(metric) is not None and math.isclose(r.mean[metric], top, rel_tol=0, abs_tol=1e-9)
    key_values = {m: np.asarray(list(v.values())) for m, v in key_by_seed.items()}
    notes = []
    if left_out:
        notes.append("seeds in the store but not asked for (--seeds), left out: " + "; ".join(left_out))
    if unmeasured:
        datasets = ", ".join(sorted({m.split("/")[0] for m in spec.metrics}))
        notes.append(f"no row for {', '.join(unmeasured)}: their finished {spec.task} stages hold no {datasets} "
                     f"figures (the run's tasks.{spec.task}.datasets left it out)")
    paired_spread = []  # (n, variance of the seed-by-seed differences) per compared row
    if baseline:
        base = key_values.get(baseline)
        if base is None:
            notes.append(f"p-values: baseline {baseline!r} has no finished seeds in this table")
        unpaired = []
        for r in rows:
            if r.method == baseline or base is None:
                continue
            ours = key_values.get(r.method)
            if test == "paired" and ours is not None:
                common = set(key_by_seed[r.method]) & set(key_by_seed[baseline])
                if len(common) < len(ours) or len(common) < len(base):
                    unpaired.append(f"{r.label} {', '.join(map(str, sorted(common))) or 'none'}")
                if len(common) >= 2:
                    w = paired(key_by_seed[r.method], key_by_seed[baseline])
                    r.p_value = None if np.isnan(w["p"]) else w["p"]
                    r.diff, r.ci, r.n_paired = w["diff"], (w["lo"], w["hi"]), w["n"]
                    paired_spread.append((w["n"], w["sd"] ** 2))
            elif ours is not None and len(ours) >= 2 and len(base) >= 2:
                w = welch(ours, base)
                r.p_value = None if np.isnan(w["p"]) else w["p"]
                r.diff, r.ci = w["diff"], (w["lo"], w["hi"])
        if unpaired:
            notes.append(f"paired test on the seeds both a row and {baseline} finished, where that is not all of "
                         f"either's: " + "; ".join(unpaired) + " (Δ over those seeds; fewer than 2: no test)")
        compared = [r for r in rows if r.p_value is not None]
        for r, adjusted in zip(compared, holm([r.p_value for r in compared])):
            r.p_holm = adjusted
    # The smallest difference these seeds can detect: the key metric's std pooled over our rows
    # (paired: the std of the seed-by-seed differences, pooled over the compared rows).
    spread = paired_spread or [(len(v), float(np.var(v, ddof=1))) for v in key_values.values() if len(v) >= 2]
    if spread:
        n, fewer = _typical_count([n for n, _ in spread])
        mdd = minimum_detectable_difference(_pooled_std(spread), n, paired=bool(paired_spread))
        mdd_n, mdd_fewer = n, fewer
    if include_paper:
        for row in spec.rows:
            method = row.get("method")
            if method in {r.method for r in rows} and row is paper_for.get(method):
                continue  # shown beside our row
            variant = ", ".join(x for x in (row.get("pretrain"), _backbone_label(row.get("backbone"))) if x and x != "-")
            rows.append(Row(f"{row['name']} ({variant})" if variant else row["name"], "paper", method,
                            row.get("seeds"), mean=dict(row["values"]), std=dict(row.get("std") or {})))
    table = Table(spec, profile, baseline, rows, incomplete, notes, test=test, incomplete_seeds=incomplete_seeds,
                  expected=expected_seeds)
    if spread:
        table.mdd, table.mdd_n, table.mdd_fewer = mdd, mdd_n, mdd_fewer
    table.ordering = ordering_agreement(rows, spec.key_metric)
    return table


def ordering_agreement(rows: Sequence[Row], metric: str) -> Optional[Dict[str, Any]]:
    """Does our ordering of methods follow the paper's? Kendall's tau between our means and the
    paper's numbers of ``metric`` over the methods that have both (3 or more), with the exact
    two-sided p-value of tau under orderings drawn at random. It says whether the two orders go
    together, not whether any one difference is real: a method's mean carries its seed spread."""
    from scipy import stats

    pairs = [(r.mean[metric], r.paper[metric]) for r in rows
             if r.source == "ours" and r.mean.get(metric) is not None and r.paper.get(metric) is not None]
    if len(pairs) < 3:
        return None
    ours, paper = zip(*pairs)
    # The exact null distribution assumes no ties; with ties scipy's asymptotic p (and the footer says so).
    exact = len(set(ours)) == len(ours) and len(set(paper)) == len(paper)
    result = stats.kendalltau(ours, paper, method="exact" if exact else "asymptotic")
    return {"tau": float(result.statistic), "p": float(result.pvalue), "methods": len(pairs),
            "p_method": "exact" if exact else "asymptotic, tied values"}


def _backbone_label(backbone: Optional[str]) -> Optional[str]:
    return {"r2plus1d_18": "R(2+1)D-18", "r3d_18": "Res3D-18"}.get(backbone, backbone)


def make_tables(store: RunStore, profile: str, table_ids: Sequence[str] = TABLE_IDS, baseline: Optional[str] = "tsp",
                methods: Optional[Sequence[str]] = None, include_paper: bool = True, backbone: str = "r2plus1d_18",
                profile_config: Optional[Dict[str, Any]] = None, expected_seeds: Optional[int] = None,
                per_seed: bool = False, heads: int = 1, test: str = "welch",
                seeds: Optional[Sequence[int]] = None) -> List[Table]:
    """The tables of ``profile``; with ``profile_config`` (the resolved profile the runs used), each
    table also notes the choices of its stages on which that profile departs from ``paper`` (FIDELITY.md).
    ``heads`` > 1: each seed's figures are the mean of its first ``heads`` heads (``collect_task_results``).
    ``test``: ``welch`` (the rows as independent samples) or ``paired`` (seed k against the baseline's seed k).
    ``seeds``: aggregate those seeds only (``expected_seeds`` defaults to their number); None: every finished one."""
    if heads < 1:
        raise ConfigError(f"--heads: expected an integer >= 1, got {heads}")
    if seeds is not None and expected_seeds is None:
        expected_seeds = len(set(seeds))
    if baseline:  # rows are keyed by method folder: features:/x/videoclip.h5 is features-videoclip
        baseline = method_dir_name(baseline)
    from clap_bench.fidelity import departures, paper_profile_dict

    specs = load_paper_tables()
    paper = paper_profile_dict() if profile_config is not None else None
    check = ConfigCheck(store, profile)
    out = []
    for table_id in table_ids:
        if table_id not in specs:
            raise ConfigError(f"--tables: unknown table {table_id!r}; expected some of {', '.join(TABLE_IDS)}")
        spec = specs[table_id]
        results = collect_task_results(store, profile, spec.task, methods, heads=heads,
                                       seeds=set(seeds) if seeds is not None else None, check=check)
        table = build_table(spec, results, profile, baseline, backbone, include_paper, expected_seeds=expected_seeds,
                            test=test)
        table.per_seed = per_seed
        if heads > 1:
            table.notes.append(f"each seed's figures: the mean of its first {heads} downstream heads "
                               f"(head seeds seed + 1000 j, j < {heads}; the stage's and analyze variance's)")
        if check.unchecked:
            table.notes.append("not checked against the profile's last run (its plan could not be built): "
                               + "; ".join(check.unchecked))
        if paper is not None:
            table.notes.extend(f"differs from the paper's protocol (FIDELITY.md): {line}"
                               for line in departures(profile_config, paper, table_id))
        out.append(table)
    return out


# --------------------------------------------------------------------------- rendering
def _fmt(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "N.A."
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _fmt_p(p: Optional[float]) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _header(table: Table) -> List[str]:
    base = f"p vs {table.baseline}" if table.baseline else "p"
    if table.test == "paired":
        base += ", paired"
    key_label = next(c["label"] for c in table.spec.columns if c["metric"] == table.spec.key_metric)
    diff = f"Δ vs {table.baseline} [95% CI]" if table.baseline else "Δ [95% CI]"
    per_seed = [f"per seed ({key_label})"] if table.per_seed else []
    n_compared = _n_compared(table)
    compared = [f"{diff} ({key_label})", f"{base} ({key_label})", f"Holm p ({n_compared} tests)"] if n_compared else []
    return ["Method", "n"] + [c["label"] for c in table.spec.columns] + per_seed + compared


def _per_seed_cell(values: Dict[int, float]) -> str:
    """Each finished seed's value, in seed order: ``0: 27.13, 1: 22.19``."""
    return ", ".join(f"{seed}: {v:.2f}" for seed, v in sorted(values.items()))


def _n_compared(table: Table) -> int:
    return sum(r.p_holm is not None for r in table.rows)


def _fewer_seeds_than_asked(row: Row) -> bool:
    return row.source == "ours" and row.n is not None and row.expected is not None and row.n < row.expected


def _n_cell(row: Row) -> str:
    if row.n is None:
        return ""
    return f"{row.n}/{row.expected} (!)" if _fewer_seeds_than_asked(row) else str(row.n)


def _diff_cell(table: Table, row: Row) -> str:
    if row.source == "paper" or row.method == table.baseline or row.diff is None:
        return ""
    star = "*" if row.p_value is not None and row.p_value < ALPHA else ""
    return f"{row.diff:+.2f}{star} [{row.ci[0]:+.2f}, {row.ci[1]:+.2f}]"


def _cells(table: Table, row: Row, bold) -> List[str]:
    cells = [row.label if row.source == "ours" else f"{row.label} [paper]", _n_cell(row)]
    for metric in table.spec.metrics:
        text = _fmt(row.mean.get(metric), row.std.get(metric))
        if row.source == "ours" and row.best.get(metric):
            text = bold(text)
        if row.source == "ours" and metric in row.paper:
            value = row.paper[metric]
            text += f" [{value:.2f}]" if value is not None else " [N.A.]"
        cells.append(text)
    if table.per_seed:
        cells.append(_per_seed_cell(row.by_seed.get(table.spec.key_metric, {})) if row.source == "ours" else "")
    if not _n_compared(table):  # no comparison in the table (one method, or no baseline): no empty columns
        return cells
    cells.append(_diff_cell(table, row))
    ours_compared = row.source != "paper" and row.method != table.baseline
    cells.append(_fmt_p(row.p_value) if ours_compared else "")
    cells.append(_fmt_p(row.p_holm) if ours_compared else "")
    return cells


def _caption(table: Table) -> str:
    # The legend explains only what the table shows: the comparison columns and the (!) mark
    # appear where some row has them.
    parts = [f"Table {table.spec.table}: {table.spec.title}; profile {table.profile}. Ours: mean ± std over n seeds "
             f"(percent), best per column in bold, the paper's number for the same method in [brackets]; "
             f"rows marked [paper] are reported by the paper only"]
    if _n_compared(table):
        if table.test == "paired":
            parts.append(f"Δ: mean difference on {table.spec.key_metric} from {table.baseline}, seed k against its seed k "
                         f"(the seeds both finished), with its 95% paired-t confidence interval, * where the paired "
                         f"t-test gives p < {ALPHA:g}")
        else:
            parts.append(f"Δ: difference of means on {table.spec.key_metric} against {table.baseline} with its 95% "
                         f"Welch confidence interval, * where Welch's t-test gives p < {ALPHA:g}")
        parts.append(f"Holm p: the p-values adjusted by "
                     f"Holm's step-down method over the table's comparisons with {table.baseline} (below {ALPHA:g}: "
                     f"significant for the family of comparisons)")
    if any(_fewer_seeds_than_asked(r) for r in table.rows):
        parts.append("n 3/5 (!): fewer seeds finished than asked")
    return "; ".join(parts) + "."


def render_markdown(tables: Sequence[Table]) -> str:
    from tabulate import tabulate

    parts = []
    for t in tables:
        body = [_cells(t, r, lambda s: f"**{s}**") for r in t.rows]
        parts.append(_caption(t))
        parts.append(tabulate(body, headers=_header(t), tablefmt="github", disable_numparse=True) if body else "(no results yet)")
        parts.extend(_footer(t))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _footer(t: Table) -> List[str]:
    lines = []
    if t.mdd is not None:
        what = "comparison" if t.paired_rows else "row"
        verb = "on" if t.paired_rows else "with"
        fewer = (f" {t.mdd_fewer} {what}{'s' if t.mdd_fewer > 1 else ''} {verb} fewer seeds "
                 f"need{'' if t.mdd_fewer > 1 else 's'} a larger one.") if t.mdd_fewer else ""
        if t.paired_rows:
            lines.append(f"Smallest detectable difference ({t.spec.key_metric}, paired by seed, {t.mdd_n} seeds, "
                         f"{POWER:.0%} power by the t approximation, {ALPHA:g} level, std of the seed-by-seed differences from {t.baseline} "
                         f"pooled over the compared rows): {t.mdd:.2f} points.{fewer}")
        else:
            lines.append(f"Smallest detectable difference ({t.spec.key_metric}, {t.mdd_n} seeds per method, "
                         f"{POWER:.0%} power by the t approximation, {ALPHA:g} level, std pooled over our rows): {t.mdd:.2f} points.{fewer}")
    if t.ordering is not None:
        lines.append(f"Ordering against the paper's ({t.spec.key_metric}, the {t.ordering['methods']} methods with a paper "
                     f"number): Kendall's tau {t.ordering['tau']:+.2f}, {t.ordering.get('p_method', 'exact')} p {_fmt_p(t.ordering['p'])} "
                     f"(+1: the paper's order, 0: unrelated, -1: reversed).")
    lines += [f"Note: {n}" for n in t.notes]
    if t.incomplete:
        lines.append("Incomplete (not aggregated): " + "; ".join(t.incomplete))
    return lines


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "†": r"$^\dagger$",
                  "±": r"$\pm$", "–": "--", "~": r"\textasciitilde{}", "^": r"\^{}", "Δ": r"$\Delta$",
                  "τ": r"$\tau$", "−": "-"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(tables: Sequence[Table]) -> str:
    parts = []
    for t in tables:
        header = _header(t)
        parts.append(r"\begin{table}[t]")
        parts.append(r"\centering")
        parts.append(r"\caption{" + _latex_escape(_caption(t).replace("in bold", "in bold")) + "}")
        parts.append(r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}")
        parts.append(r"\toprule")
        parts.append(" & ".join(_latex_escape(h) for h in header) + r" \\")
        parts.append(r"\midrule")
        for r in t.rows:
            marker = "\x00"  # bold marker survives escaping, then becomes \textbf
            cells = [_latex_escape(c) for c in _cells(t, r, lambda s: f"{marker}{s}{marker}")]
            cells = [_bold_latex(c, marker) for c in cells]
            parts.append(" & ".join(cells) + r" \\")
        parts.append(r"\bottomrule")
        parts.append(r"\end{tabular}")
        parts.append(r"\end{table}")
        parts.extend("% " + line for line in _footer(t))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _bold_latex(cell: str, marker: str) -> str:
    while cell.count(marker) >= 2:
        a = cell.index(marker)
        b = cell.index(marker, a + 1)
        cell = cell[:a] + r"\textbf{" + cell[a + 1:b] + "}" + cell[b + 1:]
    return cell


def render_csv(tables: Sequence[Table]) -> str:
    """One row per (table, method) of ours: n, seeds, then mean / std / paper per metric (percent);
    last what the markdown table says around its rows: ``expected`` (seeds asked for),
    ``fewer_than_expected`` (1: the row's (!) mark), ``incomplete`` (the method's seeds not aggregated,
    and why) and ``notes`` (the table's notes, `` | ``-separated). A method with no finished seed in a
    table gets a row too (n 0, no figures), carrying its incomplete seeds."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    all_metrics: List[str] = []
    for t in tables:
        for m in t.spec.metrics:
            if m not in all_metrics:
                all_metrics.append(m)
    header = ["table", "profile", "method", "n", "seeds"]
    for m in all_metrics:
        header += [f"{m} mean", f"{m} std", f"{m} paper", f"{m} best"]
    header += ["key_metric", "key_metric per seed", "baseline", "diff", "ci_low", "ci_high", "p_value", "p_holm", "test",
               "n_paired", "expected", "fewer_than_expected", "incomplete", "notes"]
    writer.writerow(header)
    for t in tables:
        notes = " | ".join(t.notes)
        ours = [r for r in t.rows if r.source == "ours"]
        # methods with nothing finished in this table: no row of figures, but their seeds are not lost
        ours += [Row(label, "ours", method_dir, 0, expected=t.expected) for method_dir, (label, _) in t.incomplete_seeds.items()
                 if method_dir not in {r.method for r in ours}]
        for r in ours:
            why = (t.incomplete_seeds.get(r.method) or (None, {}))[1]
            line = [t.spec.table, t.profile, r.method, r.n, " ".join(map(str, r.seeds))]
            for m in all_metrics:
                if m in t.spec.metrics:
                    line += [_num(r.mean.get(m)), _num(r.std.get(m)), _num(r.paper.get(m)), int(bool(r.best.get(m)))]
                else:
                    line += ["", "", "", ""]
            ci = r.ci or (None, None)
            per_seed = " ".join(f"{seed}:{v:.4f}" for seed, v in sorted(r.by_seed.get(t.spec.key_metric, {}).items()))
            line += [t.spec.key_metric, per_seed, t.baseline or "", _num(r.diff), _num(ci[0]), _num(ci[1]),
                     "" if r.p_value is None else f"{r.p_value:.6g}", "" if r.p_holm is None else f"{r.p_holm:.6g}",
                     t.test if r.p_value is not None else "", "" if r.n_paired is None else r.n_paired]
            line += ["" if r.expected is None else r.expected, int(_fewer_seeds_than_asked(r)),
                     "; ".join(f"seed {s} ({w})" for s, w in why.items()), notes]
            writer.writerow(line)
    return buf.getvalue()


def _num(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.4f}"


def render(tables: Sequence[Table], fmt: str = "markdown") -> str:
    if fmt == "markdown":
        return render_markdown(tables)
    if fmt == "latex":
        return render_latex(tables)
    if fmt == "csv":
        return render_csv(tables)
    raise ConfigError(f"--format: unknown {fmt!r}; expected one of {', '.join(FORMATS)}")


def plot_tables(tables: Sequence[Table], out: Path) -> List[List[str]]:
    """One panel per table: each of our methods' key metric, one dot per finished seed, its mean
    with the 95% t-interval of the mean, and the baseline's mean as a vertical line. A table compared
    ``paired`` draws what its test saw instead: each row's seed-by-seed differences from the
    baseline, their mean with the paired 95% interval, and zero. Returns each panel's method labels,
    bottom to top (the table's first row is drawn on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [t for t in tables if any(r.source == "ours" for r in t.rows)]
    if not tables:
        raise ConfigError("--plot: no finished seed in any of the tables to draw")
    panels = []
    heights = [0.35 * sum(r.source == "ours" for r in t.rows) + 1.2 for t in tables]
    fig, axes = plt.subplots(len(tables), 1, figsize=(8.5, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, t in zip(axes[:, 0], tables):
        metric = t.spec.key_metric
        label = next(c["label"] for c in t.spec.columns if c["metric"] == metric)
        if t.paired_rows:
            labels = _plot_paired_panel(ax, t, metric, label)
        else:
            labels = _plot_seeds_panel(ax, t, metric, label)
        ax.set_title(f"Table {t.spec.table}: {t.spec.title}; profile {t.profile}", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the rows, never over a dot
        panels.append(labels)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return panels


def _plot_rows(ax, rows: Sequence[Row]) -> List[str]:
    labels = [f"{r.label} (n={r.n})" for r in rows]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    return labels


def _plot_seeds_panel(ax, t: Table, metric: str, label: str) -> List[str]:
    from scipy import stats

    ours = [r for r in t.rows if r.source == "ours" and r.values(metric)][::-1]  # first row on top
    for y, r in enumerate(ours):
        v = np.asarray(r.values(metric))
        ax.scatter(v, np.full(len(v), y), s=12, color="C0", alpha=0.6, zorder=2, label="one seed" if y == 0 else None)
        half = float(stats.t.ppf(0.975, len(v) - 1)) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
        ax.errorbar([v.mean()], [y], xerr=[[half], [half]], fmt="D", color="black", ms=4, capsize=3, zorder=3,
                    label="mean, 95% CI" if y == 0 else None)
    base = next((r for r in ours if r.method == t.baseline), None)
    if base is not None:
        ax.axvline(float(np.mean(base.values(metric))), color="C3", ls="--", lw=1, label=f"{base.label} mean")
    ax.set_xlabel(f"{label} (%)", fontsize=8)
    return _plot_rows(ax, ours)


def _plot_paired_panel(ax, t: Table, metric: str, label: str) -> List[str]:
    base = next(r for r in t.rows if r.source == "ours" and r.method == t.baseline)
    compared = [r for r in t.rows if r.source == "ours" and r.n_paired][::-1]  # first row on top
    for y, r in enumerate(compared):
        d = np.asarray([v - base.by_seed[metric][k] for k, v in r.by_seed[metric].items() if k in base.by_seed[metric]])
        ax.scatter(d, np.full(len(d), y), s=12, color="C0", alpha=0.6, zorder=2,
                   label="one seed: minus the baseline's same seed" if y == 0 else None)
        ax.errorbar([r.diff], [y], xerr=[[r.diff - r.ci[0]], [r.ci[1] - r.diff]], fmt="D", color="black", ms=4,
                    capsize=3, zorder=3, label="mean difference, paired 95% CI" if y == 0 else None)
    ax.axvline(0.0, color="C3", ls="--", lw=1, label=f"no difference from {base.label}")
    ax.set_xlabel(f"{label}: difference from {base.label} (points), paired by seed", fontsize=8)
    return _plot_rows(ax, compared)


def tables_for_tasks(tasks: Sequence[str]) -> List[str]:
    """The tables a set of downstream tasks fills (tal -> 1, fstal -> 2a, vlg -> 2b and 3)."""
    specs = load_paper_tables()
    return [tid for tid in TABLE_IDS if specs[tid].task in tasks]
