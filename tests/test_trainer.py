"""The shared trainer: resume after kill -9 or SIGTERM, determinism, stop on a non-finite loss."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import clap_bench.training.trainer as trainer_module
from clap_bench.config import ConfigError

# A self-contained training script: the test runs it in a subprocess (to SIGKILL it) and
# imports it in-process for the other runs.
SCRIPT = r'''
import hashlib, os, signal, sys, time
from pathlib import Path
import torch
from clap_bench.config import EncoderConfig, TrainConfig
from clap_bench.encoders import build_video_encoder
from clap_bench.methods import PretrainModel, create_method
from clap_bench.clips import collate_segments
from clap_bench.training.trainer import Trainer, seed_everything

K = 2  # clips per segment
CLASSES = ["a", "b", "c"]


class TinySegments(torch.utils.data.Dataset):
    """Six segments of K random clips; clip content is a function of (seed, epoch, index)."""

    def __init__(self, seed, nan_at=None, hook=None):
        self.seed, self.epoch, self.nan_at, self.hook = seed, 0, nan_at, hook

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if self.hook is not None:
            self.hook(self.epoch, i)
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch * 100 + i)
        clips = torch.randn(K, 3, 4, 28, 28, generator=g)
        if self.nan_at is not None and (self.epoch, i) == self.nan_at:
            clips[:] = float("nan")
        fg = i % 3 != 2
        cls = i % 3
        label = torch.full((K,), cls if fg else -1)
        region = torch.full((K,), int(fg))
        text = ("foreground of " if fg else "background of ") + CLASSES[cls]
        return {"clips": clips, "label": label, "region": region, "texts": [text] * K,
                "video_id": f"v{i // 2}", "segment": (0.0, 1.0), "clip_starts": torch.zeros(K)}


def text_features(texts):
    # Stands in for the frozen language model: a fixed vector per string.
    rows = []
    for t in texts:
        s = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
        rows.append(torch.randn(16, generator=torch.Generator().manual_seed(s)))
    return torch.stack(rows)


def train(out_dir, epochs=2, seed=0, nan_at=None, hook=None, validation_hook=None, validate=False, **train_kw):
    seed_everything(seed)
    torch.set_num_threads(1)
    method = create_method("clap-mask")
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    model = PretrainModel(encoder, method, num_classes=3, text_dim=16, embed_dim=8)
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr_backbone=1e-2, lr_heads=2e-2, lr_step_epochs=1, lr_gamma=0.5, **train_kw)
    validation = TinySegments(seed + 1, hook=validation_hook) if validate else None
    trainer = Trainer(model, TinySegments(seed, nan_at, hook), cfg, Path(out_dir), seed, collate_segments, K,
                      text_features=text_features, meta={"method": method.name}, progress=False, device="cpu",
                      validation=validation)
    return trainer.fit()


if __name__ == "__main__":
    out, marker = sys.argv[1], sys.argv[2]

    def stall_in_epoch_2(epoch, i):
        # Announce that epoch 2 is running and hang, so the parent can kill -9 mid-epoch.
        if epoch == 1 and os.path.exists(os.path.join(out, "checkpoint.pt")):
            Path(marker).write_text(str(i))
            time.sleep(120)

    train(out, hook=stall_in_epoch_2)
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "tiny_training.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("tiny_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = path
    return module


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def straight(script, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return script.train(out)


def test_same_seed_gives_identical_weights_and_metrics(script, straight, tmp_path):
    again = script.train(tmp_path / "again")
    _assert_same(_weights(straight), _weights(again))
    m1 = [json.loads(x) for x in (straight.parent / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (again.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == 2 and [r["loss"] for r in m1] == [r["loss"] for r in m2]
    for key in ("class_ce", "region_ce", "contrastive", "class_acc", "region_acc", "clips_per_s"):
        assert key in m1[0]
    assert m1[0]["clips"] == 12
    # A different seed trains differently.
    other = script.train(tmp_path / "other", seed=1)
    assert not torch.equal(_weights(other)["class_head.weight"], _weights(straight)["class_head.weight"])


def test_cpu_bf16_is_refused_where_the_bf16_conv3d_gradient_is_not_repeatable(monkeypatch, script, tmp_path):
    # Where the probe finds the kernels unreliable, training stops before its first step with an
    # error naming the key; nothing is written.
    monkeypatch.setattr(trainer_module, "cpu_bf16_conv3d_is_reliable", lambda tries=16: False)
    with pytest.raises(ConfigError, match=r"cpu_bf16: this CPU's bfloat16 Conv3d kernels .*source_pretrain.cpu_bf16: false"):
        script.train(tmp_path / "bf16", cpu_bf16=True)
    assert not (tmp_path / "bf16" / "final.pt").exists()


def test_cpu_bf16_trains_under_bfloat16_autocast_and_is_deterministic(script, straight, tmp_path):
    if not trainer_module.cpu_bf16_conv3d_is_reliable():
        # torch 2.14.1 on an AVX-512-BF16 CPU without AMX: the probe's gradient changes from call to
        # call (sometimes NaN), and so did the tiny model's weights from one bf16 training to the
        # next; such a CPU refuses cpu_bf16 (the test above), so there is nothing to train here.
        with pytest.raises(ConfigError, match="cpu_bf16"):
            script.train(tmp_path / "bf16", cpu_bf16=True)
        return
    first = script.train(tmp_path / "bf16", cpu_bf16=True)
    again = script.train(tmp_path / "bf16-again", cpu_bf16=True)
    _assert_same(_weights(first), _weights(again))
    fp32, bf16 = _weights(straight), _weights(first)
    assert all(v.dtype == fp32[k].dtype for k, v in bf16.items())  # the weights stay fp32
    # the forward passes ran in bfloat16: the same seed trains to other weights than in fp32
    assert not torch.equal(bf16["class_head.weight"], fp32["class_head.weight"])
    losses = [json.loads(x)["loss"] for x in (first.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_the_bf16_probe_leaves_the_global_random_state_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    trainer_module.cpu_bf16_conv3d_is_reliable(tries=2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_kill_9_in_epoch_2_then_resume_gives_identical_weights(script, straight, tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "in-epoch-2"
    proc = subprocess.Popen([sys.executable, str(script.PATH), str(out), str(marker)])
    try:
        deadline = time.time() + 300  # generous: on a loaded machine the first epoch can take a minute
        while not marker.exists():
            assert proc.poll() is None, "training script exited early"
            assert time.time() < deadline, "epoch 2 never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "final.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = script.train(out)
    _assert_same(_weights(straight), _weights(resumed))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_sigterm_mid_epoch_checkpoints_position_and_resume_is_exact(script, straight, tmp_path):
    out = tmp_path / "term"

    def term_at_second_batch_of_epoch_2(epoch, i):
        if epoch == 1 and not hasattr(term_at_second_batch_of_epoch_2, "sent"):
            term_at_second_batch_of_epoch_2.calls = getattr(term_at_second_batch_of_epoch_2, "calls", 0) + 1
            if term_at_second_batch_of_epoch_2.calls == 3:  # first item of the second batch
                term_at_second_batch_of_epoch_2.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as stop:
        script.train(out, hook=term_at_second_batch_of_epoch_2)
    assert stop.value.code == 128 + signal.SIGTERM
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 2)
    resumed = script.train(out)
    _assert_same(_weights(straight), _weights(resumed))


def _records(out):
    """metrics.jsonl without the timing figures (clips/s differ from run to run)."""
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "clips_per_s"} for r in records]


def test_usr2_during_an_epochs_validation_stops_it_and_resume_redoes_that_validation_exactly(script, tmp_path):
    straight = script.train(tmp_path / "straight", validate=True)
    out = tmp_path / "usr2"
    fetched = []  # validation items read: 6 per pass (epoch 0 before training, then after each epoch)

    def usr2_in_the_validation_after_epoch_1(epoch, i):
        fetched.append(i)
        if len(fetched) == 7:  # the first item of the second pass
            os.kill(os.getpid(), signal.SIGUSR2)

    with pytest.raises(SystemExit) as stop:
        script.train(out, validate=True, validation_hook=usr2_in_the_validation_after_epoch_1)
    assert stop.value.code == 128 + signal.SIGUSR2
    assert len(fetched) < 12  # the second pass stopped at its next batch, not after the whole set
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (0, 3)  # every batch of epoch 1 done, its validation pending
    assert [r["epoch"] for r in _records(out)] == [0]  # no record of epoch 1 from part of its validation
    resumed = script.train(out, validate=True)
    _assert_same(_weights(straight), _weights(resumed))
    assert _records(out) == _records(tmp_path / "straight")  # epoch 1's validation redone: the same figures
    assert [r["epoch"] for r in _records(out)] == [0, 1, 2]


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(script, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(Exception) as err:
        script.train(out, nan_at=_first_item_of_epoch_2(script))
    assert "non-finite loss at epoch 2" in str(err.value)
    assert "last good checkpoint" in str(err.value)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 0
    for v in ckpt["model"].values():
        assert torch.isfinite(v.float()).all()
    assert not (out / "final.pt").exists()


def _first_item_of_epoch_2(script):
    from clap_bench.training.distributed import shard_order

    return (1, shard_order(6, 0, 1)[0])


def test_finished_run_is_not_trained_again(script, straight):
    stamp = straight.stat().st_mtime_ns
    assert script.train(straight.parent) == straight
    assert straight.stat().st_mtime_ns == stamp


def test_tsp_schedule_warms_up_from_factor_1e5_as_tsps_warmup_multistep_lr():
    from clap_bench.config import TrainConfig
    from clap_bench.training.trainer import lr_factor

    cfg = TrainConfig(schedule="tsp", warmup_epochs=2, milestones=[4, 6], lr_gamma=0.01)
    # TSP common/scheduler.py with warmup_factor=1e-5: 1e-5 * (1 - a) + a, a = epoch / warmup_epochs
    for epoch in (0.0, 0.001, 0.5, 1.0, 1.999):
        a = epoch / 2
        assert lr_factor(cfg, epoch) == pytest.approx(1e-5 * (1 - a) + a, rel=1e-12, abs=0), epoch
    assert lr_factor(cfg, 0.0) == pytest.approx(1e-5)
    assert lr_factor(cfg, 2.0) == 1.0 and lr_factor(cfg, 3.9) == 1.0
    assert lr_factor(cfg, 4.0) == pytest.approx(0.01) and lr_factor(cfg, 6.5) == pytest.approx(1e-4)


def test_the_trainer_keeps_a_learned_logit_scale_within_its_bound_after_each_step(script, tmp_path):
    import math

    from clap_bench.clips import collate_segments
    from clap_bench.config import ContrastiveConfig, EncoderConfig, TrainConfig
    from clap_bench.encoders import build_video_encoder
    from clap_bench.methods import PretrainModel, create_method
    from clap_bench.training.trainer import Trainer, seed_everything

    seed_everything(0)
    method = create_method("clap-mask")
    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    model = PretrainModel(encoder, method, num_classes=3, text_dim=16, embed_dim=8,
                          contrastive=ContrastiveConfig(temperature=0.01, learn_temperature=True))
    with torch.no_grad():  # past the bound, e.g. a checkpoint of a trainer that did not clamp
        model.log_logit_scale.fill_(math.log(1000.0))
    cfg = TrainConfig(epochs=1, batch_size=4, lr_backbone=1e-2, lr_heads=2e-2)
    Trainer(model, script.TinySegments(0), cfg, tmp_path, 0, collate_segments, script.K,
            text_features=script.text_features, meta={"method": method.name}, progress=False, device="cpu").fit()
    assert model.log_logit_scale.item() <= math.log(100.0) + 1e-6


def test_resuming_at_an_epoch_boundary_with_another_world_size_takes_this_runs_rates_and_schedule(script, tmp_path):
    # A checkpoint of 2 processes (rates x 2, the schedule counting their steps per epoch) resumed by
    # one: the rates must be one process's at the start of epoch 3, not the old run's carried over.
    from clap_bench.clips import collate_segments
    from clap_bench.config import EncoderConfig, TrainConfig
    from clap_bench.encoders import build_video_encoder
    from clap_bench.methods import PretrainModel, create_method
    from clap_bench.training.trainer import Trainer, load_checkpoint, lr_factor, save_atomic, seed_everything

    def trainer(epochs):
        seed_everything(0)
        method = create_method("clap-mask")
        encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
        model = PretrainModel(encoder, method, num_classes=3, text_dim=16, embed_dim=8)
        cfg = TrainConfig(epochs=epochs, batch_size=4, lr_backbone=1e-2, lr_heads=2e-2, lr_step_epochs=1, lr_gamma=0.5)
        return Trainer(model, script.TinySegments(0), cfg, tmp_path, 0, collate_segments, script.K,
                       text_features=script.text_features, meta={"method": method.name}, progress=False, device="cpu"), cfg

    first, _ = trainer(2)
    first.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["batch_in_epoch"] == 0
    two_steps = max(1, first.steps_per_epoch // 2)
    ckpt["world_size"] = 2
    ckpt["scheduler"]["base_lrs"] = [2 * b for b in ckpt["scheduler"]["base_lrs"]]
    ckpt["scheduler"]["last_epoch"] = 2 * two_steps
    save_atomic(ckpt, tmp_path / "checkpoint.pt")
    resumed, cfg = trainer(4)
    own = list(resumed.scheduler.base_lrs)  # one process's rates
    assert resumed._resume() and resumed.epoch == 2
    assert resumed.scheduler.base_lrs == pytest.approx(own)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([b * lr_factor(cfg, 2.0) for b in own])
    assert resumed.scheduler.last_epoch == 2 * resumed.steps_per_epoch
