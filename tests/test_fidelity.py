"""The `paper` profile states the paper's protocol: each switch of FIDELITY.md, read from the resolved
config (not the YAML text), and the behaviour each switch selects."""

from __future__ import annotations

import pytest

from clap_bench.config import load_profile
from clap_bench.encoders import TextModelNotFoundError, resolve_text_model


@pytest.fixture(scope="module")
def paper():
    return load_profile("paper")


def test_paper_text_encoder_is_bert(paper):
    assert paper.encoder.text_model == "bert-base-uncased"


def test_unavailable_text_model_says_what_to_fetch_and_which_key_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is found offline
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextModelNotFoundError) as err:
        resolve_text_model("no-such-org/no-such-text-model")
    message = str(err.value)
    assert "encoder.text_model" in message
    assert "huggingface-cli download no-such-org/no-such-text-model" in message
    assert str(tmp_path / "hf") in message
    with pytest.raises(TextModelNotFoundError, match="no config.json"):
        resolve_text_model(tmp_path)  # a folder that is not a model


def test_text_model_given_as_a_folder_is_used_as_is():
    bundled = resolve_text_model(None)
    assert resolve_text_model(str(bundled)) == bundled
