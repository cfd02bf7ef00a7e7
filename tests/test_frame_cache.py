"""The frame cache: a video decoded once gives the same clips as decoding, survives a corrupt entry,
concurrent writers and a size bound, and reports decode errors like the decoder."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from clap_bench.clips import VideoDecodeError, decode_clips, decode_frames_at
from clap_bench.clips.frame_cache import FrameCache
from test_clips import HEIGHT, WIDTH, expected_indices, indices, write_indexed_vfr_video, write_indexed_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cache_videos")
    paths = {"v30": write_indexed_video(root / "v_thirty.mp4", 120, 30), "v12": write_indexed_video(root / "v_twelve.mp4", 72, 12)}
    good = paths["v30"].read_bytes()
    (root / "v_empty.mp4").write_bytes(b"")
    (root / "v_truncated.mp4").write_bytes(good[: len(good) // 2])
    paths["root"] = root
    return paths


@pytest.mark.parametrize("name,fps,count", [("v30", 30, 120), ("v12", 12, 72)])
def test_cached_frames_are_the_decoders_frames(videos, tmp_path, name, fps, count):
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    rng = np.random.default_rng(1)
    times = np.concatenate([rng.uniform(-0.3, count / fps + 0.3, 40), [0.0, 0.5 / fps, 1.5 / fps, count / fps]])
    got = cache.frames_at(videos[name], times)
    np.testing.assert_array_equal(indices(got), expected_indices(times, fps, count))
    np.testing.assert_array_equal(got, decode_frames_at(videos[name], times, size=(HEIGHT, WIDTH)))
    starts = np.array([0.0, 0.37, 1.51, 2.2])
    np.testing.assert_array_equal(cache.clips(videos[name], starts, 8, 7.5), decode_clips(videos[name], starts, 8, 7.5, (HEIGHT, WIDTH)))


def test_variable_frame_rate_cached_frames_are_the_decoders_frames(tmp_path):
    gaps = np.random.default_rng(7).integers(1, 7, size=80)
    frame_times = write_indexed_vfr_video(tmp_path / "v_vfr.mp4", gaps, gop=9)
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    rng = np.random.default_rng(2)
    for _ in range(10):
        times = rng.uniform(-0.2, frame_times[-1] + 0.2, int(rng.integers(1, 20)))
        got = cache.frames_at(tmp_path / "v_vfr.mp4", times)
        np.testing.assert_array_equal(got, decode_frames_at(tmp_path / "v_vfr.mp4", times, size=(HEIGHT, WIDTH)))
    halfway = (frame_times[1:] + frame_times[:-1]) / 2  # ties go to the earlier frame in both
    np.testing.assert_array_equal(cache.frames_at(tmp_path / "v_vfr.mp4", halfway),
                                  decode_frames_at(tmp_path / "v_vfr.mp4", halfway, size=(HEIGHT, WIDTH)))


def test_the_resize_filter_is_part_of_the_entry(tmp_path):
    from test_clips import write_textured_video

    path = write_textured_video(tmp_path / "v_texture.mp4")
    times = np.array([0.0, 0.3, 0.8])
    swscale = FrameCache(tmp_path / "frames", (40, 53))
    bilinear = FrameCache(tmp_path / "frames", (40, 53), resize_filter="bilinear")  # the same folder
    a = swscale.frames_at(path, times)
    b = bilinear.frames_at(path, times)  # a miss: never the swscale entry
    assert bilinear.misses == 1 and swscale.key(path) != bilinear.key(path)
    np.testing.assert_array_equal(a, decode_frames_at(path, times, size=(40, 53)))
    np.testing.assert_array_equal(b, decode_frames_at(path, times, size=(40, 53), resize_filter="bilinear"))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(FrameCache(tmp_path / "frames", (40, 53), resize_filter="bilinear").frames_at(path, times), b)


def test_miss_then_hit_and_a_new_instance_reads_the_entry(videos, tmp_path):
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    cache.clips(videos["v30"], [0.0], 4, 7.5)
    cache.clips(videos["v30"], [1.0], 4, 7.5)
    assert (cache.misses, cache.hits) == (1, 1)
    again = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    again.clips(videos["v30"], [2.0], 4, 7.5)
    assert (again.misses, again.hits) == (0, 1)
    assert len(list((tmp_path / "frames").glob("*.frames.npy"))) == 1


def test_a_corrupt_entry_is_rebuilt(videos, tmp_path):
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    want = cache.clips(videos["v12"], [0.5, 3.0], 4, 4.0)
    frames_file = next((tmp_path / "frames").glob("*.frames.npy"))
    frames_file.write_bytes(frames_file.read_bytes()[:100])  # a crash mid-write, a full disk
    fresh = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    np.testing.assert_array_equal(fresh.clips(videos["v12"], [0.5, 3.0], 4, 4.0), want)
    assert fresh.misses == 1
    meta = next((tmp_path / "frames").glob("*.meta.json"))
    meta.write_text("{not json")
    fresh = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    np.testing.assert_array_equal(fresh.clips(videos["v12"], [0.5, 3.0], 4, 4.0), want)
    assert json.loads(meta.read_text())["size"] == [HEIGHT, WIDTH]


def _write_entry(args):
    path, root = args
    cache = FrameCache(root, (HEIGHT, WIDTH))
    return cache.clips(path, [0.0, 1.0, 2.5], 4, 7.5).tobytes()


def test_concurrent_writers_of_one_entry_agree(videos, tmp_path):
    root = str(tmp_path / "frames")
    with mp.get_context("spawn").Pool(3) as pool:
        results = pool.map(_write_entry, [(str(videos["v30"]), root)] * 3)
    assert len(set(results)) == 1
    assert len(list(Path(root).glob("*.frames.npy"))) == 1 and not list(Path(root).glob("*.tmp-*"))
    np.testing.assert_array_equal(
        np.frombuffer(results[0], np.uint8).reshape(3, 4, HEIGHT, WIDTH, 3),
        decode_clips(videos["v30"], [0.0, 1.0, 2.5], 4, 7.5, (HEIGHT, WIDTH)),
    )


def test_size_bound_evicts_the_least_recently_used_entry(videos, tmp_path):
    one = FrameCache(tmp_path / "probe", (HEIGHT, WIDTH))
    one.clips(videos["v30"], [0.0], 4, 7.5)
    size_v30 = one.disk_bytes()
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH), max_bytes=int(size_v30 * 1.2))
    cache.clips(videos["v30"], [0.0], 4, 7.5)
    cache.clips(videos["v12"], [0.0], 4, 7.5)  # does not fit beside v30: v30 goes
    metas = [json.loads(m.read_text())["video"] for m in (tmp_path / "frames").glob("*.meta.json")]
    assert metas == [str(Path(videos["v12"]).resolve())]


def test_unreadable_videos_raise_the_decoders_errors(videos, tmp_path):
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    with pytest.raises(VideoDecodeError, match="empty"):
        cache.clips(videos["root"] / "v_empty.mp4", [0.0], 4, 7.5)
    with pytest.raises(VideoDecodeError, match="not found"):
        cache.clips(videos["root"] / "v_missing.mp4", [0.0], 4, 7.5)
    with pytest.raises(VideoDecodeError, match="truncated"):
        cache.clips(videos["root"] / "v_truncated.mp4", [3.5], 4, 7.5)


def test_temporary_files_of_dead_writers_are_removed_and_live_ones_counted(videos, tmp_path):
    import os
    import subprocess
    import sys
    import time

    from clap_bench.clips.frame_cache import _host

    one = FrameCache(tmp_path / "probe", (HEIGHT, WIDTH))
    one.clips(videos["v30"], [0.0], 4, 7.5)
    size_v30 = one.disk_bytes()
    root = tmp_path / "frames"
    cache = FrameCache(root, (HEIGHT, WIDTH), max_bytes=int(size_v30 * 2.5))
    cache.clips(videos["v30"], [0.0], 4, 7.5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    crashed = root / f"abc.frames.npy.tmp-{_host()}-{dead_pid}"  # a writer killed before its rename
    crashed.write_bytes(b"x" * 1000)
    old = root / "def.frames.npy.tmp-4242"  # an older name, or another host's writer, hours ago
    old.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    live = root / f"ghi.frames.npy.tmp-{_host()}-{os.getpid()}"  # a writer at work (this process)
    live.write_bytes(b"x" * size_v30)
    cache.clips(videos["v12"], [0.0], 4, 7.5)  # v30 + the live file + v12 exceed the bound: v30 goes
    assert not crashed.exists() and not old.exists() and live.exists()
    metas = [json.loads(m.read_text())["video"] for m in root.glob("*.meta.json")]
    assert metas == [str(Path(videos["v12"]).resolve())]


def test_an_entry_removed_by_another_process_is_a_miss_not_an_error(videos, tmp_path, monkeypatch):
    import os

    import clap_bench.clips.frame_cache as fc

    want = decode_clips(videos["v12"], [0.5], 4, 4.0, (HEIGHT, WIDTH))
    FrameCache(tmp_path / "frames", (HEIGHT, WIDTH)).clips(videos["v12"], [0.5], 4, 4.0)
    real_utime = os.utime
    evicted = []

    def evicted_meanwhile(path, *args, **kwargs):  # another process's size bound removes the entry first
        if not evicted:
            evicted.append(path)
            for f in (tmp_path / "frames").glob("*"):
                f.unlink()
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(fc.os, "utime", evicted_meanwhile)
    cache = FrameCache(tmp_path / "frames", (HEIGHT, WIDTH))
    np.testing.assert_array_equal(cache.clips(videos["v12"], [0.5], 4, 4.0), want)
    assert evicted and cache.misses == 1


def test_hits_served_from_open_entries_refresh_their_recency(videos, tmp_path):
    import os
    import shutil
    import time

    sizes = {}
    for name in ("v30", "v12"):
        probe = FrameCache(tmp_path / f"probe_{name}", (HEIGHT, WIDTH))
        probe.clips(videos[name], [0.0], 4, 7.5)
        sizes[name] = probe.disk_bytes()
    third = tmp_path / "v_twelve_copy.mp4"
    shutil.copy(videos["v12"], third)
    root = tmp_path / "frames"
    cache = FrameCache(root, (HEIGHT, WIDTH), max_bytes=int(sizes["v30"] + 1.5 * sizes["v12"]))
    cache.touch_every = 0.0
    cache.clips(videos["v30"], [0.0], 4, 7.5)
    cache.clips(videos["v12"], [0.0], 4, 7.5)
    for age, name in ((300, "v30"), (200, "v12")):  # v30 loaded first
        os.utime(root / f"{cache.key(videos[name])}.meta.json", (time.time() - age, time.time() - age))
    cache.clips(videos["v30"], [1.0], 4, 7.5)  # a hit from the open entry: v30 is now the most recent
    cache.clips(third, [0.0], 4, 7.5)  # one entry must go: the least recently used, v12
    metas = sorted(json.loads(m.read_text())["video"] for m in root.glob("*.meta.json"))
    assert metas == sorted([str(Path(videos["v30"]).resolve()), str(third.resolve())])
