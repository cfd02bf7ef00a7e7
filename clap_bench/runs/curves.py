"""Per-epoch validation figures of pre-training stages: a table per stage and a PNG of the curves.

Every pre-training stage writes ``metrics.jsonl`` (epoch 0 = validation before training, then one
record per epoch with the training means and the ``val_*`` figures). This module reads them from
the run store; ``clapbench curves`` prints and draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from clap_bench.io import save_figure
from clap_bench.runs.store import RunStore
from clap_bench.training.trainer import read_epoch_records

# (record key, column label); the order of the printed columns and of the PNG's panels.
CURVE_KEYS: Tuple[Tuple[str, str], ...] = (
    ("val_loss", "val loss"),
    ("val_class_acc", "val class acc"),
    ("val_region_acc", "val region acc"),
    ("val_v2t_r1", "val clip->text R@1"),
    ("val_t2v_r1", "val text->clip R@1"),
    ("loss", "train loss"),
)


def stage_curves(
    store: RunStore, profile: str, methods: Sequence[str], seeds: Optional[Sequence[int]] = None, stage: str = "pretrain"
) -> Dict[Tuple[str, int], List[dict]]:
    """``{(method, seed): epoch records}`` of every pre-training stage found (missing ones are skipped)."""
    out: Dict[Tuple[str, int], List[dict]] = {}
    for method in methods:
        found = store.seeds(profile, method) if seeds is None else list(seeds)
        for seed in found:
            records = read_epoch_records(store.stage_dir(profile, method, seed, stage))
            if records:
                out[(method, seed)] = records
    return out


def format_curves(curves: Dict[Tuple[str, int], List[dict]]) -> str:
    """One plain-text table per (method, seed): epochs as rows, the figures of ``CURVE_KEYS`` as columns."""
    from tabulate import tabulate

    blocks = []
    for (method, seed), records in curves.items():
        keys = [(k, label) for k, label in CURVE_KEYS if any(k in r for r in records)]
        rows = [[r.get("epoch")] + [_fmt(r.get(k)) for k, _ in keys] for r in records]
        chance = {k: records[0].get(f"{k}_chance") for k, _ in keys if records[0].get(f"{k}_chance") is not None}
        note = ("  chance: " + ", ".join(f"{dict(CURVE_KEYS)[k]} {v:.3f}" for k, v in chance.items())) if chance else ""
        blocks.append(f"{method}, seed {seed}{note}\n" + tabulate(rows, headers=["epoch"] + [label for _, label in keys], tablefmt="github", disable_numparse=True))
    return "\n\n".join(blocks) + "\n"


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def plot_curves(curves: Dict[Tuple[str, int], List[dict]], out: Path, title: str = "") -> Path:
    """One panel per figure of ``CURVE_KEYS`` (validation figures against the epoch), one line per (method, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label in CURVE_KEYS if any(k in r for recs in curves.values() for r in recs)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    colours = {}
    for ax, (key, label) in zip(axes[0], keys):
        for (method, seed), records in curves.items():
            points = [(r["epoch"], r[key]) for r in records if key in r]
            if not points:
                continue
            colour = colours.setdefault(method, f"C{len(colours) % 10}")
            ax.plot(*zip(*points), marker="o", ms=3, color=colour, alpha=0.8, label=f"{method} s{seed}")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)
