"""Clips: contiguous fg/bg segments, clip times, PyAV decoding, transforms, prompts/captions, datasets."""

from clap_bench.clips.datasets import (
    BACKGROUND_LABEL,
    SegmentClipDataset,
    TrimmedClipDataset,
    VideoClipDataset,
    collate_segments,
    item_generators,
    resolve_video_path,
    seed_worker,
)
from clap_bench.clips.decode import (
    VideoDecodeError,
    VideoInfo,
    clip_frame_times,
    decode_clips,
    decode_frames_at,
    iter_video_clips,
    probe_video,
)
from clap_bench.clips.language import (
    TextPolicy,
    assign_caption,
    background_prompt,
    clip_prompt,
    foreground_prompt,
    nearest_action,
)
from clap_bench.clips.sampling import clip_seconds, extraction_clip_starts, frame_grid_duration, sample_clip_starts, start_range
from clap_bench.clips.segments import background_gaps, contiguous_segments
from clap_bench.clips.transforms import KINETICS_MEAN, KINETICS_STD, ClipTransform, transform_clips

__all__ = [
    "BACKGROUND_LABEL",
    "ClipTransform",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "SegmentClipDataset",
    "TextPolicy",
    "TrimmedClipDataset",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoInfo",
    "assign_caption",
    "background_gaps",
    "background_prompt",
    "clip_frame_times",
    "clip_prompt",
    "clip_seconds",
    "collate_segments",
    "contiguous_segments",
    "decode_clips",
    "decode_frames_at",
    "extraction_clip_starts",
    "frame_grid_duration",
    "foreground_prompt",
    "item_generators",
    "iter_video_clips",
    "nearest_action",
    "probe_video",
    "resolve_video_path",
    "sample_clip_starts",
    "seed_worker",
    "start_range",
    "transform_clips",
]
