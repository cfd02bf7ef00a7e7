"""The trainer stopped mid-epoch and resumed, in one process and in two gloo processes: every process
resumes its own running sums and RNG states, so the records and weights are those of an uninterrupted
run, also where the data draws from the global random state."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from test_pretrain_batches import TinyClips, _free_port, _trainer

WORLD = 2
UNREADABLE = (0, 5, 13, 22)  # items read by one process or the other, depending on the epoch


class RandomNoiseClips(TinyClips):
    """TinyClips plus (``noise``) noise from the global torch RNG, drawn in an amount that depends on
    the item: the two processes read other items, so their RNG states part after the first batch, and
    a process resumed with another's states reads other clips. ``hook(epoch, index)`` runs before each
    item. Validation sets take no noise: the trainer's validation reads no training random stream."""

    def __init__(self, n, seed=0, train=True, hook=None, noise=True, unreadable=()):
        super().__init__(n, seed=seed, train=train)
        self.hook, self.noise, self.unreadable = hook, noise, set(unreadable)

    def __getitem__(self, i):
        if self.hook is not None:
            self.hook(self.epoch, i)
        if i in self.unreadable:  # an undecodable video: the collate function leaves it out and counts it
            return {"skipped": True, "video_id": f"v{i % 4}", "reason": "unreadable"}
        item = super().__getitem__(i)
        if self.noise:
            item["clips"] = item["clips"] + 0.1 * torch.rand(1 + i % 3)[-1]
        return item


def _worker(rank, world, port, out_dir, stop):
    """One process of the run in ``out_dir``. ``stop``: None (train to the end), "train" (rank 0 sends
    itself SIGTERM at the first item of epoch 2's second batch) or "validation" (SIGUSR2 at the first
    item of the validation after epoch 1). A stopped process leaves ``stopped-rank<r>`` with its exit code."""
    import torch.distributed as dist

    from clap_bench.training.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    fetched = {"train": 0, "validation": 0}

    def train_hook(epoch, i):
        if epoch == 1:
            fetched["train"] += 1
            if stop == "train" and rank == 0 and fetched["train"] == 5:  # 4 items per batch
                os.kill(os.getpid(), signal.SIGTERM)

    def validation_hook(epoch, i):
        fetched["validation"] += 1
        if stop == "validation" and fetched["validation"] == 9:  # 8 items per pass; rank 0 validates
            os.kill(os.getpid(), signal.SIGUSR2)

    try:
        trainer = _trainer(Path(out_dir), epochs=3, dist_info=DistInfo(rank, world), batch_size=4, validation=False,
                           data=RandomNoiseClips(24, hook=train_hook, unreadable=UNREADABLE))
        trainer.validation = RandomNoiseClips(8, seed=7, train=False, hook=validation_hook, noise=False)
        try:
            trainer.fit()
        except SystemExit as e:  # TrainingInterrupted: checkpoint written on every process
            Path(out_dir, f"stopped-rank{rank}").write_text(str(e.code))
    finally:
        dist.destroy_process_group()


def _run(out_dir, stop=None):
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out_dir), stop), nprocs=WORLD, join=True)


def _records(out_dir):
    """metrics.jsonl without the timing figures, which differ from run to run."""
    records = [json.loads(x) for x in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "clips_per_s"} for r in records]


