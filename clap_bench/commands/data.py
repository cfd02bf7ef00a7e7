"""``clapbench data ...``: look at annotation files (and, from other modules, make data).

``data_app`` is created once here; another module adds its own commands to the same group
with ``from clap_bench.commands.data import data_app`` and ``@data_app.command(...)``, and
needs only to be imported before the CLI runs (listing it in ``COMMAND_MODULES`` does that;
its ``register`` then has nothing left to add).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from tabulate import tabulate

from clap_bench.data import READERS, AnnotationError, combined_counts, read_annotation_files

data_app = typer.Typer(
    name="data",
    help="Inspect annotation files and build datasets.",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("inspect")
def inspect(
    paths: List[Path] = typer.Argument(..., help="Annotation files of one dataset, or folders holding them."),
    format: Optional[str] = typer.Option(
        None, "--format", "-f", help="Annotation format (detected from the content when omitted)."
    ),
    subset: Optional[str] = typer.Option(None, "--subset", help="Read only this subset."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Print counts of a dataset's annotations: videos, segments/actions, queries, classes, subsets, dropped rows."""
    if format is not None and format not in READERS:
        raise typer.BadParameter(f"unknown format {format!r}; known: {', '.join(READERS.list())}", param_hint="--format")
    try:
        counts = combined_counts(read_annotation_files(paths, format=format, subset=subset))
    except AnnotationError as e:
        if as_json:
            typer.echo(json.dumps({"error": {"path": e.path, "where": e.where, "problem": e.problem}}))
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(counts))
        return
    typer.echo(_table(counts))


def _table(counts: dict) -> str:
    head = [
        ["format", counts["format"]],
        ["source", counts["source"]],
        ["videos", counts["videos"]],
        ["segments", counts["segments"]],
        ["actions", counts["actions"]],
        ["queries", counts["queries"]],
        ["classes", counts["classes"]],
        ["dropped", counts["dropped"]],
    ]
    lines = [tabulate(head, tablefmt="plain")]
    if counts["subsets"]:
        rows = [[name, c["videos"], c["segments"], c["actions"], c["sentences"]] for name, c in counts["subsets"].items()]
        lines += ["", tabulate(rows, headers=["subset", "videos", "segments", "actions", "queries"], tablefmt="simple")]
    if counts["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in counts["notes"]]
    return "\n".join(lines)
