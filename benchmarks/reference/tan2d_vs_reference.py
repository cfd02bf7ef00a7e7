"""Our 2D-TAN beside the reference 2D-TAN (microsoft/VideoX) on the same Charades-STA-like data.

Trains the reference model (its own ``moment_localization/train.py``, run from the path given) and
ours (``clap_bench.downstream.tan2d``) on the default synthetic benchmark's Charades-STA files and
one feature file of it, with our profile's ``tasks.vlg`` sizes, the same epochs and one word table,
``--seeds`` seeds each; prints R@{1,5} at IoU {0.3, 0.5, 0.7} and mIoU, mean ± std over seeds,
Welch's p-value per metric, and each scorer on the other model's predictions.

    python benchmarks/reference/tan2d_vs_reference.py --reference /path/to/VideoX/2D-TAN \\
        [--seeds 3] [--epochs N] [--profile default] [--features CHARADES.h5] [--out DIR] [--threads 1]

Fetch the reference outside the project:
``git clone https://github.com/microsoft/VideoX && git -C VideoX checkout 1744b2159c3d11694f94dab4fcde8660c685e79a``
and pass ``VideoX/2D-TAN``. It needs ``easydict``, ``terminaltables``, ``pyyaml``, ``h5py`` and
``tqdm`` beside torch; torchtext is not needed (see below).

How the reference is run (nothing in its folder is changed; all of it is done in the process that
runs it, ``--worker train``):

* **Words.** Its datasets load GloVe through ``torchtext.vocab.pretrained_aliases["glove.6B.300d"]``
  when they are imported. GloVe cannot be downloaded here, so a stand-in ``torchtext`` module
  returns, in its place, a vocabulary (``itos``, ``stoi``, ``vectors``, ``dim``) built from one
  ``WordTable``: every word of the benchmark's sentences, its vector the mean of our text
  encoder's word-piece embeddings of it (384-d). Ours reads the same table (``word_vectors=``),
  split the reference's way, so both LSTMs read the same rows for a query.
* **CPU.** ``torch.Tensor.cuda`` returns the tensor itself (the reference moves a constant and its
  batches with ``.cuda()``); its ``ReduceLROnPlateau(..., verbose=...)`` gets a subclass that takes
  and drops ``verbose`` where this torch no longer accepts it (it only printed; the scheduler is
  never stepped on Charades-STA, ``NO_VAL: True``).
* **Seeds.** ``train.py`` calls ``torch.manual_seed(0)``; it is mapped to the run's seed.
* **Speed.** ``train.py`` turns on ``torch.autograd.set_detect_anomaly(True)``, which checks every
  backward op for NaN and records a traceback for every forward op; the call is made a no-op: it
  changes no number, only the time a step takes.
* **Outputs.** ``core.eval.eval_predictions`` is wrapped to keep what it is given: its ranked
  moments and annotations of the test set at each evaluation. The experiment YAML sets
  ``TEST.INTERVAL`` so that evaluations fall on epoch ends; the last one is the trained model.

Everything is written under ``--out`` (default: ``<tmp>/clap_bench_reference_tan2d``), never in the
project; finished seeds are reused when the inputs are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import runpy
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict
from pathlib import Path

from clap_bench.io import FeatureFileError, atomic_write_json
from clap_bench.reference import ReferenceMissing
from clap_bench.reference.tan2d import (
    METRIC_KEYS,
    PUBLISHED_CONFIG,
    REFERENCE_COMMIT,
    WordTable,
    compare_runs,
    config_differences,
    format_comparison,
    format_cross_scores,
    metrics_from_reference,
    predictions_from_reference,
    reference_config,
    reference_eval_inputs,
    require_tan2d,
    write_charades_sta,
    write_reference_features,
)

DATASET = "charades-sta"


# --------------------------------------------------------------------------- inside the reference's process
def _install_torchtext_stand_in(table: WordTable) -> None:
    import torch

    class StandInGloVe:
        """What the reference uses of torchtext's GloVe vocabulary, filled from the shared table."""

        def __init__(self):
            self.itos = list(table.words)
            self.stoi = {w: i for i, w in enumerate(self.itos)}
            self.vectors = torch.from_numpy(table.vectors.copy())
            self.dim = table.dim

    vocab = types.ModuleType("torchtext.vocab")
    vocab.pretrained_aliases = {"glove.6B.300d": StandInGloVe}
    torchtext = types.ModuleType("torchtext")
    torchtext.vocab = vocab
    sys.modules["torchtext"] = torchtext
    sys.modules["torchtext.vocab"] = vocab