def _final_weights(out_dir):
    return torch.load(Path(out_dir) / "final.pt", map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "straight"
    _run(out)
    return out


@pytest.mark.slow  # two processes (the uninterrupted run the next test compares with)
def test_a_two_process_epoch_record_counts_every_process_s_clips_and_skipped_segments(uninterrupted):
    from clap_bench.training.distributed import shard_order

    trained = _records(uninterrupted)[1:]
    assert [r["epoch"] for r in trained] == [1, 2, 3]
    assert [r["clips"] for r in trained] == [24 - len(UNREADABLE)] * 3
    assert [r["skipped_segments"] for r in trained] == [len(UNREADABLE)] * 3
    # rank 1 read some of the unreadable items: rank 0's count alone is not the epoch's
    assert any(set(shard_order(24, 0, epoch, 1, WORLD)) & set(UNREADABLE) for epoch in range(3))


@pytest.mark.slow  # per case two runs of two processes, after one uninterrupted run (40-90 s on 2 cores)
@pytest.mark.parametrize("stop, position, code", [("train", (1, 2), 128 + signal.SIGTERM),
                                                  ("validation", (0, 3), 128 + signal.SIGUSR2)])
def test_two_processes_stopped_mid_epoch_resume_their_own_sums_and_random_states(uninterrupted, tmp_path, stop, position,
                                                                                 code):
    out = tmp_path / "stopped"
    _run(out, stop=stop)
    # rank 0 received the signal; rank 1 stops as on SIGTERM, the signal of "another process received one"
    assert [Path(out, f"stopped-rank{r}").read_text() for r in range(WORLD)] == [str(code), str(128 + signal.SIGTERM)]
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == position  # train: epoch 2, batch 2 of 3; validation: after epoch 1
    assert len(ckpt["ranks"]) == WORLD
    # the processes' sums and random states differ: resuming both from rank 0's cannot be exact
    assert ckpt["ranks"][0]["running"] != ckpt["ranks"][1]["running"]
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    for r in range(WORLD):
        Path(out, f"stopped-rank{r}").unlink()
    _run(out)
    assert not any(Path(out, f"stopped-rank{r}").exists() for r in range(WORLD)) and (out / "final.pt").exists()
    assert _records(out) == _records(uninterrupted)
    straight, resumed = _final_weights(uninterrupted), _final_weights(out)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), f"{k} differs after the resume"


def _stop_at_item(n):
    """A dataset hook sending this process SIGTERM at the n-th item read in epoch 2."""
    calls = []

    def hook(epoch, i):
        if epoch == 1:
            calls.append(i)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)

    return hook


def test_one_process_resumed_mid_epoch_follows_the_uninterrupted_random_stream_also_from_a_checkpoint_without_ranks(tmp_path):
    # The dataset draws from the global RNG: a resume is exact only when the states after it are the
    # uninterrupted run's, although the resumed epoch starts a loader of its own (which draws a seed).
    torch.set_num_threads(1)  # two threads on a busy 2-core machine: ten times slower
    straight = _trainer(tmp_path / "straight", epochs=2, batch_size=4, data=RandomNoiseClips(12))
    straight.fit()
    out = tmp_path / "stopped"
    with pytest.raises(SystemExit):
        _trainer(out, epochs=2, batch_size=4, data=RandomNoiseClips(12, hook=_stop_at_item(5))).fit()
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 2)
    assert len(ckpt["ranks"]) == 1 and ckpt["ranks"][0]["running"] == ckpt["running"]
    # An older trainer's checkpoint: one "running" and one "rng", no "ranks".
    shutil.copytree(out, tmp_path / "old")
    del ckpt["ranks"]
    torch.save(ckpt, tmp_path / "old" / "checkpoint.pt")
    for name in ("stopped", "old"):
        resumed = _trainer(tmp_path / name, epochs=2, batch_size=4, data=RandomNoiseClips(12))
        resumed.fit()
        assert _records(tmp_path / name) == _records(tmp_path / "straight"), name
        for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), f"{name}: {k} differs after the resume"


def test_a_checkpoint_of_another_number_of_processes_gives_every_process_rank_0s_states(tmp_path, caplog):
    import logging

    from clap_bench.training.distributed import DistInfo

    trainer = _trainer(tmp_path / "run", epochs=1, validation=False)
    entries = [{"running": {}, "rng": {"rank": r}} for r in range(3)]
    boundary = {"world_size": 3, "epoch": 1, "batch_in_epoch": 0, "running": {}, "rng": {"rank": 0}, "ranks": entries}
    for rank in (0, 1):  # two processes resume the checkpoint of three (at an epoch boundary)
        trainer.dist = DistInfo(rank, 2)
        assert trainer._own_saved_state(boundary)["rng"] == {"rank": 0}
    trainer.dist = DistInfo(1, 3)  # as many processes: each its own entry
    assert trainer._own_saved_state(boundary)["rng"] == {"rank": 1}
    # mid-epoch, several processes, no "ranks" (an older trainer): rank 0's for all, and a warning naming the file
    old = {"world_size": 2, "epoch": 0, "batch_in_epoch": 3, "running": {"sum_loss": 2.0}, "rng": {"rank": 0}}
    trainer.dist = DistInfo(0, 2)
    with caplog.at_level(logging.WARNING, logger="clap_bench.training.trainer"):
        assert trainer._own_saved_state(old) == {"running": {"sum_loss": 2.0}, "rng": {"rank": 0}}
    assert any(f"{tmp_path / 'run' / 'checkpoint.pt'}: saved mid-epoch by 2 processes without each process's running sums"
               in r.getMessage() for r in caplog.records)
