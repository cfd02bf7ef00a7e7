"""The clip pipeline: segments, clip times, decoding by timestamp, transforms, text, datasets.

The fixture videos are tiny H.264 files whose frames carry their own index: the width is cut
into 8 vertical bars, bar b is white when bit b of the frame index is set. The bars survive
compression and resizing, so a test can read which source frame a decoded frame came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clap_bench.clips import (
    KINETICS_MEAN,
    KINETICS_STD,
    SegmentClipDataset,
    TextPolicy,
    TrimmedClipDataset,
    VideoClipDataset,
    VideoDecodeError,
    assign_caption,
    background_gaps,
    clip_frame_times,
    collate_segments,
    contiguous_segments,
    decode_clips,
    decode_frames_at,
    extraction_clip_starts,
    iter_video_clips,
    nearest_action,
    probe_video,
    sample_clip_starts,
    seed_worker,
    transform_clips,
)
from clap_bench.clips.transforms import crop_offsets
from clap_bench.config import ClipConfig
from clap_bench.data.schema import AnnotationSet, Segment, Sentence, Video

HEIGHT, WIDTH = 48, 64


def _index_image(i: int) -> np.ndarray:
    """Frame ``i`` drawn as its index in 8 black/white bars (bit b of i -> bar b)."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    bar = WIDTH // 8
    for b in range(8):
        if (i >> b) & 1:
            img[:, b * bar : (b + 1) * bar] = 255
    return img


def _mux(container, stream, frames) -> None:
    """Encode ``frames`` (av.VideoFrame), flush the encoder, close the file."""
    for frame in frames:
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def write_indexed_video(path: Path, num_frames: int, fps: int, faststart: bool = False, gop: int = 24) -> Path:
    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"g": str(gop)}  # several GOPs, with B-frames (x264's default)
    _mux(container, stream, (av.VideoFrame.from_ndarray(_index_image(i), format="rgb24") for i in range(num_frames)))
    return path


def write_indexed_vfr_video(path: Path, gaps: np.ndarray, gop: int = 12) -> np.ndarray:
    """A variable-frame-rate file: frame i shown ``gaps[i]`` ticks of 1/15 s after frame i-1, with
    B-frames (x264, 3) and several GOPs; returns the frames' times (s)."""
    from fractions import Fraction

    tick = Fraction(1, 15)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=15)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.codec_context.time_base = tick
    stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": "3", "sc_threshold": "0", "crf": "4"}
    ticks = np.concatenate([[0], np.cumsum(gaps[1:])]).astype(int)

    def frames():
        for i, pts in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(_index_image(i), format="rgb24")
            frame.pts, frame.time_base = int(pts), tick
            yield frame

    _mux(container, stream, frames())
    return ticks / 15.0


def frame_index(image: np.ndarray) -> int:
    """Read the index back from an RGB frame (any size)."""
    width = image.shape[1]
    centres = [int((b + 0.5) * width / 8) for b in range(8)]
    return sum(1 << b for b, x in enumerate(centres) if image[:, x].mean() > 128)


def indices(frames: np.ndarray) -> np.ndarray:
    flat = frames.reshape((-1,) + frames.shape[-3:])
    return np.array([frame_index(f) for f in flat]).reshape(frames.shape[:-3])


