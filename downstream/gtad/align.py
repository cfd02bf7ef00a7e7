"""SGAlign: sub-graph of interest alignment, written with index tensors (no CUDA extension).

G-TAD turns every anchor of the ``[duration, start]`` map into a fixed-size feature by sampling
the snippet features along the anchor, like RoIAlign in one dimension:

- an anchor covering snippets ``s .. s+d`` is widened by half its length ``(d + 1)`` on each
  side, so the samples also see a little of what surrounds it;
- the widened interval is cut into ``bins`` equal bins; each bin averages ``g`` linearly
  interpolated samples taken at ``start + b*bin + (i + 0.5)*bin/g``, with
  ``g = ceil(length / bins)`` (the adaptive sampling ratio of RoIAlign);
- a sample at ``t < -1`` or ``t > T`` reads zero; ``t`` in ``[-1, 0]`` reads snippet 0, ``t``
  beyond the last snippet reads the last one (the boundary rules of RoIAlign).

Everything above depends on the temporal scale only, so SGAlign is a fixed linear map from
the ``T`` snippets to the ``bins x T x T`` outputs. We compute its taps once, with index tensors
(a bin touches a handful of neighbouring snippets: their indices and interpolation weights),
scatter them into a dense ``(T, bins * T * T)`` sampling matrix laid out as the map, and apply
it as one matrix product. That is exact, differentiable by autograd, identical on CPU and GPU,
and faster than gathering (the product writes the aligned map once, already in its final
layout; the matrix is ``36 * T^3`` floats, 144 MB at ``T = 100``).

G-TAD takes 32 samples of the anchor's own features plus 4 samples of "context" features:
the mean of each snippet's k nearest neighbours in feature space (the semantic graph of the
last GCNeXt layer).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from clap_bench.downstream.gtad.graph import gather_neighbours, knn_indices


def map_anchor_grid(temporal_scale: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Duration and start index of every valid anchor of the ``[duration, start]`` map.

    An anchor with duration index ``d`` and start index ``s`` covers snippets ``s .. s+d``
    (normalised interval ``[s/T, (s+d+1)/T]``); it is valid when it ends inside the video.
    Returned in row-major order of the map (duration first), as 1-D int64 tensors.
    """
    d, s = torch.meshgrid(torch.arange(temporal_scale), torch.arange(temporal_scale), indexing="ij")
    valid = (s + d) < temporal_scale
    return d[valid], s[valid]


