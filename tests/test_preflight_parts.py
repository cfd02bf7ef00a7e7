"""Parts of ``clapbench preflight`` that run in seconds: stand-in videos, cut annotations, the projection's arithmetic."""

from __future__ import annotations

import math

import pytest

from clap_bench.clips.decode import probe_video
from clap_bench.config import ConfigError, load_profile
from clap_bench.data.schema import AnnotationSet, Segment, Sentence, Video
from clap_bench.preflight import Measure, PreflightData, capped, dataset_sizes, project, write_stand_in
from clap_bench.runs.slurm import ClusterProfile


def test_a_stand_in_lasts_the_asked_duration_at_the_asked_rate_and_size(tmp_path):
    write_stand_in(tmp_path / "v.mp4", 2.5, 30.0, [72, 128])
    info = probe_video(tmp_path / "v.mp4")
    assert info.duration == pytest.approx(2.5, abs=0.05)
    assert (info.fps, info.width, info.height) == (30.0, 128, 72)


def test_a_capped_video_keeps_only_what_starts_before_the_cap_clipped_to_it():
    v = Video("v_a", 100.0, "training", segments=[Segment(1, 5, "a"), Segment(3, 12, "b"), Segment(20, 30, "c")],
              sentences=[Sentence(0, 9, "x"), Sentence(50, 60, "y")])
    c = capped(v, 8.0)
    assert c.duration == 8.0
    assert [(s.start, s.end, s.label) for s in c.segments] == [(1, 5, "a"), (3, 8.0, "b")]
    assert [(s.start, s.end) for s in c.sentences] == [(0, 8.0)]
    assert capped(v, None) is v and capped(v, 200.0) is v


def _measures(rate: float = 2.0):
    names = {"pretrain clap": "clips", "extract activitynet": "clips", "extract charades-sta": "clips", "extract tacos": "clips",
             "G-TAD training (tal)": "videos", "G-TAD inference (tal)": "videos", "QAT meta-training (fstal)": "episodes",
             "QAT test episodes (fstal)": "episodes", "2D-TAN training (charades-sta)": "queries",
             "2D-TAN inference (charades-sta)": "queries", "2D-TAN training (tacos)": "queries", "2D-TAN inference (tacos)": "queries"}
    out = {n: Measure(n, u, units=rate * 10, seconds=10.0) for n, u in names.items()}
    for k in ("activitynet", "charades-sta", "tacos"):
        out[f"extract {k}"].extra.update(file_bytes=int(20 * 512 * 4 * 1.5), feature_dim=512)
    out["pretrain clap"].extra["checkpoint_bytes"] = 1000
    return out


def _sizes():
    seg = {"foreground": 300, "all": 500, "videos": 100, "videos_with_actions": 90}
    base = {"foreground": 200, "all": 400, "videos": 80, "videos_with_actions": 70}
    return {
        "activitynet": {"videos": 150, "extraction_clips": 10000, "train_segments": seg, "base_train_segments": base,
                        "validation_videos": 50},
        "charades-sta": {"videos": 60, "extraction_clips": 2000, "train_queries": 400, "test_queries": 100},
        "tacos": {"videos": 10, "extraction_clips": 3000, "train_queries": 300, "test_queries": 50},
        "trimmed": {"videos": 130, "train_videos": 120},  # the source model's (encoder.weights: source)
    }


