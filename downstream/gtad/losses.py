"""G-TAD losses: boundary (start/end), anchor-map regression and anchor-map classification.

All three follow G-TAD's ActivityNet code (itself from BMN):

- boundary: binary cross-entropy with labels > 0.5 as positives, weighted so positives and
  negatives contribute equally (weights ``0.5 N / N_pos`` and ``0.5 N / N_neg``), averaged over
  all snippets of the batch; start and end summed;
- regression: squared error on the IoU map over a balanced subset of anchors: every anchor
  with IoU > 0.7, and anchors with IoU in (0.3, 0.7] and in (0, 0.3] each kept at random with
  probability ``N_high / N_mid`` and ``N_high / N_low``; ``0.5 * sum / count``;
- classification: the same balanced cross-entropy with anchors of IoU > 0.9 as positives and
  every other valid anchor as a negative, summed and divided by the number of valid anchors;
- total = boundary + ``reg_weight`` (10) * regression + classification.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

EPS = 1e-6


def balanced_bce(pred: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Sum of class-balanced log losses over the entries marked ``positive`` / ``negative`` (0/1 floats)."""
    num_pos = positive.sum()
    num_neg = negative.sum()
    total = num_pos + num_neg
    coef_pos = 0.5 * total / num_pos.clamp(min=1.0)
    coef_neg = 0.5 * total / num_neg.clamp(min=1.0)
    loss_pos = coef_pos * torch.log(pred + EPS) * positive
    loss_neg = coef_neg * torch.log(1.0 - pred + EPS) * negative
    return -(loss_pos + loss_neg).sum()


def boundary_loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    positive = (label > 0.5).float()
    return balanced_bce(pred.reshape(-1), positive.reshape(-1), 1.0 - positive.reshape(-1)) / positive.numel()


def map_regression_loss(
    pred: torch.Tensor, gt_iou: torch.Tensor, mask: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    high = (gt_iou > 0.7).float()
    mid = ((gt_iou <= 0.7) & (gt_iou > 0.3)).float()
    low = ((gt_iou <= 0.3) & (gt_iou > 0.0)).float() * mask
    num_high = high.sum()
    keep_mid = num_high / mid.sum().clamp(min=1.0)
    keep_low = num_high / low.sum().clamp(min=1.0)
    # Random draws on the CPU so that one generator drives them on any device.
    draw_mid = torch.rand(gt_iou.shape, generator=generator).to(gt_iou.device)
    draw_low = torch.rand(gt_iou.shape, generator=generator).to(gt_iou.device)
    weights = high + mid * (draw_mid < keep_mid).float() + low * (draw_low < keep_low).float()
    return 0.5 * (weights * (pred - gt_iou) ** 2).sum() / weights.sum().clamp(min=1.0)


def map_classification_loss(pred: torch.Tensor, gt_iou: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positive = (gt_iou > 0.9).float()
    negative = (gt_iou <= 0.9).float() * mask
    return balanced_bce(pred, positive, negative) / (positive.sum() + negative.sum()).clamp(min=1.0)


def gtad_loss(
    anchor_map: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    gt_iou: torch.Tensor,
    gt_start: torch.Tensor,
    gt_end: torch.Tensor,
    mask: torch.Tensor,
    reg_weight: float = 10.0,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, torch.Tensor]:
    """Losses of a batch. ``anchor_map`` ``(B, 2, T, T)``, ``gt_iou`` ``(B, T, T)``, ``mask`` ``(T, T)``."""
    gt_iou = gt_iou * mask
    boundary = boundary_loss(start, gt_start) + boundary_loss(end, gt_end)
    regression = map_regression_loss(anchor_map[:, 0], gt_iou, mask, generator)
    classification = map_classification_loss(anchor_map[:, 1], gt_iou, mask)
    total = boundary + reg_weight * regression + classification
    return {"loss": total, "boundary": boundary, "regression": regression, "classification": classification}
