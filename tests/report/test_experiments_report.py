"""Reports from hand-made records (no training): mean ± std over folds, published values, figures, and
runs that are missing shown as missing."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ssodlib.experiments.plan import load_declarations, plan_items
from ssodlib.experiments.store import ResultsStore
from ssodlib.report.experiments import (metric_value, paired_leads, render, results_frame, summary_table,
                                        versus_published)

EXPERIMENTS = """
paper: rep
items:
  - id: tab
    kind: table
    metric: ap
    model: teacher
    rows:
      - name: Sup
        method: supervised
        reference: [{paper: pub, item: t1, row: Supervised}]
      - name: PL
        method: pseudo_label
        burn_in_from: Sup
        reference: [{paper: pub, item: t1, row: Teacher, columns: {"1%": one percent, "5%": five percent}}]
    columns:
      - {name: "1%", set: {percent: 1}}
      - {name: "5%", set: {percent: 5}}
    scales:
      smoke: {folds: [1, 2]}
  - id: fig
    kind: figure
    plots: [pseudo_label_curves, ap_per_iou, class_distribution]
    rows:
      - {name: PL, method: pseudo_label}
      - {name: Sup, method: supervised}
    columns:
      - {name: "1%", set: {percent: 1}}
      - {name: "5%", set: {percent: 5}}
    scales:
      smoke: {folds: [1]}
"""

# "1%" of Teacher is a decoy: the PL row maps "1%" to the published column "one percent"
REFERENCE = """
paper: pub
items:
  - id: t1
    rows:
      - {name: Supervised, values: {"1%": 9.05, "5%": 18.47}}
      - {name: Teacher, values: {"1%": 99.0, "one percent": 20.75, "five percent": 28.27}}
