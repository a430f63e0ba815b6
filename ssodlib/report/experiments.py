"""Reports of declared tables and figures: reproduced values (mean ± std over folds) next to the
published ones, and the figures the declaration names, saved as CSV and PNG."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssodlib.engine.trainer import read_metrics
from ssodlib.experiments.plan import Item, RunSpec, load_declarations
from ssodlib.experiments.reference import published
from ssodlib.experiments.store import ResultsStore
from ssodlib.io import write_text
from ssodlib.report import figures


@dataclass
class Report:
    out_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # keys of declared runs without a record


def render(items: dict[str, list[RunSpec]], *, paper: str, scale: str, results_dir: str | os.PathLike | None = None,
           out_dir: str | os.PathLike | None = None) -> Report:
    """Tables and figures of ``items`` (``plan_items(...)``) from what the store holds; runs that are
    not done are listed as missing, never invented."""
    store = ResultsStore(results_dir)
    report = Report(out_dir=Path(out_dir) if out_dir else store.root / "reports" / paper / scale)
    decl = load_declarations(paper)
    for item_id, specs in items.items():
        item = decl.item(item_id)
        runs = results_frame(item, specs, store)
        report.missing += sorted(set(runs.loc[~runs["done"], "key"]) - set(report.missing))
        _save_table(report, f"{item_id}_runs", runs)
        if item.kind == "table":
            _save_table(report, item_id, summary_table(item, runs))
            _save_table(report, f"{item_id}_vs_published", versus_published(item, runs))
        for plot in item.plots:
            path = report.out_dir / f"{item_id}_{plot}.png"
            if _draw(plot, item, specs, store, path):
                report.figures[f"{item_id}_{plot}"] = path
    return report


def _save_table(report: Report, name: str, frame: pd.DataFrame) -> None:
    report.tables[name] = frame
    write_text(report.out_dir / f"{name}.csv", frame.to_csv(index=False))


def _score(record: dict[str, Any] | None, item: Item) -> float:
    if not record or not record.get("final"):
        return math.nan
    final = record["final"]
    model = item.model if item.model in final else "student"
    return 100.0 * float(final[model][item.metric])


def results_frame(item: Item, specs: list[RunSpec], store: ResultsStore) -> pd.DataFrame:
    """One line per declared run: row, column, fold, key, done, value (the item's metric, in %)."""
    lines = []
    for s in specs:
        record = store.get(s.key)
        lines.append({"row": s.row, "column": s.column, "fold": s.fold, "key": s.key, "done": record is not None,
                      "value": _score(record, item)})
    return pd.DataFrame(lines, columns=["row", "column", "fold", "key", "done", "value"])


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def summary_table(item: Item, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows x columns as the paper prints them: ``mean ± std`` over the folds done (``done/declared``)."""
    cols = [c["name"] for c in item.columns if c["name"] in set(runs["column"])]
    out = []
    for row in [r["name"] for r in item.rows]:
        line = {item.id: row}
        for col in cols:
            cell = runs[(runs["row"] == row) & (runs["column"] == col)]
            mean, std, n = _mean_std(cell["value"])
            line[col] = "missing" if n == 0 else f"{mean:.2f} ± {std:.2f} ({n}/{len(cell)})"
        out.append(line)
    return pd.DataFrame(out, columns=[item.id, *cols])


def versus_published(item: Item, runs: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, column, published source): reproduced mean, std, folds, published value, delta."""
    out = []
    for row in item.rows:
        for col in [c["name"] for c in item.columns if c["name"] in set(runs["column"])]:
            cell = runs[(runs["row"] == row["name"]) & (runs["column"] == col)]
            mean, std, n = _mean_std(cell["value"])
            for ref in row.get("reference", []) or [None]:
                pub = published(ref["paper"], ref["item"], ref["row"], ref.get("columns", {}).get(col, col)) \
                    if ref else None
                source = f"{ref['paper']} {ref['item']} '{ref['row']}'" if ref else ""
                out.append({"row": row["name"], "column": col, "folds": n, "reproduced": round(mean, 2),
                            "std": round(std, 2), "published": pub, "source": source,
                            "delta": round(mean - pub, 2) if pub is not None and n else math.nan})
    return pd.DataFrame(out, columns=["row", "column", "folds", "reproduced", "std", "published", "source", "delta"])


def _label(s: RunSpec) -> str:
    return f"{s.row} {s.column} f{s.fold}"


def _draw(plot: str, item: Item, specs: list[RunSpec], store: ResultsStore, path: Path) -> bool:
    done = [s for s in specs if store.is_complete(s.key)]
    if plot == "pseudo_label_curves":
        logs = {_label(s): [r for r in read_metrics(store.run_dir(s.key)) if r.get("pl_images")] for s in done}
        logs = {k: v for k, v in logs.items() if v}
        return bool(logs) and figures.pseudo_label_curves(logs, path=path)
    if plot == "ap_per_iou":
        curves = {}
        for s in done:
            final = store.get(s.key)["final"]
            model = item.model if item.model in final else "student"
            curves[_label(s)] = {float(k): 100.0 * v for k, v in final[model]["ap_per_iou"].items()}
        return bool(curves) and figures.ap_per_iou(curves, path=path)
    if plot == "class_distribution":
        bars, names = {}, None
        for s in done:
            logs = [r for r in read_metrics(store.run_dir(s.key)) if r.get("pl_images")]
            if logs:
                names = list(store.get(s.key)["final"]["student"]["per_class_ap"])
                bars["ground truth (unlabeled)"] = np.sum([r["gt_per_class"] for r in logs if "gt_per_class" in r], 0)
                bars[f"pseudo labels: {_label(s)}"] = np.sum([r["pl_per_class"] for r in logs], 0)
        return bool(bars) and figures.class_distribution(bars, class_names=names, path=path)
    raise ValueError(f"unknown plot {plot!r}: pseudo_label_curves, ap_per_iou or class_distribution")