def _adapt_torch_for_cpu(seed: int) -> None:
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.autograd.set_detect_anomaly = lambda *args, **kwargs: None
    real_seed = torch.manual_seed
    torch.manual_seed = lambda _fixed: real_seed(seed)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    if "verbose" not in inspect.signature(plateau.__init__).parameters:
        class PlateauTakingVerbose(plateau):
            def __init__(self, *args, verbose=False, **kwargs):
                super().__init__(*args, **kwargs)

        torch.optim.lr_scheduler.ReduceLROnPlateau = PlateauTakingVerbose


def _reference_on_path(reference: Path) -> None:
    for sub in ("moment_localization", "lib"):
        path = str(reference / sub)
        if path not in sys.path:
            sys.path.insert(0, path)


def worker_train(args) -> None:
    """Run the reference's ``train.py`` with the YAML ``args.cfg``; write its test-set outputs to ``args.result``."""
    import torch

    reference = require_tan2d(args.reference)
    torch.set_num_threads(args.threads)
    _install_torchtext_stand_in(WordTable.load(args.words))
    _adapt_torch_for_cpu(args.seed)
    _reference_on_path(reference)
    import core.eval as reference_eval

    evaluations = []
    evaluate = reference_eval.eval_predictions

    def recording(segments, data, verbose=True):
        result, miou = evaluate(segments, data, verbose=False)
        evaluations.append({"segments": segments, "times": [d["times"] for d in data],
                            "metrics": metrics_from_reference(result, miou)})
        return result, miou

    reference_eval.eval_predictions = recording
    sys.argv = [str(reference / "moment_localization" / "train.py"), "--cfg", str(args.cfg)]
    t0 = time.time()
    runpy.run_path(sys.argv[0], run_name="__main__")
    if not evaluations:
        raise RuntimeError("the reference's train.py ran without evaluating the test set")
    last = evaluations[-1]
    atomic_write_json(Path(args.result), {
        "seed": args.seed, "seconds": time.time() - t0, "metrics": last["metrics"],
        "per_evaluation": [e["metrics"] for e in evaluations],
        "times": last["times"], "ranked_segments": last["segments"],
    })


def worker_forward(args) -> None:
    """The reference's model, dataset and loss on the first ``args.batch`` test queries, at its initial
    weights: save the weights, the batch, the logits, the loss and the gradients to ``args.result``."""
    import torch

    reference = require_tan2d(args.reference)
    torch.set_num_threads(args.threads)
    _install_torchtext_stand_in(WordTable.load(args.words))
    _adapt_torch_for_cpu(args.seed)
    _reference_on_path(reference)
    from core.config import config, update_config

    update_config(str(args.cfg))
    import datasets
    import models
    import models.loss as reference_loss

    torch.manual_seed(args.seed)
    dataset = datasets.Charades("test")
    batch = datasets.collate_fn([dataset[i] for i in range(min(args.batch, len(dataset)))])
    model = getattr(models, config.MODEL.NAME)()
    prediction, map_mask = model(batch["batch_word_vectors"], batch["batch_txt_mask"], batch["batch_vis_input"])
    loss, _ = getattr(reference_loss, config.LOSS.NAME)(prediction, map_mask, batch["batch_map_gt"], config.LOSS.PARAMS)
    loss.backward()
    torch.save({
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {k: p.grad.detach().clone() for k, p in model.named_parameters()},
        "anno_idxs": batch["batch_anno_idxs"], "vis_input": batch["batch_vis_input"],
        "word_vectors": batch["batch_word_vectors"], "logits": prediction.detach()[:, 0], "loss": loss.detach(),
    }, args.result)


