"""Submit a notebook's experiment runs to SLURM: one job-array task per run, then one report job.

The batch scripts live in ``slurm/`` at the repository root (``task.sbatch``, ``report.sbatch``).
Every notebook parameter reaches them as an ``SSOD_JOB_*`` environment variable of the ``sbatch``
process (sbatch exports its environment to the job), so no value is ever pasted into a shell command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ssodlib.io import REPOSITORY, InputError

SCRIPTS_DIR = REPOSITORY / "slurm"
TASK_SCRIPT = "task.sbatch"
REPORT_SCRIPT = "report.sbatch"


class SubmitError(InputError):
    """``sbatch`` refused a job (mostly a bad option: partition, time, account); the message carries
    its error output and the command."""


@dataclass(frozen=True)
class SubmitResult:
    array_job_id: str
    report_job_id: str | None  # None when submitted without the report
    num_tasks: int


def count_runs(*, paper: str, table: str, scale: str, folds: list[int] | None = None,
               columns: list[str] | None = None, overrides: dict[str, Any] | None = None,
               seeds: list[int] | None = None) -> int:
    """Number of runs of a table at a scale: array task i is run i of this plan."""
    from ssodlib.experiments import plan

    runs = plan(paper, table, scale, folds=folds, columns=columns, overrides=overrides, seeds=seeds)
    if not runs:
        raise InputError(f"paper {paper!r}, table {table!r}, scale {scale!r} has no runs. "
                         "Fix: check the table id with 'ssod experiments list'.")
    return len(runs)


def array_spec(*, num_runs: int, run_indices: Sequence[int] | None, max_concurrent: int) -> tuple[str, int]:
    """``--array`` value (every run, or only ``run_indices``, e.g. to redo some) and the task count."""
    if run_indices is None:
        return f"0-{num_runs - 1}%{max_concurrent}", num_runs
    chosen = sorted(set(run_indices))
    bad = [i for i in chosen if not 0 <= i < num_runs]
    if bad or not chosen:
        raise InputError(f"run indices {bad or 'none'} are not in this plan's 0..{num_runs - 1}. "
                         "Fix: list the runs with 'ssod experiments list'.")
    return ",".join(map(str, chosen)) + f"%{max_concurrent}", len(chosen)


def output_stem(*, notebook: Path, table: str, scale: str) -> str:
    """``<notebook stem>-<table>-<scale>``: the executed notebooks' names under RESULTS_DIR/notebooks."""
    return f"{notebook.stem}-{table}-{scale}"


def job_environment(*, notebook: Path, table: str, scale: str, results_dir: Path, data_root: str | None,
                    device: str, folds: list[int] | None, columns: list[str] | None,
                    overrides: dict[str, Any] | None, processes: int, python: str, kernel: str,
                    seeds: list[int] | None = None) -> dict[str, str]:
    """The SSOD_JOB_* variables both batch scripts read."""
    # JSON is YAML: papermill's -y keeps lists, dicts and null typed
    params: dict[str, Any] = {"DATA_ROOT": data_root, "FOLDS": folds, "OVERRIDES": overrides or {},
                              "PROCESSES": processes}
    if columns is not None:  # only notebooks that declare COLUMNS (SEEDS) get it
        params["COLUMNS"] = columns
    if seeds is not None:
        params["SEEDS"] = seeds
    return {
        "SSOD_JOB_PYTHON": python,
        "SSOD_JOB_NOTEBOOK": str(notebook),
        "SSOD_JOB_OUTPUT_STEM": output_stem(notebook=notebook, table=table, scale=scale),
        "SSOD_JOB_TABLE": table,
        "SSOD_JOB_SCALE": scale,
        "SSOD_JOB_RESULTS_DIR": str(results_dir),
        "SSOD_JOB_DEVICE": device,
        "SSOD_JOB_PARAMS_YAML": json.dumps(params),
        "SSOD_JOB_KERNEL": kernel,
    }


def resource_args(*, partition: str | None, time_limit: str | None, gpus_per_task: int,
                  processes: int) -> list[str]:
    """Options shared by the array tasks: where they run and what each one holds."""
    args = [f"--partition={partition}"] if partition else []
    if time_limit:
        args.append(f"--time={time_limit}")
    # processes > 1: the notebook's runner starts its ranks with srun inside this allocation
    args.append(f"--ntasks-per-node={processes}" if processes > 1 else "--ntasks=1")
    if gpus_per_task > 0:
        args.append(f"--gpus-per-task={gpus_per_task}")
    return args


def array_command(*, sbatch: str, array: str, job_name: str, log_dir: Path, signal_seconds: int,
                  resources: list[str], extra: Sequence[str]) -> list[str]:
    return [sbatch, "--parsable", f"--array={array}", f"--job-name={job_name}",
            "--output", str(log_dir / "%A_%a.out"), "--open-mode=append", "--requeue",
            f"--signal=B:USR1@{signal_seconds}", "--export=ALL", *resources, *extra,
            str(SCRIPTS_DIR / TASK_SCRIPT)]


def report_command(*, sbatch: str, array_job_id: str, job_name: str, log_dir: Path, partition: str | None,
                   extra: Sequence[str]) -> list[str]:
    where = [f"--partition={partition}"] if partition else []
    # a failed run cancels the report instead of leaving it pending forever
    return [sbatch, "--parsable", f"--dependency=afterok:{array_job_id}", "--kill-on-invalid-dep=yes",
            f"--job-name={job_name}-report", "--output", str(log_dir / "%j-report.out"), "--open-mode=append",
            "--export=ALL", *where, *extra, str(SCRIPTS_DIR / REPORT_SCRIPT)]


