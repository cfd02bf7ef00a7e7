"""What a pre-training method is: which clips it samples, which heads it trains, which losses it sums.

A method is a dataclass of its own defaults registered by name (``@register_method``). The
profile's ``methods.<name>`` section overrides fields (unknown keys are rejected), and
``create_method(name, **kw)`` builds one with keyword overrides (``None`` means "not given").
The trainer, encoder and data pipeline are shared; what a method owns is reached only through
the hooks of ``MethodConfig``:

* ``build_heads(feat_dim, num_classes, text_dim, gvf_dim, options)``: the modules (or parameters
  and buffers) added to the model next to the backbone: saved in checkpoints, trained at
  ``lr_heads``;
* ``forward_heads(model, h, text_features, gvf)``: the heads' outputs for clip features ``h``;
* ``loss_terms(model, out, batch, dist)``: named scalar loss terms and statistics; ``dist``
  (``DistContext``) gathers tensors over processes, so contrastive negatives can come from the
  global batch; ``loss_weights()`` weights the terms in the sum;
* ``text_policy(train_cfg)``: which text each clip is paired with (``None``: no texts).

The default hooks implement the flags below (``regions``, ``class_head``, ``region_head``,
``contrastive``, ...); the seven methods of the paper are nothing but flag defaults. A plug-in
method overrides any hook (see ADDING_A_METHOD.md); plug-ins are found by ``clap_bench.plugins``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from clap_bench.config import ContrastiveConfig, added_field, from_dict, identity_dict
from clap_bench.methods.losses import REDUCTIONS, contrastive_loss, masked_cross_entropy, text_ids
from clap_bench.registry import Registry, check_folder_name

if TYPE_CHECKING:  # pragma: no cover
    from clap_bench.clips.language import TextPolicy
    from clap_bench.config import TrainConfig



def _discover_methods() -> None:
    import clap_bench.methods.zoo  # noqa: F401  (the built-ins, registered first)
    from clap_bench.plugins import METHOD_GROUP, load_entry_points

    load_entry_points(METHOD_GROUP)


METHODS = Registry("pre-training method", discover=_discover_methods,
                   check_name=lambda name: check_folder_name("pre-training method", name))

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DistContext:
    """The processes a loss is computed over. ``gather``/``gather_no_grad`` concatenate a tensor
    over processes along dim 0 (with / without gradient); ``None`` (one process, or validation)
    means the batch of this process is the whole batch."""

    gather: Optional[Gather] = None
    gather_no_grad: Optional[Gather] = None
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.gather is not None and self.world_size > 1

    @property
    def loss_world_size(self) -> int:
        """The ``world_size`` a loss normalised over the global batch divides by (see ``methods.losses``)."""
        return self.world_size if self.gather is not None else 1

    def local_rows(self, n_local: int, device) -> torch.Tensor:
        """Indices of this process's ``n_local`` items inside the gathered (global) batch."""
        start = 0
        if self.distributed:
            offsets = self.gather_no_grad(torch.tensor([n_local], device=device))
            start = int(offsets[: self.rank].sum())
        return torch.arange(start, start + n_local, device=device)

    def all(self, x: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """``x`` concatenated over processes (``x`` itself with one process)."""
        if not self.distributed:
            return x
        return self.gather(x) if grad else self.gather_no_grad(x)


@dataclass
class HeadOptions:
    """Profile settings the heads are built with (``encoder.embed_dim``, ``pretrain.contrastive``,
    ``pretrain.head_init_std``)."""

    embed_dim: int = 512
    contrastive: ContrastiveConfig = dataclasses.field(default_factory=ContrastiveConfig)
    head_init_std: Optional[float] = None

REGIONS = ("all", "foreground")
CONTRASTIVE = (None, "clip", "mask")


@dataclass
class MethodConfig:
    """Fields every method sets; subclasses change the defaults and document the method."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # False: the method does no post-pre-training; its features are the initial weights' ("none").
    trains: ClassVar[bool] = True
    # The validation figures (``Trainer.validate``'s keys, without the ``val_`` prefix) whose mean
    # ``pretrain.keep_epoch: best`` maximises (``selection_value``). None: the accuracies of the
    # method's heads (class_acc, region_acc: TSP's "Avg Accuracy"), or for a method without heads
    # its retrieval R@1 (v2t_r1, t2v_r1). A figure where lower is better needs ``selection_value``.
    selection_metric: ClassVar[Optional[Tuple[str, ...]]] = None

    regions: str = "all"  # which clips are sampled: "all" (foreground + background) or "foreground"
    class_head: bool = False  # f_c: action class cross-entropy on foreground clips
    region_head: bool = False  # f_r: foreground/background cross-entropy on every clip
    region_gvf: bool = False  # f_r sees [h_v ; global video feature] (TSP)
    contrastive: Optional[str] = None  # None | "clip" (Eq. 3) | "mask" (Eq. 5)
    use_captions: bool = False  # texts from dense captions (with probability caption_prob) besides prompts
    background_prompts_only: bool = False  # background clips always get a prompt, never a caption (CLAP†)
    class_weight: float = 1.0
    region_weight: float = 1.0
    contrastive_weight: float = 1.0
    # This method's learning rate for its heads in the pre-training stage; None: pretrain.lr_heads.
    # The paper states 2e-2 for CLAP's heads (§4.1); TSP's reference trains TSP and TAC at 0.002.
    lr_heads: Optional[float] = added_field(None)
    # How the contrastive term reduces its per-pair terms (methods.losses): "mean" over each
    # direction's terms, or "sum", the paper's literal sums over the batch's pairs (Eq. 3, Eq. 5),
    # whose weight against the averaged L_ce then grows with the batch's (foreground) pair count.
    contrastive_reduction: str = added_field("mean")

    def __post_init__(self) -> None:
        where = f"methods.{self.name}"
        if self.lr_heads is not None and not self.lr_heads > 0:
            raise ValueError(f"{where}.lr_heads: expected a learning rate > 0 or null (pretrain.lr_heads), got {self.lr_heads!r}")
        if self.regions not in REGIONS:
            raise ValueError(f"{where}.regions: expected one of {REGIONS}, got {self.regions!r}")
        if self.contrastive not in CONTRASTIVE:
            raise ValueError(f"{where}.contrastive: expected one of {CONTRASTIVE}, got {self.contrastive!r}")
        if self.contrastive_reduction not in REDUCTIONS:
            raise ValueError(f"{where}.contrastive_reduction: expected one of {REDUCTIONS}, got {self.contrastive_reduction!r}")
        if self.contrastive_reduction != "mean" and not self.contrastive:
            raise ValueError(f"{where}.contrastive_reduction: {self.contrastive_reduction!r} needs a contrastive term "
                             "(contrastive: clip or mask); the method has none")
        if self.trains and not (self.class_head or self.region_head or self.contrastive):
            raise ValueError(f"{where}: a method needs at least one head or a contrastive loss")
        if self.region_head and self.regions == "foreground":
            raise ValueError(f"{where}: a region head needs background clips (regions: all)")
        if self.region_gvf and not self.region_head:
            raise ValueError(f"{where}.region_gvf needs region_head: true")

    # ------------------------------------------------------------------ what the trainer feeds
    @property
    def uses_text(self) -> bool:
        """The model gets the frozen text features of each clip's text (``forward_heads``'s ``text_features``)."""
        return self.contrastive is not None

    @property
    def uses_gvf(self) -> bool:
        """The model gets each clip's global video feature (TSP's region head)."""
        return self.region_gvf

    @property
    def uses_captions(self) -> bool:
        """Pre-training attaches the dense captions to the segments (``text_policy`` may pick them)."""
        return self.use_captions

    @property
    def retrieval_foreground_only(self) -> bool:
        """Validation's clip->text R@1 asks foreground clips only (the masked loss ignores background pairs)."""
        return self.contrastive == "mask"

    @property
    def selection_figures(self) -> Tuple[str, ...]:
        """The validation figures ``selection_value`` averages (``selection_metric``, or from the flags)."""
        if self.selection_metric is not None:
            return tuple(self.selection_metric)
        heads = tuple(name for name, on in (("class_acc", self.class_head), ("region_acc", self.region_head)) if on)
        if heads:  # TSP's rule: the mean of the heads' accuracies (train.py, "Avg Accuracy")
            return heads
        return ("v2t_r1", "t2v_r1") if self.contrastive else ()

    # ------------------------------------------------------------------ hooks
    def selection_value(self, figures: Dict[str, float]) -> float:
        """The figure ``pretrain.keep_epoch: best`` maximises over the trained epochs, from one epoch's
        validation figures (``Trainer.validate``: loss terms, ``class_acc``, ``region_acc``,
        ``v2t_r1``, ``t2v_r1``, ...): the mean of ``selection_figures``. Higher is better."""
        names = self.selection_figures
        where = f"method {self.name} ({type(self).__module__}.{type(self).__qualname__})"
        if not names:
            raise ValueError(f"{where}: pretrain.keep_epoch: best needs a validation figure to select on; the method "
                             "has no head or contrastive term to take it from: set its selection_metric or selection_value")
        missing = [n for n in names if n not in figures]
        if missing:
            raise ValueError(f"{where}: pretrain.keep_epoch: best selects on the validation figures {list(names)}, but "
                             f"validation gave no {missing} (it gave {sorted(figures)})")
        return sum(float(figures[n]) for n in names) / len(names)

    def build_heads(
        self,
        feat_dim: int,
        num_classes: int,
        text_dim: Optional[int],
        gvf_dim: Optional[int],
        options: HeadOptions,
    ) -> Dict[str, Any]:
        """Name -> ``nn.Module`` (or ``nn.Parameter``, or a tensor kept as a buffer) added to the model.

        Built in this order, so that with a given seed the initial weights never change. Names
        become attributes of ``PretrainModel`` and keys of its checkpoints.
        """
        heads: Dict[str, Any] = {}
        if self.class_head:
            if num_classes < 1:
                raise ValueError(f"method {self.name}: a class head needs at least one class")
            heads["class_head"] = nn.Linear(feat_dim, num_classes)
        if self.region_head:
            extra = 0
            if self.region_gvf:
                if not gvf_dim:
                    raise ValueError(f"method {self.name}: region_gvf needs the GVF size (gvf_dim)")
                extra = gvf_dim
            heads["region_head"] = nn.Linear(feat_dim + extra, 2)
        if options.head_init_std is not None:  # TSP's heads: weights from N(0, std), zero bias
            for head in (heads.get("class_head"), heads.get("region_head")):
                if head is not None:
                    nn.init.normal_(head.weight, 0.0, options.head_init_std)
                    nn.init.zeros_(head.bias)
        if self.contrastive:
            if not text_dim:
                raise ValueError(f"method {self.name}: a contrastive loss needs the text feature size")
            heads.update(contrastive_heads(feat_dim, text_dim, options))
        return heads

    def forward_heads(
        self,
        model: nn.Module,
        h: torch.Tensor,
        text_features: Optional[torch.Tensor] = None,
        gvf: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """The heads' outputs for the clips' features ``h`` (the backbone's output, (N, feat_dim))."""
        out: Dict[str, torch.Tensor] = {}
        if self.class_head:
            out["class_logits"] = model.class_head(h)
        if self.region_head:
            r_in = torch.cat([h, gvf.to(h.dtype)], dim=1) if self.region_gvf else h
            out["region_logits"] = model.region_head(r_in)
        if self.contrastive:
            out["z_v"] = model.video_proj(h)
            out["z_t"] = model.text_proj(text_features.to(h.dtype))
        return out

    def loss_terms(
        self,
        model: nn.Module,
        out: Dict[str, torch.Tensor],
        batch: Dict[str, Any],
        dist: DistContext,
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """(terms, stats): named scalar loss terms (summed with ``loss_weights()``) and named
        scalar statistics (logged, not trained on) for one batch.

        ``batch``: ``label`` (N,) class index (-1: none), ``region`` (N,) 1 foreground / 0
        background, ``texts`` (N strings), ``video_ids`` (N strings). ``dist``: see ``DistContext``.
        """
        terms, stats = self.head_terms(out, batch)
        if self.contrastive:
            c = gathered_contrastive_loss(model, out, batch, dist, masked=self.contrastive == "mask")
            terms["contrastive"] = c["loss"]
            stats.update(v2t=c["v2t"], t2v=c["t2v"], temperature=1.0 / model.logit_scale())
        return terms, stats

    def head_terms(
        self, out: Dict[str, torch.Tensor], batch: Dict[str, Any]
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Eq. 6's terms of the heads the flags ask for: ``class_ce`` (f_c, foreground clips) and
        ``region_ce`` (f_r, every clip), with their accuracies as statistics."""
        label = batch["label"]
        region = batch["region"]
        fg = region == 1
        terms: Dict[str, Any] = {}
        stats: Dict[str, Any] = {}
        if self.class_head:
            logits = out["class_logits"]
            keep = fg & (label >= 0)
            terms["class_ce"] = masked_cross_entropy(logits, label.clamp(min=0), keep)
            if bool(keep.any()):
                stats["class_acc"] = (logits[keep].argmax(1) == label[keep]).float().mean()
        if self.region_head:
            logits = out["region_logits"]
            terms["region_ce"] = masked_cross_entropy(logits, region, torch.ones_like(fg))
            stats["region_acc"] = (logits.argmax(1) == region).float().mean()
        return terms, stats

    def loss_weights(self) -> Dict[str, float]:
        """Weight of each term of ``loss_terms`` in the loss (terms not named here: 1)."""
        return {"class_ce": self.class_weight, "region_ce": self.region_weight, "contrastive": self.contrastive_weight}

    def text_policy(self, train_cfg: "TrainConfig") -> Optional["TextPolicy"]:
        """Which text each clip is paired with (``None``: the method uses no text)."""
        if not self.uses_text:
            return None
        from clap_bench.clips.language import TextPolicy

        return TextPolicy(
            use_captions=self.use_captions, caption_prob=train_cfg.caption_prob,
            background_prompts_only=self.background_prompts_only, caption_choice=train_cfg.caption_choice,
        )

    def to_dict(self) -> Dict[str, Any]:
        """The fields, less keys added later while at their default (``added_field``): checkpoints and
        plug-in stage hashes read as they did before those keys existed."""
        return identity_dict(self)


def projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """g_v / g_t of the paper (§4.1): batch normalisation followed by a linear layer."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, out_dim))


def contrastive_heads(feat_dim: int, text_dim: int, options: HeadOptions) -> Dict[str, Any]:
    """g_v, g_t and the (fixed or learned) log logit scale of a contrastive method (§4.1)."""
    scale = torch.tensor(math.log(1.0 / options.contrastive.temperature))
    return {
        "video_proj": projection(feat_dim, options.embed_dim),
        "text_proj": projection(text_dim, options.embed_dim),
        "log_logit_scale": nn.Parameter(scale) if options.contrastive.learn_temperature else scale,
    }


def gathered_contrastive_loss(
    model: nn.Module,
    out: Dict[str, torch.Tensor],
    batch: Dict[str, Any],
    dist: DistContext,
    masked: bool,
    **form: Any,
) -> Dict[str, torch.Tensor]:
    """Eq. 3 (``masked=False``) or Eq. 5 of ``out["z_v"]``/``out["z_t"]`` against the global batch.

    Every process gathers the embeddings, text ids and foreground flags of all processes and
    computes the terms of its own pairs (see ``methods.losses``). ``form`` overrides keyword
    arguments of ``contrastive_loss`` (default: ``pretrain.contrastive`` of the profile, and the
    reduction of the model's method, ``methods.<name>.contrastive_reduction``).
    """
    z_v, z_t = out["z_v"], out["z_t"]
    fg = batch["region"] == 1
    ids = text_ids(batch["texts"]).to(z_v.device)
    rows = dist.local_rows(z_v.shape[0], z_v.device)
    z_v, z_t = dist.all(z_v), dist.all(z_t)
    ids, fg_all = dist.all(ids, grad=False), dist.all(fg.to(torch.uint8), grad=False).bool()
    kwargs = dict(
        foreground=fg_all if masked else None,
        rows=rows,
        world_size=dist.loss_world_size,
        normalize=model.contrastive.normalize,
        duplicate_texts=model.contrastive.duplicate_texts,
        reduction=getattr(getattr(model, "method", None), "contrastive_reduction", "mean"),
    )
    kwargs.update(form)
    return contrastive_loss(z_v, z_t, ids, model.logit_scale(), **kwargs)


def register_method(name: str):
    """Class decorator: register a ``MethodConfig`` subclass under ``name``."""

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, MethodConfig)):
            what = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"
            raise TypeError(f"register_method({name!r}): {what} is not a method; "
                            "expected a dataclass subclass of clap_bench.methods.MethodConfig")
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
            raise TypeError(f"register_method({name!r}): {cls.__module__}.{cls.__qualname__} must be decorated "
                            "with @dataclass (below @register_method), so its fields are config keys")
        cls.name = name
        METHODS.register(name)(cls)
        return cls

    return decorator


def create_method(name: str, **overrides: Any) -> MethodConfig:
    """Method ``name`` with its defaults, ``overrides`` applied (``None`` values ignored, keys checked)."""
    cls = METHODS.get(name)
    given = {k: v for k, v in overrides.items() if v is not None}
    return from_dict(cls, given, f"methods.{name}")


def method_from_profile(name: str, profile_methods: Dict[str, Dict[str, Any]]) -> MethodConfig:
    """Method ``name`` with the profile's ``methods.<name>`` section applied as written: there a
    ``null`` is a value (``contrastive: null`` turns the contrastive term off; a field that takes
    no null says so), not "not given" as a ``None`` keyword is to ``create_method``."""
    return from_dict(METHODS.get(name), dict(profile_methods.get(name) or {}), f"methods.{name}")


def list_methods(pattern: str = "*") -> List[str]:
    return METHODS.list(pattern)


def method_summary(name: str) -> str:
    return METHODS.get(name).summary
