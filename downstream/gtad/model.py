"""G-TAD (Xu et al., CVPR 2020): GCNeXt backbone, start/end heads, SGAlign and the anchor map head.

Shapes, for a batch of ``B`` videos of ``T`` snippets with ``D``-dim features:

- input ``(B, D, T)``
- ``start``, ``end``: ``(B, T)`` boundary probabilities of each snippet
- ``anchor_map``: ``(B, 2, T, T)``, indexed ``[duration, start]``; channel 0 regresses the
  anchor's IoU with the ground truth, channel 1 classifies it as complete (IoU > 0.9). Anchor
  ``(d, s)`` covers the normalised interval ``[s/T, (s+d+1)/T]``; cells with ``s + d >= T``
  are not anchors and are masked out of the losses and the proposals.

The backbone (``GTADBackbone``: input convolution, GCNeXt blocks, SGAlign) is reusable by
other heads (few-shot localisation builds on it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from clap_bench.downstream.gtad.align import SGAlign
from clap_bench.downstream.gtad.config import GTADConfig
from clap_bench.downstream.gtad.graph import gather_neighbours, knn_indices


class GCNeXt(nn.Module):
    """A ResNeXt-style block on two graphs of the snippets, summed with the identity.

    Temporal branch: 1x1 -> grouped 3-tap temporal convolution -> 1x1 (neighbours in time).
    Semantic branch: an edge convolution over each snippet's ``k`` nearest snippets in feature
    space (the graph is rebuilt from the block's input): 1x1 -> grouped 1x1 -> 1x1 applied to
    the pair ``[x_j, x_i]`` of neighbour and snippet, then max over the neighbours. (The paper
    writes the edge feature as ``[x_i, x_j - x_i]``; through the first linear layer both carry
    the same information, and we follow the released code's pairing.)
    """

    def __init__(self, channels: int, k: int = 3, cardinality: int = 32, group_width: int = 4):
        super().__init__()
        self.k = k
        width = cardinality * group_width
        self.temporal = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv1d(width, width, kernel_size=3, padding=1, groups=cardinality), nn.ReLU(inplace=True),
            nn.Conv1d(width, channels, kernel_size=1),
        )
        self.semantic = nn.Sequential(
            nn.Conv2d(2 * channels, width, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, kernel_size=1, groups=cardinality), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        neighbours = gather_neighbours(x, knn_indices(x, self.k))  # (B, C, T, k)
        edges = torch.cat([neighbours, x.unsqueeze(3).expand_as(neighbours)], dim=1)
        semantic = self.semantic(edges).amax(dim=3)
        return torch.relu(x + self.temporal(x) + semantic)


class GTADOutput(NamedTuple):
    anchor_map: torch.Tensor  # (B, 2, T, T): [regression, classification] over [duration, start]
    start: torch.Tensor  # (B, T)
    end: torch.Tensor  # (B, T)


class GTADBackbone(nn.Module):
    """Input convolution + GCNeXt; returns the snippet features the heads read."""

    def __init__(self, feat_dim: int, cfg: GTADConfig):
        super().__init__()
        if feat_dim % cfg.input_groups:
            raise ValueError(f"feature dimension {feat_dim} is not divisible by input_groups={cfg.input_groups}")
        h = cfg.hidden_dim_1d
        block = dict(k=cfg.knn_k, cardinality=cfg.cardinality, group_width=cfg.group_width)
        self.stem = nn.Sequential(
            nn.Conv1d(feat_dim, h, kernel_size=3, padding=1, groups=cfg.input_groups), nn.ReLU(inplace=True),
            GCNeXt(h, **block),
        )
        self.body = GCNeXt(h, **block)

    def forward(self, x: torch.Tensor):
        """``(B, D, T)`` -> (base features for the boundary heads, deeper features for the map), each ``(B, H, T)``."""
        base = self.stem(x)
        return base, self.body(base)


class GTAD(nn.Module):
    def __init__(self, feat_dim: int, cfg: GTADConfig):
        super().__init__()
        self.temporal_scale = cfg.temporal_scale
        h = cfg.hidden_dim_1d
        block = dict(k=cfg.knn_k, cardinality=cfg.cardinality, group_width=cfg.group_width)
        self.backbone = GTADBackbone(feat_dim, cfg)
        self.start_head = nn.Sequential(GCNeXt(h, **block), nn.Conv1d(h, 1, kernel_size=1), nn.Sigmoid())
        self.end_head = nn.Sequential(GCNeXt(h, **block), nn.Conv1d(h, 1, kernel_size=1), nn.Sigmoid())
        self.align = SGAlign(
            cfg.temporal_scale, cfg.align_samples, cfg.context_samples, cfg.anchor_expand, cfg.knn_k
        )
        pad = cfg.map_kernel // 2
        self.map_head = nn.Sequential(
            nn.Conv2d(h * self.align.samples, cfg.hidden_dim_3d, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.hidden_dim_3d, cfg.hidden_dim_2d, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.hidden_dim_2d, cfg.hidden_dim_2d, kernel_size=cfg.map_kernel, padding=pad), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.hidden_dim_2d, cfg.hidden_dim_2d, kernel_size=cfg.map_kernel, padding=pad), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.hidden_dim_2d, 2, kernel_size=1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> GTADOutput:
        if x.dim() != 3 or x.shape[2] != self.temporal_scale:
            raise ValueError(f"G-TAD expects (batch, feature, {self.temporal_scale}) input, got {tuple(x.shape)}")
        base, deep = self.backbone(x)
        start = self.start_head(base).squeeze(1)
        end = self.end_head(base).squeeze(1)
        anchor_map = self.map_head(self.align(deep))
        return GTADOutput(anchor_map, start, end)


def build_gtad(cfg: GTADConfig, feat_dim: int) -> GTAD:
    """The G-TAD network for ``feat_dim``-dimensional snippet features."""
    cfg.validate()
    return GTAD(feat_dim, cfg)
