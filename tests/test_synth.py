"""The synthetic benchmark: real files in the real layouts, deterministic, cached, and visibly right."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from clap_bench.synth import (
    CLASS_TABLES,
    FPS,
    HEIGHT,
    PROFILES,
    WIDTH,
    SynthError,
    SynthProfile,
    action_at,
    dataset_keys,
    ensure_synthetic,
    ground_truth_mask,
    load_scenes,
    object_layers,
    read_manifest,
    synth_root,
)
from clap_bench.config import DatasetConfig
from clap_bench.synth import generate as synth_generate

TSP_HEADER = ["video-name", "t-start", "t-end", "action-label", "video-duration", "filename", "fps", "video-frames", "temporal-region-label"]
CHARADES_HEADER = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions", "actions", "length"]
KINETICS_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]

# A profile of one or two short videos per dataset, for the tests that generate repeatedly.
TINY = SynthProfile(
    name="tiny", class_table="k6", extra_trimmed_classes=1,
    anet_train=2, anet_val=1, anet_seconds=(4.0, 5.0), anet_max_instances=2, distractors=(1, 1),
    charades_train=1, charades_test=1, charades_seconds=(4.0, 5.0), charades_events=(2, 2), charades_event_seconds=(1.0, 1.5),
    tacos_train=1, tacos_val=1, tacos_test=1, tacos_seconds=(4.0, 5.0), tacos_events=(2, 2), tacos_event_seconds=(1.0, 1.5),
    trimmed_train_per_class=1, trimmed_val_per_class=0, trimmed_seconds=1,
)


@pytest.fixture
def tiny_profile(monkeypatch):
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    return "tiny"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synth-cache")
    datasets = ensure_synthetic("smoke", 0, cache)
    root = synth_root("smoke", 0, cache)
    return root, datasets, json.loads((root / "manifest.json").read_text())


def _annotation_digests(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in {".json", ".csv", ".txt"} and p.name != "manifest.json"
    }


def _decode(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.format.name, stream.width, stream.height, float(stream.average_rate))
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return info, frames


# --------------------------------------------------------------------------- the class design
def test_classes_share_shapes_and_colours_so_the_class_lives_in_the_motion():
    for name, table in CLASS_TABLES.items():
        appearances = Counter((c.shape, c.colour) for c in table)
        motions = Counter(c.motion for c in table)
        assert len({c.name for c in table}) == len(table), name
        assert all(n >= 2 for n in appearances.values()), f"{name}: an appearance with a single motion: {appearances}"
        assert all(n >= 2 for n in motions.values()), f"{name}: a motion with a single appearance: {motions}"
    assert len(CLASS_TABLES[PROFILES["default"].class_table]) == 20  # 16/2/2 few-shot split


# --------------------------------------------------------------------------- real layouts
def test_activitynet_json_and_tsp_csv_have_the_published_layout(smoke):
    root, _, manifest = smoke
    data = json.loads((root / "activitynet/activity_net.v1-3.min.json").read_text())
    assert data["version"] == "VERSION 1.3" and isinstance(data["taxonomy"], list)
    database = data["database"]
    assert len(database) == PROFILES["smoke"].anet_train + PROFILES["smoke"].anet_val
    assert {v["subset"] for v in database.values()} == {"training", "validation"}
    for bare, entry in database.items():
        assert not bare.startswith("v_") and len(bare) == 11
        assert (root / "activitynet/videos" / f"v_{bare}.mp4").is_file()
        segs = [a["segment"] for a in entry["annotations"]]
        assert segs and all(0 <= s < e <= entry["duration"] + 1e-6 for s, e in segs)
        assert all(b[0] - a[1] >= 1.0 - 1e-6 for a, b in zip(segs, segs[1:])), "instances overlap or touch"
        assert all(e - s >= 1.0 - 1e-6 and e - s <= entry["duration"] / 2 + 1e-6 for s, e in segs)
        assert len({a["label"] for a in entry["annotations"]}) == 1  # one class per video, like ActivityNet
    for name, subset in (("train", "training"), ("valid", "validation")):
        path = root / f"activitynet/activitynet_v1-3_{name}_tsp_groundtruth.csv"
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == TSP_HEADER
        by_video = {}
        for r in rows[1:]:
            row = dict(zip(TSP_HEADER, r))
            assert row["filename"] == f"v_{row['video-name']}.mp4"
            assert (row["action-label"] == "") == (row["temporal-region-label"] == "No action")
            assert row["temporal-region-label"] in ("Action", "No action")
            assert float(row["fps"]) == FPS
            assert abs(int(row["video-frames"]) / FPS - float(row["video-duration"])) < 1e-6
            by_video.setdefault(row["video-name"], []).append((float(row["t-start"]), float(row["t-end"]), row["action-label"]))
        assert set(by_video) == {k for k, v in database.items() if v["subset"] == subset}
        for vid, regions in by_video.items():
            regions.sort()
            duration = database[vid]["duration"]
            # Actions and background rows tile the video (TSP starts an action at 0 with 0.01).
            assert regions[0][0] <= 0.01 and abs(regions[-1][1] - duration) < 1e-3
            assert all(abs(b[0] - a[1]) < 0.011 for a, b in zip(regions, regions[1:]))
            assert all((a[2] == "") != (b[2] == "") for a, b in zip(regions, regions[1:])), "two background rows in a row"
    labels = json.loads((root / "activitynet/activitynet_v1-3_action_label_mapping.json").read_text())
    assert labels == sorted(c.name for c in CLASS_TABLES["k6"])
    assert manifest["counts"]["activitynet"]["classes"] == len(labels)


def test_captions_charades_tacos_fewshot_and_trimmed_have_the_published_layouts(smoke):
    root, _, _ = smoke
    anet = json.loads((root / "activitynet/activity_net.v1-3.min.json").read_text())["database"]
    captions = {}
    for name, subset in (("train", "training"), ("val", "validation")):
        data = json.loads((root / f"activitynet-captions/{name}.json").read_text())
        assert {k[2:] for k in data} == {k for k, v in anet.items() if v["subset"] == subset}
        captions.update(data)
    for vid, entry in captions.items():
        assert vid.startswith("v_") and set(entry) == {"duration", "timestamps", "sentences"}
        assert len(entry["timestamps"]) == len(entry["sentences"]) >= 1
        assert not entry["sentences"][0].startswith(" ") and all(s.startswith(" ") for s in entry["sentences"][1:])
        assert all(0 <= s < e <= entry["duration"] + 1e-6 for s, e in entry["timestamps"])

    line = re.compile(r"^([A-Z0-9]{5}) (\d+\.\d) (\d+\.\d)##(.+\.)$")
    for subset in ("train", "test"):
        with (root / f"charades-sta/Charades_v1_{subset}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == CHARADES_HEADER
        lengths = {r["id"]: float(r["length"]) for r in rows}
        text = (root / f"charades-sta/charades_sta_{subset}.txt").read_text()
        for ln in text.splitlines():
            m = line.match(ln)
            assert m, ln
            assert m.group(1) in lengths and float(m.group(2)) < float(m.group(3))
            assert float(m.group(3)) <= lengths[m.group(1)] + 1.6  # a few run past the length, as published
        for vid in lengths:
            assert (root / f"charades-sta/videos/{vid}.mp4").is_file()

    for subset in ("train", "val", "test"):
        data = json.loads((root / f"tacos/{subset}.json").read_text())
        for key, entry in data.items():
            assert key.endswith(".mp4") and (root / "tacos/videos" / key).is_file()
            assert set(entry) == {"timestamps", "sentences", "fps", "num_frames"}
            assert entry["fps"] == float(FPS) and isinstance(entry["num_frames"], int)
            for (s, e), sentence in zip(entry["timestamps"], entry["sentences"]):
                assert isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= entry["num_frames"]
                assert sentence[:1].isupper() and not sentence.endswith(".")
            assert len(entry["sentences"]) >= 8  # many queries per video

    lists = {}
    for name in ("base", "fs_val", "fs_test"):
        raw = (root / f"fewshot-split/{name}.txt").read_text()
        assert not raw.endswith("\n") and ",," not in raw
        lists[name] = raw.split(", ")
    assert [len(v) for v in lists.values()] == [4, 1, 1]
    union = [c for v in lists.values() for c in v]
    assert sorted(union) == sorted(c.name for c in CLASS_TABLES["k6"]) and len(set(union)) == len(union)

    rows = []
    for name in ("train.csv", "validate.csv"):
        with (root / "trimmed" / name).open(newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == KINETICS_HEADER
            rows += list(reader)
    assert {r[4] for r in rows} == {"train", "val"}
    target = {c.name.lower() for c in CLASS_TABLES["k6"]}
    assert target <= {r[0] for r in rows}  # the target classes, plus source-only ones
    for label, yid, start, end, _ in rows:
        assert int(end) - int(start) == PROFILES["smoke"].trimmed_seconds
        assert (root / "trimmed/videos" / f"{yid}_{int(start):06d}_{int(end):06d}.mp4").is_file()


def test_grounding_videos_hold_several_different_events(smoke):
    root, _, _ = smoke
    by_video = {}
    for subset in ("train", "test"):
        for ln in (root / f"charades-sta/charades_sta_{subset}.txt").read_text().splitlines():
            vid, s, rest = ln.split(" ", 2)
            e, sentence = rest.split("##")
            by_video.setdefault(vid, set()).add((s, e, sentence))
    for vid, queries in by_video.items():
        moments = {(s, e) for s, e, _ in queries}
        assert len(moments) >= 2, f"{vid}: a single moment; a model could ignore the sentence"
        assert len({q[2] for q in queries}) == len(queries)


# --------------------------------------------------------------------------- videos
def test_every_video_decodes_with_the_annotated_duration(smoke):
    root, _, _ = smoke
    durations = {}
    for bare, entry in json.loads((root / "activitynet/activity_net.v1-3.min.json").read_text())["database"].items():
        durations[root / f"activitynet/videos/v_{bare}.mp4"] = entry["duration"]
    for subset in ("train", "test"):
        with (root / f"charades-sta/Charades_v1_{subset}.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                durations[root / f"charades-sta/videos/{r['id']}.mp4"] = float(r["length"])
    for subset in ("train", "val", "test"):
        for key, entry in json.loads((root / f"tacos/{subset}.json").read_text()).items():
            durations[root / "tacos/videos" / key] = entry["num_frames"] / entry["fps"]
    for name in ("train.csv", "validate.csv"):
        with (root / "trimmed" / name).open(newline="") as f:
            for r in csv.DictReader(f):
                clip = f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}.mp4"
                durations[root / "trimmed/videos" / clip] = float(int(r["time_end"]) - int(r["time_start"]))
    videos = sorted(root.rglob("*.mp4"))
    assert set(videos) == set(durations)
    for path in videos:
        info, frames = _decode(path)
        assert info == ("h264", "yuv420p", WIDTH, HEIGHT, float(FPS)), path
        assert abs(len(frames) / FPS - durations[path]) <= 1.0 / FPS, path


def test_action_pattern_is_visible_at_an_action_time_and_absent_in_background(smoke):
    """Decode frames at an annotated action time and at a background time of the same video."""
    root, _, _ = smoke
    scenes = load_scenes(root)
    with (root / "activitynet/activitynet_v1-3_train_tsp_groundtruth.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    checked = 0
    for vid in sorted({r["video-name"] for r in rows}):
        scene = scenes[f"activitynet/v_{vid}"]
        actions = [r for r in rows if r["video-name"] == vid and r["action-label"]]
        background = [r for r in rows if r["video-name"] == vid and not r["action-label"]]
        _, frames = _decode(root / f"activitynet/videos/v_{vid}.mp4")
        act = actions[0]
        t_action = (float(act["t-start"]) + float(act["t-end"])) / 2
        i_action = int(round(t_action * FPS))
        assert action_at(scene, i_action / FPS) == act["action-label"]
        mask = ground_truth_mask(scene, i_action / FPS)
        assert mask.sum() >= 20
        layers = object_layers(scene, i_action / FPS)
        colour = np.array([o.rgb for o in layers if o.kind == "action"][0], float)
        near = np.linalg.norm(frames[i_action].astype(float) - colour, axis=-1) < 70
        assert near[mask].mean() > 0.6, f"{vid}: the action's colour is not where the generator drew it"
        # A background frame where nothing of that colour is on screen (no idle actor, no
        # distractor wearing it): the pattern must be absent.
        for region in background:
            s, e = float(region["t-start"]), float(region["t-end"])
            for i in range(int(np.ceil(s * FPS)), int(np.floor(e * FPS)) + 1):
                t = i / FPS
                if i >= len(frames) or action_at(scene, t) is not None:
                    continue
                if any(tuple(o.rgb) == tuple(colour) for o in object_layers(scene, t)):
                    continue
                assert not ground_truth_mask(scene, t).any()
                far = np.linalg.norm(frames[i].astype(float) - colour, axis=-1) < 70
                assert far.sum() < 0.1 * mask.sum(), f"{vid} at {t:.2f}s: the action's colour shows in background"
                checked += 1
                break
            else:
                continue
            break
    assert checked >= 3


def test_distractors_never_perform_an_action_motion(smoke):
    root, _, _ = smoke
    scenes = load_scenes(root)
    kinds = Counter()
    for scene in scenes.values():
        for track in scene.tracks:
            kinds[track.kind] += 1
            if track.kind == "distractor":
                assert track.motion in ("drift", "wander") and track.label is None
    assert kinds["distractor"] > 0 and kinds["action"] > 0


# --------------------------------------------------------------------------- determinism and cache
@pytest.mark.slow
def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, tiny_profile):
    # one rendering process for a, two for b: the files must not depend on it
    ensure_synthetic(tiny_profile, 0, tmp_path / "a", workers=1)
    ensure_synthetic(tiny_profile, 0, tmp_path / "b", workers=2)
    ensure_synthetic(tiny_profile, 1, tmp_path / "c")
    a, b, c = (synth_root(tiny_profile, s, tmp_path / d) for s, d in ((0, "a"), (0, "b"), (1, "c")))
    digests_a = _annotation_digests(a)
    assert digests_a and digests_a == _annotation_digests(b)
    assert digests_a != _annotation_digests(c)
    videos_a = {p.relative_to(a): p.read_bytes() for p in a.rglob("*.mp4")}
    videos_b = {p.relative_to(b): p.read_bytes() for p in b.rglob("*.mp4")}
    assert videos_a == videos_b  # bit-exact H.264 too
    assert (read_manifest(a)["generation_workers"], read_manifest(b)["generation_workers"]) == (1, 2)


@pytest.mark.slow
def test_cache_is_reused_and_an_incomplete_folder_is_regenerated(tmp_path, tiny_profile, monkeypatch):
    first = ensure_synthetic(tiny_profile, 0, tmp_path)
    root = synth_root(tiny_profile, 0, tmp_path)
    assert all(Path(p).is_absolute() for cfg in first.values() for p in cfg.annotations)
    calls = []
    real_generate = synth_generate.generate
    monkeypatch.setattr(synth_generate, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    assert ensure_synthetic(tiny_profile, 0, tmp_path) == first
    assert calls == []
    # Interrupted run: files but no manifest.
    (root / "manifest.json").unlink()
    ensure_synthetic(tiny_profile, 0, tmp_path)
    assert calls == [1] and read_manifest(root) is not None
    # A truncated video no longer matches the manifest.
    video = next(root.rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[:100])
    ensure_synthetic(tiny_profile, 0, tmp_path)
    assert calls == [1, 1] and read_manifest(root) is not None
    assert not list(root.parent.glob(".*partial*"))


def test_unknown_profile_is_a_clear_error(tmp_path):
    with pytest.raises(SynthError, match="unknown synthetic profile 'huge'.*smoke"):
        ensure_synthetic("huge", 0, tmp_path)


def test_smoke_generates_in_seconds(smoke):
    _, _, manifest = smoke
    assert manifest["generation_cpu_seconds"] < 20, manifest["generation_cpu_seconds"]


# --------------------------------------------------------------------------- the project's readers
def test_the_readers_load_every_generated_dataset(smoke):
    from clap_bench.data import load_dataset, load_fewshot_split

    _, datasets, manifest = smoke
    assert set(datasets) == {"activitynet", "activitynet-captions", "charades-sta", "tacos", "fewshot-split", "trimmed"}
    counts = manifest["counts"]
    anet = load_dataset(datasets["activitynet"], "activitynet")
    assert len(anet.videos) == counts["activitynet"]["videos"]
    assert sum(len(v.actions) for v in anet.videos.values()) == counts["activitynet"]["actions"]
    assert anet.subsets == ["training", "validation"] and len(anet.classes) == 6
    assert all(v.id.startswith("v_") and v.filename == f"{v.id}.mp4" for v in anet.videos.values())
    captions = load_dataset(datasets["activitynet-captions"], "activitynet-captions")
    assert set(captions.videos) == set(anet.videos)
    charades = load_dataset(datasets["charades-sta"], "charades-sta")
    assert sum(len(v.sentences) for v in charades.videos.values()) == counts["charades-sta"]["queries"]
    tacos = load_dataset(datasets["tacos"], "tacos")
    assert sum(len(v.sentences) for v in tacos.videos.values()) == counts["tacos"]["queries"]
    assert all((Path(datasets["tacos"].videos) / v.filename).is_file() for v in tacos.videos.values())
    split = load_fewshot_split(datasets["fewshot-split"], known_classes=anet.classes)
    assert sorted(split.base + split.val + split.test) == anet.classes
    trimmed = load_dataset(datasets["trimmed"], "trimmed")
    assert all((Path(datasets["trimmed"].videos) / v.filename).is_file() for v in trimmed.videos.values())
    for key in ("activitynet", "charades-sta"):
        cfg = datasets[key]
        loaded = anet if key == "activitynet" else charades
        assert all((Path(cfg.videos) / v.filename).is_file() for v in loaded.videos.values())


def test_cli_writes_and_then_reuses(tmp_path, tiny_profile):
    from typer.testing import CliRunner

    from clap_bench.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["data", "synth", "--profile", tiny_profile, "--seed", "3", "--out", str(tmp_path), "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["generated"] is True and report["root"] == str(synth_root(tiny_profile, 3, tmp_path))
    assert report["counts"]["activitynet"]["videos"] == 3
    again = json.loads(runner.invoke(app, ["data", "synth", "--profile", tiny_profile, "--seed", "3", "--out", str(tmp_path), "--json"]).output)
    assert again["generated"] is False
    bad = runner.invoke(app, ["data", "synth", "--profile", "huge", "--out", str(tmp_path)])
    assert bad.exit_code != 0


def test_a_killed_generation_leaves_nothing_that_the_next_one_keeps(tmp_path, tiny_profile):
    # A generation killed by SIGTERM or SIGKILL cannot remove its partial folder; the next one does.
    root = synth_root(tiny_profile, 0, tmp_path)
    stale = root.parent / f".{root.name}.partial-999999"
    (stale / "activitynet").mkdir(parents=True)
    (stale / "activitynet" / "half-written.mp4").write_bytes(b"\0" * 1000)
    ensure_synthetic(tiny_profile, 0, tmp_path, workers=1)
    assert read_manifest(root) is not None
    assert not list(root.parent.glob(".*partial*"))


def test_a_script_without_a_main_guard_gets_an_error_not_a_hang(tmp_path):
    # Under 'spawn', each rendering worker imports the calling script again; without the guard it
    # would wait forever for the lock its parent holds.
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from clap_bench.synth import ensure_synthetic
        ensure_synthetic("smoke", 0, {str(tmp_path / 'cache')!r}, workers=2)
    """))
    import os

    import clap_bench

    # the same code as this process, wherever the package is installed from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(clap_bench.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert 'if __name__ == "__main__":' in proc.stderr
    assert "a process rendering the synthetic videos died" in proc.stderr
    assert not list((tmp_path / "cache" / "synth").glob(".*partial*"))


