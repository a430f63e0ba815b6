"""Every notebook: its name (``notebooks/<paper>.ipynb`` for ``papers/<paper>/``), its structure (one
tagged parameters cell of UPPER_CASE literals with a comment listing allowed values, kernel python3,
no sys.path edits), the template of ``ssodlib.report.notebook`` (imports, parameters, then only calls
into that module unless a cell is marked paper-specific) and an nbval run at smoke scale whose
checked outputs are the declared runs and the tables' headers and rows."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import nbformat
import pytest

from ssodlib.report import notebook

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SANITIZE = Path(__file__).with_name("sanitize.cfg")


def _leading_comments(source: str) -> list[str]:
    return [line.strip() for line in takewhile(lambda line: line.startswith("#"), source.strip().splitlines())]


def _is_notebook_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "notebook"
            and node.func.attr in notebook.__all__)


def template_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Where the code cells leave the template of ``ssodlib.report.notebook``: an imports cell that
    binds ``notebook`` to that module, the parameters cell, then statements that are calls
    ``notebook.f(...)`` or ``name = notebook.f(...)``, except in cells marked paper-specific."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(code) < 3:
        return [f"{len(code)} code cells: expected imports, parameters and calls into notebook"]
    problems = []
    imports = ast.parse(code[0].source).body
    if not imports or not all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in imports):
        problems.append(f"first code cell is not imports only:\n{code[0].source}")
    binds = any(isinstance(s, ast.ImportFrom) and s.module == "ssodlib.report"
                and any(a.name == "notebook" and a.asname is None for a in s.names) for s in imports) or any(
        isinstance(s, ast.Import) and any(a.name == "ssodlib.report.notebook" and a.asname == "notebook"
                                          for a in s.names) for s in imports)
    if not binds:
        problems.append("the imports cell does not import ssodlib.report.notebook as notebook")
    if "parameters" not in code[1].metadata.get("tags", []):
        problems.append("second code cell is not the parameters cell")
    for cell in code[2:]:
        if notebook.PAPER_SPECIFIC in _leading_comments(cell.source):
            continue
        for stmt in ast.parse(cell.source).body:
            call = stmt.value if isinstance(stmt, ast.Expr) else None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                call = stmt.value
            if not _is_notebook_call(call):
                problems.append(f"not a call into notebook (mark the cell {notebook.PAPER_SPECIFIC!r} if it is "
                                f"one paper's own): {ast.unparse(stmt)}")
    return problems


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    paper = nb.metadata["ssodlib"]["paper"]  # what `ssod slurm submit` checks --paper against
    assert path.stem == paper, f"{path.name}: a notebook is named after its paper ({paper}.ipynb)"
    assert (ROOT / "papers" / paper).is_dir()
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
def test_notebook_follows_the_template(path):
    assert template_problems(nbformat.read(path, as_version=4)) == []


def _notebook(*sources: str, parameters_at: int = 1) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    cells[parameters_at].metadata["tags"] = ["parameters"]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"), *cells])


def test_template_check_flags_code_outside_the_module():
    imports, params = "from ssodlib.report import notebook", 'SCALE = "smoke"  # "smoke" | "mini"'
    body = 'plan = notebook.plan_runs("p", "all", SCALE)'
    assert template_problems(_notebook(imports, params, body, "notebook.show_tables(None)")) == []
    assert template_problems(_notebook(imports, params, body, f"{notebook.PAPER_SPECIFIC}\nx = [1, 2]")) == []
    assert template_problems(_notebook(imports, params, body,
                                       f"# NBVAL_CHECK_OUTPUT\n{notebook.PAPER_SPECIFIC}\nprint(plan)")) == []
    assert len(template_problems(_notebook(imports, params, body, "for r in plan.runs:\n    print(r)"))) == 1
    assert len(template_problems(_notebook(imports, params, body, "notebook.plan_items()"))) == 1  # not public
    assert len(template_problems(_notebook(imports, params, body, "x = 1\nprint(x)"))) == 2
    assert len(template_problems(_notebook(imports + "\nx = 1", params, body))) == 1
    assert len(template_problems(_notebook("import ssodlib", params, body))) == 1
    assert len(template_problems(_notebook(params, imports, body, parameters_at=0))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_regression_at_smoke_scale(path, smoke_benchmark, tmp_path):
    env = {**os.environ, "SSOD_RESULTS_DIR": str(tmp_path / "results"), "TQDM_DISABLE": "1", "SSOD_JOBS": "2",
           "SSOD_DATA_ROOT": str(smoke_benchmark.root.parent), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--sanitize-with",
           str(SANITIZE), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout.splitlines()[-1]
    assert (tmp_path / "results" / "records").is_dir(), "the notebook wrote no result records"