"""

CLASSES = ["a", "b", "c"]


def _final(**ap: float) -> dict:
    """Final metrics of the models given (e.g. student=0.2), AP per IoU 0.5 -> 2 AP, 0.95 -> AP / 2."""
    return {model: {"ap": v, "ap50": 2 * v, "per_class_ap": {c: v for c in CLASSES},
                    "ap_per_iou": {"0.5": 2 * v, "0.95": v / 2}} for model, v in ap.items()}


# (row, column, fold) -> final metrics; not listed: not done. Sup 5% f2, PL 5% f1 and f2 are missing.
DONE = {
    ("Sup", "1%", 1): _final(student=0.20),
    ("Sup", "1%", 2): _final(student=0.22),
    ("Sup", "5%", 1): _final(student=0.30),
    ("PL", "1%", 1): _final(student=0.10, teacher=0.25),  # scored by the teacher
    ("PL", "1%", 2): _final(student=0.12, teacher=0.27),
}

# the pseudo-label run's diagnostics log: a burn-in record and an eval record carry no pseudo labels
PL_LOG = [
    {"iteration": 2, "kind": "train", "loss": 1.0},
    {"iteration": 3, "kind": "train", "loss": 0.9, "pl_images": 2, "pl_precision": 0.5, "pl_recall": 0.25,
     "pl_per_image": 1.5, "gt_per_image": 2.0, "pl_class_kl": 0.3, "gt_per_class": [1, 2, 1], "pl_per_class": [2, 0, 0]},
    {"iteration": 4, "kind": "train", "loss": 0.8, "pl_images": 2, "pl_precision": 0.75, "pl_recall": 0.5,
     "pl_per_image": 1.0, "gt_per_image": 1.0, "pl_class_kl": 0.1, "gt_per_class": [1, 0, 1], "pl_per_class": [1, 1, 0]},
    {"iteration": 4, "kind": "eval", "student": {"ap": 0.1}},
]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    papers = tmp_path / "papers"
    (papers / "rep").mkdir(parents=True)
    (papers / "pub").mkdir()
    (papers / "rep" / "experiments.yaml").write_text(EXPERIMENTS)
    (papers / "pub" / "reference.yaml").write_text(REFERENCE)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(papers))
    items = plan_items("rep", "all", "smoke")
    store = ResultsStore(tmp_path / "results")
    specs = {(s.row, s.column, s.fold): s for runs in items.values() for s in runs}
    for cell, final in DONE.items():
        s = specs[cell]
        store.put(s.key, {"row": s.row, "column": s.column, "fold": s.fold, "final": final})
    log = store.run_dir(specs["PL", "1%", 1].key) / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps(r) + "\n" for r in PL_LOG))
    return items, store, specs


def test_summary_table_gives_mean_std_and_folds_done(setup):
    items, store, _ = setup
    item = load_declarations("rep").item("tab")
    table = summary_table(item, results_frame(item, items["tab"], store))
    assert list(table.columns) == ["tab", "1%", "5%"]
    # Sup 1%: 20, 22 -> mean 21, std sqrt(((20-21)^2 + (22-21)^2) / 1) = 1.414
    # PL 1% (teacher): 25, 27 -> 26 ± 1.41; Sup 5%: one fold of two, std 0
    assert table.to_dict("records") == [
        {"tab": "Sup", "1%": "21.00 ± 1.41 (2/2 local)", "5%": "30.00 ± 0.00 (1/2 local)"},
        {"tab": "PL", "1%": "26.00 ± 1.41 (2/2 local)", "5%": "missing"},
    ]


def test_versus_published_maps_columns_and_takes_the_delta(setup):
    items, store, _ = setup
    item = load_declarations("rep").item("tab")
    frame = versus_published(item, results_frame(item, items["tab"], store))
    lines = {(r["row"], r["column"]): r for r in frame.to_dict("records")}
    assert len(frame) == 4
    expected = {  # (folds, reproduced, std, published, delta = reproduced - published)
        ("Sup", "1%"): (2, 21.0, 1.41, 9.05, 11.95),
        ("Sup", "5%"): (1, 30.0, 0.0, 18.47, 11.53),
        ("PL", "1%"): (2, 26.0, 1.41, 20.75, 5.25),  # "one percent", not the decoy "1%"
    }
    for cell, (folds, mean, std, pub, delta) in expected.items():
        r = lines[cell]
        assert (r["runs"], r["published"]) == (folds, pub)
        assert r["reproduced"] == pytest.approx(mean) and r["std"] == pytest.approx(std)
        assert r["delta"] == pytest.approx(delta)
    assert lines["Sup", "1%"]["source"] == "pub t1 'Supervised'" and lines["PL", "5%"]["source"] == "pub t1 'Teacher'"
    missing = lines["PL", "5%"]  # published is known, nothing reproduced: no mean, no delta
    assert missing["runs"] == 0 and missing["published"] == 28.27
    assert math.isnan(missing["reproduced"]) and math.isnan(missing["delta"])


def test_a_row_with_one_reference_per_column_gives_each_column_only_its_own(setup):
    # Rethinking PL's Table 4: one published row for the overall column, another for the rare classes;
    # a reference naming the column wins, so each (row, column) has one published line, not two
    items, store, _ = setup
    item = load_declarations("rep").item("tab")
    item.rows[0]["reference"] = [{"paper": "pub", "item": "t1", "row": "Supervised", "columns": {"1%": "1%"}},
                                 {"paper": "pub", "item": "t1", "row": "Teacher", "columns": {"5%": "five percent"}}]
    frame = versus_published(item, results_frame(item, items["tab"], store))
    sup = frame[frame["row"] == "Sup"].to_dict("records")
    assert [(r["column"], r["source"], r["published"]) for r in sup] == [
        ("1%", "pub t1 'Supervised'", 9.05), ("5%", "pub t1 'Teacher'", 28.27)]


def test_a_map_of_some_columns_leaves_the_others_published_under_their_own_names(setup):
    # Rethinking PL's Table 2: the map renames the mini columns; a column it does not name is the
    # published column of the same name (5% -> Supervised's "5%": 18.47), not left without a value
    items, store, _ = setup
    item = load_declarations("rep").item("tab")
    item.rows[0]["reference"] = [{"paper": "pub", "item": "t1", "row": "Supervised", "columns": {"1%": "1%"}}]
    frame = versus_published(item, results_frame(item, items["tab"], store))
    sup = frame[frame["row"] == "Sup"].to_dict("records")
    assert [(r["column"], r["source"], r["published"]) for r in sup] == [
        ("1%", "pub t1 'Supervised'", 9.05), ("5%", "pub t1 'Supervised'", 18.47)]


def test_render_writes_tables_and_figures_and_lists_missing_runs(setup, tmp_path):
    items, store, specs = setup
    out = tmp_path / "report"
    report = render(items, paper="rep", scale="smoke", results_dir=store.root, out_dir=out)
    expected_missing = sorted({specs[c].key for c in specs} - {specs[c].key for c in DONE})
    assert report.missing == expected_missing and len(expected_missing) == 3
    assert set(report.tables) == {"tab_runs", "tab", "tab_vs_published", "tab_leads", "fig_runs", "fig",
                                  "fig_pseudo_labels", "tab_pseudo_labels"}
    for name, frame in report.tables.items():
        saved = pd.read_csv(out / f"{name}.csv", keep_default_na=False)
        assert list(saved.columns) == list(frame.columns) and len(saved) == len(frame)
    assert pd.read_csv(out / "tab.csv").to_dict("records") == report.tables["tab"].to_dict("records")
    runs = pd.read_csv(out / "tab_runs.csv")
    assert len(runs) == 8 and runs["done"].sum() == 5
    assert runs.loc[~runs["done"], "value"].isna().all()  # never an invented value
    assert sorted(runs.loc[runs["done"], "value"].round(6)) == [20.0, 22.0, 25.0, 27.0, 30.0]

    # the pseudo-label run's diagnostics averaged over its two logged steps
    labels = report.tables["fig_pseudo_labels"].to_dict("records")
    assert labels == [{"row": "PL", "column": "1%", "fold": 1, "pl_per_image": 1.25, "gt_per_image": 1.5,
                       "pl_precision": 0.625, "pl_recall": 0.375, "pl_class_kl": 0.2}]

    assert set(report.figures) == {"fig_pseudo_label_curves", "fig_ap_per_iou", "fig_class_distribution"}
    for path in report.figures.values():
        assert path.parent == out and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000

    # AP per IoU of the three fig runs done (PL 5% f1 is missing): teacher of PL, student of Sup
    iou = pd.read_csv(out / "fig_ap_per_iou.csv")
    assert sorted(set(iou["run"])) == ["PL 1% f1", "Sup 1% f1", "Sup 5% f1"]
    points = {(r["run"], r["iou"]): r["ap"] for r in iou.to_dict("records")}
    assert points["PL 1% f1", 0.5] == pytest.approx(50.0) and points["PL 1% f1", 0.95] == pytest.approx(12.5)
    assert points["Sup 5% f1", 0.5] == pytest.approx(60.0)

    curves = pd.read_csv(out / "fig_pseudo_label_curves.csv")
    assert set(curves["run"]) == {"PL 1% f1"}  # the only run whose log has pseudo labels
    precision = curves[curves["curve"] == "pl_precision"]
    assert list(precision["iteration"]) == [3, 4] and list(precision["value"]) == [0.5, 0.75]

    # ground truth [1,2,1] + [1,0,1] = [2,2,2] -> 1/3 each; pseudo labels [2,0,0] + [1,1,0] = [3,1,0]
    dist = pd.read_csv(out / "fig_class_distribution.csv")
    fractions = {(r["series"], r["class"]): r["fraction"] for r in dist.to_dict("records")}
    assert len(fractions) == 6
    for c in CLASSES:
        assert fractions["ground truth (unlabeled): 1% f1", c] == pytest.approx(1 / 3)
    assert [fractions["pseudo labels: PL 1% f1", c] for c in CLASSES] == pytest.approx([0.75, 0.25, 0.0])


def test_paired_leads_pair_each_run_with_its_burn_in_row_by_column_fold_and_seed(setup):
    items, store, _ = setup
    item = load_declarations("rep").item("tab")
    leads = paired_leads(item, results_frame(item, items["tab"], store))
    # PL - Sup at 1%: fold 1 25 - 20 = +5, fold 2 27 - 22 = +5; at 5% no pair is complete
    assert leads.to_dict("records") == [{"row": "PL", "over": "Sup", "column": "1%", "lead": "+5.00 ± 0.00",
                                         "ahead": "2/2", "pairs": "f1 s0: +5.00, f2 s0: +5.00"}]


def test_cells_say_whether_their_runs_are_shipped_or_local(setup, tmp_path):
    """A shipped folder under the local store: a run done in both shows the local record."""
    from ssodlib.experiments.shipped import SHIPPED_MARK, LayeredStore

    items, local, specs = setup
    shipped = ResultsStore(tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / SHIPPED_MARK).write_text("shipped")
    for cell, final in [(("Sup", "5%", 2), _final(student=0.40)), (("Sup", "1%", 1), _final(student=0.90))]:
        shipped.put(specs[cell].key, {"final": final})
    item = load_declarations("rep").item("tab")
    runs = results_frame(item, items["tab"], LayeredStore(local, shipped))
    sources = {(r["row"], r["column"], r["fold"]): r["source"] for r in runs.to_dict("records")}
    assert sources["Sup", "1%", 1] == "local" and sources["Sup", "5%", 2] == "shipped" and sources["PL", "5%", 1] == ""
    table = summary_table(item, runs).to_dict("records")
    # Sup 1% keeps the local 20 (not the shipped 90); Sup 5%: local 30 and shipped 40 -> 35 ± 7.07
    assert table[0] == {"tab": "Sup", "1%": "21.00 ± 1.41 (2/2 local)", "5%": "35.00 ± 7.07 (2/2 1 local + 1 shipped)"}


def test_render_with_nothing_done_writes_only_missing(setup, tmp_path):
    items, _, specs = setup
    report = render(items, paper="rep", scale="smoke", results_dir=tmp_path / "empty", out_dir=tmp_path / "out")
    assert report.missing == sorted({s.key for s in specs.values()}) and report.figures == {}
    assert set(report.tables["tab"]["1%"]) == {"missing"} and set(report.tables["tab"]["5%"]) == {"missing"}
    assert report.tables["tab_vs_published"]["delta"].isna().all()
    assert not list((tmp_path / "out").glob("*.png"))


def test_metric_value_reads_a_key_one_class_or_the_mean_of_classes():
    metrics = {"ap": 0.3, "per_class_ap": {"a": 0.1, "b": 0.4, "c": None}}
    assert metric_value(metrics, "ap") == 0.3
    assert metric_value(metrics, "class:b") == 0.4
    assert metric_value(metrics, "classes:a,b") == pytest.approx(0.25)
    assert metric_value(metrics, "classes:a, c") == pytest.approx(0.1)  # a class absent from validation: skipped
    with pytest.raises(KeyError, match="class:NAME or classes"):
        metric_value(metrics, "class:zebra")


COLUMN_METRICS = """
paper: cm
items:
  - id: per_class
    kind: table
    metric: ap
    plots: [metric_bars]
    rows: [{name: Sup, method: supervised}]
    columns:
      - {name: all}
      - {name: b, metric: "class:b"}
      - {name: tail, metric: "classes:b,c"}
    scales: {smoke: {folds: [1, 2]}}
