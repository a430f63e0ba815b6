"""What a run folder holds, by name, and how to read its metrics log without importing the trainer.

A run folder (``ssod train --out FOLDER`` or a results store's ``runs/<key>``) holds ``config.json``,
``metrics.jsonl`` (one JSON record per log line or evaluation), ``final.json``, ``resumes.jsonl`` (what
a resume changed, if anything) and the checkpoints
(written by ``ssodlib.engine.checkpoint``). Reading results needs no torch and no model.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

CHECKPOINT_NAME = "checkpoint.pt"  # the latest; checkpoint-{iteration}.pt are kept snapshots
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FINAL_NAME = "final.json"
RESUMES_NAME = "resumes.jsonl"  # one record per resume that changed a field of RESUMABLE_FIELDS


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl`` in order, or of ``metrics.jsonl.gz`` (a shipped run:
    ``ssodlib.experiments.shipped``); empty when there is neither."""
    path = Path(out_dir) / METRICS_NAME
    packed = path.with_name(METRICS_NAME + ".gz")
    if path.is_file():
        text = path.read_text()
    elif packed.is_file():
        text = gzip.decompress(packed.read_bytes()).decode()
    else:
        return []
    return [json.loads(line) for line in text.splitlines() if line]


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what a write killed midway left in ``out_dir``: the hidden ``.NAME.*.tmp`` files of
    ``ssodlib.io.atomic_write`` (the file it was replacing is intact). Returns what was removed."""
    stale = sorted(p for p in Path(out_dir).glob(".*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "FINAL_NAME", "METRICS_NAME", "RESUMES_NAME", "read_metrics",
           "remove_stale_temporaries"]