def test_the_projection_counts_the_real_epochs_and_divides_pre_training_over_the_cluster_processes():
    profile = load_profile("paper")
    cluster = ClusterProfile(tasks_per_node=1, stages={"pretrain": {"nodes": 2, "tasks_per_node": 4}})
    p = project(profile, _sizes(), _measures(rate=2.0), ["clap"], seeds=3, cluster=cluster)
    rows = {r["stage"]: r for r in p["stages"]}
    # 8 epochs x 500 segments x 5 clips at 2 clips/s per process, over 2 x 4 processes
    assert rows["pretrain"]["work"] == 8 * 500 * 5 and rows["pretrain"]["processes"] == 8
    assert rows["pretrain"]["hours"] == pytest.approx(8 * 500 * 5 / 2.0 / 8 / 3600)
    assert rows["pretrain-base"]["work"] == 8 * 400 * 5
    # G-TAD per video: 10 epochs x 90 training videos with actions; 2D-TAN per query: 100 epochs x 300 queries
    assert rows["tal: G-TAD training"]["work"] == 10 * 90
    assert rows["vlg: 2D-TAN training tacos"]["work"] == 100 * 300
    assert rows["extract-base-activitynet"]["work"] == 10000
    total = sum(r["hours"] for r in p["stages"])
    assert p["one_seed"]["clap"]["hours"] == pytest.approx(total)
    assert p["sweep"]["hours_if_serial"] == pytest.approx(3 * total)
    # features: clips x 512 values at the bytes per value measured (6 here); two checkpoints (all, base) per seed
    assert p["disk"]["feature_files_one_seed"]["tacos"] == math.floor(3000 * 512 * 6.0)
    assert p["disk"]["checkpoints_one_seed"] == 2000
    assert p["disk"]["sweep_bytes"] == 3 * p["disk"]["one_seed_bytes"]


def test_qat_selection_steps_are_before_training_every_select_every_steps_and_after_the_last():
    from clap_bench.downstream.qat.task import selection_steps

    assert selection_steps(250, 25) == [0] + list(range(25, 251, 25))
    assert selection_steps(7, 3) == [0, 3, 6, 7]
    assert selection_steps(1, 25) == [0, 1]


def test_the_projection_counts_the_qat_selections_that_meta_training_scores():
    profile = load_profile("paper")
    p = project(profile, _sizes(), _measures(), ["clap"], seeds=1, cluster=None)
    rows = {r["stage"]: r for r in p["stages"]}
    # 1000 episodes / 1 per step (fewshotQAT's) = 1000 steps, scored at 0, 100, ..., 1000: 11 selections of 100 episodes
    qat = profile.task_config("fstal")
    assert (qat.get("meta_episodes", 2000), qat.get("meta_batch", 8), qat.get("select_every", 25)) == (1000, 1, 100)
    assert rows["fstal: selection + test episodes"]["note"].startswith("11 selections x 100")
    assert rows["fstal: selection + test episodes"]["work"] == 11 * 100 + 10 * 100


def _fake_stages(monkeypatch, measures) -> list:
    """``run_preflight`` with its data and timed stages replaced by ``measures``; returns the list
    into which the pre-trainings, extractions and 2D-TAN trainings it asks for are recorded."""
    import clap_bench.preflight as pf

    asked = []
    monkeypatch.setattr(pf, "load_data", lambda *a, **k: PreflightData(full={}, picks={}, kinds={}, folders={}))
    for name in ("_kinetics_available", "_text_model_available", "_glove_available"):
        monkeypatch.setattr(pf, name, lambda *a, **k: True)
    monkeypatch.setattr(pf, "measure_pretrain", lambda profile, data, method, *a: asked.append(f"pretrain {method}")
                        or measures[f"pretrain {method}"])
    monkeypatch.setattr(pf, "measure_extraction", lambda profile, data, key, work: asked.append(f"extract {key}")
                        or measures[f"extract {key}"])
    monkeypatch.setattr(pf, "measure_gtad", lambda *a: [measures["G-TAD training (tal)"], measures["G-TAD inference (tal)"]])
    monkeypatch.setattr(pf, "measure_qat", lambda *a: [measures["QAT meta-training (fstal)"], measures["QAT test episodes (fstal)"]])
    monkeypatch.setattr(pf, "measure_tan", lambda profile, data, key, *a: asked.append(f"2D-TAN {key}")
                        or [measures[f"2D-TAN training ({key})"], measures[f"2D-TAN inference ({key})"]])
    monkeypatch.setattr(pf, "dataset_sizes", lambda *a: _sizes())
    return asked