def expected_indices(times: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """Nearest source frame of each time (ties to the earlier frame), clamped to the video."""
    return np.clip(np.ceil(np.asarray(times) * fps - 0.5 - 1e-9), 0, num_frames - 1).astype(int)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clip_videos")
    paths = {
        "v30": write_indexed_video(root / "v_thirty.mp4", 120, 30),  # 4 s
        "v12": write_indexed_video(root / "v_twelve.mp4", 72, 12),  # 6 s
    }
    good = paths["v30"].read_bytes()
    (root / "v_empty.mp4").write_bytes(b"")
    (root / "v_garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "v_truncated.mp4").write_bytes(good[: len(good) // 2])
    paths["root"] = root
    return paths


def annotation_set(videos_by_id: dict) -> AnnotationSet:
    vids = {v.id: v for v in videos_by_id}
    classes = sorted({s.label for v in vids.values() for s in v.actions})
    return AnnotationSet("activitynet-json", "test", vids, classes)


CLIP = ClipConfig(frames=4, fps=4.0, resize=[24, 32], crop=16, clips_per_segment=5)


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name,fps,count", [("v30", 30, 120), ("v12", 12, 72)])
def test_clip_frames_are_the_nearest_source_frames_at_any_frame_rate(videos, name, fps, count):
    starts = np.array([0.0, 0.37, 1.51, 2.2])
    frames = decode_clips(videos[name], starts, frames=8, fps=7.5)
    assert frames.shape == (4, 8, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    times = clip_frame_times(starts, 8, 7.5)
    np.testing.assert_array_equal(indices(frames), expected_indices(times, fps, count))


@pytest.mark.parametrize("name,fps,count", [("v30", 30, 120), ("v12", 12, 72)])
def test_sparse_times_across_keyframes_take_the_nearest_frames(videos, name, fps, count):
    rng = np.random.default_rng(5)
    for _ in range(6):
        times = rng.uniform(-0.2, count / fps + 0.2, size=int(rng.integers(1, 12)))
        np.testing.assert_array_equal(indices(decode_frames_at(videos[name], times)), expected_indices(times, fps, count))


def test_variable_frame_rate_times_take_the_nearest_frame_even_far_from_the_nominal_rate(tmp_path):
    gaps = np.random.default_rng(3).integers(1, 7, size=90)  # 1 to 6 ticks of 1/15 s between frames
    frame_times = write_indexed_vfr_video(tmp_path / "v_vfr.mp4", gaps)
    # 45% of the way to the next frame: the nearest is the earlier frame, often more than 0.75
    # nominal frame durations away and often a B-frame
    times = frame_times[:-1] + 0.45 * np.diff(frame_times)
    want = np.arange(len(times))
    np.testing.assert_array_equal(indices(decode_frames_at(tmp_path / "v_vfr.mp4", times)), want)
    for t, i in zip(times[::7], want[::7]):  # one time per call: its own seek and GOP
        assert frame_index(decode_frames_at(tmp_path / "v_vfr.mp4", [t])[0]) == i
    starts = np.arange(0.013, frame_times[-1] - 1.0, 0.8)  # no time halfway between two frames
    clips = np.concatenate([c for _, c in iter_video_clips(tmp_path / "v_vfr.mp4", starts, 8, 7.5, chunk=2)])
    times = clip_frame_times(starts, 8, 7.5)
    nearest = np.searchsorted((frame_times[1:] + frame_times[:-1]) / 2, times, side="left")
    np.testing.assert_array_equal(indices(clips), nearest)


def test_decode_resizes_while_decoding_and_keeps_timing(videos):
    times = np.array([[0.5, 1.0], [3.0, 0.1]])
    frames = decode_frames_at(videos["v12"], times, size=(24, 32))
    assert frames.shape == (2, 2, 24, 32, 3)
    np.testing.assert_array_equal(indices(frames), expected_indices(times, 12, 72))


def write_textured_video(path: Path, num_frames: int = 12, fps: int = 12, size=(72, 96)) -> Path:
    rng = np.random.default_rng(0)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    y, x = np.mgrid[0 : size[0], 0 : size[1]]

    def frames():
        for i in range(num_frames):
            img = 127 + 60 * np.sin(x / 1.7 + i) + 40 * np.cos(y / 1.3) + rng.normal(0, 20, size)
            img = np.clip(img[..., None] + np.array([0, 20, -20]), 0, 255).astype(np.uint8)
            yield av.VideoFrame.from_ndarray(img, format="rgb24")

    _mux(container, stream, frames())
    return path


def test_bilinear_resize_filter_is_tsps_interpolation_of_the_full_size_frame(tmp_path):
    path = write_textured_video(tmp_path / "v_texture.mp4")
    times = np.array([0.0, 0.26, 0.71])
    full = decode_frames_at(path, times)  # (3, 72, 96, 3): no scaling
    x = torch.from_numpy(full).permute(0, 3, 1, 2).float()
    tsp = torch.nn.functional.interpolate(x, size=(40, 53), mode="bilinear", align_corners=False, antialias=False)
    want = tsp.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = decode_frames_at(path, times, size=(40, 53), resize_filter="bilinear")
    np.testing.assert_array_equal(got, want)
    clips = decode_clips(path, [0.1], 3, 6.0, size=(40, 53), resize_filter="bilinear")
    one_pass = next(iter_video_clips(path, [0.1], 3, 6.0, size=(40, 53), resize_filter="bilinear"))[1]
    np.testing.assert_array_equal(clips, one_pass)
    swscale = decode_frames_at(path, times, size=(40, 53))  # the default: swscale's (area-like) filter
    assert np.abs(swscale.astype(float) - want).mean() > 2
    with pytest.raises(ValueError, match="resize_filter"):
        decode_frames_at(path, times, size=(40, 53), resize_filter="area")


def test_times_past_the_end_or_before_the_start_are_clamped(videos):
    frames = decode_clips(videos["v30"], [-0.5, 3.9], frames=4, fps=5.0)  # times -0.5..0.1 s, 3.9..4.5 s
    np.testing.assert_array_equal(indices(frames[0]), [0, 0, 0, 3])
    np.testing.assert_array_equal(indices(frames[1]), [117, 119, 119, 119])


def test_one_pass_extraction_equals_per_clip_decoding_frame_for_frame(videos):
    for name in ("v30", "v12"):
        info = probe_video(videos[name])
        starts = extraction_clip_starts(info.duration, 8 / 7.5, 4 / 7.5)
        chunks = list(iter_video_clips(videos[name], starts, 8, 7.5, size=(24, 32), chunk=3))
        assert [first for first, _ in chunks] == list(range(0, len(starts), 3))
        one_pass = np.concatenate([c for _, c in chunks])
        per_clip = np.stack([decode_clips(videos[name], [s], 8, 7.5, size=(24, 32))[0] for s in starts])
        np.testing.assert_array_equal(one_pass, per_clip)


def test_probe_reports_duration_and_rate(videos):
    info = probe_video(videos["v12"])
    assert info.fps == pytest.approx(12.0) and info.duration == pytest.approx(6.0, abs=0.1)
    assert (info.height, info.width) == (HEIGHT, WIDTH)


def write_single_frame_video_without_rate(path: Path) -> Path:
    """One H.264 frame in an mp4 that declares no frame rate. (With two frames or more FFmpeg
    guesses a rate from their timestamps, so a file of several frames always declares one.)"""
    from fractions import Fraction

    tick = Fraction(1, 1000)
    container = av.open(str(path), "w", options={"use_editlist": "0"})  # else the frame's zero-length edit hides it
    stream = container.add_stream("libx264")
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.codec_context.time_base = tick
    stream.codec_context.framerate = Fraction(0, 1)
    frame = av.VideoFrame.from_ndarray(_index_image(5), format="rgb24")
    frame.pts, frame.time_base = 0, tick
    _mux(container, stream, [frame])
    return path


def test_probe_of_a_stream_without_a_frame_rate_names_the_file_instead_of_assuming_one(tmp_path):
    path = write_single_frame_video_without_rate(tmp_path / "v_no_rate.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert not (stream.guessed_rate or stream.average_rate or stream.base_rate)  # what the test is about
    np.testing.assert_array_equal(indices(decode_frames_at(path, [0.0, 2.0])), [5, 5])  # decoding needs no rate
    with pytest.raises(VideoDecodeError) as info:
        probe_video(path)
    assert info.value.path == str(path) and "declares no frame rate" in info.value.reason


@pytest.mark.parametrize("name", ["v12", "vfr"])
def test_probe_of_a_stream_without_a_frame_rate_derives_it_from_the_frame_timestamps(videos, tmp_path, monkeypatch, name):
    # No file of several frames declares no rate (FFmpeg guesses one), so the declared rate is hidden.
    from clap_bench.clips import decode

    if name == "vfr":
        frame_times = write_indexed_vfr_video(tmp_path / "v_vfr.mp4", np.random.default_rng(4).integers(1, 7, size=40))
        path, want = tmp_path / "v_vfr.mp4", (len(frame_times) - 1) / frame_times[-1]
    else:
        path, want = videos["v12"], 12.0
    declared = probe_video(path)
    monkeypatch.setattr(decode, "_declared_rate", lambda stream: 0.0)
    derived = probe_video(path)
    assert derived.fps == pytest.approx(want, rel=1e-9)
    assert (derived.duration, derived.num_frames, derived.width) == (declared.duration, declared.num_frames, declared.width)


@pytest.mark.parametrize(
    "file,reason",
    [("v_missing.mp4", "not found"), ("v_empty.mp4", "empty"), ("v_garbage.mp4", "not a readable"), ("v_truncated.mp4", "not a readable")],
)
def test_unreadable_files_raise_a_decode_error_naming_file_and_reason(videos, file, reason):
    with pytest.raises(VideoDecodeError) as info:
        decode_clips(videos["root"] / file, [0.0], 4, 4.0)
    assert info.value.path.endswith(file) and reason in info.value.reason


def test_truncated_faststart_file_raises_a_decode_error(videos, tmp_path):
    full = write_indexed_video(tmp_path / "fs.mp4", 120, 30, faststart=True).read_bytes()
    cut = tmp_path / "fs_cut.mp4"
    cut.write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(VideoDecodeError):
        decode_clips(cut, [0.0, 3.5], 4, 4.0)


# --------------------------------------------------------------------------- sampling
def test_training_starts_are_random_inside_the_segment_and_eval_starts_evenly_spaced():
    rng = np.random.default_rng(0)
    a = sample_clip_starts(10.0, 20.0, 1.0, 5, train=True, rng=rng, video_duration=30.0)
    b = sample_clip_starts(10.0, 20.0, 1.0, 5, train=True, rng=rng, video_duration=30.0)
    assert len(a) == 5 and np.all((a >= 10.0) & (a <= 19.0)) and not np.allclose(a, b)
    np.testing.assert_allclose(sample_clip_starts(10.0, 20.0, 1.0, 5, train=False), [10, 12.25, 14.5, 16.75, 19])
    # one evenly spaced clip is the centred one (starts 10..19: 14.5), not the first
    np.testing.assert_allclose(sample_clip_starts(10.0, 20.0, 1.0, 1, train=False), [14.5])
    with pytest.raises(ValueError, match="rng"):
        sample_clip_starts(10.0, 20.0, 1.0, 5, train=True)


def test_short_segments_and_clips_past_the_end_are_clamped():
    # shorter than a clip: clip centred on the segment
    np.testing.assert_allclose(sample_clip_starts(5.0, 5.4, 1.0, 3, video_duration=10.0), [4.7] * 3)
    # near the start: pushed to 0; near the end: ends with the video
    np.testing.assert_allclose(sample_clip_starts(0.0, 0.2, 1.0, 2, video_duration=10.0), [0.0, 0.0])
    np.testing.assert_allclose(sample_clip_starts(9.8, 10.5, 1.0, 2, video_duration=10.0), [9.0, 9.0])
    rng = np.random.default_rng(1)
    assert np.all(sample_clip_starts(9.5, 10.0, 1.0, 5, train=True, rng=rng, video_duration=10.0) <= 9.0)
    # a video shorter than a clip: clips start at 0
    np.testing.assert_allclose(sample_clip_starts(0.0, 0.5, 1.0, 2, video_duration=0.5), [0.0, 0.0])


def test_extraction_starts_cover_the_video_at_the_stride():
    np.testing.assert_allclose(extraction_clip_starts(4.0, 1.0, 1.0), [0, 1, 2, 3])
    np.testing.assert_allclose(extraction_clip_starts(4.5, 1.0, 0.5), np.arange(8) * 0.5)
    np.testing.assert_allclose(extraction_clip_starts(0.3, 1.0, 1.0), [0.0])


# --------------------------------------------------------------------------- segments
def test_background_is_derived_from_the_gaps_between_actions():
    video = Video("v", 20.0, "training", segments=[Segment(2, 5, "a"), Segment(4, 8, "b"), Segment(12, 25, "a")])
    segs = contiguous_segments(video)
    assert [(s.start, s.end, s.label) for s in segs] == [
        (0, 2, None), (2, 5, "a"), (4, 8, "b"), (8, 12, None), (12, 20, "a"),
    ]
    assert background_gaps([Segment(0, 20, "a")], 20.0) == []


def test_given_background_is_used_clamped_and_short_background_dropped():
    video = Video("v", 10.0, "training", segments=[Segment(-1, 3, None), Segment(3, 9.9, "a"), Segment(9.9, 12, None)])
    listed = contiguous_segments(video, lists_background=True)
    assert [(s.start, s.end, s.label) for s in listed] == [(0, 3, None), (3, 9.9, "a"), (9.9, 10, None)]
    assert [s.label for s in contiguous_segments(video, min_length=0.5, lists_background=True)] == [None, "a"]
    with pytest.raises(ValueError, match="video v has background segments"):
        contiguous_segments(video)  # a source read as listing no background cannot have some


def test_a_format_that_lists_background_never_falls_back_to_the_gaps(tmp_path):
    # TSP's csv leaves short background out: a video without background rows has no background.
    csv = tmp_path / "anet_train_tsp.csv"
    csv.write_text(
        "video-name,t-start,t-end,action-label,video-duration,filename,fps,video-frames,temporal-region-label\n"
        "a,0.0,6.0,,10.0,v_a.mp4,30,300,No action\n"
        "a,6.0,10.0,run,10.0,v_a.mp4,30,300,Action\n"
        "b,2.0,7.0,jump,10.0,v_b.mp4,30,300,Action\n"
    )
    from clap_bench.data import read_tsp_csv

    ann = read_tsp_csv(csv)
    assert ann.lists_background and ann.subset("training").lists_background
    segments = {vid: [(s.start, s.end, s.label) for s in contiguous_segments(v, lists_background=ann.lists_background)]
                for vid, v in ann.videos.items()}
    assert segments == {"v_a": [(0.0, 6.0, None), (6.0, 10.0, "run")], "v_b": [(2.0, 7.0, "jump")]}
    # A format without background rows keeps the gap rule.
    gaps = contiguous_segments(Video("v_b", 10.0, "training", segments=[Segment(2.0, 7.0, "jump")]))
    assert [(s.start, s.end, s.label) for s in gaps] == [(0.0, 2.0, None), (2.0, 7.0, "jump"), (7.0, 10.0, None)]


# --------------------------------------------------------------------------- language
def test_a_clip_takes_the_overlapping_caption_it_overlaps_most_else_none():
    sentences = [Sentence(0, 2, "early"), Sentence(1.5, 6, "long"), Sentence(7, 9, "late")]
    assert assign_caption(1.0, 2.0, sentences).text == "early"  # overlap 1.0 vs 0.5
    assert assign_caption(1.8, 2.8, sentences).text == "long"
    assert assign_caption(6.0, 7.0, sentences) is None  # touches both, overlaps neither
    tie = [Sentence(0, 10, "wide"), Sentence(3, 6, "centred")]
    assert assign_caption(4.0, 5.0, tie).text == "centred"  # equal overlap: nearest centre


def test_background_prompt_names_the_nearest_action():
    actions = [Segment(2, 4, "run"), Segment(10, 12, "swim")]
    assert nearest_action(actions, 5.0, 6.0) == "run"
    assert nearest_action(actions, 8.5, 9.5) == "swim"
    assert nearest_action([], 1.0, 2.0) is None


def test_text_policy_prompts_captions_and_background_prompts_only():
    rng = np.random.default_rng(0)
    prompts_only = TextPolicy(use_captions=False)
    assert prompts_only.choose_text("foreground of run", "a man runs", True, rng) == "foreground of run"
    dagger = TextPolicy(use_captions=True, caption_prob=1.0, background_prompts_only=True)
    assert dagger.choose_text("background of run", "a man waits", False, rng) == "background of run"
    assert dagger.choose_text("foreground of run", " a man runs", True, rng) == "a man runs"
    always = TextPolicy(use_captions=True, caption_prob=1.0)
    assert always.choose_text("background of run", "a man waits", False, rng) == "a man waits"
    assert always.choose_text("background of run", None, False, rng) == "background of run"


def test_caption_probability_is_honoured():
    policy = TextPolicy(use_captions=True, caption_prob=0.3)
    rng = np.random.default_rng(123)
    picks = [policy.choose_text("p", "c", True, rng) == "c" for _ in range(4000)]
    assert abs(np.mean(picks) - 0.3) < 0.03
    with pytest.raises(ValueError):
        TextPolicy(caption_prob=1.5)


# --------------------------------------------------------------------------- transforms
def test_transform_shapes_centre_crop_and_kinetics_normalisation():
    clips = np.zeros((2, 3, 8, 10, 3), np.uint8)
    clips[..., 0] = 255
    clips[:, :, 3, 4, 1] = 200  # the pixel at the centre crop's top-left corner
    out = transform_clips(clips, crop=4, train=False)
    assert out.shape == (2, 3, 3, 4, 4) and out.dtype == torch.float32 and out.is_contiguous()
    assert out[0, 0, 0, 0, 0].item() == pytest.approx((1.0 - KINETICS_MEAN[0]) / KINETICS_STD[0], rel=1e-5)
    assert out[0, 2, 0, 0, 0].item() == pytest.approx(-KINETICS_MEAN[2] / KINETICS_STD[2], rel=1e-5)
    assert out[0, 1, 1, 1, 1].item() == pytest.approx(((200 / 255) - KINETICS_MEAN[1]) / KINETICS_STD[1], rel=1e-5)


@pytest.mark.parametrize("height,width,crop", [(128, 171, 112), (64, 86, 56), (32, 43, 28), (10, 13, 8), (9, 11, 4), (8, 8, 8)])
def test_eval_centre_crop_is_placed_as_tsp_and_torchvision_place_it(height, width, crop):
    """TSP's center_crop and torchvision's round an odd margin's half (half to even): 128x171 -> 112
    starts at column 30, not 29."""
    from torchvision.transforms.functional import center_crop

    frames = torch.arange(height * width, dtype=torch.int64).reshape(height, width)
    want = center_crop(frames[None], [crop, crop])[0]
    top, left, flip = crop_offsets(height, width, crop, train=False, generator=None)
    assert not flip and torch.equal(frames[top:top + crop, left:left + crop], want)
    clip = (frames % 251).to(torch.uint8)[None, :, :, None].expand(1, height, width, 3).numpy()  # (T, H, W, 3)
    out = transform_clips(clip, crop, train=False, mean=(0.0,) * 3, std=(1.0 / 255,) * 3)
    assert torch.equal(out[0, 0].round().long(), want % 251)  # (3, T, crop, crop): channel 0, frame 0


def test_training_crops_vary_flip_mirrors_and_frames_share_a_window():
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, None, :, None] * 8, (4, 24, 1, 3))  # (T, H, W, 3)
    clips = np.stack([ramp] * 40)
    out = transform_clips(clips, crop=16, train=True, generator=torch.Generator().manual_seed(0))
    row = out[:, 0, :, 0, :]  # (K, T, W): first channel, first row
    assert torch.all(row == row[:, :1])  # every frame of a clip cut the same window
    first = row[:, 0, :]
    increasing = (first[:, 1:] > first[:, :-1]).all(1)
    decreasing = (first[:, 1:] < first[:, :-1]).all(1)
    assert bool((increasing | decreasing).all()) and increasing.any() and decreasing.any()
    assert len({round(v, 4) for v in first[:, 0].tolist()}) > 3  # left edges differ


# --------------------------------------------------------------------------- datasets
def _segment_annotations(videos: dict) -> AnnotationSet:
    return annotation_set([
        Video("v_thirty", 4.0, "training", filename="v_thirty.mp4",
              segments=[Segment(1.0, 2.5, "jump")],
              sentences=[Sentence(0.8, 2.6, "a person jumps over a bar")]),
        Video("v_twelve", 6.0, "training", filename="v_twelve.mp4",
              segments=[Segment(0.0, 1.0, "swim"), Segment(4.0, 4.3, "jump")]),
    ])


def test_segment_dataset_takes_background_as_the_format_lists_it(videos):
    ann = annotation_set([
        Video("v_thirty", 4.0, "training", filename="v_thirty.mp4", segments=[Segment(1.0, 2.5, "jump"), Segment(2.5, 4.0, None)]),
        Video("v_twelve", 6.0, "training", filename="v_twelve.mp4", segments=[Segment(0.0, 1.0, "swim")]),
    ])
    ann.lists_background = True  # as TSP's csv: v_twelve has no background row, so no background
    ds = SegmentClipDataset(ann, videos["root"], CLIP, train=False)
    assert [(it.video_id, it.start, it.label) for it in ds.items] == [
        ("v_thirty", 1.0, "jump"), ("v_thirty", 2.5, None), ("v_twelve", 0.0, "swim")]


def test_segment_dataset_items_have_clips_labels_regions_and_texts(videos):
    ann = _segment_annotations(videos)
    ds = SegmentClipDataset(ann, videos["root"], CLIP, train=False)
    layout = [(ds.items[i].video_id, ds.items[i].label) for i in range(len(ds))]
    assert layout == [("v_thirty", None), ("v_thirty", "jump"), ("v_thirty", None),
                      ("v_twelve", "swim"), ("v_twelve", None), ("v_twelve", "jump"), ("v_twelve", None)]
    item = ds[1]
    assert item["clips"].shape == (5, 3, 4, 16, 16)
    assert item["label"].tolist() == [ann.classes.index("jump")] * 5 and item["region"].tolist() == [1] * 5
    assert item["texts"] == ["foreground of jump"] * 5
    np.testing.assert_allclose(item["clip_starts"].numpy(), np.linspace(1.0, 1.5, 5), atol=1e-6)
    bg = ds[4]  # background of v_twelve from 1.0 to 4.0
    assert bg["label"].tolist() == [-1] * 5 and bg["region"].tolist() == [0] * 5
    assert bg["texts"][0] == "background of swim" and bg["texts"][-1] == "background of jump"
    short = ds[5]  # 0.3 s action, shorter than a 1 s clip: centred on it
    np.testing.assert_allclose(short["clip_starts"].numpy(), [3.65] * 5, atol=1e-6)
    fg_only = SegmentClipDataset(ann, videos["root"], CLIP, train=False, regions="foreground", classes=["jump"])
    assert [it.label for it in fg_only.items] == ["jump", "jump"] and fg_only.excluded_segments == 1
    with pytest.raises(ValueError, match="regions"):
        SegmentClipDataset(ann, videos["root"], CLIP, train=False, regions="bg")


def test_captions_reach_the_clips_with_the_policy(videos):
    ann = _segment_annotations(videos)
    always = TextPolicy(use_captions=True, caption_prob=1.0)
    ds = SegmentClipDataset(ann, videos["root"], CLIP, train=True, text_policy=always)
    assert ds[1]["texts"] == ["a person jumps over a bar"] * 5
    dagger = SegmentClipDataset(ann, videos["root"], CLIP, train=True,
                                text_policy=TextPolicy(use_captions=True, caption_prob=1.0, background_prompts_only=True))
    assert all(t == "background of jump" for t in dagger[0]["texts"])  # 0-1 s overlaps the caption, stays a prompt
    assert ds[0]["texts"] == ["a person jumps over a bar"] * 5  # without CLAP†, background takes it too


def test_same_seed_same_samples_and_epochs_differ(videos):
    ann = _segment_annotations(videos)
    a = SegmentClipDataset(ann, videos["root"], CLIP, train=True, seed=3)
    b = SegmentClipDataset(ann, videos["root"], CLIP, train=True, seed=3)
    assert torch.equal(a[4]["clips"], b[4]["clips"]) and torch.equal(a[4]["clip_starts"], b[4]["clip_starts"])
    first = a[4]["clip_starts"]
    a.set_epoch(1)
    assert not torch.equal(a[4]["clip_starts"], first)
    c = SegmentClipDataset(ann, videos["root"], CLIP, train=True, seed=4)
    assert not torch.equal(c[4]["clip_starts"], first)


def _starts_by_item(loader) -> dict:
    out = {}
    for batch in loader:
        for i, seg in enumerate(batch["segments"]):
            mask = batch["segment_index"] == i
            out[(batch["video_ids"][int(mask.nonzero()[0])], seg)] = batch["clip_starts"][mask]
    return out


def test_worker_streams_differ_and_are_reproducible(videos):
    ann = _segment_annotations(videos)
    ds = SegmentClipDataset(ann, videos["root"], CLIP, train=True, seed=7)

    def run(workers: int) -> dict:
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_segments,
                            worker_init_fn=seed_worker if workers else None)
        return _starts_by_item(loader)

    two, again, single = run(2), run(2), run(0)
    assert two.keys() == again.keys() == single.keys() and len(two) == len(ds)
    for key in two:
        assert torch.equal(two[key], again[key]) and torch.equal(two[key], single[key])
    # items served by different workers (batches 0 and 1) drew different offsets in their ranges
    fractions = []
    for (video_id, (start, end)), starts in two.items():
        lo, hi = start, max(start, end - 1.0)
        if hi > lo:
            fractions.append(tuple(np.round(((starts.numpy() - lo) / (hi - lo)), 4)))
    assert len(set(fractions)) == len(fractions)


def test_unreadable_videos_are_skipped_logged_and_counted(videos, caplog):
    ann = annotation_set([
        Video("v_thirty", 4.0, "training", filename="v_thirty.mp4", segments=[Segment(1.0, 2.0, "jump")]),
        Video("v_empty", 4.0, "training", filename="v_empty.mp4", segments=[Segment(1.0, 2.0, "jump")]),
        Video("v_garbage", 4.0, "training", filename="v_garbage.mp4", segments=[Segment(0.0, 4.0, "jump")]),
        Video("v_missing", 4.0, "training", segments=[Segment(0.0, 4.0, "jump")]),
        Video("v_truncated", 4.0, "training", filename="v_truncated.mp4", segments=[Segment(0.0, 4.0, "jump")]),
    ])
    ds = SegmentClipDataset(ann, videos["root"], CLIP, train=True)
    with caplog.at_level(logging.WARNING, logger="clap_bench.clips.datasets"):
        batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_segments))
    assert sum(b["num_skipped"] for b in batches) == len(ds) - 3 == ds.skipped
    assert sum(b["clips"].shape[0] for b in batches if b["clips"] is not None) == 3 * 5
    assert {vid for b in batches for vid, _ in b["skipped"]} == {"v_empty", "v_garbage", "v_missing", "v_truncated"}
    assert "v_empty.mp4" in caplog.text and "empty" in caplog.text and "v_missing.mp4" in caplog.text


