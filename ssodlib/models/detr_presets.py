"""Scale presets of the detection-transformer families (Deformable DETR, arXiv 2010.04159; DINO,
arXiv 2203.03605) as ``TrainConfig`` overrides.

``ssodlib.config.PRESETS`` are Faster R-CNN's scales; a DETR run takes one of them (data, views,
batch) and replaces the detector, its options and the optimiser with the family's: its
``*_PRESETS[scale]`` detector options and ``*_TRAIN[scale]`` fields (AdamW, learning rate, gradient
clipping by norm, schedule), documented in each family's module. In Python::

    from ssodlib.config import train_config
    from ssodlib.models.detr_presets import detr_train_overrides
    config = train_config("mini", method="supervised", percent=5.0, **detr_train_overrides("dino", "mini"))

On the command line, write the overrides as a YAML file for ``ssod train --config``::

    python -m ssodlib.models.detr_presets dino mini > dino-mini.yaml
    ssod train --config dino-mini.yaml --method supervised --percent 5 --fold 1

(``train_config`` drops the scale preset's Faster R-CNN ``detector_options`` when the run names another
detector family.)
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from ssodlib.io import InputError
from ssodlib.models.detectors.deformable_detr import DEFORMABLE_DETR_PRESETS, DEFORMABLE_DETR_TRAIN
from ssodlib.models.detectors.dino import DINO_PRESETS, DINO_TRAIN

DETR_SCALES: dict[str, tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]] = {
    "dino": (DINO_PRESETS, DINO_TRAIN),
    "deformable_detr": (DEFORMABLE_DETR_PRESETS, DEFORMABLE_DETR_TRAIN),
}


def detr_train_overrides(family: str, scale: str) -> dict[str, Any]:
    """``TrainConfig`` overrides (``detector``, ``detector_options``, optimiser, schedule) of ``family`` at
    ``scale``, to pass to ``ssodlib.config.train_config(scale, ...)``."""
    if family not in DETR_SCALES:
        raise InputError(f"no DETR presets for detector {family!r}. Fix: choose one of {sorted(DETR_SCALES)}.")
    options, train = DETR_SCALES[family]
    if scale not in options:
        raise InputError(f"no {family} preset for scale {scale!r}. Fix: choose one of {sorted(options)}.")
    return {"detector": family, "detector_options": dict(options[scale]), **train[scale]}


def _plain(value: Any) -> Any:
    """Tuples as lists, for YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def main(argv: list[str] | None = None) -> None:
    """``python -m ssodlib.models.detr_presets FAMILY SCALE``: the overrides as YAML, with the scale."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m ssodlib.models.detr_presets {dino,deformable_detr} {smoke,mini,paper}")
    family, scale = args
    print(yaml.safe_dump({"scale": scale, **_plain(detr_train_overrides(family, scale))}, sort_keys=False), end="")


if __name__ == "__main__":
    main()


__all__ = ["DETR_SCALES", "detr_train_overrides"]