def test_a_method_that_does_not_train_is_neither_timed_nor_projected(monkeypatch, tmp_path):
    import clap_bench.preflight as pf

    measures = _measures()
    asked = _fake_stages(monkeypatch, measures)
    report = pf.run_preflight(load_profile("paper"), ["none", "clap"], work_dir=tmp_path, cluster_path=None)
    assert [a for a in asked if a.startswith("pretrain")] == ["pretrain clap"]
    assert any("'none' does not train" in n for n in report["notes"])
    stages = report["projection"]["stages"]
    assert not [r for r in stages if r["method"] == "none"]
    assert [r["stage"] for r in stages if r["method"] == "clap"][:2] == ["pretrain", "pretrain-base"]
    only_none = project(load_profile("paper"), _sizes(), {k: v for k, v in measures.items() if k != "pretrain clap"},
                        ["none"], seeds=2, cluster=None)
    assert not [r for r in only_none["stages"] if r["stage"].startswith("pretrain")]


def test_global_video_features_count_once_per_initial_weights_not_per_method_and_seed():
    profile = load_profile("paper")  # every method starts from the Kinetics-400 weights
    measures = _measures()
    measures["pretrain tsp"] = Measure("pretrain tsp", "clips", units=20, seconds=10.0, extra={"checkpoint_bytes": 1000})
    p = project(profile, _sizes(), measures, ["tsp", "clap"], seeds=3, cluster=None)
    gvf = [r for r in p["stages"] if "GVF" in r["stage"]]
    gvf_hours = sum(r["hours"] for r in gvf)
    others = [r for r in p["stages"] if r not in gvf]
    tsp_seed = sum(r["hours"] for r in others if r["method"] in ("tsp", None))
    clap_seed = sum(r["hours"] for r in others if r["method"] in ("clap", None))
    assert p["sweep"]["hours_if_serial"] == pytest.approx(3 * (tsp_seed + clap_seed) + gvf_hours)
    assert p["one_seed"]["tsp"]["hours"] == pytest.approx(tsp_seed + gvf_hours)
    assert p["one_seed"]["clap"]["hours"] == pytest.approx(clap_seed)
    # one row per training-video list (all, base): 10000 clips x 100 (or 80) of the 150 videos
    assert [(r["stage"], r["work"], r["sweep_runs"]) for r in gvf] == [
        ("pretrain GVF", 10000 * 100 / 150, 1), ("pretrain-base GVF", 10000 * 80 / 150, 1)]
    assert "once for the sweep" in gvf[0]["note"]
    # with a source model per seed, once per seed
    profile.encoder.weights, profile.source_pretrain.per_seed = "source", True
    p = project(profile, _sizes(), measures, ["tsp", "clap"], seeds=3, cluster=None)
    assert [r["sweep_runs"] for r in p["stages"] if "GVF" in r["stage"]] == [3, 3]


def test_each_task_row_counts_every_head_of_tasks_head_seeds_per_dataset_where_given():
    one = {r["stage"]: r for r in project(load_profile("paper"), _sizes(), _measures(), ["clap"], seeds=1, cluster=None)["stages"]}
    profile = load_profile("paper")
    profile.tasks["tal"] = {**profile.tasks.get("tal", {}), "head_seeds": 5}
    profile.tasks["fstal"] = {**profile.tasks.get("fstal", {}), "head_seeds": 2}
    profile.tasks["vlg"] = {**profile.tasks.get("vlg", {}), "head_seeds": {"charades-sta": 3}}
    p = project(profile, _sizes(), _measures(), ["clap"], seeds=1, cluster=None)
    rows = {r["stage"]: r for r in p["stages"]}
    for stage, heads in (("tal: G-TAD training", 5), ("tal: G-TAD inference", 5), ("fstal: G-TAD on base classes", 2),
                         ("fstal: meta-training", 2), ("fstal: selection + test episodes", 2),
                         ("vlg: 2D-TAN training charades-sta", 3), ("vlg: 2D-TAN inference charades-sta", 3),
                         ("vlg: 2D-TAN training tacos", 1), ("vlg: 2D-TAN inference tacos", 1), ("pretrain", 1)):
        assert rows[stage]["work"] == heads * one[stage]["work"], stage
        assert rows[stage]["hours"] == pytest.approx(heads * one[stage]["hours"]), stage
        assert (f"x {heads} heads (tasks." in rows[stage]["note"]) == (heads > 1), stage
    assert p["one_seed"]["clap"]["hours"] == pytest.approx(sum(r["hours"] for r in p["stages"]))


