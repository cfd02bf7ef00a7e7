"""``clapbench preflight`` on the paper profile's real annotation files, with stand-in videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.data.loading import combined_counts, read_annotation_files

# What a 2-core CI machine cannot afford at the paper's shapes; none of these keys changes a shape
# (clip size, frames, temporal scale, map sizes, widths), only how much of each stage runs.
CI_SHRINKS = {
    "max_video_seconds": 4.0,  # the stand-ins: 4 s of each annotated video (annotations cut to match)
    "batch_size": 5,  # one segment of 5 clips per pre-training step (paper: 32 clips per process)
    "task_batch_size": 1,  # one video / episode / query per G-TAD, QAT and 2D-TAN step (paper: 16 / 8 / 32)
    "qat_adapt_steps": 10,  # support adaptation per QAT episode (paper: 100)
    "num_workers": 0,
}


def paper_profile_on(real: Path, root: Path) -> Path:
    """A profile file: ``paper`` with its annotation paths in ``real`` and no videos anywhere."""
    a, c = real / "activitynet", real / "charades-sta"
    profile = {
        "base": "paper",
        "name": "paper",
        "data": {
            "cache_dir": str(root / "cache"),
            "datasets": {
                "activitynet": {"annotations": [str(a / "activitynet_v1-3_train_tsp_groundtruth.csv"),
                                                str(a / "activitynet_v1-3_valid_tsp_groundtruth.csv")],
                                "videos": str(root / "no-videos")},
                "activitynet-captions": {"annotations": [str(real / "activitynet-captions" / "train.json"),
                                                         str(real / "activitynet-captions" / "val.json")]},
                "charades-sta": {"annotations": [str(c / "charades_sta_train.txt"), str(c / "charades_sta_test.txt")],
                                 "videos": str(root / "no-videos"),
                                 "extra": {"lengths_train": str(c / "Charades_v1_train.csv"), "lengths_test": str(c / "Charades_v1_test.csv")}},
                "tacos": {"annotations": [str(real / "tacos" / f"{s}.json") for s in ("train", "val", "test")],
                          "videos": str(root / "no-videos")},
                "fewshot-split": {"extra": {k: str(real / "fewshot-anet-splits" / f) for k, f in
                                            (("base", "base.txt"), ("val", "fs_val.txt"), ("test", "fs_test.txt"))}},
            },
        },
        "preflight": CI_SHRINKS,
    }
    path = root / "paper-real.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.mark.real_annotations
@pytest.mark.slow
def test_preflight_of_the_paper_profile_measures_every_stage_and_projects_from_the_annotation_counts(real_annotations, tmp_path):
    profile = paper_profile_on(real_annotations, tmp_path)
    out = tmp_path / "preflight.json"
    result = CliRunner().invoke(app, ["preflight", "--profile", str(profile), "--videos", "2", "--steps", "1", "--stand-in",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    stages = {m["stage"]: m for m in report["measures"]}
    assert set(stages) == {
        "pretrain clap", "extract activitynet", "extract charades-sta", "extract tacos",
        "G-TAD training (tal)", "G-TAD inference (tal)", "QAT meta-training (fstal)", "QAT test episodes (fstal)",
        "2D-TAN training (charades-sta)", "2D-TAN inference (charades-sta)", "2D-TAN training (tacos)", "2D-TAN inference (tacos)",
    }
    for m in stages.values():
        assert m["rate"] > 0 and m["units"] > 0 and m["peak_host_bytes"] > 0, m
    # the paper's shapes, untouched by the CI shrinks
    assert "16x112x112" in stages["pretrain clap"]["shape"] and "r2plus1d_18" in stages["pretrain clap"]["shape"]
    assert "temporal scale 100" in stages["G-TAD training (tal)"]["shape"]
    assert "16x16 map" in stages["2D-TAN training (charades-sta)"]["shape"]
    assert "128x128 map" in stages["2D-TAN training (tacos)"]["shape"]
    assert report["shrinks"] == {f"preflight.{k}": v for k, v in CI_SHRINKS.items()}
    assert all(kind == "stand-in" for kinds in report["videos"].values() for kind in kinds.values())
    assert all(len(kinds) == 2 for kinds in report["videos"].values())

    # dataset sizes: those of the annotation files, counted as `clapbench data inspect` counts them ...
    sizes = report["datasets"]
    a, c = real_annotations / "activitynet", real_annotations / "charades-sta"
    files = {
        "activitynet": [a / "activitynet_v1-3_train_tsp_groundtruth.csv", a / "activitynet_v1-3_valid_tsp_groundtruth.csv"],
        "charades-sta": [c / "charades_sta_train.txt", c / "charades_sta_test.txt", c / "Charades_v1_train.csv", c / "Charades_v1_test.csv"],
        "tacos": [real_annotations / "tacos" / f"{s}.json" for s in ("train", "val", "test")],
    }
    for key, paths in files.items():
        counts = combined_counts(read_annotation_files(paths))
        assert sizes[key]["videos"] == counts["videos"], key
        assert sizes[key]["queries"] == counts["queries"], key
        assert sizes[key]["subsets"] == {s: v["videos"] for s, v in counts["subsets"].items()}, key
    # ... and straight from the files
    names = set()
    for path in files["activitynet"]:
        with open(path, newline="") as f:
            names |= {row["video-name"] for row in csv.DictReader(f)}
    assert sizes["activitynet"]["videos"] == len(names)
    assert [sizes["tacos"]["subsets"][s] for s in ("train", "val", "test")] == [
        len(json.loads((real_annotations / "tacos" / f"{s}.json").read_text())) for s in ("train", "val", "test")]
    assert sizes["charades-sta"]["train_queries"] + sizes["charades-sta"]["test_queries"] == sizes["charades-sta"]["queries"]

    proj = report["projection"]
    rows = {(r["stage"], r["method"]): r for r in proj["stages"]}
    assert rows[("extract-activitynet", None)]["work"] == sizes["activitynet"]["extraction_clips"]
    assert rows[("vlg: 2D-TAN inference tacos", None)]["work"] == sizes["tacos"]["test_queries"]
    assert all(r["hours"] > 0 for r in proj["stages"])
    assert proj["sweep"]["process_hours"] == pytest.approx(5 * proj["one_seed"]["clap"]["process_hours"])
    assert proj["disk"]["feature_files_one_seed"]["activitynet"] >= sizes["activitynet"]["extraction_clips"] * 512 * 4
