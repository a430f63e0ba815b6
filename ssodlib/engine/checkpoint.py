"""Atomic checkpoints that ``torch.load(weights_only=True)`` can read, and the configuration they record."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from ssodlib.config import TrainConfig
from ssodlib.engine.run_folder import CHECKPOINT_NAME
from ssodlib.io import InputError, atomic_write
from ssodlib.models.build import detector_options


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


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike) -> TrainConfig:
    """The configuration a checkpoint was made with. A field its version did not have yet takes its
    default value; a checkpoint from before detector options (Faster R-CNN knobs as top-level fields)
    has them moved into ``detector_options``."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}
    legacy = {k: values.pop(k) for k in list(values) if k not in fields}
    if legacy:
        known = {f.name for f in dataclasses.fields(detector_options(TrainConfig()))}
        unknown = sorted(set(legacy) - known)
        if unknown:
            raise InputError(f"{path}: its configuration has unknown field(s) {unknown}. Fix: use a checkpoint "
                             "written by this version of ssodlib.")
        values["detector_options"] = {**legacy, **(values.get("detector_options") or {})}
    return TrainConfig(**values)
