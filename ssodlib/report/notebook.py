"""The shared body of the paper notebooks: plan the runs, train them, render and show the report.

Every notebook is ``notebooks/<paper>.ipynb`` for a folder ``papers/<paper>/`` (its metadata
``ssodlib.paper`` names the same paper) and follows one template:

1. a markdown title cell: the paper's title, its arXiv link and what each table and figure shows;
2. one imports cell, import statements only (``from ssodlib.report import notebook``);
3. the cell tagged ``parameters``: UPPER_CASE literals, each with a comment of its allowed values;
4. then code cells that only call functions of this module, or assign their results to a name::

       plan = notebook.plan_runs("labelmatch", TABLE, SCALE, folds=FOLDS, columns=COLUMNS, seeds=SEEDS,
                                 overrides=OVERRIDES)
       records = notebook.train(plan, run_index=RUN_INDEX, results_dir=RESULTS_DIR, ...)
       report = notebook.render_report(plan, results_dir=RESULTS_DIR, shipped=SHIPPED, enabled=REPORT)
       notebook.show_tables(report)
       notebook.show_figures(report)
       shipped = notebook.show_shipped("labelmatch", "table1", "mini")   # the shipped numbers, checked

   A cell whose leading comment lines include ``# paper-specific`` (``PAPER_SPECIFIC``) is exempt:
   it holds what one paper needs beyond the shared body. Markdown cells may go anywhere.

Cells whose first line is ``# NBVAL_CHECK_OUTPUT`` keep their outputs as the reference of the
nbval regression (``tests/notebooks``): the run lines that ``plan_runs`` prints and the table
headers and first-column rows that ``render_report`` prints. ``tests/notebooks/test_notebooks.py``
checks the template.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from ssodlib.config import PRESETS
from ssodlib.experiments import run_plan
from ssodlib.experiments.plan import Item, RunSpec, load_declarations, plan_items
from ssodlib.experiments.plan import plan as ordered_runs  # `plan` names the notebook's Plan here
from ssodlib.experiments.shipped import shipped_dir
from ssodlib.io import InputError
from ssodlib.report.experiments import Report, render

__all__ = ["PAPER_SPECIFIC", "Plan", "plan_runs", "render_report", "report_lines", "show_figures", "show_shipped",
           "show_tables", "train"]

PAPER_SPECIFIC = "# paper-specific"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a notebook trains (``runs``, in order, each once) and renders (``items``, by item id)."""

    paper: str
    scale: str
    items: dict[str, list[RunSpec]]
    runs: list[RunSpec]


def plan_runs(paper: str, table: str, scale: str, *, folds: list[int] | None = None,
              columns: list[str] | None = None, overrides: dict[str, Any] | None = None,
              seeds: list[int] | None = None) -> Plan:
    """The runs of ``table`` (an item id or ``"all"``) of ``paper`` at ``scale``; prints one line per
    run: its index (``RUN_INDEX`` of an array task), table, row, column, fold and key. The notebook's
    parameters are checked first, so a wrong one fails here with its allowed values."""
    _check_plan_parameters(paper, table, scale, folds=folds, columns=columns, overrides=overrides)
    if seeds is not None and not (isinstance(seeds, (list, tuple)) and seeds and all(type(s) is int and s >= 0
                                                                                      for s in seeds)):
        raise InputError(f"notebook parameter SEEDS = {seeds!r} is not a list of seeds. Fix: set SEEDS to None (the "
                         "declared seeds) or a list such as [0].")
    items = plan_items(paper, table, scale, folds=folds, columns=columns, overrides=overrides, seeds=seeds)
    runs = ordered_runs(paper, table, scale, folds=folds, columns=columns, overrides=overrides, seeds=seeds)
    for index, spec in enumerate(runs):
        print(index, spec.describe())
    return Plan(paper=paper, scale=scale, items=items, runs=runs)


def train(plan: Plan, *, run_index: int | None = None, results_dir: str | os.PathLike | None = None,
          data_root: str | os.PathLike | None = None, device: str | None = None, processes: int = 1,
          progress: bool = True, jobs: int | None = None) -> list[dict[str, Any]]:
    """Train the missing runs of ``plan`` (all, only ``run_index``, or none for ``-1``) into the
    results store, ``jobs`` of them side by side; finished runs are skipped and started ones resume.
    ``jobs=None`` reads ``$SSOD_JOBS`` (default 1). Returns their records."""
    _check_train_parameters(run_index=run_index, device=device, processes=processes)
    jobs = _jobs(jobs)
    records = run_plan(plan.runs, run_index=run_index, results_dir=results_dir,
                       data_root=None if data_root is None else str(data_root), device=device, processes=processes,
                       progress=progress, jobs=jobs)
    print(f"{len(records)} run(s) finished or found finished")
    return records


def _jobs(jobs: Any) -> int:
    """JOBS, or ``$SSOD_JOBS`` when it is None: a positive number of runs side by side."""
    if jobs is None:
        text = os.environ.get("SSOD_JOBS", "1")
        if not text.isdigit() or int(text) < 1:
            raise InputError(f"SSOD_JOBS={text!r} is not a positive number of runs. Fix: unset it, or e.g. 2.")
        return int(text)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InputError(f"notebook parameter JOBS = {jobs!r} is not a positive number of runs. Fix: set JOBS to "
                         "None, 1 or more.")
    return jobs


