"""``clapbench pretrain`` and ``clapbench extract``: the pre-training and feature extraction stages."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_command)
    app.command("extract")(extract_command)


def _profile(name: str):
    from clap_bench.config import ConfigError, load_profile

    try:
        return load_profile(name)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--profile")


def pretrain_command(
    method: str = typer.Option(..., "--method", "-m", help="Pre-training method (clapbench list methods)."),
    seed: int = typer.Option(0, "--seed", "-s", help="Random seed."),
    profile: str = typer.Option("default", "--profile", "-p", help="Profile name (smoke, default, paper) or YAML path."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: results/runs/<profile>/<method>/seed<k>/pretrain)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class subset: base, val, test (few-shot split) or a file of class names."),
    init: Optional[str] = typer.Option(None, "--init", help="Initial backbone weights: kinetics400, source, or a .pth / checkpoint path."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    imports: Optional[List[str]] = typer.Option(None, "--import", help="Plug-in module defining methods (repeatable), e.g. my_pkg.my_method."),
) -> None:
    """Pre-train a video encoder with one method; resumes from the output folder's checkpoint."""
    from clap_bench.config import ConfigError
    from clap_bench.methods import list_methods
    from clap_bench.plugins import with_imports
    from clap_bench.training import pretrain, resolve_classes

    try:
        prof = with_imports(_profile(profile), imports)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if method not in list_methods():
        raise typer.BadParameter(f"unknown method {method!r}; known: {', '.join(list_methods())}", param_hint="--method")
    from clap_bench.encoders.video import WeightsNotFoundError
    from clap_bench.io import CheckpointError, UnsafeCheckpointError

    out_dir = out or Path("results") / "runs" / prof.name / method / f"seed{seed}" / "pretrain"
    try:
        class_list = resolve_classes(prof, classes)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    try:
        path = pretrain(prof, method, seed, out_dir, classes=class_list, init=init, progress=progress)
    except (UnsafeCheckpointError, CheckpointError, WeightsNotFoundError) as e:  # a weights file refused, foreign or missing
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(str(path))


def extract_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Pre-training checkpoint (final.pt)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset key of the profile (activitynet, charades-sta, tacos, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output HDF5 file."),
    shard: str = typer.Option("0/1", "--shard", help="i/n: extract shard i of n (videos i, i+n, ...); the last to finish merges."),
    profile: str = typer.Option("default", "--profile", "-p", help="Profile name or YAML path (clip and stride settings)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Write the backbone features of every clip of every video of a dataset to one HDF5 file."""
    from clap_bench.features import extract_features

    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise typer.BadParameter(f"expected i/n (e.g. 0/4), got {shard!r}", param_hint="--shard") from None
    if not (n >= 1 and 0 <= i < n):
        raise typer.BadParameter(f"expected 0 <= i < n, got {shard!r}", param_hint="--shard")
    if not checkpoint.exists():
        raise typer.BadParameter(f"{checkpoint}: no such file", param_hint="--checkpoint")
    from clap_bench.config import ConfigError
    from clap_bench.io import CheckpointError, UnsafeCheckpointError

    try:
        path = extract_features(_profile(profile), checkpoint, dataset, out, shard=(i, n), progress=progress)
    except (UnsafeCheckpointError, CheckpointError, ConfigError) as e:  # ConfigError: e.g. a dataset the profile lacks
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(str(path))
