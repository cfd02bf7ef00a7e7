"""2D-TAN beside its reference code (microsoft/VideoX, ``2D-TAN``): the parts that need no reference.

``benchmarks/reference/tan2d_vs_reference.py`` trains the reference 2D-TAN and ours on the same
Charades-STA-like files and feature file and compares what comes out. What it needs that does not
touch the reference code lives here, so the test suite checks it:

* **Files.** ``write_charades_sta`` writes the queries as the reference's Charades reader reads
  them (``lib/datasets/charades.py``): ``charades_sta_<split>.txt`` lines ``VID start end##sentence``
  and ``Charades_v1_<split>.csv`` with the columns ``id`` and ``length``; ``write_reference_features``
  copies the videos' features into ``<VIS_INPUT_TYPE>_features.hdf5`` (one ``(T, D)`` dataset per
  video id, the layout of our feature files).
* **Words.** The reference looks up GloVe vectors through torchtext, which cannot download them
  here. ``WordTable`` is one table of word vectors for both models: the script hands it to the
  reference as the vocabulary torchtext would return and to ours as its ``word_vectors``; both
  split a sentence as the reference does (``reference_words``), so both LSTMs read the same rows.
* **Configuration.** ``reference_config`` writes our ``tasks.vlg`` settings as the reference's
  YAML; ``config_differences`` lists where two such YAMLs differ (ours against the published
  ``2D-TAN-16x16-K5L8-pool.yaml``).
* **Scoring.** ``reference_eval_inputs`` turns our predictions into the reference scorer's input
  (``lib/core/eval.py``: ranked segments and annotations in query order);
  ``predictions_from_reference`` turns the reference's ranked moments into ours (NMS with our
  ``nms``, top ``k``); ``metrics_from_reference`` reads its result array as our metric names.
* **Comparison.** ``compare_runs`` gives mean ± std per metric over seeds for both and Welch's
  p-value; ``format_comparison`` and ``format_cross_scores`` print them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from clap_bench.io import FeatureFileError
from clap_bench.reference import require_reference

REFERENCE_NAME = "2D-TAN (the 2D-TAN folder of microsoft/VideoX)"
REFERENCE_URL = "https://github.com/microsoft/VideoX"
REFERENCE_COMMIT = "1744b2159c3d11694f94dab4fcde8660c685e79a"
REFERENCE_MARKER = "lib/datasets/charades.py"
PUBLISHED_CONFIG = "experiments/charades/2D-TAN-16x16-K5L8-pool.yaml"
VIS_INPUT_TYPE = "clapbench"  # the reference reads <DATA_DIR>/<VIS_INPUT_TYPE>_features.hdf5

IOU_THRESHOLDS = (0.3, 0.5, 0.7)
RANKS = (1, 5)
METRIC_KEYS = tuple(f"R@{k}@{t:g}" for k in RANKS for t in IOU_THRESHOLDS) + ("mIoU",)


def require_tan2d(path) -> Path:
    """The 2D-TAN folder of a VideoX checkout, or an error that says how to fetch it."""
    return require_reference(path, REFERENCE_NAME, REFERENCE_URL, REFERENCE_COMMIT, REFERENCE_MARKER)


# --------------------------------------------------------------------------- Charades-STA files
def reference_words(sentence: str) -> List[str]:
    """The words the reference's Charades reader looks up for ``sentence`` written on one txt line.

    It reads ``sent = line.split('##')[1].split('.\\n')[0]`` (a final period goes with the line
    break), then looks up ``w.lower()`` for ``w in sent.split()``.
    """
    return [w.lower() for w in (sentence + "\n").split(".\n")[0].split()]


def write_charades_sta(split_queries: Mapping[str, Sequence], out_dir: Path | str) -> Dict[str, Tuple[Path, Path]]:
    """Write ``charades_sta_<split>.txt`` and ``Charades_v1_<split>.csv`` for each split.

    ``split_queries`` maps a split name to its queries (objects with ``id``, ``video``, ``start``,
    ``end``, ``duration``, ``sentence``, as ``clap_bench.downstream.tan2d.task.grounding_queries``
    returns), written in the given order, so the reference's annotation ``i`` is query ``i``.
    Times are written with ``repr`` (they read back to the same floats). Returns
    ``{split: (txt path, csv path)}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, queries in split_queries.items():
        lines, lengths = [], {}
        for q in queries:
            if not q.video or any(c.isspace() for c in q.video):
                raise ValueError(f"query {q.id}: video id {q.video!r} cannot be written to a Charades-STA line (it splits on spaces)")
            if "##" in q.sentence or "\n" in q.sentence or "\r" in q.sentence:
                raise ValueError(f"query {q.id}: sentence {q.sentence!r} contains '##' or a line break; the reference splits lines on them")
            if not q.start < q.end <= q.duration:
                raise ValueError(f"query {q.id}: expected start < end <= duration, got {q.start}, {q.end}, {q.duration}")
            if lengths.setdefault(q.video, q.duration) != q.duration:
                raise ValueError(f"query {q.id}: video {q.video} has two durations ({lengths[q.video]} and {q.duration})")
            lines.append(f"{q.video} {float(q.start)!r} {float(q.end)!r}##{q.sentence}\n")
        txt = out_dir / f"charades_sta_{split}.txt"
        lengths_csv = out_dir / f"Charades_v1_{split}.csv"
        _write_atomic(txt, "".join(lines))
        rows = ["id,length\n"] + [f"{vid},{float(length)!r}\n" for vid, length in lengths.items()]
        _write_atomic(lengths_csv, "".join(rows))
        written[split] = (txt, lengths_csv)
    return written


