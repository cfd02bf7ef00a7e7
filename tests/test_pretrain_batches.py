"""Post-pre-training as TSP trains: clip-level batches, per-process batch size, rates x world size,
frozen stem, validation before training and after every epoch, and the ``none`` baseline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from clap_bench.clips import SegmentClipDataset
from clap_bench.config import ClipConfig, ConfigError, EncoderConfig, TrainConfig, load_profile
from clap_bench.data.schema import AnnotationSet, Segment, Video
from clap_bench.training.distributed import shard_order

CLIP = ClipConfig(frames=4, fps=4.0, resize=[32, 43], crop=28, clips_per_segment=5)


def _annotations(videos: int = 6, subset: str = "training") -> AnnotationSet:
    out = {}
    for i in range(videos):
        vid = f"v_{subset[:2]}{i}"
        out[vid] = Video(vid, 20.0, subset, segments=[Segment(4.0, 9.0, ["jump", "run", "swim"][i % 3]), Segment(12.0, 15.0, "run")])
    return AnnotationSet("test", "memory", out, ["jump", "run", "swim"])


# ---------------------------------------------------------------- the clip-level sampler
def test_clip_level_items_cover_every_segment_clip_pair_once_per_epoch_disjoint_over_two_ranks():
    data = SegmentClipDataset(_annotations(), "/nonexistent", CLIP, train=True, clip_level=True)
    segments = len(data.items)
    assert segments == 6 * 5  # per video: background 0-4, action 4-9, background 9-12, action 12-15, background 15-20
    assert len(data) == segments * CLIP.clips_per_segment
    pairs = {(s, k) for s in range(segments) for k in range(CLIP.clips_per_segment)}
    orders = []
    for epoch in (0, 1):
        ranks = [shard_order(len(data), seed=3, epoch=epoch, rank=r, world_size=2) for r in (0, 1)]
        assert not set(ranks[0]) & set(ranks[1]), "the two ranks share items"
        both = ranks[0] + ranks[1]
        assert sorted(both) == list(range(len(data))), "an item is missing or repeated in the epoch"
        assert {data.locate(i) for i in both} == pairs
        orders.append(ranks[0])
    assert orders[0] != orders[1], "the order did not change with the epoch"


def test_segment_level_items_keep_the_old_layout():
    data = SegmentClipDataset(_annotations(), "/nonexistent", CLIP, train=True, clip_level=False)
    assert len(data) == len(data.items)
    assert data.locate(3) == (3, None)


def test_evaluation_clip_level_starts_are_the_evenly_spaced_ones(monkeypatch):
    import clap_bench.clips.datasets as datasets

    seen = []

    def fake_decode(path, starts, frames, fps, size, threads=1, resize_filter="swscale"):
        seen.append(np.asarray(starts, dtype=float))
        return np.zeros((len(starts), frames, size[0], size[1], 3), np.uint8)

    monkeypatch.setattr(datasets, "decode_clips", fake_decode)
    ann = _annotations(1)
    data = SegmentClipDataset(ann, "/nonexistent", CLIP, train=False, clip_level=True)
    seg = next(i for i, it in enumerate(data.items) if it.label == "jump")
    n = len(data.items)
    for slot in range(CLIP.clips_per_segment):
        item = data[slot * n + seg]
        assert item["clips"].shape == (1, 3, CLIP.frames, CLIP.crop, CLIP.crop)
    lo, hi = 4.0, 9.0 - CLIP.frames / CLIP.fps
    np.testing.assert_allclose(np.concatenate(seen), np.linspace(lo, hi, CLIP.clips_per_segment))


def test_hflip_switch_turns_off_the_flip_only():
    from clap_bench.clips.transforms import transform_clips

    frames = torch.arange(2 * 4 * 32 * 43 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(2, 4, 32, 43, 3)
    flips = 0
    for seed in range(12):
        a = transform_clips(frames, 28, True, torch.Generator().manual_seed(seed), hflip=True)
        b = transform_clips(frames, 28, True, torch.Generator().manual_seed(seed), hflip=False)
        for x, y in zip(a, b):
            if not torch.equal(x, y):
                flips += 1
                assert torch.equal(x, y.flip(-1)), "hflip=False changed more than the flip"
    assert flips > 0


# ---------------------------------------------------------------- configuration errors
def test_unknown_batch_composition_is_an_error_naming_the_key():
    with pytest.raises(ConfigError) as err:
        load_profile("smoke", {"pretrain": {"batch_composition": "foo"}})
    msg = str(err.value)
    assert "smoke.yaml" in msg and "pretrain" in msg and "batch_composition" in msg and "clips, segments" in msg and "'foo'" in msg


def test_non_positive_validation_clips_per_segment_is_an_error_naming_the_key():
    with pytest.raises(ConfigError) as err:
        load_profile("smoke", {"pretrain": {"val_clips_per_segment": 0}})
    msg = str(err.value)
    assert "val_clips_per_segment" in msg and "positive" in msg and "0" in msg


def test_validation_takes_val_clips_per_segment_centred_clips_of_every_segment(tmp_path):
    """``pretrain.val_clips_per_segment: 1`` (default profile): one centred clip per validation segment."""
    from clap_bench.config import resolve_datasets
    from clap_bench.data import load_dataset
    from clap_bench.training import pretrain
    from clap_bench.methods import create_method
    from clap_bench.training.pretrain import PRETRAIN_DATASET, short_segment_limits, validation_annotations

    profile = load_profile("smoke", {"pretrain": {"epochs": 1, "val_clips_per_segment": 1}})
    ds = resolve_datasets(profile)[PRETRAIN_DATASET]
    full = load_dataset(ds, PRETRAIN_DATASET)
    classes = list(full.subset("training").classes)
    val = validation_annotations(full, classes)
    same = dict(train=False, regions=create_method("tac").regions, classes=classes, clip_level=True,
                **short_segment_limits(profile.pretrain, profile.clips))
    one = SegmentClipDataset(val, ds.videos, dataclasses.replace(profile.clips, clips_per_segment=1), **same)
    five = SegmentClipDataset(val, ds.videos, profile.clips, **same)
    assert len(one) == len(one.items) == len(five.items) and len(five) == len(five.items) * profile.clips.clips_per_segment
    _, starts, _, _ = one.clip_times(0)
    middle = five.clip_times(2 * len(five.items))[1]  # slot 2 of 5 of segment 0: the centre
    np.testing.assert_allclose(starts, middle)
    pretrain(profile, "tac", 0, tmp_path / "tac", progress=False)
    records = [json.loads(x) for x in (tmp_path / "tac" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_clips"] for r in records] == [len(one.items)] * 2


def test_validation_subset_without_segments_is_an_error_naming_the_subset():
    from clap_bench.training.pretrain import validation_annotations

    train_only = _annotations(3, "training")
    with pytest.raises(ValueError, match=r"no validation subset .*validate: false .*keep_epoch: last"):
        validation_annotations(train_only, ["jump", "run", "swim"])
    val = _annotations(3, "validation")
    both = AnnotationSet("test", "memory", {**train_only.videos, **val.videos}, ["jump", "run", "swim"])
    with pytest.raises(ValueError, match="validation subset 'validation' has no video"):
        validation_annotations(both, ["dive"])
    assert set(validation_annotations(both, ["jump", "run", "swim"]).videos) == set(val.videos)


# ---------------------------------------------------------------- trainer: validation, stem, rates
K_CLASSES = ["a", "b", "c"]


class TinyClips(torch.utils.data.Dataset):
    """Clip-level items (one clip each) whose content is a function of (seed, epoch, index)."""

    clip_level = True

    def __init__(self, n=12, seed=0, train=True):
        self.n, self.seed, self.epoch, self.train = n, seed, 0, train
        self.classes = K_CLASSES

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1000 + (self.epoch if self.train else 0) * 100 + i)
        cls = i % 3
        fg = i % 4 != 3
        clips = torch.randn(1, 3, 4, 28, 28, generator=g) + (cls - 1.0)
        text = ("foreground of " if fg else "background of ") + K_CLASSES[cls]
        return {"clips": clips, "label": torch.tensor([cls if fg else -1]), "region": torch.tensor([int(fg)]),
                "texts": [text], "video_id": f"v{i % 4}", "segment": (0.0, 1.0), "clip_starts": torch.zeros(1)}


def _text_features(texts):
    rows = []
    for t in texts:
        s = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
        rows.append(torch.randn(16, generator=torch.Generator().manual_seed(s)))
    return torch.stack(rows)


def _trainer(out_dir, method="clap-mask", epochs=2, dist_info=None, validation=True, data=None, **cfg_kw):
    from clap_bench.clips import collate_segments
    from clap_bench.encoders import build_video_encoder
    from clap_bench.methods import PretrainModel, create_method
    from clap_bench.training.trainer import Trainer, seed_everything

    seed_everything(0)
    m = create_method(method)
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    model = PretrainModel(encoder, m, num_classes=3, text_dim=16 if m.uses_text else None, embed_dim=8)
    cfg = TrainConfig(**{"epochs": epochs, "batch_size": 6, "lr_backbone": 1e-2, "lr_heads": 2e-2, "lr_step_epochs": 1,
                         "lr_gamma": 0.5, **cfg_kw})
    return Trainer(model, data if data is not None else TinyClips(), cfg, Path(out_dir), 0, collate_segments, 1,
                   text_features=_text_features if m.uses_text else None, progress=False, device="cpu",
                   dist_info=dist_info, validation=TinyClips(8, seed=7, train=False) if validation else None)


def test_validation_figures_exist_for_epoch_0_and_every_epoch(tmp_path):
    trainer = _trainer(tmp_path / "run")
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        for key in ("val_loss", "val_class_ce", "val_region_ce", "val_contrastive", "val_class_acc", "val_region_acc",
                    "val_v2t_r1", "val_t2v_r1", "val_v2t_r1_chance", "val_t2v_r1_chance"):
            assert key in r, f"{key} missing at epoch {r['epoch']}"
        assert r["val_clips"] == 8
        assert 0.0 <= r["val_v2t_r1"] <= 1.0
    assert "loss" not in records[0] and "loss" in records[1]  # epoch 0: validation only
    # items 0-7: foreground of a, b, c (six clips) and background of a, b (items 3, 7): 5 distinct texts
    assert records[0]["val_v2t_r1_chance"] == pytest.approx(1 / 5)
    # Validation does not consume the training streams: without it, training gives the same weights.
    quiet = _trainer(tmp_path / "quiet", validation=False)
    quiet.fit()
    for (k, a), b in zip(trainer.model.state_dict().items(), quiet.model.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs when validation is on"


def test_a_method_without_text_gets_no_retrieval_figures(tmp_path):
    trainer = _trainer(tmp_path / "tac", method="tac", epochs=1)
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "tac" / "metrics.jsonl").read_text().splitlines()]
    assert "val_class_acc" in records[-1] and "val_v2t_r1" not in records[-1] and "val_region_acc" not in records[-1]


def test_stem_is_frozen_and_rates_are_as_configured_single_process(tmp_path):
    trainer = _trainer(tmp_path / "one", epochs=1, frozen_stages=1)
    stages = trainer.model.backbone.stages()
    before = [{k: v.clone() for k, v in s.state_dict().items() if "running" not in k and "num_batches" not in k} for s in stages]
    trainer.fit()
    after = [{k: v for k, v in s.state_dict().items() if "running" not in k and "num_batches" not in k} for s in stages]
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), f"stem {k} changed"
    # frozen_stages: 1 also keeps layer1 (weights and BatchNorm statistics) as it was
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k]), f"layer1 {k} changed"
    assert any(not torch.equal(before[2][k], after[2][k]) for k in before[2]), "layer2 did not train"
    assert {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups} == {"backbone": 1e-2, "heads": 2e-2}


class UnreadableClips(TinyClips):
    """TinyClips whose items in ``unreadable`` come back as skip markers (an undecodable video)."""

    def __init__(self, n, unreadable):
        super().__init__(n)
        self.unreadable = set(unreadable)

    def __getitem__(self, i):
        if i in self.unreadable:
            return {"skipped": True, "video_id": f"v{i % 4}", "reason": "unreadable"}
        return super().__getitem__(i)


def test_a_last_batch_of_one_clip_is_dropped_for_batchnorm_heads_and_kept_for_tac(tmp_path):
    from clap_bench.training.distributed import shard_order

    # 13 clips in batches of 6: 6, 6 and 1. g_v and g_t (BatchNorm) cannot train on one clip.
    clap = _trainer(tmp_path / "clap", epochs=1, validation=False, data=TinyClips(13))
    clap.fit()  # was: "Expected more than 1 value per channel when training"
    assert clap.min_batch_clips == 2 and clap.steps_per_epoch == 2
    assert [len(b) for b in clap._batches(0)] == [6, 6]
    assert json.loads((tmp_path / "clap" / "metrics.jsonl").read_text().splitlines()[-1])["clips"] == 12
    # TAC's heads have no BatchNorm: its last clip trains, as TSP keeps its last short batch.
    tac = _trainer(tmp_path / "tac", method="tac", epochs=1, validation=False, data=TinyClips(13))
    assert tac.min_batch_clips == 1 and tac.steps_per_epoch == 3
    assert [len(b) for b in tac._batches(0)] == [6, 6, 1]
    # Two processes pad the 13 items to 7 each (shard_order), so both drop their last clip together.
    clap.dist.world_size = 2
    for rank in (0, 1):
        clap.dist.rank = rank
        assert len(shard_order(13, 0, 0, rank, 2)) == 7 and [len(b) for b in clap._batches(0)] == [6]


def test_a_batch_left_with_one_clip_after_unreadable_segments_is_skipped_with_a_log_line(tmp_path, caplog):
    import logging

    from clap_bench.training.distributed import shard_order

    order = shard_order(12, 0, 0)  # the first batch of epoch 0 is order[:6]: all but one unreadable
    trainer = _trainer(tmp_path / "run", epochs=1, validation=False, data=UnreadableClips(12, order[1:6]))
    with caplog.at_level(logging.WARNING, logger="clap_bench.training.trainer"):
        trainer.fit()
    assert any("1 clip left after 5 unreadable segment(s)" in r.getMessage() for r in caplog.records)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["clips"] == 6 and record["skipped_segments"] == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, result_dir):
    import torch.distributed as dist

    from clap_bench.training.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        trainer = _trainer(Path(out_dir), epochs=1, dist_info=DistInfo(rank, world), validation=False)
        stem_before = [p.detach().clone() for p in trainer.model.backbone.stages()[0].parameters()]
        trainer.fit()
        stem_after = list(trainer.model.backbone.stages()[0].parameters())
        info = {
            "lrs": {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups},
            "stem_unchanged": all(torch.equal(a, b) for a, b in zip(stem_before, stem_after)),
            "steps": trainer.steps_per_epoch,
            "clips_per_step": trainer.items_per_batch,
        }
        Path(result_dir, f"rank{rank}.json").write_text(json.dumps(info))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes (about 10 s); the module's other tests stay in the fast subset
def test_two_process_gloo_run_scales_rates_by_world_size_and_keeps_the_stem(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(results)), nprocs=2, join=True)
    for rank in (0, 1):
        info = json.loads((results / f"rank{rank}.json").read_text())
        assert info["lrs"] == {"backbone": pytest.approx(2e-2), "heads": pytest.approx(4e-2)}  # x world size 2
        assert info["stem_unchanged"]
        assert info["clips_per_step"] == 6  # batch_size is per process
        assert info["steps"] == 1  # 12 clips over 2 processes of 6


# ---------------------------------------------------------------- keep_epoch: the encoder the stage keeps
class _Stop(Exception):
    pass


def _scripted_validation(trainer, figures, snapshots, first_epoch=0, stop_at=None):
    """Replace ``trainer.validate``: its n-th call (from ``first_epoch``: 0 is the one before training)
    returns ``figures[epoch]`` and records the weights it saw; ``stop_at``: that epoch's call raises."""
    calls = [first_epoch]

    def validate(stop=None):  # stop: the trainer asks it before each batch (a stop signal)
        epoch = calls[0]
        calls[0] += 1
        if epoch == stop_at:
            raise _Stop(epoch)
        snapshots[epoch] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return {"class_acc": figures[epoch], "loss": 1.0}

    trainer.validate = validate


