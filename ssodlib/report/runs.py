"""Side-by-side comparison of training runs from their folders: the evaluated metric at every
evaluated iteration, each run's lead over the first (the baseline), each class's AP at the last
evaluation, and the pseudo-label diagnostics averaged over training. ``ssod compare`` prints it; a
plot draws the curves."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ssodlib.engine.run_folder import METRICS_NAME, read_metrics
from ssodlib.io import InputError

PSEUDO_LABEL_KEYS = ("pl_per_image", "gt_per_image", "pl_precision", "pl_precision_any", "pl_recall", "pl_class_kl",
                     "pl_class_kl_gt",
                     "pl_reliable_per_image", "pl_uncertain_per_image", "pl_mined_per_image",
                     # CrossMatch's Fig. 4: the soft branch's RoIs and the true positives of each branch
                     "pl_cm_soft_rois_per_image", "pl_cm_soft_only_rois_per_image", "pl_cm_tp_hard_only_per_image",
                     "pl_cm_tp_both_per_image", "pl_cm_tp_soft_only_per_image",
                     # DTG-SSOD's INC per stage: clusters, their members and the foreground targets per image
                     *(f"pl_dtg_{stage}_{what}_per_image" for stage in ("rpn", "rcnn", "gfl")
                       for what in ("clusters", "members", "fg_targets")))
# ratios of sums over a run's logs (not means of per-window ratios): ``name: (numerator, denominator)``
POOLED_KEYS = {
    # CrossMatch's Fig. 1b: the sampled RoIs' pseudo classes against the withheld labels (IoU 0.5)
    "roi_tp_per_image": ("roi_tp", "pl_images"), "roi_fp_per_image": ("roi_fp", "pl_images"),
    "roi_fn_per_image": ("roi_fn", "pl_images"), "roi_precision": ("roi_tp", ("roi_tp", "roi_fp")),
    **{f"pl_dtg_{stage}_members_per_cluster": (f"pl_dtg_{stage}_members_per_image", f"pl_dtg_{stage}_clusters_per_image")
       for stage in ("rpn", "rcnn", "gfl")},
    # DTG-SSOD's Fig. 3: INC's and the sparse paradigm's labels of the same R-CNN samples against the
    # IoU assignment to the withheld labels (precision / recall of the foreground labels, who is right
    # where they differ); Fig. 4: pairs of cluster members ranked as their localization by each model
    **{f"pl_dtg_assign_{p}_precision": (f"pl_dtg_assign_{p}_tp_per_image", f"pl_dtg_assign_{p}_fg_per_image")
       for p in ("dense", "sparse")},
    **{f"pl_dtg_assign_{p}_recall": (f"pl_dtg_assign_{p}_tp_per_image", "pl_dtg_assign_gt_fg_per_image")
       for p in ("dense", "sparse")},
    "pl_dtg_assign_differ_share": ("pl_dtg_assign_differ_per_image", "pl_dtg_assign_samples_per_image"),
    **{f"pl_dtg_assign_differ_{p}_right": (f"pl_dtg_assign_differ_{p}_right_per_image", "pl_dtg_assign_differ_per_image")
       for p in ("dense", "sparse")},
    **{f"pl_dtg_rank_{m}_accuracy": (f"pl_dtg_rank_{m}_agree_per_image", "pl_dtg_rank_pairs_per_image")
       for m in ("teacher", "student")},
}


def pseudo_label_means(records: list[dict[str, Any]]) -> dict[str, float]:
    """The pseudo-label diagnostics of a run's train records averaged over training (keys the run
    logged; empty when it logged none, e.g. a supervised run), then the pooled ratios of
    ``POOLED_KEYS`` (per-image counts weighted by each log's images)."""
    logs = [r for r in records if r.get("pl_images")]
    out = {k: round(float(np.nanmean([r.get(k, np.nan) for r in logs])), 3) for k in PSEUDO_LABEL_KEYS
           if any(k in r for r in logs)}
    for name, (num, den) in POOLED_KEYS.items():
        value = _pooled(logs, num, den if isinstance(den, tuple) else (den,))
        if value is not None:
            out[name] = round(value, 3)
    return out


def with_pooled_rates(record: dict[str, Any]) -> dict[str, Any]:
    """A train record with the ratios of ``POOLED_KEYS`` over its own log window added (e.g. ``roi_tp``
    as ``roi_tp_per_image`` and ``roi_precision``: the curves of ``figures.ROI_CURVES``); NaN where the
    window has the keys but a zero denominator."""
    if not record.get("pl_images"):
        return record
    out = dict(record)
    for name, (num, den) in POOLED_KEYS.items():
        den = den if isinstance(den, tuple) else (den,)
        if all(k in record for k in (num, *den)):
            value = _pooled([record], num, den)
            out[name] = math.nan if value is None else value
    return out


def _pooled(logs: list[dict[str, Any]], num: str, den: tuple[str, ...]) -> float | None:
    """``sum(num) / sum(den)`` over the logs that have every key, each key a count or, for a
    ``*_per_image`` key, a per-image mean weighted back to a count by the log's images."""
    def count(r: dict[str, Any], k: str) -> float:
        return float(r[k]) * (r["pl_images"] if k.endswith("_per_image") else 1)

    keys = (num, *den) if num not in den else den
    usable = [r for r in logs if all(k in r and not _nan(r[k]) for k in keys)]
    top = sum(count(r, num) for r in usable)
    bottom = sum(count(r, k) for r in usable for k in den)
    return top / bottom if usable and bottom > 0 else None


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def run_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    records = read_metrics(run_dir)
    if not records:
        raise InputError(f"{Path(run_dir) / METRICS_NAME}: missing or empty. Fix: pass run folders written by "
                         "`ssod train --out FOLDER` (or a results store's runs/<key>).")
    return records


def eval_curves(run_dirs: Sequence[str | os.PathLike], *, model: str = "teacher", metric: str = "ap",
                names: Sequence[str] | None = None) -> pd.DataFrame:
    """``metric`` in % at every evaluated iteration (rows), one column per run, then ``lead <run>``
    columns: each run minus the first. ``model`` is read where an evaluation has it, else the student:
    a supervised run and a burn-in have no teacher, and a mean teacher is compared with them so."""
    names = list(names) if names else _names(run_dirs)
    series = {}
    for name, run_dir in zip(names, run_dirs):
        evals = [r for r in _eval_records(run_dir) if _evaluated(r, model)]
        series[name] = pd.Series({r["iteration"]: 100 * _model_metric(r, model, metric, run_dir) for r in evals},
                                 dtype=float)
    frame = pd.DataFrame(series).sort_index()
    frame.index.name = "iteration"
    for name in names[1:]:
        frame[f"lead {name}"] = frame[name] - frame[names[0]]
    return frame


def per_class_ap(run_dirs: Sequence[str | os.PathLike], *, model: str = "teacher",
                 names: Sequence[str] | None = None) -> pd.DataFrame:
    """AP in % per class (rows, in the runs' class order) at each run's last evaluation, one column per
    run, then ``lead <run>`` columns (each run minus the first) and a last row ``mean``. ``model`` is
    read as in :func:`eval_curves`. Shows which classes a method's lead in mAP comes from."""
    names = list(names) if names else _names(run_dirs)
    series = {}
    for name, run_dir in zip(names, run_dirs):
        evals = _eval_records(run_dir)
        if not evals:
            raise InputError(f"{Path(run_dir) / METRICS_NAME}: has no evaluation. Fix: pass finished runs, or runs "
                             "that evaluated at least once (eval_every).")
        series[name] = pd.Series({c: 100 * v for c, v in _per_class(evals[-1], model, run_dir).items()}, dtype=float)
    frame = pd.DataFrame(series)
    frame.loc["mean"] = frame.mean()
    frame.index.name = "class"
    for name in names[1:]:
        frame[f"lead {name}"] = frame[name] - frame[names[0]]
    return frame


def _eval_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return [r for r in run_records(run_dir) if r.get("kind") == "eval"]


def _evaluated(record: dict[str, Any], model: str) -> bool:
    """Whether an evaluation has ``model``'s metrics, or the student's where the run has no teacher (a
    teacher-student run's intermediate evaluations may have the teacher only: ``eval_student``)."""
    return model in record or ("teacher" not in record and "student" in record)


def _model_metrics(record: dict[str, Any], model: str) -> dict[str, Any]:
    """An evaluation's metrics of ``model``, else the student's: supervised runs and burn-ins have no teacher."""
    return record.get(model) or record.get("student") or {}


def _model_metric(record: dict[str, Any], model: str, metric: str, run_dir: str | os.PathLike) -> float:
    value = _model_metrics(record, model).get(metric)
    if value is None or isinstance(value, dict):
        raise InputError(f"{Path(run_dir) / METRICS_NAME}: iteration {record['iteration']} has no {model} or "
                         f"student {metric!r}. Fix: choose --metric from ap, ap50, ap75, ap_small, ... "
                         "(per-class AP: --per-class)")
    return float(value)


def _per_class(record: dict[str, Any], model: str, run_dir: str | os.PathLike) -> dict[str, float]:
    metrics = _model_metrics(record, model)
    if not isinstance(metrics.get("per_class_ap"), dict):
        raise InputError(f"{Path(run_dir) / METRICS_NAME}: iteration {record['iteration']} has no per-class AP. "
                         "Fix: pass runs evaluated by this library's trainer, which logs per_class_ap.")
    # null: a class without ground truth in the evaluated images (coco_eval writes undefined AP so)
    return {c: math.nan if v is None else float(v) for c, v in metrics["per_class_ap"].items()}


def _names(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names, or the whole paths where two folders share a name."""
    short = [Path(d).name for d in run_dirs]
    return short if len(set(short)) == len(short) else [str(d) for d in run_dirs]


def pseudo_label_summary(run_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run that logged pseudo-label diagnostics, averaged over its training."""
    names = list(names) if names else _names(run_dirs)
    rows = [{"run": name, **means} for name, d in zip(names, run_dirs) if (means := pseudo_label_means(run_records(d)))]
    return pd.DataFrame(rows)
