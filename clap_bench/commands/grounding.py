"""Grounding commands: ``clapbench eval grounding`` (the scorer) and ``clapbench downstream vlg`` (2D-TAN).

Both attach to groups created elsewhere (``eval_app`` in ``commands/evaluate.py``,
``downstream_app`` in ``commands/downstream.py``), so this module must come after them in
``COMMAND_MODULES``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def grounding(
    ground_truth: Path = typer.Argument(..., help='Ground-truth JSON: [{"id": ..., "segment": [start, end]}, ...] (seconds).'),
    predictions: Path = typer.Argument(..., help='Predictions JSON: [{"id": ..., "segments": [[start, end], ...]}, ...], best first.'),
    as_json: bool = typer.Option(
        False, "--json", help='Print one JSON object {"R@1": {"0.1": x, ...}, "R@5": {...}, "mIoU": x} (fractions).'
    ),
) -> None:
    """Grounding recall: Rank@{1,5} at IoU > {0.1, 0.3, 0.5, 0.7} and mIoU of the top-1 moment, as 2D-TAN computes them."""
    from clap_bench.eval.grounding import GroundingFormatError, evaluate_grounding, format_grounding_table

    try:
        result = evaluate_grounding(ground_truth, predictions)
    except GroundingFormatError as e:
        if as_json:
            typer.echo(json.dumps({"error": str(e)}))
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps({k: result[k] for k in ("R@1", "R@5", "mIoU")}))
        return
    typer.echo(f"Video language grounding: {predictions}")
    typer.echo(format_grounding_table(result))


def _parse_features(values: List[str]) -> dict:
    out = {}
    for v in values:
        key, sep, path = v.partition("=")
        if not sep or not key or not path:
            raise typer.BadParameter(f"expected DATASET=FILE.h5, got {v!r}", param_hint="--features")
        if key in out:
            raise typer.BadParameter(f"dataset {key!r} given twice", param_hint="--features")
        out[key] = Path(path)
    return out


def vlg(
    features: List[str] = typer.Option(..., "--features", help="DATASET=FILE.h5, once per dataset (charades-sta, tacos)."),
    profile: str = typer.Option("default", "--profile", help="Profile name (smoke, default, paper) or a YAML file."),
    out: Path = typer.Option(..., "--out", help="Output folder: <dataset>/{predictions,ground_truth,metrics}.json and metrics.json."),
    datasets: Optional[str] = typer.Option(
        None, "--datasets", help="Comma-separated datasets to run (default: every dataset given with --features)."
    ),
    dataset_config: Optional[Path] = typer.Option(
        None, "--dataset-config",
        help="YAML mapping dataset keys (charades-sta, tacos) to dataset configs, replacing the profile's.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the heads' initialisation and batch order."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    overrides: List[str] = typer.Option([], "--set", help="Override a tasks.vlg setting, e.g. --set epochs=3 or --set tacos.num_clips=32 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Video language grounding: train 2D-TAN per dataset on its training queries, report R@{1,5} and mIoU on its test queries."""
    from clap_bench.commands.downstream import run_task_command

    feature_files = _parse_features(features)
    chosen = [d.strip() for d in datasets.split(",") if d.strip()] if datasets else list(feature_files)
    missing = [k for k in chosen if k not in feature_files]
    if missing:
        raise typer.BadParameter(f"no feature file for {', '.join(missing)}", param_hint="--features")
    run_task_command(
        "vlg", feature_files, profile, dataset_config, out, seed, device, overrides, as_json,
        extra_overrides={"datasets": chosen}, datasets_needed=chosen,
    )


def register(app: typer.Typer) -> None:
    from clap_bench.commands.downstream import downstream_app
    from clap_bench.commands.evaluate import eval_app

    eval_app.command("grounding")(grounding)
    downstream_app.command("vlg")(vlg)
