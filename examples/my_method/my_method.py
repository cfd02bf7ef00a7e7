"""CLAP with hard negatives from the same video: a pre-training method living outside clap_bench.

Two clips of one video share its scene, lighting and camera, so telling their texts apart asks
for more than recognising the video. This method is CLAP (Eq. 6 + the masked Eq. 5, prompts and
captions), with one change to Eq. 4's denominator: every clip (video->text) or text (text->video)
of the *same video* as the pair, carrying a different text, counts ``hard_negative_weight``
times (a log-weight added to its logit). With ``hard_negative_weight: 1`` it is exactly CLAP.

It shows the three hooks a method owns: the heads (inherited: f_c, f_r, g_v, g_t), the loss
(``loss_terms``, with negatives gathered over processes through ``dist``) and its config keys
(``hard_negative_weight``, settable in a profile's ``methods.my-method`` section).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from clap_bench.methods import DistContext, MethodConfig, register_method, text_ids

__version__ = "0.1.0"


@register_method("my-method")
@dataclass
class CLAPSameVideoNegatives(MethodConfig):
    summary = "CLAP whose Eq. 5 weighs same-video negatives x hard_negative_weight (example plug-in)"
    class_head: bool = True
    region_head: bool = True
    contrastive: Optional[str] = "mask"
    use_captions: bool = True
    hard_negative_weight: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hard_negative_weight > 0:
            raise ValueError(f"methods.{self.name}.hard_negative_weight: expected > 0, got {self.hard_negative_weight}")

    def loss_terms(self, model, out, batch, dist: DistContext) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        terms, stats = self.head_terms(out, batch)  # f_c and f_r, as CLAP
        loss, v2t, t2v = same_video_contrastive(
            out["z_v"], out["z_t"], batch, dist, model.logit_scale(), self.hard_negative_weight,
            normalize=model.contrastive.normalize, exclude_same_text=model.contrastive.duplicate_texts == "exclude",
            reduction=self.contrastive_reduction,
        )
        terms["contrastive"] = loss
        stats.update(v2t=v2t, t2v=t2v, temperature=1.0 / model.logit_scale())
        return terms, stats


def same_video_contrastive(z_v, z_t, batch, dist: DistContext, logit_scale, weight: float,
                           normalize: bool = True, exclude_same_text: bool = True, reduction: str = "mean"):
    """Masked Eq. 5 over the global batch with same-video negatives weighted by ``weight``.

    Each process computes the terms of its own pairs (``rows``) against every gathered column and
    divides by the global number of foreground pairs times ``1 / world_size`` (``reduction: sum``, the
    paper's sum: by ``1 / world_size`` only), so that averaging the gradients over processes gives
    the gradient of the one-process loss on the whole batch.
    """
    device = z_v.device
    rows = dist.local_rows(z_v.shape[0], device)
    z_v, z_t = dist.all(z_v), dist.all(z_t)
    texts = dist.all(text_ids(batch["texts"]).to(device), grad=False)
    videos = dist.all(text_ids(batch["video_ids"]).to(device), grad=False)
    fg = dist.all((batch["region"] == 1).to(torch.uint8), grad=False).bool()
    z_v, z_t = z_v.float(), z_t.float()
    if normalize:
        z_v, z_t = F.normalize(z_v, dim=-1), F.normalize(z_t, dim=-1)
    own = torch.zeros(len(rows), z_v.shape[0], dtype=torch.bool, device=device)
    own[torch.arange(len(rows), device=device), rows] = True
    same_text = (texts[rows][:, None] == texts[None, :]) & ~own
    hard = (videos[rows][:, None] == videos[None, :]) & ~own & ~same_text
    bias = hard.float() * math.log(weight)
    neg_inf = torch.finfo(torch.float32).min
    v2t_logits = (z_v[rows] @ z_t.T) * logit_scale + bias
    t2v_logits = (z_t[rows] @ z_v.T) * logit_scale + bias
    if exclude_same_text:  # other copies of the pair's text are neither positives nor negatives
        v2t_logits = v2t_logits.masked_fill(same_text, neg_inf)
        t2v_logits = t2v_logits.masked_fill(same_text, neg_inf)
    keep = fg[rows].float()
    scale = float(dist.loss_world_size)
    if reduction == "mean":  # methods.<name>.contrastive_reduction
        scale = scale / fg.sum().clamp(min=1).float()
    v2t = (F.cross_entropy(v2t_logits, rows, reduction="none") * keep).sum() * scale
    t2v = (F.cross_entropy(t2v_logits, rows, reduction="none") * keep).sum() * scale
    return v2t + t2v, v2t.detach(), t2v.detach()
