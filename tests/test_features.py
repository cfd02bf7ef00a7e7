"""Feature files: TSP layout, crash-safe resume, shards and merge, real decoding + encoding of a tiny video."""

import json

import av
import h5py
import numpy as np
import pytest
import torch

from clap_bench.config import ClipConfig, EncoderConfig
from clap_bench.encoders import build_video_encoder
from clap_bench.features.extract import (
    VideoSource,
    encode_videos,
    merge_feature_shards,
    read_features,
    shard_path,
    write_features,
)

ATTRS = {"checkpoint_hash": "abc", "method": "clap", "seed": 0, "stride": 4, "fps": 4.0, "frames": 4, "size": 28}


def _fake_encode(dim=5):
    def encode(todo):
        for v in todo:
            t = int(v.duration)
            yield v.id, np.full((t, dim), float(t), np.float32), None

    return encode


def _videos(n):
    return [VideoSource(f"v_{i:02d}", None, 2.0 + i) for i in range(n)]


def test_layout_is_flat_video_id_to_T_by_D_float32(tmp_path):
    out = tmp_path / "f.h5"
    written, errors = write_features(out, ATTRS, _videos(3), _fake_encode())
    assert (written, errors) == (3, [])
    with h5py.File(out, "r") as f:  # what the G-TAD / 2D-TAN loaders do
        assert sorted(f.keys()) == ["v_00", "v_01", "v_02"]
        assert f["v_01"].shape == (3, 5) and f["v_01"].dtype == np.float32
        assert f.attrs["complete"] and f.attrs["method"] == "clap" and f.attrs["fps"] == 4.0
    with read_features(out) as ff:
        assert len(ff) == 3 and ff.dim == 5 and "v_02" in ff
        np.testing.assert_array_equal(ff["v_02"], np.full((4, 5), 4.0, np.float32))
        with pytest.raises(KeyError, match="v_99"):
            ff["v_99"]


def test_resume_skips_done_videos_and_drops_a_half_written_one(tmp_path):
    out = tmp_path / "f.h5"
    # The state a crash leaves: two videos in, one under its temporary name, not complete.
    with h5py.File(out, "w") as f:
        f.attrs.update(ATTRS)  # written before the first video
        f.attrs["complete"] = False
        f.create_dataset("v_00", data=np.zeros((2, 5), np.float32))
        f.create_dataset("v_01", data=np.zeros((3, 5), np.float32))
        f.create_dataset("__partial__v_02", data=np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="incomplete"):
        read_features(out)
    with read_features(out, allow_partial=True) as ff:  # a partial file stays readable
        assert sorted(ff.keys()) == ["v_00", "v_01"]
    asked = []

    def encode(todo):
        asked.extend(v.id for v in todo)
        yield from _fake_encode()(todo)

    written, _ = write_features(out, ATTRS, _videos(3), encode)
    assert asked == ["v_02"] and written == 1
    with read_features(out) as ff:
        assert sorted(ff.keys()) == ["v_00", "v_01", "v_02"]
        assert ff["v_00"].sum() == 0  # kept, not recomputed


def test_other_checkpoint_refuses_to_mix(tmp_path):
    out = tmp_path / "f.h5"
    write_features(out, ATTRS, _videos(1), _fake_encode())
    with pytest.raises(ValueError, match="checkpoint abc"):
        write_features(out, {**ATTRS, "checkpoint_hash": "def"}, _videos(2), _fake_encode())


def _grid_attrs(profile, checkpoint, dataset="activitynet"):
    from clap_bench.encoders import file_hash
    from clap_bench.features.extract import FEATURES_FORMAT

    c, ex = profile.clips, profile.extract
    return {"format": FEATURES_FORMAT, "dataset": dataset, "checkpoint_hash": file_hash(checkpoint),
            "stride": ex.stride_frames, "stride_frames": ex.stride_frames, "last_clip": ex.last_clip, "fps": c.fps,
            "frames": c.frames, "size": c.crop, "resize": list(c.resize), "resize_filter": c.resize_filter}


@pytest.mark.parametrize("key,other", [("checkpoint_hash", "0123456789ab"), ("stride_frames", 3), ("fps", 5.0),
                                       ("frames", 8), ("last_clip", "frames"), ("resize", [10, 12]), ("size", 9),
                                       ("resize_filter", "bilinear"), ("snap_duration_to_frames", True)])
