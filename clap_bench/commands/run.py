"""``clapbench run``, ``clapbench sweep`` and ``clapbench status``: the main job and its bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from clap_bench.config import ConfigError, Profile, load_profile


def _profile(profile: Optional[str], config: Optional[Path], echo=typer.echo) -> Profile:
    if profile and config:
        raise typer.BadParameter("give --profile or --config, not both")
    if config:
        loaded = load_profile(str(config))
    elif profile:
        loaded = load_profile(profile)
    else:
        loaded = load_profile("default")
        echo("No dataset configured (no --profile / --config): running the synthetic 'default' profile, "
             f"generated on first use under {loaded.data.cache_dir}.", err=True)
        return loaded
    if loaded.data.synthetic:
        echo(f"Profile {loaded.name!r}: synthetic data ({loaded.data.synth_profile}, seed {loaded.data.synth_seed}).", err=True)
    return loaded


def _backbone(profile: Profile) -> str:
    return "r3d_18" if profile.encoder.arch == "r3d_18" else "r2plus1d_18"


IMPORT_HELP = "plug-in module defining methods or tasks (repeatable; added to the profile's imports), e.g. my_pkg.my_method"


def _execute(methods: List[str], seeds: str, tasks: Optional[str], profile: Optional[str], config: Optional[Path],
             executor: str, cluster: Optional[Path], runs_dir: Optional[Path], dry_run: bool, wait: bool,
             quiet: bool, table_methods: Optional[List[str]], baseline: Optional[str], wait_for_claims: bool = True,
             imports: Optional[List[str]] = None, test: str = "welch") -> None:
    from clap_bench.runs import EXECUTORS, RunStore, load_cluster, make_tables, parse_seeds, parse_tasks, render, run_plan, runs_root
    from clap_bench.runs.slurm import slurm_available, with_job_threads
    from clap_bench.runs.store import with_store_threads
    from clap_bench.plugins import with_imports
    from clap_bench.runs.plan import plan_factory
    from clap_bench.runs.tables import TESTS, tables_for_tasks

    try:
        if executor not in EXECUTORS:  # before planning, and for --dry-run too
            raise ConfigError(f"--executor: unknown {executor!r}; expected one of {', '.join(EXECUTORS)}")
        prof = with_imports(_profile(profile, config), imports)  # the profile carries them to every stage's process
        seed_list = parse_seeds(seeds)
        task_list = parse_tasks(tasks)
        if test not in TESTS:  # before any stage runs, not when the table is printed at the end
            raise ConfigError(f"--test: unknown {test!r}; expected one of {', '.join(TESTS)}")
        cluster_profile = load_cluster(cluster) if cluster else None
        if executor == "slurm" and cluster_profile is None:
            raise ConfigError("--executor slurm needs --cluster slurm/<profile>.yaml (e.g. slurm/local.yaml)")
        world = os.environ.get("WORLD_SIZE", "1").strip()
        if executor != "slurm" and world.isdigit() and int(world) > 1:
            # Every process would run the plan: rank 0 claims a DDP stage and waits in init_process_group
            # for the others, which wait for its claim (until the 24 h process-group timeout).
            raise ConfigError(
                f"--executor {executor} under torchrun (WORLD_SIZE={world}): a run is one process; each of "
                f"{world} processes would run the whole plan and wait for the others' stage claims. Run it as one "
                "process, give source/pretrain stages several processes through SLURM (--executor slurm, "
                "tasks_per_node in the cluster profile), or pre-train under torchrun with `clapbench pretrain`")
        if executor == "slurm" and not dry_run and not slurm_available():
            # before the datasets are prepared and profile.json is written
            raise ConfigError("--executor slurm: sbatch/squeue not found (start a local cluster with slurm/start_cluster.sh)")
        if executor == "slurm":
            prof = with_job_threads(prof, cluster_profile)
        store = RunStore(runs_root(runs_dir))
        prof = with_store_threads(prof, store)  # the store's thread counts, not this machine's cores
        plan = plan_factory()(prof, methods, seed_list, task_list)
        for method in dict.fromkeys(s.method for s in plan if s.method is not None):
            store.check_method_folder(prof.name, method)  # its folder holds another method's stages
    except (ConfigError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if dry_run:
        from clap_bench.runs.store import damaged_record

        typer.echo(f"Plan ({len(plan)} stages, executor {executor}, runs under {store.root}):")
        damaged = {}
        for line in plan.describe(store, seed_major=executor != "slurm"):
            key = line.split()[0]
            stage_dir = plan.stage_dir(store, plan.stages[key])
            damaged[key] = damaged_record(stage_dir)
            state = "FAIL " if damaged[key] else "done " if store.is_done(stage_dir, plan.hashes[key]) else "todo "
            typer.echo(f"  {state}{line}")
        damaged = {k: why for k, why in damaged.items() if why}
        if damaged:
            typer.echo(f"{len(damaged)} stage(s) have a damaged record; a run fails them (the stages after them are "
                       "not run, the others are):\n" + "\n".join(f"  {k}: {why}" for k, why in damaged.items()), err=True)
            raise typer.Exit(1)
        return
    if prof.data.synthetic and any(not m.startswith("features:") for m in methods) and any(
        s.fn.__module__ == "clap_bench.runs.plan" for s in plan
    ):
        from clap_bench.config import resolve_datasets

        typer.echo("Preparing the synthetic datasets (cached after the first run) ...", err=True)
        resolve_datasets(prof, progress=not quiet)
    from submitit.core.utils import FailedJobError

    from clap_bench.runs.slurm import SlurmQueryError

    try:
        report = run_plan(plan, store, executor=executor, cluster=cluster_profile, wait=wait, progress=not quiet,
                          echo=lambda s: typer.echo(s, err=True), wait_for_claims=wait_for_claims)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except FailedJobError as e:  # sbatch refused a job (bad partition, account, time limit, ...)
        typer.echo(f"error: SLURM refused the submission: {e}".rstrip()
                   + (f"\n(check the cluster profile {cluster})" if cluster else ""), err=True)
        raise typer.Exit(1)
    except SlurmQueryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if executor == "slurm" and not wait:
        typer.echo(f"Submitted {len(report.submitted)} job(s), {len(report.kept)} already queued, {len(report.reused)} stage(s) done. "
                   f"Follow with: clapbench status --profile {prof.name}" + (f" --runs-dir {runs_dir}" if runs_dir else ""))
        _report_failures(report)
        return
    try:
        tables = make_tables(store, prof.name, tables_for_tasks(task_list), baseline=baseline, methods=table_methods,
                             backbone=_backbone(prof), seeds=seed_list, test=test)
        typer.echo(render(tables, "markdown"))
    except (ConfigError, ValueError) as e:  # ValueError: a damaged record, named by read_json
        typer.echo(f"error: the tables: {e}", err=True)
        if report.ok:
            raise typer.Exit(2)
    if report.held:
        typer.echo(f"{len(report.held)} stage(s) skipped (--no-wait) because another process holds them or a stage "
                   "above them: " + ", ".join(report.held) + ". Rerun later (or without --no-wait) to complete the tables.",
                   err=True)
    _report_failures(report)


def _report_failures(report) -> None:
    """Each failed stage with its reason, then exit 1; nothing when every stage ran or was reused."""
    if report.ok:
        return
    typer.echo(f"{len(report.failed)} stage(s) failed, {len(report.blocked)} not run because of them: "
               + ", ".join(report.failed) + ". See clapbench status.", err=True)
    for key, why in report.failed.items():
        typer.echo(f"  {key}: {why}", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        method: str = typer.Option("clap", "--method", "-m", help="pre-training method (clapbench list methods) or features:PATH.h5 / features:DIR"),
        seeds: str = typer.Option("5", "--seeds", help="number of seeds (5 -> seeds 0..4), a list (0,3,4) or a range (5-9); finished seeds are reused"),
        tasks: Optional[str] = typer.Option(None, "--tasks", help="downstream tasks, comma-separated: tal,fstal,vlg (default: all)"),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="smoke | default | paper (default: the synthetic default)"),
        config: Optional[Path] = typer.Option(None, "--config", help="a profile YAML file instead of --profile"),
        executor: str = typer.Option("local", "--executor", help="local | debug | slurm"),
        cluster: Optional[Path] = typer.Option(None, "--cluster", help="SLURM cluster profile (slurm/*.yaml)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="run store root (default $CLAPBENCH_RUNS or ./results/runs)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and exit"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
        wait_for_claims: bool = typer.Option(True, "--wait/--no-wait",
                                             help="a stage another process is running: wait for it and reuse its result (default), "
                                                  "or skip it and the stages below it"),
        imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    ):
        """Pre-train, extract and run the downstream tasks for one method over several seeds, then print its table."""
        _execute([method], seeds, tasks, profile, config, executor, cluster, runs_dir, dry_run, wait=True, quiet=quiet,
                 table_methods=[method], baseline=None, wait_for_claims=wait_for_claims, imports=imports)

    @app.command("sweep")
    def sweep_cmd(
        methods: str = typer.Option(..., "--methods", help="comma-separated methods, e.g. tac,tsp,clap-clip,clap-mask,clap,clap-no-cls"),
        seeds: str = typer.Option("5", "--seeds", help="a count (5 -> seeds 0..4), a list (0,3,4) or a range (5-9)"),
        tasks: Optional[str] = typer.Option(None, "--tasks"),
        profile: Optional[str] = typer.Option(None, "--profile", "-p"),
        config: Optional[Path] = typer.Option(None, "--config"),
        executor: str = typer.Option("slurm", "--executor", help="slurm | local | debug"),
        cluster: Optional[Path] = typer.Option(None, "--cluster", help="SLURM cluster profile (slurm/*.yaml)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
        dry_run: bool = typer.Option(False, "--dry-run"),
        wait: bool = typer.Option(False, "--wait/--no-wait", help="slurm: wait for the jobs and print the tables"),
        baseline: str = typer.Option("tsp", "--baseline", help="method the p-values compare against"),
        test: str = typer.Option("welch", "--test", help="welch | paired (seed k against the baseline's seed k), as clapbench table"),
        quiet: bool = typer.Option(True, "--quiet/--progress"),
        imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    ):
        """Run several methods x seeds (as SLURM jobs chained by afterok dependencies, or locally)."""
        from clap_bench.runs import parse_methods

        try:
            method_list = parse_methods(methods)  # before anything is planned or written (profile.json included)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        _execute(method_list, seeds, tasks, profile, config, executor, cluster, runs_dir, dry_run, wait=wait or executor != "slurm",
                 quiet=quiet, table_methods=method_list, baseline=baseline, imports=imports, test=test)

    @app.command("status")
    def status_cmd(
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="profile name (default: every profile in the store)"),
        config: Optional[Path] = typer.Option(None, "--config"),
        methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated (default: those in the store)"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="count, list or range (default: those in the store)"),
        tasks: Optional[str] = typer.Option(None, "--tasks"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
        lines: int = typer.Option(5, "--lines", help="error lines shown per failed stage"),
        fingerprints: bool = typer.Option(False, "--fingerprints",
                                          help="also content hashes of the synthetic data and of each finished stage's outputs"),
    ):
        """Every (method, seed, stage): done, running (SLURM job and state), failed (log and error), missing."""
        from clap_bench.runs import RunStore, parse_methods, parse_seeds, parse_tasks, runs_root

        store = RunStore(runs_root(runs_dir))
        try:
            method_list = parse_methods(methods) if methods is not None else None  # None: those in the store
            task_list = parse_tasks(tasks)  # "," names no task: said once, not once per method
            seed_list = parse_seeds(seeds) if seeds else None
            profiles = _status_profiles(store, profile, config)
        except (ConfigError, ValueError) as e:  # ValueError: a damaged record, named by read_json
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        if not profiles:
            typer.echo(f"No runs under {store.root}.")
            return
        for prof in profiles:
            try:
                statuses = _print_status(store, prof, method_list, seed_list, task_list, lines)
            except (ConfigError, ValueError) as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2)
            if fingerprints:
                _print_fingerprints(prof, statuses or [])


def _status_profiles(store, profile: Optional[str], config: Optional[Path]) -> List[Profile]:
    """The profiles to show, each with the thread counts its store's stages were planned with (as a run
    plans them: ``with_store_threads``), so that status does not depend on the cores it runs on."""
    from clap_bench.runs.store import with_store_threads

    if profile and not config:
        recorded = store.recorded_profile(profile)
        if recorded is not None:  # the config the runs were made with
            return [with_store_threads(recorded, store)]
    if config or profile:
        return [with_store_threads(load_profile(str(config) if config else profile), store)]
    return [with_store_threads(p, store) for p in (store.recorded_profile(name) for name in store.profiles()) if p is not None]


def _print_status(store, prof: Profile, methods: Optional[List[str]], seeds: Optional[List[int]], tasks: List[str], lines: int) -> None:
    from tabulate import tabulate

    from clap_bench.runs import plan_status
    from clap_bench.runs.plan import plan_factory
    from clap_bench.runs.status import summarize

    method_list = methods or [store.method_label(prof.name, m) for m in store.methods(prof.name)]
    if not method_list:
        typer.echo(f"profile {prof.name}: no runs under {store.profile_dir(prof.name)}")
        return
    statuses = []
    for method in method_list:
        seed_list = seeds or store.seeds(prof.name, method)
        if not seed_list:
            continue
        try:
            plan = plan_factory()(prof, [method], seed_list, tasks)
        except ConfigError as e:
            typer.echo(f"{method}: {e}", err=True)
            continue
        statuses.extend(s for s in plan_status(plan, store) if s.key not in {x.key for x in statuses})
    rows = [[s.method or "(shared)", "" if s.seed is None else s.seed, s.stage, s.state, s.detail] for s in statuses]
    typer.echo(f"profile {prof.name} ({store.profile_dir(prof.name)}):")
    typer.echo(tabulate(rows, headers=["method", "seed", "stage", "state", "job / log"], tablefmt="simple"))
    counts = summarize(statuses)
    typer.echo("  " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    for s in statuses:
        if s.state == "damaged":
            typer.echo(f"\n{s.key} damaged: {s.damaged}")
        if s.state == "failed" and s.error_tail:
            typer.echo(f"\n{s.key} failed ({s.log_path}):")
            for line in s.error_tail[-lines:]:
                typer.echo(f"    {line}")
    return statuses


def _print_fingerprints(prof: Profile, statuses: list) -> None:
    """Content hashes to compare with another machine's run: the synthetic data, then each finished stage."""
    from clap_bench.runs.fingerprints import combined, folder_fingerprints, read_stage_fingerprints

    typer.echo(f"\nfingerprints (profile {prof.name}; same command, same fingerprint = same bytes):")
    if prof.data.synthetic:
        from clap_bench.synth import synth_root

        root = synth_root(prof.data.synth_profile, prof.data.synth_seed, prof.data.cache_dir)
        if root.is_dir():
            files = folder_fingerprints(root, skip_bookkeeping=False)
            files.pop("manifest.json", None)  # holds generation times
            typer.echo(f"  synthetic data {combined(files)}  ({len(files)} files under {root})")
        else:
            typer.echo(f"  synthetic data: not generated ({root})")
    for s in statuses:
        if s.state != "done":
            continue
        record = read_stage_fingerprints(s.stage_dir)
        if record is None:
            typer.echo(f"  {s.key:<44} (finished before fingerprints were recorded)")
            continue
        typer.echo(f"  {s.key:<44} {record['stage']}  metrics {record['metrics']}")
        for name, value in record["files"].items():
            typer.echo(f"      {value}  {name}")
