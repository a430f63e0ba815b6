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

from ssodlib.engine.run_folder import CHECKPOINT_NAME, METRICS_NAME, read_metrics
from ssodlib.evaluation.pseudo_labels import PRECISION_IOUS
from ssodlib.experiments.plan import Item, RunSpec, load_declarations
from ssodlib.experiments.reference import published
from ssodlib.experiments.shipped import LayeredStore, is_shipped, report_store
from ssodlib.experiments.store import default_results_dir
from ssodlib.io import write_text
from ssodlib.report import figures
from ssodlib.report.runs import eval_curves, pseudo_label_means, with_pooled_rates


@dataclass
class Report:
    out_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # keys of declared runs without a record


def render(items: dict[str, list[RunSpec]], *, paper: str, scale: str, results_dir: str | os.PathLike | None = None,
           out_dir: str | os.PathLike | None = None, shipped: bool | str | os.PathLike = True,
           draw: bool = True) -> Report:
    """Tables and figures of ``items`` (``plan_items(...)``) from what the store holds, over the
    paper's shipped results (``shipped``: see :func:`ssodlib.experiments.shipped.report_store`); runs
    that are done nowhere are listed as missing, never invented. ``draw=False``: the tables only."""
    store = report_store(results_dir=results_dir, paper=paper, scale=scale, shipped=shipped)
    # a report of a shipped folder is written to the local store's reports/, not into the repository
    home = default_results_dir() if is_shipped(store.root) else store.root
    report = Report(out_dir=Path(out_dir) if out_dir else home / "reports" / paper / scale)
    decl = load_declarations(paper)
    for item_id, specs in items.items():
        item = decl.item(item_id)
        runs = results_frame(item, specs, store)
        report.missing += sorted(set(runs.loc[~runs["done"], "key"]) - set(report.missing))
        _save_table(report, f"{item_id}_runs", runs)
        _save_table(report, item_id, summary_table(item, runs))
        if item.kind == "table":
            _save_table(report, f"{item_id}_vs_published", versus_published(item, runs))
            leads = paired_leads(item, runs)
            if not leads.empty:
                _save_table(report, f"{item_id}_leads", leads)
        labels = pseudo_label_table(specs, store)
        if not labels.empty:
            _save_table(report, f"{item_id}_pseudo_labels", labels)
        for plot in item.plots if draw else ():
            path = report.out_dir / f"{item_id}_{plot}.png"
            if _draw(plot, item, specs, store, path):
                report.figures[f"{item_id}_{plot}"] = path
    return report


def _save_table(report: Report, name: str, frame: pd.DataFrame) -> None:
    report.tables[name] = frame
    write_text(report.out_dir / f"{name}.csv", frame.to_csv(index=False))


def metric_value(metrics: dict[str, Any], metric: str) -> float:
    """One number (a fraction, not %) from a model's final metrics: a key (``ap``, ``ap50``, ...),
    ``class:NAME`` (the AP of one class) or ``classes:A,B,...`` (the mean AP of those classes)."""
    kind, _, names = metric.partition(":")
    if not names:
        return float(metrics[metric])
    per_class = metrics["per_class_ap"]
    wanted = [n.strip() for n in names.split(",")]
    unknown = [n for n in wanted if n not in per_class]
    if kind not in ("class", "classes") or unknown:
        raise KeyError(f"metric {metric!r}: expected class:NAME or classes:A,B with classes of {sorted(per_class)}")
    return float(np.nanmean([math.nan if per_class[n] is None else per_class[n] for n in wanted]))


def row_model(item: Item, row: str) -> str:
    """The model a row is scored by: its own ``model`` (e.g. ``ensemble``), else the item's."""
    return item.row(row).get("model") or item.model


def _model_in(final: dict[str, Any], item: Item, row: str) -> str:
    """The row's model where the run's final metrics have it; else the student (a run without a teacher)."""
    model = row_model(item, row)
    return model if model in final else "student"


def _score(record: dict[str, Any] | None, item: Item, row: str, metric: str) -> float:
    if not record or not record.get("final"):
        return math.nan
    final = record["final"]
    return 100.0 * metric_value(final[_model_in(final, item, row)], metric)


