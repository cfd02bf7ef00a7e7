"""Small file helpers shared by every stage: atomic writes, so a crash never leaves half a file,
advisory locks, and the one way this package reads a torch file (never running code from it)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, Path]


@contextmanager
def file_lock(path: PathLike):
    """An exclusive advisory lock on ``path`` (created if missing), held for the ``with`` block.

    Serialises processes that would build the same cached artefact (synthetic data, the source
    model, a feature file's shard merge): the second one waits, then finds the work done.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only; a plain open() would honour the umask, and a run store
        # shared by a group (several users' SLURM jobs) needs that.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


# Read once, at import (in the main thread: os.umask is process-wide, and reading it means setting it).
_UMASK = _read_umask()


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_default) + "\n")


def save_figure(fig: Any, out: PathLike, dpi: Any = "figure") -> Path:
    """Save a matplotlib figure as PNG atomically (a reader never sees half an image), then close it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__}")


class FeatureFileError(ValueError):
    """A feature file that is not what a stage needs: not HDF5, or without the videos it reads."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint of the kind asked for: unreadable, or of another format."""


class UnsafeCheckpointError(ValueError):
    """A torch file that can only be read by unpickling arbitrary objects (which can run code)."""


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save's zip format, or a legacy pickle (its first byte the PROTO opcode)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError:
        return False
    return zipfile.is_zipfile(path) or first == b"\x80"


def load_torch_file(path: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, numbers, strings, lists, tuples
    and dicts only. A file that needs anything else is refused, unread, with the globals it names.

    Every torch file this package reads goes through here, its own checkpoints included (they hold
    nothing else), so a checkpoint someone else released cannot execute code when loaded.
    """
    import pickle

    import torch

    path = Path(path)
    if path.is_file() and not _looks_like_torch_file(path):
        raise UnsafeCheckpointError(
            f"{path}: cannot read this {what}: it is not a file torch.save writes (neither its zip format nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:  # scans the pickle's opcodes; nothing is executed
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            names = []
        detail = f"it names {', '.join(names)}" if names else str(e).strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused to load this {what}: reading it needs unpickling of arbitrary objects ({detail}), "
            "which can run code. Only tensors, numbers, strings, lists and dicts are read (torch.load with "
            "weights_only=True); if you trust the file, re-save its weights as a plain state dict "
            "(torch.save(state_dict, path))."
        ) from None