def test_the_projection_adds_the_validation_passes_of_pre_training_and_of_2d_tan():
    profile = load_profile("paper")
    cluster = ClusterProfile(tasks_per_node=1, stages={"pretrain": {"nodes": 2, "tasks_per_node": 4}})
    sizes = _sizes()
    sizes["activitynet"]["val_segments"] = {"foreground": 60, "all": 110, "videos": 30, "videos_with_actions": 30}
    sizes["activitynet"]["base_val_segments"] = {"foreground": 20, "all": 35, "videos": 10, "videos_with_actions": 10}
    sizes["tacos"]["val_queries"] = 40
    sizes["charades-sta"]["val_queries"] = 0
    measures = _measures(rate=2.0)
    measures["extract activitynet"].units = 40.0  # 4 clips/s
    p = project(profile, sizes, measures, ["clap"], seeds=1, cluster=cluster)
    rows = {r["stage"]: r for r in p["stages"]}
    # 2D-TAN scores TACoS val after each of its 100 epochs, at the inference rate; Charades-STA has no val
    assert rows["vlg: 2D-TAN validation tacos"]["work"] == 100 * 40
    assert rows["vlg: 2D-TAN validation tacos"]["hours"] == pytest.approx(100 * 40 / 2.0 / 3600)
    assert "vlg: 2D-TAN validation charades-sta" not in rows
    # pre-training validates before the first of its 8 epochs and after each: 9 passes x 110 segments x 5
    # clips (clap trains on all regions), on one process at the extraction rate, the other 7 holding on
    val = rows["pretrain validation"]
    assert (val["work"], val["processes"]) == (9 * 110 * 5, 1)
    assert val["hours"] == pytest.approx(9 * 110 * 5 / 4.0 / 3600)
    assert val["process_hours"] == pytest.approx(8 * val["hours"])
    assert rows["pretrain-base validation"]["work"] == 9 * 35 * 5
    assert p["one_seed"]["clap"]["hours"] == pytest.approx(sum(r["hours"] for r in p["stages"]))
    # pretrain.val_max_segments and val_clips_per_segment shrink it; validate: false drops it
    profile.pretrain.val_max_segments, profile.pretrain.val_clips_per_segment = 50, 1
    rows = {r["stage"]: r for r in project(profile, sizes, measures, ["clap"], seeds=1, cluster=cluster)["stages"]}
    assert rows["pretrain validation"]["work"] == 9 * 50 * 1
    profile.pretrain.validate = False
    rows = {r["stage"]: r for r in project(profile, sizes, measures, ["clap"], seeds=1, cluster=cluster)["stages"]}
    assert "pretrain validation" not in rows and "vlg: 2D-TAN validation tacos" in rows


def test_global_video_features_of_the_validation_videos_are_projected_with_the_training_ones():
    profile = load_profile("paper")
    measures = _measures()
    measures["pretrain tsp"] = Measure("pretrain tsp", "clips", units=20, seconds=10.0, extra={"checkpoint_bytes": 1000})
    sizes = _sizes()
    sizes["activitynet"]["val_segments"] = {"foreground": 60, "all": 110, "videos": 30, "videos_with_actions": 30}
    rows = {r["stage"]: r for r in project(profile, sizes, measures, ["tsp"], seeds=1, cluster=None)["stages"]}
    assert rows["pretrain GVF"]["work"] == pytest.approx(10000 * (100 + 30) / 150)
    assert rows["pretrain-base GVF"]["work"] == pytest.approx(10000 * 80 / 150)  # no base validation counted here


def _ann(videos, classes=()) -> AnnotationSet:
    return AnnotationSet("test", "test", {v.id: v for v in videos}, list(classes), 0, [], False)


def _grounding(subsets) -> AnnotationSet:
    """Two videos per ``(subset, sentences per video)``."""
    return _ann([Video(f"g{s}{i}", 30.0, s, sentences=[Sentence(1.0, 5.0, "x")] * n) for s, n in subsets for i in range(2)])


