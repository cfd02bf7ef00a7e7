"""Fingerprints (content hashes) of cached artefacts and stage outputs, to see where two runs part.

Two machines that run the same command should produce the same synthetic videos, the same source
model, the same features and the same metrics; when they do not, comparing fingerprints stage by
stage shows the first artefact that differs (``clapbench status --fingerprints`` prints them).

A fingerprint is the first 16 hex digits of a SHA-256. HDF5 feature files are hashed by content
(sorted dataset names, shapes, dtypes and bytes), not by file bytes, which also hold creation
times; every other file by its bytes; a stage's metrics by their canonical JSON. Bookkeeping files
(logs, the stage record, the resolved config) are left out: they differ between any two runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from clap_bench.io import atomic_write_json

FINGERPRINTS_FILE = "fingerprints.json"
DIGITS = 16
# Written by the run store and executors, not by the stage: they differ between any two runs.
BOOKKEEPING = {"stage.json", "config.yaml", "metrics.json", "error.log", "slurm.json", "claim.json", FINGERPRINTS_FILE}
# ``.jsonl``: training logs, which carry throughput (clips per second) beside the losses; the
# checkpoints they describe are fingerprinted.
BOOKKEEPING_SUFFIXES = (".log", ".jsonl", ".lock", ".tmp", ".out", ".err")


def _sha(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:DIGITS]


def file_fingerprint(path: Path) -> str:
    """Content hash of one file (HDF5 by its datasets, anything else by its bytes)."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        import h5py
        import numpy as np

        def chunks():
            with h5py.File(path, "r") as f:
                names = []
                f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
                for name in sorted(names):
                    data = np.ascontiguousarray(f[name][()])
                    yield f"{name}|{data.dtype.str}|{data.shape}\n".encode()
                    yield data.tobytes()

        return _sha(chunks())

    def read():
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                yield block

    return _sha(read())


def metrics_fingerprint(metrics: Dict[str, Any]) -> str:
    return _sha([json.dumps(metrics, sort_keys=True).encode()])


def folder_fingerprints(folder: Path, skip_bookkeeping: bool = True) -> Dict[str, str]:
    """``relative path -> fingerprint`` of every file under ``folder`` (sorted)."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if skip_bookkeeping and (path.name in BOOKKEEPING or path.name.endswith(BOOKKEEPING_SUFFIXES)
                                 or rel.startswith(("archive/", ".submitit/"))):
            continue
        out[rel] = file_fingerprint(path)
    return out


def combined(fingerprints: Dict[str, str]) -> str:
    """One fingerprint for a set of named fingerprints."""
    return _sha([f"{name}={value}\n".encode() for name, value in sorted(fingerprints.items())])


def write_stage_fingerprints(stage_dir: Path, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Fingerprint a finished stage's outputs and metrics into ``fingerprints.json`` (before ``metrics.json``)."""
    files = folder_fingerprints(stage_dir)
    hashed = dict(metrics)
    for key, value in metrics.items():  # e.g. the source stage's model, which lives in the shared cache
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_file():
            # by content, not by path: two machines' caches live in different folders
            files[f"{key}:"] = hashed[key] = file_fingerprint(Path(value))
    record = {"metrics": metrics_fingerprint(hashed), "files": files}
    record["stage"] = combined({"metrics": record["metrics"], **files})
    atomic_write_json(Path(stage_dir) / FINGERPRINTS_FILE, record)
    return record


def read_stage_fingerprints(stage_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(stage_dir) / FINGERPRINTS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
