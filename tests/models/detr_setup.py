"""Smoke-sized DETR models and a two-image batch shared by the detector family tests (imported, not collected)."""

from __future__ import annotations

import torch

from ssodlib.config import train_config
from ssodlib.models.build import build_detector
from ssodlib.models.detr_presets import detr_train_overrides

C = 3  # classes


def smoke_config(family: str, **options):
    overrides = detr_train_overrides(family, "smoke")
    overrides["detector_options"].update(options)
    return train_config("smoke", method="supervised", **overrides)


def smoke_model(family: str, *, seed: int = 0, **options):
    """The family at smoke scale through ``build_detector``, seeded."""
    torch.manual_seed(seed)
    return build_detector(smoke_config(family, **options), C)


def two_images():
    """Images of 96 x 112 and 80 x 96 (h, w) with two and one boxes (pixel xyxy)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 112), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (3, 80, 96), generator=g, dtype=torch.uint8)]
    boxes = [torch.tensor([[10.0, 10, 50, 40], [30, 20, 90, 70]]), torch.tensor([[5.0, 5, 40, 60]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    return images, boxes, labels


def object_image():
    """A 64 x 64 grey image with a bright square at (16, 16, 48, 48) of class 1."""
    image = torch.full((3, 64, 64), 60, dtype=torch.uint8)
    image[:, 16:48, 16:48] = 220
    return image, torch.tensor([[16.0, 16, 48, 48]]), torch.tensor([1])


def overfit_losses(model, *, steps: int, lr: float = 1e-3) -> list[float]:
    """Total supervised loss over ``steps`` AdamW steps on :func:`object_image`."""
    image, box, label = object_image()
    opt = torch.optim.AdamW(model.parameter_groups(lr), lr=lr, weight_decay=1e-4)
    model.train()
    totals = []
    for _ in range(steps):
        losses = model.supervised_losses([image], [box], [label])
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        totals.append(float(total.detach()))
    return totals