def _records(out_dir):
    return [json.loads(x) for x in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Epoch 0 (before training) scores highest but is not a trained epoch; epochs 2 and 3 tie: 2 is kept.
SCRIPTED = {0: 0.95, 1: 0.2, 2: 0.7, 3: 0.7, 4: 0.4}


def test_keep_epoch_best_writes_the_weights_of_the_best_trained_epoch_not_the_last(tmp_path):
    from clap_bench.runs.plan import validation_summary

    out = tmp_path / "best"
    trainer = _trainer(out, method="tac", epochs=4, keep_epoch="best", bn_reestimate=False)
    snapshots = {}
    _scripted_validation(trainer, SCRIPTED, snapshots)
    final = torch.load(trainer.fit(), map_location="cpu", weights_only=True)
    assert final["kept_epoch"] == 2 and final["epoch"] == 4
    assert final["selection"] == {"figures": ["class_acc"], "value": pytest.approx(0.7)}
    assert _same_weights(final["model"], snapshots[2])
    assert not _same_weights(snapshots[2], snapshots[4])  # the later epochs did train
    records = _records(out)
    assert [r.get("best_epoch") for r in records] == [None, 1, 2, 2, 2]
    assert [r.get("val_selection") for r in records][1:] == pytest.approx([0.2, 0.7, 0.7, 0.4])
    assert validation_summary(out)["kept_epoch"] == 2
    # keep_epoch: last (the default) writes the last epoch's weights and names it.
    last = _trainer(tmp_path / "last", method="tac", epochs=4, bn_reestimate=False)
    last_snapshots = {}
    _scripted_validation(last, SCRIPTED, last_snapshots)
    last_final = torch.load(last.fit(), map_location="cpu", weights_only=True)
    assert last_final["kept_epoch"] == 4 and _same_weights(last_final["model"], last_snapshots[4])
    assert _same_weights(last_snapshots[2], snapshots[2])  # the same training: only the kept epoch differs
    assert "best_epoch" not in _records(tmp_path / "last")[-1] and "kept_epoch" not in validation_summary(tmp_path / "last")


def test_keep_epoch_best_survives_a_resume_after_the_best_epoch(tmp_path):
    out = tmp_path / "run"
    first = _trainer(out, method="tac", epochs=4, keep_epoch="best", bn_reestimate=False)
    snapshots = {}
    _scripted_validation(first, SCRIPTED, snapshots, stop_at=4)  # stops after epoch 4's training, before its checkpoint
    with pytest.raises(_Stop):
        first.fit()
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["best"]["epoch"] == 2 and not (out / "final.pt").exists()
    # A new trainer (a new process): epoch 2's weights exist only in the checkpoint now.
    resumed = _trainer(out, method="tac", epochs=4, keep_epoch="best", bn_reestimate=False)
    later = {}
    _scripted_validation(resumed, SCRIPTED, later, first_epoch=4)
    final = torch.load(resumed.fit(), map_location="cpu", weights_only=True)
    assert set(later) == {4}  # only epoch 4 was validated again
    assert final["kept_epoch"] == 2 and _same_weights(final["model"], snapshots[2])
    assert [r.get("best_epoch") for r in _records(out)] == [None, 1, 2, 2, 2]


def test_keep_epoch_best_with_real_validation_keeps_the_first_highest_epoch(tmp_path):
    trainer = _trainer(tmp_path / "run", method="tac", epochs=3, keep_epoch="best")
    final = torch.load(trainer.fit(), map_location="cpu", weights_only=True)
    trained = _records(tmp_path / "run")[1:]
    accs = [r["val_class_acc"] for r in trained]
    assert [r["val_selection"] for r in trained] == accs  # TAC: its one head's accuracy
    assert final["kept_epoch"] == 1 + accs.index(max(accs))


def test_keep_epoch_best_is_refused_where_nothing_validates_and_a_checkpoint_without_its_best(tmp_path):
    from clap_bench.io import CheckpointError

    with pytest.raises(ConfigError, match="keep_epoch: best .* validate is false; set validate: true or keep_epoch: last"):
        TrainConfig(keep_epoch="best", validate=False)
    with pytest.raises(ConfigError, match=r"smoke\.yaml\.pretrain: keep_epoch: best .*validate is false"):
        load_profile("smoke", overrides={"pretrain": {"keep_epoch": "best", "validate": False}})
    with pytest.raises(ConfigError, match="keep_epoch: expected one of last, best, got 'first'"):
        TrainConfig(keep_epoch="first")
    with pytest.raises(ConfigError, match="source_pretrain.keep_epoch: 'best': the source stage has no validation"):
        load_profile("smoke", overrides={"source_pretrain": {"keep_epoch": "best"}})
    with pytest.raises(ValueError, match="keep_epoch: best selects the epoch on validation figures, but this training has no validation set"):
        _trainer(tmp_path / "none", method="tac", epochs=1, keep_epoch="best", validation=False)
    # A method selected on a figure validation does not give stops before its first epoch.
    early = _trainer(tmp_path / "early", method="tac", epochs=1, keep_epoch="best")
    early.validate = lambda stop=None: {"loss": 1.0}
    with pytest.raises(ValueError, match=r"method tac .*selects on the validation figures \['class_acc'\], but validation gave no"):
        early.fit()
    assert early.running == {} and early.batch_in_epoch == 0  # no training step was taken
    # A checkpoint of a keep_epoch: last run holds no earlier epoch's weights to choose from.
    _trainer(tmp_path / "last", method="tac", epochs=1).fit()
    (tmp_path / "last" / "final.pt").unlink()
    with pytest.raises(CheckpointError, match="saved after epoch 1 without the weights of its best epoch"):
        _trainer(tmp_path / "last", method="tac", epochs=2, keep_epoch="best").fit()


def _ddp_keep_best_worker(rank, world, port, out_dir, result_dir):
    import torch.distributed as dist

    from clap_bench.training.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        trainer = _trainer(Path(out_dir), method="tac", epochs=3, dist_info=DistInfo(rank, world), keep_epoch="best",
                           bn_reestimate=False)
        trainer.fit()
        Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"best": None if trainer.best is None else trainer.best["epoch"]}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_two_process_run_keeps_the_best_epoch_chosen_and_written_by_rank_0(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_ddp_keep_best_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(results)), nprocs=2, join=True)
    trained = _records(tmp_path / "ddp")[1:]
    accs = [r["val_class_acc"] for r in trained]
    final = torch.load(tmp_path / "ddp" / "final.pt", map_location="cpu", weights_only=True)
    assert final["kept_epoch"] == 1 + accs.index(max(accs)) == trained[-1]["best_epoch"]
    # Rank 0 validates, chooses and writes; rank 1 holds no copy of the weights.
    assert json.loads((results / "rank0.json").read_text())["best"] == final["kept_epoch"]
    assert json.loads((results / "rank1.json").read_text())["best"] is None


