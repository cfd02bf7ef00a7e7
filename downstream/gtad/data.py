"""Snippet features and targets of G-TAD.

Every video's ``(T0, D)`` features (one HDF5 dataset per video id) are rescaled along time to
``temporal_scale`` snippets by linear interpolation, as G-TAD does on ActivityNet, so that
snippet ``i`` of ``T`` stands for time ``i / T`` of the video and ground-truth times are
fractions of the video's duration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from clap_bench.data.schema import AnnotationSet, Video
from clap_bench.io import FeatureFileError
from clap_bench.downstream.gtad.labels import boundary_labels, iou_map_labels, normalise_segments

log = logging.getLogger(__name__)
PathLike = Union[str, Path]


def rescale_features(features: np.ndarray, temporal_scale: int) -> torch.Tensor:
    """``(T0, D)`` -> ``(D, temporal_scale)`` float32 by linear interpolation (``align_corners=False``)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32)).t().contiguous()
    return F.interpolate(x[None], size=temporal_scale, mode="linear", align_corners=False)[0]


def read_video_features(path: PathLike, video_ids: Sequence[str], temporal_scale: int) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rescaled features ``(D, temporal_scale)`` of the ``video_ids`` present in the HDF5 file, and the ids missing from it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: feature file not found")
    found: Dict[str, torch.Tensor] = {}
    missing: List[str] = []
    dim = None
    with h5py.File(path, "r") as f:
        for vid in video_ids:
            if vid not in f:
                missing.append(vid)
                continue
            node = f[vid]
            if not isinstance(node, h5py.Dataset) or node.ndim != 2 or node.shape[0] < 1:
                raise ValueError(f"{path}: dataset {vid!r}: expected a (T, D) array with T >= 1, got {getattr(node, 'shape', type(node).__name__)}")
            if dim is None:
                dim = node.shape[1]
            elif node.shape[1] != dim:
                raise ValueError(f"{path}: dataset {vid!r}: feature dimension {node.shape[1]}, expected {dim} like the videos before it")
            found[vid] = rescale_features(node[()], temporal_scale)
    return found, missing


@dataclass
class VideoItem:
    video: Video
    features: torch.Tensor  # (D, T)


def collect_videos(
    annotations: AnnotationSet, features_path: PathLike, subset: str, temporal_scale: int, require_actions: bool
) -> List[VideoItem]:
    """Videos of ``subset`` that have features (and, if ``require_actions``, at least one action)."""
    videos = [v for v in annotations.videos.values() if v.subset == subset and (v.actions or not require_actions)]
    videos.sort(key=lambda v: v.id)
    if not videos:
        raise ValueError(f"{annotations.source}: no videos{' with actions' if require_actions else ''} in subset {subset!r}; subsets: {annotations.subsets}")
    feats, missing = read_video_features(features_path, [v.id for v in videos], temporal_scale)
    if missing:
        log.warning("%s: %d of %d %s videos have no features (e.g. %s); they are left out",
                    features_path, len(missing), len(videos), subset, ", ".join(missing[:3]))
    if not feats:
        raise FeatureFileError(f"{features_path}: none of the {len(videos)} {subset} videos of {annotations.source} has features")
    return [VideoItem(v, feats[v.id]) for v in videos if v.id in feats]


def video_targets(
    video: Video, temporal_scale: int, boundary_width: float, boundary_anchors: str = "snippet"
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt = normalise_segments([(s.start, s.end) for s in video.actions], video.duration)
    start, end = boundary_labels(gt, temporal_scale, boundary_width, boundary_anchors)
    return iou_map_labels(gt, temporal_scale), start, end


class GTADTrainSet(Dataset):
    """Items ``(features (D, T), IoU map (T, T), start labels (T,), end labels (T,))``."""

    def __init__(
        self, items: Sequence[VideoItem], temporal_scale: int, boundary_width: float = 3.0, boundary_anchors: str = "snippet"
    ):
        self.items = list(items)
        self.targets = [
            tuple(torch.from_numpy(a) for a in video_targets(it.video, temporal_scale, boundary_width, boundary_anchors))
            for it in self.items
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        iou, start, end = self.targets[i]
        return self.items[i].features, iou, start, end
