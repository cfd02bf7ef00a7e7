"""The reference-free parts of the TSP clip comparison (``clap_bench.reference.tsp``) and the
extraction grid's last-clip rule it checks; none of these needs the TSP checkout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clap_bench.clips.sampling import extraction_clip_starts
from clap_bench.config import ConfigError, load_profile
from clap_bench.reference import ReferenceMissing, require_reference
from clap_bench.reference import tsp as T

FPS = 15
TIME_BASE = 1 / 7680  # 512 units per frame at 15 fps, as the synthetic mp4 files


def frame_times(n: int = 60) -> T.FrameTimes:
    return T.FrameTimes(np.arange(n, dtype=np.int64) * 512, TIME_BASE, 0, float(FPS))


# --------------------------------------------------------------------------- frames each side reads
def test_torchvision_rule_takes_the_frames_between_the_bounds_and_the_one_before_an_off_frame_start():
    frames = frame_times()
    # from 0 to one 8-frame clip at 7.5 fps (1.0667 s = 16 source frames): frames 0..16, the end included
    np.testing.assert_array_equal(T.torchvision_read_video_frames(frames, 0.0, 8 / 7.5), np.arange(17))
    # 0.1 s is 1.5 frames: frames from 2 on, and frame 1, the last one before the start, first
    np.testing.assert_array_equal(T.torchvision_read_video_frames(frames, 0.1, 0.3), [1, 2, 3, 4])
    # a start on a frame: no frame before it
    np.testing.assert_array_equal(T.torchvision_read_video_frames(frames, 0.2, 0.3), [3, 4])
    # past the last frame: what there is
    np.testing.assert_array_equal(T.torchvision_read_video_frames(frames, 3.8, 5.0), [57, 58, 59])
    with pytest.raises(ValueError, match="before start"):
        T.torchvision_read_video_frames(frames, 1.0, 0.5)


def test_our_frames_are_the_nearest_ones_so_an_off_frame_start_may_read_one_frame_later_than_tsp():
    frames = frame_times()
    ours = T.our_clip_frames(frames, [0.0, 0.1, 0.11], 4, 7.5)
    np.testing.assert_array_equal(ours[0], [0, 2, 4, 6])
    np.testing.assert_array_equal(ours[1], [1, 3, 5, 7])  # 1.5 frames: a tie goes to the earlier frame
    np.testing.assert_array_equal(ours[2], [2, 4, 6, 8])  # 1.65 frames: the nearest is 2, TSP's read starts at 1
    assert T.torchvision_read_video_frames(frames, 0.11, 0.11 + 4 / 7.5)[0] == 1


def test_frame_times_of_a_file_are_its_packets_timestamps(tmp_path):
    import av

    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(20):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    times = T.read_frame_times(path)
    assert len(times) == 20 and times.average_rate == pytest.approx(FPS)
    np.testing.assert_allclose(times.seconds, np.arange(20) / FPS, atol=1e-9)


# --------------------------------------------------------------------------- the last extraction clip
def test_last_clip_rules_differ_only_when_the_last_clip_ends_one_source_frame_past_the_video():
    clip, stride, last = 8 / 7.5, 8 / 7.5, 7 / 7.5  # 8 frames at 7.5 fps from 15 fps videos, stride 8
    for frames in (478, 479, 480, 481, 495, 496):
        duration = frames / 15
        span = extraction_clip_starts(duration, clip, stride)
        by_frames = extraction_clip_starts(duration, clip, stride, last_frame=last)
        # TSP's EvalVideoDataset, by hand: arange(frames)[::2] keeps ceil(frames / 2) frames, and a clip
        # starts every 8 of them while 8 remain
        tsp = (math.ceil(frames / 2) - 8) // 8 + 1
        assert len(by_frames) == tsp, frames
        assert len(span) == (frames - 16) // 16 + 1, frames
        assert len(by_frames) - len(span) == (1 if frames % 16 == 15 else 0), frames
        np.testing.assert_allclose(by_frames[: len(span)], span)
    assert list(extraction_clip_starts(0.3, 1.0, 1.0, last_frame=0.9)) == [0.0]  # shorter than a clip: one clip
    with pytest.raises(ValueError, match="last_frame"):
        extraction_clip_starts(4.0, 1.0, 1.0, last_frame=1.0)


def test_last_clip_is_a_checked_profile_key_and_paper_takes_tsps_rule():
    assert load_profile("paper").extract.last_clip == "frames"
    assert load_profile("smoke").extract.last_clip == "span"
    with pytest.raises(ConfigError, match="last_clip.*span, frames.*'end'"):
        load_profile("smoke", {"extract": {"last_clip": "end"}})
    clips = load_profile("smoke").clips
    frames = load_profile("smoke", {"extract": {"last_clip": "frames"}}).extract
    assert len(frames.clip_starts(10.0, clips)) >= len(load_profile("smoke").extract.clip_starts(10.0, clips))


def _tsp_clip_count(frames: int) -> int:
    """TSP's EvalVideoDataset on a 15 fps video of ``frames`` frames, 8-frame clips at 7.5 fps, stride 8."""
    return (math.ceil(frames / 2) - 8) // 8 + 1