def worker_score(args) -> None:
    """The reference's scorer (``core.eval.eval``, configured by ``args.cfg``) on each ``args.inputs`` file."""
    reference = require_tan2d(args.reference)
    _reference_on_path(reference)
    from core.config import update_config
    import core.eval as reference_eval

    update_config(str(args.cfg))
    out = []
    for path in args.inputs:
        given = json.loads(Path(path).read_text())
        result, miou = reference_eval.eval(given["segments"], given["data"])
        out.append(metrics_from_reference(result, miou))
    atomic_write_json(Path(args.result), out)


# --------------------------------------------------------------------------- the comparison
def resolved_configs(reference: Path, *paths: Path) -> list:
    """Each experiment YAML as the reference resolves it: its ``core/config.py`` defaults updated by
    the file (``update_config``), as plain dicts. The reference's modules leave this process after."""
    import importlib

    saved_path = list(sys.path)
    _reference_on_path(reference)
    try:
        import core.config as reference_config_module

        out = []
        for path in paths:
            reference_config_module = importlib.reload(reference_config_module)  # fresh defaults
            reference_config_module.update_config(str(path))
            out.append(json.loads(json.dumps(reference_config_module.config)))
        return out
    finally:
        sys.path[:] = saved_path
        for name in [m for m in sys.modules if m == "core" or m.startswith("core.")]:
            del sys.modules[name]


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _features(profile, given: Path | None, out: Path) -> Path:
    if given is not None:
        import h5py

        if not given.exists():
            raise FeatureFileError(f"--features {given}: file not found")
        if not given.is_file() or not h5py.is_hdf5(str(given)):
            raise FeatureFileError(f"--features {given}: not an HDF5 feature file (expected one (T, D) dataset per video id)")
        return given
    from clap_bench.features.extract import extract_features
    from clap_bench.training.pretrain import resolve_init_weights

    checkpoint = resolve_init_weights(profile, "source", progress=True)
    path = out / f"{DATASET}-source.h5"
    print(f"features: extracting {DATASET} with the source-pre-trained encoder {checkpoint} into {path}", flush=True)
    return extract_features(profile, Path(checkpoint), DATASET, path, progress=False)