def test_each_method_declares_the_validation_figure_it_is_selected_on():
    from dataclasses import dataclass

    from clap_bench.methods import MethodConfig, create_method

    figures = {"class_acc": 0.5, "region_acc": 0.9, "v2t_r1": 0.2, "t2v_r1": 0.4, "loss": 3.0}
    expected = {"tac": ("class_acc",), "tsp": ("class_acc", "region_acc"), "clap": ("class_acc", "region_acc"),
                "clap-mask": ("class_acc", "region_acc"), "clap-no-cls": ("v2t_r1", "t2v_r1")}
    for name, names in expected.items():
        method = create_method(name)
        assert method.selection_figures == names, name
        assert method.selection_value(figures) == pytest.approx(sum(figures[n] for n in names) / len(names)), name
    with pytest.raises(ValueError, match=r"method tsp .*selects on the validation figures \['class_acc', 'region_acc'\], but validation gave no \['region_acc'\]"):
        create_method("tsp").selection_value({"class_acc": 0.5})

    @dataclass
    class OnLoss(MethodConfig):  # a plug-in selecting on its own figure: the lowest validation loss
        name = "on-loss"
        class_head: bool = True
        selection_metric = ("loss",)

        def selection_value(self, figures):
            return -figures["loss"]

    assert OnLoss().selection_figures == ("loss",) and OnLoss().selection_value(figures) == -3.0


