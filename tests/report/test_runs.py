import json
import math

import pytest

from ssodlib.cli import main
from ssodlib.io import InputError
from ssodlib.report.runs import eval_curves, per_class_ap, pseudo_label_summary


def _run(folder, records):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _eval(iteration, student, teacher=None):
    record = {"iteration": iteration, "kind": "eval", "student": {"ap": student, "ap50": 2 * student}}
    if teacher is not None:
        record["teacher"] = {"ap": teacher, "ap50": 2 * teacher}
    return record


def _train(iteration, precision, recall):
    return {"iteration": iteration, "kind": "train", "loss": 1.0, "pl_images": 4, "pl_per_image": 2.0,
            "gt_per_image": 5.0, "pl_precision": precision, "pl_recall": recall, "pl_class_kl": 0.1}


@pytest.fixture
def runs(tmp_path):
    sup = _run(tmp_path / "sup", [{"iteration": 50, "kind": "train", "loss": 2.0}, _eval(100, 0.10), _eval(200, 0.20)])
    empty = {**_train(120, 0.0, 0.0), "pl_images": 0}  # a log window without pseudo-labelled images
    pl = _run(tmp_path / "pl", [_eval(100, 0.10), empty, _train(150, 0.5, 0.2), _train(200, 0.7, 0.4),
                                _eval(200, 0.22, teacher=0.25), _eval(300, 0.30, teacher=0.31)])
    return sup, pl


def test_curves_read_the_teacher_where_evaluated_and_lead_over_the_first_run(runs):
    curves = eval_curves(runs, model="teacher")
    assert list(curves.columns) == ["sup", "pl", "lead pl"]
    assert curves.loc[100].tolist() == pytest.approx([10.0, 10.0, 0.0])  # burn-in: student only
    assert curves.loc[200].tolist() == pytest.approx([20.0, 25.0, 5.0])
    assert curves.loc[300, "pl"] == pytest.approx(31.0) and curves.loc[300, ["sup", "lead pl"]].isna().all()


def test_curves_of_the_student_and_another_metric(runs):
    curves = eval_curves(runs, model="student", metric="ap50")
    assert curves.loc[200].tolist() == pytest.approx([40.0, 44.0, 4.0])


def test_student_curves_skip_intermediate_evaluations_of_the_teacher_only(tmp_path):
    """eval_student="final": a mean teacher's intermediate evaluations have the teacher only."""
    teacher_only = {"iteration": 200, "kind": "eval", "teacher": {"ap": 0.25}}
    pl = _run(tmp_path / "pl", [_eval(100, 0.10), teacher_only, _eval(300, 0.30, teacher=0.31)])
    assert eval_curves([pl], model="student")["pl"].to_dict() == pytest.approx({100: 10.0, 300: 30.0})
    assert eval_curves([pl], model="teacher")["pl"].to_dict() == pytest.approx({100: 10.0, 200: 25.0, 300: 31.0})


def test_pseudo_label_summary_averages_the_diagnostics_of_runs_that_logged_them(runs):
    # the window with no pseudo-labelled images is not averaged in
    summary = pseudo_label_summary(runs)
    assert summary["run"].tolist() == ["pl"]
    assert summary.loc[0, "pl_precision"] == pytest.approx(0.6) and summary.loc[0, "pl_recall"] == pytest.approx(0.3)


def test_a_folder_without_metrics_or_an_unknown_metric_names_the_file(runs, tmp_path):
    with pytest.raises(InputError, match=r"nothing.metrics\.jsonl: missing"):
        eval_curves([runs[0], tmp_path / "nothing"])
    with pytest.raises(InputError, match=r"sup.metrics\.jsonl: iteration 100 has no teacher or student 'apx'"):
        eval_curves(runs, metric="apx")


