"""The one interface every downstream head implements (G-TAD, QAT, 2D-TAN).

A task is a function registered under its task name. It receives a ``TaskContext`` (feature
files, datasets, output folder, seed, the profile's overrides for the task) and returns a flat
dict of metrics (fractions, not percent). It writes its predictions and its own metrics file
into ``ctx.out_dir``; the run store decides where that folder is.

Each task declares its own defaults as a dataclass (``config_cls``); the profile's
``tasks.<name>`` section overrides them, with unknown keys rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from clap_bench.config import DatasetConfig, from_dict
from clap_bench.registry import Registry

TASKS = Registry("downstream task")


@dataclass
class TaskSpec:
    name: str
    run: Callable[["TaskContext"], Dict[str, float]]
    config_cls: type
    datasets: tuple  # dataset keys the task reads (DataConfig.datasets)
    description: str = ""


@dataclass
class TaskContext:
    features: Dict[str, Path]  # dataset key -> HDF5 of (T, D) float32 features keyed by video id
    datasets: Dict[str, DatasetConfig]  # resolved dataset configs (synthetic or real)
    out_dir: Path
    seed: int = 0
    overrides: Dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    progress: bool = True

    def config(self, spec: "TaskSpec") -> Any:
        return from_dict(spec.config_cls, self.overrides, f"tasks.{spec.name}")


def register_task(name: str, config_cls: type, datasets: tuple, description: str = ""):
    """Register ``fn(ctx) -> metrics`` as downstream task ``name``."""

    def decorator(fn):
        TASKS.register(name)(lambda: TaskSpec(name, fn, config_cls, datasets, description))
        return fn

    return decorator


def get_task(name: str) -> TaskSpec:
    import clap_bench.downstream.tasks  # noqa: F401  (registers the built-in tasks)

    return TASKS.get(name)()


def list_tasks(pattern: str = "*") -> list:
    import clap_bench.downstream.tasks  # noqa: F401

    return TASKS.list(pattern)
