"""Backbone pretraining on the embedded benchmark: the stand-in for ImageNet weights.

Every paper starts its detector from an ImageNet-pretrained backbone, and its supervised baseline is
limited by labels, not by training time. A tiny backbone trained from scratch in a 15-minute CPU run
is limited by training time instead (measured on the former 4000-image mini benchmark: at 5 % labels,
supervised training from scratch matched training on all labels), which hides what unlabeled data adds. With
``pretrained=true`` the tiny backbone starts from weights learnt by classifying object crops of the
benchmark's shape classes (and background) cut from images of the ``pretrain`` split, which no
training or validation image comes from, as ImageNet classification is disjoint from COCO detection. Only the backbone trunk is
pretrained; the FPN, RPN and RoI head start from scratch, as in the papers.

The weights are built once per benchmark and cached next to it, like the benchmark itself.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssodlib.data.synth import BACKGROUND, benchmark_identity, default_data_root, object_crops, synth_config
from ssodlib.io import InputError, atomic_write, clock, jsonable, progress_line, read_json, write_json
from ssodlib.models.backbones import TinyBackbone
from ssodlib.models.detectors.faster_rcnn import FasterRCNNOptions

FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Recipe of the crop classification that pretrains the tiny backbone's trunk."""

    images: int  # pretrain-split images whose crops form the training set
    val_images: int  # the next images, whose crops measure accuracy
    epochs: int
    crop_size: int = 64
    batch_size: int = 128
    lr: float = 0.1  # one-cycle peak, SGD with Nesterov momentum
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0


PRETRAIN_PRESETS: dict[str, PretrainConfig] = {
    # measured: 94.8-95.4 % accuracy on the 3183 crops of the next 500 images (13 classes; the thread count
    # changes the summation order, hence the weights); about 4 minutes on one CPU core, 2 on two
    "mini": PretrainConfig(images=6000, val_images=500, epochs=8),
    "smoke": PretrainConfig(images=24, val_images=8, epochs=1, crop_size=32, batch_size=32),
}


class CropClassifier(nn.Module):
    """The tiny backbone's trunk, global average pooling and a linear layer."""

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = nn.Linear(self.backbone.widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.trunk(x)["3"].mean((2, 3)))


def _normalised(crops: Tensor) -> Tensor:
    mean = torch.tensor(FasterRCNNOptions.pixel_mean).view(1, 3, 1, 1)  # the detector's normalisation
    std = torch.tensor(FasterRCNNOptions.pixel_std).view(1, 3, 1, 1)
    return (crops.permute(0, 3, 1, 2).float() - mean) / std


