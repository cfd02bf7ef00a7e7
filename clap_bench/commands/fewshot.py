"""``clapbench downstream fstal``: few-shot temporal action localization (QAT) on pre-extracted features.

Attaches to ``downstream_app`` (created in ``commands/downstream.py``), so this module comes
after ``downstream`` in ``COMMAND_MODULES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def fstal(
    features: Path = typer.Option(
        ..., "--features", help="HDF5 of (T, D) features keyed by ActivityNet video id, from an encoder pre-trained on base classes only."
    ),
    profile: str = typer.Option("default", "--profile", help="Profile name (smoke, default, paper) or a YAML file."),
    dataset_config: Optional[Path] = typer.Option(
        None, "--dataset-config",
        help="YAML mapping the keys activitynet and fewshot-split to dataset configs, replacing the profile's.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (episodes, per-run predictions and ground truth, metrics.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the heads' initialisation and of the episodes."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    overrides: List[str] = typer.Option([], "--set", help="Override a tasks.fstal setting, e.g. --set shots=1 or --set gtad.epochs=2 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Few-shot TAL: G-TAD on base classes, QAT meta-training on base episodes, 5-shot test episodes of the test classes."""
    from clap_bench.commands.downstream import run_task_command

    run_task_command("fstal", {"activitynet": features}, profile, dataset_config, out, seed, device, overrides, as_json)


def register(app: typer.Typer) -> None:
    from clap_bench.commands.downstream import downstream_app

    downstream_app.command("fstal")(fstal)
