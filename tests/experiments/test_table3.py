"""Rethinking Pseudo Labels' Table 3 at smoke scale through the runner: two teachers, two students that
learn from both, and the second student's final evaluation of both students as one model."""

from __future__ import annotations

import math

import pytest

from ssodlib.evaluation.detector_eval import evaluate_detector
from ssodlib.experiments import ResultsStore, plan, run_plan
from ssodlib.experiments.plan import plan_items
from ssodlib.experiments.inspection import load_run_detector
from ssodlib.models.ensemble import EnsembleDetector
from ssodlib.report.experiments import render

PAPER = "rethinking_pseudo_labels"
# a low score threshold: at 8 iterations no detection reaches the default 0.05, and every AP would be 0
LOW = {"detector_options": {"box_head": "side_classification", "score_thresh": 0.001}}


@pytest.fixture(scope="module")
def table3(smoke_benchmark, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    specs = plan(PAPER, "table3", "smoke", overrides={"threads": 1, **LOW})
    data_root = str(smoke_benchmark.root.parent)
    records = run_plan(specs, results_dir=root, data_root=data_root, device="cpu", progress=False)
    return {s.row: s for s in specs}, {r["row"]: r for r in records}, ResultsStore(root), data_root


def test_the_runs_start_from_their_teachers_and_the_students_learn_from_both(table3):
    specs, records, store, _ = table3
    teacher_a, teacher_b = specs["Supervised (side head)"], specs["Supervised (side head, teacher B)"]
    student_a, student_b = specs["Student A (teachers A + B)"], specs["Ensemble (students A + B)"]
    assert records[student_a.row]["started_from"] == str(store.run_dir(teacher_a.key) / "checkpoint-4.pt")
    assert records[student_b.row]["started_from"] == str(store.run_dir(teacher_b.key) / "checkpoint-4.pt")
    assert records[student_a.row]["config"]["method_options"]["ensemble_teachers"] == [teacher_b.key]
    assert records[student_b.row]["config"]["method_options"]["ensemble_teachers"] == [teacher_a.key]
    assert records[student_b.row]["config"]["ensemble_with"] == [student_a.key]
    assert records[student_b.row]["config"]["seed"] == 1 and records[student_a.row]["config"]["seed"] == 0


def test_the_ensemble_row_is_scored_by_the_ensemble_of_both_final_students(table3):
    specs, records, store, _ = table3
    student_a, student_b = specs["Student A (teachers A + B)"], specs["Ensemble (students A + B)"]
    final = records[student_b.row]["final"]
    assert {"student", "teacher", "ensemble"} <= set(final)
    assert "ensemble" not in records[student_a.row]["final"]  # only the run that names ensemble_with
    # recomputed from the two runs' final checkpoints: the trainer ensembled the right weights
    loaded = [load_run_detector(store.run_dir(s.key) / "checkpoint.pt", model="student")
              for s in (student_b, student_a)]
    members = [detector for detector, _, _ in loaded]
    _, config, files = loaded[0]
    metrics = evaluate_detector(EnsembleDetector(members=members), ann_file=files.val_ann,
                                image_dir=files.val_images, test_scale=config.test_scale, max_size=config.max_size,
                                max_images=config.eval_images).to_dict()
    assert metrics["ap50"] > 0  # a degenerate ensemble (no correct box) would make the checks below vacuous
    assert metrics["ap"] == pytest.approx(final["ensemble"]["ap"], abs=1e-9)
    assert metrics["ap50"] == pytest.approx(final["ensemble"]["ap50"], abs=1e-9)
    # the two students score differently (else the recomputation could not tell which weights were
    # ensembled), and the ensemble row's number is not the run's own student's
    assert records[student_a.row]["final"]["student"]["ap"] != final["student"]["ap"]
    assert final["ensemble"]["ap"] != final["student"]["ap"]
    assert final["ensemble"]["ap_per_iou"] != final["student"]["ap_per_iou"]
    # the report scores the row by the ensemble, the other rows by their students
    report = render(plan_items(PAPER, "table3", "smoke", overrides=LOW), paper=PAPER, scale="smoke",
                    results_dir=store.root, shipped=False, draw=False)
    runs = report.tables["table3_runs"]
    value = runs[(runs["row"] == student_b.row) & (runs["column"] == "AP")]["value"].item()
    assert value == pytest.approx(100 * final["ensemble"]["ap"]) and not math.isnan(value)
    value_a = runs[(runs["row"] == student_a.row) & (runs["column"] == "AP50")]["value"].item()
    assert value_a == pytest.approx(100 * records[student_a.row]["final"]["student"]["ap50"])
    assert not report.missing



def test_ensembling_with_an_unfinished_run_is_an_input_error_naming_it(table3, tmp_path):
    from ssodlib.engine.trainer import final_student_weights
    from ssodlib.io import InputError

    with pytest.raises(InputError, match=f"{tmp_path}: no finished run there.*Fix: finish that run first"):
        final_student_weights(tmp_path)
    specs, _, store, _ = table3
    done = store.run_dir(specs["Student A (teachers A + B)"].key)
    assert set(final_student_weights(done)) == set(
        load_run_detector(done / "checkpoint.pt", model="student")[0].state_dict())