def test_dataset_sizes_count_the_validation_segments_and_queries():
    def anet_video(i, subset, label):  # one action in the middle: background, action, background
        return Video(f"v{subset}{i}", 60.0, subset, segments=[Segment(20.0, 40.0, label)])

    anet = _ann([anet_video(i, "training", "a" if i % 2 else "b") for i in range(4)]
                + [anet_video(0, "validation", "a"), anet_video(1, "validation", "b"), anet_video(2, "validation", "b")], ["a", "b"])
    data = PreflightData(full={"activitynet": anet, "charades-sta": _grounding([("train", 2), ("test", 1)]),
                               "tacos": _grounding([("train", 3), ("val", 4), ("test", 1)])},
                         picks={}, kinds={}, folders={}, fewshot_base=["a"])
    sizes = dataset_sizes(load_profile("paper"), data)
    assert sizes["tacos"]["val_queries"] == 2 * 4 and sizes["charades-sta"]["val_queries"] == 0
    # three validation videos of three segments each (one action); base class "a": one video
    assert {k: sizes["activitynet"]["val_segments"][k] for k in ("foreground", "all", "videos")} == {"foreground": 3, "all": 9, "videos": 3}
    assert {k: sizes["activitynet"]["base_val_segments"][k] for k in ("foreground", "all", "videos")} == {"foreground": 1, "all": 3, "videos": 1}


def _plan_stage_counts(profile, methods, seeds: int) -> dict:
    """How many stages of each name ``build_plan`` runs for ``methods`` x ``seeds``."""
    from collections import Counter

    from clap_bench.runs.plan import build_plan

    return Counter(spec.name for spec in build_plan(profile, methods, list(range(seeds))))


def test_the_extractions_of_a_method_that_does_not_train_are_projected_as_often_as_the_plan_runs_them():
    measures = _measures()
    for per_seed_source in (False, True):  # one source model for every seed, or one per seed
        profile = load_profile("smoke")
        profile.source_pretrain.per_seed = per_seed_source
        plan_counts = _plan_stage_counts(profile, ["none", "clap"], seeds=3)
        p = project(profile, _sizes(), measures, ["none", "clap"], seeds=3, cluster=None)
        extract_rows = [r for r in p["stages"] if r["stage"].startswith("extract-")]
        assert {r["stage"] for r in extract_rows} == {name for name in plan_counts if name.startswith("extract-")}
        for row in extract_rows:
            assert row["sweep_runs"] == plan_counts[row["stage"]], (per_seed_source, row["stage"])
        # none reads one encoder's features for tal and fstal alike: no base-class extraction is its
        assert "none" not in next(r for r in extract_rows if r["stage"] == "extract-base-activitynet")["methods"]
        # the sweep's disk: a feature file per extraction stage of the plan, a checkpoint per pre-training stage
        features = p["disk"]["feature_files_one_seed"]
        checkpoint = measures["pretrain clap"].extra["checkpoint_bytes"]
        expected = sum(features[name[len("extract-"):]] * n for name, n in plan_counts.items() if name.startswith("extract-"))
        expected += checkpoint * (plan_counts["pretrain"] + plan_counts["pretrain-base"])
        assert p["disk"]["sweep_bytes"] == expected, per_seed_source


def test_only_the_grounding_sets_of_tasks_vlg_datasets_are_timed_and_projected(monkeypatch, tmp_path):
    import clap_bench.preflight as pf

    profile = load_profile("smoke")
    profile.tasks["vlg"] = {**profile.tasks.get("vlg", {}), "datasets": ["charades-sta"]}
    plan_counts = _plan_stage_counts(profile, ["clap"], seeds=1)
    p = project(profile, _sizes(), _measures(), ["clap"], seeds=1, cluster=None)
    rows = {r["stage"]: r for r in p["stages"]}
    assert {s for s in rows if s.startswith("extract-")} == {s for s in plan_counts if s.startswith("extract-")}
    assert [s for s in rows if s.startswith("vlg:")] == ["vlg: 2D-TAN training charades-sta", "vlg: 2D-TAN inference charades-sta"]
    assert "tacos" not in p["disk"]["feature_files_one_seed"]
    assert p["one_seed"]["clap"]["hours"] == pytest.approx(sum(r["hours"] for r in p["stages"]))
    # the preflight counts and times only what the run does
    anet = _ann([Video("v_a", 60.0, "training", segments=[Segment(20.0, 40.0, "a")])], ["a"])
    data = PreflightData(full={"activitynet": anet, "charades-sta": _grounding([("train", 2), ("test", 1)])},
                         picks={}, kinds={}, folders={})
    assert set(dataset_sizes(profile, data)) == {"activitynet", "charades-sta"}
    asked = _fake_stages(monkeypatch, _measures())
    report = pf.run_preflight(profile, ["clap"], seeds=1, work_dir=tmp_path, cluster_path=None)
    assert not [a for a in asked if "tacos" in a] and "2D-TAN charades-sta" in asked
    assert not [r for r in report["projection"]["stages"] if "tacos" in r["stage"]]
    # a grounding set the task does not know: the key and the known ones
    profile.tasks["vlg"]["datasets"] = ["charades"]
    with pytest.raises(ConfigError, match=r"tasks\.vlg\.datasets.*'charades'.*charades-sta, tacos"):
        project(profile, _sizes(), _measures(), ["clap"], seeds=1, cluster=None)