# --------------------------------------------------------------------------- dataset revisions
def test_a_dataset_revision_gives_new_keys_to_that_datasets_stages_only(monkeypatch):
    from clap_bench.config import data_identity, load_profile
    from clap_bench.runs.plan import build_plan

    profile = load_profile("smoke")
    monkeypatch.setattr(synth_generate, "DATASET_REVISIONS", {})
    before = build_plan(profile, ["none", "clap"], [0], ["tal", "vlg"]).hashes
    assert "dataset_revision" not in data_identity(profile, "tacos")  # revision 1 adds nothing: old keys hold
    monkeypatch.setattr(synth_generate, "DATASET_REVISIONS", {"tacos": 2})
    after = build_plan(profile, ["none", "clap"], [0], ["tal", "vlg"]).hashes
    assert data_identity(profile, "tacos")["dataset_revision"] == 2
    changed = sorted(k for k in before if before[k] != after[k])
    # extract-tacos, and through its upstream hash the grounding stage; nothing else.
    assert changed == ["clap/seed0/extract-tacos", "clap/seed0/vlg", "none/seed0/extract-tacos", "none/seed0/vlg"]
    # A real-path TACoS entry is not generated: no revision in its key.
    real = dataclasses.replace(profile, data=dataclasses.replace(
        profile.data, datasets={"tacos": DatasetConfig(format="tacos", annotations=["/data/tacos/train.json"], videos="/data/v")}))
    assert "dataset_revision" not in data_identity(real, "tacos")


