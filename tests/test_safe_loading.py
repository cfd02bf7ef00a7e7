"""Torch files are read with ``weights_only=True``: a checkpoint whose unpickling would run code is
refused unread (``encoder.weights``, ``clapbench pretrain --init``, resuming a checkpoint), while this
package's own checkpoints, torchvision's Kinetics-400 state dicts and TSP's ``{"model": ...}`` files load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torchvision.models.video import r2plus1d_18
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import EncoderConfig
from clap_bench.encoders import build_video_encoder
from clap_bench.io import UnsafeCheckpointError
from test_trainer import SCRIPT

TINY = EncoderConfig(arch="r2plus1d_tiny", width=0.125)


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like a weights file: a real state dict plus an object that runs code."""
    state = build_video_encoder(TINY).state_dict()
    torch.save({"model": {f"backbone.{k}": v for k, v in state.items()}, "extra": _CreatesMarker(marker)}, path)
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code_ran"
    path = _evil_checkpoint(tmp_path / "evil.pt", marker)
    return path, marker


def test_the_evil_checkpoint_really_runs_code_when_unpickled(evil):
    path, marker = evil  # the other tests' refusal means something only if this one holds
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_encoder_weights_refuse_a_checkpoint_that_runs_code(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125, weights=str(path)))
    assert str(path) in str(info.value) and "arbitrary" in str(info.value) and "io.open" in str(info.value)  # the global it would call
    assert not marker.exists()


def test_pretrain_init_refuses_a_checkpoint_that_runs_code(evil, tmp_path):
    path, marker = evil
    result = CliRunner().invoke(app, ["pretrain", "--method", "tac", "--profile", "smoke", "--init", str(path),
                                      "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "refused" in result.output and str(path) in result.output
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "tiny_training_safe.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("tiny_training_safe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_refuses_a_checkpoint_that_runs_code(evil, tmp_path, tiny_training):
    path, marker = evil
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(path.read_bytes())
    with pytest.raises(UnsafeCheckpointError) as info:
        tiny_training.train(out, epochs=1)
    assert str(out / "checkpoint.pt") in str(info.value)
    assert not marker.exists()


def test_own_checkpoints_load_with_weights_only(tmp_path, tiny_training):
    final = tiny_training.train(tmp_path / "run", epochs=1)
    for name in ("checkpoint.pt", "final.pt"):  # RNG states, optimiser, schedule, metadata included
        ckpt = torch.load(tmp_path / "run" / name, map_location="cpu", weights_only=True)
        assert ckpt["format"] == "clap_bench.pretrain/1"
    assert isinstance(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["rng"]["numpy"]["key"], torch.Tensor)
    encoder = build_video_encoder(TINY, weights=final)
    saved = torch.load(final, weights_only=True)["model"]
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, saved[f"backbone.{k}"]), k
    # ... and a second run resumes from the finished run's checkpoint without training again
    assert tiny_training.train(tmp_path / "run", epochs=1) == final


def test_torchvision_kinetics_and_tsp_style_files_still_load(tmp_path, monkeypatch):
    net = r2plus1d_18(weights=None)  # torchvision's layout, as in r2plus1d_18-91a641e6.pth
    state = net.state_dict()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth")
    tsp = {"model": {**{f"features.{k}": v for k, v in state.items() if not k.startswith("fc.")},
                     "fc1.weight": torch.zeros(2, 512), "fc2.weight": torch.zeros(200, 512)}, "epoch": 5}
    torch.save(tsp, tmp_path / "tsp.pth")
    torch.save(state, tmp_path / "plain.pth")
    for weights in ("kinetics400", str(tmp_path / "tsp.pth"), str(tmp_path / "plain.pth")):
        encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_18", weights=weights))
        loaded = encoder.body.net.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in loaded), weights


def test_a_file_that_is_no_torch_file_is_named_as_such_not_as_unsafe(tmp_path, evil):
    from clap_bench.io import load_torch_file

    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"these are not weights\n")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_file(garbage)
    assert str(garbage) in str(info.value) and "not a file torch.save writes" in str(info.value)
    assert "arbitrary" not in str(info.value)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary"):  # a real torch file that runs code: unsafe
        load_torch_file(evil[0])