def widened_anchor_bounds(temporal_scale: int, expand_ratio: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sampling interval, in snippet coordinates, of every valid anchor (widened on both sides)."""
    d, s = map_anchor_grid(temporal_scale)
    d = d.double()
    s = s.double()
    length = d + 1.0
    return s - length * expand_ratio, s + d + length * expand_ratio


def align_taps(
    roi_start: torch.Tensor, roi_end: torch.Tensor, length: int, bins: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Taps (snippet index, weight) of a 1-D RoIAlign with adaptive sampling.

    ``roi_start``/``roi_end`` (R,) are in snippet coordinates of a sequence of ``length``
    snippets. Returns ``index`` and ``weight`` of shape ``(R * bins, K)``: output ``r*bins + b``
    equals ``sum_k weight[., k] * x[index[., k]]``. Computed in float64, returned as int64 and
    float32.
    """
    roi_start = roi_start.double()
    roi_end = roi_end.double()
    roi_len = torch.clamp(roi_end - roi_start, min=1.0)  # RoIAlign: malformed anchors count as length 1
    bin_size = roi_len / bins
    grid = torch.ceil(roi_len / bins).long().clamp(min=1)  # samples per bin
    max_grid = int(grid.max().item()) if grid.numel() else 1

    b = torch.arange(bins, dtype=torch.float64).view(1, bins, 1)
    i = torch.arange(max_grid, dtype=torch.float64).view(1, 1, max_grid)
    g = grid.double().view(-1, 1, 1)
    t = roi_start.view(-1, 1, 1) + b * bin_size.view(-1, 1, 1) + (i + 0.5) * bin_size.view(-1, 1, 1) / g
    used = (i < g) & (t >= -1.0) & (t <= length)  # samples past the sampling grid or outside read nothing

    t = t.clamp(min=0.0)
    low = torch.floor(t)
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    t = torch.where(at_end, low, t)
    high = torch.where(at_end, low, low + 1)
    frac = t - low
    scale = used.double() / g
    w_low = (1.0 - frac) * scale
    w_high = frac * scale

    rows = roi_start.numel() * bins
    low = low.long().reshape(rows, max_grid)
    high = high.long().reshape(rows, max_grid)
    w_low = w_low.reshape(rows, max_grid)
    w_high = w_high.reshape(rows, max_grid)

    # Collapse the 2*max_grid contributions of a bin onto the contiguous snippets it touches.
    base = low.min(dim=1, keepdim=True).values
    offsets = torch.cat([low - base, high - base], dim=1)
    weights = torch.cat([w_low, w_high], dim=1)
    taps = int(offsets.max().item()) + 1 if rows else 1
    weight = torch.zeros(rows, taps, dtype=torch.float64)
    weight.scatter_add_(1, offsets, weights)
    index = (base + torch.arange(taps).view(1, -1)).clamp(max=length - 1)
    return index, weight.float()


def sampling_matrix(temporal_scale: int, bins: int, expand_ratio: float = 0.5) -> torch.Tensor:
    """``(T, bins * T * T)``: column ``j * T * T + d * T + s`` samples bin ``j`` of anchor ``(d, s)``.

    Columns of cells that are not anchors (``s + d >= T``) are zero.
    """
    t = temporal_scale
    roi_start, roi_end = widened_anchor_bounds(t, expand_ratio)
    d, s = map_anchor_grid(t)
    index, weight = align_taps(roi_start, roi_end, t, bins)  # (A * bins, K)
    anchors, taps = d.numel(), index.shape[1]
    column = (torch.arange(bins).view(1, bins) * t * t + (d * t + s).view(anchors, 1)).reshape(-1, 1).expand(-1, taps)
    matrix = torch.zeros(t, bins * t * t)
    matrix.index_put_((index.reshape(-1), column.reshape(-1)), weight.reshape(-1), accumulate=True)
    return matrix


class SGAlign(nn.Module):
    """Align features of every valid ``[duration, start]`` anchor: ``(B, C, T)`` -> ``(B, C*(n+m), T, T)``.

    ``n = inner_samples`` samples of the features themselves, ``m = context_samples`` samples of
    the mean of each snippet's ``k`` nearest neighbours (set ``context_samples=0`` to drop
    them). Invalid anchors (ending after the video) are zero. Channel ``c*(n+m) + j`` holds
    sample ``j`` of channel ``c``.
    """

    def __init__(
        self,
        temporal_scale: int,
        inner_samples: int = 32,
        context_samples: int = 4,
        expand_ratio: float = 0.5,
        knn_k: int = 3,
    ):
        super().__init__()
        if inner_samples < 1:
            raise ValueError(f"SGAlign: inner_samples must be >= 1, got {inner_samples}")
        if context_samples < 0:
            raise ValueError(f"SGAlign: context_samples must be >= 0, got {context_samples}")
        self.temporal_scale = temporal_scale
        self.inner_samples = inner_samples
        self.context_samples = context_samples
        self.knn_k = knn_k
        self.register_buffer("inner_matrix", sampling_matrix(temporal_scale, inner_samples, expand_ratio), persistent=False)
        if context_samples:
            self.register_buffer("context_matrix", sampling_matrix(temporal_scale, context_samples, expand_ratio), persistent=False)

    @property
    def samples(self) -> int:
        return self.inner_samples + self.context_samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        if t != self.temporal_scale:
            raise ValueError(f"SGAlign built for {self.temporal_scale} snippets, got input with {t}")
        inner = torch.matmul(x.reshape(b * c, t), self.inner_matrix).view(b, c, self.inner_samples, t * t)
        if not self.context_samples:
            return inner.view(b, c * self.samples, t, t)
        context = neighbour_mean(x, self.knn_k).reshape(b * c, t)
        context = torch.matmul(context, self.context_matrix).view(b, c, self.context_samples, t * t)
        return torch.cat([inner, context], dim=2).view(b, c * self.samples, t, t)


def neighbour_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean feature of each snippet's ``k`` nearest snippets in feature space (itself included)."""
    return gather_neighbours(x, knn_indices(x, k)).mean(dim=3)