"""


def test_columns_may_name_their_own_metric_and_share_one_run(tmp_path, monkeypatch):
    (tmp_path / "papers" / "cm").mkdir(parents=True)
    (tmp_path / "papers" / "cm" / "experiments.yaml").write_text(COLUMN_METRICS)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(tmp_path / "papers"))
    items = plan_items("cm", "all", "smoke")
    assert len({s.key for s in items["per_class"]}) == 2  # three columns, one run per fold
    store = ResultsStore(tmp_path / "results")
    for s, (ap, b, c) in zip(items["per_class"][::3], [(0.3, 0.2, 0.6), (0.5, 0.4, 0.8)]):
        store.put(s.key, {"final": {"student": {"ap": ap, "per_class_ap": {"a": 0.0, "b": b, "c": c}}}})
    report = render(items, paper="cm", scale="smoke", results_dir=store.root, out_dir=tmp_path / "out")
    line = report.tables["per_class"].to_dict("records")[0]
    assert line == {"per_class": "Sup", "all": "40.00 ± 14.14 (2/2 local)", "b": "30.00 ± 14.14 (2/2 local)",
                    "tail": "50.00 ± 14.14 (2/2 local)"}
    bars = pd.read_csv(tmp_path / "out" / "per_class_metric_bars.csv")
    assert list(bars["column"]) == ["all", "b", "tail"] and list(bars["mean"].round(6)) == [40.0, 30.0, 50.0]


def test_pseudo_box_precision_per_iou_weights_each_log_by_its_pseudo_boxes():
    from ssodlib.report.experiments import precision_per_iou

    logs = [{"iteration": 1, "kind": "train"},  # no pseudo-label diagnostics: left out
            {"iteration": 2, "pl_images": 2, "pl_per_image": 1.5, "pl_precision_at_iou": [0.6] * 10},  # 3 boxes
            {"iteration": 3, "pl_images": 2, "pl_per_image": 0.5, "pl_precision_at_iou": [0.2] * 10}]  # 1 box
    curve = precision_per_iou(logs)
    assert sorted(curve) == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    assert all(v == pytest.approx(100 * (3 * 0.6 + 1 * 0.2) / 4) for v in curve.values())  # 50 %
    assert precision_per_iou(logs[:1]) == {}


def test_roi_and_eval_curves_draw_the_logged_counts_and_the_evaluations(tmp_path, monkeypatch):
    papers = tmp_path / "papers"
    (papers / "rep").mkdir(parents=True)
    (papers / "pub").mkdir()
    plots = "plots: [pseudo_label_curves, ap_per_iou, class_distribution]"
    (papers / "rep" / "experiments.yaml").write_text(
        EXPERIMENTS.replace(plots, "plots: [roi_curves, soft_roi_curves, eval_curves, dtg_assignment_curves, dtg_rank_curves]"))
    (papers / "pub" / "reference.yaml").write_text(REFERENCE)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(papers))
    items = plan_items("rep", "fig", "smoke")
    store = ResultsStore(tmp_path / "results")
    specs = {(s.row, s.column): s for s in items["fig"]}
    log = [  # window 1: 2 images, 6 TP / 2 FP / 1 FN RoIs; window 2: 4 images, 2 / 2 / 4
        # window 1 also has DTG's Fig. 3-4 counts per image: INC 3 of 4 foreground labels right, 5 true
        # foreground samples; 2 judged pairs, 1.5 ordered right by the teacher
        {"iteration": 3, "kind": "train", "pl_images": 2, "pl_per_image": 1.0, "gt_per_image": 2.0,
         "roi_tp": 6, "roi_fp": 2, "roi_fn": 1, "pl_dtg_assign_dense_tp_per_image": 3.0,
         "pl_dtg_assign_dense_fg_per_image": 4.0, "pl_dtg_assign_gt_fg_per_image": 5.0,
         "pl_dtg_rank_pairs_per_image": 2.0, "pl_dtg_rank_teacher_agree_per_image": 1.5},
        {"iteration": 4, "kind": "eval", "student": {"ap": 0.10}, "teacher": {"ap": 0.15}},
        {"iteration": 5, "kind": "train", "pl_images": 4, "pl_per_image": 1.0, "gt_per_image": 2.0,
         "roi_tp": 2, "roi_fp": 2, "roi_fn": 4},
        {"iteration": 6, "kind": "eval", "student": {"ap": 0.20}, "teacher": {"ap": 0.25}},
    ]
    for (row, column), s in specs.items():
        if column == "1%":
            store.put(s.key, {"row": row, "column": column, "fold": 1, "final": _final(student=0.2, teacher=0.25)})
            records = log if row == "PL" else [r for r in log if r["kind"] == "eval"]
            path = store.run_dir(s.key) / "metrics.jsonl"
            path.parent.mkdir(parents=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "report"
    report = render(items, paper="rep", scale="smoke", results_dir=store.root, out_dir=out)
    # no run logged CrossMatch's pl_cm_* counts: that figure is not drawn
    assert set(report.figures) == {"fig_roi_curves", "fig_eval_curves", "fig_dtg_assignment_curves", "fig_dtg_rank_curves"}
    dense = pd.read_csv(out / "fig_dtg_assignment_curves.csv")
    value = {(r["curve"], r["iteration"]): r["value"] for r in dense.to_dict("records")}
    assert value["pl_dtg_assign_dense_precision", 3] == 0.75 and value["pl_dtg_assign_dense_recall", 3] == 0.6  # 3/4, 3/5
    rank = pd.read_csv(out / "fig_dtg_rank_curves.csv")
    value = {(r["curve"], r["iteration"]): r["value"] for r in rank.to_dict("records")}
    assert value["pl_dtg_rank_teacher_accuracy", 3] == 0.75  # 1.5 / 2
    roi = pd.read_csv(out / "fig_roi_curves.csv")
    assert set(roi["run"]) == {"PL 1% f1"}  # the supervised run logged no RoI counts
    value = {(r["curve"], r["iteration"]): r["value"] for r in roi.to_dict("records")}
    assert value["roi_tp_per_image", 3] == 3.0 and value["roi_fn_per_image", 5] == 1.0  # 6 / 2, 4 / 4
    assert value["roi_precision", 3] == 0.75 and value["roi_precision", 5] == 0.5  # 6 / 8, 2 / 4
    curves = pd.read_csv(out / "fig_eval_curves.csv").set_index("iteration")
    # the item's model (teacher) where evaluated; the supervised run has a teacher here too
    assert list(curves["PL 1% f1"]) == pytest.approx([15.0, 25.0])


def test_per_class_ap_draws_each_class_of_each_run_done_by_its_model(tmp_path, monkeypatch):
    papers = tmp_path / "papers"
    (papers / "rep").mkdir(parents=True)
    (papers / "pub").mkdir()
    plots = "plots: [pseudo_label_curves, ap_per_iou, class_distribution]"
    (papers / "rep" / "experiments.yaml").write_text(EXPERIMENTS.replace(plots, "plots: [per_class_ap]"))
    (papers / "pub" / "reference.yaml").write_text(REFERENCE)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(papers))
    items = plan_items("rep", "fig", "smoke")
    store = ResultsStore(tmp_path / "results")
    specs = {(s.row, s.column): s for s in items["fig"]}
    final = _final(student=0.1, teacher=0.3)
    final["teacher"]["per_class_ap"] = {"a": 0.5, "b": None, "c": 0.1}  # b: no ground truth
    store.put(specs["PL", "1%"].key, {"row": "PL", "column": "1%", "fold": 1, "final": final})
    store.put(specs["Sup", "1%"].key, {"row": "Sup", "column": "1%", "fold": 1, "final": _final(student=0.2)})
    out = tmp_path / "report"
    report = render(items, paper="rep", scale="smoke", results_dir=store.root, out_dir=out)
    assert set(report.figures) == {"fig_per_class_ap"}
    bars = pd.read_csv(out / "fig_per_class_ap.csv")
    ap = {(r["run"], r["class"]): r["ap"] for r in bars.to_dict("records")}
    # PL by the item's model (the teacher), Sup (no teacher) by its student
    assert ap["PL f1", "a"] == pytest.approx(50.0) and math.isnan(ap["PL f1", "b"]) and ap["PL f1", "c"] == pytest.approx(10.0)
    assert ap["Sup f1", "a"] == pytest.approx(20.0) and len(ap) == 6