# ---------------------------------------------------------------- the none method
def test_none_method_features_equal_the_initial_encoders_on_a_smoke_video(tmp_path):
    from clap_bench.config import resolve_datasets
    from clap_bench.encoders import build_video_encoder
    from clap_bench.features.extract import dataset_videos, encode_videos, extract_features, read_features
    from clap_bench.training import pretrain
    from clap_bench.training.pretrain import resolve_init_weights

    profile = load_profile("smoke")
    resolve_datasets(profile)
    final = pretrain(profile, "none", 0, tmp_path / "none", progress=False)
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["meta"]["method"] == "none" and ckpt["epoch"] == 0
    init = resolve_init_weights(profile, progress=False)
    video = dataset_videos(profile, "activitynet")[:1]
    ours = extract_features(profile, final, "activitynet", tmp_path / "f.h5", progress=False)
    with read_features(ours) as feats:
        got = feats[video[0].id]
    encoder = build_video_encoder(profile.encoder.__class__(**{**profile.encoder.__dict__, "weights": None}), weights=init)
    (_, expected, error), = list(encode_videos(encoder, video, profile.clips, profile.extract.stride_frames,
                                               profile.extract.batch_size, 0, progress=False))
    assert error is None
    np.testing.assert_array_equal(got, expected)


def test_none_shares_one_encoder_and_extraction_over_seeds_and_class_subsets():
    from clap_bench.runs.plan import build_plan

    plan = build_plan(load_profile("smoke"), ["none", "tac"], [0, 1])
    keys = set(plan.stages)
    none_keys = sorted(k for k in keys if k.startswith("none/"))
    assert "none/seed0/pretrain" in keys and "none/seed1/pretrain" not in keys
    assert not any("pretrain-base" in k or "extract-base" in k for k in none_keys)
    assert {"none/seed1/tal", "none/seed1/fstal", "none/seed1/vlg"} <= keys
    assert plan.stages["none/seed1/fstal"].deps == ("none/seed0/extract-activitynet",)
    assert "tac/seed1/pretrain-base" in keys


