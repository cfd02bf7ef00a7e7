"""``clapbench curves``: the per-epoch validation figures of pre-training stages."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("curves")
    def curves_cmd(
        method: List[str] = typer.Option(..., "--method", "-m", help="a method in the run store; repeat to compare"),
        profile: str = typer.Option("default", "--profile", "-p"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="a count (5), a list (0,3) or a range (5-9); default: every seed found"),
        stage: str = typer.Option("pretrain", "--stage", help="pretrain or pretrain-base"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="also draw the curves into this PNG"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="run store root (default $CLAPBENCH_RUNS or ./results/runs)"),
    ):
        """Per-epoch validation figures (epoch 0 = before training) of each method's pre-training stages."""
        from clap_bench.config import ConfigError
        from clap_bench.runs import RunStore, runs_root
        from clap_bench.runs.curves import format_curves, plot_curves, stage_curves
        from clap_bench.runs.plan import parse_seeds

        try:
            wanted = parse_seeds(seeds) if seeds is not None else None
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        root = runs_root(runs_dir)
        store = RunStore(root)
        try:
            curves = stage_curves(store, profile, method, wanted, stage)
        except ValueError as e:  # a damaged metrics.jsonl, named with its line
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        if not curves:
            typer.echo(f"error: no {stage} stage with per-epoch records for {', '.join(method)} in {root}/{profile}", err=True)
            raise typer.Exit(2)
        lacking = []
        for m in dict.fromkeys(method):
            asked = store.seeds(profile, m) if wanted is None else wanted
            absent = [s for s in asked if (m, s) not in curves]
            if not any(key[0] == m for key in curves):
                lacking.append(m if wanted is None else f"{m} (seeds {', '.join(map(str, absent))})")
            elif absent:
                lacking.append(f"{m} seed{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))}")
        if lacking:
            typer.echo(f"note: no {stage} stage with per-epoch records for {'; '.join(lacking)} in {root}/{profile}; "
                       "shown without them", err=True)
        typer.echo(format_curves(curves), nl=False)
        if out is not None:
            plot_curves(curves, out, title=f"{stage} validation, profile {profile}")
            typer.echo(f"wrote {out}")