@pytest.mark.slow
def test_a_folder_of_another_dataset_revision_or_other_sizes_is_regenerated(tmp_path, tiny_profile, monkeypatch):
    monkeypatch.setattr(synth_generate, "DATASET_REVISIONS", {})
    ensure_synthetic(tiny_profile, 0, tmp_path)
    root = synth_root(tiny_profile, 0, tmp_path)
    manifest = read_manifest(root)
    assert manifest["dataset_revisions"] == {k: 1 for k in dataset_keys()}
    old_charades = {p.name: p.read_bytes() for p in (root / "charades-sta").rglob("*") if p.is_file()}
    calls = []
    real_generate = synth_generate.generate
    monkeypatch.setattr(synth_generate, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))

    # A manifest written before revisions were recorded reads as revision 1 throughout.
    legacy = {k: v for k, v in manifest.items() if k != "dataset_revisions"}
    (root / "manifest.json").write_text(json.dumps(legacy))
    assert read_manifest(root) is not None
    ensure_synthetic(tiny_profile, 0, tmp_path)
    assert calls == []

    monkeypatch.setattr(synth_generate, "DATASET_REVISIONS", {"tacos": 2})
    assert read_manifest(root) is None
    ensure_synthetic(tiny_profile, 0, tmp_path)
    assert calls == [1] and read_manifest(root)["dataset_revisions"]["tacos"] == 2
    # The other datasets draw from their own streams: the same bytes after regeneration.
    assert {p.name: p.read_bytes() for p in (root / "charades-sta").rglob("*") if p.is_file()} == old_charades

    # The profile edited under the same name: stale as well.
    monkeypatch.setitem(PROFILES, tiny_profile, dataclasses.replace(TINY, tacos_train=2))
    ensure_synthetic(tiny_profile, 0, tmp_path)
    assert calls == [1, 1] and read_manifest(root)["sizes"]["tacos_train"] == 2


