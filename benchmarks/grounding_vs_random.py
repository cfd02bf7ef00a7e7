"""Does a grounding set reward features at all? 2D-TAN on the source encoder's features against
Gaussian features of the same shapes, over several head seeds.

The question is about the benchmark, not about any method: the features are those of the
source model every method starts from (``none``'s features), and the comparison is with noise.
A set where the two are level cannot rank pre-training methods, whatever they learn.

    python benchmarks/grounding_vs_random.py --dataset tacos --seeds 0,1,2 [--profile default] \\
        [--set epochs=40] [--set lr=0.003] [--videos 72,12,12]

``--set KEY=VALUE`` overrides a key of the dataset's ``tasks.vlg`` section (``epochs``,
``num_clips``, ``lr``, ``min_iou``, ...; ``batch_size`` and the other keys of ``tasks.vlg`` itself); VALUE is read as
YAML. ``--videos TRAIN,VAL,TEST`` (TACoS-like set) or ``--videos TRAIN,TEST`` (Charades-like set)
generates a variant of the profile's synthetic benchmark with that many videos of the dataset under
``--work`` (the other datasets' files are the same bytes: each dataset draws from its own random
stream; within a dataset each video draws from its own stream, by its place in the generation order,
training videos first, so a variant with more test videos has the same training videos and the
profile's test videos as its first ones). Prints, per head seed, mIoU and R@1 IoU 0.5 on the test
subset with both feature sets, then mean ± std and Welch's p.

``--test-parts K`` also scores each head on K disjoint parts of the test videos (in the order the
annotation file lists them, equal counts) and prints, per arm and metric, the spread over head seeds
on the whole test subset beside the spread on one part (the mean over parts of the head seeds'
variance): how much of the head seed's spread is the size of the test set.

``--curves`` scores the test subset after every epoch of every head (a diagnosis: the task stage
reads the test subset once, after training) and prints, per arm and epoch, mean ± std over the head
seeds of R@1 IoU 0.5 and mIoU. Without a schedule (no validation subset, as on the Charades-like
set) the first E epochs of a longer run are an E-epoch run, so one run shows what every shorter
budget would give. ``--arms source`` trains the source arm only. With ``--curves`` and ``--test-parts 2`` it also asks
whether keeping each head's best epoch on held-out videos would narrow the head seeds' spread (the
Charades-like set has no validation subset): each half of the test videos in turn picks a head's epoch
(best R@1 IoU 0.5 there, the earlier on a tie) and the other half scores it, beside the last epoch
scored on that same half. ``--curves-out FILE.json`` writes every head's per-epoch figures (whole test
subset and each part).
The Gaussian features are drawn anew for each head seed (the draw's own seed is the head seed;
``--one-draw``: draw 0 for all, as the figures of the README's TACoS table were made).
The source model must be cached (any ``clapbench run`` on the profile makes it); features and
generated data go under ``--work`` (default: a temporary folder), never into the run store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

SHARED_KEYS = {"batch_size", "weight_decay", "hidden_size", "text_hidden_size", "channels_last", "max_train_queries"}


def parse_sets(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> None:
    import h5py

    from clap_bench.config import ConfigError, from_dict, load_profile, resolve_datasets
    from clap_bench.data import load_dataset
    from clap_bench.downstream.tan2d.features import load_video_features
    from clap_bench.downstream.tan2d.task import VLGConfig, ground_truth_entries, grounding_queries, predict, train_and_evaluate
    from clap_bench.downstream.tan2d.text import build_word_vectors, embed_sentences
    from clap_bench.eval.grounding import evaluate_grounding
    from clap_bench.features import extract_features
    from clap_bench.synth import generate as synth
    from clap_bench.training.pretrain import default_source_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="tacos", choices=["tacos", "charades-sta"])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--videos", default=None, help="TRAIN,VAL,TEST TACoS-like or TRAIN,TEST Charades-like videos (a generated variant)")
    ap.add_argument("--test-parts", type=int, default=1, help="also score each head on this many disjoint parts of the test videos")
    ap.add_argument("--one-draw", action="store_true",
                    help="one draw of Gaussian features (seed 0) for every head seed, instead of a draw per head seed")
    ap.add_argument("--curves", action="store_true", help="score the test subset after every epoch (a diagnosis)")
    ap.add_argument("--curves-out", default=None, help="with --curves: write every head's per-epoch figures to this JSON file")
    ap.add_argument("--arms", default="source,random", help="source, random or both (default)")
    ap.add_argument("--work", default=None, help="folder for features and generated data (default: temporary)")
    args = ap.parse_args()

    profile = load_profile(args.profile)
    if not profile.data.synthetic:
        raise SystemExit(f"profile {args.profile!r} is not synthetic: this benchmark compares against the synthetic source model")
    work = Path(args.work or tempfile.mkdtemp(prefix="grounding-vs-random-"))
    checkpoint = default_source_dir(profile) / "final.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no source model; make it first, e.g. clapbench run --method none --seeds 1 "
                         f"--tasks vlg --profile {args.profile}")
    label = "as profiled"
    if args.videos:
        counts = [int(x) for x in args.videos.split(",")]
        fields = {"tacos": ("tacos_train", "tacos_val", "tacos_test"), "charades-sta": ("charades_train", "charades_test")}[args.dataset]
        if len(counts) != len(fields):
            raise SystemExit(f"--videos {args.videos}: the {args.dataset} set takes {len(fields)} counts ({', '.join(fields)})")
        base = synth.get_profile(profile.data.synth_profile)
        name = f"{base.name}-{args.dataset}{'-'.join(map(str, counts))}"
        synth.PROFILES[name] = dataclasses.replace(base, name=name, **dict(zip(fields, counts)))
        profile = dataclasses.replace(profile, data=dataclasses.replace(
            profile.data, synth_profile=name, cache_dir=str(work / "cache"), frame_cache=False))
        label = " / ".join(map(str, counts)) + " videos"
    datasets = resolve_datasets(profile)
    annotations = load_dataset(datasets[args.dataset], key=args.dataset)

    trained = work / f"{args.dataset}-{profile.data.synth_profile}-source.h5"
    t0 = time.perf_counter()
    extract_features(profile, checkpoint, args.dataset, trained, progress=False)
    print(f"features of {args.dataset} ({label}): {trained} ({time.perf_counter() - t0:.0f} s)")

    def gaussian_features(draw: int) -> Path:
        """Gaussian features of the source file's shapes, one file per draw."""
        path = work / f"{args.dataset}-{profile.data.synth_profile}-random{draw}.h5"
        if not path.is_file():  # written beside, then renamed: an interrupted draw is never reused
            rng = np.random.default_rng(draw)
            partial = path.with_name(path.name + ".partial")
            with h5py.File(trained, "r") as src, h5py.File(partial, "w") as out:
                for key in src:
                    out[key] = rng.standard_normal(src[key].shape).astype(np.float32)
            os.replace(partial, path)
        return path

    sets = parse_sets(args.set)
    raw = profile.task_config("vlg")
    section = args.dataset.replace("-", "_")
    raw[section] = {**raw.get(section, {}), **{k: v for k, v in sets.items() if k not in SHARED_KEYS}}
    raw.update({k: v for k, v in sets.items() if k in SHARED_KEYS})
    try:
        cfg = from_dict(VLGConfig, raw, "tasks.vlg").validate()
    except ConfigError as e:
        raise SystemExit(f"--set: {e}")
    d = cfg.for_dataset(args.dataset)
    print(f"tasks.vlg.{section} with {sets or 'no overrides'}: epochs {d.epochs or cfg.epochs}, lr {d.lr if d.lr is not None else cfg.lr}")

    # The test videos in the order the annotation file lists them (the generation order), cut into
    # --test-parts equal parts; each head is also scored on every part.
    test_videos = [v for v in annotations.videos if annotations.videos[v].subset == d.test_subset]
    if not 1 <= args.test_parts <= len(test_videos):
        raise SystemExit(f"--test-parts {args.test_parts}: expected 1 to {len(test_videos)} (test videos)")
    size = len(test_videos) // args.test_parts
    part_of = {v: i // size for i, v in enumerate(test_videos[:size * args.test_parts])}
    parts = {"source": [], "random": []}  # per arm, per head seed: [(mIoU, R@1 IoU 0.5) per part]

    def part_figures(truth: list, predictions: dict) -> list:
        """(mIoU, R@1 IoU 0.5) of each part of the test videos; ``predictions`` by query id."""
        out = []
        for k in range(args.test_parts):
            gt = [g for g in truth if part_of.get(g["video"]) == k]
            m = evaluate_grounding(gt, [predictions[g["id"]] for g in gt])
            out.append((100 * m["mIoU"], 100 * m["R@1"]["0.5"]))
        return out

    def score_parts(head_dir: Path):
        truth = json.loads((head_dir / "ground_truth.json").read_text())
        return part_figures(truth, {p["id"]: p for p in json.loads((head_dir / "predictions.json").read_text())})

    wanted = [a.strip() for a in args.arms.split(",")]
    if not wanted or set(wanted) - {"source", "random"}:
        raise SystemExit(f"--arms {args.arms}: expected source, random or source,random")
    # per arm, per head seed, per epoch: [whole test subset, part 0, part 1, ...] as (mIoU, R@1 IoU 0.5)
    curves = {"source": [], "random": []}
    if args.curves:
        test_q = grounding_queries(annotations, d.test_subset)
        test_truth = ground_truth_entries(test_q)
        vectors = build_word_vectors(cfg.glove_path, cfg.text_model, [q.sentence for q in test_q],
                                     tokenizer=cfg.glove_tokenizer, drop_final_period=annotations.format == "charades-sta")
        test_words = embed_sentences(vectors, [q.sentence for q in test_q])

    def curve_hook(features_path: Path, into: list):
        """after_epoch hook (with --curves): score the test subset with the model as it is (no random draw)."""
        if not args.curves:
            return None
        feats = load_video_features(features_path, {q.video for q in test_q}, d.num_sample_clips, cfg.normalize_features)

        def hook(epoch, model):
            preds = predict(model, test_q, feats, test_words, d.nms_threshold, cfg.top_k, cfg.batch_size, "cpu")
            m = evaluate_grounding(test_truth, preds)
            parts_now = part_figures(test_truth, {p["id"]: p for p in preds}) if args.test_parts > 1 else []
            into.append([(100 * m["mIoU"], 100 * m["R@1"]["0.5"]), *parts_now])
        return hook

    figures = {"source": [], "random": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        # One draw of noise is itself a loose baseline (two draws gave 6.40 and 6.92 mIoU on the
        # TACoS-like set): by default each head seed gets its own draw, so the random arm's
        # spread holds the draw's part too. --one-draw: draw 0 for every head seed.
        draw = 0 if args.one_draw else seed
        arms = [("source", lambda: trained, f"source-{seed}"), ("random", lambda: gaussian_features(draw), f"random{draw}-{seed}")]
        for name, path_of, head_dir in (a for a in arms if a[0] in wanted):
            t0 = time.perf_counter()
            path = path_of()
            curves[name].append([])
            m = train_and_evaluate(annotations, path, d, cfg, work / "heads" / head_dir, seed=seed, label=args.dataset,
                                   after_epoch=curve_hook(path, curves[name][-1]))
            figures[name].append((100 * m["mIoU"], 100 * m["R@1"]["0.5"]))
            if args.test_parts > 1:
                parts[name].append(score_parts(work / "heads" / head_dir))
            print(f"  seed {seed} {name:<6} mIoU {100 * m['mIoU']:6.2f}  R@1 IoU 0.5 {100 * m['R@1']['0.5']:6.2f}  "
                  f"({m['num_train_queries']} training queries, {m['num_queries']} test; {time.perf_counter() - t0:.0f} s)",
                  flush=True)
    from scipy import stats

    if args.curves:
        print("test subset after each epoch, mean ± std over head seeds (percent):")
        print("| epoch | " + " | ".join(f"{name} R@1 IoU 0.5 | {name} mIoU" for name in wanted) + " |")
        print("|---|" + "---|---|" * len(wanted))
        for e in range(len(curves[wanted[0]][0])):
            cells = []
            for name in wanted:
                for i in (1, 0):
                    v = np.array([c[e][0][i] for c in curves[name]])
                    cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}")
            print(f"| {e + 1} | " + " | ".join(cells) + " |")
        if args.curves_out:
            Path(args.curves_out).write_text(json.dumps({"dataset": args.dataset, "seeds": args.seeds,
                                                         "rows": "per arm, head, epoch: [whole, part 0, ...] as [mIoU, R@1 IoU 0.5]",
                                                         "curves": {name: curves[name] for name in wanted}}, indent=1))
            print(f"per-head curves: {args.curves_out}")
        if args.test_parts == 2:
            print_heldout_selection(wanted, curves)
    if wanted != ["source", "random"]:
        for name in wanted:  # one arm: its mean ± std over the head seeds
            for i, metric in enumerate(("mIoU", "R@1 IoU 0.5")):
                v = np.array([f[i] for f in figures[name]])
                print(f"{metric}: {name} {v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f} "
                      f"over {len(v)} head seed{'s' if len(v) > 1 else ''}")
        return
    for i, metric in enumerate(("mIoU", "R@1 IoU 0.5")):
        s = np.array([f[i] for f in figures["source"]])
        r = np.array([f[i] for f in figures["random"]])
        line = f"{metric}: source {s.mean():.2f} ± {s.std(ddof=1) if len(s) > 1 else 0:.2f}, random {r.mean():.2f} ± " \
               f"{r.std(ddof=1) if len(r) > 1 else 0:.2f}, difference {s.mean() - r.mean():+.2f}"
        if len(s) > 1:
            line += f", Welch p {stats.ttest_ind(s, r, equal_var=False).pvalue:.3f}"
        print(line)
    if args.test_parts > 1 and len(figures["source"]) > 1:
        # One part is a test set of 1/K the size: the head seeds' variance within a part, averaged
        # over the K parts, is what a test set of that size would show.
        print(f"head-seed spread (std over {len(figures['source'])} head seeds) on the whole test subset "
              f"({len(test_videos)} videos) and on one of {args.test_parts} parts ({size} videos each; mean variance over parts):")
        for name in ("source", "random"):
            for i, metric in enumerate(("mIoU", "R@1 IoU 0.5")):
                whole = np.array([f[i] for f in figures[name]])
                per_part = np.array([[heads[k][i] for heads in parts[name]] for k in range(args.test_parts)])  # (K, seeds)
                one_part = float(np.sqrt(per_part.var(axis=1, ddof=1).mean()))
                print(f"  {name:<6} {metric:<12} whole {whole.std(ddof=1):.2f}, one part {one_part:.2f} "
                      f"(part means {', '.join(f'{x:.2f}' for x in per_part.mean(axis=1))})")


def print_heldout_selection(wanted, curves) -> None:
    """Each half of the test videos picks a head's epoch (best R@1 IoU 0.5), the other half scores it.

    Printed per arm: the heads' mean and std (over head seeds, the two folds' variances averaged)
    on the scoring half at the last epoch and at the epoch the other half picked, and the same
    with the scoring half picking its own epoch (an optimistic bound: selection on the data scored).
    """
    print("held-out epoch selection (halves of the test videos; R@1 IoU 0.5, percent; std over head seeds):")
    for name in wanted:
        rows = [np.array([[p[1] for p in epoch[1:3]] for epoch in c]) for c in curves[name]]  # (epochs, 2): R@1 per half
        kinds = {"last epoch": [], "epoch picked on the other half": [], "epoch picked on the same half (bound)": []}
        for score_on in (0, 1):
            pick_on = 1 - score_on
            last = [r[-1, score_on] for r in rows]
            picked = [r[int(np.argmax(r[:, pick_on])), score_on] for r in rows]
            bound = [r[:, score_on].max() for r in rows]
            for key, v in zip(kinds, (last, picked, bound)):
                kinds[key].append(np.array(v))
        for key, folds in kinds.items():
            mean = np.mean([f.mean() for f in folds])
            std = np.sqrt(np.mean([f.var(ddof=1) for f in folds])) if len(folds[0]) > 1 else 0.0
            epochs = ""
            if key == "epoch picked on the other half":
                epochs = " (epochs " + ", ".join("/".join(str(int(np.argmax(r[:, 1 - s])) + 1) for s in (0, 1)) for r in rows) + ")"
            print(f"  {name:<6} {key:<38} {mean:6.2f} ± {std:.2f}{epochs}")


if __name__ == "__main__":
    main()