def test_segment_counts_are_those_pre_training_samples_with_pretrain_short_segments(tmp_path):
    from clap_bench.clips import SegmentClipDataset
    from clap_bench.training.pretrain import short_segment_limits, validation_annotations

    def video(vid, subset):  # a 0.5 s action and a 0.5 s gap before a 10 s action: shorter than the smoke profile's 1 s clip
        return Video(vid, 30.0, subset, segments=[Segment(5.0, 5.5, "a"), Segment(6.0, 16.0, "b")])

    anet = _ann([video("v_t0", "training"), video("v_t1", "training"), video("v_v0", "validation")], ["a", "b"])
    data = PreflightData(full={"activitynet": anet, "charades-sta": _grounding([("train", 1), ("test", 1)]),
                               "tacos": _grounding([("train", 1), ("val", 1), ("test", 1)])}, picks={}, kinds={}, folders={})
    train = anet.subset("training")
    held_out = validation_annotations(anet, train.classes)
    sampled = {}
    for short_segments in ("keep", "drop"):
        profile = load_profile("smoke")
        profile.pretrain.short_segments = short_segments
        sizes = dataset_sizes(profile, data)["activitynet"]
        for key, ann, is_train in (("train_segments", train, True), ("val_segments", held_out, False)):
            for regions in ("foreground", "all"):  # the segments a method of those regions samples, as pretrain() builds them
                run = SegmentClipDataset(ann, tmp_path, profile.clips, train=is_train, regions=regions, classes=train.classes,
                                         **short_segment_limits(profile.pretrain, profile.clips))
                assert sizes[key][regions] == len(run), (short_segments, key, regions)
                sampled[short_segments, key, regions] = len(run)
    assert all(sampled["drop", key, regions] < sampled["keep", key, regions]
               for key in ("train_segments", "val_segments") for regions in ("foreground", "all"))


def test_a_profile_starting_from_the_source_model_is_timed_from_random_weights_and_says_so(tmp_path):
    # The synthetic profiles pre-train from `encoder.weights: source`, which the preflight's own
    # annotation set cannot train; the step costs the same from any weights.
    from clap_bench.commands.preflight import format_report
    from clap_bench.preflight import run_preflight

    profile = load_profile("smoke")
    assert profile.encoder.weights == "source"
    report = run_preflight(profile, ["clap"], videos=1, steps=1, seeds=1, work_dir=tmp_path, cluster_path=None)
    assert "pretrain clap" in [m["stage"] for m in report["measures"]]
    assert any(n.startswith("encoder.weights: source") for n in report["notes"])
    assert {"pretrain", "pretrain-base"} <= {r["stage"] for r in report["projection"]["stages"] if r["method"] == "clap"}
    # hours under 0.1 print as minutes, with no hour unit after them
    text = format_report(report)
    line = next(s for s in text.splitlines() if s.startswith("one seed of clap:"))
    assert " min if the stages ran one after another" in line and "min h" not in text
    assert line.endswith("process-minutes")