def test_log_every_logs_the_running_loss_and_changes_nothing_else(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="clap_bench.training.trainer"):
        logged = _trainer(tmp_path / "logged", epochs=1, validation=False, log_every=1)
        logged.fit()
    lines = [r.getMessage() for r in caplog.records if "running loss" in r.getMessage()]
    assert len(lines) == 2  # 12 clips in batches of 6
    assert lines[0].startswith("epoch 1/1, batch 1/2: running loss ") and "contrastive " in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clap_bench.training.trainer"):
        quiet = _trainer(tmp_path / "quiet", epochs=1, validation=False, log_every=0)
        quiet.fit()
    assert not any("running loss" in r.getMessage() for r in caplog.records)
    for (k, a), b in zip(logged.model.state_dict().items(), quiet.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="log_every"):
        TrainConfig(log_every=-1)


def test_global_video_features_are_cached_per_extraction_grid(tmp_path, monkeypatch):
    # TSP's GVF max-pools the initial encoder's features over the extraction grid: a cache made on
    # one grid (here the last clip rule) must not be served to another.
    import clap_bench.encoders
    import clap_bench.features.extract
    from clap_bench.training.pretrain import global_video_features

    grids = []

    def fake_encode(encoder, videos, clips, stride, batch_size, workers, progress, desc, last_clip, snap_duration_to_frames):
        grids.append(last_clip)
        for v in videos:
            yield v.id, np.full((3, 4), 1.0 if last_clip == "span" else 2.0, dtype=np.float32), None

    monkeypatch.setattr(clap_bench.features.extract, "encode_videos", fake_encode)
    monkeypatch.setattr(clap_bench.encoders, "build_video_encoder", lambda cfg, weights=None: None)
    videos = [Video("v_a", 10.0, "training"), Video("v_b", 12.0, "training")]
    gvf = {}
    for rule in ("span", "frames", "span"):
        profile = load_profile("smoke", overrides={"data": {"cache_dir": str(tmp_path)}, "extract": {"last_clip": rule}})
        gvf[rule] = global_video_features(profile, None, videos, "activitynet", progress=False)
    assert grids == ["span", "frames"]  # the third call is served from the span grid's cache
    assert float(gvf["span"]["v_a"][0]) == 1.0 and float(gvf["frames"]["v_a"][0]) == 2.0
    assert len(list((tmp_path / "gvf").glob("activitynet-*.pt"))) == 2


