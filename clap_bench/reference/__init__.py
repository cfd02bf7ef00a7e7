"""Side-by-side checks against the reference implementations (2D-TAN, G-TAD, TSP).

The reference repositories are fetched by the user outside the project and never copied into it;
the scripts in ``benchmarks/reference/`` import or run them from the path they are given. This
package holds the parts of those scripts that do not need the reference code (converting our
inputs to the reference's formats, comparing outputs), so the test suite can check them.
"""

from __future__ import annotations

from pathlib import Path


class ReferenceMissing(RuntimeError):
    """The path given for a reference repository does not hold it."""


def require_reference(path: str | Path | None, name: str, url: str, commit: str, marker: str) -> Path:
    """The reference repository at ``path``, checked by one file it must contain (``marker``,
    relative to it); otherwise an error that says how to fetch it."""
    how = f"fetch it outside the project: git clone {url} && git -C {Path(url).name} checkout {commit}"
    if path is None:
        raise ReferenceMissing(f"no path given for the {name} reference code; {how}, then pass its folder")
    root = Path(path).expanduser()
    if not (root / marker).is_file():
        raise ReferenceMissing(f"{root} is not a checkout of {name} (expected {marker} in it); {how}")
    return root
