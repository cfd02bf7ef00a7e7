"""One source model per seed (``source_pretrain.per_seed``), and keys added to configs without
changing the hashes of the stages already in a run store (``added_field``)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import ConfigError, TrainConfig, config_hash, identity_dict, load_profile
from clap_bench.runs.plan import build_plan
from clap_bench.training import default_source_dir

runner = CliRunner()
ADDED = ("cpu_bf16", "per_seed", "keep_epoch", "duplicate_segments")  # the TrainConfig keys added after run stores existed


def _per_seed(profile):
    return dataclasses.replace(profile, source_pretrain=dataclasses.replace(profile.source_pretrain, per_seed=True))


def test_added_keys_at_their_default_leave_the_hash_as_it_was_before_they_existed():
    cfg = TrainConfig()
    # What the hash was before the keys existed: sha256 of asdict without them, worked out here.
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ADDED}
    expected = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert config_hash(cfg) == expected
    assert not set(ADDED) & set(identity_dict(cfg))
    # Nested inside a plain payload, as the plan hashes them.
    assert identity_dict({"train": cfg, "seed": 3}) == {"train": before, "seed": 3}
    # Set, a key counts.
    on = dataclasses.replace(cfg, cpu_bf16=True)
    assert identity_dict(on)["cpu_bf16"] is True
    assert config_hash(on) != config_hash(cfg)


def test_pretrain_per_seed_is_refused_with_the_key_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base: smoke\npretrain:\n  per_seed: true\n")
    with pytest.raises(ConfigError, match="pretrain.per_seed"):
        load_profile(str(path))


def test_per_seed_source_plan_gives_each_seed_its_own_source_and_keeps_seed_0_shared():
    profile = load_profile("smoke")
    shared = build_plan(profile, ["none", "clap"], [0, 1, 2], ["tal"])
    per_seed = build_plan(_per_seed(profile), ["none", "clap"], [0, 1, 2], ["tal"])

    assert [k for k in shared.stages if k.startswith("_shared")] == ["_shared/source"]
    assert [k for k in per_seed.stages if k.startswith("_shared")] == [
        "_shared/source", "_shared/seed1/source", "_shared/seed2/source"]
    assert [per_seed.stages[k].config["seed"] for k in ("_shared/source", "_shared/seed1/source", "_shared/seed2/source")] == [0, 1, 2]
    for seed, source in ((0, "_shared/source"), (1, "_shared/seed1/source"), (2, "_shared/seed2/source")):
        assert per_seed.stages[f"clap/seed{seed}/pretrain"].deps == (source,)
        assert per_seed.stages[f"none/seed{seed}/pretrain"].deps == (source,)  # none: one encoder per source
        assert per_seed.stages[f"none/seed{seed}/tal"].deps == (f"none/seed{seed}/extract-activitynet",)
    # Without it, none's every seed reads the one seed-0 encoder.
    assert "none/seed1/pretrain" not in shared.stages
    assert shared.stages["none/seed2/tal"].deps == ("none/seed0/extract-activitynet",)
    # Seed 0 is the same stage either way (same hashes: a paired comparison, results reused) ...
    for key in ("_shared/source", "clap/seed0/pretrain", "clap/seed0/tal", "none/seed0/tal"):
        assert per_seed.hashes[key] == shared.hashes[key], key
    # ... and every other seed's stages differ, through their source.
    for key in ("clap/seed1/pretrain", "clap/seed2/tal"):
        assert per_seed.hashes[key] != shared.hashes[key], key
    # Run seed by seed, each seed's source model comes right before the seed's own stages.
    order = [s.key for s in per_seed.seed_major()]
    assert order.index("_shared/seed1/source") < order.index("none/seed1/pretrain")
    assert order.index("_shared/seed1/source") > order.index("clap/seed0/tal")


def test_per_seed_source_models_live_in_their_own_cache_folders():
    profile = load_profile("smoke")
    assert default_source_dir(profile) == default_source_dir(profile, 0) == default_source_dir(_per_seed(profile), 0)
    assert default_source_dir(profile, 1) != default_source_dir(profile, 0)
    assert default_source_dir(profile, 1) != default_source_dir(profile, 2)


@pytest.mark.slow
def test_smoke_run_with_per_seed_source_models_gives_none_a_different_encoder_per_seed(tmp_path):
    """The real stages: two seeds of ``none``, each from its own source model."""
    path = tmp_path / "per-seed.yaml"
    path.write_text("base: smoke\nname: smoke-per-seed\nsource_pretrain:\n  per_seed: true\n")
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--method", "none", "--seeds", "2", "--tasks", "tal", "--profile", str(path),
                                 "--runs-dir", str(runs), "-q"])
    assert result.exit_code == 0, result.output
    root = runs / "smoke-per-seed"
    sources = [json.loads((root / "_shared" / d / "source" / "metrics.json").read_text())["checkpoint"]
               for d in (".", "seed1")]
    assert sources[0] != sources[1]
    weights = [torch.load(s, map_location="cpu", weights_only=False)["model"] for s in sources]
    conv = next(k for k in weights[0] if k.endswith(".weight") and weights[0][k].dim() == 5)
    assert not torch.equal(weights[0][conv], weights[1][conv])
    feats = []
    for seed in (0, 1):
        with h5py.File(root / "none" / f"seed{seed}" / "extract-activitynet" / "activitynet.h5", "r") as f:
            vid = sorted(f)[0]
            feats.append(np.asarray(f[vid]))
    assert feats[0].shape == feats[1].shape and not np.allclose(feats[0], feats[1])
    table = runner.invoke(app, ["table", "--format", "csv", "--tables", "1", "--profile", "smoke-per-seed",
                                "--runs-dir", str(runs), "--no-paper"])
    assert table.exit_code == 0, table.output
    rows = [r for r in csv.DictReader(io.StringIO(table.output)) if r.get("method") == "none"]
    assert [r["n"] for r in rows] == ["2"]


# --------------------------------------------------------------------------- the GVF grid in pre-training hashes
GRID_CHANGES = {"stride_frames": 8, "last_clip": "frames", "snap_duration_to_frames": True}  # each away from smoke's


def test_the_extraction_grid_of_tsps_global_video_features_is_in_its_pretraining_hash_only():
    from clap_bench.training.pretrain import GVF_GRID_KEYS

    assert set(GRID_CHANGES) == set(GVF_GRID_KEYS)
    methods, tasks = ["none", "clap", "tsp"], ["tal", "fstal"]
    base = build_plan(load_profile("smoke"), methods, [0], tasks)
    for key, value in GRID_CHANGES.items():
        other = build_plan(load_profile("smoke", {"extract": {key: value}}), methods, [0], tasks)
        for stage in ("pretrain", "pretrain-base"):  # both variants read GVFs
            assert other.hashes[f"tsp/seed0/{stage}"] != base.hashes[f"tsp/seed0/{stage}"], (key, stage)
            assert other.stages[f"tsp/seed0/{stage}"].config["gvf_grid"][key] == value
            assert other.hashes[f"clap/seed0/{stage}"] == base.hashes[f"clap/seed0/{stage}"], (key, stage)  # no GVFs
        assert other.hashes["none/seed0/pretrain"] == base.hashes["none/seed0/pretrain"], key
    # TSP with its region head reading no GVF: the grid does not enter its pre-training.
    no_gvf = {"methods": {"tsp": {"region_gvf": False}}}
    plain = build_plan(load_profile("smoke", no_gvf), ["tsp"], [0], ["tal"])
    moved = build_plan(load_profile("smoke", {**no_gvf, "extract": {"stride_frames": 8}}), ["tsp"], [0], ["tal"])
    assert plain.hashes["tsp/seed0/pretrain"] == moved.hashes["tsp/seed0/pretrain"]


def test_smoke_and_default_leave_their_recorded_grid_out_so_their_stores_keep_tsps_stages():
    from clap_bench.runs.plan import GVF_GRID_BASELINES, gvf_grid_config

    for name in ("smoke", "default"):
        profile = load_profile(name)
        assert gvf_grid_config(profile, "tsp") == {}, f"{name}'s grid moved off GVF_GRID_BASELINES: its TSP pre-training reruns"
        assert "gvf_grid" not in build_plan(profile, ["tsp"], [0], ["tal"]).stages["tsp/seed0/pretrain"].config
    # The same grid under another profile name (a user's store: what it ran with is unknown) counts.
    renamed = dataclasses.replace(load_profile("default"), name="mine")
    assert gvf_grid_config(renamed, "tsp") == {"gvf_grid": GVF_GRID_BASELINES["default"]}
    # paper's grid changed since TSP came in: it is carried.
    paper = load_profile("paper")
    assert gvf_grid_config(paper, "tsp") == {"gvf_grid": {
        "stride_frames": paper.extract.stride_frames, "last_clip": paper.extract.last_clip,
        "snap_duration_to_frames": paper.extract.snap_duration_to_frames}}


def test_gvf_grid_keys_are_the_extract_keys_the_gvf_cache_follows(tmp_path):
    # The GVF cache file is keyed by what the GVFs are computed from: the keys the stage hash must follow too.
    from clap_bench.config import ExtractConfig
    from clap_bench.features.extract import VideoSource
    from clap_bench.training.pretrain import GVF_GRID_KEYS, gvf_cache_path

    videos = [VideoSource("v_a", tmp_path / "v_a.mp4", 10.0, None, None)]
    profile = load_profile("smoke", {"data": {"cache_dir": str(tmp_path)}})
    changed = {**GRID_CHANGES, "batch_size": 7, "num_workers": 3}
    assert set(changed) == {f.name for f in dataclasses.fields(ExtractConfig)}, "a new extract key: does it change GVFs?"
    first = gvf_cache_path(profile, None, videos, "activitynet")
    for key, value in changed.items():
        other = dataclasses.replace(profile, extract=dataclasses.replace(profile.extract, **{key: value}))
        assert (gvf_cache_path(other, None, videos, "activitynet") != first) == (key in GVF_GRID_KEYS), key