@pytest.mark.parametrize("rule", ["span", "frames"])
def test_snapped_grid_counts_the_source_frames_where_a_rounded_duration_loses_or_adds_a_clip(rule):
    from clap_bench.config import identity_dict

    profile = load_profile("default", {"extract": {"last_clip": rule}})  # 8 frames at 7.5 fps, stride 8
    off = profile.extract
    assert off.snap_duration_to_frames is False
    on = load_profile("default", {"extract": {"last_clip": rule, "snap_duration_to_frames": True}}).extract
    clips = profile.clips
    exact = {n: len(off.clip_starts(n / 15, clips)) for n in (238, 272)}
    # span: 272 frames (18.13 s) lose a clip that fits; frames: 238 frames (15.87 s) get one that reads past the end
    rounded_off = {n: len(off.clip_starts(round(n / 15, 2), clips)) for n in (238, 272)}
    assert rounded_off == ({238: 14, 272: 16} if rule == "span" else {238: 15, 272: 17})
    assert exact == ({238: 14, 272: 17} if rule == "span" else {238: 14, 272: 17})
    for n in range(225, 901):
        for digits in (2, 3):
            d = round(n / 15, digits)
            want = off.clip_starts(n / 15, clips)
            np.testing.assert_allclose(on.clip_starts(d, clips, source_fps=15.0), want, err_msg=f"{n} frames, {d} s")
            np.testing.assert_allclose(on.clip_starts(d, clips, source_fps=15.0, num_frames=n), want)
            if rule == "frames":
                assert len(want) == _tsp_clip_count(n), n
        assert len(on.clip_starts(n / 15, clips)) == len(off.clip_starts(n / 15, clips))  # no frame rate: no snap
    # off, a profile that does not set the key hashes as before the key existed
    assert "snap_duration_to_frames" not in identity_dict(off) and identity_dict(on)["snap_duration_to_frames"] is True


def test_paper_snaps_the_extraction_grid_to_the_source_frames_and_the_synthetic_profiles_do_not():
    assert load_profile("paper").extract.snap_duration_to_frames is True
    assert load_profile("default").extract.snap_duration_to_frames is False
    assert load_profile("smoke").extract.snap_duration_to_frames is False
    with pytest.raises(ConfigError, match="snap_duration_to_frames"):
        load_profile("smoke", {"extract": {"snap_duration_to_frames": "yes"}})


# --------------------------------------------------------------------------- comparisons
def seg(video, start, end, label=None):
    return T.SegmentRow(video, start, end, label)


def test_segments_are_matched_as_multisets_and_differences_say_why():
    ours = [seg("a", 0.0, 5.0, "x"), seg("a", 5.0, 5.5), seg("a", 5.5, 9.0), seg("b", 1.0, 2.0, "y")]
    theirs = [seg("a", 0.0, 5.0, "x"), seg("a", 5.5, 9.0), seg("a", 5.5, 9.0), seg("b", 1.0, 2.5, "y")]
    c = T.compare_segments(ours, theirs, clip_length=8, frame_rate=7.5)
    assert (c.ours, c.theirs, c.common) == (4, 4, 2)
    why_ours = dict((s.key(), w) for s, w in c.only_ours)
    assert why_ours[seg("a", 5.0, 5.5).key()] == "background shorter than one clip (1.067 s): TSP drops it"
    assert why_ours[seg("b", 1.0, 2.0, "y").key()] == "action shorter than one clip (1.067 s): TSP drops it"
    assert [w for _, w in c.only_theirs] == ["a repeated csv row: we keep one copy", "unexplained"]
    assert c.unexplained == 1
    assert T.count_by(c.only_ours) == {"background shorter than one clip (1.067 s): TSP drops it": 1,
                                       "action shorter than one clip (1.067 s): TSP drops it": 1}


