"""Encoders: video backbones (R(2+1)D-18, R3D-18, a width-scaled R(2+1)D) and the frozen text encoder."""

from clap_bench.encoders.text import TextEncoder, TextModelNotFoundError, default_text_model_path, resolve_text_model
from clap_bench.encoders.video import (
    ARCHS,
    KINETICS400_WEIGHTS,
    VideoEncoder,
    WeightsNotFoundError,
    build_video_encoder,
    file_hash,
    hub_checkpoint_path,
)

__all__ = [
    "ARCHS",
    "KINETICS400_WEIGHTS",
    "TextEncoder",
    "TextModelNotFoundError",
    "VideoEncoder",
    "WeightsNotFoundError",
    "build_video_encoder",
    "default_text_model_path",
    "file_hash",
    "hub_checkpoint_path",
    "resolve_text_model",
]
