"""QAT (Nag et al., 2022): few-shot temporal action localization on a G-TAD backbone, the ``fstal`` task.

Reusable pieces: ``assert_no_leakage(annotations_used, split)`` (called by every stage that
trains, pre-training included), ``EpisodeSampler``, the prototype model
(``masked_prototype``, ``adapt_on_support``, ``QueryAdaptiveTransformer``) and the
threshold localisation (``threshold_proposals``, ``localise``). Importing
``clap_bench.downstream.qat.task`` registers the ``fstal`` task.
"""

from clap_bench.downstream.qat.config import QATConfig
from clap_bench.downstream.qat.localize import fill_gaps, foreground_mask, localise, runs, threshold_proposals
from clap_bench.downstream.qat.model import (
    QueryAdaptiveTransformer,
    adapt_on_support,
    cosine_logits,
    foreground_ce_loss,
    foreground_loss,
    foreground_probability,
    masked_prototype,
    support_prototype,
)
from clap_bench.downstream.qat.protocol import (
    Episode,
    EpisodeSampler,
    LeakageError,
    assert_no_leakage,
    base_class_videos,
    videos_by_class,
)

__all__ = [
    "QATConfig", "fill_gaps", "foreground_mask", "localise", "runs", "threshold_proposals",
    "QueryAdaptiveTransformer", "adapt_on_support", "cosine_logits", "foreground_ce_loss", "foreground_loss", "foreground_probability",
    "masked_prototype", "support_prototype",
    "Episode", "EpisodeSampler", "LeakageError", "assert_no_leakage", "base_class_videos", "videos_by_class",
]
