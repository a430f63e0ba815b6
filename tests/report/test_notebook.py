"""The notebooks' shared body without a kernel or training: the plan's run lines, no training for
RUN_INDEX -1, and the report of an empty results store (every run missing, never invented)."""

from __future__ import annotations

from ssodlib.report import notebook


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
    assert "table1_vs_published | row | column | folds | reproduced | std | published | source | delta" in out
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
