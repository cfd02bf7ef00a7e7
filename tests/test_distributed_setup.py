"""Joining the process group: collectives wait long enough for the main process's solo work."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from clap_bench.training import distributed


def _join(monkeypatch) -> dict:
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    info = distributed.setup_distributed()
    assert (info.rank, info.world_size) == (0, 2)
    return seen


def test_the_process_group_waits_hours_not_torchs_default_minutes(monkeypatch):
    # TSP's global video features and each epoch's validation run on the main process alone while
    # the others wait at a barrier: NCCL's default 10 minutes would abort them on real data.
    monkeypatch.delenv("CLAPBENCH_DIST_TIMEOUT_MINUTES", raising=False)
    assert _join(monkeypatch)["timeout"] == timedelta(hours=24)
    monkeypatch.setenv("CLAPBENCH_DIST_TIMEOUT_MINUTES", "90")
    assert _join(monkeypatch)["timeout"] == timedelta(minutes=90)


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_timeout_that_is_not_a_positive_number_of_minutes_is_named(monkeypatch, value):
    monkeypatch.setenv("CLAPBENCH_DIST_TIMEOUT_MINUTES", value)
    with pytest.raises(ValueError, match=f"CLAPBENCH_DIST_TIMEOUT_MINUTES: expected a positive number of minutes, got '{value}'"):
        _join(monkeypatch)
