"""``clapbench preflight``: run every stage at the profile's real shapes on a few videos, then project the full run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from tabulate import tabulate


def register(app: typer.Typer) -> None:
    app.command("preflight")(preflight)


def preflight(
    profile: str = typer.Option("default", "--profile", "-p", help="Profile name (smoke, default, paper) or YAML path."),
    videos: int = typer.Option(2, "--videos", "-n", min=1, help="Videos per dataset."),
    steps: int = typer.Option(2, "--steps", "-k", min=1, help="Optimizer steps / iterations / episode batches per stage."),
    stand_in: bool = typer.Option(False, "--stand-in", help="Generate the videos that are not on disk (annotated duration)."),
    methods: str = typer.Option("clap", "--methods", "-m", help="Pre-training methods to time, comma-separated."),
    seeds: int = typer.Option(5, "--seeds", min=1, help="Seeds of the projected sweep."),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="Cluster profile for the projection (default: preflight.cluster)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report as JSON here (default: results/preflight/<profile>.json)."),
    work: Optional[Path] = typer.Option(None, "--work", help="Keep the preflight's files (videos, features, checkpoints) in this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of tables."),
) -> None:
    """Time every stage of the main job at the profile's shapes and project the full run's hours and disk."""
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.data import AnnotationError
    from clap_bench.io import atomic_write_json
    from clap_bench.preflight import run_preflight

    try:
        prof = load_profile(str(profile))
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--profile")
    from clap_bench.methods import list_methods
    from clap_bench.runs import parse_methods

    try:
        names = parse_methods(methods)
    except ConfigError as e:
        raise typer.BadParameter(str(e).removeprefix("--methods: "), param_hint="--methods")
    unknown = [m for m in names if m not in list_methods()]
    if unknown:
        raise typer.BadParameter(f"unknown method(s) {unknown}; known: {', '.join(list_methods())}", param_hint="--methods")
    say = (lambda msg: None) if as_json else (lambda msg: typer.echo(f"preflight: {msg}", err=True))
    try:
        report = run_preflight(prof, names, videos=videos, steps=steps, stand_in=stand_in, seeds=seeds,
                               cluster_path=str(cluster) if cluster else None, work_dir=work, progress=say)
    except (AnnotationError, ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
        raise typer.Exit(2)
    path = out if out is not None else Path("results") / "preflight" / f"{prof.name}.json"
    atomic_write_json(path, report)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(format_report(report))
    typer.echo(f"\nreport: {path}")


def _gib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _hours(h: float, unit: str = "") -> str:
    """Hours to one decimal (followed by ``unit``), or minutes under 0.1 h (in minutes, whatever ``unit`` is)."""
    if h < 0.1:
        return f"{h * 60:.1f} {'process-minutes' if unit == 'process-hours' else 'min'}"
    return f"{h:,.1f} {unit}" if unit else f"{h:,.1f}"


def format_report(report: dict) -> str:
    """The measured stages, then the projection, as plain-text tables."""
    lines = [f"preflight of profile {report['profile']!r} on {report['device']}: {report['videos_per_dataset']} videos per dataset, "
             f"{report['steps']} steps per stage ({report['seconds']:.0f} s)"]
    if report["shrinks"]:
        lines.append("shrunk for this run (the profile's shapes are unchanged): "
                     + ", ".join(f"{k}={v}" for k, v in report["shrinks"].items()))
    lines += [f"note: {n}" for n in report["notes"]]
    rows = [[m["stage"], m["shape"], f"{m['units']:g} {m['unit']}", f"{m['seconds']:.2f}", f"{m['rate']:.3g} {m['unit']}/s",
             _gib(m["peak_host_bytes"]), _gib(m["peak_device_bytes"])] for m in report["measures"]]
    lines += ["", tabulate(rows, headers=["stage", "shapes", "done", "s", "rate", "peak host GiB", "peak device GiB"], tablefmt="github")]
    sizes = report["datasets"]
    rows = [[k, s["videos"], s.get("queries") or "-",
             f"{s['extraction_clips']:,}" if "extraction_clips" in s else
             ("(not extracted: the source model's)" if "train_videos" in s else "(ActivityNet's videos)"),
             f"{s['hours_of_video']:,.0f}" if "hours_of_video" in s else "-"] for k, s in sizes.items()]
    lines += ["", tabulate(rows, headers=["dataset", "videos", "queries", "clips to extract", "hours of video"], tablefmt="github")]
    proj = report["projection"]
    rows = [[r["stage"], r["method"] or "", f"{r['work']:,.0f} {r['unit']}", r["processes"], _hours(r["hours"]), r["note"]]
            for r in proj["stages"]]
    cluster = proj["cluster"]
    if cluster and Path(cluster).resolve().is_relative_to(Path.cwd().resolve()):
        cluster = str(Path(cluster).resolve().relative_to(Path.cwd().resolve()))
    lines += ["", f"projection at the rates above (cluster profile: {cluster or 'none, one process per stage'}):", "",
              tabulate(rows, headers=["stage (per method and seed unless noted)", "method", "work", "processes", "hours", ""], tablefmt="github")]
    for method, t in proj["one_seed"].items():
        lines.append(f"one seed of {method}: {_hours(t['hours'], 'h')} if the stages ran one after another, "
                     f"{_hours(t['process_hours'], 'process-hours')}")
    sw = proj["sweep"]
    lines.append(f"sweep {len(sw['methods'])} method(s) x {sw['seeds']} seeds: {_hours(sw['hours_if_serial'], 'h')} serial, "
                 f"{_hours(sw['process_hours'], 'process-hours')}")
    disk = proj["disk"]
    lines.append(f"disk per (method, seed): features {disk['one_seed_bytes'] / 1e9 - disk['checkpoints_one_seed'] / 1e9:.1f} GB "
                 f"({', '.join(f'{k} {v / 1e9:.1f} GB' for k, v in disk['feature_files_one_seed'].items())}), "
                 f"checkpoints {disk['checkpoints_one_seed'] / 1e9:.2f} GB; sweep {disk['sweep_bytes'] / 1e9:.1f} GB")
    source = proj.get("source") or {}
    if source.get("models"):
        n = len(source["models"])
        lines.append(f"source model(s) (encoder.weights: source): {n - source['to_train']} of {n} cached on this machine"
                     + (f"; {source['to_train']} to train, {source['bytes'] / 1e9:.2f} GB of checkpoints (in the sweep's disk)"
                        if source["to_train"] else ""))
    return "\n".join(lines)
