"""The choices where a profile may depart from the paper's protocol, and which of them a profile makes.

Each entry of ``CHOICES`` is one row of FIDELITY.md that is a profile key: where it lives in the
resolved profile, which of the paper's tables it affects (through the stages behind them), and
how to say that a profile departs from the ``paper`` profile on it. ``clapbench table`` prints, under each table, the
choices of that table's stages on which the tabulated profile differs from ``paper``
(``departures``). Task keys (``tasks.<task>.<key>``) are resolved through the task's own defaults,
so a key a profile leaves unset still has its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

ALL_TABLES = ("1", "2a", "2b", "3")  # pre-training feeds every table
_MISSING = object()


@dataclass(frozen=True)
class Choice:
    key: str  # dotted path in the resolved profile
    tables: tuple  # the paper's tables whose numbers it changes
    what: str  # what a departing value does, in a few words
    shown: Optional[Callable[[Any], str]] = None  # how a value reads (default: repr)

    def describe(self, value: Any) -> str:
        return self.shown(value) if self.shown else repr(value)


def _text_model(value: Any) -> str:
    return value or "all-MiniLM-L6-v2 (bundled)"


def _video_scores(value: Any) -> str:
    return f"external scores {value}" if value else "built-in video classifier"


def _method_lr_heads(value: Any) -> str:
    return "pretrain.lr_heads (every method's)" if value is None else f"{value:g}"


# The built-in methods with a contrastive term (methods.<name>.contrastive_reduction).
CONTRASTIVE_METHODS = ("clap-clip", "clap-mask", "clap", "clap-no-cls", "clap-dagger")

CHOICES: tuple = (
    Choice("encoder.text_model", ALL_TABLES, "text encoder", _text_model),
    Choice("pretrain.bn_reestimate", ALL_TABLES, "BatchNorm re-estimation after pre-training"),
    Choice("pretrain.keep_epoch", ALL_TABLES, "pre-trained encoder kept",
           lambda v: "the best validated epoch" if v == "best" else "the last epoch"),
    Choice("pretrain.contrastive.normalize", ALL_TABLES, "L2-normalised contrastive embeddings (cosine instead of Eq. 4's dot product)"),
    Choice("pretrain.contrastive.temperature", ALL_TABLES, "contrastive temperature"),
    Choice("pretrain.contrastive.learn_temperature", ALL_TABLES, "learned contrastive temperature"),
    Choice("pretrain.contrastive.duplicate_texts", ALL_TABLES, "other pairs with the same text in a contrastive denominator"),
    Choice("pretrain.head_init_std", ALL_TABLES, "initialisation of the class and region heads"),
    Choice("pretrain.max_segments_per_epoch", ALL_TABLES, "segments drawn per pre-training epoch",
           lambda v: "every segment" if v is None else f"{v} segments"),
    Choice("pretrain.short_segments", ALL_TABLES, "segments shorter than one clip"),
    Choice("pretrain.duplicate_segments", ALL_TABLES, "repeated csv rows (same video, times and label)",
           lambda v: "each sampled as listed" if v == "keep" else "sampled once"),
    Choice("pretrain.gvf_scaling", ALL_TABLES, "scaling of the global video feature"),
    Choice("pretrain.caption_choice", ALL_TABLES, "caption given to a clip"),
    Choice("methods.tsp.lr_heads", ALL_TABLES, "TSP's head learning rate", _method_lr_heads),
    Choice("methods.tac.lr_heads", ALL_TABLES, "TAC's head learning rate", _method_lr_heads),
    Choice("methods.tac.regions", ALL_TABLES, "TAC's training clips",
           lambda v: "foreground segments only" if v == "foreground" else "every segment (background without class loss)"),
    *(Choice(f"methods.{m}.contrastive_reduction", ALL_TABLES, f"{m}'s contrastive loss over the batch's pairs",
             lambda v: "summed (Eq. 3/5 as written)" if v == "sum" else "averaged")
      for m in CONTRASTIVE_METHODS),
    Choice("clips.resize_filter", ALL_TABLES, "filter that scales frames to clips.resize"),
    Choice("extract.last_clip", ALL_TABLES, "last clip of a video at extraction"),
    Choice("extract.snap_duration_to_frames", ALL_TABLES, "extraction grid over the source frames' duration (not the annotated one)"),
    Choice("source_pretrain.per_seed", ALL_TABLES, "a source model per seed (initial weights)"),
    Choice("pretrain.cpu_bf16", ALL_TABLES, "bfloat16 autocast of pre-training on CPU"),
    Choice("source_pretrain.cpu_bf16", ALL_TABLES, "bfloat16 autocast of the source pre-training on CPU"),
    Choice("tasks.tal.head_seeds", ("1",), "G-TAD heads averaged per seed"),
    Choice("tasks.tal.video_scores", ("1",), "G-TAD's video labels", _video_scores),
    Choice("tasks.tal.boundary_anchors", ("1",), "G-TAD start/end label intervals"),
    Choice("tasks.tal.proposal_score", ("1",), "G-TAD proposal score"),
    Choice("tasks.tal.proposal_candidates", ("1",), "G-TAD proposal anchors"),
    Choice("tasks.tal.map_kernel", ("1",), "G-TAD map head's 2-D kernel"),
    Choice("tasks.fstal.adapt_steps", ("2a",), "QAT support-adaptation steps"),
    Choice("tasks.fstal.single_instance", ("2a",), "QAT episodes of single-action videos only"),
    Choice("tasks.fstal.meta_min_action_fraction", ("2a",), "QAT meta-training actions longer than this fraction of the video"),
    Choice("tasks.fstal.snippet_norm", ("2a",), "QAT snippet features before the cosine"),
    Choice("tasks.fstal.support_sampling", ("2a",), "QAT episodes' support draw",
           lambda v: "with replacement, the query allowed (reference)" if v == "reference" else "without replacement, never the query"),
    Choice("tasks.fstal.meta_loss", ("2a",), "QAT meta-training loss on the query"),
    Choice("tasks.fstal.meta_optimizer", ("2a",), "QAT meta-training optimiser"),
    Choice("tasks.fstal.meta_lr", ("2a",), "QAT meta-training learning rate"),
    Choice("tasks.fstal.meta_weight_decay", ("2a",), "QAT meta-training weight decay"),
    Choice("tasks.fstal.meta_batch", ("2a",), "QAT meta-training episodes per step"),
    Choice("tasks.fstal.meta_episodes", ("2a",), "QAT meta-training episodes"),
    Choice("tasks.fstal.select_episodes", ("2a",), "QAT transformer kept at its best on validation-class episodes (0: the last state)"),
    Choice("tasks.fstal.gtad.boundary_anchors", ("2a",), "QAT stage-1 G-TAD start/end label intervals"),
    Choice("tasks.fstal.gtad.batch_size", ("2a",), "QAT stage-1 G-TAD videos per batch"),
    Choice("tasks.fstal.gtad.map_kernel", ("2a",), "QAT stage-1 G-TAD map head's 2-D kernel"),
    Choice("tasks.vlg.glove_path", ("2b", "3"), "2D-TAN word vectors",
           lambda v: f"GloVe {v}" if v else "word pieces of the text encoder"),
    Choice("tasks.vlg.glove_tokenizer", ("2b", "3"), "2D-TAN sentence split into GloVe words"),
    Choice("tasks.vlg.plateau_metric", ("2b", "3"), "2D-TAN plateau schedule stepped on"),
    Choice("tasks.vlg.lr_factor", ("2b", "3"), "2D-TAN plateau factor"),
    Choice("tasks.vlg.lr_patience", ("2b", "3"), "2D-TAN plateau patience"),
    Choice("tasks.vlg.select_metric", ("2b", "3"), "2D-TAN epoch selected on validation by"),
    Choice("tasks.vlg.tacos.val_subset", ("3",), "TACoS validation subset for schedule and selection"),
    Choice("tasks.vlg.channels_last", ("2b", "3"), "2D-TAN map convolutions in channels_last memory"),
    Choice("tasks.vlg.cpu_bf16", ("2b", "3"), "bfloat16 autocast of 2D-TAN training on CPU"),
    Choice("tasks.vlg.head_seeds", ("2b", "3"), "2D-TAN heads averaged per seed"),
)


def resolve(profile: Mapping[str, Any], key: str) -> Any:
    """The value of dotted ``key`` in a profile dict (``to_dict(Profile)``); ``tasks.*`` through the task's
    defaults, ``methods.<name>.<key>`` through the method's.

    A key the profile does not have (e.g. one a newer version added) resolves to a sentinel
    that ``departures`` skips.
    """
    parts = key.split(".")
    if parts[0] == "methods" and len(parts) == 3:  # a method's key, through the method's defaults
        from clap_bench.config import ConfigError
        from clap_bench.methods import method_from_profile

        try:
            method = method_from_profile(parts[1], profile.get("methods") or {})
        except (KeyError, ValueError, ConfigError):
            return _MISSING
        return getattr(method, parts[2], _MISSING)
    if parts[0] == "tasks" and len(parts) > 2:
        from clap_bench.config import TASK_STAGE_KEYS, ConfigError, from_dict, head_config, to_dict
        from clap_bench.downstream.base import get_task

        section = profile.get("tasks", {}).get(parts[1]) or {}
        if len(parts) == 3 and parts[2] in TASK_STAGE_KEYS:  # a key of the task stage, not of the head
            return section.get(parts[2], TASK_STAGE_KEYS[parts[2]])
        try:
            spec = get_task(parts[1])
            node: Any = to_dict(from_dict(spec.config_cls, head_config(section), f"tasks.{parts[1]}"))
        except (KeyError, ConfigError):
            return _MISSING
        parts = parts[2:]
    else:
        node = profile
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def departures(profile: Mapping[str, Any], reference: Mapping[str, Any], table: str) -> List[str]:
    """For the choices affecting ``table``: one line per key where ``profile`` differs from ``reference``."""
    lines = []
    for choice in CHOICES:
        if table not in choice.tables:
            continue
        ours, theirs = resolve(profile, choice.key), resolve(reference, choice.key)
        if ours is _MISSING or theirs is _MISSING or ours == theirs:
            continue
        lines.append(f"{choice.what}: {choice.describe(ours)} instead of {choice.describe(theirs)} ({choice.key})")
    return lines


def paper_profile_dict() -> Dict[str, Any]:
    from clap_bench.config import load_profile, to_dict

    return to_dict(load_profile("paper"))
