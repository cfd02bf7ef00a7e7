"""Annotation readers on small files written by the tests: good files, and every malformed case
we could think of, each error naming the file, the line or JSON key, and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import DatasetConfig, load_profile
from clap_bench.data import (
    READERS,
    AnnotationError,
    AnnotationSet,
    Segment,
    Video,
    attach_captions,
    detect_format,
    load_dataset,
    read_activitynet_json,
    read_anet_captions,
    read_annotations,
    read_charades_sta,
    read_class_split,
    read_fewshot_split,
    read_kinetics_csv,
    read_tacos,
    read_tsp_csv,
    write_activitynet_json,
)
from clap_bench.data.check import drop_problem_videos

TSP_HEADER = "video-name,t-start,t-end,action-label,video-duration,filename,fps,video-frames,temporal-region-label"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: Path, obj) -> Path:
    return write(path, json.dumps(obj))


def expect_error(fn, *args, where: str, says: tuple, **kwargs) -> AnnotationError:
    """Call fn and check the AnnotationError names the file (when given), the place and the expectation."""
    with pytest.raises(AnnotationError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert where in err.where, f"expected the error to point at {where!r}, got {err.where!r} ({err})"
    for word in says:
        assert word in err.problem, f"expected {word!r} in the problem, got {err.problem!r}"
    return err


def anet_database(**videos) -> dict:
    return {"version": "VERSION 1.3", "taxonomy": [], "database": videos}


# --------------------------------------------------------------------------- registry
def test_every_decided_format_has_a_reader():
    assert set(READERS.list()) == {
        "activitynet-json", "tsp-csv", "anet-captions", "charades-sta", "tacos", "class-split", "kinetics-csv",
    }


# --------------------------------------------------------------------------- ActivityNet JSON
def test_activitynet_json_adds_v_prefix_and_keeps_subsets(tmp_path):
    path = write_json(tmp_path / "anet.json", anet_database(
        abc={"subset": "training", "duration": 20.0, "url": "x", "resolution": "640x360",
             "annotations": [{"segment": [8.0, 12.0], "label": "Run"}, {"segment": [1.0, 3.0], "label": "Jump"}]},
        **{"def": {"subset": "validation", "duration": 10.0, "annotations": [{"segment": [2.0, 2.0], "label": "Run"}]}},
        ghi={"subset": "testing", "duration": 5.0, "annotations": []},
    ))
    s = read_activitynet_json(path)
    assert sorted(s.videos) == ["v_abc", "v_def", "v_ghi"]
    assert [g.start for g in s.videos["v_abc"].segments] == [1.0, 8.0]  # sorted by time
    assert s.videos["v_def"].segments[0].length == 0.0  # zero-length actions are kept
    assert s.classes == ["Jump", "Run"]
    assert s.subsets == ["testing", "training", "validation"]
    assert s.videos["v_abc"].filename == "v_abc.mp4"
    assert list(read_activitynet_json(path, subset="validation").videos) == ["v_def"]


@pytest.mark.parametrize(
    "content, where, says",
    [
        ('{"database": {', "line 1 column", ("not valid JSON",)),
        ("[1, 2]", "top level", ("expected an ActivityNet-1.3 JSON object",)),
        ('{"version": "1.3"}', "key ", ("'database'",)),
        (json.dumps({"database": []}), 'key ["database"]', ("expected an object",)),
        (json.dumps(anet_database(a={"subset": "training", "annotations": []})), 'key ["database"]["a"]', ("'duration'",)),
        (json.dumps(anet_database(a={"subset": "train", "duration": 3, "annotations": []})),
         'key ["database"]["a"]["subset"]', ("'train'", "training, validation, testing")),
        (json.dumps(anet_database(a={"subset": "training", "duration": "long", "annotations": []})),
         'key ["database"]["a"]["duration"]', ("expected a number",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 0, "annotations": []})),
         'key ["database"]["a"]["duration"]', ("expected a number > 0",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 9, "annotations": [{"segment": ["x", 2], "label": "R"}]})),
         'key ["database"]["a"]["annotations"][0]["segment"][0]', ("expected a number",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 9, "annotations": [{"segment": [-1, 2], "label": "R"}]})),
         'key ["database"]["a"]["annotations"][0]["segment"][0]', (">= 0",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 9, "annotations": [{"segment": [5, 2], "label": "R"}]})),
         'key ["database"]["a"]["annotations"][0]["segment"]', ("start <= end",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 9, "annotations": [{"segment": [1], "label": "R"}]})),
         'key ["database"]["a"]["annotations"][0]["segment"]', ("[start, end]",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 9, "annotations": [{"segment": [1, 2]}]})),
         'key ["database"]["a"]["annotations"][0]', ("'label'",)),
        (json.dumps(anet_database(a={"subset": "training", "duration": 9, "annotations": [{"segment": [1, 2], "label": ""}]})),
         'key ["database"]["a"]["annotations"][0]["label"]', ("class name",)),
        ('{"database": {"a": {"subset": "training", "duration": 1, "annotations": []}, '
         '"a": {"subset": "training", "duration": 2, "annotations": []}}}', 'key ["database"]["a"]', ("twice",)),
        ('{"database": {"a": {"subset": "training", "duration": 1, "annotations": []}, '
         '"v_x": {"subset": "training", "duration": 1, "duration": 2, "annotations": []}}}',
         'key ["database"]["v_x"]["duration"]', ("twice",)),
        ('{"database": {"a": {"subset": "training", "duration": 9, "annotations": '
         '[{"segment": [1, 2], "label": "R"}, {"segment": [1, 2], "label": "R", "label": "S"}]}}}',
         'key ["database"]["a"]["annotations"][1]["label"]', ("twice",)),
        (json.dumps({**anet_database(a={"subset": "training", "duration": 1, "annotations": []}), "video_ids": "v_"}),
         'key ["video_ids"]', ("'v_'", "'bare', 'project'")),
        ("  \n", "file", ("empty",)),
    ],
)
def test_activitynet_json_errors_name_the_key_and_expectation(tmp_path, content, where, says):
    path = write(tmp_path / "gt.json", content)
    err = expect_error(read_activitynet_json, path, where=where, says=says)
    assert err.path == str(path) and str(path) in str(err)


def test_missing_file_is_named(tmp_path):
    expect_error(read_activitynet_json, tmp_path / "nope.json", where="file", says=("not found",))


def test_write_activitynet_json_round_trips(tmp_path):
    src = write_json(tmp_path / "gt.json", anet_database(
        abc={"subset": "training", "duration": 20.5, "annotations": [{"segment": [1.25, 3.5], "label": "Jump"}]},
        de={"subset": "validation", "duration": 9.0, "annotations": [{"segment": [0.0, 9.0], "label": "Run"},
                                                                      {"segment": [2.0, 4.0], "label": "Jump"}]},
    ))
    original = read_activitynet_json(src)
    out = tmp_path / "out" / "gt.json"
    write_activitynet_json(original, out)
    raw = json.loads(out.read_text())
    assert set(raw) == {"version", "taxonomy", "database", "video_ids"} and raw["video_ids"] == "project"
    assert set(raw["database"]) == {"v_abc", "v_de"}  # the project's ids, as predictions carry them
    write_activitynet_json(original, tmp_path / "bare.json", strip_v_prefix=True)
    assert set(json.loads((tmp_path / "bare.json").read_text())["database"]) == {"abc", "de"}  # ActivityNet's spelling
    assert read_activitynet_json(tmp_path / "bare.json").videos.keys() == original.videos.keys()
    again = read_activitynet_json(out)
    assert again.classes == original.classes
    for vid, video in original.videos.items():
        other = again.videos[vid]
        assert (other.subset, other.duration, other.segments) == (video.subset, video.duration, video.segments)
    write_activitynet_json(original, out, subset="validation")
    assert list(read_activitynet_json(out).videos) == ["v_de"]


def test_activitynet_json_ids_are_prefixed_all_or_none_per_file(tmp_path):
    # ActivityNet's own file: bare YouTube ids, one of which starts with "v_" itself (v_Vg4a8igc0,
    # whose file TSP names v_v_Vg4a8igc0.mp4, as ActivityNet Captions and G-TAD name the video).
    video = {"subset": "training", "duration": 36.5, "annotations": [{"segment": [0.0, 36.7], "label": "Bathing dog"}]}
    official = write_json(tmp_path / "official.json", anet_database(v_Vg4a8igc0=video, sJFgo9H6zNo=dict(video, annotations=[])))
    assert list(read_activitynet_json(official).videos) == ["v_v_Vg4a8igc0", "v_sJFgo9H6zNo"]
    assert read_activitynet_json(official).videos["v_v_Vg4a8igc0"].filename == "v_v_Vg4a8igc0.mp4"
    # A YouTube id "a" and another "v_a" are two videos.
    both = write_json(tmp_path / "both.json", anet_database(a=video, v_a=video))
    assert list(read_activitynet_json(both).videos) == ["v_a", "v_v_a"]
    # Every key prefixed: a file written with the project's ids, kept as they are.
    own = write_json(tmp_path / "own.json", anet_database(v_v_Vg4a8igc0=video, v_sJFgo9H6zNo=video))
    assert list(read_activitynet_json(own).videos) == ["v_v_Vg4a8igc0", "v_sJFgo9H6zNo"]
    # The decision covers the whole file, not the subset read.
    mixed = write_json(tmp_path / "mixed.json", anet_database(v_Vg4a8igc0=video, abc=dict(video, subset="validation")))
    assert list(read_activitynet_json(mixed, subset="training").videos) == ["v_v_Vg4a8igc0"]
    # The file may say how its ids are spelled.
    said = write_json(tmp_path / "said.json", {**anet_database(v_Vg4a8igc0=video), "video_ids": "bare"})
    assert list(read_activitynet_json(said).videos) == ["v_v_Vg4a8igc0"]


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("ids", [["v_v_Vg4a8igc0", "v_v_UmAH95xls", "v_sJFgo9H6zNo"], ["v_v_Vg4a8igc0"], ["v_sJFgo9H6zNo"]])
def test_write_activitynet_json_reads_back_with_the_ids_written(tmp_path, ids, strip):
    videos = {vid: Video(vid, 40.0, "training", segments=[Segment(1.0, 2.0, "Jump")]) for vid in ids}
    out = tmp_path / "gt.json"
    write_activitynet_json(AnnotationSet("tsp-csv", "hand-made", videos, ["Jump"]), out, strip_v_prefix=strip)
    written = json.loads(out.read_text())
    assert list(written["database"]) == ([vid[2:] for vid in ids] if strip else ids)
    assert list(read_activitynet_json(out).videos) == ids


def test_write_activitynet_json_will_not_strip_a_prefix_an_id_lacks(tmp_path):
    videos = {"video_test_0000004": Video("video_test_0000004", 40.0, "testing", segments=[Segment(1.0, 2.0, "Jump")])}
    annotations = AnnotationSet("tsp-csv", "hand-made", videos, ["Jump"])
    with pytest.raises(ValueError, match="video_test_0000004.*no 'v_' prefix"):
        write_activitynet_json(annotations, tmp_path / "gt.json", strip_v_prefix=True)
    write_activitynet_json(annotations, tmp_path / "gt.json")
    assert list(read_activitynet_json(tmp_path / "gt.json").videos) == ["video_test_0000004"]  # as written


def test_anet_captions_ids_are_prefixed_all_or_none_per_file(tmp_path):
    entry = {"duration": 36.5, "timestamps": [[0.0, 5.0]], "sentences": [" A dog is bathed."]}
    own = write_json(tmp_path / "train.json", {"v_v_Vg4a8igc0": entry, "v_sJFgo9H6zNo": entry})
    assert list(read_anet_captions(own).videos) == ["v_v_Vg4a8igc0", "v_sJFgo9H6zNo"]
    bare = write_json(tmp_path / "bare" / "train.json", {"v_Vg4a8igc0": entry, "sJFgo9H6zNo": entry})
    assert list(read_anet_captions(bare).videos) == ["v_v_Vg4a8igc0", "v_sJFgo9H6zNo"]


def test_tsp_row_without_filename_gets_v_before_its_bare_video_name(tmp_path):
    path = write(tmp_path / "anet_train_tsp.csv", "\n".join([
        TSP_HEADER,
        "sJFgo9H6zNo,0.01,123.4,Fun sliding down,138.97,v_sJFgo9H6zNo.mp4,30.0,4169,Action",
        "v_Vg4a8igc0,0.0,36.7,Bathing dog,36.53,,30.0,1096,Action",
        "UmAH95xls,0.01,117.0,Shaving legs,117.0,,30.0,3510,Action",
    ]) + "\n")
    s = read_tsp_csv(path)
    assert list(s.videos) == ["v_sJFgo9H6zNo", "v_v_Vg4a8igc0", "v_UmAH95xls"]
    assert s.videos["v_v_Vg4a8igc0"].filename == "v_v_Vg4a8igc0.mp4"


def test_write_activitynet_json_keeps_only_actions_of_tsp_rows(tmp_path):
    csv_path = write(tmp_path / "x_train_gt.csv", "\n".join([
        TSP_HEADER,
        "abc,0.0,4.0,,10.0,v_abc.mp4,30.0,300,No action",
        "abc,4.0,10.0,Jump,10.0,v_abc.mp4,30.0,300,Action",
    ]))
    out = tmp_path / "gt.json"
    write_activitynet_json(read_tsp_csv(csv_path), out)
    back = read_activitynet_json(out)
    assert back.videos["v_abc"].segments == [s for s in read_tsp_csv(csv_path).videos["v_abc"].segments if s.label]
    assert back.videos["v_abc"].subset == "training"


# --------------------------------------------------------------------------- TSP csv
def tsp_rows(*rows: str) -> str:
    return "\n".join((TSP_HEADER,) + rows) + "\n"


def test_tsp_segments_past_the_end_are_counted_as_clip_sampling_treats_them(tmp_path):
    # A 10 s video: one action cut at the end, one zero-length past it (as v_e6J_ygZ779A's 142.281 s in a
    # 142.267 s video), one wholly past it, one overrunning by under 1 ms, one ending exactly at the end.
    path = write(tmp_path / "anet_valid_tsp.csv", tsp_rows(
        "a,8.0,12.0,Run,10.0,v_a.mp4,30,300,Action",
        "a,10.014,10.014,Run,10.0,v_a.mp4,30,300,Action",
        "a,10.5,11.0,Jump,10.0,v_a.mp4,30,300,Action",
        "a,2.0,10.0004,Jump,10.0,v_a.mp4,30,300,Action",
        "a,0.0,10.0,,10.0,v_a.mp4,30,300,No action",
    ))
    s = read_tsp_csv(path)
    assert s.notes == [
        "anet_valid_tsp.csv: 2 segments end after their video's duration (kept as given; clip sampling cuts them at it)",
        "anet_valid_tsp.csv: 2 segments lie wholly at or past their video's end (kept as given; dropped by clip sampling, as TSP does)",
    ]
    assert len(s.videos["v_a"].segments) == 5 and s.dropped == 0  # the reader keeps them all
    # What the notes say is what clip sampling does.
    from clap_bench.clips.segments import contiguous_segments
    sampled = contiguous_segments(s.videos["v_a"], lists_background=True)
    assert [(g.start, g.end, g.label) for g in sampled] == [(0.0, 10.0, None), (2.0, 10.0, "Jump"), (8.0, 10.0, "Run")]


def test_tsp_zero_length_segments_within_the_video_are_counted(tmp_path):
    # TSP's ActivityNet train csv has 9 rows with t-start = t-end inside their video (most at 0.0):
    # clip sampling drops them, as TSP's length check does; one at or past the end is counted with those past it.
    path = write(tmp_path / "anet_train_tsp.csv", tsp_rows(
        "a,0.0,0.0,Run,10.0,v_a.mp4,30,300,Action",
        "a,4.5,4.5,Jump,10.0,v_a.mp4,30,300,Action",
        "a,1.0,6.0,Jump,10.0,v_a.mp4,30,300,Action",
        "a,10.0,10.0,Run,10.0,v_a.mp4,30,300,Action",
        "b,2.0,2.0,Run,5.0,v_b.mp4,30,150,Action",
    ))
    s = read_tsp_csv(path)
    assert s.notes == [
        "anet_train_tsp.csv: 1 segments lie wholly at or past their video's end (kept as given; dropped by clip sampling, as TSP does)",
        "anet_train_tsp.csv: 3 zero-length segments (start = end) within their video (kept as given; dropped by clip "
        "sampling, as TSP's length check does)",
    ]
    assert len(s.videos["v_a"].segments) == 4 and s.dropped == 0  # the reader keeps them all
    assert s.restrict_classes(["Run"]).notes == [s.notes[1].replace(": 3 ", ": 1 ")]  # counted per video: v_b's
    # What the note says is what clip sampling does.
    from clap_bench.clips.segments import contiguous_segments
    assert [(g.start, g.end) for g in contiguous_segments(s.videos["v_a"], lists_background=True)] == [(1.0, 6.0)]
    assert contiguous_segments(s.videos["v_b"], lists_background=True) == []


def test_tsp_csv_reads_background_rows_and_uses_file_names_as_ids(tmp_path):
    anet = write(tmp_path / "activitynet_v1-3_valid_tsp_groundtruth.csv", tsp_rows(
        "abc,5.0,9.0,Jump,12.0,v_abc.mp4,30.0,360,Action",
        "abc,0.0,5.0,,12.0,v_abc.mp4,30.0,360,No action",
        "xyz,0.0,3.0,Run,3.0,v_xyz.mp4,25.0,75,Action",
    ))
    s = read_tsp_csv(anet)
    assert sorted(s.videos) == ["v_abc", "v_xyz"]
    abc = s.videos["v_abc"]
    assert (abc.subset, abc.duration, abc.fps, abc.num_frames, abc.filename) == ("validation", 12.0, 30.0, 360, "v_abc.mp4")
    assert [(g.start, g.label) for g in abc.segments] == [(0.0, None), (5.0, "Jump")]
    assert s.counts()["segments"] == 3 and s.counts()["actions"] == 2
    assert s.classes == ["Jump", "Run"]

    thumos = write(tmp_path / "thumos14_test_tsp_groundtruth.csv", tsp_rows(
        "video_test_0000004,0.2,1.1,CricketBowling,33.7,video_test_0000004.mp4,30.0,1012,Action",
    ))
    t = read_tsp_csv(thumos)
    assert list(t.videos) == ["video_test_0000004"]  # no "v_" outside ActivityNet
    assert t.videos["video_test_0000004"].subset == "testing"


def test_tsp_csv_subset_from_argument_or_clear_error(tmp_path):
    path = write(tmp_path / "groundtruth.csv", tsp_rows("a,0,1,Run,2,v_a.mp4,30,60,Action"))
    expect_error(read_tsp_csv, path, where="file name", says=("subset", "training, validation, testing"))
    assert read_tsp_csv(path, subset="validation").videos["v_a"].subset == "validation"
    expect_error(read_tsp_csv, path, subset="val", where="subset argument", says=("'val'", "training, validation, testing"))
    both = write(tmp_path / "gt_train_valid.csv", tsp_rows("a,0,1,Run,2,v_a.mp4,30,60,Action"))
    expect_error(read_tsp_csv, both, where="file name", says=("several subsets",))


@pytest.mark.parametrize(
    "text, where, says",
    [
        ("video-name,t-start,t-end,action-label\nabc,0,1,Run\n", "line 1", ("video-duration", "filename", "fps")),
        (tsp_rows("abc,zero,1,Run,2,v_abc.mp4,30,60,Action"), "line 2", ("t-start", "'zero'", "expected a number")),
        (tsp_rows("abc,0,1,Run,2,v_abc.mp4,30,60,Action", "abc,1,,Run,2,v_abc.mp4,30,60,Action"), "line 3", ("t-end", "number")),
        (tsp_rows("abc,-1,1,Run,2,v_abc.mp4,30,60,Action"), "line 2", ("t-start", ">= 0")),
        (tsp_rows("abc,1.5,1,Run,2,v_abc.mp4,30,60,Action"), "line 2", ("before t-start", "t-start <= t-end")),
        (tsp_rows("abc,0,1,Run,2,v_abc.mp4,30,60"), "line 2", ("8 fields", "expected 9")),
        (tsp_rows("abc,0,1,Run,2,v_abc.mp4,30,60,Action", "abc,1,2,,3,v_abc.mp4,30,60,No action"),
         "line 3", ("line 2", "same values on every row")),
        (tsp_rows("abc,0,1,,2,v_abc.mp4,30,60,Action"), "line 2", ("'Action' with a label",)),
        (tsp_rows("abc,0,1,Run,2,v_other.mp4,30,60,Action"), "line 2", ("does not match video-name",)),
        (tsp_rows("abc,0,1,Run,0,v_abc.mp4,30,60,Action"), "line 2", ("video-duration", "> 0")),
        (tsp_rows("abc,0,1,Run,2,v_abc.mp4,30,6.5,Action"), "line 2", ("video-frames", "whole number")),
        (tsp_rows("abc,0,nan,Run,2,v_abc.mp4,30,60,Action"), "line 2", ("finite",)),
        (TSP_HEADER + "\n", "line 2", ("no rows",)),
    ],
)
def test_tsp_csv_errors_name_the_line_and_expectation(tmp_path, text, where, says):
    path = write(tmp_path / "activitynet_train_tsp.csv", text)
    err = expect_error(read_tsp_csv, path, where=where, says=says)
    assert str(path) in str(err)


# --------------------------------------------------------------------------- ActivityNet Captions
def test_captions_strip_sentences_clip_ends_and_drop_empty_queries(tmp_path):
    path = write_json(tmp_path / "train.json", {
        "a": {"duration": 10.0, "timestamps": [[0, 4], [3, 10.5], [6, 6], [8, 7]],
                "sentences": ["A man runs.", " He jumps.  ", " Nothing.", " Backwards."]},
        "b": {"duration": 5.0, "timestamps": [[1, 2]], "sentences": ["x"]},
    })
    s = read_anet_captions(path)
    a = s.videos["v_a"]
    assert [(q.start, q.end, q.text) for q in a.sentences] == [(0, 4, "A man runs."), (3, 10.0, "He jumps.")]
    assert "v_b" in s.videos and a.subset == "train"
    assert s.dropped == 2
    assert any("1 query end times" in n for n in s.notes)
    assert any("2 queries dropped because start >= end" in n for n in s.notes)


def test_captions_subset_from_original_file_names(tmp_path):
    content = {"v_a": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["x"]}}
    assert read_anet_captions(write_json(tmp_path / "val_1.json", content)).subsets == ["val"]
    assert read_anet_captions(write_json(tmp_path / "val_2.json", content)).subsets == ["test"]
    assert read_anet_captions(write_json(tmp_path / "train.json", content)).subsets == ["train"]


@pytest.mark.parametrize(
    "obj, where, says",
    [
        ([1], "top level", ("ActivityNet Captions",)),
        ({"v_a": {"duration": 3, "timestamps": [[0, 1]]}}, 'key ["v_a"]', ("'sentences'",)),
        ({"v_a": {"duration": 3, "timestamps": [[0, 1], [1, 2]], "sentences": ["x"]}}, 'key ["v_a"]', ("2 timestamps but 1 sentences",)),
        ({"v_a": {"duration": 3, "timestamps": [[0, 1, 2]], "sentences": ["x"]}}, 'key ["v_a"]["timestamps"][0]', ("[start, end]",)),
        ({"v_a": {"duration": 3, "timestamps": [[0, "b"]], "sentences": ["x"]}}, 'key ["v_a"]["timestamps"][0][1]', ("number",)),
        ({"v_a": {"duration": 3, "timestamps": [[-2, 1]], "sentences": ["x"]}}, 'key ["v_a"]["timestamps"][0][0]', (">= 0",)),
        ({"v_a": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["  "]}}, 'key ["v_a"]["sentences"][0]', ("non-empty sentence",)),
        ({"v_a": {"duration": 3, "timestamps": "0-1", "sentences": ["x"]}}, 'key ["v_a"]["timestamps"]', ("list",)),
        ({"v_a": 7}, 'key ["v_a"]', ("an object",)),
    ],
)
def test_captions_errors_name_the_key(tmp_path, obj, where, says):
    path = write_json(tmp_path / "val.json", obj)
    expect_error(read_anet_captions, path, where=where, says=says)


# --------------------------------------------------------------------------- TACoS
def test_tacos_converts_frames_to_seconds(tmp_path):
    path = write_json(tmp_path / "test.json", {
        "s13-d21.avi": {"timestamps": [[0, 30], [60, 400]], "sentences": ["cut", "wash"], "fps": 30.0, "num_frames": 300},
    })
    s = read_tacos(path)
    v = s.videos["s13-d21"]
    assert (v.filename, v.duration, v.fps, v.num_frames, v.subset) == ("s13-d21.avi", 10.0, 30.0, 300, "test")
    assert [(q.start, q.end) for q in v.sentences] == [(0.0, 1.0), (2.0, 10.0)]  # 400 frames clipped to 300


@pytest.mark.parametrize(
    "entry, where, says",
    [
        ({"timestamps": [[0, 3]], "sentences": ["x"], "fps": 30}, 'key ["s1.avi"]', ("'num_frames'",)),
        ({"timestamps": [[0, 3]], "sentences": ["x"], "fps": 0, "num_frames": 9}, 'key ["s1.avi"]["fps"]', ("> 0",)),
        ({"timestamps": [[0, 3]], "sentences": ["x"], "fps": 30, "num_frames": 9.5}, 'key ["s1.avi"]["num_frames"]', ("whole number",)),
        ({"timestamps": [[0, 3]], "sentences": ["x"], "fps": 30, "num_frames": 0}, 'key ["s1.avi"]["num_frames"]', ("> 0",)),
        ({"timestamps": [["a", 3]], "sentences": ["x"], "fps": 30, "num_frames": 9}, 'key ["s1.avi"]["timestamps"][0][0]', ("number",)),
    ],
)
def test_tacos_errors_name_the_key(tmp_path, entry, where, says):
    path = write_json(tmp_path / "train.json", {"s1.avi": entry})
    expect_error(read_tacos, path, where=where, says=says)


# --------------------------------------------------------------------------- Charades-STA
def charades_files(tmp_path: Path, lines: str, lengths: str = "id,subject,length\nAAA,x,10.0\nBBB,y,8.5\n"):
    txt = write(tmp_path / "charades_sta_train.txt", lines)
    write(tmp_path / "Charades_v1_train.csv", lengths)
    return txt


def test_charades_clips_to_length_and_drops_reversed_pairs(tmp_path):
    txt = charades_files(tmp_path, "AAA 0.0 4.5##a person opens a door.\nAAA 9.0 12.0##person sits down.\n"
                                   "BBB 8.6 9.9##after the end.\nBBB 3.0 2.0##reversed.\n\n")
    s = read_charades_sta(txt)  # lengths found beside the txt
    assert s.videos["AAA"].duration == 10.0 and s.videos["AAA"].filename == "AAA.mp4"
    assert [(q.start, q.end, q.text) for q in s.videos["AAA"].sentences] == [
        (0.0, 4.5, "a person opens a door."), (9.0, 10.0, "person sits down.")]
    assert s.videos["BBB"].sentences == []
    assert s.dropped == 2 and s.counts()["queries"] == 2
    assert any("2 query end times" in n for n in s.notes) and any("2 queries dropped" in n for n in s.notes)


@pytest.mark.parametrize(
    "lines, where, says",
    [
        ("AAA 0.0 4.5 a person opens a door.\n", "line 1", ("'VIDEO start end##sentence'",)),
        ("AAA 0.0 4.5##ok.\nAAA x 4.5##bad start.\n", "line 2", ("start", "'x'", "number")),
        ("AAA 0.0 4.5##ok.\n\nZZZ 0.0 1.0##unknown video.\n", "line 3", ("ZZZ", "no length")),
        ("AAA 0.0 4.5##   \n", "line 1", ("no sentence",)),
        ("AAA -1.0 4.5##negative.\n", "line 1", (">= 0",)),
    ],
)
def test_charades_errors_name_the_line(tmp_path, lines, where, says):
    txt = charades_files(tmp_path, lines)
    expect_error(read_charades_sta, txt, where=where, says=says)


def test_charades_length_file_errors(tmp_path):
    txt = charades_files(tmp_path, "AAA 0.0 4.5##ok.\n", lengths="id,subject\nAAA,x\n")
    err = expect_error(read_charades_sta, txt, where="line 1", says=("length",))
    assert err.path.endswith("Charades_v1_train.csv")
    txt = charades_files(tmp_path, "AAA 0.0 4.5##ok.\n", lengths="id,length\nAAA,long\n")
    expect_error(read_charades_sta, txt, where="line 2", says=("length", "number"))
    (tmp_path / "Charades_v1_train.csv").unlink()
    expect_error(read_charades_sta, txt, where="file", says=("Charades_v1_train.csv",))


# --------------------------------------------------------------------------- Kinetics-style csv
def test_kinetics_csv_names_clips_like_kinetics_tools(tmp_path):
    path = write(tmp_path / "trimmed.csv", "label,youtube_id,time_start,time_end,split,is_cc\n"
                                           "spinning square,abc123,4,14,train,0\nbouncing disc,q_x,0,6,val,0\n")
    s = read_kinetics_csv(path)
    v = s.videos["abc123_000004_000014"]
    assert (v.filename, v.duration, v.subset) == ("abc123_000004_000014.mp4", 10.0, "train")
    assert [(g.start, g.end, g.label) for g in v.segments] == [(0.0, 10.0, "spinning square")]
    assert s.classes == ["bouncing disc", "spinning square"]
    assert list(read_kinetics_csv(path, subset="val").videos) == ["q_x_000000_000006"]


@pytest.mark.parametrize(
    "rows, where, says",
    [
        ("a,b,1,3,train\n,b,1,3,train\n", "line 3", ("label is empty",)),
        ("a,b,1.5,3,train\n", "line 2", ("time_start", "whole number")),
        ("a,b,3,3,train\n", "line 2", ("positive length",)),
        ("a,b,1,3,holdout\n", "line 2", ("'holdout'", "train, val, test")),
        ("a,b,1,3,train\nc,b,1,3,train\n", "line 3", ("line 2", "once")),
    ],
)
def test_kinetics_csv_errors_name_the_line(tmp_path, rows, where, says):
    path = write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\n" + rows)
    expect_error(read_kinetics_csv, path, where=where, says=says)


# --------------------------------------------------------------------------- class splits
def test_class_split_reads_names_without_trailing_newline(tmp_path):
    path = write(tmp_path / "base.txt", "Beer pong, Kneeling,Tumbling")
    assert read_class_split(path) == ["Beer pong", "Kneeling", "Tumbling"]
    assert read_class_split(path, known_classes=["Beer pong", "Kneeling", "Tumbling", "Other"]) == ["Beer pong", "Kneeling", "Tumbling"]


def test_class_split_unknown_name_suggests_the_closest_known_class(tmp_path):
    path = write(tmp_path / "fs_val.txt", "Beer pong, Kneelling")
    err = expect_error(read_class_split, path, known_classes=["Beer pong", "Kneeling"], where="line 1",
                       says=("'Kneelling'", "not a known class", "'Kneeling'"))
    assert str(path) in str(err)


@pytest.mark.parametrize("text, says", [("A, , B", ("empty name",)), ("A, B, A", ("twice",))])
def test_class_split_malformed(tmp_path, text, says):
    expect_error(read_class_split, write(tmp_path / "c.txt", text), where="line 1", says=says)


def test_fewshot_split_must_be_disjoint(tmp_path):
    base = write(tmp_path / "base.txt", "A, B, C")
    val = write(tmp_path / "fs_val.txt", "D")
    test = write(tmp_path / "fs_test.txt", "E, B")
    err = expect_error(read_fewshot_split, base, val, test, where="class 'B'", says=("base.txt", "disjoint"))
    assert err.path == str(test)
    ok = read_fewshot_split(base, val, write(tmp_path / "fs_test.txt", "E"), known_classes="ABCDE")
    assert (ok.base, ok.val, ok.test) == (["A", "B", "C"], ["D"], ["E"])


# --------------------------------------------------------------------------- detection
def test_format_detection_from_content(tmp_path):
    cases = {
        "activitynet-json": write_json(tmp_path / "a.json", anet_database()),
        "anet-captions": write_json(tmp_path / "b.json", {"v_a": {"duration": 2, "timestamps": [], "sentences": []}}),
        "tacos": write_json(tmp_path / "c.json", {"s.avi": {"timestamps": [], "sentences": [], "fps": 1, "num_frames": 1}}),
        "tsp-csv": write(tmp_path / "d.csv", tsp_rows()),
        "kinetics-csv": write(tmp_path / "e.csv", "label,youtube_id,time_start,time_end,split\n"),
        "charades-sta": write(tmp_path / "f.txt", "AAA 0.0 1.0##x\n"),
        "class-split": write(tmp_path / "g.txt", "A, B"),
    }
    for fmt, path in cases.items():
        assert detect_format(path) == fmt, path


def test_format_detection_fails_clearly(tmp_path):
    expect_error(detect_format, write(tmp_path / "m.csv", "filename,fps\nx,1\n"), where="file",
                 says=("'filename,fps'", "matches no known annotation format", "TSP csv"))
    expect_error(detect_format, write_json(tmp_path / "m.json", {"a": 1}), where="file", says=("no known annotation format",))
    expect_error(detect_format, write(tmp_path / "Charades_v1_test.csv", "id,length\nA,1\n"), where="file", says=("video-length",))


# --------------------------------------------------------------------------- datasets
def test_load_dataset_merges_files_of_one_format(tmp_path):
    write(tmp_path / "anet_train_tsp.csv", tsp_rows("a,0,1,Run,2,v_a.mp4,30,60,Action"))
    write(tmp_path / "anet_valid_tsp.csv", tsp_rows("b,0,1,Jump,3,v_b.mp4,30,90,Action"))
    cfg = DatasetConfig(format="tsp-csv", annotations=["anet_train_tsp.csv", "anet_valid_tsp.csv"])
    s = load_dataset(cfg, "activitynet", root=tmp_path)
    assert {v: s.videos[v].subset for v in s.videos} == {"v_a": "training", "v_b": "validation"}
    assert s.classes == ["Jump", "Run"]
    auto = load_dataset(DatasetConfig(annotations=cfg.annotations), root=tmp_path)  # format detected
    assert auto.format == "tsp-csv" and len(auto.videos) == 2
    assert list(load_dataset(cfg, root=tmp_path, subset="validation").videos) == ["v_b"]


def test_merging_conflicting_durations_names_both_files(tmp_path):
    write(tmp_path / "part1_train_tsp.csv", tsp_rows("a,0,1,Run,2,v_a.mp4,30,60,Action"))
    write(tmp_path / "part2_train_tsp.csv", tsp_rows("a,1,2,Run,2.5,v_a.mp4,30,75,Action"))
    err = expect_error(read_annotations, [tmp_path / "part1_train_tsp.csv", tmp_path / "part2_train_tsp.csv"],
                       where="video v_a", says=("2.5", "part1_train_tsp.csv", "one duration"))
    assert err.path.endswith("part2_train_tsp.csv")


def test_merging_a_video_in_two_subsets_asks_for_one_subset(tmp_path):
    content = {"v_a": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["x"]}}
    write_json(tmp_path / "val.json", content)
    write_json(tmp_path / "test.json", content)
    expect_error(read_annotations, tmp_path, where="video v_a", says=("subset=",))
    assert read_annotations(tmp_path, subset="test").subsets == ["test"]


# A damaged file in a folder sniffs as no format, as a side file does; it must not vanish with its subset.
def _charades_folder(folder: Path, test_line_1: str) -> None:
    write(folder / "charades_sta_train.txt", "AAA 0.0 5.0##x.\n")
    write(folder / "charades_sta_test.txt", test_line_1 + "\nBBB 1.0 2.0##z.\n")
    write(folder / "Charades_v1_train.csv", "id,length\nAAA,10\n")
    write(folder / "Charades_v1_test.csv", "id,length\nBBB,5\n")


def _tsp_folder(folder: Path, test_header: str) -> None:
    write(folder / "thumos14_valid_tsp_groundtruth.csv", tsp_rows("video_validation_1,0,2,Run,9,video_validation_1.mp4,30,270,Action"))
    write(folder / "thumos14_test_tsp_groundtruth.csv",
          test_header + "\nvideo_test_1,0,2,Run,9,video_test_1.mp4,30,270,Action\n")


@pytest.mark.parametrize(
    "make, where, says",
    [
        (lambda d: _charades_folder(d, "BBB 1.0##y."), "line 1", ("'BBB 1.0##y.'", "VIDEO start end##sentence")),
        (lambda d: _charades_folder(d, "BBB 1.0 2.0 y."), "line 1", ("VIDEO start end##sentence",)),  # named like the train txt
        (lambda d: _tsp_folder(d, TSP_HEADER.replace("t-end", "t_end")), "line 1", ("lacks column(s) t-end",)),
        (lambda d: _tsp_folder(d, "garbage"), "line 1", ("lacks column(s)",)),  # named like the valid csv
        (lambda d: (write_json(d / "train.json", {"v_a": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["x"]}}),
                    write_json(d / "val_1.json", {"v_b": {"timestamps": [[0, 1]], "sentences": ["y"]}})),
         'key ["v_b"]', ("'duration'",)),  # carries the Captions marks
    ],
    ids=["charades-line-1", "charades-named-like", "tsp-renamed-column", "tsp-named-like", "captions-first-entry"],
)
def test_a_damaged_file_in_a_folder_is_read_and_its_line_named(tmp_path, make, where, says):
    make(tmp_path)
    err = expect_error(read_annotations, tmp_path, where=where, says=says)
    assert Path(err.path).name in ("charades_sta_test.txt", "thumos14_test_tsp_groundtruth.csv", "val_1.json")


def test_a_damaged_file_given_explicitly_is_read_and_its_line_named(tmp_path):
    _charades_folder(tmp_path, "BBB 1.0##y.")
    err = expect_error(read_annotations, tmp_path / "charades_sta_test.txt", where="line 1", says=("VIDEO start end##sentence",))
    assert "no known annotation format" not in str(err)



def _charades_without_separator(folder: Path, lines: str, given: str) -> list:
    """Charades-STA files whose ``charades_test_queries.txt`` holds ``lines`` (named unlike the train txt, so
    only its content can tell it is one), and what ``given`` passes to the reader."""
    damaged = write(folder / "charades_test_queries.txt", lines)
    write(folder / "Charades_v1_test.csv", "id,length\nBBB,5\n")
    if given != "folder-of-one":
        write(folder / "charades_sta_train.txt", "AAA 0.0 5.0##x.\n")
        write(folder / "Charades_v1_train.csv", "id,length\nAAA,10\n")
    return [damaged] if given == "file" else [folder]


@pytest.mark.parametrize("given", ["folder", "file", "folder-of-one"])
@pytest.mark.parametrize("first_line", ["BBB 1.0 2.0 y.", "BBB 1 2 y."], ids=["decimal-times", "whole-second-times"])
def test_a_charades_first_line_without_its_separator_is_named(tmp_path, first_line, given):
    # Before, such a file matched no format (decimal times: ignored in a folder, "matches no known
    # annotation format" given alone) or a class split (whole seconds: "several formats" beside the
    # train txt, a class list given alone).
    paths = _charades_without_separator(tmp_path, first_line + "\nBBB 2.0 3.0##z.\n", given)
    err = expect_error(read_annotations, paths, where="line 1",
                       says=("'##' between the times and the sentence", "'VIDEO start end##sentence'"))
    assert Path(err.path).name == "charades_test_queries.txt"


def test_a_charades_line_without_its_separator_further_down_is_named(tmp_path):
    paths = _charades_without_separator(tmp_path, "BBB 1.0 2.0##y.\nBBB 2.0 3.0 z.\n", "folder")
    err = expect_error(read_annotations, paths, where="line 2", says=("'##' between the times and the sentence",))
    assert Path(err.path).name == "charades_test_queries.txt"


def test_a_txt_of_no_format_still_gets_the_format_explanation(tmp_path):
    expect_error(read_annotations, write(tmp_path / "m.txt", "measured in 1.5 2.5 s\n"), where="file",
                 says=("matches no known annotation format", "Charades-STA txt"))

def test_side_files_beside_annotations_are_still_ignored(tmp_path):
    _tsp_folder(tmp_path, TSP_HEADER)
    write(tmp_path / "thumos14_test_metadata.csv", "filename,video-duration,fps,video-frames\nvideo_test_1.mp4,9,30,270\n")
    write(tmp_path / "gtad_video_info_new.csv", "video,numFrame,seconds,fps,rfps,subset,featureFrame\nv_a,1,1,30,30,training,1\n")
    write_json(tmp_path / "thumos14_action_label_mapping.json", ["Run"])
    s = read_annotations(tmp_path)
    assert sorted(s.videos) == ["video_test_1", "video_validation_1"]



@pytest.mark.parametrize("readme", ["README.txt", "readme.txt", "ReadMe.TXT"])
def test_a_folders_readme_is_not_read(tmp_path, readme):
    # Prose sniffs as a class split: beside Charades-STA or TSP files it made the folder "hold several
    # formats", beside class splits it added its lines as classes.
    _charades_folder(tmp_path / "charades", "BBB 1.0 2.0##y.")
    _tsp_folder(tmp_path / "thumos14", TSP_HEADER)
    write(tmp_path / "splits" / "base.txt", "Run, Jump")
    write(tmp_path / "splits" / "test.txt", "Swim")
    for folder in ("charades", "thumos14", "splits"):
        write(tmp_path / folder / readme, "Annotation files as published.\nSee the source table.\n")
    assert sorted(read_annotations(tmp_path / "charades").videos) == ["AAA", "BBB"]
    assert sorted(read_annotations(tmp_path / "thumos14").videos) == ["video_test_1", "video_validation_1"]
    assert read_annotations(tmp_path / "splits").classes == ["Jump", "Run", "Swim"]

def test_load_dataset_charades_lengths_and_fewshot_split_from_extra(tmp_path):
    write(tmp_path / "sta" / "charades_sta_train.txt", "AAA 0.0 12.0##x.\n")
    write(tmp_path / "sta" / "charades_sta_test.txt", "BBB 1.0 2.0##y.\n")
    write(tmp_path / "len" / "Charades_v1_train.csv", "id,length\nAAA,10\n")
    write(tmp_path / "len" / "Charades_v1_test.csv", "id,length\nBBB,5\n")
    cfg = DatasetConfig(format="charades-sta", annotations=["sta/charades_sta_train.txt", "sta/charades_sta_test.txt"],
                        extra={"lengths_train": "len/Charades_v1_train.csv", "lengths_test": "len/Charades_v1_test.csv"})
    s = load_dataset(cfg, "charades-sta", root=tmp_path)
    assert s.videos["AAA"].sentences[0].end == 10.0 and s.videos["BBB"].subset == "test"

    write(tmp_path / "fs" / "base.txt", "A, B")
    write(tmp_path / "fs" / "fs_val.txt", "C")
    write(tmp_path / "fs" / "fs_test.txt", "D")
    write_json(tmp_path / "fs" / "known.json", ["A", "B", "C", "D", "E"])
    cfg = DatasetConfig(format="class-split", extra={"base": "fs/base.txt", "val": "fs/fs_val.txt", "test": "fs/fs_test.txt",
                                                     "known": "fs/known.json"})
    split = load_dataset(cfg, "fewshot-split", root=tmp_path)
    assert split.classes == ["A", "B", "C", "D"]
    write_json(tmp_path / "fs" / "known.json", ["A", "B", "C"])
    expect_error(load_dataset, cfg, root=tmp_path, where="line 1", says=("'D'", "not a known class"))


def test_attach_captions_copies_sentences_by_id(tmp_path):
    videos = read_tsp_csv(write(tmp_path / "anet_train.csv", tsp_rows(
        "a,0,4,Run,4,v_a.mp4,30,120,Action", "b,0,2,Jump,2,v_b.mp4,30,60,Action")))
    captions = read_anet_captions(write_json(tmp_path / "train.json", {
        "v_a": {"duration": 4.02, "timestamps": [[0, 1], [2, 4.02]], "sentences": ["one", "two"]},
        "v_zzz": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["other"]},
    }))
    joined = attach_captions(videos, captions)
    assert [(q.start, q.end, q.text) for q in joined.videos["v_a"].sentences] == [(0, 1, "one"), (2, 4.0, "two")]
    assert joined.videos["v_b"].sentences == [] and videos.videos["v_a"].sentences == []  # input untouched
    assert any("1 of 2 videos captioned" in n for n in joined.notes)


def test_attach_captions_counts_clipped_and_dropped_captions(tmp_path):
    videos = read_tsp_csv(write(tmp_path / "anet_train.csv", tsp_rows("a,0,4,Run,4,v_a.mp4,30,120,Action")))
    captions = read_anet_captions(write_json(tmp_path / "train.json", {
        "v_a": {"duration": 5, "timestamps": [[0, 1], [2, 4.5], [4.2, 5]], "sentences": ["kept", "clipped", "empty once clipped"]},
    }))
    joined = attach_captions(videos, captions)
    assert [q.text for q in joined.videos["v_a"].sentences] == ["kept", "clipped"]
    assert joined.dropped == 1
    assert any("1 captions dropped because start >= end" in n for n in joined.notes), joined.notes
    assert any("2 caption end times past the video's duration" in n for n in joined.notes), joined.notes



def test_attach_captions_counts_the_captions_it_clips_and_drops_per_video_and_subset(tmp_path):
    # a and b in training, v in validation, all 4 s long; Captions gives them longer durations.
    videos = read_annotations([
        write(tmp_path / "anet_train.csv", tsp_rows("a,0,4,Run,4,v_a.mp4,30,120,Action", "b,0,4,Jump,4,v_b.mp4,30,120,Action")),
        write(tmp_path / "anet_valid.csv", tsp_rows("v,0,4,Run,4,v_v.mp4,30,120,Action")),
    ])
    captions = read_anet_captions(write_json(tmp_path / "train.json", {
        "v_a": {"duration": 6, "timestamps": [[0, 1], [2, 4.5], [4.2, 5], [4.5, 6]], "sentences": ["kept", "clipped", "gone", "gone too"]},
        "v_b": {"duration": 6, "timestamps": [[0, 1]], "sentences": ["kept"]},
        "v_v": {"duration": 6, "timestamps": [[1, 5]], "sentences": ["clipped"]},
    }))
    assert captions.dropped == 0 and captions.notes == []
    joined = attach_captions(videos, captions)
    assert joined.dropped == 2
    source = str(tmp_path / "train.json")
    clipped = f"captions of training videos from {source}: 3 caption end times past the video's duration in this set clipped to it"
    gone = f"captions of training videos from {source}: 2 captions dropped because start >= end after clipping to the video's duration in this set"
    clipped_v = f"captions of validation videos from {source}: 1 caption end times past the video's duration in this set clipped to it"
    assert [n for n in joined.notes if n.startswith("captions of ")] == [clipped, gone, clipped_v]
    # Which videos lost captions, and how many, as the readers' notes keep them.
    tallies = {t.text: t.per_video for own in joined.subset_notes.values() for t in own.tallies}
    assert tallies == {clipped: (("v_a", 3),), gone: (("v_a", 2),), clipped_v: (("v_v", 1),)}
    # Each subset and each class restriction counts the captions of its own videos only.
    training, validation = joined.subset("training"), joined.subset("validation")
    assert training.dropped == 2 and [n for n in training.notes if n.startswith("captions of ")] == [clipped, gone]
    assert validation.dropped == 0 and [n for n in validation.notes if n.startswith("captions of ")] == [clipped_v]
    jump = joined.restrict_classes(["Jump"])
    assert jump.dropped == 0 and not [n for n in jump.notes if n.startswith("captions of ")]


def test_attach_captions_carries_the_caption_readers_drops_and_notes_of_its_videos_only(tmp_path):
    # a (Run) and b (Jump) in training, v in validation; the caption file also has c, not in the set.
    videos = read_annotations([
        write(tmp_path / "anet_train.csv", tsp_rows("a,0,9,Run,10,v_a.mp4,30,300,Action", "b,0,9,Jump,10,v_b.mp4,30,300,Action")),
        write(tmp_path / "anet_valid.csv", tsp_rows("v,0,9,Run,10,v_v.mp4,30,300,Action")),
    ])
    assert videos.dropped == 0 and videos.notes == []
    captions = read_anet_captions(write_json(tmp_path / "train.json", {
        "v_a": {"duration": 10, "timestamps": [[0, 1], [3, 2], [4, 3]], "sentences": ["kept", "reversed", "reversed too"]},
        "v_b": {"duration": 10, "timestamps": [[0, 1], [2, 11]], "sentences": ["kept", "clipped by the reader"]},
        "v_v": {"duration": 10, "timestamps": [[5, 5]], "sentences": ["empty"]},
        "v_c": {"duration": 10, "timestamps": [[2, 1], [3, 1]], "sentences": ["reversed", "reversed"]},
    }))
    assert captions.dropped == 5
    joined = attach_captions(videos, captions)
    assert joined.dropped == 3  # a's two and v's one; c's two concern no video of the set
    own = [n for n in joined.notes if n.startswith("captions of ")]
    assert own == [
        "captions of training videos from train.json: 1 query end times past the video duration clipped to it",
        "captions of training videos from train.json: 2 queries dropped because start >= end after clipping",
        "captions of validation videos from train.json: 1 queries dropped because start >= end after clipping",
    ]
    # Each subset, and each class restriction, counts the caption reader's notes of its own videos.
    training = joined.subset("training")
    assert training.dropped == 2 and [n for n in training.notes if n.startswith("captions of ")] == own[:2]
    validation = joined.subset("validation")
    assert validation.dropped == 1 and [n for n in validation.notes if n.startswith("captions of ")] == own[2:]
    jump = joined.restrict_classes(["Jump"])
    assert jump.dropped == 0 and [n for n in jump.notes if n.startswith("captions of ")] == own[:1]


# --------------------------------------------------------------------------- a subset's drops and notes
def test_a_subset_keeps_only_its_own_drops_and_notes(tmp_path):
    train = write(tmp_path / "charades_sta_train.txt", "AAA 0.0 4.5##kept.\nAAA 9.0 12.0##clipped.\nAAA 3.0 2.0##reversed.\n")
    test = write(tmp_path / "charades_sta_test.txt", "BBB 0.0 4.0##kept.\n")
    write(tmp_path / "Charades_v1_train.csv", "id,length\nAAA,10\n")
    write(tmp_path / "Charades_v1_test.csv", "id,length\nBBB,5\n")
    both, train_alone, test_alone = read_annotations(tmp_path), read_charades_sta(train), read_charades_sta(test)
    assert train_alone.dropped and train_alone.notes  # the train file's drop and notes are what the test subset must not carry
    for part, alone in ((both.subset("train"), train_alone), (both.subset("test"), test_alone)):
        assert (part.dropped, part.notes) == (alone.dropped, alone.notes)
    assert both.subset("train", "test").notes == both.notes

    # ActivityNet JSON holds every subset in one file: each keeps the note on its own segments.
    anet = read_activitynet_json(write_json(tmp_path / "anet.json", anet_database(
        a={"subset": "training", "duration": 5.0, "annotations": [{"segment": [1.0, 6.0], "label": "Run"}]},
        b={"subset": "validation", "duration": 5.0, "annotations": [{"segment": [1.0, 2.0], "label": "Run"}]},
    )))
    assert anet.notes and anet.subset("validation").notes == []
    assert anet.subset("training").notes == anet.notes


def test_class_restriction_and_joins_keep_the_notes_of_the_subsets_left(tmp_path):
    write(tmp_path / "anet_train_tsp.csv", tsp_rows("a,0,6,Run,5,v_a.mp4,30,150,Action"))  # ends after the video
    write(tmp_path / "anet_valid_tsp.csv", tsp_rows("b,0,1,Jump,3,v_b.mp4,30,90,Action"))
    both = read_annotations(tmp_path)
    assert both.notes
    assert both.restrict_classes(["Jump"]).notes == []  # no training video left
    assert both.restrict_classes(["Run"]).notes == both.notes
    captions = read_anet_captions(write_json(tmp_path / "captions" / "train.json", {
        "v_a": {"duration": 5, "timestamps": [[0, 1]], "sentences": ["one"]}}))
    joined = attach_captions(both, captions)
    caption_notes = [n for n in joined.notes if n not in both.notes]
    assert caption_notes and joined.subset("validation").notes == caption_notes  # the join's notes are the whole set's
    profile = load_profile("smoke", {"check": {"problems_file": str(write(
        tmp_path / "problems.csv", "video,dataset,problem,detail\nv_b,activitynet,missing,x\n"))}})
    checked = drop_problem_videos(profile, "activitynet", both, "test")
    assert checked.subset("validation").notes == [n for n in checked.notes if n not in both.notes]

def test_class_restriction_counts_the_notes_of_the_videos_it_keeps_only(tmp_path):
    # Two training videos whose actions end after the video: a (Run, twice) and c (Jump, once).
    both = read_annotations(write(tmp_path / "train" / "anet_train_tsp.csv", tsp_rows(
        "a,0,6,Run,5,v_a.mp4,30,150,Action", "a,1,7,Run,5,v_a.mp4,30,150,Action",
        "c,0,4,Jump,3,v_c.mp4,30,90,Action")).parent)
    assert both.notes == ["anet_train_tsp.csv: 3 segments end after their video's duration "
                          "(kept as given; clip sampling cuts them at it)"]
    run = both.restrict_classes(["Run"])
    assert run.notes == [both.notes[0].replace(": 3 ", ": 2 ")]
    assert run.subset("training").notes == run.notes
    assert both.restrict_classes(["Jump"]).notes == [both.notes[0].replace(": 3 ", ": 1 ")]
    assert both.restrict_classes(["Run", "Jump"]).notes == both.notes

    # ActivityNet JSON: one note per subset, each counted over the videos kept.
    anet = read_activitynet_json(write_json(tmp_path / "anet.json", anet_database(
        a={"subset": "training", "duration": 5.0, "annotations": [{"segment": [1.0, 6.0], "label": "Run"}]},
        c={"subset": "training", "duration": 5.0, "annotations": [{"segment": [1.0, 6.0], "label": "Jump"},
                                                                  {"segment": [2.0, 7.0], "label": "Jump"}]},
        b={"subset": "validation", "duration": 5.0, "annotations": [{"segment": [1.0, 6.0], "label": "Run"}]},
    )))
    assert [n.split(": ")[1][:13] for n in anet.notes] == ["3 training se", "1 validation "]
    assert [n.split(": ")[1][:13] for n in anet.restrict_classes(["Run"]).notes] == ["1 training se", "1 validation "]
    assert [n.split(": ")[1][:13] for n in anet.restrict_classes(["Jump"]).notes] == ["2 training se"]


def test_class_restriction_takes_a_dropping_notes_videos_out_of_the_drop_count():
    from clap_bench.data import AnnotationSet, Segment, SubsetNotes, Video, VideoTally

    videos = {v: Video(v, 10.0, "train", segments=[Segment(0.0, 1.0, label)]) for v, label in (("a", "Run"), ("b", "Jump"))}
    tally = VideoTally("f.txt: ", " queries dropped", (("a", 2), ("b", 3)), dropped=True)
    whole = AnnotationSet("x", "f.txt", videos, ["Jump", "Run"], 5 + 1, [tally.text, "a note of the whole set"],
                          subset_notes={"train": SubsetNotes(5, (tally.text,), (tally,))})
    run = whole.restrict_classes(["Run"])
    assert (run.dropped, run.notes) == (3, ["f.txt: 2 queries dropped", "a note of the whole set"])
    assert run.subset_notes["train"] == SubsetNotes(2, ("f.txt: 2 queries dropped",), (tally.of({"a"}),))
    none_of_them = whole.restrict_classes([])
    assert (none_of_them.dropped, none_of_them.notes) == (1, ["a note of the whole set"])


# --------------------------------------------------------------------------- CLI
def test_inspect_cli_prints_counts_and_reports_broken_files(tmp_path):
    good = write(tmp_path / "thumos14_valid_tsp.csv", tsp_rows(
        "video_validation_1,0,2,,9,video_validation_1.mp4,30,270,No action",
        "video_validation_1,2,5,Billiards,9,video_validation_1.mp4,30,270,Action"))
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(good), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert (counts["format"], counts["videos"], counts["segments"], counts["actions"], counts["classes"]) == ("tsp-csv", 1, 2, 1, 1)
    table = runner.invoke(app, ["data", "inspect", str(good)])
    assert table.exit_code == 0 and "validation" in table.stdout and "tsp-csv" in table.stdout

    broken = write(tmp_path / "thumos14_test_tsp.csv", tsp_rows("video_test_1,0,x,Run,9,video_test_1.mp4,30,270,Action"))
    result = runner.invoke(app, ["data", "inspect", str(broken), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert (error["path"], error["where"]) == (str(broken), "line 2") and "t-end" in error["problem"]
    assert "line 2" in result.stderr
    bad_format = runner.invoke(app, ["data", "inspect", str(good), "--format", "nope"])
    assert bad_format.exit_code != 0


def test_write_activitynet_json_spells_subsets_as_activitynet(tmp_path):
    trimmed = read_kinetics_csv(write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\nRun,a,0,5,val\n"))
    out = tmp_path / "gt.json"
    write_activitynet_json(trimmed, out)
    back = read_activitynet_json(out)
    assert list(back.videos) == ["a_000000_000005"]  # the ids written
    assert back.videos["a_000000_000005"].subset == "validation"
    assert back.videos["a_000000_000005"].segments == trimmed.videos["a_000000_000005"].segments