def _check_plan_parameters(paper: str, table: Any, scale: Any, *, folds: Any, columns: Any, overrides: Any) -> None:
    """SCALE, TABLE, FOLDS, COLUMNS and OVERRIDES as the parameters cell documents them."""
    _check_choice("SCALE", scale, sorted(PRESETS))
    decl = load_declarations(paper)
    _check_choice("TABLE", table, ["all", *(i.id for i in decl.items)], where=decl.path)
    if overrides is not None and not isinstance(overrides, dict):
        raise InputError(f"notebook parameter OVERRIDES = {overrides!r} is not a dict. Fix: set OVERRIDES to None "
                         "or a dict of TrainConfig fields, e.g. {\"iterations\": 100}.")
    _check_folds(folds, _benchmark_folds(scale, overrides or {}))
    items = [i for i in decl.items if scale in i.scales] if table == "all" else [decl.item(table)]
    _check_columns(columns, items, where=decl.path)


def _check_choice(name: str, value: Any, allowed: list[str], *, where: Any = None) -> None:
    if not isinstance(value, str) or value not in allowed:
        source = f" (declared in {where})" if where else ""
        raise InputError(f"notebook parameter {name} = {value!r} is not one of {allowed}{source}. "
                         f"Fix: set {name} to one of " + ", ".join(f'"{a}"' for a in allowed) + ".")


def _benchmark_folds(scale: str, overrides: dict[str, Any]) -> tuple[int, ...] | None:
    """The folds the embedded benchmark of ``scale`` has, or None where the data is COCO / VOC / files
    the user made (their folds are whatever ``ssod data split-coco`` wrote)."""
    dataset = overrides.get("dataset", PRESETS[scale].get("dataset", "synth"))
    if dataset != "synth" or overrides.get("labeled_ann"):
        return None
    from ssodlib.data.synth import synth_config

    return synth_config(scale).split_folds


def _check_folds(folds: Any, allowed: tuple[int, ...] | None) -> None:
    if folds is None:
        return
    among = f" among {list(allowed)}" if allowed else " (1 or more)"
    fix = f"Fix: set FOLDS to None (the declared folds) or a list of folds{among}, e.g. [1]."
    if not (isinstance(folds, (list, tuple)) and folds and all(type(f) is int for f in folds)):
        raise InputError(f"notebook parameter FOLDS = {folds!r} is not a list of folds. {fix}")
    wrong = [f for f in folds if f < 1 or (allowed is not None and f not in allowed)]
    if wrong:
        raise InputError(f"notebook parameter FOLDS = {folds!r}: the data has no fold(s) {wrong}. {fix}")


def _check_columns(columns: Any, items: list[Item], *, where: Any) -> None:
    if columns is None:
        return
    if not (isinstance(columns, (list, tuple)) and columns and all(isinstance(c, str) for c in columns)):
        raise InputError(f"notebook parameter COLUMNS = {columns!r} is not a list of column names. Fix: set "
                         "COLUMNS to None (the declared columns) or a list such as [\"5%\"].")
    for item in items:
        names = [c["name"] for c in item.columns]
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise InputError(f"notebook parameter COLUMNS = {columns!r}: {item.id} of {where} has no column(s) "
                             f"{unknown}. Fix: set COLUMNS to None or a list of its columns {names}.")


def _check_train_parameters(*, run_index: Any, device: Any, processes: Any) -> None:
    """RUN_INDEX, DEVICE and PROCESSES as the parameters cell documents them (RUN_INDEX's range is the
    runner's check, which knows the plan's length)."""
    if run_index is not None and type(run_index) is not int:
        raise InputError(f"notebook parameter RUN_INDEX = {run_index!r} is not an int. Fix: set RUN_INDEX to "
                         "None (every missing run), a run's index from the plan's lines, or -1 (none).")
    if device is not None:
        _check_choice("DEVICE", device, list(DEVICES))
    if type(processes) is not int or processes < 1:
        raise InputError(f"notebook parameter PROCESSES = {processes!r} is not a positive int. Fix: set "
                         "PROCESSES to 1, or to the number of GPUs per run.")


def render_report(plan: Plan, *, results_dir: str | os.PathLike | None = None,
                  out_dir: str | os.PathLike | None = None, shipped: bool = True,
                  enabled: bool = True) -> Report | None:
    """The tables and figures of ``plan`` from what the results store holds, over the records shipped
    in ``papers/<paper>/results/<scale>`` when ``shipped`` (each cell says whose runs it shows; None
    when not ``enabled``); prints ``report_lines``, the structure the notebook regression checks."""
    if not enabled:
        return None
    if type(shipped) is not bool:
        raise InputError(f"notebook parameter SHIPPED = {shipped!r} is not True or False. Fix: True (the shipped "
                         "records under your runs) or False (your runs only).")
    report = render(plan.items, paper=plan.paper, scale=plan.scale, results_dir=results_dir, out_dir=out_dir,
                    shipped=shipped)
    print("\n".join(report_lines(report)))
    return report


def show_shipped(paper: str, table: str, scale: str = "mini") -> Report | None:
    """The tables of ``table`` from the records shipped in ``papers/<paper>/results/<scale>`` alone,
    printed with their numbers: the notebook regression compares them, so a change of the report code
    that alters a shipped table fails the tests. Writes nothing; None when nothing is shipped."""
    folder = shipped_dir(paper, scale)
    if not (folder / "records").is_dir():
        print(f"no shipped {scale} records in {folder}")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        report = render(plan_items(paper, table, scale), paper=paper, scale=scale, results_dir=folder, out_dir=tmp,
                        draw=False)
    for name, frame in report.tables.items():
        if not name.endswith(("_runs", "_pseudo_labels")):
            print(f"== {name} ({scale}, shipped)\n{frame.to_string(index=False)}\n")
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