def test_hours_print_with_their_unit_and_minutes_below_a_tenth_of_an_hour():
    from clap_bench.commands.preflight import _hours

    assert _hours(61010.64, "h") == "61,010.6 h"
    assert _hours(2.0, "process-hours") == "2.0 process-hours"
    assert _hours(0.05, "h") == "3.0 min"
    assert _hours(0.05, "process-hours") == "3.0 process-minutes"
    assert _hours(0.05) == "3.0 min" and _hours(1.25) == "1.2"


# --------------------------------------------------------------------------- the source model (encoder.weights: source)
def _source_profile(tmp_path, **source_pretrain):
    return load_profile("default", {"data": {"cache_dir": str(tmp_path)}, "source_pretrain": source_pretrain})


def test_source_models_are_found_in_this_machines_cache_without_training_anything(tmp_path):
    from clap_bench.preflight import source_models
    from clap_bench.training.pretrain import default_source_dir
    from clap_bench.training.trainer import FINAL_NAME

    profile = _source_profile(tmp_path)
    [shared] = source_models(profile, seeds=3)
    assert (shared["seed"], shared["dir"], shared["cached"]) == (0, str(default_source_dir(profile, 0)), False)
    assert not (tmp_path / "source_pretrain").exists()  # looked for, not made
    (default_source_dir(profile, 0)).mkdir(parents=True)
    (default_source_dir(profile, 0) / FINAL_NAME).write_bytes(b"x")
    assert source_models(profile, seeds=3) == [{**shared, "cached": True}]
    per_seed = _source_profile(tmp_path, per_seed=True)
    assert [(s["seed"], s["cached"]) for s in source_models(per_seed, seeds=3)] == [(0, True), (1, False), (2, False)]
    assert source_models(load_profile("paper"), seeds=3) == []  # Kinetics-400 weights: no source model


def test_the_source_stage_is_projected_where_its_model_is_not_cached_and_said_cached_where_it_is(tmp_path):
    from clap_bench.commands.preflight import format_report

    profile = _source_profile(tmp_path, epochs=10, max_segments_per_epoch=None)
    measures = _measures(rate=2.0)  # 2 clips/s; checkpoint 1000 bytes
    plain = project(profile, _sizes(), measures, ["clap"], seeds=2, cluster=None)
    assert "source" not in {r["stage"] for r in plain["stages"]}  # no source models given: as before
    missing = [{"seed": 0, "dir": str(tmp_path / "s0"), "cached": False}]
    p = project(profile, _sizes(), measures, ["clap"], seeds=2, cluster=None, sources=missing)
    row = next(r for r in p["stages"] if r["stage"] == "source")
    # 10 epochs x 120 training videos x 1 clip, once for the sweep, at clap's measured rate
    assert (row["work"], row["sweep_runs"], row["methods"]) == (10 * 120, 1, ["clap"])
    assert row["hours"] == pytest.approx(10 * 120 / 2.0 / 3600)
    assert "at clap's measured rate" in row["note"] and "not cached on this machine" in row["note"]
    assert p["sweep"]["hours_if_serial"] == pytest.approx(plain["sweep"]["hours_if_serial"] + row["hours"])
    assert p["one_seed"]["clap"]["hours"] == pytest.approx(plain["one_seed"]["clap"]["hours"] + row["hours"])
    assert p["disk"]["sweep_bytes"] == plain["disk"]["sweep_bytes"] + 1000 and p["source"]["bytes"] == 1000
    report = {"profile": "default", "device": "cpu", "videos_per_dataset": 1, "steps": 1, "seconds": 1.0, "shrinks": {},
              "notes": [], "measures": [], "datasets": _sizes(), "projection": p}
    assert "0 of 1 cached on this machine; 1 to train" in format_report(report)
    # TAC's own rate and checkpoint where it was timed; max_segments_per_epoch caps the videos of an epoch
    measures["pretrain tac"] = Measure("pretrain tac", "clips", units=40, seconds=10.0, extra={"checkpoint_bytes": 700})
    profile.source_pretrain.max_segments_per_epoch = 50
    p = project(profile, _sizes(), measures, ["clap"], seeds=2, cluster=None, sources=missing)
    row = next(r for r in p["stages"] if r["stage"] == "source")
    assert (row["work"], row["hours"]) == (10 * 50, pytest.approx(10 * 50 / 4.0 / 3600))
    assert "at TAC's measured rate" in row["note"] and p["disk"]["sweep_bytes"] == plain["disk"]["sweep_bytes"] + 700
    # a source stage job's processes share the work, as pre-training's do
    cluster = ClusterProfile(tasks_per_node=1, stages={"source": {"nodes": 1, "tasks_per_node": 4}})
    row = next(r for r in project(profile, _sizes(), measures, ["clap"], seeds=2, cluster=cluster, sources=missing)["stages"]
               if r["stage"] == "source")
    assert (row["processes"], row["hours"]) == (4, pytest.approx(10 * 50 / 4.0 / 4 / 3600))
    # cached: said so, nothing to run or store
    cached = [{**missing[0], "cached": True}]
    p = project(profile, _sizes(), measures, ["clap"], seeds=2, cluster=None, sources=cached)
    row = next(r for r in p["stages"] if r["stage"] == "source")
    assert (row["work"], row["hours"], row["sweep_runs"]) == (0, 0.0, 0)
    assert row["note"] == f"cached on this machine: {tmp_path / 's0'}"
    assert p["disk"]["sweep_bytes"] == plain["disk"]["sweep_bytes"]
    assert p["sweep"]["hours_if_serial"] == pytest.approx(plain["sweep"]["hours_if_serial"])
    report["projection"] = p
    assert "source model(s) (encoder.weights: source): 1 of 1 cached on this machine" in format_report(report).splitlines()
    # one source model per seed, one of three cached: the other two are trained
    per_seed = [{"seed": k, "dir": str(tmp_path / f"s{k}"), "cached": k == 0} for k in range(3)]
    row = next(r for r in project(profile, _sizes(), measures, ["clap"], seeds=3, cluster=None, sources=per_seed)["stages"]
               if r["stage"] == "source")
    assert row["sweep_runs"] == 2 and "2 of 3 source model(s) not cached on this machine (1 cached)" in row["note"]


