"""The network a method trains: backbone f_v and the method's heads; and the loss of a batch.

``PretrainModel`` holds the backbone and what the method's ``build_heads`` returns (a TAC model
has no region head or projections), so checkpoints and optimiser groups reflect the method.
``compute_losses`` asks the method for its terms (``MethodConfig.loss_terms``), checks them and
sums them with the method's weights into ``"loss"``; statistics (head accuracies, ...) come along
for logging.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from clap_bench.config import ContrastiveConfig
from clap_bench.methods.base import DistContext, Gather, HeadOptions, MethodConfig, projection
from clap_bench.methods.losses import text_ids

__all__ = ["PretrainModel", "compute_losses", "projection", "text_ids", "PluginError"]

RESERVED = ("backbone", "method", "contrastive", "loss")
MAX_LOGIT_SCALE = 100.0  # the bound of a learned logit scale (CLIP): temperature >= 0.01


class PluginError(ValueError):
    """A method (built-in or plug-in) broke the contract of ``MethodConfig``'s hooks."""


def _origin(method: MethodConfig) -> str:
    cls = type(method)
    return f"method {method.name!r} ({cls.__module__}.{cls.__qualname__})"


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
        options = HeadOptions(embed_dim=embed_dim, contrastive=self.contrastive, head_init_std=head_init_std)
        heads = method.build_heads(backbone.out_dim, num_classes, text_dim, gvf_dim, options)
        if not isinstance(heads, dict):
            raise PluginError(f"{_origin(method)}: build_heads must return a dict of name -> module, got {type(heads).__name__}")
        for name, head in heads.items():
            if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
                raise PluginError(f"{_origin(method)}: build_heads: bad head name {name!r} (an identifier, not one of {RESERVED})")
            if isinstance(head, nn.Module):
                self.add_module(name, head)
            elif isinstance(head, nn.Parameter):
                self.register_parameter(name, head)
            elif isinstance(head, torch.Tensor):
                self.register_buffer(name, head)
            else:
                raise PluginError(f"{_origin(method)}: build_heads: {name!r} is a {type(head).__name__}, "
                                  "expected an nn.Module, an nn.Parameter or a tensor")

    def head_modules(self) -> List[nn.Module]:
        return [m for n, m in self.named_children() if n != "backbone"]

    def head_parameters(self) -> List[nn.Parameter]:
        """Every trainable parameter outside the backbone (the ``heads`` optimiser group)."""
        return [p for m in self.head_modules() for p in m.parameters()] + list(self.parameters(recurse=False))

    def logit_scale(self) -> torch.Tensor:
        # A learned scale is kept at most MAX_LOGIT_SCALE by ``clamp_logit_scale_`` after each step; a
        # fixed temperature is used exactly as configured.
        return self.log_logit_scale.exp()

    def clamp_logit_scale_(self) -> None:
        """Bound a learned logit scale at 100 (temperature >= 0.01) after an optimiser step, as CLIP
        clamps its parameter in place. A bound in the forward pass instead would pass no gradient
        once the parameter is past it, and nothing but weight decay could bring it back."""
        scale = getattr(self, "log_logit_scale", None)
        if isinstance(scale, nn.Parameter):
            with torch.no_grad():
                scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def forward(
        self,
        clips: torch.Tensor,
        text_features: Optional[torch.Tensor] = None,
        gvf: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        h = self.backbone(clips)
        out: Dict[str, torch.Tensor] = {"h": h}
        out.update(self.method.forward_heads(self, h, text_features, gvf))
        return out


def compute_losses(
    model: PretrainModel,
    out: Dict[str, torch.Tensor],
    batch: Dict[str, Any],
    gather: Optional[Gather] = None,
    gather_no_grad: Optional[Gather] = None,
    rank: int = 0,
    world_size: int = 1,
) -> Dict[str, torch.Tensor]:
    """Every loss term of ``model.method`` on one batch, their weighted sum as ``"loss"``, and statistics.

    ``gather``/``gather_no_grad`` concatenate a tensor over processes (with / without gradient);
    when given, contrastive negatives come from the global batch (see ``DistContext``).
    """
    method = model.method
    dist = DistContext(gather=gather, gather_no_grad=gather_no_grad, rank=rank, world_size=world_size)
    result = method.loss_terms(model, out, batch, dist)
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, dict) for r in result)):
        raise PluginError(f"{_origin(method)}: loss_terms must return (terms, stats), two dicts of name -> scalar tensor")
    terms, stats = result
    if not terms:
        raise PluginError(f"{_origin(method)}: loss_terms returned no loss term")
    for kind, values in (("loss term", terms), ("statistic", stats)):
        for name, value in values.items():
            if name == "loss":
                raise PluginError(f"{_origin(method)}: {kind} name 'loss' is reserved for the weighted sum")
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise PluginError(f"{_origin(method)}: {kind} {name!r} must be a scalar tensor, got {shape}")
    overlap = sorted(set(terms) & set(stats))
    if overlap:
        raise PluginError(f"{_origin(method)}: names {overlap} are both loss terms and statistics")
    weights = method.loss_weights()
    total = None
    for name, value in terms.items():
        weighted = value * float(weights.get(name, 1.0))
        total = weighted if total is None else total + weighted
    return {**terms, "loss": total, **{k: v.detach() for k, v in stats.items()}}
