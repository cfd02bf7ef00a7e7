"""The seven pre-training methods compared in the paper (§4.2, §4.3, Table 1/4), and ``none``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clap_bench.methods.base import MethodConfig, register_method


@register_method("none")
@dataclass
class NoPostPretraining(MethodConfig):
    """The baseline every post-pre-training must beat: Table 1's "TAC (K400)" row.

    Nothing is trained: its "pre-training" stage records the initial weights (Kinetics-400 in the
    paper profile, the cached source model on the synthetic ones), so its features are those of
    the initial encoder. They do not depend on the seed: every seed shares one pre-training and
    one extraction stage, and only the downstream heads' seeds differ.
    """

    summary = "no post-pre-training: features of the initial weights (Kinetics-400; the source model on synthetic profiles)"
    trains = False


@register_method("tac")
@dataclass
class TAC(MethodConfig):
    summary = "trimmed action classification: foreground clips, class cross-entropy"
    regions: str = "foreground"
    class_head: bool = True


@register_method("tsp")
@dataclass
class TSP(MethodConfig):
    summary = "TSP: class CE on foreground + fg/bg region CE on all clips, region head sees [h_v; GVF]"
    regions: str = "all"
    class_head: bool = True
    region_head: bool = True
    region_gvf: bool = True


@register_method("clap-clip")
@dataclass
class CLAPClip(MethodConfig):
    summary = "Eq. 6 + Eq. 3: every clip-text pair (background included) is a positive; prompts only"
    class_head: bool = True
    region_head: bool = True
    contrastive: Optional[str] = "clip"


@register_method("clap-mask")
@dataclass
class CLAPMask(MethodConfig):
    summary = "Eq. 6 + Eq. 5: masked contrastive loss (background only as negatives); prompts only"
    class_head: bool = True
    region_head: bool = True
    contrastive: Optional[str] = "mask"


@register_method("clap")
@dataclass
class CLAP(MethodConfig):
    summary = "CLAP: Eq. 6 + Eq. 5 with prompts and dense captions (p=caption_prob)"
    class_head: bool = True
    region_head: bool = True
    contrastive: Optional[str] = "mask"
    use_captions: bool = True


@register_method("clap-no-cls")
@dataclass
class CLAPNoCls(MethodConfig):
    summary = "Eq. 5 alone (no class/region heads), prompts and captions"
    contrastive: Optional[str] = "mask"
    use_captions: bool = True


@register_method("clap-dagger")
@dataclass
class CLAPDagger(MethodConfig):
    summary = "CLAP†: as clap, but background clips always get prompts (captions only for foreground)"
    class_head: bool = True
    region_head: bool = True
    contrastive: Optional[str] = "mask"
    use_captions: bool = True
    background_prompts_only: bool = True