def write_reference_features(source: Path | str, video_ids: Iterable[str], out_path: Path | str) -> Path:
    """Copy the listed videos' ``(T, D)`` features from our HDF5 file into ``out_path`` (float32).

    A listed video the file has no dataset for, or a dataset that is not a non-empty ``(T, D)``
    array, raises ``FeatureFileError`` naming the file and the video(s); ``out_path`` is then left as it was."""
    import h5py

    source, out_path = Path(source), Path(out_path)
    wanted = sorted(set(video_ids))
    tmp = out_path.with_name(out_path.name + ".tmp")
    with h5py.File(source, "r") as src:
        missing = [v for v in wanted if v not in src]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FeatureFileError(f"{source}: no features for {len(missing)} of the {len(wanted)} videos of the "
                                   f"annotations: {shown} (expected one (T, D) dataset per video id)")
        with h5py.File(tmp, "w") as dst:
            for vid in wanted:
                data = np.asarray(src[vid][()], dtype=np.float32)
                if data.ndim != 2 or data.shape[0] == 0:
                    raise FeatureFileError(f"{source}: dataset {vid!r}: expected a non-empty (T, D) array, got shape {data.shape}")
                dst.create_dataset(vid, data=data)
    tmp.replace(out_path)
    return out_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------- the shared word table
@dataclass
class WordTable:
    """Word -> vector, one row per word; ``table(sentence)`` gives the rows of ``reference_words``."""

    words: List[str]
    vectors: np.ndarray  # (V, E) float32

    def __post_init__(self):
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError(f"word table: {len(self.words)} words but vectors of shape {self.vectors.shape}")
        if len(set(self.words)) != len(self.words):
            raise ValueError("word table: repeated words")
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def from_sentences(cls, sentences: Iterable[str], embed: Callable[[str], object]) -> "WordTable":
        """Every word of ``sentences`` (``reference_words``), its vector the mean of the rows ``embed(word)``
        returns (our text encoder's word pieces in the script)."""
        words = sorted({w for s in sentences for w in reference_words(s)})
        if not words:
            raise ValueError("word table: the sentences have no words")
        rows = []
        for w in words:
            pieces = np.asarray(embed(w), dtype=np.float32)
            rows.append(pieces.reshape(-1, pieces.shape[-1]).mean(axis=0))
        return cls(words, np.stack(rows))

    def __call__(self, sentence: str):
        import torch

        words = reference_words(sentence)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise KeyError(f"word table: no vector for {unknown[:5]} (sentence {sentence!r}); build it from every sentence")
        if not words:
            return torch.zeros(1, self.dim)
        return torch.from_numpy(self.vectors[[self.index[w] for w in words]])

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, words=np.array(self.words), vectors=self.vectors)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "WordTable":
        with np.load(Path(path)) as z:
            return cls([str(w) for w in z["words"]], z["vectors"])


