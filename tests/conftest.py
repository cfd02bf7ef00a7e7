"""Shared fixtures. ``real_annotations``: the folder of real annotation files, or a clean skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_ANNOTATIONS_ENV = "CLAPBENCH_REAL_ANNOTATIONS"


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The folder named by $CLAPBENCH_REAL_ANNOTATIONS (published annotation files); skip when unavailable."""
    value = os.environ.get(REAL_ANNOTATIONS_ENV)
    if not value:
        pytest.skip(f"{REAL_ANNOTATIONS_ENV} is not set (point it at the real annotation files)")
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.skip(f"{REAL_ANNOTATIONS_ENV}={value} is not a folder")
    return path
