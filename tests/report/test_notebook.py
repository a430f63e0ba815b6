"""The notebooks' shared body without a kernel or training: the plan's run lines, no training for
RUN_INDEX -1, the report of an empty results store (every run missing, never invented) and the
check of the parameters; then one papermill run with a wrong parameter, to see what its error shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssodlib.io import InputError
from ssodlib.report import notebook

ROOT = Path(__file__).resolve().parents[2]


def test_plan_runs_prints_one_line_per_run(capsys):
    plan = notebook.plan_runs("baselines", "table1", "smoke")
    lines = capsys.readouterr().out.splitlines()
    assert plan.paper == "baselines" and plan.scale == "smoke" and list(plan.items) == ["table1"]
    assert lines == [f"{i} {spec.describe()}" for i, spec in enumerate(plan.runs)]
    assert [spec.row for spec in plan.runs] == ["Supervised", "Pseudo-label"]


def test_render_only_on_an_empty_store(capsys, tmp_path):
    plan = notebook.plan_runs("baselines", "table1", "smoke")
    capsys.readouterr()
    assert notebook.train(plan, run_index=-1, results_dir=tmp_path) == []
    assert capsys.readouterr().out == "0 run(s) finished or found finished\n"

    report = notebook.render_report(plan, results_dir=tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out == notebook.report_lines(report)
    assert out[:3] == ["table1 | table1 | 10%", "    Supervised", "    Pseudo-label"]
    assert "table1_vs_published | row | column | runs | reproduced | std | published | source | delta" in out
    assert not any(line.startswith("table1_runs") for line in out)  # per-run tables are not printed
    assert out[-2:] == ["figures: ", "missing runs: 2"]
    assert sorted(report.missing) == sorted(spec.key for spec in plan.runs)

    notebook.show_tables(report)  # outside a kernel, display() prints each table's text
    shown = capsys.readouterr().out
    assert "table1\n" in shown and "Supervised" in shown and "table1_runs" not in shown
    notebook.show_figures(report)
    assert capsys.readouterr().out == f"tables and figures saved in {report.out_dir}\n"


def test_report_disabled_renders_and_shows_nothing(capsys, tmp_path):
    plan = notebook.plan_runs("baselines", "table1", "smoke")
    capsys.readouterr()
    report = notebook.render_report(plan, results_dir=tmp_path, enabled=False)
    notebook.show_tables(report)
    notebook.show_figures(report)
    assert report is None and capsys.readouterr().out == ""
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("table, scale, kwargs, expected", [
    ("all", "huge", {}, 'SCALE = \'huge\' is not one of [\'mini\', \'paper\', \'smoke\']. Fix: set SCALE to one of "mini"'),
    ("tabel1", "smoke", {}, 'TABLE = \'tabel1\' is not one of [\'all\', \'table1\', \'figure_pseudo_labels\']'),
    ("all", "smoke", {"folds": [0]}, "FOLDS = [0]: the data has no fold(s) [0]. Fix: set FOLDS to None (the "
                                     "declared folds) or a list of folds among [1, 2, 3, 4, 5]"),
    ("all", "smoke", {"folds": 1}, "FOLDS = 1 is not a list of folds. Fix:"),
    ("all", "paper", {"folds": [0]}, "FOLDS = [0]: the data has no fold(s) [0]. Fix:"),
    ("table1", "smoke", {"columns": "5%"}, "COLUMNS = '5%' is not a list of column names. Fix:"),
    ("table1", "smoke", {"columns": ["7%"]}, "has no column(s) ['7%']. Fix: set COLUMNS to None or a list of its "
                                             "columns ['1%', '5%', '10%']"),
    ("table1", "smoke", {"overrides": ["iterations=4"]}, "OVERRIDES = ['iterations=4'] is not a dict. Fix:"),
], ids=["scale_huge", "table_tabel1", "folds_0", "folds_not_a_list", "folds_0_on_coco", "columns_not_a_list",
        "columns_7pct", "overrides_not_a_dict"])
def test_a_wrong_notebook_parameter_fails_in_the_plan_cell_naming_it_and_the_allowed_values(
        table, scale, kwargs, expected, capsys):
    with pytest.raises(InputError) as e:
        notebook.plan_runs("baselines", table, scale, **kwargs)
    assert str(e.value).startswith("notebook parameter ") and expected in str(e.value)
    assert capsys.readouterr().out == ""  # failed before planning a run


@pytest.mark.parametrize("kwargs, expected", [
    ({"run_index": "1"}, "RUN_INDEX = '1' is not an int. Fix:"),
    ({"device": "gpu"}, "DEVICE = 'gpu' is not one of ['auto', 'cpu', 'cuda']. Fix:"),
    ({"processes": 0}, "PROCESSES = 0 is not a positive int. Fix:"),
], ids=["run_index_a_string", "device_gpu", "processes_0"])
def test_a_wrong_training_parameter_fails_before_any_run(kwargs, expected, tmp_path):
    plan = notebook.plan_runs("baselines", "table1", "smoke")
    with pytest.raises(InputError, match=re.escape(expected)):
        notebook.train(plan, results_dir=tmp_path, **{"run_index": -1, **kwargs})
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_notebook_run_by_papermill_with_scale_huge_shows_the_fix_first(tmp_path):
    import papermill

    source = ROOT / "notebooks" / "baselines.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), parameters={"SCALE": "huge"},
                                   kernel_name="python3", progress_bar=False, cwd=str(source.parent))
    assert e.value.ename == "InputError"
    first = str(e.value).split('Exception encountered at "In [', 1)[1].splitlines()[1]
    assert first.startswith("InputError: notebook parameter SCALE = 'huge'") and "Fix: set SCALE to one of" in first
