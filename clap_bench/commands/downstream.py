"""``clapbench downstream ...``: train and score a downstream head on pre-extracted features.

``downstream_app`` is created here; the modules of other heads attach their commands to it
(``from clap_bench.commands.downstream import downstream_app``) and must come after this
module in ``COMMAND_MODULES``. This module itself adds ``tal`` (G-TAD on ActivityNet).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import typer
import yaml

from clap_bench.config import ConfigError, DatasetConfig, from_dict

downstream_app = typer.Typer(
    name="downstream",
    help="Train a downstream head (tal: G-TAD, fstal: QAT, vlg: 2D-TAN) on extracted features and score it.",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(downstream_app, name="downstream")


def read_dataset_config(path: Path, key: str) -> Dict[str, DatasetConfig]:
    """A YAML file with one ``DatasetConfig`` (format, annotations, videos, extra) for ``key``,
    or a mapping of dataset keys to them (the shape of a profile's ``data.datasets``)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read dataset config: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping (a dataset config, or dataset keys to dataset configs)")
    fields = set(DatasetConfig.__dataclass_fields__)
    if set(raw) <= fields:
        return {key: from_dict(DatasetConfig, raw, str(path))}
    return {k: from_dict(DatasetConfig, v, f"{path}: {k}") for k, v in raw.items()}


def parse_overrides(values: List[str], option: str = "--set") -> dict:
    """``KEY=VALUE`` pairs (values parsed as YAML, dotted keys nest) -> a mapping.

    A later pair replaces an earlier pair's value at the same key; a key that one pair makes a
    mapping (``epochs.x=1``) and another a single value (``epochs=3``) is an error naming both,
    in either order: whichever came last would otherwise silently drop the other."""
    out: dict = {}
    set_by: Dict[str, str] = {}  # dotted key -> the pair that last gave it its value (or made it a mapping)

    def origin(key: str) -> str:
        """The pair that set ``key``, or the nearest mapping above it (a mapping given as one YAML value)."""
        parts = key.split(".")
        return next(set_by[k] for k in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if k in set_by)

    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise typer.BadParameter(f"{item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})",
                                     param_hint=option) from None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[:i + 1])
            if part not in node:
                node[part] = {}
                set_by[prefix] = item
            node = node[part]
            if not isinstance(node, dict):
                raise typer.BadParameter(f"{item!r} conflicts with {origin(prefix)!r}: {prefix} is already set to "
                                         f"{node!r}, not a mapping", param_hint=option)
        earlier = node.get(parts[-1])
        if isinstance(earlier, dict) and not isinstance(parsed, dict):
            raise typer.BadParameter(f"{item!r} conflicts with {origin(key)!r}: {key} is already a mapping "
                                     f"{earlier!r}, not a single value", param_hint=option)
        node[parts[-1]] = parsed
        for inner in [k for k in set_by if k.startswith(key + ".")]:  # replaced along with the old value
            del set_by[inner]
        set_by[key] = item
    return out


def check_feature_file(path: Path, option: str = "--features") -> None:
    """A feature file that exists and is HDF5, or a clear error naming it."""
    import h5py

    if not path.exists():
        raise typer.BadParameter(f"{path}: feature file not found", param_hint=option)
    if not path.is_file() or not h5py.is_hdf5(str(path)):
        raise typer.BadParameter(f"{path}: not an HDF5 feature file (expected (T, D) datasets keyed by video id)",
                                 param_hint=option)


def run_task_command(
    task: str,
    features: Dict[str, Path],
    profile: str,
    dataset_config: Optional[Path],
    out: Path,
    seed: int,
    device: str,
    overrides: List[str],
    as_json: bool,
    extra_overrides: Optional[dict] = None,
    datasets_needed: Optional[List[str]] = None,
) -> None:
    """What every ``clapbench downstream <task>`` does: check the inputs and the task's config
    before any data work, resolve the datasets, run the task, print its metrics.

    ``datasets_needed``: the dataset keys this run reads (default: all the task declares); a
    ``--dataset-config`` holding a single dataset config is taken for the first of them."""
    from clap_bench.config import deep_merge, load_profile, resolve_datasets
    from clap_bench.downstream.base import TaskContext, get_task

    from clap_bench.io import FeatureFileError

    for path in features.values():
        check_feature_file(path)
    spec = get_task(task)
    try:
        prof = load_profile(profile)
        task_overrides = deep_merge(prof.task_config(task), parse_overrides(overrides))
        task_overrides.update(extra_overrides or {})
        from_dict(spec.config_cls, task_overrides, f"tasks.{task}").validate()  # fail before any data work
        needed = list(datasets_needed or spec.datasets)
        if dataset_config is not None:
            datasets = read_dataset_config(dataset_config, needed[0])
            missing = [k for k in needed if k not in datasets]
            if missing:
                raise ConfigError(f"{dataset_config}: no dataset config for {missing}; expected keys {needed}")
        else:
            datasets = resolve_datasets(prof, progress=not as_json)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if not as_json and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = TaskContext(
        features=features, datasets=datasets, out_dir=out, seed=seed,
        overrides=task_overrides, device=device, progress=not as_json,
    )
    try:
        metrics = spec.run(ctx)
    except FeatureFileError as e:  # e.g. a feature file made for another dataset
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    width = max(len(k) for k in metrics) if metrics else 0
    for k, v in metrics.items():
        typer.echo(f"{k:{width}s}  {v}" if isinstance(v, str) else f"{k:{width}s}  {100 * v:6.2f}")
    typer.echo(f"written to {out}")


@downstream_app.command("tal")
def tal(
    features: Path = typer.Option(..., "--features", help="HDF5 file of (T, D) features keyed by ActivityNet video id."),
    profile: str = typer.Option("default", "--profile", help="Profile name (smoke, default, paper) or a YAML file."),
    dataset_config: Optional[Path] = typer.Option(
        None, "--dataset-config",
        help="YAML with the activitynet dataset config (format, annotations, ...), replacing the profile's.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for predictions.json, train_log.json and metrics.json."),
    seed: int = typer.Option(0, "--seed", help="Seed of the head's initialisation, batch order and anchor sampling."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    overrides: List[str] = typer.Option([], "--set", help="Override a tasks.tal setting, e.g. --set epochs=3 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Temporal action localization: train G-TAD on the training videos, detect on validation, report mAP."""
    run_task_command("tal", {"activitynet": features}, profile, dataset_config, out, seed, device, overrides, as_json)
