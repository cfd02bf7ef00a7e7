"""The network a method trains: backbone f_v, heads f_c / f_r, projections g_v / g_t; and its loss.

``PretrainModel`` holds only what the method uses (a TAC model has no region head or projections),
so checkpoints and optimiser groups reflect the method. ``compute_losses`` sums the method's
terms (Eq. 6 and Eq. 3/5) and returns each one for logging, plus head accuracies.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from clap_bench.config import ContrastiveConfig
from clap_bench.methods.base import MethodConfig
from clap_bench.methods.losses import contrastive_loss, masked_cross_entropy


def projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """g_v / g_t of the paper (§4.1): batch normalisation followed by a linear layer."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, out_dim))


class PretrainModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        method: MethodConfig,
        num_classes: int,
        text_dim: Optional[int] = None,
        gvf_dim: Optional[int] = None,
        embed_dim: int = 512,
        contrastive: Optional[ContrastiveConfig] = None,
        head_init_std: Optional[float] = None,
    ):
        super().__init__()
        self.method = method
        self.contrastive = contrastive if contrastive is not None else ContrastiveConfig()
        self.backbone = backbone
        feat = backbone.out_dim
        if method.class_head:
            if num_classes < 1:
                raise ValueError(f"method {method.name}: a class head needs at least one class")
            self.class_head = nn.Linear(feat, num_classes)
        if method.region_head:
            extra = 0
            if method.region_gvf:
                if not gvf_dim:
                    raise ValueError(f"method {method.name}: region_gvf needs the GVF size (gvf_dim)")
                extra = gvf_dim
            self.region_head = nn.Linear(feat + extra, 2)
        if head_init_std is not None:  # TSP's heads: weights from N(0, std), zero bias
            for head in (getattr(self, "class_head", None), getattr(self, "region_head", None)):
                if head is not None:
                    nn.init.normal_(head.weight, 0.0, head_init_std)
                    nn.init.zeros_(head.bias)
        if method.contrastive:
            if not text_dim:
                raise ValueError(f"method {method.name}: a contrastive loss needs the text feature size")
            self.video_proj = projection(feat, embed_dim)
            self.text_proj = projection(text_dim, embed_dim)
            scale = torch.tensor(math.log(1.0 / self.contrastive.temperature))
            if self.contrastive.learn_temperature:
                self.log_logit_scale = nn.Parameter(scale)
            else:
                self.register_buffer("log_logit_scale", scale)

    def head_modules(self) -> List[nn.Module]:
        return [m for n, m in self.named_children() if n != "backbone"]

    def logit_scale(self) -> torch.Tensor:
        # Upper bound 100 (temperature >= 0.01), as CLIP does, keeps a learned temperature stable.
        return self.log_logit_scale.exp().clamp(max=100.0)

    def forward(
        self,
        clips: torch.Tensor,
        text_features: Optional[torch.Tensor] = None,
        gvf: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        h = self.backbone(clips)
        out: Dict[str, torch.Tensor] = {"h": h}
        if self.method.class_head:
            out["class_logits"] = self.class_head(h)
        if self.method.region_head:
            r_in = torch.cat([h, gvf.to(h.dtype)], dim=1) if self.method.region_gvf else h
            out["region_logits"] = self.region_head(r_in)
        if self.method.contrastive:
            out["z_v"] = self.video_proj(h)
            out["z_t"] = self.text_proj(text_features.to(h.dtype))
        return out


def text_ids(texts: List[str]) -> torch.Tensor:
    """Stable 63-bit ids of strings (equal strings, equal ids, in every process)."""
    ids = [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") >> 1 for t in texts]
    return torch.tensor(ids, dtype=torch.int64)


Gather = Callable[[torch.Tensor], torch.Tensor]


def compute_losses(
    model: PretrainModel,
    out: Dict[str, torch.Tensor],
    batch: Dict,
    gather: Optional[Gather] = None,
    gather_no_grad: Optional[Gather] = None,
    rank: int = 0,
    world_size: int = 1,
) -> Dict[str, torch.Tensor]:
    """Every loss term of ``model.method`` on one batch, their weighted sum as ``"loss"``, and accuracies.

    ``gather``/``gather_no_grad`` concatenate a tensor over processes (with / without gradient);
    when given, contrastive negatives come from the global batch (see ``methods.losses``).
    """
    method = model.method
    label = batch["label"]
    region = batch["region"]
    fg = region == 1
    terms: Dict[str, torch.Tensor] = {}
    stats: Dict[str, torch.Tensor] = {}
    total = None

    def add(name: str, value: torch.Tensor, weight: float) -> None:
        nonlocal total
        terms[name] = value
        total = value * weight if total is None else total + value * weight

    if method.class_head:
        logits = out["class_logits"]
        keep = fg & (label >= 0)
        add("class_ce", masked_cross_entropy(logits, label.clamp(min=0), keep), method.class_weight)
        if bool(keep.any()):
            stats["class_acc"] = (logits[keep].argmax(1) == label[keep]).float().mean()
    if method.region_head:
        logits = out["region_logits"]
        add("region_ce", masked_cross_entropy(logits, region, torch.ones_like(fg)), method.region_weight)
        stats["region_acc"] = (logits.argmax(1) == region).float().mean()
    if method.contrastive:
        z_v, z_t = out["z_v"], out["z_t"]
        ids = text_ids(batch["texts"]).to(z_v.device)
        fg_all = fg
        n_local = z_v.shape[0]
        if gather is not None and world_size > 1:
            offsets = gather_no_grad(torch.tensor([n_local], device=z_v.device))
            start = int(offsets[:rank].sum())
            z_v, z_t = gather(z_v), gather(z_t)
            ids, fg_all = gather_no_grad(ids), gather_no_grad(fg.to(torch.uint8)).bool()
        else:
            start = 0
        rows = torch.arange(start, start + n_local, device=z_v.device)
        c = contrastive_loss(
            z_v,
            z_t,
            ids,
            model.logit_scale(),
            foreground=fg_all if method.contrastive == "mask" else None,
            rows=rows,
            world_size=world_size if gather is not None else 1,
            normalize=model.contrastive.normalize,
            duplicate_texts=model.contrastive.duplicate_texts,
        )
        add("contrastive", c["loss"], method.contrastive_weight)
        stats["v2t"] = c["v2t"].detach()
        stats["t2v"] = c["t2v"].detach()
        stats["temperature"] = (1.0 / model.logit_scale()).detach()
    terms["loss"] = total
    return {**terms, **{k: v.detach() for k, v in stats.items()}}
