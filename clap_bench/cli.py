"""The ``clapbench`` command line. It only parses arguments and calls the stages.

Each area keeps its commands in ``clap_bench/commands/<area>.py`` with a ``register(app)``
function; this file assembles them.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="clapbench",
    help="Benchmark video-encoder pre-training (TAC, TSP, CLAP, ...) on temporal localization tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of the help text.
COMMAND_MODULES: list = ["data", "synth", "check", "evaluate", "downstream", "fewshot", "grounding", "run", "tables", "curves", "pretrain", "listing", "preflight"]


def _assemble() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"clap_bench.commands.{name}").register(app)


_assemble()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
