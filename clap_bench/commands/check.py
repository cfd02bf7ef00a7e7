"""``clapbench data check``: every annotated video of a profile, present, readable and as long as annotated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from tabulate import tabulate

from clap_bench.commands.data import data_app


def register(app: typer.Typer) -> None:
    """Nothing to add: ``check`` joins the ``data`` group (created in commands/data.py) on import."""


@data_app.command("check")
def check(
    profile: str = typer.Option("default", "--profile", "-p", help="Profile name (smoke, default, paper) or YAML path."),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", "-d", help="Check only this dataset key (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes."),
    out: Optional[Path] = typer.Option(None, "--out", help="Problem CSV to write (default: check.problems_file of the profile)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Check that every annotated video is there, decodes at its first and last annotated second and lasts as annotated.

    Writes the problems (video, dataset, problem, detail) to a CSV that pre-training and feature
    extraction then read to leave those videos out, and every video's duration, fps and size to a
    second CSV beside it. Exits with status 1 when a problem was found.
    """
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.data import AnnotationError
    from clap_bench.data.check import DURATION_MISMATCH, MISSING, UNREADABLE, check_data, report_dict

    try:
        prof = load_profile(profile)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--profile")
    try:
        result = check_data(prof, dataset or None, jobs=jobs, progress=not as_json, out=out)
    except (AnnotationError, KeyError, ValueError) as e:
        typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(report_dict(result)))
    else:
        rows = [[k, s["videos"], s["found"], s[MISSING], s[UNREADABLE], s[DURATION_MISMATCH], s["fps"], s["size"]]
                for k, s in result.summary().items()]
        typer.echo(tabulate(rows, headers=["dataset", "videos", "found", "missing", "unreadable", "duration mismatch", "fps", "size"],
                            tablefmt="simple"))
        typer.echo(f"\nproblems: {len(result.problems)} -> {result.problems_csv}")
        typer.echo(f"every video: {result.videos_csv}")
    if result.problems:
        raise typer.Exit(1)
