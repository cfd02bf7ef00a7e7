"""What a pre-training method is: which clips it samples, which heads it trains, which losses it sums.

A method is a dataclass of its own defaults registered by name (``@register_method``). The
profile's ``methods.<name>`` section overrides fields (unknown keys are rejected), and
``create_method(name, **kw)`` builds one with keyword overrides (``None`` means "not given").
Nothing else differs between methods: the trainer, encoder and data pipeline are shared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from clap_bench.config import from_dict
from clap_bench.registry import Registry

METHODS = Registry("pre-training method")

REGIONS = ("all", "foreground")
CONTRASTIVE = (None, "clip", "mask")


@dataclass
class MethodConfig:
    """Fields every method sets; subclasses change the defaults and document the method."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # False: the method does no post-pre-training; its features are the initial weights' ("none").
    trains: ClassVar[bool] = True

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

    def __post_init__(self) -> None:
        where = f"methods.{self.name}"
        if self.regions not in REGIONS:
            raise ValueError(f"{where}.regions: expected one of {REGIONS}, got {self.regions!r}")
        if self.contrastive not in CONTRASTIVE:
            raise ValueError(f"{where}.contrastive: expected one of {CONTRASTIVE}, got {self.contrastive!r}")
        if self.trains and not (self.class_head or self.region_head or self.contrastive):
            raise ValueError(f"{where}: a method needs at least one head or a contrastive loss")
        if self.region_head and self.regions == "foreground":
            raise ValueError(f"{where}: a region head needs background clips (regions: all)")
        if self.region_gvf and not self.region_head:
            raise ValueError(f"{where}.region_gvf needs region_head: true")

    @property
    def uses_text(self) -> bool:
        return self.contrastive is not None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def register_method(name: str):
    """Class decorator: register a ``MethodConfig`` subclass under ``name``."""

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, MethodConfig)):
            raise TypeError(f"register_method({name!r}) expects a MethodConfig subclass")
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
    return create_method(name, **dict(profile_methods.get(name) or {}))


def list_methods(pattern: str = "*") -> List[str]:
    return METHODS.list(pattern)


def method_summary(name: str) -> str:
    return METHODS.get(name).summary
