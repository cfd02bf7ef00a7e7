"""A video-level action classifier on snippet features, used to label class-agnostic proposals.

G-TAD (like BSN and BMN) localises class-agnostic proposals and takes each video's action
labels from an external video classifier: the published ActivityNet results use the scores
of the CUHK/UntrimmedNet classifier of the 2017 challenge, which were trained on other
features and are not available for our features. We train a small classifier on the same
features instead: mean- and max-pooled snippet features, standardised with the training
statistics, then a two-layer MLP with softmax cross-entropy against the video's classes
(a video with several classes spreads its target evenly over them). Its top classes and
probabilities replace the external scores; the localisation numbers are therefore not
directly comparable with the paper's G-TAD figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VideoClassifierConfig:
    hidden_dim: int = 512
    dropout: float = 0.5
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4


def pool_snippets(features: torch.Tensor) -> torch.Tensor:
    """``(N, D, T)`` snippet features -> ``(N, 2D)``: mean and max over time."""
    return torch.cat([features.mean(dim=2), features.amax(dim=2)], dim=1)


class VideoClassifier(nn.Module):
    def __init__(self, feat_dim: int, num_classes: int, hidden_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.register_buffer("mean", torch.zeros(2 * feat_dim))
        self.register_buffer("std", torch.ones(2 * feat_dim))
        self.mlp = nn.Sequential(
            nn.Linear(2 * feat_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, C)`` of ``(N, D, T)`` snippet features."""
        return self.mlp((pool_snippets(features) - self.mean) / self.std)


def train_video_classifier(
    features: torch.Tensor,
    targets: torch.Tensor,
    cfg: VideoClassifierConfig,
    generator: Optional[torch.Generator] = None,
    device: str = "cpu",
) -> VideoClassifier:
    """Fit the classifier on ``(N, D, T)`` features and ``(N, C)`` multi-hot class targets."""
    if features.shape[0] != targets.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {targets.shape[0]} target rows")
    if features.shape[0] == 0:
        raise ValueError("cannot train a video classifier on zero videos")
    counts = targets.sum(dim=1, keepdim=True)
    if (counts == 0).any():
        raise ValueError("every training video needs at least one class for the video classifier")
    soft_targets = (targets / counts).to(device)
    model = VideoClassifier(features.shape[1], targets.shape[1], cfg.hidden_dim, cfg.dropout)
    pooled = pool_snippets(features)
    model.mean.copy_(pooled.mean(dim=0))
    model.std.copy_(pooled.std(dim=0, unbiased=False).clamp(min=1e-6))
    model.to(device)
    features = features.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = features.shape[0]
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            logits = model(features[batch])
            loss = torch.sum(-soft_targets[batch] * F.log_softmax(logits, dim=1), dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict_class_probs(model: VideoClassifier, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax class probabilities ``(N, C)`` of ``(N, D, T)`` features."""
    model.eval()
    device = next(model.parameters()).device
    out = [F.softmax(model(features[i:i + batch_size].to(device)), dim=1).cpu() for i in range(0, features.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.mlp[-1].out_features)


def top_classes(probs: torch.Tensor, class_names: Sequence[str], k: int) -> list:
    """Per video, the ``k`` most probable ``(class name, probability)`` pairs, best first."""
    k = min(k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [[(class_names[i], float(v)) for v, i in zip(vs.tolist(), ids.tolist())] for vs, ids in zip(values, indices)]
