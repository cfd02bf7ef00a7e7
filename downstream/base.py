"""The one interface every downstream head implements (G-TAD, QAT, 2D-TAN).

A task is a function registered under its task name. It receives a ``TaskContext`` (feature
files, datasets, output folder, seed, the profile's overrides for the task) and returns a flat
dict of metrics (fractions, not percent). It writes its predictions and its own metrics file
into ``ctx.out_dir``; the run store decides where that folder is.

Each task declares its own defaults as a dataclass (``config_cls``); the profile's
``tasks.<name>`` section overrides them, with unknown keys rejected.

Tasks outside the package register the same way, from an installed distribution's entry point
(group ``clap_bench.tasks``) or a module named by ``imports`` / ``--import`` (``clap_bench.plugins``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from clap_bench.config import DatasetConfig, from_dict
from clap_bench.registry import Registry, check_folder_name



def _discover_tasks() -> None:
    import clap_bench.downstream.tasks  # noqa: F401  (the built-ins, registered first)
    from clap_bench.plugins import TASK_GROUP, load_entry_points

    load_entry_points(TASK_GROUP)


def _stage_taking(name: str) -> Optional[str]:
    """The product stage whose folder a task named ``name`` would share (a task stage is seed<k>/<task>)."""
    if name in ("source", "pretrain", "pretrain-base"):
        return f"the {name} stage's folder"
    if name.startswith("extract-"):
        return "the extract-<dataset> stages' folders"
    return None


TASKS = Registry("downstream task", discover=_discover_tasks,
                 check_name=lambda name: check_folder_name("downstream task", name, _stage_taking))


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
        def factory() -> TaskSpec:
            return TaskSpec(name, fn, config_cls, datasets, description)

        # Named after the task function, so that its origin and version are the plug-in's.
        factory.__module__, factory.__qualname__, factory.__wrapped_task__ = fn.__module__, fn.__qualname__, fn
        TASKS.register(name)(factory)
        return fn

    return decorator


def get_task(name: str) -> TaskSpec:
    return TASKS.get(name)()


def list_tasks(pattern: str = "*") -> list:
    return TASKS.list(pattern)


def task_origin(name: str) -> str:
    """``built-in``, ``entry point ...`` or ``module ...`` (see ``clap_bench.plugins``)."""
    return TASKS.origin(name)