# --------------------------------------------------------------------------- configuration
def reference_config(
    cfg,
    dataset_cfg,
    *,
    feature_dim: int,
    word_dim: int,
    num_train_queries: int,
    data_dir: Path | str,
    work_dir: Path | str,
    epochs: int,
) -> dict:
    """The reference's experiment YAML (as a dict) for our ``VLGConfig`` and Charades-STA section.

    Mirrors ``2D-TAN-16x16-K5L8-pool.yaml`` with our sizes. ``TEST.INTERVAL`` is chosen so that the
    reference evaluates the test set exactly after every epoch's last update (its interval is
    ``int(len(train) / batch * INTERVAL)`` updates, which with ``INTERVAL: 1`` falls short of an
    epoch when the batch does not divide the queries), so its last evaluation is the trained model.
    """
    if dataset_cfg.num_sample_clips % dataset_cfg.num_clips:
        raise ValueError("num_sample_clips must be a multiple of num_clips")
    stride = dataset_cfg.num_sample_clips // dataset_cfg.num_clips
    batches = math.ceil(num_train_queries / cfg.batch_size)
    interval = (batches + 0.5) / (num_train_queries / cfg.batch_size)
    layers = len(dataset_cfg.map_kernel_sizes)
    return {
        "WORKERS": 0,
        "MODEL_DIR": str(Path(work_dir) / "checkpoints"),
        "RESULT_DIR": str(Path(work_dir) / "results"),
        "LOG_DIR": str(Path(work_dir) / "log"),
        "DATA_DIR": str(data_dir),
        "DATASET": {
            "NAME": "Charades",
            "VIS_INPUT_TYPE": VIS_INPUT_TYPE,
            "NO_VAL": dataset_cfg.val_subset is None,
            "NUM_SAMPLE_CLIPS": dataset_cfg.num_sample_clips,
            "TARGET_STRIDE": stride,
            "NORMALIZE": bool(cfg.normalize_features),
            "RANDOM_SAMPLING": False,
        },
        "CUDNN": {"DETERMINISTIC": False, "BENCHMARK": True},
        "TRAIN": {
            "BATCH_SIZE": cfg.batch_size,
            "LR": cfg.training_lr(dataset_cfg),  # the dataset's own rate where it has one, as ours trains
            "WEIGHT_DECAY": cfg.weight_decay,
            "MAX_EPOCH": epochs,
            "CONTINUE": False,
            "FACTOR": cfg.lr_factor,
            "PATIENCE": cfg.lr_patience,
        },
        "LOSS": {"NAME": "bce_rescale_loss",
                 "PARAMS": {"MIN_IOU": dataset_cfg.min_iou, "MAX_IOU": dataset_cfg.max_iou, "BIAS": 0.0}},
        "TEST": {
            "BATCH_SIZE": cfg.batch_size,
            "RECALL": ",".join(str(k) for k in RANKS),
            "TIOU": ",".join(f"{t:g}" for t in IOU_THRESHOLDS),
            "EVAL_TRAIN": False,
            "NMS_THRESH": dataset_cfg.nms_threshold,
            "INTERVAL": interval,
        },
        "TAN": {
            "FRAME_MODULE": {"NAME": "FrameAvgPool", "PARAMS": {
                "INPUT_SIZE": feature_dim, "HIDDEN_SIZE": cfg.hidden_size, "KERNEL_SIZE": stride, "STRIDE": stride}},
            "PROP_MODULE": {"NAME": "SparsePropMaxPool", "PARAMS": {"NUM_SCALE_LAYERS": list(dataset_cfg.num_scale_layers)}},
            "FUSION_MODULE": {"NAME": "BaseFusion", "PARAMS": {
                "HIDDEN_SIZE": cfg.hidden_size, "TXT_INPUT_SIZE": word_dim, "TXT_HIDDEN_SIZE": cfg.text_hidden_size,
                "LSTM": {"NUM_LAYERS": cfg.lstm_layers, "BIDIRECTIONAL": False}}},
            "MAP_MODULE": {"NAME": "MapConv", "PARAMS": {
                "INPUT_SIZE": cfg.hidden_size,
                "HIDDEN_SIZES": [cfg.hidden_size] * layers,
                "KERNEL_SIZES": list(dataset_cfg.map_kernel_sizes),
                "STRIDES": [1] * layers,
                "PADDINGS": list(dataset_cfg.map_paddings),
                "DILATIONS": list(dataset_cfg.map_dilations)}},
            "PRED_INPUT_SIZE": cfg.hidden_size,
        },
        "MODEL": {"NAME": "TAN", "CHECKPOINT": ""},
    }


