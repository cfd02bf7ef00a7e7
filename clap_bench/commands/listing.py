"""``clapbench list ...``: what is registered: methods, downstream tasks, annotation formats.

``list_app`` is created once here; another module adds its own listing with
``from clap_bench.commands.listing import list_app`` and ``@list_app.command("tasks")``.
"""

from __future__ import annotations

import typer

list_app = typer.Typer(name="list", help="List registered methods, downstream tasks and annotation formats.", no_args_is_help=True, add_completion=False)


def register(app: typer.Typer) -> None:
    app.add_typer(list_app, name="list")


@list_app.command("methods")
def methods(pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 'clap*'.")) -> None:
    """Pre-training methods, one line each: name and what it trains."""
    from clap_bench.methods import list_methods, method_summary

    names = list_methods(pattern)
    if not names:
        typer.echo(f"no method matches {pattern!r}", err=True)
        raise typer.Exit(1)
    width = max(len(n) for n in names)
    for name in names:
        typer.echo(f"{name:<{width}}  {method_summary(name)}")


@list_app.command("tasks")
def tasks(pattern: str = typer.Argument("*", help="Wildcard filter.")) -> None:
    """Downstream tasks, one line each: name, datasets it reads, what it is."""
    from clap_bench.downstream.base import get_task, list_tasks

    for name in list_tasks(pattern):
        spec = get_task(name)
        typer.echo(f"{name:<6}  {','.join(spec.datasets):<28}  {spec.description}")


@list_app.command("formats")
def formats() -> None:
    """Annotation formats the readers understand (names for --format and data.datasets.*.format)."""
    from clap_bench.data import READERS

    for name in READERS.list():
        doc = (READERS.get(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<16}  {doc[0] if doc else ''}")
