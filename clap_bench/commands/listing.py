"""``clapbench list ...``: what is registered: methods, downstream tasks, annotation formats.

``list_app`` is created once here; another module adds its own listing with
``from clap_bench.commands.listing import list_app`` and ``@list_app.command("tasks")``.
"""

from __future__ import annotations

from typing import List, Optional

import typer

list_app = typer.Typer(name="list", help="List registered methods, downstream tasks and annotation formats.", no_args_is_help=True, add_completion=False)


def register(app: typer.Typer) -> None:
    app.add_typer(list_app, name="list")


IMPORT_HELP = "Plug-in module to import first (repeatable), e.g. my_pkg.my_method."


def _load(imports: Optional[List[str]], profile: Optional[str]) -> None:
    """Import the plug-ins of ``--import`` and of ``--profile``'s ``imports``; errors name the module."""
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.plugins import import_modules, load_profile_imports

    try:
        if profile:
            load_profile_imports(load_profile(profile))
        import_modules(imports or [])
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@list_app.command("methods")
def methods(
    pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 'clap*'."),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Also import the profile's plug-ins (imports:)."),
) -> None:
    """Pre-training methods, one line each: name, where it comes from, what it trains."""
    from clap_bench.methods import METHODS, list_methods, method_summary

    _load(imports, profile)
    names = _matching(list_methods, pattern, "method")
    width = max(len(n) for n in names)
    origins = {n: METHODS.origin(n) for n in names}
    owidth = max(len(o) for o in origins.values())
    for name in names:
        typer.echo(f"{name:<{width}}  {origins[name]:<{owidth}}  {method_summary(name)}")


@list_app.command("tasks")
def tasks(
    pattern: str = typer.Argument("*", help="Wildcard filter."),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Also import the profile's plug-ins (imports:)."),
) -> None:
    """Downstream tasks, one line each: name, where it comes from, datasets it reads, what it is."""
    from clap_bench.downstream.base import get_task, list_tasks, task_origin

    _load(imports, profile)
    names = _matching(list_tasks, pattern, "task")
    for name in names:
        spec = get_task(name)
        typer.echo(f"{name:<6}  {task_origin(name):<10}  {','.join(spec.datasets):<28}  {spec.description}")


@list_app.command("formats")
def formats() -> None:
    """Annotation formats the readers understand (names for --format and data.datasets.*.format)."""
    from clap_bench.data import READERS

    for name in READERS.list():
        doc = (READERS.get(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<16}  {doc[0] if doc else ''}")


def _matching(lister, pattern: str, kind: str) -> List[str]:
    """``lister(pattern)``'s names; an entry point that fails to load exits 2, no match exits 1."""
    from clap_bench.config import ConfigError

    try:
        names = lister(pattern)
    except ConfigError as e:  # an entry point that fails to load
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if not names:
        typer.echo(f"no {kind} matches {pattern!r}", err=True)
        raise typer.Exit(1)
    return names