# Keys that say where files go, how often the reference tests, or how it loads data: not model or training.
_BOOKKEEPING = ("WORKERS", "MODEL_DIR", "RESULT_DIR", "LOG_DIR", "DATA_DIR", "DATASET.VIS_INPUT_TYPE", "MODEL.CHECKPOINT",
                "TEST.INTERVAL", "TEST.EVAL_TRAIN", "TEST.BATCH_SIZE", "TEST.RECALL", "TEST.TIOU", "CUDNN")


def config_differences(ours: Mapping, published: Mapping, skip: Sequence[str] = _BOOKKEEPING) -> List[Tuple[str, object, object]]:
    """``(dotted key, ours, published)`` for every leaf that differs (a missing key reads ``None``),
    leaving out bookkeeping keys (paths, test interval, checkpoint)."""
    def leaves(d, prefix=""):
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if any(key == s or key.startswith(s + ".") for s in skip):
                continue
            if isinstance(v, Mapping):
                out.update(leaves(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = leaves(ours), leaves(published)
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, tuple):
            va = list(va)
        if va != vb:
            diffs.append((key, va, vb))
    return diffs


# --------------------------------------------------------------------------- scoring adapters
def reference_eval_inputs(predictions: Sequence[Mapping], queries: Sequence) -> Tuple[List[List[List[float]]], List[dict]]:
    """Our predictions -> the reference scorer's ``(segments, data)``: per query, in ``queries``' order,
    the ranked ``[start, end]`` list and the annotation dict (``video``, ``times``, ``description``,
    ``duration``). Every query needs a prediction with at least one segment (the reference's NMS
    fails on an empty list)."""
    by_id = {p["id"]: p for p in predictions}
    segments, data = [], []
    for q in queries:
        pred = by_id.get(q.id)
        if pred is None or not pred["segments"]:
            raise KeyError(f"no predicted segment for query {q.id}")
        segments.append([[float(s), float(e)] for s, e in pred["segments"]])
        data.append({"video": q.video, "times": [q.start, q.end], "description": q.sentence, "duration": q.duration})
    return segments, data


def predictions_from_reference(sorted_segments: Sequence[Sequence[Sequence[float]]], queries: Sequence,
                               nms_threshold: float, top_k: int) -> List[dict]:
    """The reference's ranked moments (seconds, best first, every cell of the map) -> our prediction
    entries: NMS at ``nms_threshold`` with our ``nms``, first ``top_k`` kept."""
    from clap_bench.downstream.tan2d.proposals import nms

    if len(sorted_segments) != len(queries):
        raise ValueError(f"{len(sorted_segments)} ranked lists for {len(queries)} queries")
    out = []
    for segs, q in zip(sorted_segments, queries):
        segs = np.asarray(segs, dtype=np.float64).reshape(-1, 2)
        keep = nms(segs, nms_threshold, top_k)
        out.append({"id": q.id, "segments": segs[keep].tolist()})
    return out


def metrics_from_reference(eval_result, miou: float, tious: Sequence[float] = IOU_THRESHOLDS,
                           recalls: Sequence[int] = RANKS) -> Dict[str, float]:
    """The reference's ``eval_result[i_tiou][j_recall]`` and ``miou`` (fractions) under our metric names."""
    arr = np.asarray(eval_result, dtype=np.float64)
    if arr.shape != (len(tious), len(recalls)):
        raise ValueError(f"expected a {len(tious)} x {len(recalls)} result array (IoU x rank), got shape {arr.shape}")
    flat = {f"R@{r}@{t:g}": float(arr[i, j]) for i, t in enumerate(tious) for j, r in enumerate(recalls)}
    flat["mIoU"] = float(miou)
    return flat


# --------------------------------------------------------------------------- comparison
@dataclass
class MetricComparison:
    metric: str
    ours: List[float]
    reference: List[float]
    p: float
    significant: bool

    @staticmethod
    def _mean_std(x: List[float]) -> Tuple[float, float]:
        a = np.asarray(x, dtype=np.float64)
        return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def compare_runs(ours: Sequence[Mapping[str, float]], reference: Sequence[Mapping[str, float]],
                 keys: Sequence[str] = METRIC_KEYS, alpha: float = 0.05) -> List[MetricComparison]:
    """Per metric: both samples (one value per seed), Welch's two-sided p-value, and whether ``p < alpha``."""
    from clap_bench.runs.tables import welch

    if len(ours) < 2 or len(reference) < 2:
        raise ValueError(f"need at least 2 seeds per side for Welch's test, got {len(ours)} and {len(reference)}")
    rows = []
    for key in keys:
        a = [float(m[key]) for m in ours]
        b = [float(m[key]) for m in reference]
        p = welch(a, b)["p"]
        rows.append(MetricComparison(key, a, b, p, p < alpha))
    return rows


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:6.2f} ± {100 * std:5.2f}"


