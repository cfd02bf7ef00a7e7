"""The one trainer all pre-training methods share, and the pre-training stage built on it."""

from clap_bench.training.pretrain import (
    default_source_dir,
    pretrain,
    resolve_classes,
    resolve_init_weights,
    source_pretrain,
)
from clap_bench.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, load_checkpoint, seed_everything

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "default_source_dir",
    "load_checkpoint",
    "pretrain",
    "resolve_classes",
    "resolve_init_weights",
    "seed_everything",
    "source_pretrain",
]
