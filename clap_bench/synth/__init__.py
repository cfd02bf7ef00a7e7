"""The synthetic benchmark: real H.264 videos and annotation files in the real datasets' formats.

``ensure_synthetic(profile, seed)`` generates it once per (profile, seed) into the cache and
returns the dataset configs; every stage then reads it like real data. ``load_scenes`` and
``object_layers`` / ``ground_truth_mask`` / ``action_at`` tell what a generated video shows
at a given time (used by tests and for inspection).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Union

from clap_bench.synth.generate import (
    DATASET_REVISIONS,
    GENERATOR_VERSION,
    PROFILES,
    SynthError,
    SynthProfile,
    dataset_keys,
    dataset_revision,
    ensure_synthetic,
    get_profile,
    read_manifest,
    synth_root,
)
from clap_bench.synth.world import (
    CLASS_TABLES,
    FPS,
    HEIGHT,
    WIDTH,
    ActionClass,
    Scene,
    Track,
    VisibleObject,
    action_at,
    ground_truth_mask,
    object_layers,
    render_frames,
)


def load_scenes(root: Union[str, Path]) -> Dict[str, Scene]:
    """The scenes of a generation folder, keyed ``"<dataset>/<video id>"`` (e.g. ``"activitynet/v_abc"``).

    ``root`` is the generation folder or any file or folder inside it (e.g. a dataset's video folder).
    """
    path = Path(root).expanduser().resolve()
    for folder in (path, *path.parents):
        candidate = folder / "scenes.json"
        if candidate.is_file() and (folder / "manifest.json").is_file():
            data = json.loads(candidate.read_text(encoding="utf-8"))
            return {key: Scene.from_dict(d) for key, d in data.items()}
    raise SynthError(f"{root}: not inside a synthetic benchmark folder (no scenes.json and manifest.json above it)")


__all__ = [
    "DATASET_REVISIONS", "GENERATOR_VERSION", "PROFILES", "SynthError", "SynthProfile", "dataset_keys", "dataset_revision",
    "ensure_synthetic", "get_profile", "read_manifest", "synth_root", "load_scenes",
    "CLASS_TABLES", "FPS", "HEIGHT", "WIDTH", "ActionClass", "Scene", "Track", "VisibleObject",
    "action_at", "ground_truth_mask", "object_layers", "render_frames",
]
