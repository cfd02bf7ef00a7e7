"""Annotations: one internal schema and a reader per real dataset format."""

from clap_bench.data.schema import AnnotationError, AnnotationSet, Segment, Sentence, SubsetNotes, Video, VideoTally
from clap_bench.data.readers import (
    READERS,
    SUBSETS,
    FewShotSplit,
    detect_format,
    kinetics_clip_id,
    read_activitynet_json,
    read_anet_captions,
    read_charades_lengths,
    read_charades_sta,
    read_class_split,
    read_fewshot_split,
    read_kinetics_csv,
    read_tacos,
    read_tsp_csv,
    v_prefixed_ids,
)
from clap_bench.data.loading import (
    attach_captions,
    combined_counts,
    load_dataset,
    load_fewshot_split,
    merge_sets,
    read_annotation_files,
    read_annotations,
    write_activitynet_json,
)

__all__ = [
    "AnnotationError", "AnnotationSet", "Segment", "Sentence", "SubsetNotes", "Video", "VideoTally",
    "READERS", "SUBSETS", "FewShotSplit", "detect_format", "kinetics_clip_id", "v_prefixed_ids",
    "read_activitynet_json", "read_anet_captions", "read_charades_lengths", "read_charades_sta",
    "read_class_split", "read_fewshot_split", "read_kinetics_csv", "read_tacos", "read_tsp_csv",
    "attach_captions", "combined_counts", "load_dataset", "load_fewshot_split", "merge_sets", "read_annotation_files", "read_annotations",
    "write_activitynet_json",
]
