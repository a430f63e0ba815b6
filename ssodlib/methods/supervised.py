"""Supervised baseline: the detector trained on the labeled images alone."""

from __future__ import annotations

from torch import Tensor, nn

from ssodlib.engine.data import Batch
from ssodlib.methods.base import Method, StepContext


class Supervised(Method):
    """Faster R-CNN + FPN on the labeled split only (the "Supervised" row of every paper)."""

    name = "supervised"

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        return student.supervised_losses(batch.images, batch.boxes, batch.labels)
