"""The paper's Fig. 2b: ground-truth action intervals of a few validation videos against the top
predictions of two or more methods (temporal action localization), drawn as one PNG.

``predictions`` are the ActivityNet result files the ``tal`` (and ``fstal``) stages write
(``{"results": {video_id: [{"label", "score", "segment": [start, end]}, ...]}}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from clap_bench.data.schema import AnnotationSet
from clap_bench.io import save_figure


def pick_videos(ground_truth: AnnotationSet, predictions: Dict[str, dict], count: int) -> List[str]:
    """The first ``count`` videos (sorted ids) that have actions and a prediction from every method."""
    ids = []
    for vid in sorted(ground_truth.videos):
        if ground_truth.videos[vid].actions and all(vid in p.get("results", {}) for p in predictions.values()):
            ids.append(vid)
        if len(ids) == count:
            break
    return ids


def plot_timelines(
    ground_truth: AnnotationSet,
    predictions: Dict[str, dict],
    videos: Sequence[str],
    out: Path,
    top_k: int = 3,
    title: Optional[str] = None,
) -> Dict[str, List[str]]:
    """One panel per video: a ground-truth row, then one row per method with its ``top_k``
    highest-scoring predictions, each in a lane of its own (highest score on top; top predictions
    of a method often overlap in time, and their labels would overwrite each other on one line),
    class name and score written on each bar. Returns each panel's row labels
    (``{video_id: ["ground truth", method, ...]}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not videos:
        raise ValueError("no video to draw: none has ground-truth actions and a prediction from every method")
    methods = list(predictions)
    row_height = 0.55 if top_k <= 1 else 0.25 + 0.22 * top_k
    fig, axes = plt.subplots(len(videos), 1, figsize=(9, row_height * (len(methods) + 1) * len(videos) + 1.0), squeeze=False)
    lane = 0.8 / max(top_k, 1)
    labels: Dict[str, List[str]] = {}
    for ax, vid in zip(axes[:, 0], videos):
        video = ground_truth.videos[vid]
        rows = ["ground truth"] + methods
        labels[vid] = rows
        y_of = {name: len(rows) - 1 - i for i, name in enumerate(rows)}
        for seg in video.actions:
            # a light bar and dark text: a short action's name runs past its bar and stays legible
            ax.broken_barh([(seg.start, seg.end - seg.start)], (y_of["ground truth"] - 0.35, 0.7), color="black", alpha=0.3)
            ax.text(seg.start, y_of["ground truth"], f" {seg.label}", va="center", ha="left", fontsize=7, color="black", clip_on=True)
        for i, method in enumerate(methods):
            preds = sorted(predictions[method].get("results", {}).get(vid, []), key=lambda d: -float(d["score"]))[:top_k]
            for rank, d in enumerate(preds):
                start, end = (float(x) for x in d["segment"])
                centre = y_of[method] + 0.4 - (rank + 0.5) * lane
                ax.broken_barh([(start, end - start)], (centre - 0.45 * lane, 0.9 * lane), color=f"C{i}", alpha=0.45)
                ax.text(start, centre, f" {d['label']} ({float(d['score']):.2f})", va="center", ha="left", fontsize=6, clip_on=True)
        ax.set_yticks([y_of[r] for r in rows])
        ax.set_yticklabels(rows, fontsize=8)
        ax.set_xlim(0, max(video.duration, 1e-3))
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(f"{vid} ({video.duration:.1f} s)", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    handles = [matplotlib.patches.Patch(color="black", alpha=0.3, label="ground truth")]
    handles += [matplotlib.patches.Patch(color=f"C{i}", alpha=0.45, label=f"{m} (top {top_k})") for i, m in enumerate(methods)]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 0.85 if len(methods) > 2 else 0.9, 0.97))
    save_figure(fig, out, dpi=110)
    return labels
