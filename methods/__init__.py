"""Pre-training methods (TAC, TSP, CLAP and variants), installed as ``clap_bench.methods``.

A method is a registered dataclass of defaults (``base.py``) saying which clips are sampled, which
heads are trained and which losses are summed, through hooks a plug-in may override
(``build_heads``, ``forward_heads``, ``loss_terms``, ``text_policy``); ``zoo.py`` registers the
seven methods of the paper, ``losses.py`` holds Eq. 3/4/5 and ``model.py`` the model and the loss
assembly. Methods outside the package are found by ``clap_bench.plugins``.
"""

from clap_bench.methods import zoo as _zoo  # noqa: F401  (registers the built-in methods)
from clap_bench.methods.base import (
    METHODS,
    DistContext,
    HeadOptions,
    MethodConfig,
    gathered_contrastive_loss,
    create_method,
    list_methods,
    method_from_profile,
    method_summary,
    register_method,
)
from clap_bench.methods.losses import contrastive_loss, contrastive_terms, masked_cross_entropy, text_ids
from clap_bench.methods.model import PluginError, PretrainModel, compute_losses

__all__ = [
    "METHODS",
    "DistContext",
    "HeadOptions",
    "MethodConfig",
    "PluginError",
    "gathered_contrastive_loss",
    "PretrainModel",
    "compute_losses",
    "contrastive_loss",
    "contrastive_terms",
    "create_method",
    "list_methods",
    "masked_cross_entropy",
    "method_from_profile",
    "method_summary",
    "register_method",
    "text_ids",
]
