"""``clapbench data check``: four kinds of broken video found, each with its kind; the stages then skip them up front."""

from __future__ import annotations

import csv
import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import load_profile
from clap_bench.data.check import DURATION_MISMATCH, MISSING, UNREADABLE, load_problem_videos, read_problems

FPS = 10


def write_mp4(path: Path, seconds: float, size=(48, 64), fps: int = FPS) -> None:
    """A small H.264 mp4 of moving noise lasting ``seconds``."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, size + (3,), dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# id -> (annotated duration, what is on disk)
VIDEOS = {
    "v_good": (6.0, "good"),
    "v_gone": (6.0, "missing"),
    "v_empty": (6.0, "zero bytes"),
    "v_cut": (6.0, "truncated"),
    "v_short": (6.0, "2 s only"),
}
EXPECTED = {"v_gone": MISSING, "v_empty": UNREADABLE, "v_cut": UNREADABLE, "v_short": DURATION_MISMATCH}


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check")
    videos = root / "videos"
    videos.mkdir()
    write_mp4(videos / "v_good.mp4", 6.0)
    (videos / "v_empty.mp4").write_bytes(b"")
    write_mp4(videos / "v_cut.mp4", 6.0)
    data = (videos / "v_cut.mp4").read_bytes()
    (videos / "v_cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) at the end is lost
    write_mp4(videos / "v_short.mp4", 2.0)
    database = {
        vid[2:]: {"subset": "training", "duration": dur,
                  "annotations": [{"segment": [1.0, 3.0], "label": "jump"}, {"segment": [3.5, 5.5], "label": "run"}]}
        for vid, (dur, _) in VIDEOS.items()
    }
    (root / "gt.json").write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    profile = {
        "base": "smoke",
        "name": "check-test",
        "data": {
            "synthetic": False,
            "cache_dir": str(root / "cache"),
            "datasets": {"activitynet": {"format": "activitynet-json", "annotations": [str(root / "gt.json")], "videos": str(videos)}},
        },
        "encoder": {"weights": None},
        "pretrain": {"epochs": 1, "max_segments_per_epoch": None, "validate": False},  # training videos only
        "check": {"duration_tolerance": 1.0},
    }
    (root / "profile.yaml").write_text(yaml.safe_dump(profile))
    return root


def test_data_check_reports_exactly_the_four_broken_videos_with_their_kind(broken_folder):
    result = CliRunner().invoke(app, ["data", "check", "--profile", str(broken_folder / "profile.yaml"), "--jobs", "2", "--json"])
    assert result.exit_code == 1, result.output  # problems found
    report = json.loads(result.stdout)
    assert {p["video"]: p["problem"] for p in report["problems"]} == EXPECTED
    assert report["summary"]["activitynet"] == {
        "videos": 5, "found": 4, MISSING: 1, UNREADABLE: 2, DURATION_MISMATCH: 1, "fps": "10", "size": "64x48",
    }
    rows = read_problems(Path(report["problems_csv"]))
    assert {r["video"]: r["problem"] for r in rows} == EXPECTED
    assert all(r["dataset"] == "activitynet" and r["detail"] for r in rows)
    assert "0 bytes" in next(r["detail"] for r in rows if r["video"] == "v_empty")
    assert "2.00 s" in next(r["detail"] for r in rows if r["video"] == "v_short")
    with open(report["videos_csv"], newline="") as f:
        good = next(r for r in csv.DictReader(f) if r["video"] == "v_good")
    assert (float(good["duration"]), float(good["fps"]), good["width"], good["height"], good["problem"]) == (6.0, 10.0, "64", "48", "")


def test_pretraining_skips_the_listed_videos_up_front_with_one_warning(broken_folder, tmp_path, caplog):
    from clap_bench.training.pretrain import pretrain

    profile = load_profile(str(broken_folder / "profile.yaml"))
    if not load_problem_videos(profile, "activitynet"):
        CliRunner().invoke(app, ["data", "check", "--profile", str(broken_folder / "profile.yaml")])
    assert load_problem_videos(profile, "activitynet") == set(EXPECTED)
    with caplog.at_level(logging.WARNING):
        final = pretrain(profile, "tac", seed=0, out_dir=tmp_path / "tac", progress=False)
    assert final.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # no video met mid-epoch
    assert "leaving out 4 of 5 activitynet videos" in warnings[0]
    metrics = [json.loads(line) for line in (tmp_path / "tac" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["skipped_segments"] == 0 and metrics[-1]["clips"] > 0


def test_a_caption_duration_mismatch_is_reported_but_does_not_leave_out_the_activitynet_video(broken_folder, tmp_path):
    from clap_bench.data.check import check_data

    # Captions have no video folder: they are checked against ActivityNet's files with their own
    # durations, which come from another source (v_good: 6 s in ActivityNet's file and on disk, 9 s here).
    captions = tmp_path / "train.json"
    captions.write_text(json.dumps({
        "v_good": {"duration": 9.0, "timestamps": [[1.0, 3.0]], "sentences": ["a person jumps"]},
        "v_gone": {"duration": 6.0, "timestamps": [[1.0, 3.0]], "sentences": ["a person runs"]},
    }))
    profile = yaml.safe_load((broken_folder / "profile.yaml").read_text())
    profile["data"]["cache_dir"] = str(tmp_path / "cache")
    profile["data"]["datasets"]["activitynet-captions"] = {"format": "anet-captions", "annotations": [str(captions)]}
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    profile = load_profile(str(tmp_path / "profile.yaml"))
    result = check_data(profile, progress=False)
    rows = {(r["video"], r["dataset"]): r["problem"] for r in read_problems(result.problems_csv)}
    assert rows[("v_good", "activitynet-captions")] == DURATION_MISMATCH  # the report keeps it
    assert rows[("v_gone", "activitynet-captions")] == MISSING
    assert load_problem_videos(profile, "activitynet") == set(EXPECTED)  # v_good's file matches ActivityNet
    assert load_problem_videos(profile, "activitynet-captions") == {"v_good"} | {v for v, k in EXPECTED.items() if k != DURATION_MISMATCH}


def test_without_a_problem_list_nothing_is_left_out(tmp_path):
    profile = load_profile("smoke", {"data": {"cache_dir": str(tmp_path)}})
    assert load_problem_videos(profile, "activitynet") == set()


def test_a_problem_list_of_another_shape_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("video,dataset,kind\nv_a,activitynet,missing\n")
    with pytest.raises(ValueError, match="p.csv: header"):
        read_problems(path)
    path.write_text("video,dataset,problem,detail\nv_a,activitynet,gone,x\n")
    with pytest.raises(ValueError, match="line 2: problem 'gone'"):
        read_problems(path)


def test_extraction_lists_only_the_videos_without_problems_with_one_warning(broken_folder, caplog):
    from clap_bench.features.extract import dataset_videos

    profile = load_profile(str(broken_folder / "profile.yaml"))
    if not load_problem_videos(profile, "activitynet"):
        CliRunner().invoke(app, ["data", "check", "--profile", str(broken_folder / "profile.yaml")])
    with caplog.at_level(logging.WARNING):
        videos = dataset_videos(profile, "activitynet")
    assert [v.id for v in videos] == ["v_good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "extraction of activitynet: leaving out 4 of 5" in warnings[0]


def test_pre_training_validation_leaves_out_the_problem_videos_too(tmp_path, monkeypatch):
    # TSP computes global video features of every validation video: one the data check found
    # missing must not reach it (it stopped pre-training with "video(s) unreadable").
    import importlib

    pretrain_module = importlib.import_module("clap_bench.training.pretrain")  # the module, not the function
    from clap_bench.config import resolve_datasets
    from clap_bench.data import load_dataset

    problems = tmp_path / "problems.csv"
    profile = load_profile("smoke", {"check": {"problems_file": str(problems)}, "encoder": {"weights": None}})
    ann = load_dataset(resolve_datasets(profile)["activitynet"], "activitynet")
    validation = sorted(v for v, video in ann.videos.items() if video.subset == "validation")
    problems.write_text(f"video,dataset,problem,detail\n{validation[0]},activitynet,missing,gone\n")
    asked = []

    class Enough(Exception):
        pass

    def record(profile, weights, videos, *args, **kwargs):
        asked.append([v.id for v in videos])
        if len(asked) == 2:  # the training videos', then the validation videos' features
            raise Enough
        return {v.id: pretrain_module.torch.zeros(4) for v in videos}

    monkeypatch.setattr(pretrain_module, "global_video_features", record)
    with pytest.raises(Enough):
        pretrain_module.pretrain(profile, "tsp", seed=0, out_dir=tmp_path / "out", progress=False)
    assert asked[1] == validation[1:]


def test_global_video_features_of_other_video_files_are_cached_apart(tmp_path):
    # Same ids, weights and grid, but the dataset's videos now come from another folder (e.g. re-encoded).
    from clap_bench.features.extract import VideoSource
    from clap_bench.training.pretrain import gvf_cache_path

    def profile(videos):
        return load_profile("smoke", {"data": {"cache_dir": str(tmp_path), "datasets": {
            "activitynet": {"format": "activitynet-json", "annotations": [str(tmp_path / "a.json")], "videos": str(videos)}}}})

    videos = [VideoSource("v_a", tmp_path / "v_a.mp4", 10.0, None, None)]
    first = gvf_cache_path(profile(tmp_path / "videos"), None, videos, "activitynet")
    assert first == gvf_cache_path(profile(tmp_path / "videos"), None, videos, "activitynet")
    assert first != gvf_cache_path(profile(tmp_path / "videos-30fps"), None, videos, "activitynet")
