"""Refresh the reference outputs that nbval checks: execute each notebook at its default (smoke)
parameters in a scratch results folder and store the outputs of the cells marked
``# NBVAL_CHECK_OUTPUT`` in the source notebook; every other output is cleared.

    python tests/notebooks/refresh_outputs.py [notebooks/baselines.ipynb ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[2]
CHECK = "# NBVAL_CHECK_OUTPUT"


def refresh(notebook: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(SSOD_RESULTS_DIR=str(Path(tmp) / "results"), SSOD_DATA_ROOT=str(Path(tmp) / "data"),
                          TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
        executed = Path(tmp) / notebook.name
        papermill.execute_notebook(str(notebook), str(executed), kernel_name="python3", progress_bar=False,
                                   cwd=str(notebook.parent))
        ran = nbformat.read(executed, as_version=4)
    source = nbformat.read(notebook, as_version=4)
    for cell, done in zip(source.cells, (c for c in ran.cells if "injected-parameters" not in c.metadata.get("tags", []))):
        if cell.cell_type != "code":
            continue
        checked = cell.source.startswith(CHECK)
        cell.outputs = done.outputs if checked else []
        cell.execution_count = done.execution_count if checked else None  # nbval skips unrun reference cells
    nbformat.write(source, notebook)
    print(f"refreshed {notebook}")


if __name__ == "__main__":
    for path in sys.argv[1:] or sorted((ROOT / "notebooks").glob("*.ipynb")):
        refresh(Path(path))
