"""Measured results that ship with the repository, and the view a report reads them through.

``papers/<paper>/results/<scale>/`` is a results store without checkpoints (the layout of
:mod:`ssodlib.experiments.store`)::

    SHIPPED.md                       what the folder is and the command that wrote it
    records/<key>.json               the record: resolved config, key, commit, machine, wall time, final metrics
    runs/<key>/metrics.jsonl.gz      the run's metrics log, compressed

``ssod experiments export`` writes it from a results store; a report layers it under the local store
(:class:`LayeredStore`): a run re-run locally shows the local record, the others the shipped one, and
each table cell says which. Runs never write into a shipped folder (:func:`refuse_shipped`).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ssodlib.engine.run_folder import METRICS_NAME
from ssodlib.experiments.plan import RunSpec, papers_dir
from ssodlib.experiments.store import SHIPPED_MARK, ResultsStore
from ssodlib.io import InputError, atomic_write, write_text


def shipped_dir(paper: str, scale: str) -> Path:
    """``papers/<paper>/results/<scale>`` (``$SSOD_PAPERS_DIR`` replaces ``papers/``)."""
    return papers_dir() / paper / "results" / scale


def is_shipped(root: str | os.PathLike) -> bool:
    return ResultsStore(root).shipped


def refuse_shipped(root: str | os.PathLike) -> None:
    """A user's runs never overwrite shipped records: training into a shipped folder is an error."""
    if is_shipped(root):
        raise InputError(f"{root} holds the repository's shipped results ({SHIPPED_MARK}); runs do not write there. "
                         "Fix: drop --results-dir (the local store, ./results) or name another folder; a report "
                         "shows the shipped records beside yours.")


def export(specs: Iterable[RunSpec], *, store: ResultsStore, to: str | os.PathLike, command: str) -> dict[str, list[str]]:
    """Copy the finished runs of ``specs`` from ``store`` into the shipped folder ``to``: records and
    compressed metrics logs, no checkpoints. Returns the keys ``exported`` and ``missing`` (not finished)."""
    to = Path(to)
    if is_shipped(store.root) and store.root.resolve() == to.resolve():
        raise InputError(f"{to}: exporting a shipped folder onto itself. Fix: export from the store the runs "
                         "were trained in (--results-dir).")
    out = ResultsStore(to)
    exported, missing = [], []
    for key in dict.fromkeys(s.key for s in specs):
        record = store.get(key)
        if record is None:
            missing.append(key)
            continue
        metrics = store.run_dir(key) / METRICS_NAME
        if not metrics.is_file():
            raise InputError(f"{metrics}: the finished run {key} has no metrics log. Fix: rerun it (delete "
                             f"{store.record_path(key)}), or leave it out with --folds/--columns.")
        _write_gzip(out.run_dir(key) / f"{METRICS_NAME}.gz", metrics.read_bytes())
        if not record.get("finished"):  # records written before they were dated: when the record was
            stamp = datetime.fromtimestamp(store.record_path(key).stat().st_mtime, timezone.utc)
            record = {**record, "finished": stamp.isoformat(timespec="seconds")}
        out.put(key, _portable(record, store))
        exported.append(key)
    write_text(to / SHIPPED_MARK, _mark_text(command))
    return {"exported": exported, "missing": missing}


def _portable(record: dict[str, Any], store: ResultsStore) -> dict[str, Any]:
    """The record without this machine's paths: the snapshot a run started from as its run's key."""
    out = dict(record)
    started = record.get("started_from")
    if started:
        path = Path(started)
        out["started_from"] = path.parent.name + "/" + path.name if store.root / "runs" in path.parents else path.name
    out["run_dir"] = f"runs/{record['key']}"
    return out


def _write_gzip(path: Path, data: bytes) -> None:
    # mtime 0: the same log always compresses to the same bytes, so a re-export changes nothing
    atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(data, mtime=0)))


def _mark_text(command: str) -> str:
    return ("# Shipped results\n\nThe finished records of measured runs (no checkpoints), read by the reports and "
            "the notebooks. Written by\n\n```bash\n" + command + "\n```\n\nRuns never write here; your own runs go "
            "to the local results store and take precedence over these in a report.\n")


@dataclass
class LayeredStore:
    """A local store over a shipped one: ``get`` prefers the local record; ``source`` says whose it is."""

    local: ResultsStore
    shipped: ResultsStore | None = None

    @property
    def root(self) -> Path:
        return self.local.root

    def _owner(self, key: str) -> ResultsStore | None:
        if self.local.is_complete(key):
            return self.local
        if self.shipped is not None and self.shipped.is_complete(key):
            return self.shipped
        return None

    def get(self, key: str) -> dict[str, Any] | None:
        owner = self._owner(key)
        return owner.get(key) if owner is not None else None

    def is_complete(self, key: str) -> bool:
        return self._owner(key) is not None

    def run_dir(self, key: str) -> Path:
        owner = self._owner(key) or self.local
        return owner.run_dir(key)

    def source(self, key: str) -> str | None:
        """``"local"``, ``"shipped"`` or None (not finished anywhere)."""
        owner = self._owner(key)
        if owner is None:
            return None
        return "shipped" if owner is self.shipped else owner.source(key)


def report_store(*, results_dir: str | os.PathLike | None, paper: str, scale: str,
                 shipped: bool | str | os.PathLike = True) -> LayeredStore:
    """The store a report reads: ``results_dir`` (default the local store) over the paper's shipped
    results at ``scale`` (``shipped=True``), another shipped folder (a path), or none (False)."""
    local = ResultsStore(results_dir)
    if shipped is False or is_shipped(local.root):
        return LayeredStore(local)
    folder = shipped_dir(paper, scale) if shipped is True else Path(shipped)
    return LayeredStore(local, ResultsStore(folder) if folder.is_dir() else None)


__all__ = ["LayeredStore", "SHIPPED_MARK", "export", "is_shipped", "refuse_shipped", "report_store", "shipped_dir"]
