"""The readers on the published annotation files: counts must match what the datasets publish.

Needs $CLAPBENCH_REAL_ANNOTATIONS (skipped cleanly otherwise).
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import DatasetConfig
from clap_bench.data import (
    attach_captions,
    combined_counts,
    detect_format,
    load_dataset,
    read_activitynet_json,
    read_annotation_files,
    read_anet_captions,
    read_charades_sta,
    read_fewshot_split,
    read_tacos,
    read_tsp_csv,
    write_activitynet_json,
)

pytestmark = pytest.mark.real_annotations


def note_count(notes, pattern: str) -> int:
    for note in notes:
        m = re.search(pattern, note)
        if m:
            return int(m.group(1))
    return 0


@pytest.fixture(scope="module")
def anet_train(real_annotations):
    return read_tsp_csv(real_annotations / "activitynet" / "activitynet_v1-3_train_tsp_groundtruth.csv")


def test_tsp_activitynet_train_counts(anet_train):
    c = anet_train.counts()
    assert c["segments"] == 31_366  # csv rows
    assert c["actions"] == 15_410
    assert c["classes"] == 200
    assert c["videos"] == 10_024 and anet_train.subsets == ["training"]
    assert all(v.startswith("v_") and anet_train.videos[v].filename == v + ".mp4" for v in anet_train.videos)
    assert all(v.fps == 30.0 for v in anet_train.videos.values())
    # 9 rows with t-start = t-end inside their video: clip sampling drops them, and a note counts them
    assert note_count(anet_train.notes, r"(\d+) zero-length segments \(start = end\) within their video") == 9


def test_tsp_activitynet_train_and_valid_merge(real_annotations):
    cfg = DatasetConfig(format="tsp-csv", annotations=[
        str(real_annotations / "activitynet" / f"activitynet_v1-3_{s}_tsp_groundtruth.csv") for s in ("train", "valid")])
    s = load_dataset(cfg, "activitynet")
    c = s.counts()
    assert c["subsets"]["training"]["segments"] == 31_366
    assert c["subsets"]["validation"] == {"videos": 4_926, "segments": 15_401, "actions": 7_654, "sentences": 0}
    assert c["classes"] == 200
    mapping = json.loads((real_annotations / "activitynet" / "activitynet_v1-3_action_label_mapping.json").read_text())
    assert s.classes == sorted(mapping)


def test_thumos14_tsp_counts(real_annotations):
    folder = real_annotations / "thumos14"
    valid = read_tsp_csv(folder / "thumos14_valid_tsp_groundtruth.csv")
    test = read_tsp_csv(folder / "thumos14_test_tsp_groundtruth.csv")
    assert (len(valid.videos), valid.counts()["segments"], valid.counts()["actions"]) == (200, 5_185, 3_007)
    assert (len(test.videos), test.counts()["segments"], test.counts()["actions"]) == (212, 5_931, 3_358)
    assert valid.subsets == ["validation"] and test.subsets == ["testing"]
    mapping = json.loads((folder / "thumos14_action_label_mapping.json").read_text())
    assert valid.classes == test.classes == sorted(mapping) and len(mapping) == 20
    assert all(v.startswith(("video_validation_", "video_test_")) for v in list(valid.videos) + list(test.videos))
    # Of the 52 test segments that run past their video, 49 lie wholly past it: clip sampling drops them, as TSP does.
    assert note_count(test.notes, r"(\d+) segments end after") == 3
    assert note_count(test.notes, r"(\d+) segments lie wholly at or past") == 49


def test_charades_sta_counts(real_annotations):
    folder = real_annotations / "charades-sta"
    train = read_charades_sta(folder / "charades_sta_train.txt")
    test = read_charades_sta(folder / "charades_sta_test.txt")
    assert train.counts()["queries"] + train.dropped == 12_408
    assert train.dropped == 4 and train.counts()["queries"] == 12_404
    assert test.counts()["queries"] == 3_720 and test.dropped == 0
    assert note_count(train.notes, r"(\d+) query end times") == 1_805
    assert note_count(test.notes, r"(\d+) query end times") == 562
    assert note_count(train.notes, r"(\d+) queries dropped") == 4
    for s in (train, test):
        assert all(0 <= q.start < q.end <= v.duration for v in s.videos.values() for q in v.sentences)


def test_tacos_counts(real_annotations):
    expected = {"train": (75, 9_790), "val": (27, 4_436), "test": (25, 4_001)}
    for name, (videos, queries) in expected.items():
        s = read_tacos(real_annotations / "tacos" / f"{name}.json")
        assert (len(s.videos), s.counts()["queries"], s.dropped) == (videos, queries, 0)
        assert s.subsets == [name]
        assert all(v.fps == 29.4 and v.filename.endswith(".avi") for v in s.videos.values())
        assert all(0 <= q.start < q.end <= v.duration for v in s.videos.values() for q in v.sentences)


@pytest.mark.slow
def test_activitynet_captions_counts(real_annotations):
    folder = real_annotations / "activitynet-captions"
    # Published sizes: train 10,009 videos / 37,421 captions; val_1 4,917 / 17,505; val_2 4,885 / 17,031.
    expected = {"train": (10_009, 37_421, 4), "val": (4_917, 17_505, 0), "test": (4_885, 17_031, 0)}
    for name, (videos, captions, dropped) in expected.items():
        s = read_anet_captions(folder / f"{name}.json")
        assert (len(s.videos), s.counts()["queries"] + s.dropped, s.dropped) == (videos, captions, dropped)
        assert all(v.startswith("v_") for v in s.videos)
        assert not any(q.text != q.text.strip() for v in s.videos.values() for q in v.sentences)
    # val and test annotate the same videos: they are counted, never merged.
    counts = combined_counts(read_annotation_files(folder))
    assert counts["videos"] == 14_926 and any("4885 videos appear in more than one subset" in n for n in counts["notes"])


def test_captions_attach_to_activitynet_training_videos(real_annotations, anet_train):
    captions = read_anet_captions(real_annotations / "activitynet-captions" / "train.json")
    joined = attach_captions(anet_train, captions)
    captioned = [v for v in joined.videos.values() if v.sentences]
    assert len(captioned) == 10_009  # every Captions train video is an ActivityNet training video
    # Clipped to the TSP csv's durations (another source than Captions' own): counted, never silent.
    # The drops are the reader's 4 (start >= end in train.json) and the join's 1, all of these videos.
    assert (captions.counts()["queries"], joined.counts()["queries"], joined.dropped) == (37_417, 37_416, 5)
    assert note_count(joined.notes, r"(\d+) caption end times past") == 8_089
    assert note_count(joined.notes, r"(\d+) captions dropped") == 1
    assert note_count(joined.notes, r"captions of training videos from train.json: (\d+) queries dropped") == 4
    assert note_count(joined.notes, r"captions of training videos from train.json: (\d+) query end times past") == 261
    # The join's counts say which videos lost captions, as the readers' notes do: here counted again
    # from the two files' times (a caption ending past the csv's duration, or starting at or after it).
    tallies = {t.after: dict(t.per_video) for t in joined.subset_notes["training"].tallies if t.before.startswith(
        f"captions of training videos from {captions.source}")}
    past_end, starts_after = {}, {}
    for vid, video in anet_train.videos.items():
        cap = captions.videos.get(vid)
        for q in cap.sentences if cap is not None else ():
            if q.end > video.duration:
                past_end[vid] = past_end.get(vid, 0) + 1
            if q.start >= min(q.end, video.duration):
                starts_after[vid] = starts_after.get(vid, 0) + 1
    clipped, dropped = (next(v for after, v in tallies.items() if word in after) for word in ("clipped to it", "dropped"))
    assert clipped == past_end and sum(clipped.values()) == 8_089
    assert dropped == starts_after and list(dropped) == ["v_vdYFwqfqgJA"]


def test_fewshot_split_is_disjoint_and_known(real_annotations, anet_train):
    folder = real_annotations / "fewshot-anet-splits"
    split = read_fewshot_split(folder / "base.txt", folder / "fs_val.txt", folder / "fs_test.txt", anet_train.classes)
    assert (len(split.base), len(split.val), len(split.test)) == (160, 20, 20)
    assert split.classes == anet_train.classes  # 160 + 20 + 20 disjoint names cover the 200 classes
    assert detect_format(folder / "base.txt") == "class-split"


def test_official_json_round_trip_of_real_actions(tmp_path, anet_train):
    out = tmp_path / "gt.json"
    write_activitynet_json(anet_train, out)
    back = read_activitynet_json(out)
    assert back.counts()["actions"] == 15_410 and back.classes == anet_train.classes
    assert back.videos["v_sJFgo9H6zNo"].segments == anet_train.videos["v_sJFgo9H6zNo"].actions


# Two ActivityNet training videos have YouTube ids that start with "v_" themselves.
V_V_IDS = ["v_v_Vg4a8igc0", "v_v_UmAH95xls"]


def test_youtube_ids_starting_with_v_keep_the_prefix_the_sources_give_them(real_annotations, anet_train, tmp_path):
    assert all(vid in anet_train.videos and vid[2:] not in anet_train.videos for vid in V_V_IDS)
    captions = read_anet_captions(real_annotations / "activitynet-captions" / "train.json")
    assert all(vid in captions.videos for vid in V_V_IDS)
    # ActivityNet's own spelling (bare ids, v_Vg4a8igc0 among them) reads back as the same ids.
    bare = tmp_path / "bare.json"
    write_activitynet_json(anet_train, bare, strip_v_prefix=True)
    assert {"v_Vg4a8igc0", "v_UmAH95xls"} <= set(json.loads(bare.read_text())["database"])
    assert set(read_activitynet_json(bare).videos) == set(anet_train.videos)
    # A row without a file name: the id is "v_" + its video-name (the bare id).
    csv_path = real_annotations / "activitynet" / "activitynet_v1-3_train_tsp_groundtruth.csv"
    lines = csv_path.read_text().splitlines()
    blank = [lines[0]] + [re.sub(r",v_v_\w+\.mp4,", ",,", line) for line in lines[1:] if line.startswith(("v_Vg4a8igc0,", "v_UmAH95xls,"))]
    assert len(blank) == 3 and all(",," in line for line in blank[1:])
    (tmp_path / "anet_train_tsp.csv").write_text("\n".join(blank + lines[1:3]) + "\n")
    assert set(V_V_IDS) <= set(read_tsp_csv(tmp_path / "anet_train_tsp.csv").videos)


def test_inspect_cli_on_a_real_file_and_a_broken_one(real_annotations, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(real_annotations / "charades-sta" / "charades_sta_test.txt"), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert (counts["format"], counts["queries"], counts["videos"], counts["dropped"]) == ("charades-sta", 3_720, 1_334, 0)

    broken = tmp_path / "train.json"
    text = (real_annotations / "tacos" / "train.json").read_text()
    broken.write_text(text.replace('"fps": 29.4', '"fps": "fast"', 1))
    result = runner.invoke(app, ["data", "inspect", str(broken), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["path"] == str(broken) and error["where"].endswith('["fps"]') and "expected a number" in error["problem"]


def test_real_folders_read_their_annotation_files_and_ignore_the_side_files(real_annotations):
    # Metadata csvs, label maps and G-TAD's files sniff as no format and are not damaged annotation files.
    expected = {
        "activitynet": ["activitynet_v1-3_train_tsp_groundtruth.csv", "activitynet_v1-3_valid_tsp_groundtruth.csv"],
        "thumos14": ["thumos14_test_tsp_groundtruth.csv", "thumos14_valid_tsp_groundtruth.csv"],
        "charades-sta": ["charades_sta_test.txt", "charades_sta_train.txt"],
        "tacos": ["test.json", "train.json", "val.json"],
    }
    for folder, names in expected.items():
        assert [s.source.rsplit("/", 1)[-1] for s in read_annotation_files(real_annotations / folder)] == names, folder


def test_tsp_background_is_the_csv_rows_even_in_videos_without_any(anet_train):
    from clap_bench.clips import contiguous_segments

    # 2,331 training videos have no background row: TSP's csv leaves short background out, so none is invented.
    assert sum(1 for v in anet_train.videos.values() if not any(s.label is None for s in v.segments)) == 2_331
    background = [s for v in anet_train.videos.values()
                  for s in contiguous_segments(v, lists_background=anet_train.lists_background) if s.label is None]
    assert len(background) == 15_956  # the csv's background rows


def test_repeated_tsp_rows_are_sampled_once_or_as_listed(anet_train):
    from clap_bench.clips import contiguous_segments

    def count(duplicates: str) -> int:
        return sum(len(contiguous_segments(v, lists_background=True, duplicates=duplicates)) for v in anet_train.videos.values())

    # 30 training rows repeat an earlier one (all actions): TSP samples every row (pretrain.duplicate_segments: keep).
    assert count("keep") - count("drop") == 30
    assert count("keep") == 31_366 - 9  # every csv row but the 9 of zero length