@pytest.mark.slow
def test_more_test_videos_leave_the_training_videos_and_the_first_test_videos_as_they_were(tmp_path, tiny_profile, monkeypatch):
    # What a bigger test split (the default Charades-like set's revision 2) relies on: each video
    # draws from its own stream, by its place in the generation order (training videos first).
    ensure_synthetic(tiny_profile, 0, tmp_path / "one")
    monkeypatch.setitem(PROFILES, tiny_profile, dataclasses.replace(TINY, charades_test=3))
    ensure_synthetic(tiny_profile, 0, tmp_path / "three")
    one, three = (synth_root(tiny_profile, 0, tmp_path / name) / "charades-sta" for name in ("one", "three"))
    for name in ("charades_sta_train.txt", "Charades_v1_train.csv"):
        assert (one / name).read_bytes() == (three / name).read_bytes()
    old_test = (one / "charades_sta_test.txt").read_text().splitlines()
    new_test = (three / "charades_sta_test.txt").read_text().splitlines()
    assert new_test[:len(old_test)] == old_test and len({line.split()[0] for line in new_test}) == 3
    old_rows = (one / "Charades_v1_test.csv").read_text().splitlines()
    assert (three / "Charades_v1_test.csv").read_text().splitlines()[:len(old_rows)] == old_rows
    for video in (one / "videos").iterdir():
        assert (three / "videos" / video.name).read_bytes() == video.read_bytes()
    assert len(list((three / "videos").iterdir())) == len(list((one / "videos").iterdir())) + 2
