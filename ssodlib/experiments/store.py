"""The results store: one record per run, keyed by its resolved configuration.

Layout under the store's root::

    runs/<key>/        the run folder (config.json, metrics.jsonl, checkpoint.pt, final.json)
    records/<key>.json the record, written atomically when the run has finished

A record exists only for a finished run, so a repeated or requeued job skips what is done, and a run
folder without a record resumes from its checkpoint: a crash loses at most one checkpoint interval.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ssodlib.io import InputError, path_error, read_json, repository_folder, write_json

RESULTS_ENV = "SSOD_RESULTS_DIR"
SHIPPED_MARK = "SHIPPED.md"  # in a results folder that ships with the repository (ssodlib.experiments.shipped)


def default_results_dir() -> Path:
    """``$SSOD_RESULTS_DIR``, else ``results/`` in the repository."""
    return repository_folder("results", env=RESULTS_ENV)


class ResultsStore:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_results_dir()

    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key

    def record_path(self, key: str) -> Path:
        return self.root / "records" / f"{key}.json"

    def is_complete(self, key: str) -> bool:
        return self.record_path(key).is_file()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.record_path(key)
        if not path.is_file():
            return None
        record = read_json(path, what="result record")
        if record.get("key") != key:
            raise InputError(f"{path}: holds the record of {record.get('key')!r}. Fix: delete the file; the run "
                             "is then redone.")
        return record

    @property
    def shipped(self) -> bool:
        """Whether this is a folder of the repository's measured records (``ssodlib.experiments.shipped``)."""
        return (self.root / SHIPPED_MARK).is_file()

    def source(self, key: str) -> str | None:
        """``"shipped"``, ``"local"``, or None (not finished)."""
        if not self.is_complete(key):
            return None
        return "shipped" if self.shipped else "local"

    def put(self, key: str, record: dict[str, Any]) -> Path:
        return write_json(self.record_path(key), {**record, "key": key}, indent=2)

    def check_writable(self) -> None:
        """Make ``runs/`` and ``records/`` and write a file in each, so that an unwritable results folder
        fails before any training with an :class:`InputError` naming it, not after the first run."""
        for folder in (self.root / "runs", self.root / "records"):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=folder).close()
            except OSError as e:
                raise path_error(e, folder) from e

    def keys(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "records").glob("*.json"))