def test_the_preflight_projects_the_source_model_it_does_not_find_and_times_tac_when_no_method_trains(monkeypatch, tmp_path):
    import clap_bench.preflight as pf

    measures = _measures()
    measures["pretrain tac"] = Measure("pretrain tac", "clips", units=40, seconds=10.0, extra={"checkpoint_bytes": 700})
    asked = _fake_stages(monkeypatch, measures)
    profile = _source_profile(tmp_path / "cache")
    report = pf.run_preflight(profile, ["clap"], seeds=2, work_dir=tmp_path / "work", cluster_path=None)
    assert [a for a in asked if a.startswith("pretrain")] == ["pretrain clap"]  # clap's rate stands in: no extra timing
    assert any(n.startswith("encoder.weights: source") and "1 of 1 not cached" in n for n in report["notes"])
    assert [r["sweep_runs"] for r in report["projection"]["stages"] if r["stage"] == "source"] == [1]
    assert not (tmp_path / "cache" / "source_pretrain").exists()  # nothing trained
    asked.clear()
    report = pf.run_preflight(profile, ["none"], seeds=2, work_dir=tmp_path / "work", cluster_path=None)
    assert [a for a in asked if a.startswith("pretrain")] == ["pretrain tac"]  # none trains nothing: TAC's steps are timed
    assert "at TAC's measured rate" in next(r for r in report["projection"]["stages"] if r["stage"] == "source")["note"]


def test_dataset_sizes_count_the_source_models_training_videos():
    trimmed = _ann([Video(f"t{i}", 10.0, "train", segments=[Segment(0.0, 10.0, "a")]) for i in range(3)]
                   + [Video("t_empty", 10.0, "train")] + [Video("v0", 10.0, "val", segments=[Segment(0.0, 10.0, "a")])], ["a"])
    anet = _ann([Video("v_a", 60.0, "training", segments=[Segment(20.0, 40.0, "a")])], ["a"])
    data = PreflightData(full={"activitynet": anet, "charades-sta": _grounding([("train", 1), ("test", 1)]),
                               "tacos": _grounding([("train", 1), ("val", 1), ("test", 1)]), "trimmed": trimmed},
                         picks={}, kinds={}, folders={})
    assert dataset_sizes(load_profile("smoke"), data)["trimmed"] == {"videos": 5, "train_videos": 3}
