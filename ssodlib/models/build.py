"""The one place a detector is built from a run's configuration: the trainer, run inspection and the
benchmarks call :func:`build_detector`.

``TrainConfig.detector`` names a family of :data:`DETECTOR_FAMILIES`; ``TrainConfig.detector_options``
overrides fields of the family's options dataclass, validated here exactly as a method validates
``method_options`` (an unknown key is an error that lists the known ones; a value of the wrong type,
outside its range or not a choice is an error too). The trainer validates them before it reads data.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ssodlib.config import TrainConfig
from ssodlib.io import InputError
from ssodlib.models.detectors.deformable_detr import DeformableDETROptions, build_deformable_detr
from ssodlib.models.detectors.dino import DINOOptions, build_dino
from ssodlib.models.detectors.faster_rcnn import DetectorConfig, FasterRCNN, FasterRCNNOptions
from ssodlib.models.detectors.gfl import GFLOptions, build_gfl
from ssodlib.models.pretrain import ensure_pretrained_backbone


def _build_faster_rcnn(options: FasterRCNNOptions, num_classes: int, *, trunk_weights: str | None,
                       from_checkpoint: bool) -> nn.Module:
    kwargs = dataclasses.asdict(options)
    if options.backbone == "tiny":  # its pretrained weights are a file of ours, not torchvision's
        kwargs.update(pretrained=trunk_weights is not None, backbone_weights=trunk_weights)
    if from_checkpoint:  # the checkpoint holds every weight
        kwargs["pretrained"] = False
    return FasterRCNN(config=DetectorConfig(num_classes=num_classes, **kwargs))


@dataclass(frozen=True)
class DetectorFamily:
    """A detector family: its options dataclass and the function that builds a model from them."""

    name: str
    options: type
    build: Callable[..., nn.Module]


DETECTOR_FAMILIES: dict[str, DetectorFamily] = {
    "faster_rcnn": DetectorFamily("faster_rcnn", FasterRCNNOptions, _build_faster_rcnn),
    "deformable_detr": DetectorFamily("deformable_detr", DeformableDETROptions, build_deformable_detr),
    "dino": DetectorFamily("dino", DINOOptions, build_dino),
    "gfl": DetectorFamily("gfl", GFLOptions, build_gfl),
}


def detector_family(name: str) -> DetectorFamily:
    if name not in DETECTOR_FAMILIES:
        raise InputError(f"unknown detector {name!r}. Fix: choose one of {sorted(DETECTOR_FAMILIES)}.")
    return DETECTOR_FAMILIES[name]


def detector_options(config: TrainConfig) -> Any:
    """The family's options dataclass with ``config.detector_options`` applied and checked (its
    ``check`` also makes YAML lists tuples where a field is a tuple)."""
    family = detector_family(config.detector)
    fields = {f.name: f for f in dataclasses.fields(family.options)}
    given = dict(config.detector_options or {})
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise InputError(f"detector {config.detector!r} has no option(s) {unknown}. Fix: choose from "
                         f"{sorted(fields)}.")
    options = family.options(**given)
    if hasattr(options, "check"):
        options.check()
    return options


def detector_signature(config: TrainConfig) -> dict[str, Any]:
    """Every option of the run's detector with defaults filled in and spelt-out equivalents made equal
    (e.g. ``trainable_layers=None`` is the backbone's standard): what two runs must share for one to
    continue from the other's weights."""
    options = detector_options(config)
    resolved = options.resolved() if hasattr(options, "resolved") else options
    return {"detector": config.detector, **dataclasses.asdict(resolved)}


def pretrained_trunk(config: TrainConfig, *, progress: bool = False) -> str | None:
    """The file of the tiny backbone's pretrained trunk when the run asks for it (built on first use),
    else ``None``: ResNets take torchvision's ImageNet weights themselves."""
    options = detector_options(config)
    if not (getattr(options, "pretrained", False) and getattr(options, "backbone", None) == "tiny"):
        return None
    return str(ensure_pretrained_backbone(config.scale, data_root=config.data_root, progress=progress))


def build_detector(config: TrainConfig, num_classes: int, *, trunk_weights: str | os.PathLike | None = None,
                   from_checkpoint: bool = False) -> nn.Module:
    """The run's detector for ``num_classes`` classes. ``trunk_weights``: the file of
    :func:`pretrained_trunk` (``None``: the tiny trunk starts from scratch, as on ranks that receive
    the main rank's weights); ``from_checkpoint``: weights will be loaded, so nothing pretrained is read."""
    family = detector_family(config.detector)
    return family.build(detector_options(config), num_classes,
                        trunk_weights=str(trunk_weights) if trunk_weights is not None else None,
                        from_checkpoint=from_checkpoint)


__all__ = ["DETECTOR_FAMILIES", "DetectorFamily", "build_detector", "detector_family", "detector_options",
           "detector_signature", "pretrained_trunk"]
