"""QAT's episode model: a support prototype, its adaptation on the support set, and the
query-adaptive transformer that refines it for one query video.

Shapes, for ``E`` episodes of ``S`` support videos, ``H``-dim snippet features (the G-TAD
backbone's output) and ``T`` snippets:

- support features ``(E, S, H, T)`` with foreground masks ``(E, S, T)``;
- query features ``(E, H, T)``;
- prototype ``(E, H)``, bias ``(E,)``;
- logits ``(E, T)``: ``temperature * cos(prototype, snippet) - bias``; the foreground
  probability of a snippet is ``sigmoid(logit)``.

Per episode: (1) the prototype is the masked mean of the support's foreground snippets; (2) the
bias starts at the query's mean scaled cosine (features only, no labels); (3) prototype and bias
are adapted on the support labels for a few SGD steps (the plain-prototype classifier); (4) the
transformer refines the adapted prototype with the query's snippets, and the bias is fitted
again on the support for the refined prototype (QAT). Snippet features are normalised over
their channels first (``normalise_snippets``), so the transformer's final LayerNorm keeps the
prototype in the space the cosine compares in.

There is one channel, the foreground one: ``foreground_probability`` returns the probability
that a snippet belongs to the episode's action. (QAT's released code stacks background and
foreground probabilities as channels 0 and 1 and then reads channel 0 as the foreground when
it localises; we keep no second channel to confuse with the first.)
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


def normalise_snippets(features: torch.Tensor) -> torch.Tensor:
    """Each snippet's feature vector centred and scaled over its channels (LayerNorm without parameters), ``(..., H, T)``.

    The query-adaptive transformer ends in a LayerNorm, whose output is centred over the
    channels. On centred snippets, the cosine with a vector ``p`` equals the cosine with
    ``p - mean(p)``, so a refined prototype and a plain one are compared in the same space:
    a transformer whose attention adds nothing gives the plain prototype's logits back.
    """
    x = features.transpose(-1, -2)
    return F.layer_norm(x, x.shape[-1:]).transpose(-1, -2)


def masked_prototype(support: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of the foreground snippet features over all shots: ``(E, S, H, T)``, ``(E, S, T)`` -> ``(E, H)``.

    An episode without any foreground snippet in its support has no prototype: an error.
    """
    m = masks.to(support.dtype)
    count = m.sum(dim=(1, 2))
    if (count <= 0).any():
        bad = torch.nonzero(count <= 0).flatten().tolist()
        raise ValueError(f"episode(s) {bad}: the support set has no foreground snippet, so there is no prototype")
    return (support * m.unsqueeze(2)).sum(dim=(1, 3)) / count.unsqueeze(1)


def cosine_logits(prototype: torch.Tensor, features: torch.Tensor, bias: torch.Tensor, temperature: float) -> torch.Tensor:
    """``temperature * cos(prototype, snippet) - bias``.

    ``prototype (E, H)``, ``features (E, H, T)`` or ``(E, S, H, T)``, ``bias (E,)`` -> ``(E, T)`` or ``(E, S, T)``.
    """
    p = F.normalize(prototype, dim=-1, eps=EPS)
    x = F.normalize(features, dim=-2, eps=EPS)
    if features.dim() == 3:
        cos = torch.einsum("eh,eht->et", p, x)
        return temperature * cos - bias[:, None]
    cos = torch.einsum("eh,esht->est", p, x)
    return temperature * cos - bias[:, None, None]