def forward_check(reference: Path, yaml_path: Path, words_path: Path, table: WordTable, features: Path, test_q,
                  dataset_cfg, cfg, feature_dim: int, out: Path, threads: int, batch: int = 16) -> dict:
    """Both models at the reference's initial weights on the same test queries: the largest absolute
    differences of their inputs, logits, loss and gradients."""
    import torch

    from clap_bench.downstream.tan2d.features import load_video_features
    from clap_bench.downstream.tan2d.model import TAN2D
    from clap_bench.downstream.tan2d.proposals import iou_map, masked_bce_loss, scaled_iou_targets
    from clap_bench.downstream.tan2d.text import embed_sentences, pad_words
    from clap_bench.reference.tan2d import our_state_from_reference

    saved = out / "forward.pt"
    subprocess.run([sys.executable, __file__, "--worker", "forward", "--reference", str(reference), "--cfg", str(yaml_path),
                    "--words", str(words_path), "--result", str(saved), "--batch", str(batch), "--threads", str(threads)],
                   check=True, stdout=subprocess.DEVNULL)
    ref = torch.load(saved, weights_only=False)
    queries = [test_q[i] for i in ref["anno_idxs"]]
    model = TAN2D(feature_dim=feature_dim, word_dim=table.dim, num_sample_clips=dataset_cfg.num_sample_clips,
                  num_clips=dataset_cfg.num_clips, num_scale_layers=dataset_cfg.num_scale_layers,
                  hidden_size=cfg.hidden_size, text_hidden_size=cfg.text_hidden_size, lstm_layers=cfg.lstm_layers,
                  map_kernel_sizes=dataset_cfg.map_kernel_sizes, map_paddings=dataset_cfg.map_paddings,
                  map_dilations=dataset_cfg.map_dilations)
    missing, unexpected = model.load_state_dict(our_state_from_reference(ref["state"]), strict=False)
    if missing != ["map_mask"] or unexpected:
        raise SystemExit(f"forward check: weights do not map one to one (missing {missing}, unexpected {unexpected})")
    feats = load_video_features(features, {q.video for q in queries}, dataset_cfg.num_sample_clips, cfg.normalize_features)
    video = torch.stack([feats[q.video] for q in queries])
    words, lengths = pad_words(embed_sentences(table, [q.sentence for q in queries]))
    logits = model(video, words, lengths)
    n = dataset_cfg.num_clips
    targets = torch.stack([scaled_iou_targets(iou_map(n, q.duration, (q.start, q.end)), dataset_cfg.min_iou,
                                              dataset_cfg.max_iou) for q in queries])
    loss = masked_bce_loss(logits, targets, model.map_mask[0])
    loss.backward()
    ours_grads = dict(model.named_parameters())
    names = our_state_from_reference({k: k for k in ref["grads"]})
    grad_gap = max(float((ours_grads[o].grad - ref["grads"][r]).abs().max()) for o, r in names.items())
    grad_scale = max(float(g.abs().max()) for g in ref["grads"].values())
    return {
        "queries": len(queries),
        "video": float((video - ref["vis_input"]).abs().max()),
        "words": float((words - ref["word_vectors"]).abs().max()) if words.shape == ref["word_vectors"].shape else float("inf"),
        "logits": float((logits.detach() - ref["logits"]).abs().max()),
        "logit_scale": float(ref["logits"].abs().max()),
        "loss": abs(float(loss.detach()) - float(ref["loss"])),
        "loss_value": float(ref["loss"]),
        "grads": grad_gap,
        "grad_scale": grad_scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="the 2D-TAN folder of a microsoft/VideoX checkout")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both (default: the profile's Charades-STA epochs)")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--features", type=Path, default=None, help="a Charades-STA feature file (default: extracted once into --out)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "clap_bench_reference_tan2d")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each of the two training processes")
    parser.add_argument("--alpha", type=float, default=0.05)
    # Internal: the script runs the reference in child processes of itself.
    parser.add_argument("--worker", choices=("train", "score", "forward"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--cfg", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--words", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "train":
        return worker_train(args)
    if args.worker == "score":
        return worker_score(args)
    if args.worker == "forward":
        return worker_forward(args)
    try:
        compare(args)
    except (ReferenceMissing, FeatureFileError) as e:  # no checkout; a feature file without the annotations' videos
        raise SystemExit(str(e)) from None


def compare(args) -> None:
    import h5py
    import torch
    import yaml

    from clap_bench.config import from_dict, load_profile, resolve_datasets
    from clap_bench.data import load_dataset
    from clap_bench.downstream.tan2d.task import VLGConfig, grounding_queries, train_and_evaluate
    from clap_bench.downstream.tan2d.text import WordPieceVectors
    from clap_bench.eval.grounding import evaluate_grounding, flatten_metrics

    reference = require_tan2d(args.reference)
    if args.seeds < 2:
        raise SystemExit("--seeds must be at least 2 (Welch's test needs a spread on each side)")
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile)
    cfg: VLGConfig = from_dict(VLGConfig, profile.task_config("vlg"), "tasks.vlg").validate()
    dataset_cfg = cfg.for_dataset(DATASET)
    epochs = args.epochs or (dataset_cfg.epochs if dataset_cfg.epochs is not None else cfg.epochs)
    dataset_cfg.epochs = epochs
    annotations = load_dataset(resolve_datasets(profile)[DATASET], key=DATASET)
    train_q = grounding_queries(annotations, dataset_cfg.train_subset)
    test_q = grounding_queries(annotations, dataset_cfg.test_subset)
    features = _features(profile, args.features, out)

    # Inputs of the reference: its Charades files, feature file, word table and YAML.
    data_dir = out / "reference_data"
    write_charades_sta({"train": train_q, "test": test_q}, data_dir)
    feature_copy = data_dir / "clapbench_features.hdf5"
    write_reference_features(features, {q.video for q in train_q + test_q}, feature_copy)
    words_path = out / "words.npz"
    if not words_path.exists():
        word_pieces = WordPieceVectors(cfg.text_model)
        WordTable.from_sentences([q.sentence for q in train_q + test_q], word_pieces).save(words_path)
    table = WordTable.load(words_path)
    with h5py.File(feature_copy, "r") as f:
        feature_dim = int(f[train_q[0].video].shape[1])
    key = _fingerprint(asdict(cfg), epochs, _file_hash(feature_copy), _file_hash(words_path),
                       [(q.id, q.start, q.end, q.sentence) for q in train_q + test_q])
    run_dir = out / f"runs-{key}"
    ref_yaml = reference_config(cfg, dataset_cfg, feature_dim=feature_dim, word_dim=table.dim,
                                num_train_queries=len(train_q), data_dir=data_dir, work_dir=run_dir / "reference",
                                epochs=epochs)
    (run_dir / "reference").mkdir(parents=True, exist_ok=True)
    yaml_path = run_dir / "reference" / "experiment.yaml"
    yaml_path.write_text(yaml.safe_dump(ref_yaml, sort_keys=False))

    print(f"reference: {reference} (compared at commit {REFERENCE_COMMIT})")
    print(f"data: {len(train_q)} training and {len(test_q)} test queries of the {args.profile} synthetic {DATASET}; "
          f"features {features} (dim {feature_dim}); word table {len(table.words)} words x {table.dim}")
    print(f"both: {epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.training_lr(dataset_cfg):g}, {dataset_cfg.num_sample_clips} rows -> "
          f"{dataset_cfg.num_clips} clips, map conv kernels {dataset_cfg.map_kernel_sizes} paddings {dataset_cfg.map_paddings}, "
          f"{cfg.hidden_size} channels; runs in {run_dir}")
    ours_resolved, published = resolved_configs(reference, yaml_path, reference / PUBLISHED_CONFIG)
    print(f"our profile's settings against the published {PUBLISHED_CONFIG}, both over the reference's "
          "config.py defaults (key: ours / published):")
    for k, ours, theirs in config_differences(ours_resolved, published):
        print(f"  {k}: {ours} / {theirs}")
    sys.stdout.flush()

    check = forward_check(reference, yaml_path, words_path, table, features, test_q, dataset_cfg, cfg, feature_dim,
                          run_dir, args.threads)
    print(f"same weights, same first {check['queries']} test queries (largest absolute differences, ours - reference):")
    print(f"  inputs: features {check['video']:.2e}, word vectors {check['words']:.2e}")
    print(f"  logits {check['logits']:.2e} (largest |logit| {check['logit_scale']:.3g}); "
          f"loss {check['loss']:.2e} (loss {check['loss_value']:.4f}); "
          f"gradients {check['grads']:.2e} (largest |gradient| {check['grad_scale']:.3g})", flush=True)

    torch.set_num_threads(args.threads)
    ours_metrics, ref_results, cross_rows = [], [], []
    for seed in range(args.seeds):
        ref_result = run_dir / "reference" / f"seed{seed}.json"
        ours_dir = run_dir / "ours" / f"seed{seed}"
        child = None
        if not ref_result.exists():
            log = open(run_dir / "reference" / f"seed{seed}.log", "w")
            child = subprocess.Popen(
                [sys.executable, __file__, "--worker", "train", "--reference", str(reference), "--cfg", str(yaml_path),
                 "--words", str(words_path), "--seed", str(seed), "--result", str(ref_result),
                 "--threads", str(args.threads)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        t0 = time.time()
        if not (ours_dir / "metrics.json").exists():
            train_and_evaluate(annotations, features, dataset_cfg, cfg, ours_dir, seed=seed, word_vectors=table, label=DATASET)
        print(f"seed {seed}: ours trained ({time.time() - t0:.0f}s)", flush=True)
        if child is not None and child.wait() != 0:
            raise SystemExit(f"the reference's training failed for seed {seed}; see {run_dir / 'reference' / f'seed{seed}.log'}")
        ref = json.loads(ref_result.read_text())
        if [list(t) for t in ref["times"]] != [[q.start, q.end] for q in test_q]:
            raise SystemExit(f"{ref_result}: the reference's test annotations are not our test queries in order")
        ours_m = flatten_metrics(json.loads((ours_dir / "metrics.json").read_text()))
        print(f"seed {seed}: reference trained ({ref['seconds']:.0f}s)", flush=True)
        ours_metrics.append(ours_m)
        ref_results.append(ref)

    # Cross-scoring: the reference's scorer on our predictions, ours on its ranked moments.
    score_inputs = []
    for seed in range(args.seeds):
        predictions = json.loads((run_dir / "ours" / f"seed{seed}" / "predictions.json").read_text())
        segments, data = reference_eval_inputs(predictions, test_q)
        path = run_dir / "cross" / f"ours-seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"segments": segments, "data": data})
        score_inputs.append(path)
    scored = run_dir / "cross" / "reference_scorer.json"
    subprocess.run([sys.executable, __file__, "--worker", "score", "--reference", str(reference), "--cfg", str(yaml_path),
                    "--result", str(scored), "--inputs", *map(str, score_inputs)], check=True)
    reference_scores = json.loads(scored.read_text())
    ground_truth = [{"id": q.id, "segment": [q.start, q.end]} for q in test_q]
    for seed in range(args.seeds):
        cross_rows.append((f"ours seed {seed}", ours_metrics[seed], reference_scores[seed]))
        theirs = predictions_from_reference(ref_results[seed]["ranked_segments"], test_q, dataset_cfg.nms_threshold, cfg.top_k)
        cross_rows.append((f"reference seed {seed}", flatten_metrics(evaluate_grounding(ground_truth, theirs)),
                           ref_results[seed]["metrics"]))

    print()
    print("per seed (percent):")
    for seed in range(args.seeds):
        print(f"  seed {seed} ours      " + " ".join(f"{k}={100 * ours_metrics[seed][k]:.2f}" for k in METRIC_KEYS))
        print(f"  seed {seed} reference " + " ".join(f"{k}={100 * ref_results[seed]['metrics'][k]:.2f}" for k in METRIC_KEYS))
    print()
    print(f"{DATASET}, {args.seeds} seeds each, {epochs} epochs (percent, mean ± std over seeds):")
    print(format_comparison(compare_runs(ours_metrics, [r["metrics"] for r in ref_results], alpha=args.alpha), args.alpha))
    print()
    print("cross-scoring (percent): each model's test predictions under both scorers")
    print(format_cross_scores(cross_rows))
    gap = max(abs(float(a[k]) - float(b[k])) for _, a, b in cross_rows for k in METRIC_KEYS)
    print(f"largest scorer disagreement: {gap:.3g} (fraction); the scorers {'agree' if gap < 1e-9 else 'DISAGREE'}")


if __name__ == "__main__":
    main()
