"""Atomic checkpoints that ``torch.load(weights_only=True)`` can read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ssodlib.io import InputError, atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` so that a reader sees the previous checkpoint or the complete new one."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found. Fix: check --out / --checkpoint, or start without --resume.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise InputError(f"{path}: not a readable ssodlib checkpoint ({type(e).__name__}: {e}). "
                         "Fix: delete it to start over, or point to another checkpoint.") from e
