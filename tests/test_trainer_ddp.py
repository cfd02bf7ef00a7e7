"""The trainer stopped mid-epoch and resumed: the records and weights are those of an uninterrupted run,
also where the data draws from the global random state."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from test_pretrain_batches import TinyClips, _trainer


class RandomNoiseClips(TinyClips):
    """TinyClips plus (``noise``) noise from the global torch RNG, drawn in an amount that depends on
    the item. ``hook(epoch, index)`` runs before each item. Validation sets take no noise: the trainer's validation reads no training random stream."""

    def __init__(self, n, seed=0, train=True, hook=None, noise=True):
        super().__init__(n, seed=seed, train=train)
        self.hook, self.noise = hook, noise

    def __getitem__(self, i):
        if self.hook is not None:
            self.hook(self.epoch, i)
        item = super().__getitem__(i)
        if self.noise:
            item["clips"] = item["clips"] + 0.1 * torch.rand(1 + i % 3)[-1]
        return item


def _records(out_dir):
    """metrics.jsonl without the timing figures, which differ from run to run."""
    records = [json.loads(x) for x in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "clips_per_s"} for r in records]


def _stop_at_item(n):
    """A dataset hook sending this process SIGTERM at the n-th item read in epoch 2."""
    calls = []

    def hook(epoch, i):
        if epoch == 1:
            calls.append(i)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)

    return hook


def test_one_process_resumed_mid_epoch_follows_the_uninterrupted_random_stream(tmp_path):
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
    resumed = _trainer(out, epochs=2, batch_size=4, data=RandomNoiseClips(12))
    resumed.fit()
    assert _records(out) == _records(tmp_path / "straight")
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after the resume"


