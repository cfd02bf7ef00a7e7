"""Contrastive losses of the paper (Eq. 3/4 and the masked Eq. 5) and the classification terms (Eq. 6).

The form of Eq. 4 is configurable (``pretrain.contrastive``, see FIDELITY.md):

* ``normalize``: Eq. 4 is a plain dot product ``z_v . z_t / tau``. With ``normalize=True`` the
  embeddings are L2-normalised first (cosine similarity, as CLIP), so the temperature alone sets
  the sharpness of the softmax and the logits stay bounded by ``1/tau``.
* ``duplicate_texts``: many clips share one text (the five clips of a segment get the same prompt,
  and every background clip may get the same background prompt). Read literally (``"negatives"``),
  Eq. 4 counts every other text of the batch as a negative, the other copies of a pair's own text
  included: identical columns with the positive's logit, which cap the positive's probability at
  1/k and push apart clips that carry the same text. With ``"exclude"`` we keep Eq. 3's one term
  per pair (v_i, t_i) and remove from that term's denominator every *other* pair whose text is
  the same string (``text_ids`` equal): they are neither positives nor negatives for it. Every
  other clip or text stays in the denominator. When all texts differ both are exactly Eq. 3/4.
  Note that ``"exclude"`` also stops CLAP-clip (Eq. 3) from pushing apart background clips that
  share a prompt, which is the effect the clip-vs-mask ablation (Eq. 3 vs Eq. 5) measures.

Text embeddings are computed per pair either way, so the BatchNorm of ``g_t`` sees the batch's
text distribution as ``g_v`` sees its clips.

Reductions (``reduction``, ``methods.<name>.contrastive_reduction``): ``"mean"`` divides the sum
over pairs of Eq. 3/5 by the number of terms kept in each direction (pairs for Eq. 3; foreground
pairs for Eq. 5), so the loss scale does not depend on the batch size or the foreground ratio;
``"sum"`` is the paper's literal sum over the batch's pairs (Eq. 3, Eq. 5), whose weight against
the averaged cross-entropies grows with the number of pairs. Both directions are added.

Distributed: ``local`` rows index the pairs of this process inside the gathered (global) batch.
Each process computes the terms of its own pairs against every global column and multiplies their
sum by ``world_size`` over the *global* number of terms (``"mean"``) or by ``world_size`` alone
(``"sum"``: the sum over the global batch, every process's pairs once); data-parallel gradient
averaging then yields exactly the gradient of the single-process loss on the concatenated batch.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from clap_bench.config import DUPLICATE_TEXTS

REDUCTIONS = ("mean", "sum")  # contrastive_loss's reduction (methods.<name>.contrastive_reduction)


def text_ids(texts: List[str]) -> torch.Tensor:
    """Stable 63-bit ids of strings (equal strings, equal ids, in every process)."""
    ids = [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") >> 1 for t in texts]
    return torch.tensor(ids, dtype=torch.int64)


def contrastive_terms(
    z_v: torch.Tensor,
    z_t: torch.Tensor,
    text_ids: torch.Tensor,
    logit_scale: torch.Tensor | float,
    rows: Optional[torch.Tensor] = None,
    normalize: bool = True,
    duplicate_texts: str = "exclude",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair ``-log NCE`` in both directions.

    z_v, z_t: (N, E) embeddings of the N (clip, text) pairs (pair i = row i of both).
    text_ids: (N,) int; equal ids mean identical text strings.
    logit_scale: 1/temperature.
    rows: indices of the pairs whose terms are wanted (default: all N).
    normalize, duplicate_texts: the form of Eq. 4 (module docstring).
    Returns (v2t, t2v), each of shape (len(rows),).
    """
    if duplicate_texts not in DUPLICATE_TEXTS:
        raise ValueError(f"duplicate_texts: expected one of {DUPLICATE_TEXTS}, got {duplicate_texts!r}")
    n = z_v.shape[0]
    if rows is None:
        rows = torch.arange(n, device=z_v.device)
    z_v, z_t = z_v.float(), z_t.float()
    if normalize:
        z_v = F.normalize(z_v, dim=-1)
        z_t = F.normalize(z_t, dim=-1)
    logits_v2t = (z_v[rows] @ z_t.T) * logit_scale  # clip i against every text
    logits_t2v = (z_t[rows] @ z_v.T) * logit_scale  # text i against every clip
    if duplicate_texts == "exclude":
        # Same-text pairs other than the pair itself are removed from the denominator.
        same = text_ids[rows][:, None] == text_ids[None, :]
        same[torch.arange(len(rows), device=z_v.device), rows] = False
        neg_inf = torch.finfo(torch.float32).min
        logits_v2t = logits_v2t.masked_fill(same, neg_inf)
        logits_t2v = logits_t2v.masked_fill(same, neg_inf)
    v2t = F.cross_entropy(logits_v2t, rows, reduction="none")
    t2v = F.cross_entropy(logits_t2v, rows, reduction="none")
    return v2t, t2v


def contrastive_loss(
    z_v: torch.Tensor,
    z_t: torch.Tensor,
    text_ids: torch.Tensor,
    logit_scale: torch.Tensor | float,
    foreground: Optional[torch.Tensor] = None,
    rows: Optional[torch.Tensor] = None,
    world_size: int = 1,
    normalize: bool = True,
    duplicate_texts: str = "exclude",
    reduction: str = "mean",
) -> Dict[str, torch.Tensor]:
    """Eq. 3 (``foreground=None``) or the masked Eq. 5 (``foreground``: (N,) bool of the pairs).

    With ``foreground`` given, only foreground pairs contribute terms (video->text for foreground
    clips, text->video for foreground texts; a pair's text is foreground iff its clip is), while
    background clips and texts remain in every denominator.
    Returns ``{"loss", "v2t", "t2v"}`` (``loss = v2t + t2v``); see the module docstring for the
    form (``normalize``, ``duplicate_texts``), the ``reduction`` (``"mean"`` over each direction's
    terms, or the paper's ``"sum"``) and ``rows``/``world_size`` (distributed use).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    n = z_v.shape[0]
    if rows is None:
        rows = torch.arange(n, device=z_v.device)
    keep = torch.ones(n, dtype=torch.bool, device=z_v.device) if foreground is None else foreground.bool()
    count = keep.sum().clamp(min=1).float()  # global number of terms per direction
    local_keep = keep[rows].float()
    v2t, t2v = contrastive_terms(z_v, z_t, text_ids, logit_scale, rows, normalize, duplicate_texts)
    scale = float(world_size) / count if reduction == "mean" else float(world_size)
    v2t = (v2t * local_keep).sum() * scale
    t2v = (t2v * local_keep).sum() * scale
    return {"loss": v2t + t2v, "v2t": v2t, "t2v": t2v}


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows where ``keep`` is true (0 when none is)."""
    keep = keep.bool()
    if not bool(keep.any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) connected
    return F.cross_entropy(logits[keep].float(), target[keep])
