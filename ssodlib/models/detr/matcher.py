"""Assigning queries to targets: Hungarian one-to-one matching (DETR's set prediction; Deformable DETR,
arXiv 2010.04159 §A; DINO, arXiv 2203.03605) and the interface of one-to-many assigners.

* The matching cost of Deformable DETR / DINO, ``lambda_cls * C_focal + lambda_L1 * |b - b_hat|_1 -
  lambda_giou * GIoU(b, b_hat)`` on normalised ``cxcywh`` boxes: :func:`match_cost`; its focal term
  ``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))`` at the target class:
  :func:`focal_cost`. Weights 2 / 5 / 2, ``alpha = 0.25``, ``gamma = 2`` (the authors' code and
  Semi-DETR's ``assigner2``).
* The assignment itself: :func:`hungarian_match` (``scipy.optimize.linear_sum_assignment``; NaN and
  infinite costs, which make scipy raise, become a cost above every finite one).
* :class:`Assignment` / :class:`Assigner`: what the set losses consume, pairs of a query and its target.
  :class:`HungarianAssigner` is the one-to-one assigner; :class:`OneToManyAssigner` is the interface a
  one-to-many assigner (Semi-DETR's stage-1 matching) implements: a target may take many queries, a
  query at most one target, and each pair carries a soft quality target.

From the authors' code: the cost terms, their weights and the ``1e-8`` inside the logs. Ours: the
guard against non-finite costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou

from ssodlib.models.detr.boxes import cxcywh_to_xyxy


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The minimum-cost one-to-one assignment of ``cost`` ``(R, K)``: ``(rows, cols)``, each ``(min(R, K),)``
    int64 on ``cost``'s device, rows ascending. Non-finite entries count as more than any finite one."""
    c = cost.detach().to("cpu", torch.float64).numpy()
    if c.size == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=cost.device)
        return empty, empty.clone()
    finite = np.isfinite(c)
    if not finite.all():
        top = np.abs(c[finite]).max() if finite.any() else 0.0
        big = (top + 1.0) * (1.0 + min(c.shape)) * 2.0  # more than any finite assignment could save
        c = np.nan_to_num(c, nan=big, posinf=big, neginf=-big)
    rows, cols = linear_sum_assignment(c)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.int64, device=cost.device)  # noqa: E731
    return as_tensor(rows), as_tensor(cols)


def focal_cost(probs: Tensor, labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """``(Q, G)`` classification cost of ``probs`` ``(Q, C)`` sigmoid scores against targets ``labels`` ``(G,)``."""
    p = probs[:, labels]
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    neg = (1 - alpha) * p ** gamma * -(1 - p + 1e-8).log()
    return pos - neg


@dataclass(frozen=True, kw_only=True)
class CostWeights:
    """The weights of the matching cost's terms (Deformable DETR / DINO / Semi-DETR: 2, 5, 2)."""

    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0


def match_cost(logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *,
               weights: CostWeights = CostWeights()) -> Tensor:
    """``(Q, G)`` cost of ``Q`` predictions (``logits`` ``(Q, C)``, ``boxes`` ``(Q, 4)`` normalised
    ``cxcywh``) against ``G`` targets (``gt_labels`` ``(G,)``, ``gt_boxes`` ``(G, 4)`` normalised ``cxcywh``),
    in float32, without gradient."""
    with torch.no_grad():
        probs = logits.detach().float().sigmoid()
        out, tgt = boxes.detach().float(), gt_boxes.detach().float().to(boxes.device)
        cls = focal_cost(probs, gt_labels.to(logits.device), alpha=weights.alpha, gamma=weights.gamma)
        l1 = torch.cdist(out, tgt, p=1)
        giou = generalized_box_iou(cxcywh_to_xyxy(out), cxcywh_to_xyxy(tgt))
        return weights.cls * cls + weights.l1 * l1 - weights.giou * giou


@dataclass
class Assignment:
    """Pairs of a query and the target it learns in one image: ``queries`` ``(K,)`` and ``targets``
    ``(K,)`` indices; ``quality`` ``(K,)`` the soft classification target of each pair (one-to-one:
    ``None``, meaning 1). A query appears at most once; one-to-many assigners repeat targets."""

    queries: Tensor
    targets: Tensor
    quality: Tensor | None = None

    def __len__(self) -> int:
        return int(self.queries.numel())


@runtime_checkable
class Assigner(Protocol):
    """Assigns the ``Q`` predictions of one image (``logits`` ``(Q, C)``, ``boxes`` ``(Q, 4)`` normalised
    ``cxcywh``) to its ``G`` targets (``gt_labels`` ``(G,)``, ``gt_boxes`` ``(G, 4)`` normalised ``cxcywh``)."""

    def __call__(self, logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> Assignment: ...


class OneToManyAssigner(Assigner, Protocol):
    """An assigner whose targets may take several queries each (e.g. Semi-DETR's top-k by the alignment
    metric ``s^alpha u^beta``, :class:`ssodlib.methods.semi_detr.AlignedAssigner`), returning the normalised
    alignment ``t_hat`` as ``quality``. IoUs of normalised boxes equal those of pixel boxes (a per-axis
    scaling leaves IoU unchanged)."""


@dataclass(frozen=True)
class HungarianAssigner:
    """One-to-one: the minimum-cost matching of :func:`match_cost` with ``weights``."""

    weights: CostWeights = CostWeights()

    def __call__(self, logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> Assignment:
        if gt_labels.numel() == 0 or logits.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
            return Assignment(queries=empty, targets=empty.clone())
        rows, cols = hungarian_match(match_cost(logits, boxes, gt_labels, gt_boxes, weights=self.weights))
        return Assignment(queries=rows, targets=cols)


__all__ = ["Assigner", "Assignment", "CostWeights", "HungarianAssigner", "OneToManyAssigner", "focal_cost",
           "hungarian_match", "match_cost"]
