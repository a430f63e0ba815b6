"""Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks (Ren et al., NeurIPS
2015, https://arxiv.org/abs/1506.01497): the supervised baseline, the detector trained on the labeled
images alone (the "Supervised" row of every paper).

No equations of its own: the loss is the detector family's ``supervised_losses`` (for Faster R-CNN +
FPN, the RPN and RoI losses of the paper), so this method runs on any family.
"""

from __future__ import annotations

from torch import Tensor, nn

from ssodlib.data.batch import Batch
from ssodlib.methods.base import Method, StepContext


class Supervised(Method):
    """The detector on the labeled split only."""

    name = "supervised"
    detector_family = None

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        return student.supervised_losses(batch.images, batch.boxes, batch.labels)
