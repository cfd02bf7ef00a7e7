"""``clapbench downstream fstal``: few-shot temporal action localization (QAT) on pre-extracted features.

Attaches to ``downstream_app`` (created in ``commands/downstream.py``), so this module comes
after ``downstream`` in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import logging
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
    from clap_bench.commands.downstream import _echo_metrics, parse_overrides, read_dataset_config
    from clap_bench.config import ConfigError, deep_merge, from_dict, load_profile, resolve_datasets
    from clap_bench.downstream.base import TaskContext, get_task

    if not features.exists():
        raise typer.BadParameter(f"{features}: feature file not found", param_hint="--features")
    spec = get_task("fstal")
    try:
        prof = load_profile(profile)
        task_overrides = deep_merge(dict(prof.tasks.get("fstal", {}) or {}), parse_overrides(overrides))
        from_dict(spec.config_cls, task_overrides, "tasks.fstal").validate()  # fail before any data work
        if dataset_config is not None:
            datasets = read_dataset_config(dataset_config, "activitynet")
            missing = [k for k in spec.datasets if k not in datasets]
            if missing:
                raise ConfigError(f"{dataset_config}: no dataset config for {missing}; expected keys {list(spec.datasets)}")
        else:
            datasets = resolve_datasets(prof, progress=not as_json)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if not as_json and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = TaskContext(
        features={"activitynet": features},
        datasets=datasets,
        out_dir=out,
        seed=seed,
        overrides=task_overrides,
        device=device,
        progress=not as_json,
    )
    _echo_metrics(spec.run(ctx), out, as_json)


def register(app: typer.Typer) -> None:
    from clap_bench.commands.downstream import downstream_app

    downstream_app.command("fstal")(fstal)