def test_a_complete_file_made_otherwise_is_refused_not_returned(tmp_path, key, other):
    from clap_bench.config import load_profile
    from clap_bench.features.extract import extract_features

    profile = load_profile("smoke")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not loaded when the file is reused or refused")
    same = _grid_attrs(profile, checkpoint)
    out = tmp_path / "same.h5"
    write_features(out, same, _videos(2), _fake_encode())
    assert extract_features(profile, checkpoint, "activitynet", out, progress=False) == out  # reused
    out = tmp_path / "other.h5"
    write_features(out, {**same, key: other}, _videos(2), _fake_encode())
    with pytest.raises(ValueError) as e:
        extract_features(profile, checkpoint, "activitynet", out, progress=False)
    msg = str(e.value)
    assert str(out) in msg and "delete the file or choose another --out" in msg
    assert (key in msg and repr(other) in msg) if key != "checkpoint_hash" else f"checkpoint {other}, not {same[key]}" in msg


def test_a_partial_file_made_otherwise_is_not_resumed(tmp_path):
    out = tmp_path / "f.h5"

    def crash_after_one(todo):
        yield next(_fake_encode()(todo[:1]))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_features(out, {**ATTRS, "stride_frames": 8}, _videos(3), crash_after_one)
    with pytest.raises(ValueError, match=r"stride_frames=8, this extraction wants stride_frames=16.*delete the file"):
        write_features(out, {**ATTRS, "stride_frames": 16}, _videos(3), _fake_encode())
    with h5py.File(out, "r") as f:  # left as it was
        assert f.attrs["stride_frames"] == 8 and list(f.keys()) == ["v_00"] and not f.attrs["complete"]
    written, _ = write_features(out, {**ATTRS, "stride_frames": 8}, _videos(3), _fake_encode())
    assert written == 2


def test_a_file_with_skipped_videos_is_not_complete_and_a_rerun_tries_them_again(tmp_path):
    out = tmp_path / "f.h5"
    broken = {"v_01"}
    asked = []

    def encode(todo):
        for v in todo:
            asked.append(v.id)
            yield (v.id, None, "corrupt video data") if v.id in broken else next(_fake_encode()([v]))

    write_features(out, ATTRS, _videos(3), encode)
    with h5py.File(out, "r") as f:
        assert f.attrs["finished"] and not f.attrs["complete"] and json.loads(f.attrs["skipped_videos"]) == ["v_01"]
    with read_features(out) as ff:  # readers take a finished file
        assert sorted(ff.keys()) == ["v_00", "v_02"]
    broken.clear()
    asked.clear()
    written, errors = write_features(out, ATTRS, _videos(3), encode)
    assert asked == ["v_01"] and (written, errors) == (1, [])
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and json.loads(f.attrs["skipped_videos"]) == []


def test_shards_merge_into_one_file_when_all_are_complete(tmp_path):
    out = tmp_path / "f.h5"
    videos = _videos(5)
    write_features(shard_path(out, (0, 2)), ATTRS, videos[0::2], _fake_encode())
    assert merge_feature_shards(out, 2) is None  # shard 1 not done yet
    write_features(shard_path(out, (1, 2)), ATTRS, videos[1::2], _fake_encode())
    assert merge_feature_shards(out, 2) == out
    assert not shard_path(out, (0, 2)).exists()
    with read_features(out) as ff:
        assert sorted(ff.keys()) == [v.id for v in videos]
        assert ff.attrs["shards"] == 2 and json.loads(ff.attrs["skipped_videos"]) == []


def test_unreadable_video_is_skipped_and_listed(tmp_path):
    out = tmp_path / "f.h5"

    def encode(todo):
        for v in todo:
            yield (v.id, None, "file not found") if v.id == "v_01" else next(_fake_encode()([v]))

    _, errors = write_features(out, ATTRS, _videos(3), encode)
    assert errors == ["v_01: file not found"]
    with read_features(out) as ff:
        assert sorted(ff.keys()) == ["v_00", "v_02"]
        assert json.loads(ff.attrs["skipped_videos"]) == ["v_01"]


