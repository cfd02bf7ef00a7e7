"""Defaults of the ``fstal`` task (few-shot temporal action localization with QAT).

The defaults follow the QAT protocol on ActivityNet v1.3 (Nag et al., 2022): the 160/20/20
class split, 5-shot episodes of one query and five support videos, temperature 20 on the
cosine logits, 100 support-adaptation steps of SGD at 0.025, a two-head query-adaptive
transformer, thresholds 0.1..0.9, 10 runs of 100 test episodes. The G-TAD backbone of stage 1
has its own section (``gtad``), the ``tal`` task's defaults. The CPU profiles shrink the
backbone, the number of episodes and the adaptation steps (``tasks.fstal`` in their YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from clap_bench.config import ConfigError
from clap_bench.downstream.gtad.config import GTADConfig
from clap_bench.downstream.qat.protocol import SUPPORT_SAMPLINGS


SNIPPET_NORMS = ("layernorm", "none")
META_LOSSES = ("balanced_bce", "foreground_ce")
META_OPTIMIZERS = ("adam", "sgd")


def _default_thresholds() -> List[float]:
    return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@dataclass
class QATConfig:
    # protocol
    base_subsets: List[str] = field(default_factory=lambda: ["training"])  # stage 1 and 2 draw base-class videos from these
    episode_subsets: List[str] = field(default_factory=lambda: ["validation"])  # test episodes: test-class videos of these
    shots: int = 5
    # Episodes (test, selection, meta-training) of videos with exactly one action only: fewshotQAT's
    # ActivityNet run (--multi_instance False, gtad_lib/dataset_fs.py _getDatasetDictEpisode).
    single_instance: bool = False
    # A base-class video enters a meta-training episode of class c only through an action of c longer
    # than this fraction of the video (fewshotQAT: 0.15, _getAnntsCwise); 0: any action.
    meta_min_action_fraction: float = 0.0
    # How an episode's support videos are drawn (protocol.py, EpisodeSampler): "distinct" (without
    # replacement, never the query; a class needs shots + 1 videos) or "reference" (fewshotQAT's
    # load_episodic_data in gtad_lib/dataset_fs.py: each support drawn independently from the
    # class's videos, so a video can recur and the query can be one of them; a class needs 1 video).
    support_sampling: str = "distinct"
    runs: int = 10
    episodes_per_run: int = 100
    # stage 1: the G-TAD backbone trained on base-class videos
    gtad: GTADConfig = field(default_factory=GTADConfig)
    # prototype classifier and its adaptation on the support set
    temperature: float = 20.0  # logits = temperature * cos(prototype, snippet) - bias
    # The snippet features the cosine compares: "layernorm" (centred and scaled over channels, the
    # space of the transformer's final LayerNorm) or "none" (the GCNeXt output as it is, as
    # fewshotQAT's test episodes read it: norm_feat = False in gtad_inference_fs_inductive.py).
    snippet_norm: str = "layernorm"
    adapt_steps: int = 100
    adapt_lr: float = 0.025
    # query-adaptive transformer and stage 2 (meta-training on base-class episodes)
    heads: int = 2
    dropout: float = 0.5  # on the attention output, before the residual
    attention_dropout: float = 0.1
    meta_episodes: int = 2000
    meta_batch: int = 8  # episodes per optimiser step
    # "adam" or "sgd" (plain, no momentum: fewshotQAT's TransformerRePRI, torch.optim.SGD at 0.025);
    # either with meta_weight_decay
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4
    # The query's loss meta-training minimises: "balanced_bce" (class-balanced binary cross-entropy
    # over all of its snippets, as the support adaptation) or "foreground_ce" (fewshotQAT's get_ce
    # with valid_pixels_q = (gt != 0): -log(p + 1e-10) averaged over its foreground snippets only).
    meta_loss: str = "balanced_bce"
    # model selection on episodes of the validation classes (the split's val classes exist for
    # this): the transformer is scored (average mAP) before meta-training and every
    # ``select_every`` steps, and the best state is kept; 0 episodes turns selection off
    select_episodes: int = 100
    select_every: int = 25
    # localisation from the foreground probability
    thresholds: List[float] = field(default_factory=_default_thresholds)
    max_gap: float = 0.05  # background gaps up to this fraction of the video inside a run are filled
    min_length: float = 0.0  # proposals shorter than this fraction of the video are dropped
    soft_nms_sigma: float = 0.8
    proposals_per_video: int = 100

    def validate(self, where: str = "tasks.fstal") -> None:
        """Reject settings the protocol cannot run with, naming the key."""
        problems = []
        for key in ("shots", "runs", "episodes_per_run", "heads", "meta_batch", "proposals_per_video"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: expected >= 1, got {getattr(self, key)}")
        if self.select_every < 1:
            problems.append(f"select_every: expected >= 1, got {self.select_every}")
        for key in ("adapt_steps", "meta_episodes", "select_episodes"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: expected >= 0, got {getattr(self, key)}")
        if self.gtad.hidden_dim_1d % max(self.heads, 1):
            problems.append(f"heads: the snippet feature size gtad.hidden_dim_1d={self.gtad.hidden_dim_1d} is not divisible by {self.heads} heads")
        if not self.thresholds or any(not 0.0 < t < 1.0 for t in self.thresholds):
            problems.append(f"thresholds: expected a non-empty list of values in (0, 1), got {self.thresholds}")
        if not 0.0 <= self.max_gap < 1.0:
            problems.append(f"max_gap: expected a fraction of the video in [0, 1), got {self.max_gap}")
        if not 0.0 <= self.min_length < 1.0:
            problems.append(f"min_length: expected a fraction of the video in [0, 1), got {self.min_length}")
        if not 0.0 <= self.meta_min_action_fraction < 1.0:
            problems.append(f"meta_min_action_fraction: expected a fraction of the video in [0, 1), got {self.meta_min_action_fraction}")
        if self.snippet_norm not in SNIPPET_NORMS:
            problems.append(f"snippet_norm: expected one of {', '.join(SNIPPET_NORMS)}, got {self.snippet_norm!r}")
        for key, allowed in (("support_sampling", SUPPORT_SAMPLINGS), ("meta_loss", META_LOSSES),
                             ("meta_optimizer", META_OPTIMIZERS)):
            if getattr(self, key) not in allowed:
                problems.append(f"{key}: expected one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.meta_weight_decay < 0:
            problems.append(f"meta_weight_decay: expected >= 0, got {self.meta_weight_decay}")
        if not self.base_subsets:
            problems.append("base_subsets: expected at least one subset")
        if not self.episode_subsets:
            problems.append("episode_subsets: expected at least one subset")
        for key in ("temperature", "soft_nms_sigma", "adapt_lr", "meta_lr"):
            if getattr(self, key) <= 0:
                problems.append(f"{key}: expected > 0, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attention_dropout < 1.0:
            problems.append(f"dropout/attention_dropout: expected values in [0, 1), got {self.dropout}/{self.attention_dropout}")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        self.gtad.validate(f"{where}.gtad")