def test_compare_command_prints_the_table_and_writes_csv_and_plot(runs, tmp_path, capsys):
    csv, png = tmp_path / "out" / "cmp.csv", tmp_path / "out" / "cmp.png"
    assert main(["compare", str(runs[0]), str(runs[1]), "--csv", str(csv), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "lead = run - sup" in out and "25.00" in out and "pl_precision" in out
    assert csv.read_text().splitlines()[0] == "iteration,sup,pl,lead pl"
    assert png.stat().st_size > 0


def _eval_per_class(iteration, student, teacher=None):
    record = {"iteration": iteration, "kind": "eval",
              "student": {"ap": sum(student.values()) / len(student), "per_class_ap": student}}
    if teacher is not None:
        record["teacher"] = {"ap": sum(teacher.values()) / len(teacher), "per_class_ap": teacher}
    return record


def test_per_class_ap_at_the_last_evaluation_with_leads_and_the_mean(tmp_path):
    sup = _run(tmp_path / "sup", [_eval_per_class(100, {"disk": 0.1, "star": 0.0}),
                                  _eval_per_class(200, {"disk": 0.5, "star": 0.1})])
    pl = _run(tmp_path / "pl", [_eval_per_class(200, {"disk": 0.2, "star": 0.0}, teacher={"disk": 0.3, "star": 0.0}),
                                _eval_per_class(300, {"disk": 0.6, "star": 0.1}, teacher={"disk": 0.7, "star": 0.05})])
    table = per_class_ap([sup, pl], model="teacher")
    assert list(table.columns) == ["sup", "pl", "lead pl"] and list(table.index) == ["disk", "star", "mean"]
    assert table.loc["disk"].tolist() == pytest.approx([50.0, 70.0, 20.0])
    assert table.loc["star"].tolist() == pytest.approx([10.0, 5.0, -5.0])
    assert table.loc["mean"].tolist() == pytest.approx([30.0, 37.5, 7.5])
    assert per_class_ap([sup, pl], model="student").loc["disk", "lead pl"] == pytest.approx(10.0)


def test_per_class_ap_names_the_file_without_per_class_numbers_and_compare_prints_it(runs, tmp_path, capsys):
    with pytest.raises(InputError, match=r"sup.metrics\.jsonl: iteration 200 has no per-class AP"):
        per_class_ap(runs)
    sup = _run(tmp_path / "a", [_eval_per_class(100, {"disk": 0.4, "ring": 0.2})])
    with pytest.raises(InputError, match=r"a.metrics\.jsonl: .*'per_class_ap'.*--per-class"):
        eval_curves([sup], metric="per_class_ap")  # a per-class dict is not a curve
    pl = _run(tmp_path / "b", [_eval_per_class(100, {"disk": 0.5, "ring": 0.2}, teacher={"disk": 0.6, "ring": 0.3})])
    assert main(["compare", str(sup), str(pl), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "AP (%) per class" in out and "ring" in out and "45.00" in out  # the teacher's mean


def test_per_class_ap_reads_an_undefined_class_as_nan_and_leaves_it_out_of_the_mean(tmp_path):
    run = _run(tmp_path / "r", [{"iteration": 100, "kind": "eval",
                                 "student": {"ap": 0.4, "per_class_ap": {"disk": 0.4, "star": None}}}])
    table = per_class_ap([run], model="student")
    assert math.isnan(table.loc["star", "r"]) and table.loc["mean", "r"] == pytest.approx(40.0)


def test_pooled_diagnostics_are_ratios_of_sums_over_the_logs():
    from ssodlib.report.runs import pseudo_label_means

    logs = [
        # 2 images: 6 TP and 2 FP RoIs, 1 FN; DTG's R-CNN: 3 clusters with 12 members in all
        {"pl_images": 2, "pl_per_image": 1.0, "roi_tp": 6, "roi_fp": 2, "roi_fn": 1,
         "pl_dtg_rcnn_clusters_per_image": 1.5, "pl_dtg_rcnn_members_per_image": 6.0},
        # 6 images: 2 TP and 6 FP RoIs, no FN; 6 clusters with 6 members
        {"pl_images": 6, "pl_per_image": 2.0, "roi_tp": 2, "roi_fp": 6, "roi_fn": 0,
         "pl_dtg_rcnn_clusters_per_image": 1.0, "pl_dtg_rcnn_members_per_image": 1.0},
        {"pl_images": 0, "roi_tp": 99},  # a window without unlabeled images counts nowhere
    ]
    m = pseudo_label_means(logs)
    assert m["pl_per_image"] == 1.5  # a plain mean over the two windows, as before
    assert m["roi_precision"] == 0.5  # (6 + 2) / (6 + 2 + 2 + 6), not the mean of 0.75 and 0.25
    assert (m["roi_tp_per_image"], m["roi_fp_per_image"], m["roi_fn_per_image"]) == (1.0, 1.0, 0.125)  # 8/8, 8/8, 1/8
    assert m["pl_dtg_rcnn_members_per_cluster"] == 2.0  # (12 + 6) / (3 + 6)
    assert m["pl_dtg_rcnn_clusters_per_image"] == 1.25 and "pl_dtg_rpn_members_per_cluster" not in m
    assert pseudo_label_means([{"pl_images": 3, "roi_tp": 0, "roi_fp": 0}]).get("roi_precision") is None


def test_a_record_gets_the_pooled_rates_of_its_own_window():
    from ssodlib.report.runs import with_pooled_rates

    # 4 images, 6 TP and 2 FP RoIs, 2 FN: 1.5 / 0.5 / 0.5 per image, precision 6 / 8; DTG: the sparse
    # paradigm labels 2 foreground samples per image, none right (precision 0 / 2), and differs from INC on
    # 0 samples (no denominator: NaN); keys the window lacks stay absent
    out = with_pooled_rates({"pl_images": 4, "roi_tp": 6, "roi_fp": 2, "roi_fn": 2,
                             "pl_dtg_assign_sparse_tp_per_image": 0.0, "pl_dtg_assign_sparse_fg_per_image": 2.0,
                             "pl_dtg_assign_differ_per_image": 0.0, "pl_dtg_assign_differ_dense_right_per_image": 0.0})
    assert (out["roi_tp_per_image"], out["roi_fp_per_image"], out["roi_fn_per_image"]) == (1.5, 0.5, 0.5)
    assert out["roi_precision"] == 0.75 and out["pl_dtg_assign_sparse_precision"] == 0.0
    assert math.isnan(out["pl_dtg_assign_differ_dense_right"]) and "pl_dtg_rank_teacher_accuracy" not in out
    assert with_pooled_rates({"pl_images": 0, "roi_tp": 1}) == {"pl_images": 0, "roi_tp": 1}