def test_pretraining_logs_its_datas_drop_counts_and_notes_once_at_the_start(tmp_path, monkeypatch, caplog):
    import importlib
    import logging

    pretrain_module = importlib.import_module("clap_bench.training.pretrain")  # the package exports the function under that name
    seen = {}

    class Recorder:  # stands in for the trainer: what pre-training would train and validate on
        def __init__(self, model, dataset, cfg, out_dir, *args, validation=None, **kwargs):
            seen["train"], seen["val"], self.out_dir = dataset.annotations, validation.annotations, Path(out_dir)

        def fit(self):
            return self.out_dir / "final.pt"

    monkeypatch.setattr(pretrain_module, "Trainer", Recorder)
    profile = load_profile("smoke", {"pretrain": {"epochs": 1}})
    with caplog.at_level(logging.INFO, logger="clap_bench.training.pretrain"):
        pretrain_module.pretrain(profile, "clap", 0, tmp_path / "clap", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "clap_bench.training.pretrain"]
    train, val = seen["train"], seen["val"]
    assert any(n.startswith("captions from ") for n in train.notes)  # clap reads captions: the join's notes at least
    assert lines == (
        [f"clap pre-training: activitynet training: {len(train.videos)} videos; {train.dropped} annotations dropped (why: the notes)"]
        + [f"clap pre-training: activitynet training: note: {n}" for n in train.notes]
        + [f"clap pre-training: activitynet validation: {len(val.videos)} videos; {val.dropped} annotations dropped (why: the notes)"]
        + [f"clap pre-training: activitynet validation: note: {n}" for n in val.notes]
    )
