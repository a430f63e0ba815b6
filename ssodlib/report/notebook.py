"""The shared body of the paper notebooks: plan the runs, train them, render and show the report.

Every notebook is ``notebooks/<paper>.ipynb`` for a folder ``papers/<paper>/`` (its metadata
``ssodlib.paper`` names the same paper) and follows one template:

1. a markdown title cell: the paper's title, its arXiv link and what each table and figure shows;
2. one imports cell, import statements only (``from ssodlib.report import notebook``);
3. the cell tagged ``parameters``: UPPER_CASE literals, each with a comment of its allowed values;
4. then code cells that only call functions of this module, or assign their results to a name::

       plan = notebook.plan_runs("labelmatch", TABLE, SCALE, folds=FOLDS, columns=COLUMNS, overrides=OVERRIDES)
       records = notebook.train(plan, run_index=RUN_INDEX, results_dir=RESULTS_DIR, ...)
       report = notebook.render_report(plan, results_dir=RESULTS_DIR, enabled=REPORT)
       notebook.show_tables(report)
       notebook.show_figures(report)

   A cell whose leading comment lines include ``# paper-specific`` (``PAPER_SPECIFIC``) is exempt:
   it holds what one paper needs beyond the shared body. Markdown cells may go anywhere.

Cells whose first line is ``# NBVAL_CHECK_OUTPUT`` keep their outputs as the reference of the
nbval regression (``tests/notebooks``): the run lines that ``plan_runs`` prints and the table
headers and first-column rows that ``render_report`` prints. ``tests/notebooks/test_notebooks.py``
checks the template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ssodlib.experiments import run_plan
from ssodlib.experiments.plan import RunSpec, plan_items
from ssodlib.experiments.plan import plan as ordered_runs  # `plan` names the notebook's Plan here
from ssodlib.report.experiments import Report, render

__all__ = ["PAPER_SPECIFIC", "Plan", "plan_runs", "render_report", "report_lines", "show_figures", "show_tables",
           "train"]

PAPER_SPECIFIC = "# paper-specific"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a notebook trains (``runs``, in order, each once) and renders (``items``, by item id)."""

    paper: str
    scale: str
    items: dict[str, list[RunSpec]]
    runs: list[RunSpec]


def plan_runs(paper: str, table: str, scale: str, *, folds: list[int] | None = None,
              columns: list[str] | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    """The runs of ``table`` (an item id or ``"all"``) of ``paper`` at ``scale``; prints one line per
    run: its index (``RUN_INDEX`` of an array task), table, row, column, fold and key."""
    items = plan_items(paper, table, scale, folds=folds, columns=columns, overrides=overrides)
    runs = ordered_runs(paper, table, scale, folds=folds, columns=columns, overrides=overrides)
    for index, spec in enumerate(runs):
        print(index, spec.describe())
    return Plan(paper=paper, scale=scale, items=items, runs=runs)


def train(plan: Plan, *, run_index: int | None = None, results_dir: str | os.PathLike | None = None,
          data_root: str | os.PathLike | None = None, device: str | None = None, processes: int = 1,
          progress: bool = True) -> list[dict[str, Any]]:
    """Train the missing runs of ``plan`` (all, only ``run_index``, or none for ``-1``) into the
    results store; finished runs are skipped and started ones resume. Returns their records."""
    records = run_plan(plan.runs, run_index=run_index, results_dir=results_dir,
                       data_root=None if data_root is None else str(data_root), device=device, processes=processes,
                       progress=progress)
    print(f"{len(records)} run(s) finished or found finished")
    return records


def render_report(plan: Plan, *, results_dir: str | os.PathLike | None = None,
                  out_dir: str | os.PathLike | None = None, enabled: bool = True) -> Report | None:
    """The tables and figures of ``plan`` from what the results store holds (None when not
    ``enabled``); prints ``report_lines``, the structure the notebook regression checks."""
    if not enabled:
        return None
    report = render(plan.items, paper=plan.paper, scale=plan.scale, results_dir=results_dir, out_dir=out_dir)
    print("\n".join(report_lines(report)))
    return report


def report_lines(report: Report) -> list[str]:
    """Each table's name and columns, then its distinct first-column values (the rows), the figure
    names and the number of missing runs; values are left out since they vary with the hardware."""
    lines = []
    for name, frame in report.tables.items():
        if name.endswith("_runs"):  # one line per run and fold: the plan already lists them
            continue
        lines.append(f"{name} | " + " | ".join(map(str, frame.columns)))
        lines += [f"    {row}" for row in frame[frame.columns[0]].drop_duplicates()]
    lines.append("figures: " + ", ".join(sorted(report.figures)))
    lines.append(f"missing runs: {len(report.missing)}")
    return lines


def show_tables(report: Report | None) -> None:
    """Display every table of ``report`` but the per-run ones, each under its name."""
    if report is None:
        return
    from IPython.display import display  # only inside a notebook kernel

    for name, frame in report.tables.items():
        if not name.endswith("_runs"):
            print(name)
            display(frame)


def show_figures(report: Report | None) -> None:
    """Display every figure of ``report`` under its name, then where tables and figures were saved."""
    if report is None:
        return
    from IPython.display import Image, display  # only inside a notebook kernel

    for name, path in report.figures.items():
        print(name)
        display(Image(filename=str(path)))
    print("tables and figures saved in", report.out_dir)
