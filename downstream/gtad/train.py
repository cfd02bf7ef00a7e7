"""Training and inference loops of G-TAD, shared by every task built on it."""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from clap_bench.downstream.gtad.config import GTADConfig
from clap_bench.downstream.gtad.labels import valid_anchor_mask
from clap_bench.downstream.gtad.losses import gtad_loss
from clap_bench.downstream.gtad.model import GTAD
from clap_bench.downstream.gtad.postprocess import proposals_from_outputs, soft_nms

log = logging.getLogger(__name__)


def train_gtad(
    model: GTAD,
    loader: DataLoader,
    cfg: GTADConfig,
    device: str = "cpu",
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> List[Dict[str, float]]:
    """Adam with a step schedule over ``cfg.epochs``; returns the mean losses of each epoch.

    ``loader`` yields ``(features, IoU map, start labels, end labels)`` batches (``GTADTrainSet``).
    ``generator`` drives the random anchor sampling of the regression loss.
    """
    model.to(device)
    mask = torch.from_numpy(valid_anchor_mask(cfg.temporal_scale)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    history: List[Dict[str, float]] = []
    for epoch in range(cfg.epochs):
        model.train()
        sums: Dict[str, float] = {}
        batches = 0
        for feats, gt_iou, gt_start, gt_end in loader:
            out = model(feats.to(device))
            losses = gtad_loss(
                out.anchor_map, out.start, out.end, gt_iou.to(device), gt_start.to(device), gt_end.to(device),
                mask, cfg.reg_weight, generator,
            )
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"G-TAD loss became {losses['loss'].item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            batches += 1
        sched.step()
        row = {"epoch": epoch + 1, **{k: v / max(batches, 1) for k, v in sums.items()}}
        history.append(row)
        if progress:
            log.info("G-TAD epoch %d/%d: %s", epoch + 1, cfg.epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    return history


@torch.no_grad()
def predict_proposals(
    model: GTAD, features: Iterable[torch.Tensor], cfg: GTADConfig, device: str = "cpu", batch_size: Optional[int] = None
) -> List[np.ndarray]:
    """Per video ``(D, T)`` features -> soft-NMS'd proposals ``(<= top_k, 3)`` ``[start, end, score]`` in normalised time."""
    model.to(device).eval()
    feats = list(features)
    batch_size = batch_size or cfg.batch_size
    out: List[np.ndarray] = []
    for i in range(0, len(feats), batch_size):
        batch = torch.stack(feats[i:i + batch_size]).to(device)
        pred = model(batch)
        for j in range(batch.shape[0]):
            props = proposals_from_outputs(
                pred.anchor_map[j], pred.start[j], pred.end[j], cfg.proposal_score, cfg.proposal_candidates
            )
            out.append(soft_nms(props, cfg.soft_nms_sigma, cfg.proposals_per_video, cfg.soft_nms_iou_threshold))
    return out

