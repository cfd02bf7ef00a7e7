"""``clapbench data synth``: generate (or find in the cache) the synthetic benchmark."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import typer
from tabulate import tabulate

from clap_bench.commands.data import data_app
from clap_bench.config import DataConfig
from clap_bench.synth import PROFILES, ensure_synthetic, read_manifest, synth_root
from clap_bench.synth.generate import current_manifest


def register(app: typer.Typer) -> None:
    """Nothing to add: ``synth`` joins the ``data`` group (created in commands/data.py) on import."""


@data_app.command("synth")
def synth(
    profile: str = typer.Option("default", "--profile", help=f"Benchmark size: {' | '.join(PROFILES)}."),
    seed: int = typer.Option(0, "--seed", help="Generation seed (same profile and seed: identical files)."),
    out: Optional[Path] = typer.Option(
        None, "--out",
        help="Cache folder; the benchmark goes to <out>/synth/<profile>-seed<seed>/ (default: the profiles' cache_dir).",
    ),
    progress: bool = typer.Option(False, "--progress", help="Show a progress bar per dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Write the synthetic benchmark (H.264 videos + annotation files in the real formats), or reuse the cached one."""
    if profile not in PROFILES:
        raise typer.BadParameter(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}", param_hint="--profile")
    cache_dir = out if out is not None else Path(DataConfig().cache_dir)
    root = synth_root(profile, seed, cache_dir)
    cached = current_manifest(root, PROFILES[profile]) is not None
    t0 = time.perf_counter()
    datasets = ensure_synthetic(profile, seed, cache_dir, progress=progress and not as_json)
    seconds = time.perf_counter() - t0
    manifest = read_manifest(root) or {}
    report = {
        "root": str(root),
        "profile": profile,
        "seed": seed,
        "generated": not cached,
        "seconds": round(seconds, 2),
        "generation_seconds": manifest.get("generation_seconds"),
        "bytes": sum(f["bytes"] for f in manifest.get("files", [])),
        "counts": manifest.get("counts", {}),
        "datasets": {k: dataclasses.asdict(v) for k, v in datasets.items()},
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    verb = "generated" if report["generated"] else "found in the cache"
    typer.echo(f"synthetic benchmark {profile!r} seed {seed} {verb}: {root} ({report['bytes'] / 1e6:.1f} MB, {seconds:.1f} s)")
    rows = [[key, ", ".join(f"{k} {v}" for k, v in c.items())] for key, c in report["counts"].items()]
    typer.echo(tabulate(rows, headers=["dataset", "counts"], tablefmt="simple"))
