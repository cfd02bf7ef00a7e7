"""``clapbench table`` (the paper's tables from the run store) and ``clapbench analyze feature-quality`` (Fig. 2a)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from clap_bench.config import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("table")
    def table_cmd(
        fmt: str = typer.Option("markdown", "--format", "-f", help="markdown | latex | csv"),
        tables: str = typer.Option("1,2a,2b,3", "--tables", help="comma-separated: 1 (TAL), 2a (few-shot TAL), 2b (Charades-STA), 3 (TACoS)"),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="profile name (default: every profile in the store)"),
        baseline: str = typer.Option("tsp", "--baseline", help="method the t-test compares each method against"),
        test: str = typer.Option("welch", "--test", help="welch: rows as independent samples; paired: seed k of a method against seed k of the baseline (the seeds both finished)"),
        methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated subset of methods"),
        no_paper: bool = typer.Option(False, "--no-paper", help="leave out the paper's reported numbers"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="seeds to aggregate, as in clapbench run: 5 -> seeds 0..4, a list (5,6,7) or a range (5-9); rows with fewer finished are marked (default: every finished seed)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="run store root (default $CLAPBENCH_RUNS or ./results/runs)"),
        plot: Optional[Path] = typer.Option(None, "--plot", help="also draw each table's key metric per method (seeds, mean, 95% CI) into this PNG; with --test paired, each method's seed-by-seed differences from the baseline"),
        per_seed: bool = typer.Option(False, "--per-seed", help="add a column with each seed's key metric (markdown, latex; csv always has it)"),
        heads: int = typer.Option(1, "--heads", help="H > 1: each seed's figure is the mean of its first H downstream heads (the stage's, then those analyze variance trained); a seed lacking one is left out"),
    ):
        """Print Tables 1, 2a, 2b, 3: mean ± std over finished seeds, difference to --baseline with its
        95% CI and t-test p-value (Welch's, or --test paired), Holm's adjustment, the smallest detectable
        difference, the paper's numbers beside them."""
        from clap_bench.runs import RunStore, make_tables, parse_methods, parse_seeds, render, runs_root
        from clap_bench.runs.tables import TABLE_IDS

        ids = [t.strip() for t in tables.split(",") if t.strip()]
        # a list that names nothing ("," or "") is refused, as run, sweep and status refuse it: not read as every method
        if not ids:
            typer.echo(f"error: --tables: expected comma-separated table ids ({', '.join(TABLE_IDS)}), got {tables!r}", err=True)
            raise typer.Exit(2)
        try:
            method_list = parse_methods(methods) if methods is not None else None
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        store = RunStore(runs_root(runs_dir))
        profiles = [profile] if profile else store.profiles()
        if not profiles:
            typer.echo(f"No runs under {store.root}; start one with: clapbench run --method clap --seeds 5", err=True)
            raise typer.Exit(1)
        try:
            if profile and profile not in store.profiles():
                profiles = [_store_profile_name(store, profile)]
            if method_list:
                _check_methods(store, profiles, method_list)
            out = []
            for name in profiles:
                out.extend(make_tables(store, name, ids, baseline=baseline or None,
                                       methods=method_list,
                                       include_paper=not no_paper, backbone=_recorded_backbone(store, name),
                                       profile_config=_recorded_profile(store, name),
                                       seeds=parse_seeds(seeds) if seeds is not None else None,
                                       per_seed=per_seed, heads=heads, test=test))
            typer.echo(render(out, fmt), nl=False)
            if plot is not None:
                from clap_bench.runs.tables import plot_tables

                plot_tables(out, plot)
                typer.echo(f"wrote {plot}", err=True)
        except (ConfigError, ValueError) as e:  # ValueError: a damaged record, named by read_json
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)

    analyze = typer.Typer(help="Analyses of extracted features.", no_args_is_help=True)
    app.add_typer(analyze, name="analyze")
    _register_timelines(analyze)
    _register_variance(analyze)

    @analyze.command("feature-quality")
    def feature_quality_cmd(
        method: List[str] = typer.Option(..., "--method", "-m", help="a method in the run store, or features:PATH.h5; repeat to compare"),
        profile: str = typer.Option("default", "--profile", "-p"),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(Path("feature_quality.png"), "--out", "-o", help="PNG to write"),
        clip_s: float = typer.Option(1.0, "--clip-seconds", help="length of each sampled clip (s)"),
        sample_seed: int = typer.Option(0, "--sample-seed", help="seed of the clip draws (the same for every method)"),
        normalize: bool = typer.Option(True, "--normalize/--raw", help="L2-normalise feature rows first"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
    ):
        """The paper's Fig. 2a: histogram of fg2bg − fg2fg feature distances over ActivityNet validation videos."""
        import h5py

        from clap_bench.config import resolve_datasets
        from clap_bench.data import load_dataset
        from clap_bench.runs import RunStore, runs_root
        from clap_bench.runs.feature_quality import feature_quality, plot_histogram, summary
        from clap_bench.runs.store import finished_metrics

        store = RunStore(runs_root(runs_dir))
        files = {}
        try:
            prof = store.resolve_profile(profile)  # its name is the store's folder
            for m in method:
                if m.startswith("features:"):
                    path = Path(m.split(":", 1)[1]).expanduser()
                    if path.is_dir():
                        path = path / "activitynet.h5"
                else:
                    from clap_bench.runs.plan import method_trains

                    # a method that does not train (none) has one extraction, under seed 0
                    stage = store.stage_dir(prof.name, m, seed if method_trains(m) else 0, "extract-activitynet")
                    metrics = finished_metrics(stage)
                    if metrics is None:
                        raise ConfigError(f"{stage}: no finished feature extraction for {m} seed {seed} "
                                          f"(run: clapbench run --method {m} --tasks tal --profile {profile})")
                    path = stage / metrics["features"]
                if not path.is_file():
                    raise ConfigError(f"{path}: feature file not found")
                if not h5py.is_hdf5(str(path)):
                    raise ConfigError(f"{path}: not an HDF5 feature file (expected (T, D) datasets keyed by video id)")
                files[m] = path
            datasets = resolve_datasets(prof)
            ann = load_dataset(datasets["activitynet"], "activitynet")
            val = ann.subset(*[s for s in ("validation", "val") if s in {v.subset for v in ann.videos.values()}])
            if not val.videos:
                raise ConfigError("activitynet: no validation videos")
            diffs = feature_quality(files, val, clip_s=clip_s, seed=sample_seed, normalize=normalize)
        except (ConfigError, ValueError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        plot_histogram(diffs, out, title=f"fg2bg − fg2fg, ActivityNet validation ({prof.name}, seed {seed})")
        for label, d in diffs.items():
            typer.echo(f"{label}: " + json.dumps(summary(d)))
        typer.echo(f"wrote {out}")


def _check_methods(store, profiles: List[str], methods: List[str]) -> None:
    """``--methods``: each must have runs in one of the profiles tabulated; else the error names
    those without and lists the methods the store has."""
    from clap_bench.runs.store import method_dir_name

    have = {d: store.method_label(name, d) for name in profiles for d in store.methods(name)}
    unknown = [m for m in methods if method_dir_name(m) not in have]
    if unknown:
        where = f"profile {profiles[0]}" if len(profiles) == 1 else f"profiles {', '.join(profiles)}"
        raise ConfigError(f"--methods: no runs of {', '.join(unknown)} in {where} under {store.root}; "
                          f"it has runs of: {', '.join(sorted(set(have.values()))) or 'none'}")


def _store_profile_name(store, profile: str) -> str:
    """The store's folder for ``--profile``: the name itself, or the name of the profile a YAML file
    defines; a profile the store has no runs of is refused with the ones it has."""
    name = store.resolve_profile(profile).name if Path(profile).suffix in (".yaml", ".yml") else profile
    if name not in store.profiles():
        known = ", ".join(store.profiles()) or "none"
        raise ConfigError(f"--profile {profile}: no runs of profile {name!r} under {store.root}; it has runs of: {known}")
    return name


def _recorded_profile(store, profile: str) -> Optional[dict]:
    """The resolved profile the runs of ``profile`` used (recorded by ``clapbench run``), or None."""
    from clap_bench.runs.store import read_json

    return read_json(store.profile_file(profile))


def _register_timelines(analyze: typer.Typer) -> None:
    @analyze.command("timelines")
    def timelines_cmd(
        method: List[str] = typer.Option(..., "--method", "-m", help="a method in the run store; repeat to compare (two or more)"),
        profile: str = typer.Option("default", "--profile", "-p"),
        seed: int = typer.Option(0, "--seed"),
        task: str = typer.Option("tal", "--task", help="tal (G-TAD) or fstal (QAT)"),
        videos: int = typer.Option(4, "--videos", min=1, help="how many validation videos to draw"),
        video: Optional[List[str]] = typer.Option(None, "--video", help="draw these video ids instead"),
        top_k: int = typer.Option(3, "--top-k", help="predictions per method and video"),
        out: Path = typer.Option(Path("timelines.png"), "--out", "-o", help="PNG to write"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
    ):
        """The paper's Fig. 2b: ground-truth intervals of validation videos against each method's top predictions."""
        from clap_bench.config import resolve_datasets
        from clap_bench.data import load_dataset
        from clap_bench.runs import RunStore, runs_root
        from clap_bench.runs.store import read_json
        from clap_bench.runs.timelines import pick_videos, plot_timelines

        store = RunStore(runs_root(runs_dir))
        try:
            if task not in ("tal", "fstal"):
                raise ConfigError(f"--task: expected tal or fstal, got {task!r}")
            prof = store.resolve_profile(profile)  # its name is the store's folder
            predictions = {}
            for m in method:
                from clap_bench.runs.plan import head_dir

                stage = store.stage_dir(prof.name, m, seed, task)
                path = stage / "predictions.json"
                if not path.is_file() and head_dir(stage, 0).is_dir():  # several head seeds: the first head's
                    path = head_dir(stage, 0) / "predictions.json"
                if not path.is_file():
                    raise ConfigError(f"{path}: no {task} predictions for {m} seed {seed} "
                                      f"(run: clapbench run --method {m} --tasks {task} --profile {profile})")
                predictions[m] = read_json(path)
            ann = load_dataset(resolve_datasets(prof)["activitynet"], "activitynet")
            ids = list(video) if video else pick_videos(ann, predictions, videos)
            unknown = [v for v in ids if v not in ann.videos]
            if unknown:
                raise ConfigError(f"--video: not in the activitynet annotations: {', '.join(unknown)}")
            for v in ids:
                lacking = [m for m, p in predictions.items() if v not in p.get("results", {})]
                if len(lacking) == len(predictions):
                    raise ConfigError(f"--video {v}: no {task} predictions for it from {', '.join(lacking)} (seed {seed})")
                if lacking:
                    typer.echo(f"note: {v}: no {task} predictions from {', '.join(lacking)}; their rows stay empty", err=True)
            plot_timelines(ann, predictions, ids, out, top_k=top_k,
                           title=f"{task} predictions vs ground truth ({prof.name}, seed {seed})")
        except (ConfigError, ValueError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        typer.echo(f"wrote {out} ({len(ids)} videos: {', '.join(ids)})")


def _register_variance(analyze: typer.Typer) -> None:
    @analyze.command("variance")
    def variance_cmd(
        method: str = typer.Option(..., "--method", "-m", help="a method with at least 2 finished seeds of the task"),
        task: str = typer.Option("tal", "--task", help="tal (Table 1), fstal (2a) or vlg (2b, 3)"),
        profile: str = typer.Option("default", "--profile", "-p"),
        heads: int = typer.Option(3, "--heads", help="head seeds per pre-training seed (the stage's own run is the first)"),
        bootstrap: int = typer.Option(200, "--bootstrap", help="resamples of the test set per run (0: skip)"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="as in clapbench run: a count (5 -> seeds 0..4), a list (5,6,7) or a range (5-9) (default: every finished one)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ):
        """Split the seed spread of a method's figures into pre-training seed, head seed and test set."""
        from clap_bench.runs import RunStore, parse_seeds, runs_root
        from clap_bench.runs.variance import format_report, run_variance

        store = RunStore(runs_root(runs_dir))
        try:
            # One grammar for every command's --seeds: a bare number is a count here too (it used to
            # name one seed, which the decomposition, needing two or more, always refused).
            chosen = parse_seeds(seeds) if seeds else None
            parts = run_variance(store, profile, method, task, heads=heads, bootstrap=bootstrap, seeds=chosen,
                                 progress=not quiet, log=(lambda m: None) if quiet else (lambda m: typer.echo(m, err=True)),
                                 warn=lambda m: typer.echo(f"note: {m}", err=True))
        except (ConfigError, ValueError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        typer.echo(format_report(method, task, parts), nl=False)


def _recorded_backbone(store, profile: str) -> str:
    from clap_bench.runs.store import read_json

    arch = (read_json(store.profile_file(profile)) or {}).get("encoder", {}).get("arch")
    return "r3d_18" if arch == "r3d_18" else "r2plus1d_18"