def test_fixed_clips_pair_by_key_and_compare_start_label_and_frames():
    ours = [T.ListedClip("a", 0.0, 1.0, "x", (0.0, 5.0), 0, (0, 2)), T.ListedClip("a", 4.0, 5.0, "x", (0.0, 5.0), 4, (60, 62)),
            T.ListedClip("a", 5.6, 6.6, None, (5.5, 9.0), 0, (84, 86))]
    theirs = [T.ListedClip("a", 0.0, 1.0, "x", (0.0, 5.0), 0, (0, 2)), T.ListedClip("a", 4.05, 5.05, "x", (0.0, 5.0), 4, (60, 61)),
              T.ListedClip("b", 0.0, 1.0, None, (0.0, 3.0), 0, (0, 2))]
    c = T.compare_fixed_clips(ours, theirs, 1 / 15, T.segment_slot_key)
    assert (c.matched, c.within_tolerance, c.label_mismatches) == (2, 2, 0)
    assert c.max_start_diff == pytest.approx(0.05)
    assert (c.frames_compared, c.frames_same, c.frames_max_diff) == (2, 1, 1)
    assert [x.video for x in c.only_ours] == ["a"] and [x.video for x in c.only_theirs] == ["b"]
    with pytest.raises(ValueError, match="not unique"):
        T.compare_fixed_clips(ours + ours[:1], theirs, 1 / 15, T.segment_slot_key)


def test_grids_compare_counts_and_shared_starts_per_video():
    ours = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([0.0, 1.0])}
    theirs = {"a": np.array([0.0, 1.0, 2.0, 3.0]), "b": np.array([0.0, 1.001])}
    g = T.compare_grids(ours, theirs, lambda v, a, b: f"{v}: {a} vs {b}")
    assert (g.videos, g.same_count, g.ours_total, g.theirs_total) == (2, 1, 5, 6)
    assert g.max_start_diff == pytest.approx(0.001)
    assert g.count_differences == [("a", 3, 4, "a: 3 vs 4")]
    listed = T.grid_clips(ours, 1.0)
    assert [(c.video, c.slot, c.end) for c in listed][:2] == [("a", 0, 1.0), ("a", 1, 2.0)]


def test_random_starts_report_range_violations_clip_counts_and_uniformity():
    rng = np.random.default_rng(0)
    segment = seg("a", 2.0, 10.0, "x")
    lo, hi = T.tsp_start_range(segment, 1.0)
    assert (lo, hi) == (2.0, 9.0)
    clips = [T.ListedClip("a", float(s), float(s) + 1, "x", (2.0, 10.0), 0) for s in rng.uniform(lo, hi, 2000)]
    r = T.random_starts(clips, {segment.key(): (lo, hi)}, epochs=400)
    assert (r.outside_range, r.segments, r.clips_per_segment_epoch) == (0, 1, (5, 5))
    assert abs(r.position_mean - 0.5) < 0.03 and r.ks_uniform_p > 0.001
    skewed = [T.ListedClip("a", lo + (hi - lo) * float(u) ** 2, 0, "x", (2.0, 10.0), 0) for u in rng.uniform(0, 1, 2000)]
    skewed.append(T.ListedClip("a", 9.5, 10.5, "x", (2.0, 10.0), 0))
    s = T.random_starts(skewed, {segment.key(): (lo, hi)}, epochs=1)
    assert s.outside_range == 1 and s.ks_uniform_p < 1e-6 and T.two_sample_p(r, s) < 1e-6
    # our range matches TSP's for a long segment and is clamped to the video for one near its end
    assert T.our_start_range(segment, 1.0, 30.0) == (2.0, 9.0)
    assert T.our_start_range(seg("a", 9.5, 10.0), 1.0, 10.0) == (9.0, 9.0)


def test_missing_checkout_error_says_how_to_fetch_it(tmp_path):
    with pytest.raises(ReferenceMissing, match=f"git clone {T.TSP_URL}.*checkout {T.TSP_COMMIT}"):
        require_reference(tmp_path, "TSP", T.TSP_URL, T.TSP_COMMIT, T.TSP_MARKER)


# --------------------------------------------------------------------------- our side on the smoke set
@pytest.fixture(scope="module")
def smoke_protocol():
    return T.our_protocol(load_profile("smoke"), short_segments="drop")


