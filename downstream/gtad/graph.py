"""Semantic graph of G-TAD: each snippet linked to its k nearest snippets in feature space.

The graph is rebuilt from the current features at every layer (a dynamic graph, as in
DGCNN); a snippet's nearest neighbour is itself.
"""

from __future__ import annotations

import torch


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, T, k)`` of the ``k`` snippets nearest to each snippet of ``x`` ``(B, C, T)``."""
    t = x.shape[2]
    if not 1 <= k <= t:
        raise ValueError(f"k nearest neighbours needs 1 <= k <= {t} snippets, got k={k}")
    sq = (x * x).sum(dim=1)  # (B, T)
    inner = torch.bmm(x.transpose(1, 2), x)  # (B, T, T)
    neg_dist = 2.0 * inner - sq.unsqueeze(2) - sq.unsqueeze(1)
    return neg_dist.topk(k, dim=-1).indices


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Features of the neighbours: ``x`` ``(B, C, T)``, ``idx`` ``(B, T, k)`` -> ``(B, C, T, k)``."""
    b, c, t = x.shape
    k = idx.shape[2]
    rows = x.transpose(1, 2).reshape(b * t, c)
    offset = (torch.arange(b, device=x.device) * t).view(b, 1, 1)
    picked = rows.index_select(0, (idx + offset).reshape(-1))
    return picked.view(b, t, k, c).permute(0, 3, 1, 2)
