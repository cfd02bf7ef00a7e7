"""Feature extraction and the HDF5 feature files (TSP's layout: video id -> (T, D) float32)."""

from clap_bench.features.extract import (
    FEATURES_FORMAT,
    FeatureFile,
    VideoSource,
    dataset_videos,
    encode_videos,
    extract_features,
    merge_feature_shards,
    read_features,
    shard_path,
    write_features,
)

__all__ = [
    "FEATURES_FORMAT",
    "FeatureFile",
    "VideoSource",
    "dataset_videos",
    "encode_videos",
    "extract_features",
    "merge_feature_shards",
    "read_features",
    "shard_path",
    "write_features",
]