def test_our_segments_under_drop_are_the_csv_rows_clamped_and_long_enough(smoke_protocol):
    """TSP's rule, stated from its docstring, applied to the csv by hand: clamp to the video, keep >= one clip."""
    import pandas as pd

    p = smoke_protocol
    clip = p.profile.clips.frames / p.profile.clips.fps
    for subset, dataset in (("training", p.train), ("validation", p.validation)):
        df = pd.read_csv(p.csv_files[subset])
        expected = []
        for _, row in df.iterrows():
            start, end = max(row["t-start"], 0.0), min(row["t-end"], row["video-duration"])
            if (end - start) * p.profile.clips.fps >= p.profile.clips.frames:
                label = None if pd.isnull(row["action-label"]) else row["action-label"]
                expected.append(T.SegmentRow(row["filename"][:-4], float(start), float(end), label))
        c = T.compare_segments(T.our_segments(dataset), expected, p.profile.clips.frames, p.profile.clips.fps)
        assert c.common == len(expected) == c.ours and not c.only_ours and not c.only_theirs, subset
        assert all(s.length >= clip for s in T.our_segments(dataset))


def test_our_clip_lists_follow_tsps_layout_without_decoding(smoke_protocol):
    p = smoke_protocol
    n, k = len(p.validation.items), p.profile.clips.clips_per_segment
    val = T.our_clips(p.validation)
    assert len(val) == n * k
    clip = p.profile.clips.frames / p.profile.clips.fps
    for c in val:  # slot j of a segment: lo + j / (k - 1) of its start range, as TSP's linspace(0, 1, k)
        lo, hi = c.segment[0], c.segment[1] - clip
        assert c.start == pytest.approx(lo + c.slot / (k - 1) * (hi - lo))
        assert c.end == pytest.approx(c.start + clip)
    train = T.our_clips(p.train, range(2))
    ranges = {s.key(): T.our_start_range(s, clip, p.durations[s.video]) for s in T.our_segments(p.train)}
    r = T.random_starts(train, ranges, epochs=2)
    assert r.outside_range == 0 and r.clips_per_segment_epoch == (k, k)
    assert T.our_clips(p.train, [1])[0].start != T.our_clips(p.train, [0])[0].start  # a new draw each epoch
    for vid, starts in p.extraction.items():
        assert len(starts) == len(p.profile.extract.clip_starts(p.durations[vid], p.profile.clips))


def test_frame_bound_and_grid_explanations_follow_tsps_resampling_step():
    assert T.frame_difference_bound(30, 15) == 1 and T.frame_difference_bound(15, 7.5) == 1
    assert T.frame_difference_bound(15, 4) == 2
    # a 15 fps video of 479 frames, 8-frame clips at 7.5 fps: TSP's extra last clip starts at 29 x 16 / 15 s
    duration, start = 479 / 15, 29 * 16 / 15
    why = T.explain_grid_difference(29, 30, "span", start, duration, 8, 7.5, 15)
    assert why.startswith("TSP keeps a last clip whose frames all exist")
    assert T.explain_grid_difference(29, 30, "frames", start, duration, 8, 7.5, 15) == "unexplained"
    assert T.explain_grid_difference(29, 30, "span", start - 16 / 15, duration, 8, 7.5, 15) == "unexplained"  # fits: no reason
    # a fractional step (15 -> 4 fps): TSP keeps the span rule, so our frames rule has the extra clip
    why = T.explain_grid_difference(10, 9, "frames", 9.0, 147 / 15, 4, 4.0, 15)
    assert why.startswith("TSP resamples by a fractional step (3.75")


def test_clip_lists_are_written_as_csv_one_row_per_clip():
    import csv
    import io

    clips = [T.ListedClip("v_a", 1.5, 2.5, "x", (1.0, 4.0), 2, (22, 24)), T.ListedClip("v_a", 0.0, 1.0, None, (0.0, 1.0), 0),
             T.ListedClip("v_b", 2.0, 3.0, None, None, 3, (30, 32))]
    rows = list(csv.DictReader(io.StringIO(T.clips_csv(clips))))
    assert tuple(rows[0]) == T.CSV_COLUMNS
    assert rows[0] == {"video": "v_a", "start": "1.500000", "end": "2.500000", "label": "x", "region": "action",
                       "segment_start": "1.000000", "segment_end": "4.000000", "slot": "2", "frames": "22 24"}
    assert (rows[1]["label"], rows[1]["region"], rows[1]["frames"]) == ("", "background", "")
    assert (rows[2]["region"], rows[2]["segment_start"], rows[2]["slot"]) == ("", "", "3")
