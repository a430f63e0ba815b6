"""``ssod slurm submit`` against a stand-in sbatch that records its arguments and environment: the
array and report commands, and notebook parameters passed as environment variables, not shell text."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ssodlib.cli import main
from ssodlib.experiments import plan
from ssodlib.experiments.slurm import SubmitError, submit
from ssodlib.io import InputError

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "baselines.ipynb"

FAKE_SBATCH = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["FAKE_SBATCH_LOG"]
calls = json.load(open(log)) if os.path.exists(log) else []
env = {k: v for k, v in os.environ.items() if k.startswith("SSOD_JOB_")}
calls.append({"argv": sys.argv[1:], "env": env})
json.dump(calls, open(log, "w"))
if os.environ.get("FAKE_SBATCH_FAIL"):
    sys.exit("sbatch: error: invalid partition specified: nope")
print(f"{100 + len(calls)};cluster")
"""


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    exe = tmp_path / "sbatch"
    exe.write_text(FAKE_SBATCH)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.json"
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(log))
    return exe


def _calls(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "calls.json").read_text())


def test_array_then_report_with_parameters_in_the_environment(fake_sbatch, tmp_path):
    overrides = {"iterations": 40, "lr_steps": [30, 35]}
    job = submit(notebook=NOTEBOOK, paper="baselines", table="table1", scale="smoke", results_dir=tmp_path / "res",
                 overrides=overrides, folds=[1], max_concurrent=3, partition="gpu", time_limit="1:00:00",
                 gpus_per_task=1, processes=2, signal_seconds=300, sbatch=str(fake_sbatch),
                 extra_sbatch_args=["--qos=low"])
    runs = len(plan("baselines", "table1", "smoke", folds=[1], overrides=overrides))
    assert (job.array_job_id, job.report_job_id, job.num_tasks) == ("101", "102", runs)
    array, report = _calls(tmp_path)
    results = (tmp_path / "res").resolve()
    assert array["argv"][:2] == ["--parsable", f"--array=0-{runs - 1}%3"]
    for arg in ("--signal=B:USR1@300", "--requeue", "--partition=gpu", "--time=1:00:00", "--ntasks-per-node=2",
                "--gpus-per-task=1", "--qos=low", str(results / "slurm" / "%A_%a.out")):
        assert arg in array["argv"]
    assert array["argv"][-1] == str(REPO / "slurm" / "task.sbatch")
    assert "--dependency=afterok:101" in report["argv"] and report["argv"][-1] == str(REPO / "slurm" / "report.sbatch")
    assert not any(a.startswith("--gpus") for a in report["argv"])
    env = array["env"]
    assert env == report["env"]
    assert env["SSOD_JOB_RESULTS_DIR"] == str(results) and env["SSOD_JOB_NOTEBOOK"] == str(NOTEBOOK)
    assert env["SSOD_JOB_OUTPUT_STEM"] == "baselines-table1-smoke"
    assert json.loads(env["SSOD_JOB_PARAMS_YAML"]) == {"DATA_ROOT": None, "FOLDS": [1], "OVERRIDES": overrides,
                                                       "PROCESSES": 2}
    assert (results / "slurm").is_dir()


def test_cli_submits_chosen_runs_without_report(fake_sbatch, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_sbatch.parent}{os.pathsep}{os.environ['PATH']}")
    assert main(["slurm", "submit", str(NOTEBOOK), "--paper", "baselines", "--table", "table1", "--scale", "smoke",
                 "--results-dir", str(tmp_path / "res"), "--runs", "1", "--no-report", "--set", "iterations=12",
                 "--sbatch-arg=--account=lab"]) == 0
    (array,) = _calls(tmp_path)
    assert "--array=1%4" in array["argv"] and "--account=lab" in array["argv"] and "--ntasks=1" in array["argv"]
    assert json.loads(array["env"]["SSOD_JOB_PARAMS_YAML"])["OVERRIDES"] == {"iterations": 12}
    assert "report job -" in capsys.readouterr().out


def test_errors_name_the_problem(fake_sbatch, tmp_path, monkeypatch):
    args = dict(paper="baselines", table="table1", scale="smoke", results_dir=tmp_path / "res", sbatch=str(fake_sbatch))
    with pytest.raises(InputError, match="notebook not found"):
        submit(notebook=tmp_path / "missing.ipynb", **args)
    with pytest.raises(InputError, match="runs the experiments of paper 'baselines', not 'labelmatch'.*--paper baselines"):
        submit(notebook=NOTEBOOK, **{**args, "paper": "labelmatch"})
    with pytest.raises(InputError, match=r"run indices \[7\]"):
        submit(notebook=NOTEBOOK, run_indices=[7], **args)
    with pytest.raises(InputError, match="not found on PATH.*make slurm-deps"):
        submit(notebook=NOTEBOOK, **{**args, "sbatch": "no-such-sbatch"})
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "1")
    with pytest.raises(SubmitError, match="invalid partition"):
        submit(notebook=NOTEBOOK, partition="nope", **args)
