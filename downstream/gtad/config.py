"""Defaults of the ``tal`` task's G-TAD head; a profile's ``tasks.tal`` section overrides them.

The defaults are those of G-TAD on ActivityNet v1.3 (temporal scale 100, hidden sizes
256/128/512, cardinality 32 with width 4, 32 + 4 aligned samples, Adam 4e-3, weight decay
1e-4, 10 epochs with the rate divided by 10 after 5, Gaussian soft-NMS, top 100 proposals,
top 2 video classes). The CPU profiles shrink the temporal scale, the widths and the epochs.
Three defaults are not G-TAD's and keep what the README's figures were measured with:
``boundary_anchors``, ``proposal_score`` and ``proposal_candidates`` (the ``paper`` profile sets
G-TAD's values; FIDELITY.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from clap_bench.config import ConfigError
from clap_bench.downstream.gtad.labels import BOUNDARY_ANCHORS
from clap_bench.downstream.gtad.postprocess import PROPOSAL_CANDIDATES, PROPOSAL_SCORES
from clap_bench.downstream.video_classifier import VideoClassifierConfig


@dataclass
class GTADConfig:
    head: str = "gtad"  # the only head of the tal task
    train_subset: str = "training"
    eval_subset: str = "validation"
    # input
    temporal_scale: int = 100  # snippets after linear rescaling; the map is temporal_scale x temporal_scale
    # backbone (GCNeXt) and heads
    hidden_dim_1d: int = 256
    hidden_dim_2d: int = 128
    hidden_dim_3d: int = 512
    input_groups: int = 4  # groups of the first temporal convolution
    cardinality: int = 32  # groups of the GCNeXt branches
    group_width: int = 4  # channels per group (branch width = cardinality * group_width)
    knn_k: int = 3
    # SGAlign
    align_samples: int = 32
    context_samples: int = 4
    anchor_expand: float = 0.5  # anchors widened by this fraction of their length on each side
    map_kernel: int = 3
    # labels and losses
    boundary_width: float = 3.0  # start/end regions, in snippets (centred on the boundary)
    # Interval of snippet i for the start/end labels: "snippet" [(i-0.5)/T, (i+0.5)/T]; "bmn"
    # [(i-0.5)/T, (i+1.5)/T], as BMN's and G-TAD's ActivityNet code build it (labels.py).
    boundary_anchors: str = "snippet"
    reg_weight: float = 10.0
    # optimisation
    batch_size: int = 16
    epochs: int = 10
    lr: float = 4e-3
    weight_decay: float = 1e-4
    lr_step_epochs: int = 5
    lr_gamma: float = 0.1
    # inference
    # Proposal score: "map" (reg * cls, G-TAD's released code) or "boundaries_and_map"
    # (start * end * reg * cls, BMN); candidates: "all" anchors or "boundary_peaks" (G-TAD's
    # ActivityNet inference, BMN). See postprocess.py.
    proposal_score: str = "boundaries_and_map"
    proposal_candidates: str = "all"
    soft_nms_sigma: float = 0.8  # score * exp(-IoU^2 / sigma)
    soft_nms_iou_threshold: float = 0.0  # decay only proposals overlapping the kept one by more than this
    proposals_per_video: int = 100
    classes_per_video: int = 2
    # Video-level class scores of an external classifier in the CUHK layout G-TAD reads
    # (cuhk_val_simp_share.json, see downstream/gtad/video_scores.py); None: the built-in classifier.
    video_scores: Optional[str] = None
    classifier: VideoClassifierConfig = field(default_factory=VideoClassifierConfig)

    def validate(self, where: str = "tasks.tal") -> None:
        """Reject settings the model cannot be built with, naming the key."""
        problems = []
        if self.head != "gtad":
            problems.append(f"head: unknown head {self.head!r}; the tal task has one head, 'gtad'")
        if self.temporal_scale < 4:
            problems.append(f"temporal_scale: expected >= 4, got {self.temporal_scale}")
        if self.hidden_dim_1d % self.input_groups:
            problems.append(f"hidden_dim_1d: {self.hidden_dim_1d} is not divisible by input_groups={self.input_groups}")
        if not 1 <= self.knn_k <= self.temporal_scale:
            problems.append(f"knn_k: expected 1..temporal_scale, got {self.knn_k}")
        for key in ("batch_size", "epochs", "lr_step_epochs", "proposals_per_video", "classes_per_video",
                    "cardinality", "group_width", "align_samples"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: expected >= 1, got {getattr(self, key)}")
        for key, allowed in (("boundary_anchors", BOUNDARY_ANCHORS), ("proposal_score", PROPOSAL_SCORES),
                             ("proposal_candidates", PROPOSAL_CANDIDATES)):
            if getattr(self, key) not in allowed:
                problems.append(f"{key}: expected one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.soft_nms_sigma <= 0:
            problems.append(f"soft_nms_sigma: expected > 0, got {self.soft_nms_sigma}")
        if self.map_kernel < 1 or self.map_kernel % 2 == 0:  # padding k // 2 keeps the map's size only for odd k
            problems.append(f"map_kernel: expected an odd kernel size >= 1, got {self.map_kernel}")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
