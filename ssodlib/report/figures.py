"""Figures of training runs: pseudo-label curves from the diagnostics logs, AP against the IoU
threshold, class-distribution bars, a metric per row and column, NMS-cluster quality and detections
drawn on images. Each writes a PNG and a CSV of the plotted numbers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssodlib.io import atomic_write, write_text

# this repository's diagnostics: one-to-one precision, KL against the labeled prior
CURVES = (("pl_precision", "precision @ IoU 0.5 (one-to-one)"), ("pl_recall", "recall @ IoU 0.5"),
          ("pl_per_image", "pseudo boxes per image"), ("pl_class_kl", "KL(pseudo || labeled classes)"))
# LabelMatch Fig. 4a-c: a box is correct when any ground truth of its class overlaps it by IoU > 0.5;
# KL against the withheld ground truth of the unlabeled images
CURVES_VS_GROUND_TRUTH = (("pl_precision_any", "precision (any GT of its class, IoU > 0.5)"),
                          ("pl_per_image", "pseudo boxes per image"),
                          ("pl_class_kl_gt", "KL(pseudo || unlabeled GT classes)"))
# CrossMatch Fig. 1b: the student's sampled RoIs under the pseudo labels against the withheld labels
ROI_CURVES = (("roi_tp_per_image", "true-positive RoIs per image"), ("roi_fp_per_image", "false-positive RoIs per image"),
              ("roi_fn_per_image", "false-negative RoIs per image"), ("roi_precision", "RoI precision (IoU 0.5)"))
# CrossMatch Fig. 4: the soft branch's RoIs (a) and the true-positive RoIs of each branch (b)
SOFT_ROI_CURVES = (("pl_cm_soft_rois_per_image", "soft-branch RoIs per image"),
                   ("pl_cm_soft_only_rois_per_image", "soft-only RoIs per image"),
                   ("pl_cm_tp_hard_only_per_image", "TP RoIs: hard only"), ("pl_cm_tp_both_per_image", "TP RoIs: both"),
                   ("pl_cm_tp_soft_only_per_image", "TP RoIs: soft only"))
# DTG-SSOD Fig. 3: the R-CNN samples labelled by INC (dense) and by IoU to the teacher's sparse pseudo boxes,
# against the IoU assignment to the withheld labels
DTG_ASSIGNMENT_CURVES = (("pl_dtg_assign_dense_precision", "foreground-label precision: INC (dense)"),
                         ("pl_dtg_assign_sparse_precision", "foreground-label precision: sparse pseudo boxes"),
                         ("pl_dtg_assign_dense_recall", "foreground-label recall: INC (dense)"),
                         ("pl_dtg_assign_sparse_recall", "foreground-label recall: sparse pseudo boxes"),
                         ("pl_dtg_assign_differ_dense_right", "where they differ: INC right"),
                         ("pl_dtg_assign_differ_sparse_right", "where they differ: sparse right"))
# DTG-SSOD Fig. 4: pairs of a cluster's members ordered as their IoU with the ground truth
DTG_RANK_CURVES = (("pl_dtg_rank_teacher_accuracy", "pairs ranked as localization: teacher"),
                   ("pl_dtg_rank_student_accuracy", "pairs ranked as localization: student"),
                   ("pl_dtg_rank_pairs_per_image", "judged pairs per image"))


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


def pseudo_label_curves(logs: dict[str, list[dict[str, Any]]], *, path: str | os.PathLike,
                        curves: tuple[tuple[str, str], ...] = CURVES) -> bool:
    """Precision, recall, boxes per image (ground truth dashed) and class KL over iterations (or the
    ``curves`` given: log key, title), one line per run (``logs``: label -> the run's train records
    with pseudo-label diagnostics)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4))
    rows = []
    for label, records in logs.items():
        it = np.array([r["iteration"] for r in records])
        for ax, (key, title) in zip(axes, curves):
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


