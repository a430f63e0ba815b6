"""Every notebook: its structure (one tagged parameters cell of UPPER_CASE literals with a comment
listing allowed values, kernel python3, no sys.path edits) and an nbval run at smoke scale whose
checked outputs are the declared runs and the tables' headers and rows."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SANITIZE = Path(__file__).with_name("sanitize.cfg")


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    paper = nb.metadata["ssodlib"]["paper"]  # what `ssod slurm submit` checks --paper against
    assert (ROOT / "papers" / paper / "experiments.yaml").is_file()
    assert f'"{paper}"' in "\n".join(c.source for c in nb.cells)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for line in tagged[0].source.splitlines():
        assign, _, comment = line.partition("#")
        target = ast.parse(assign).body[0]
        assert isinstance(target, ast.Assign) and target.targets[0].id.isupper(), line
        ast.literal_eval(target.value)  # literals only
        assert comment.strip(), f"parameter without a comment of allowed values: {line}"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "sys.path" not in code
    assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") and c.outputs for c in nb.cells if c.cell_type == "code"), \
        "no checked output: run tests/notebooks/refresh_outputs.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_regression_at_smoke_scale(path, smoke_benchmark, tmp_path):
    env = {**os.environ, "SSOD_RESULTS_DIR": str(tmp_path / "results"), "TQDM_DISABLE": "1",
           "SSOD_DATA_ROOT": str(smoke_benchmark.root.parent), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--sanitize-with",
           str(SANITIZE), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout.splitlines()[-1]
    assert (tmp_path / "results" / "records").is_dir(), "the notebook wrote no result records"