def _write_mp4(path, seconds=3.0, fps=8, size=(32, 44)):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(int(seconds * fps)):
            img = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_encode_videos_gives_one_feature_per_clip_at_the_stride(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "v_a.mp4"
    _write_mp4(path)
    clips = ClipConfig(frames=4, fps=4.0, resize=[32, 43], crop=28)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    videos = [VideoSource("v_a", path, 3.0), VideoSource("v_missing", tmp_path / "nope.mp4", 2.0)]
    results = {vid: (feats, err) for vid, feats, err in encode_videos(encoder, videos, clips, stride_frames=2, batch_size=2, device="cpu")}
    feats, err = results["v_a"]
    # clip 1 s, stride 0.5 s over 3 s: starts 0, 0.5, ..., 2.0 -> 5 clips
    assert err is None and feats.shape == (5, encoder.out_dim) and feats.dtype == np.float32
    assert results["v_missing"][0] is None and results["v_missing"][1]
    # Chunking does not change the features.
    again = dict((v, f) for v, f, _ in encode_videos(encoder, videos[:1], clips, stride_frames=2, batch_size=5, device="cpu"))
    np.testing.assert_allclose(again["v_a"], feats, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule,frames,snapped,annotated", [("span", 272, 17, 16), ("frames", 238, 14, 15)])
def test_snapped_grid_reads_the_stream_rate_when_a_rounded_duration_is_off_the_frame_grid(tmp_path, rule, frames, snapped, annotated):
    """A 15 fps video annotated to 0.01 s (as Charades' lengths): with ``snap_duration_to_frames`` the
    grid is laid over its frames (the rate from the annotation or, without one, the stream)."""
    from clap_bench.clips import VideoClipDataset
    from clap_bench.clips.decode import probe_video
    from clap_bench.data.schema import AnnotationSet, Video

    path = tmp_path / "v_c.mp4"
    _write_mp4(path, seconds=frames / 15 + 1e-9, fps=15, size=(16, 22))
    assert probe_video(path).num_frames == frames
    clips = ClipConfig(frames=8, fps=7.5, resize=[16, 22], crop=16)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    duration = round(frames / 15, 2)
    counts = {}
    for name, video, snap in (("stream", VideoSource("v_c", path, duration), True),
                              ("annotation", VideoSource("v_c", path, duration, 15.0, frames), True),
                              ("off", VideoSource("v_c", path, duration, 15.0, frames), False)):
        vid, feats, err = next(encode_videos(encoder, [video], clips, stride_frames=8, batch_size=32, device="cpu",
                                             last_clip=rule, snap_duration_to_frames=snap))
        assert err is None, err
        counts[name] = feats.shape[0]
    assert counts == {"stream": snapped, "annotation": snapped, "off": annotated}
    ann = AnnotationSet("test", "test", {"v_c": Video("v_c", duration, "test", filename="v_c.mp4")})
    for snap, want in ((True, snapped), (False, annotated)):
        ds = VideoClipDataset(ann, tmp_path, clips, stride_frames=8, last_clip=rule, snap_duration_to_frames=snap)
        assert len(ds.clip_starts(0)) == want


def test_last_clip_frames_adds_the_clip_that_ends_on_the_last_frame(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "v_b.mp4"
    _write_mp4(path, seconds=23 / 8)  # 23 frames at 8 fps: 2.875 s
    clips = ClipConfig(frames=4, fps=4.0, resize=[32, 43], crop=28)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    video = [VideoSource("v_b", path, 23 / 8)]
    span = next(encode_videos(encoder, video, clips, stride_frames=2, batch_size=8, device="cpu"))[1]
    frames = next(encode_videos(encoder, video, clips, stride_frames=2, batch_size=8, device="cpu", last_clip="frames"))[1]
    # clips of 1 s every 0.5 s: the span rule stops at 1.5 s (ends at 2.5 s); the clip at 2.0 s runs to
    # 3.0 s but its frames (2.0, 2.25, 2.5, 2.75 s) are all in the video, the last being its last frame
    assert span.shape[0] == 4 and frames.shape[0] == 5
    np.testing.assert_allclose(frames[:4], span, rtol=1e-4, atol=1e-5)