def ap_per_iou(curves: dict[str, dict[float, float]], *, path: str | os.PathLike, ylabel: str = "AP (%)",
               value_name: str = "ap") -> bool:
    """AP (%) (or the ``ylabel`` given, e.g. pseudo-box precision) against the IoU threshold 0.50 ... 0.95,
    one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    rows = []
    for label, points in curves.items():
        x = sorted(points)
        ax.plot(x, [points[t] for t in x], marker="o", ms=3, label=label)
        rows += [{"run": label, "iou": t, value_name: points[t]} for t in x]
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel(ylabel)
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


def per_class_bars(bars: dict[str, dict[str, float]], *, path: str | os.PathLike, ylabel: str = "AP (%)") -> bool:
    """Each class's AP, one bar per run (``bars``: label -> class -> AP in %, classes in the order of
    the first run), so that the tail classes' gains (Rethinking PL's dynamic thresholds, LabelMatch's
    ACT) can be seen class by class."""
    plt = _pyplot()
    if not bars:
        return False
    names = list(next(iter(bars.values())))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) * len(bars)), 3.6))
    rows = []
    for i, (label, per_class) in enumerate(bars.items()):
        values = np.array([np.nan if per_class.get(c) is None else per_class[c] for c in names], float)
        ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
        rows += [{"run": label, "class": c, "ap": float(v)} for c, v in zip(names, values)]
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pd.DataFrame(rows))


def metric_bars(frame: pd.DataFrame, *, metric: str, path: str | os.PathLike) -> bool:
    """Mean (bars) and standard deviation (whiskers) over folds of a metric, one group per column and
    one bar per row (``frame``: row, column, value; rows and columns in declaration order)."""
    plt = _pyplot()
    done = frame.dropna(subset=["value"])
    if done.empty:
        return False
    stats = done.groupby(["row", "column"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    rows, cols = list(dict.fromkeys(frame["row"])), list(dict.fromkeys(frame["column"]))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) * len(cols)), 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        s = stats[stats["row"] == row].set_index("column").reindex(cols)
        x = np.arange(len(cols)) + i * width
        ax.bar(x, s["mean"], width, yerr=s["std"].fillna(0.0), capsize=3, label=row)
        for xi, m in zip(x, s["mean"]):
            if np.isfinite(m):
                ax.annotate(f"{m:.1f}", (xi, m), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, stats)


def cluster_quality_scatter(frame: pd.DataFrame, *, path: str | os.PathLike, score_thresh: float = 0.8,
                            iou_thresh: float = 0.8) -> bool:
    """IoU with ground truth against the NMS cluster's mean score (left) and mean IoU (right); boxes
    whose cluster passes both thresholds are orange (``frame``: see ``experiments.inspection.cluster_quality``)."""
    plt = _pyplot()
    data = frame.dropna(subset=["mean_score", "mean_iou"])
    if data.empty:
        return False
    mined = (data["mean_score"] >= score_thresh) & (data["mean_iou"] >= iou_thresh)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6))
    for ax, (key, name) in zip(axes, (("mean_score", "mean score"), ("mean_iou", "mean IoU"))):
        ax.scatter(data.loc[~mined, key], data.loc[~mined, "iou_gt"], s=6, alpha=0.5, label="other boxes")
        ax.scatter(data.loc[mined, key], data.loc[mined, "iou_gt"], s=8, color="tab:orange",
                   label=f"mean score >= {score_thresh} and mean IoU >= {iou_thresh}")
        ax.set_xlabel(f"{name} of the NMS cluster")
        ax.set_ylabel("IoU with ground truth")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, data)


def detection_grid(panels: dict[str, list[dict[str, Any]]], *, path: str | os.PathLike) -> bool:
    """Images with boxes: one figure row per key of ``panels``, one panel per entry; an entry has
    ``image`` ``(3, H, W)`` uint8, ``title`` and ``boxes``: ``(x1, y1, x2, y2, colour)`` tuples."""
    plt = _pyplot()
    if not panels:
        return False
    ncols = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(len(panels), ncols, figsize=(2.8 * ncols, 2.9 * len(panels)), squeeze=False)
    rows = []
    for r, (label, entries) in enumerate(panels.items()):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(entries):
                continue
            e = entries[c]
            ax.imshow(np.asarray(e["image"]).transpose(1, 2, 0))
            for x1, y1, x2, y2, colour in e["boxes"]:
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1))
                rows.append({"row": label, "panel": e["title"], "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                             "colour": colour})
            ax.set_title(f"{label}\n{e['title']}", fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pd.DataFrame(rows, columns=["row", "panel", "x1", "y1", "x2", "y2", "colour"]))


def eval_curves(frame: pd.DataFrame, *, metric: str, path: str | os.PathLike) -> bool:
    """A metric (in %) against the iteration, one line per run (``frame``: ``report.runs.eval_curves``;
    its ``lead`` columns are not drawn)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    runs = [c for c in frame.columns if not str(c).startswith("lead ")]
    for run in runs:
        values = frame[run].dropna()
        ax.plot(values.index, values.to_numpy(), marker="o", ms=3, label=run)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, frame.reset_index())
