"""The notebook's runs as a SLURM job array on a real local cluster (see conftest.py): every run lands
in the results store and the report renders them; a preempted task checkpoints, requeues itself and
resumes from its checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

from ssodlib.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ssodlib.engine.run_folder import METRICS_NAME
from ssodlib.experiments import ResultsStore, plan
from ssodlib.experiments.slurm import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "baselines.ipynb"
STEM = "baselines-table1-smoke"


def _outputs(path: Path) -> str:
    """The text every code cell of an executed notebook printed."""
    nb = nbformat.read(path, as_version=4)
    return "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def _log(results: Path, array_job: str, task: int) -> str:
    path = results / "slurm" / f"{array_job}_{task}.out"
    return path.read_text(errors="replace") if path.is_file() else f"(no log {path})"


def _metrics(run_dir: Path) -> list[str]:
    path = run_dir / METRICS_NAME
    return [line for line in path.read_text().splitlines() if line] if path.is_file() else []


def _wait(condition, *, timeout: float, what: str, context) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen after {timeout:.0f} s\n{context()}")
        time.sleep(1)


def test_array_runs_every_run_then_the_report(slurm_cluster, smoke_benchmark, tmp_path):
    results = tmp_path / "results"
    job = submit(notebook=NOTEBOOK, paper="baselines", table="table1", scale="smoke", results_dir=results,
                 data_root=smoke_benchmark.root.parent, device="cpu", max_concurrent=2)
    specs = plan("baselines", "table1", "smoke")
    assert job.num_tasks == len(specs) >= 2

    records = slurm_cluster.wait_done(job.array_job_id, job.report_job_id, timeout=600)
    logs = "\n".join(_log(results, job.array_job_id, i) for i in range(job.num_tasks))
    assert {r["JobState"] for r in records} == {"COMPLETED"}, f"{records}\n{logs}"

    store = ResultsStore(results)
    assert all(store.is_complete(spec.key) for spec in specs), logs
    for i in range(job.num_tasks):
        assert (results / "notebooks" / f"{STEM}-run{i}.ipynb").is_file()
    report = _outputs(results / "notebooks" / f"{STEM}.ipynb")
    assert "table1 |" in report and "missing runs: 0" in report, report
    for row in {spec.row for spec in specs}:
        assert row in report, report


def test_preempted_task_requeues_and_resumes_from_its_checkpoint(slurm_cluster, smoke_benchmark, tmp_path):
    results = tmp_path / "results"
    overrides = {"iterations": 80, "eval_every": 1000, "checkpoint_every": 1000}
    spec = plan("baselines", "table1", "smoke", overrides=overrides)[0]
    run_dir = ResultsStore(results).run_dir(spec.key)
    job = submit(notebook=NOTEBOOK, paper="baselines", table="table1", scale="smoke", results_dir=results,
                 data_root=smoke_benchmark.root.parent, device="cpu", overrides=overrides, run_indices=[0],
                 report=False)
    task = f"{job.array_job_id}_0"
    log = lambda: _log(results, job.array_job_id, 0)  # noqa: E731
    _wait(lambda: any(json.loads(line)["kind"] == "train" for line in _metrics(run_dir)), timeout=300,
          what="training progress in metrics.jsonl", context=log)

    slurm_cluster.run("scancel", "--batch", "--signal=USR1", task)
    _wait(lambda: int(slurm_cluster.jobs(task)[0].get("Restarts", 0)) >= 1, timeout=120, what="the requeue",
          context=log)
    # the requeued task waits out cred_expire (10 s) before it starts again: the stopped run is still on disk
    stopped_at = load_checkpoint(run_dir / CHECKPOINT_NAME)["iteration"]
    before = _metrics(run_dir)
    assert 0 < stopped_at < overrides["iterations"], log()

    record = slurm_cluster.wait_done(task, timeout=600)[0]
    assert record["JobState"] == "COMPLETED" and int(record["Restarts"]) >= 1, f"{record}\n{log()}"
    text = log()
    assert "SIGUSR1" in text and f"requeued {task}" in text and "restart 1" in text, text
    assert ResultsStore(results).is_complete(spec.key), text
    # resumed, not restarted: the records up to the checkpoint are the first attempt's, timings included
    after = _metrics(run_dir)
    assert after[:len(before)] == before and len(after) > len(before), text
    assert json.loads(after[-1])["iteration"] == overrides["iterations"]
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["iteration"] == overrides["iterations"]