def run_sbatch(command: list[str], *, env: dict[str, str]) -> str:
    """Run sbatch --parsable; returns the job id."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SubmitError(f"sbatch failed (exit {done.returncode}): {done.stderr.strip()}\ncommand: {command}")
    # --parsable prints "JOBID" or "JOBID;CLUSTER"
    return done.stdout.strip().split(";")[0]


def check_notebook_paper(notebook: Path, paper: str) -> None:
    """The array has one task per run of ``paper``'s plan, so the notebook must plan the same paper
    (its metadata ``ssodlib.paper``)."""
    import nbformat

    declared = nbformat.read(notebook, as_version=4).metadata.get("ssodlib", {}).get("paper")
    if declared is not None and declared != paper:
        raise InputError(f"{notebook}: runs the experiments of paper {declared!r}, not {paper!r}. "
                         f"Fix: pass --paper {declared}.")


def _check_inputs(*, notebook: Path, sbatch: str, python: str, max_concurrent: int, processes: int,
                  signal_seconds: int) -> None:
    if not notebook.is_file():
        raise InputError(f"{notebook}: notebook not found. Fix: pass the path of a notebook, "
                         "e.g. notebooks/baselines.ipynb.")
    for script in (TASK_SCRIPT, REPORT_SCRIPT):
        if not (SCRIPTS_DIR / script).is_file():
            raise InputError(f"{SCRIPTS_DIR / script}: batch script not found. Fix: submit from a checkout of "
                             "the repository (pip install -e .), which holds slurm/.")
    if shutil.which(sbatch) is None:
        raise InputError(f"{sbatch}: not found on PATH. Fix: submit from a SLURM login node "
                         "(for a local test cluster: make slurm-deps).")
    if python == sys.executable and importlib.util.find_spec("papermill") is None:
        raise InputError(f"{python}: papermill is not installed. Fix: pip install -e '.[notebooks]'.")
    if max_concurrent < 1 or processes < 1 or signal_seconds < 1:
        raise InputError("max_concurrent, processes and signal_seconds must be at least 1. Fix: pass positive values.")


def submit(*, notebook: str | os.PathLike, paper: str, table: str, scale: str, results_dir: str | os.PathLike,
           data_root: str | os.PathLike | None = None, device: str = "auto", folds: list[int] | None = None,
           columns: list[str] | None = None, overrides: dict[str, Any] | None = None, seeds: list[int] | None = None,
           max_concurrent: int = 4,
           partition: str | None = None, time_limit: str | None = None, gpus_per_task: int = 0, processes: int = 1,
           signal_seconds: int = 120, sbatch: str = "sbatch", extra_sbatch_args: Sequence[str] = (),
           run_indices: Sequence[int] | None = None, report: bool = True, python: str | None = None,
           kernel: str = "python3") -> SubmitResult:
    """Submit every run of ``table`` at ``scale`` (or only ``run_indices``) as a job array, at most
    ``max_concurrent`` at a time, then the report job, which starts once every task has succeeded.

    Task i runs the notebook with ``RUN_INDEX=i`` into ``RESULTS_DIR/notebooks/<stem>-<table>-<scale>-run<i>.ipynb``;
    logs go to ``RESULTS_DIR/slurm/<arrayjob>_<i>.out``. ``signal_seconds`` before the time limit a task
    checkpoints and requeues itself (see ``slurm/task.sbatch``).
    """
    notebook = Path(notebook).resolve()
    python = python or sys.executable
    _check_inputs(notebook=notebook, sbatch=sbatch, python=python, max_concurrent=max_concurrent,
                  processes=processes, signal_seconds=signal_seconds)
    check_notebook_paper(notebook, paper)
    num_runs = count_runs(paper=paper, table=table, scale=scale, folds=folds, columns=columns, overrides=overrides,
                          seeds=seeds)
    array, num_tasks = array_spec(num_runs=num_runs, run_indices=run_indices, max_concurrent=max_concurrent)
    results = Path(results_dir).resolve()
    log_dir = results / "slurm"
    log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the folder of --output
    env = os.environ | job_environment(
        notebook=notebook, table=table, scale=scale, results_dir=results,
        data_root=str(Path(data_root).resolve()) if data_root is not None else None, device=device, folds=folds,
        columns=columns, overrides=overrides, processes=processes, python=python, kernel=kernel, seeds=seeds)
    job_name = f"ssod-{paper}-{table}-{scale}"
    resources = resource_args(partition=partition, time_limit=time_limit, gpus_per_task=gpus_per_task,
                              processes=processes)
    array_id = run_sbatch(array_command(sbatch=sbatch, array=array, job_name=job_name, log_dir=log_dir,
                                        signal_seconds=signal_seconds, resources=resources, extra=extra_sbatch_args),
                          env=env)
    report_id = run_sbatch(report_command(sbatch=sbatch, array_job_id=array_id, job_name=job_name, log_dir=log_dir,
                                          partition=partition, extra=extra_sbatch_args), env=env) if report else None
    return SubmitResult(array_job_id=array_id, report_job_id=report_id, num_tasks=num_tasks)


__all__ = ["SubmitError", "SubmitResult", "array_spec", "count_runs", "submit"]
