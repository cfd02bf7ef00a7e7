"""G-TAD (Xu et al., CVPR 2020) in plain PyTorch: the ``tal`` task's head and a backbone for other heads.

Reusable pieces: ``build_gtad(cfg, feat_dim)``, ``train_gtad(model, loader, cfg)``,
``predict_proposals(model, features, cfg)``, ``GTADTrainSet`` / ``collect_videos`` (features
and targets), ``soft_nms`` and the losses. Importing ``clap_bench.downstream.gtad.task``
registers the ``tal`` task.
"""

from clap_bench.downstream.gtad.config import GTADConfig
from clap_bench.downstream.gtad.data import GTADTrainSet, collect_videos, read_video_features, rescale_features
from clap_bench.downstream.gtad.model import GCNeXt, GTAD, GTADBackbone, GTADOutput, build_gtad
from clap_bench.downstream.gtad.postprocess import detections_for_video, proposals_from_outputs, soft_nms
from clap_bench.downstream.gtad.train import predict_proposals, train_gtad

__all__ = [
    "GTADConfig", "GTADTrainSet", "collect_videos", "read_video_features", "rescale_features",
    "GCNeXt", "GTAD", "GTADBackbone", "GTADOutput", "build_gtad",
    "detections_for_video", "proposals_from_outputs", "soft_nms", "predict_proposals", "train_gtad",
]