def format_comparison(rows: Sequence[MetricComparison], alpha: float = 0.05) -> str:
    """A plain-text table: metric, ours, reference (percent, mean ± std over seeds), difference, Welch p."""
    lines = [f"{'metric':<10} {'ours':>15} {'reference':>15} {'diff':>7} {'Welch p':>8}  differ at {alpha:g}?"]
    for r in rows:
        mo, so = MetricComparison._mean_std(r.ours)
        mr, sr = MetricComparison._mean_std(r.reference)
        lines.append(f"{r.metric:<10} {_pct(mo, so):>15} {_pct(mr, sr):>15} {100 * (mo - mr):7.2f} {r.p:8.3f}  "
                     f"{'yes' if r.significant else 'no'}")
    return "\n".join(lines)


def format_cross_scores(rows: Sequence[Tuple[str, Mapping[str, float], Mapping[str, float]]],
                        keys: Sequence[str] = METRIC_KEYS) -> str:
    """Rows ``(label, our scorer's metrics, the reference scorer's metrics)`` side by side, with the
    largest absolute difference over the metrics (percent points)."""
    head = f"{'predictions':<18} {'scorer':<9} " + " ".join(f"{k:>8}" for k in keys) + "  max |diff|"
    lines = [head]
    for label, ours, theirs in rows:
        gap = max(abs(float(ours[k]) - float(theirs[k])) for k in keys)
        lines.append(f"{label:<18} {'ours':<9} " + " ".join(f"{100 * float(ours[k]):8.3f}" for k in keys))
        lines.append(f"{'':<18} {'reference':<9} " + " ".join(f"{100 * float(theirs[k]):8.3f}" for k in keys)
                     + f"  {100 * gap:.2e}")
    return "\n".join(lines)




# --------------------------------------------------------------------------- weights
_PARAMETER_NAMES = (  # the reference's module path -> ours
    ("frame_layer.vis_conv.", "frame_pool.proj."),
    ("fusion_layer.textual_encoder.", "fusion.lstm."),
    ("fusion_layer.tex_linear.", "fusion.text_proj."),
    ("fusion_layer.vis_conv.", "fusion.map_proj."),
    ("map_layer.convs.", "map_conv.convs."),
    ("pred_layer.", "predict."),
)


def our_state_from_reference(reference_state: Mapping) -> Dict[str, object]:
    """The reference ``TAN``'s ``state_dict`` under our ``TAN2D``'s parameter names (our model's
    ``map_mask`` buffer is not among them: load with ``strict=False`` and check the missing keys)."""
    out = {}
    for name, value in reference_state.items():
        for theirs, ours in _PARAMETER_NAMES:
            if name.startswith(theirs):
                out[ours + name[len(theirs):]] = value
                break
        else:
            raise KeyError(f"reference parameter {name!r} has no counterpart in our TAN2D")
    return out


__all__ = [
    "METRIC_KEYS", "MetricComparison", "PUBLISHED_CONFIG", "REFERENCE_COMMIT", "REFERENCE_URL", "VIS_INPUT_TYPE",
    "WordTable", "compare_runs", "config_differences", "format_comparison", "format_cross_scores",
    "metrics_from_reference", "our_state_from_reference", "predictions_from_reference", "reference_config", "reference_eval_inputs",
    "reference_words", "require_tan2d", "write_charades_sta", "write_reference_features",
]
