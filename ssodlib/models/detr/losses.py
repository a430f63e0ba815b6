"""Set losses of the detection transformers (Deformable DETR, arXiv 2010.04159; DINO, arXiv 2203.03605)
for one decoder layer's predictions and a one-to-one assignment.

* Classification: sigmoid focal loss (``alpha = 0.25``, ``gamma = 2``) over every query and class, the
  matched query's target class set to 1, summed and divided by the number of target boxes (the
  authors' ``sigmoid_focal_loss(...) * num_queries``, i.e. mmdetection's ``avg_factor = num_pos``):
  :func:`set_losses` term ``cls``.
* Boxes: L1 on normalised ``cxcywh`` and ``1 - GIoU``, summed over matched pairs and divided by the
  number of target boxes: terms ``l1`` and ``giou``.
* Weights as Semi-DETR's DINO configuration: focal 2.0 (DINO's own code: 1.0), L1 5.0, GIoU 2.0
  (:class:`LossWeights`); the paper's "Smooth L1" is L1 in the code.
* The number of boxes averaged over ranks and at least 1 (the authors' ``num_boxes``): :func:`average_count`.

One-to-many losses (quality targets, Semi-DETR's task-aligned focal loss) belong to the method that
assigns one-to-many; these losses read an :class:`~ssodlib.models.detr.matcher.Assignment`'s pairs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ssodlib.models.detr.boxes import cxcywh_to_xyxy
from ssodlib.models.detr.matcher import Assignment


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Weights and focal constants of the set losses."""

    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0


def average_count(count: float, device: torch.device) -> float:
    """``count`` averaged over the ranks of an initialised process group, at least 1."""
    n = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n), 1.0)


def class_targets(logits: Tensor, gt_labels: Sequence[Tensor], assignments: Sequence[Assignment]) -> Tensor:
    """``(B, N, C)`` one-hot targets: 1 at each assigned query's target class, 0 elsewhere."""
    target = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    for b, (labels, a) in enumerate(zip(gt_labels, assignments)):
        if len(a):
            target[b, a.queries, labels.to(logits.device)[a.targets]] = 1.0
    return target


def set_losses(logits: Tensor, boxes: Tensor, gt_labels: Sequence[Tensor], gt_boxes: Sequence[Tensor],
               assignments: Sequence[Assignment], *, num_boxes: float,
               weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """Weighted ``cls``, ``l1`` and ``giou`` terms of ``logits`` ``(B, N, C)`` and ``boxes`` ``(B, N, 4)``
    (normalised ``cxcywh``) against per-image targets, for the pairs of ``assignments`` (one per image),
    each divided by ``num_boxes``. Computed in float32."""
    logits, boxes = logits.float(), boxes.float()
    target = class_targets(logits, gt_labels, assignments)
    focal = sigmoid_focal_loss(logits, target, alpha=weights.alpha, gamma=weights.gamma, reduction="sum")
    pred = torch.cat([boxes[b, a.queries] for b, a in enumerate(assignments)])
    gt = torch.cat([g.to(boxes)[a.targets] for g, a in zip(gt_boxes, assignments)])
    if pred.numel() == 0:
        zero = boxes.sum() * 0.0  # keeps the graph connected (DDP needs every parameter's gradient)
        return {"cls": weights.cls * focal / num_boxes, "l1": zero, "giou": zero.clone()}
    l1 = (pred - gt).abs().sum()
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt), reduction="sum")  # sum of 1 - GIoU
    return {"cls": weights.cls * focal / num_boxes, "l1": weights.l1 * l1 / num_boxes,
            "giou": weights.giou * giou / num_boxes}


__all__ = ["LossWeights", "average_count", "class_targets", "set_losses"]
