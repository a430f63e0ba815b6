"""What a run folder holds, by name, and how to read its metrics log without importing the trainer.

A run folder (``ssod train --out FOLDER`` or a results store's ``runs/<key>``) holds ``config.json``,
``metrics.jsonl`` (one JSON record per log line or evaluation), ``final.json`` and the checkpoints
(written by ``ssodlib.engine.checkpoint``). Reading results needs no torch and no model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CHECKPOINT_NAME = "checkpoint.pt"  # the latest; checkpoint-{iteration}.pt are kept snapshots
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FINAL_NAME = "final.json"


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl`` in order (empty when there is none)."""
    path = Path(out_dir) / METRICS_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "FINAL_NAME", "METRICS_NAME", "read_metrics"]
