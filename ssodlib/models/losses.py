"""Classification and box losses shared by the detector and the methods."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss


def softmax_focal_loss(logits: Tensor, labels: Tensor, *, gamma: float = 1.5, reduction: str = "mean") -> Tensor:
    """Multi-class focal loss ``-(1 - p_t)^gamma log p_t`` on ``(N, K)`` logits and ``(N,)`` targets
    (Unbiased Teacher's RoI classifier; ``gamma = 0`` is cross-entropy)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    return _reduce(loss, reduction)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor, *, reduction: str = "mean") -> Tensor:
    """Cross-entropy against a distribution: ``-sum_k q_k log softmax(logits)_k`` per row of ``(N, K)``."""
    loss = -(target_probs.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return _reduce(loss, reduction)


def box_regression_loss(pred_deltas: Tensor, target_deltas: Tensor, *, kind: str = "smooth_l1",
                        pred_boxes: Tensor | None = None, target_boxes: Tensor | None = None) -> Tensor:
    """Summed box loss of positives: smooth-L1 on deltas (beta 1/9, as torchvision) or GIoU on
    decoded ``(N, 4)`` boxes."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred_deltas.float(), target_deltas.float(), beta=1 / 9, reduction="sum")
    if kind == "giou":
        if pred_boxes is None or target_boxes is None:
            raise ValueError("the GIoU loss needs decoded boxes")
        return generalized_box_iou_loss(pred_boxes.float(), target_boxes.float(), reduction="sum")
    raise ValueError(f"unknown box loss {kind!r}; choose smooth_l1 or giou")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


__all__ = ["box_regression_loss", "soft_cross_entropy", "softmax_focal_loss"]