def test_collate_flattens_clips_and_keeps_per_clip_lists(videos):
    ds = SegmentClipDataset(_segment_annotations(videos), videos["root"], CLIP, train=False)
    batch = collate_segments([ds[0], ds[3], {"skipped": True, "video_id": "x", "path": "x.mp4", "reason": "file not found"}])
    assert batch["clips"].shape == (10, 3, 4, 16, 16) and batch["label"].shape == (10,)
    assert len(batch["texts"]) == 10 and batch["video_ids"] == ["v_thirty"] * 5 + ["v_twelve"] * 5
    assert batch["segment_index"].tolist() == [0] * 5 + [1] * 5 and batch["num_skipped"] == 1
    empty = collate_segments([{"skipped": True, "video_id": "x", "path": "x.mp4", "reason": "r"}])
    assert empty["clips"] is None and empty["num_skipped"] == 1


def test_max_segments_draws_a_new_subset_each_epoch(videos):
    ds = SegmentClipDataset(_segment_annotations(videos), videos["root"], CLIP, train=True, max_segments=3)
    assert len(ds) == 3
    seen = {tuple(ds._order)}
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        seen.add(tuple(ds._order))
    assert len(seen) > 1


def test_video_dataset_gives_every_clip_at_the_stride_with_centre_crop(videos):
    ann = _segment_annotations(videos)
    ds = VideoClipDataset(ann, videos["root"], CLIP, stride_frames=4, chunk=2)
    video_id, clips = ds[1]
    assert video_id == "v_twelve" and clips.shape == (6, 3, 4, 16, 16)  # 6 s, 1 s clips, 1 s stride
    starts = ds.clip_starts(1)
    direct = transform_clips(decode_clips(videos["v12"], starts, 4, 4.0, size=(24, 32)), 16, train=False)
    assert torch.equal(clips, direct)
    assert [first for first, _ in ds.iter_clips(1)] == [0, 2, 4]
    bad = VideoClipDataset(annotation_set([Video("v_empty", 4.0, "training", filename="v_empty.mp4")]), videos["root"], CLIP, 4)
    assert bad[0] == ("v_empty", None) and bad.skipped == 1


def test_trimmed_dataset_one_item_per_video(videos):
    ann = annotation_set([
        Video("v_thirty", 4.0, "training", filename="v_thirty.mp4", segments=[Segment(0.0, 4.0, "jump")]),
        Video("v_twelve", 6.0, "training", filename="v_twelve.mp4", segments=[Segment(0.0, 6.0, "swim")]),
        Video("v_none", 3.0, "training"),
    ])
    ds = TrimmedClipDataset(ann, videos["root"], CLIP, train=True, clips_per_video=2)
    assert len(ds) == 2 and ds.excluded_videos == 1
    item = ds[1]
    assert item["clips"].shape == (2, 3, 4, 16, 16) and item["label"].tolist() == [ann.classes.index("swim")] * 2
    assert item["texts"] == ["foreground of swim"] * 2
