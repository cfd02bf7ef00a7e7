"""Video features for 2D-TAN: read once per video, L2-normalise rows, average to a fixed length.

2D-TAN's input pipeline, as its released configurations run it:

1. each row of the ``(T, D)`` feature matrix is L2-normalised (``DATASET.NORMALIZE: True``);
2. the sequence is *averaged to a fixed length* of ``num_sample_clips`` rows (256 for both
   Charades-STA and TACoS): bin edges ``round(arange(S + 1) / S * T)`` in float32, clipped to ``T - 1``,
   each output row the mean of the rows in its bin, or the single row at the bin's start when
   the bin is empty (fewer input rows than output rows);
3. inside the model, a 1x1 convolution + ReLU and an average pooling with kernel = stride =
   ``num_sample_clips / num_clips`` bring the 256 rows to ``num_clips`` clips (16 for
   Charades-STA, 128 for TACoS); see ``model.FrameAvgPool``.

Two consequences of the edge rule are kept on purpose, to match that pipeline: rounding is half
to even (``numpy.round``, as ``torch.round``), and because edges are clipped to ``T - 1`` the last
input row only ever appears through an empty bin, never inside the mean of a full one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable

import numpy as np
import torch

from clap_bench.io import FeatureFileError


def fixed_length_bins(num_rows: int, num_samples: int) -> np.ndarray:
    """The ``num_samples + 1`` bin edges over ``num_rows`` input rows (see the module docstring)."""
    if num_rows < 1:
        raise ValueError(f"cannot resample an empty feature sequence (0 rows) to {num_samples} rows")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    # float32 as 2D-TAN's ``torch.arange(0, S + 1, 1.0) / S * T``: in float64 the products of an S
    # that is not a power of two land on the other side of .5 for some T, and rows change bins.
    steps = np.arange(num_samples + 1, dtype=np.float32) / np.float32(num_samples) * np.float32(num_rows)
    edges = np.round(steps).astype(np.int64)
    return np.minimum(edges, num_rows - 1)


def average_to_fixed_length(features: np.ndarray | torch.Tensor, num_samples: int) -> torch.Tensor:
    """``(T, D)`` -> ``(num_samples, D)``: the mean of each bin, or its first row when the bin is empty."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a (T, D) feature matrix, got shape {tuple(x.shape)}")
    edges = torch.from_numpy(fixed_length_bins(x.shape[0], num_samples))
    starts, ends = edges[:-1], edges[1:]
    csum = torch.cat([x.new_zeros(1, x.shape[1]), x.double().cumsum(0).to(x.dtype)], dim=0)
    counts = (ends - starts).clamp(min=1).to(x.dtype)[:, None]
    means = (csum[ends] - csum[starts]) / counts
    empty = (ends <= starts)[:, None]
    return torch.where(empty, x[starts], means)


def l2_normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=eps)


def load_video_features(
    path: Path | str,
    video_ids: Iterable[str],
    num_sample_clips: int,
    normalize: bool = True,
) -> Dict[str, torch.Tensor]:
    """Read the listed videos from one HDF5 feature file (opened once) and resample each.

    Returns ``{video_id: (num_sample_clips, D) float32}``. A video missing from the file, a
    dataset that is not 2-D, or feature widths that differ between videos are errors naming the
    file and the video.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: feature file not found")
    out: Dict[str, torch.Tensor] = {}
    width = None
    with h5py.File(path, "r") as f:
        wanted = sorted(set(video_ids))
        missing = [v for v in wanted if v not in f]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FeatureFileError(f"{path}: no features for {len(missing)} of {len(wanted)} videos: {shown}")
        for vid in wanted:
            data = f[vid]
            if not hasattr(data, "shape") or len(data.shape) != 2 or data.shape[0] == 0:
                raise FeatureFileError(f"{path}: dataset {vid!r}: expected a non-empty (T, D) array, got shape {getattr(data, 'shape', None)}")
            if width is None:
                width = data.shape[1]
            elif data.shape[1] != width:
                raise FeatureFileError(f"{path}: dataset {vid!r} has width {data.shape[1]}, other videos have {width}")
            x = torch.from_numpy(np.asarray(data[()], dtype=np.float32))
            if normalize:
                x = l2_normalize_rows(x)
            out[vid] = average_to_fixed_length(x, num_sample_clips)
    return out