def _augmented(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random flips and quarter turns (the benchmark's shapes appear at every angle)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    return torch.rot90(x, turns, (2, 3))


def accuracy(model: nn.Module, crops: np.ndarray, labels: np.ndarray, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(N, S, S, 3)`` uint8 crops."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(crops), batch_size):
            x = _normalised(torch.from_numpy(crops[i: i + batch_size]))
            correct += int((model(x).argmax(1) == torch.from_numpy(labels[i: i + batch_size])).sum())
    return correct / max(len(crops), 1)


def train_crop_classifier(crops: np.ndarray, labels: np.ndarray, config: PretrainConfig, *,
                          progress: bool = False) -> tuple[CropClassifier, list[float]]:
    """Train a :class:`CropClassifier` on ``(N, S, S, 3)`` uint8 crops; returns it and its epoch losses.

    Deterministic for a given ``config.seed`` and thread count; the global RNG is left untouched.
    """
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = CropClassifier(num_classes=BACKGROUND + 1)
    batches = max(len(crops) // config.batch_size, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * batches)
    x_all, y_all = torch.from_numpy(crops), torch.from_numpy(labels)
    losses = []
    bar = tqdm(total=config.epochs * batches, desc="pretraining", disable=not (progress and _terminal()), leave=False)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(crops), generator=generator)
        total = 0.0
        for b in range(batches):
            idx = order[b * config.batch_size: (b + 1) * config.batch_size]
            loss = F.cross_entropy(model(_augmented(_normalised(x_all[idx]), generator)), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.update()
        losses.append(total / batches)
        if progress:
            _epoch_line(epoch + 1, config.epochs, losses[-1], time.perf_counter() - started)
    bar.close()
    return model, losses


def _terminal() -> bool:
    """Whether a progress bar is worth drawing: in a notebook kernel or a log file every redraw of it
    stays as one more output (thousands for one build), so there the epoch lines alone report progress."""
    return sys.stderr.isatty()


def _epoch_line(epoch: int, epochs: int, loss: float, elapsed: float) -> None:
    eta = elapsed / epoch * (epochs - epoch)
    line = progress_line("pretraining the tiny backbone (epochs)", epoch, epochs, eta_seconds=eta)
    tqdm.write(f"{line}, loss {loss:.3f}, {clock(elapsed)} so far", file=sys.stdout)  # above a terminal's bar
    sys.stdout.flush()


def pretrained_backbone_paths(scale: str, *, data_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(weights, manifest)`` of the tiny backbone pretrained for the benchmark of ``scale``."""
    root = Path(data_root) if data_root is not None else default_data_root()
    folder = root / f"synth-{scale}" / "pretrained"
    return folder / "tiny-backbone.pt", folder / "tiny-backbone.json"


def ensure_pretrained_backbone(scale: str, *, data_root: str | os.PathLike | None = None, seed: int = 0,
                               workers: int | None = None, progress: bool = True, **overrides: Any) -> Path:
    """The tiny backbone's pretrained trunk weights for ``scale``, built on first use and cached.

    Cached under ``{data_root}/synth-{scale}/pretrained/``; the manifest (written last, with the crop
    accuracy) records the recipe, so a changed recipe or benchmark rebuilds and an interrupted build
    is redone. ``overrides`` replace fields of the scale's :class:`PretrainConfig`.
    """
    if scale not in PRETRAIN_PRESETS:
        raise InputError(f"the tiny backbone is pretrained for scales {sorted(PRETRAIN_PRESETS)}, not {scale!r}. "
                         "Fix: set pretrained=false or use a resnet backbone.")
    config = replace(PRETRAIN_PRESETS[scale], **overrides)
    weights, manifest = pretrained_backbone_paths(scale, data_root=data_root)
    recipe = {"format_version": FORMAT_VERSION, "benchmark": benchmark_identity(synth_config(scale), seed=seed),
              "pretrain": asdict(config)}
    if weights.is_file() and manifest.is_file() and read_json(manifest).get("recipe") == jsonable(recipe):
        return weights
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    synth = synth_config(scale)
    if progress:
        print(f"building the pretrained tiny backbone for the {scale} benchmark (once; cached in {weights.parent}): "
              f"object crops of {config.images + config.val_images} pretrain images, then {config.epochs} epoch(s)",
              flush=True)
    bars = progress and _terminal()
    crops, labels = object_crops(synth, seed=seed, count=config.images, size=config.crop_size, workers=workers,
                                 progress=bars)
    val_crops, val_labels = object_crops(synth, seed=seed, start=config.images, count=config.val_images,
                                         size=config.crop_size, workers=workers, progress=bars)
    model, losses = train_crop_classifier(crops, labels, config, progress=progress)
    trunk = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("fpn.")}
    atomic_write(weights, lambda tmp: torch.save(trunk, tmp))
    val_accuracy = accuracy(model, val_crops, val_labels)
    write_json(manifest, {"recipe": recipe, "crops": len(crops), "val_crops": len(val_crops),
                          "epoch_losses": losses, "val_accuracy": val_accuracy}, indent=2)
    if progress:
        print(f"pretrained tiny backbone: {100 * val_accuracy:.1f} % accuracy on held-out crops; {weights}", flush=True)
    return weights


__all__ = ["PRETRAIN_PRESETS", "CropClassifier", "PretrainConfig", "accuracy", "ensure_pretrained_backbone",
           "pretrained_backbone_paths", "train_crop_classifier"]
