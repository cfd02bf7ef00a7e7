"""``clapbench eval ...``: score prediction files with the benchmark's scorers.

``eval_app`` is created once here; another module adds its own scorer to the same group with
``from clap_bench.commands.evaluate import eval_app`` and ``@eval_app.command(...)``, and needs
only to be imported before the CLI runs (listing it in ``COMMAND_MODULES`` does that).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from tabulate import tabulate

from clap_bench.eval.detection import DEFAULT_TIOU_THRESHOLDS, DetectionFileError, evaluate_detection

eval_app = typer.Typer(
    name="eval",
    help="Score prediction files (ActivityNet detection mAP, grounding recall).",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("detection")
def detection(
    ground_truth: Path = typer.Argument(..., help="ActivityNet ground-truth JSON ({\"database\": ...})."),
    predictions: Path = typer.Argument(..., help="Detections in the ActivityNet result format ({\"results\": ...})."),
    subset: str = typer.Option("validation", "--subset", help="Subset of the ground truth to score against."),
    as_json: bool = typer.Option(
        False, "--json", help='Print one JSON object {"tiou_thresholds", "mAP", "average_mAP"} (fractions).'
    ),
    tiou: str = typer.Option(
        None,
        "--tiou",
        help="Comma-separated tIoU thresholds instead of the official numpy.linspace(0.5, 0.95, 10), e.g. 0.3,0.5,0.7.",
    ),
) -> None:
    """ActivityNet detection mAP at tIoU 0.50:0.05:0.95 and its average, as the official evaluation computes it."""
    thresholds = DEFAULT_TIOU_THRESHOLDS if tiou is None else _parse_thresholds(tiou)
    try:
        result = evaluate_detection(ground_truth, predictions, subset=subset, tiou_thresholds=thresholds)
    except DetectionFileError as e:
        if as_json:
            typer.echo(json.dumps({"error": {"path": e.source, "where": e.where, "problem": e.problem}}))
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(result))
        return
    rows = [[f"{t:.2f}", f"{100 * m:.2f}"] for t, m in zip(result["tiou_thresholds"], result["mAP"])]
    rows.append(["average", f"{100 * result['average_mAP']:.2f}"])
    typer.echo(f"ActivityNet detection, subset {subset!r}: {predictions}")
    typer.echo(tabulate(rows, headers=["tIoU", "mAP (%)"], tablefmt="simple", disable_numparse=True))


def _parse_thresholds(text: str) -> tuple:
    try:
        thresholds = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers in (0, 1], got {text!r}", param_hint="--tiou")
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise typer.BadParameter(f"expected comma-separated numbers in (0, 1], got {text!r}", param_hint="--tiou")
    return thresholds