def foreground_probability(prototype: torch.Tensor, features: torch.Tensor, bias: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probability that each snippet shows the episode's action (the foreground), ``(E, T)``."""
    return torch.sigmoid(cosine_logits(prototype, features, bias, temperature))


def foreground_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of foreground logits against 0/1 masks, per episode ``(E,)``.

    Positives and negatives weigh half each (weights ``0.5 N / N_pos`` and ``0.5 N / N_neg``,
    G-TAD's boundary loss), averaged over the episode's snippets; computed from the logits
    (``log sigmoid``) so that saturated probabilities keep their gradient.
    """
    z = logits.reshape(logits.shape[0], -1)
    pos = masks.reshape(masks.shape[0], -1).to(z.dtype)
    neg = 1.0 - pos
    n = z.shape[1]
    coef_pos = 0.5 * n / pos.sum(1).clamp(min=1.0)
    coef_neg = 0.5 * n / neg.sum(1).clamp(min=1.0)
    loss = coef_pos[:, None] * F.logsigmoid(z) * pos + coef_neg[:, None] * F.logsigmoid(-z) * neg
    return -loss.sum(1) / n


def foreground_ce_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """fewshotQAT's meta-training loss of the query (``get_ce`` with ``valid_pixels_q = (gt != 0)``,
    ``gtad_lib/classifier_v2.py``), per episode ``(E,)``.

    The cross-entropy on the foreground snippets only: ``-log(sigmoid(logit) + 1e-10)`` averaged over
    the snippets the mask marks; background snippets add nothing. Written as the reference writes it
    (the probability plus 1e-10 under the log, so a saturated snippet loses its gradient there). An
    episode without a foreground snippet scores 0 (the reference divides by zero).
    """
    z = logits.reshape(logits.shape[0], -1)
    pos = masks.reshape(masks.shape[0], -1).to(z.dtype)
    ce = -(torch.log(torch.sigmoid(z) + 1e-10) * pos).sum(1)
    return ce / pos.sum(1).clamp(min=1.0)


def initial_bias(prototype: torch.Tensor, query: torch.Tensor, temperature: float) -> torch.Tensor:
    """The bias that centres the query's logits on zero (the mean scaled cosine over its snippets), ``(E,)``.

    Uses the query's features only, never its labels.
    """
    zero = torch.zeros(prototype.shape[0], dtype=prototype.dtype, device=prototype.device)
    return cosine_logits(prototype, query, zero, temperature).mean(dim=1)


def adapt_on_support(
    prototype: torch.Tensor,
    bias: torch.Tensor,
    support: torch.Tensor,
    masks: torch.Tensor,
    temperature: float,
    steps: int,
    lr: float,
    adapt_prototype: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fit prototype and bias (or the bias alone) to the support labels with ``steps`` SGD steps.

    Features stay fixed. Each episode has its own prototype and bias; the summed loss gives
    each its own gradient, so a batch of episodes adapts exactly as the episodes would one by one.
    """
    proto = prototype.detach().clone()
    b = bias.detach().clone()
    support = support.detach()
    # Plain gradient descent (SGD without momentum), written out: torch.optim's per-call
    # overhead dominates on tensors this small.
    with torch.enable_grad():
        for _ in range(steps):
            params = [proto.requires_grad_(adapt_prototype), b.requires_grad_(True)]
            loss = foreground_loss(cosine_logits(proto, support, b, temperature), masks).sum()
            if adapt_prototype:
                g_proto, g_bias = torch.autograd.grad(loss, params)
                proto = (proto - lr * g_proto).detach()
            else:
                (g_bias,) = torch.autograd.grad(loss, [b])
                proto = proto.detach()
            b = (b - lr * g_bias).detach()
    return proto.detach(), b.detach()


class QueryAdaptiveTransformer(nn.Module):
    """The prototype attends to the query video's snippets (multi-head attention); residual and LayerNorm.

    ``refined = LayerNorm(prototype + Dropout(MultiHeadAttention(q=prototype, k=v=query snippets)))``
    """

    def __init__(self, dim: int, heads: int = 2, dropout: float = 0.5, attention_dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"feature size {dim} is not divisible by {heads} attention heads")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=attention_dropout, batch_first=True)
        # Start from "add nothing": with a zero output projection the refined prototype is the
        # LayerNorm of the plain one (the direction the cosine logits read is nearly unchanged;
        # refine_prototype still re-fits the bias, so its scores are close to, not equal to, the
        # plain prototype's); meta-training then learns what to take from the query.
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, prototype: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``prototype (E, H)``, ``query (E, H, T)`` -> refined prototype ``(E, H)``."""
        q = prototype.unsqueeze(1)  # (E, 1, H)
        kv = query.transpose(1, 2)  # (E, T, H)
        attended, _ = self.attention(q, kv, kv, need_weights=False)
        return self.norm(q + self.dropout(attended)).squeeze(1)


def support_prototype(
    support: torch.Tensor, masks: torch.Tensor, query: torch.Tensor, temperature: float, steps: int, lr: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The support-adapted prototype and bias of each episode (the plain-prototype classifier)."""
    proto = masked_prototype(support, masks)
    bias = initial_bias(proto, query, temperature)
    return adapt_on_support(proto, bias, support, masks, temperature, steps, lr)


def refine_prototype(
    transformer: QueryAdaptiveTransformer,
    prototype: torch.Tensor,
    bias: torch.Tensor,
    support: torch.Tensor,
    masks: torch.Tensor,
    query: torch.Tensor,
    temperature: float,
    steps: int,
    lr: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """QAT's prototype for each query: the transformer's refinement, and its bias re-fitted on the support.

    The refined prototype lives after a LayerNorm, so the cosine scale the support-adapted
    bias was fitted to no longer holds; the bias alone is fitted again on the support labels
    (prototype fixed, same steps). The refined prototype keeps its gradient (the bias is a
    constant to it), which is what meta-training follows.
    """
    refined = transformer(prototype, query)
    _, new_bias = adapt_on_support(refined.detach(), bias, support, masks, temperature, steps, lr, adapt_prototype=False)
    return refined, new_bias
