"""Oracle pseudo labels, a diagnostic upper bound of the baseline of Unbiased Teacher for
Semi-Supervised Object Detection (Liu et al., ICLR 2021, https://arxiv.org/abs/2102.09480).

Not a method of any paper: it trains exactly as ``pseudo_label`` (same teacher pass, student pass and
losses), but the unlabeled images' withheld ground truth (mapped into the teacher's view) replaces the
teacher's detections, with score 1. A run then measures what perfect pseudo labels would add through
this pipeline, and its switches split that gain:

* ``found_only``: only the ground-truth boxes that a teacher box at ``score_thresh`` (any class)
  overlaps at IoU >= 0.5, with their true boxes and classes: the teacher's recall without its errors.
* ``fraction``: each ground-truth box is kept with this probability at each visit, a random subset
  of the objects at a chosen recall (against ``found_only``: the teacher's own subset).

The draws of ``fraction`` come from torch's global generator, which the trainer seeds at every step,
so a resumed run repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ssodlib.io import InputError
from ssodlib.methods.pseudo_label import PseudoLabel, PseudoLabelOptions, select_pseudo_labels
from ssodlib.models.detectors.base import Detections


@dataclass(frozen=True, kw_only=True)
class OracleOptions(PseudoLabelOptions):
    found_only: bool = False  # the ground truth the teacher finds at score_thresh
    fraction: float = 1.0  # probability of keeping each ground-truth box at each visit

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise InputError(f"oracle option fraction={self.fraction} is not a probability. Fix: a value in [0, 1].")
        if self.fraction < 1.0 and self.found_only:
            raise InputError("oracle options fraction and found_only choose the kept ground truth in two ways. "
                             "Fix: set one of them.")


def found_ground_truth(boxes: Tensor, gt_boxes: Tensor, *, iou_thresh: float = 0.5) -> Tensor:
    """``(G,)`` mask of the ground-truth boxes that one of the ``(K, 4)`` boxes overlaps at ``iou_thresh``."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(gt_boxes), dtype=torch.bool, device=gt_boxes.device)
    return (box_iou(gt_boxes.float(), boxes.float().to(gt_boxes.device)) >= iou_thresh).any(1)


class Oracle(PseudoLabel):
    """``pseudo_label`` trained on the withheld ground truth (see the module docstring)."""

    name = "oracle"
    Options = OracleOptions

    def image_pseudo_labels(self, det: Detections, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The kept ``(G', 4)`` ground-truth boxes, ``(G',)`` labels and scores of 1."""
        o = self.options
        if o.found_only:
            boxes, _, _ = select_pseudo_labels(det, score_thresh=o.score_thresh)
            keep = found_ground_truth(boxes, gt_boxes)
        elif o.fraction < 1.0:
            keep = torch.rand(len(gt_labels), device=gt_boxes.device) < o.fraction
        else:
            keep = torch.ones(len(gt_labels), dtype=torch.bool, device=gt_boxes.device)
        return gt_boxes[keep], gt_labels[keep], torch.ones(int(keep.sum()), device=gt_boxes.device)
