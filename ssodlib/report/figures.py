"""Figures of training runs: pseudo-label curves from the diagnostics logs, AP against the IoU
threshold, and class-distribution bars. Each writes a PNG and a CSV of the plotted numbers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssodlib.io import atomic_write, write_text

CURVES = (("pl_precision", "precision @ IoU 0.5"), ("pl_recall", "recall @ IoU 0.5"),
          ("pl_per_image", "pseudo boxes per image"), ("pl_class_kl", "KL(pseudo || labeled classes)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, table: pd.DataFrame) -> bool:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    write_text(path.with_suffix(".csv"), table.to_csv(index=False))
    _pyplot().close(fig)
    return True


def _smooth(values: np.ndarray, window: int = 5) -> np.ndarray:
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def pseudo_label_curves(logs: dict[str, list[dict[str, Any]]], *, path: str | os.PathLike) -> bool:
    """Precision, recall, boxes per image (ground truth dashed) and class KL over iterations, one line
    per run (``logs``: label -> the run's train records with pseudo-label diagnostics)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    rows = []
    for label, records in logs.items():
        it = np.array([r["iteration"] for r in records])
        for ax, (key, title) in zip(axes, CURVES):
            y = np.array([r.get(key, np.nan) for r in records], float)
            line, = ax.plot(it, _smooth(y), label=label)
            if key == "pl_per_image":
                gt = np.array([r["gt_per_image"] for r in records], float)
                ax.plot(it, _smooth(gt), "--", color=line.get_color(), alpha=0.6)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("iteration")
            rows += [{"run": label, "iteration": int(i), "curve": key, "value": float(v)} for i, v in zip(it, y)]
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pd.DataFrame(rows))


def ap_per_iou(curves: dict[str, dict[float, float]], *, path: str | os.PathLike) -> bool:
    """AP (%) against the IoU threshold 0.50 ... 0.95, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    rows = []
    for label, points in curves.items():
        x = sorted(points)
        ax.plot(x, [points[t] for t in x], marker="o", ms=3, label=label)
        rows += [{"run": label, "iou": t, "ap": points[t]} for t in x]
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pd.DataFrame(rows))


def class_distribution(bars: dict[str, np.ndarray], *, class_names: list[str] | None,
                       path: str | os.PathLike) -> bool:
    """Fraction of boxes per class for each series (ground truth, pseudo labels of each run)."""
    plt = _pyplot()
    n = len(next(iter(bars.values())))
    names = class_names or [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * n), 3.6))
    width = 0.8 / len(bars)
    rows = []
    for i, (label, counts) in enumerate(bars.items()):
        frac = np.asarray(counts, float) / max(float(np.sum(counts)), 1.0)
        ax.bar(np.arange(n) + i * width, frac, width, label=label)
        rows += [{"series": label, "class": c, "fraction": float(f)} for c, f in zip(names, frac)]
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("fraction of boxes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pd.DataFrame(rows))