RUN_COLUMNS = ["row", "column", "fold", "seed", "key", "done", "source", "value"]


def results_frame(item: Item, specs: list[RunSpec], store: LayeredStore) -> pd.DataFrame:
    """One line per declared run: row, column, fold, seed, key, done, source (``local``, ``shipped`` or
    empty) and value (the column's or else the item's metric, in %)."""
    metrics = {c["name"]: c.get("metric", item.metric) for c in item.columns}
    lines = []
    for s in specs:
        record = store.get(s.key)
        lines.append({"row": s.row, "column": s.column, "fold": s.fold, "seed": s.config.seed, "key": s.key,
                      "done": record is not None, "source": store.source(s.key) or "",
                      "value": _score(record, item, s.row, metrics[s.column])})
    return pd.DataFrame(lines, columns=RUN_COLUMNS)


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def summary_table(item: Item, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows x columns as the paper prints them: ``mean ± std`` over the folds and seeds done
    (``done/declared``), and whose runs they are: ``shipped`` (the repository's measured records),
    ``local`` (re-run here) or both, e.g. ``17.80 ± 0.30 (2/2 shipped)``."""
    cols = [c["name"] for c in item.columns if c["name"] in set(runs["column"])]
    out = []
    for row in [r["name"] for r in item.rows]:
        line = {item.id: row}
        for col in cols:
            cell = runs[(runs["row"] == row) & (runs["column"] == col)]
            mean, std, n = _mean_std(cell["value"])
            line[col] = "missing" if n == 0 else f"{mean:.2f} ± {std:.2f} ({n}/{len(cell)} {_sources(cell)})"
        out.append(line)
    return pd.DataFrame(out, columns=[item.id, *cols])


def _sources(cell: pd.DataFrame) -> str:
    counts = cell.loc[cell["done"], "source"].value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return " + ".join(f"{counts[name]} {name}" for name in ("local", "shipped") if name in counts)


def paired_leads(item: Item, runs: pd.DataFrame) -> pd.DataFrame:
    """Each semi-supervised row's lead over the row it starts from (``burn_in_from``), paired by
    column, fold and seed (the evidence protocol): mean ± std of the leads and how many are ahead,
    over the pairs where both runs are done."""
    out = []
    for row in (r for r in item.rows if r.get("burn_in_from")):
        base = runs[runs["row"] == row["burn_in_from"]].set_index(["column", "fold", "seed"])["value"]
        mine = runs[runs["row"] == row["name"]].set_index(["column", "fold", "seed"])["value"]
        pairs = (mine - base.reindex(mine.index)).dropna()
        for col in dict.fromkeys(runs["column"]):
            leads = pairs[pairs.index.get_level_values("column") == col]
            if len(leads):
                mean, std, n = _mean_std(leads)
                out.append({"row": row["name"], "over": row["burn_in_from"], "column": col,
                            "lead": f"{mean:+.2f} ± {std:.2f}", "ahead": f"{int((leads > 0).sum())}/{n}",
                            "pairs": ", ".join(f"f{f} s{sd}: {v:+.2f}" for (_, f, sd), v in leads.items())})
    return pd.DataFrame(out, columns=["row", "over", "column", "lead", "ahead", "pairs"])


def versus_published(item: Item, runs: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, column, published source): reproduced mean, std, runs done (folds x seeds),
    published value, delta."""
    out = []
    for row in item.rows:
        for col in [c["name"] for c in item.columns if c["name"] in set(runs["column"])]:
            cell = runs[(runs["row"] == row["name"]) & (runs["column"] == col)]
            mean, std, n = _mean_std(cell["value"])
            for ref in references_of(row, col):
                pub = published(ref["paper"], ref["item"], ref["row"], ref.get("columns", {}).get(col, col)) \
                    if ref else None
                source = f"{ref['paper']} {ref['item']} '{ref['row']}'" if ref else ""
                out.append({"row": row["name"], "column": col, "runs": n, "reproduced": round(mean, 2),
                            "std": round(std, 2), "published": pub, "source": source,
                            "delta": round(mean - pub, 2) if pub is not None and n else math.nan})
    return pd.DataFrame(out, columns=["row", "column", "runs", "reproduced", "std", "published", "source", "delta"])


def references_of(row: dict[str, Any], col: str) -> list[dict[str, Any] | None]:
    """The references of a row that publish column ``col`` (``[None]``: none). A reference whose
    ``columns`` map names the column wins over one whose map names other columns only (Rethinking PL's
    Table 4: one reference per column); when no map names it, every reference publishes it under its
    own name (Table 2's paper columns beside a map of its mini columns)."""
    refs = row.get("reference", []) or []
    named = any(col in ref.get("columns", {}) for ref in refs)
    return [ref for ref in refs if not named or "columns" not in ref or col in ref["columns"]] or [None]


def pseudo_label_table(specs: list[RunSpec], store: LayeredStore) -> pd.DataFrame:
    """Per finished semi-supervised run, the pseudo-label diagnostics averaged over its logs (boxes per
    image against ground truth, precision and recall at IoU 0.5, class KL, and the method's counts
    per image, e.g. LabelMatch's reliable, uncertain and mined boxes: Fig. 8a's Delta)."""
    out = []
    for s in specs:
        means = pseudo_label_means(read_metrics(store.run_dir(s.key))) if store.is_complete(s.key) else {}
        if means:
            out.append({"row": s.row, "column": s.column, "fold": s.fold, **means})
    return pd.DataFrame(out)


def precision_per_iou(records: list[dict[str, Any]]) -> dict[float, float]:
    """Pseudo-box precision (%) at each IoU criterion of ``PRECISION_IOUS`` over a run's whole training:
    each log's ``pl_precision_at_iou`` weighted by its pseudo-box count (empty if the run logged none)."""
    logs = [r for r in records if r.get("pl_images") and "pl_precision_at_iou" in r and r.get("pl_per_image")]
    if not logs:
        return {}
    weights = np.array([r["pl_per_image"] * r["pl_images"] for r in logs], float)
    values = np.array([r["pl_precision_at_iou"] for r in logs], float)
    mean = (weights[:, None] * values).sum(0) / weights.sum()
    return {t: 100.0 * float(v) for t, v in zip(PRECISION_IOUS, mean)}


def _label(s: RunSpec) -> str:
    """A run's name in a figure: row, column, fold and (when not 0) seed, so no two runs share it."""
    return f"{s.row} {s.column} f{s.fold}" + (f" s{s.seed}" if s.seed else "")


def _has_metrics(run_dir: Path) -> bool:
    """Whether a run folder has a metrics log (plain, or compressed as shipped runs have it)."""
    return (run_dir / METRICS_NAME).is_file() or (run_dir / f"{METRICS_NAME}.gz").is_file()


def _draw(plot: str, item: Item, specs: list[RunSpec], store: LayeredStore, path: Path) -> bool:
    done = [s for s in specs if store.is_complete(s.key)]
    if plot in LOG_CURVES:
        curves = LOG_CURVES[plot]
        logs = {_label(s): [with_pooled_rates(r) for r in read_metrics(store.run_dir(s.key)) if r.get("pl_images")]
                for s in done}
        # only runs that logged the curves' keys (a supervised row has no pseudo labels, a baseline no pl_cm_*)
        logs = {k: v for k, v in logs.items() if any(key in r for r in v for key, _ in curves)}
        return bool(logs) and figures.pseudo_label_curves(logs, path=path, curves=curves)
    if plot == "eval_curves":  # the item's metric of its model at every evaluation (CrossMatch Fig. 3a-b)
        runs = [s for s in done if _has_metrics(store.run_dir(s.key))]
        frame = eval_curves([store.run_dir(s.key) for s in runs], model=item.model, metric=item.metric,
                            names=[_label(s) for s in runs])
        return bool(runs) and figures.eval_curves(frame, metric=f"{item.metric} ({item.model})", path=path)
    if plot == "ap_per_iou":
        curves = {}
        for s in done:
            final = store.get(s.key)["final"]
            per_iou = final[_model_in(final, item, s.row)]["ap_per_iou"]
            curves[_label(s)] = {float(k): 100.0 * v for k, v in per_iou.items()}
        return bool(curves) and figures.ap_per_iou(curves, path=path)
    if plot == "per_class_ap":  # each class's AP of every run done, by the row's model
        bars = {}
        for s in done:
            final = store.get(s.key)["final"]
            # one bar group per run: the columns of a table such as RPL's Table 4 share their runs
            bars.setdefault(f"{s.row} f{s.fold}" + (f" s{s.seed}" if s.seed else ""),
                            {c: None if v is None else 100.0 * v
                             for c, v in final[_model_in(final, item, s.row)]["per_class_ap"].items()})
        return figures.per_class_bars(bars, path=path)
    if plot == "pseudo_label_precision_per_iou":  # Rethinking PL Fig. 3, from the logged diagnostics
        curves = {_label(s): precision_per_iou(read_metrics(store.run_dir(s.key))) for s in done}
        curves = {k: v for k, v in curves.items() if v}
        return bool(curves) and figures.ap_per_iou(curves, path=path, ylabel="pseudo-box precision (%)",
                                                       value_name="precision")
    if plot == "class_distribution":
        bars, names = {}, None
        for s in done:
            logs = [r for r in read_metrics(store.run_dir(s.key)) if r.get("pl_images")]
            if logs:
                names = list(store.get(s.key)["final"]["student"]["per_class_ap"])
                # one ground-truth series per unlabeled set (a column and fold), drawn once
                bars.setdefault(f"ground truth (unlabeled): {s.column} f{s.fold}",
                                np.sum([r["gt_per_class"] for r in logs if "gt_per_class" in r], 0))
                bars[f"pseudo labels: {_label(s)}"] = np.sum([r["pl_per_class"] for r in logs], 0)
        return bool(bars) and figures.class_distribution(bars, class_names=names, path=path)
    if plot == "metric_bars":
        runs = results_frame(item, specs, store)
        return figures.metric_bars(runs, metric=f"{item.metric} ({item.model}, %)", path=path)
    if plot in INSPECTIONS:  # shipped runs have no checkpoint to run again
        return _draw_inspection(plot, item, [s for s in done if (store.run_dir(s.key) / CHECKPOINT_NAME).is_file()],
                                store, path)
    raise ValueError(f"unknown plot {plot!r}: one of {PLOTS}")


LOG_CURVES = {"pseudo_label_curves": figures.CURVES, "pseudo_label_curves_vs_ground_truth": figures.CURVES_VS_GROUND_TRUTH,
              "roi_curves": figures.ROI_CURVES, "soft_roi_curves": figures.SOFT_ROI_CURVES,
              "dtg_assignment_curves": figures.DTG_ASSIGNMENT_CURVES, "dtg_rank_curves": figures.DTG_RANK_CURVES}
INSPECTIONS = ("cluster_quality", "detections", "detections_nms", "dtg_assignment_examples")
PLOTS = (*LOG_CURVES, "eval_curves", "ap_per_iou", "per_class_ap", "pseudo_label_precision_per_iou", "class_distribution",
         "metric_bars", *INSPECTIONS)
CLUSTER_IMAGES = 200  # unlabeled images whose kept boxes make the cluster-quality scatter (paper: 5000)
SHOWN_IMAGES = 3  # images per run in the qualitative figures
SHOWN_SCORE = 0.6  # the paper's visualisation threshold (Fig. 5)


def _draw_inspection(plot: str, item: Item, done: list[RunSpec], store: LayeredStore, path: Path) -> bool:
    """Figures that run a finished run's detector again: ``cluster_quality`` (Fig. 3: the first run),
    ``detections`` (Fig. 5: true positives green, false positives yellow, false negatives red) and
    ``detections_nms`` (Fig. 7: before and after NMS), on the same images for every run."""
    from ssodlib.experiments import inspection

    if not done:
        return False
    if plot == "dtg_assignment_examples":
        return _draw_assignment_examples(done, item, store, path)
    if plot == "cluster_quality":
        detector, _, data, config = _run_detector(done[0], item, store, unlabeled=True)
        images = inspection.detect_images(detector, data, inspection.spread_indices(len(data), CLUSTER_IMAGES),
                                          test_scale=config.test_scale, max_size=config.max_size)
        return figures.cluster_quality_scatter(inspection.cluster_quality(images), path=path)
    panels = {}
    for s in done:
        detector, model, data, config = _run_detector(s, item, store, unlabeled=False)
        images = inspection.detect_images(detector, data, inspection.spread_indices(len(data), SHOWN_IMAGES),
                                          test_scale=config.test_scale, max_size=config.max_size)
        panels[f"{_label(s)} ({model})"] = [p for im in images for p in _panels(plot, im)]
    return figures.detection_grid(panels, path=path)


ASSIGNMENT_IMAGES = 40  # unlabeled images searched for DTG Fig. 3's two cases


def _draw_assignment_examples(done: list[RunSpec], item: Item, store: LayeredStore, path: Path) -> bool:
    """DTG-SSOD Fig. 3 from the first DTG run: on its unlabeled images, a proposal the sparse paradigm
    makes foreground wrongly (1) and one it makes background wrongly (2), where INC is right: the
    proposal white, the sparse pseudo boxes red, the ground truth green."""
    from ssodlib.experiments import inspection
    from ssodlib.methods import get_method

    runs = [s for s in done if s.config.method == "dtg_ssod"]
    if not runs:
        return False
    detector, _, data, config = _run_detector(runs[0], item, store, unlabeled=True)
    options = get_method(config.method)(options=config.method_options).options
    cases = {"(1) sparse: foreground, INC: background": lambda e: e.sparse > 0 and e.dense == 0,
             "(2) sparse: background, INC: foreground": lambda e: e.sparse == 0 and e.dense > 0}
    panels: dict[str, list[dict[str, Any]]] = {}
    for i in inspection.spread_indices(len(data), ASSIGNMENT_IMAGES):
        image, target = data[i]
        examples, pseudo, _ = inspection.assignment_examples(detector, image, target["boxes"], target["labels"],
                                                             options=options, test_scale=config.test_scale,
                                                             max_size=config.max_size)
        for case, wanted in cases.items():
            e = next((e for e in examples if wanted(e)), None)
            if e is not None and case not in panels:
                boxes = [(*b.tolist(), "red") for b in pseudo] + [(*b.tolist(), "lime") for b in target["boxes"].float()]
                panels[case] = [{"image": image, "boxes": [*boxes, (*e.proposal.tolist(), "white")],
                                 "title": f"teacher p {e.teacher_score:.2f}, IoU with pseudo box {e.pseudo_iou:.2f}"}]
        if len(panels) == len(cases):
            break
    return figures.detection_grid({case: panels[case] for case in cases if case in panels}, path=path)


def _run_detector(s: RunSpec, item: Item, store: LayeredStore, *, unlabeled: bool):
    from ssodlib.experiments import inspection

    model = item.model if item.model in store.get(s.key)["final"] else "student"
    detector, config, files = inspection.load_run_detector(store.run_dir(s.key) / CHECKPOINT_NAME, model=model)
    data, _ = inspection.inspection_images(files, unlabeled=unlabeled)
    return detector, model, data, config


def _panels(plot: str, im: Any) -> list[dict[str, Any]]:
    from ssodlib.experiments import inspection

    if plot == "detections":
        tp, keep, missed = inspection.box_outcomes(im, score_thresh=SHOWN_SCORE)
        boxes = [(*im.boxes[k].tolist(), "lime" if t else "yellow") for k, t in zip(keep.tolist(), tp.tolist())]
        boxes += [(*b.tolist(), "red") for b in im.gt_boxes[missed]]
        return [{"image": im.image, "title": f"score >= {SHOWN_SCORE}: TP green, FP yellow, FN red", "boxes": boxes}]
    before = im.candidate_boxes[im.candidate_scores >= SHOWN_SCORE]
    after = im.boxes[im.scores >= SHOWN_SCORE]
    return [{"image": im.image, "title": f"before NMS ({len(before)} boxes >= {SHOWN_SCORE})",
             "boxes": [(*b.tolist(), "cyan") for b in before]},
            {"image": im.image, "title": f"after NMS ({len(after)} boxes)", "boxes": [(*b.tolist(), "lime") for b in after]}]
