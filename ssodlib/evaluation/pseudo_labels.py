"""Pseudo-label diagnostics against the withheld labels of unlabeled images.

Every paper's pseudo-label curves come from these numbers: pseudo boxes per image against ground
truth per image, precision and recall at IoU 0.5, mean IoU of true positives, per-class counts, the
student's sampled RoIs as true / false positives and false negatives, and two readings of precision
and class KL:

* this repository's own: ``pl_precision`` matches pseudo boxes one-to-one to ground truth in score
  order (as detection AP does), ``pl_class_kl`` compares the pseudo-label class distribution with the
  labeled set's (the prior ACT aims at);
* LabelMatch's Fig. 4a and 4c: ``pl_precision_any`` counts a pseudo box as correct when any ground
  truth of its class overlaps it by IoU > 0.5 (the official code's count, duplicates included), and
  ``pl_class_kl_gt`` compares the class distribution with the withheld ground truth of the same
  unlabeled images;
* Rethinking Pseudo Labels' Fig. 3 (localization precision of the teacher's pseudo boxes against the
  withheld labels at stricter IoU criteria): ``pl_precision_at_iou``, the fraction of pseudo boxes whose
  one-to-one match (made at IoU 0.5) overlaps its ground truth by at least each of
  :data:`PRECISION_IOUS` (the match is not redone per criterion: a box keeps the ground truth of
  largest IoU it found at 0.5, so this is the precision at IoU t up to that greedy choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou


def match_to_ground_truth(boxes: Tensor, labels: Tensor, scores: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                          iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Greedy one-to-one matching in score order, as detection AP does.

    Args:
        boxes: ``(N, 4)`` pseudo boxes; labels ``(N,)``; scores ``(N,)``.
        gt_boxes: ``(M, 4)`` ground truth; gt_labels ``(M,)``.
    Returns:
        ``tp`` bool ``(N,)`` (same class, IoU >= threshold, ground truth not yet taken) and ``iou``
        ``(N,)`` with the matched ground truth (0 where unmatched).
    """
    n = len(boxes)
    tp = torch.zeros(n, dtype=torch.bool)
    ious = torch.zeros(n)
    if n == 0 or len(gt_boxes) == 0:
        return tp, ious
    iou = box_iou(boxes.float().cpu(), gt_boxes.float().cpu())
    iou[labels.cpu()[:, None] != gt_labels.cpu()[None, :]] = -1.0
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for i in torch.argsort(scores.cpu(), descending=True).tolist():
        cand = iou[i].masked_fill(taken, -1.0)
        best = int(cand.argmax())
        if cand[best] >= iou_threshold:
            tp[i], ious[i], taken[best] = True, cand[best], True
    return tp, ious


def overlaps_own_class(boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                       iou_threshold: float = 0.5) -> Tensor:
    """``(N,)`` True where a ground-truth box of the pseudo box's class overlaps it by IoU strictly
    above ``iou_threshold`` (LabelMatch Fig. 4a; several pseudo boxes may hit one ground truth)."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    iou = box_iou(boxes.float().cpu(), gt_boxes.float().cpu())
    same = labels.cpu()[:, None] == gt_labels.cpu()[None, :]
    return ((iou > iou_threshold) & same).any(1)


PRECISION_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95


@dataclass
class PseudoLabelStats:
    """Accumulates diagnostics over images; :meth:`summary` gives the logged numbers."""

    num_classes: int
    labeled_class_prior: np.ndarray | None = None
    images: int = 0
    pseudo: int = 0
    gt: int = 0
    tp: int = 0
    tp_any: int = 0  # pseudo boxes overlapping some ground truth of their class by IoU > 0.5
    tp_iou_sum: float = 0.0
    roi_tp: int = 0
    roi_fp: int = 0
    roi_fn: int = 0
    tp_at_iou: np.ndarray = field(default=None)  # type: ignore[assignment]  # true positives at PRECISION_IOUS
    pseudo_per_class: np.ndarray = field(default=None)  # type: ignore[assignment]
    gt_per_class: np.ndarray = field(default=None)  # type: ignore[assignment]
    counts: dict[str, float] = field(default_factory=dict)  # method-specific, see add_counts
    values: dict[str, list[float]] = field(default_factory=dict)  # method-specific, see set_values

    def __post_init__(self) -> None:
        self.pseudo_per_class = np.zeros(self.num_classes, np.int64)
        self.gt_per_class = np.zeros(self.num_classes, np.int64)
        self.tp_at_iou = np.zeros(len(PRECISION_IOUS), np.int64)

    def add_image(self, *, boxes: Tensor, labels: Tensor, scores: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> None:
        tp, iou = match_to_ground_truth(boxes, labels, scores, gt_boxes, gt_labels)
        self.images += 1
        self.pseudo += len(boxes)
        self.gt += len(gt_boxes)
        self.tp += int(tp.sum())
        self.tp_any += int(overlaps_own_class(boxes, labels, gt_boxes, gt_labels).sum())
        self.tp_iou_sum += float(iou[tp].sum())
        self.tp_at_iou += (iou[tp].numpy()[:, None] >= np.array(PRECISION_IOUS) - 1e-9).sum(0)
        self.pseudo_per_class += np.bincount(labels.cpu().numpy(), minlength=self.num_classes)
        self.gt_per_class += np.bincount(gt_labels.cpu().numpy(), minlength=self.num_classes)

    def add_counts(self, **counts: float) -> None:
        """Method-specific counts (e.g. ``reliable=3``), summed over calls and logged as
        ``pl_{name}_per_image`` (the sum divided by the images given to :meth:`add_image`)."""
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0.0) + float(value)

    def set_values(self, **values: Tensor | list[float]) -> None:
        """Method-specific per-class values (e.g. Rethinking PL's ``tau_m``), logged under their names as
        they were at the last call before the log line (a state, not a sum)."""
        for name, value in values.items():
            self.values[name] = [round(float(v), 6) for v in value]

    def add_rois(self, *, roi_boxes: Tensor, roi_labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                 iou_threshold: float = 0.5) -> None:
        """Sampled RoIs with pseudo-label classes ``roi_labels`` (0 background, ``1..C``): a
        foreground RoI is a true positive when a ground-truth box of its class overlaps it at
        ``iou_threshold``; a background RoI overlapping any ground truth so is a false negative."""
        fg = roi_labels.cpu() > 0
        if len(gt_boxes) == 0:
            self.roi_fp += int(fg.sum())
            return
        iou = box_iou(roi_boxes.detach().float().cpu(), gt_boxes.float().cpu())
        same = roi_labels.cpu()[:, None] - 1 == gt_labels.cpu()[None, :]
        hit_same = ((iou >= iou_threshold) & same).any(1)
        hit_any = (iou >= iou_threshold).any(1)
        self.roi_tp += int((fg & hit_same).sum())
        self.roi_fp += int((fg & ~hit_same).sum())
        self.roi_fn += int((~fg & hit_any).sum())

    def summary(self) -> dict[str, float]:
        nan = float("nan")
        out = {
            "pl_images": self.images,
            "pl_per_image": self.pseudo / self.images if self.images else nan,
            "gt_per_image": self.gt / self.images if self.images else nan,
            "pl_precision": self.tp / self.pseudo if self.pseudo else nan,
            "pl_precision_any": self.tp_any / self.pseudo if self.pseudo else nan,
            "pl_recall": self.tp / self.gt if self.gt else nan,
            "pl_mean_iou_tp": self.tp_iou_sum / self.tp if self.tp else nan,
            "pl_precision_at_iou": (self.tp_at_iou / self.pseudo).tolist() if self.pseudo else [nan] * len(PRECISION_IOUS),
            "roi_tp": self.roi_tp, "roi_fp": self.roi_fp, "roi_fn": self.roi_fn,
            "pl_per_class": self.pseudo_per_class.tolist(),
            "gt_per_class": self.gt_per_class.tolist(),
        }
        out.update({f"pl_{k}_per_image": v / self.images if self.images else nan for k, v in self.counts.items()})
        out.update(self.values)
        if self.labeled_class_prior is not None and self.pseudo:
            out["pl_class_kl"] = class_kl(self.pseudo_per_class, self.labeled_class_prior)
        if self.pseudo and self.gt:
            out["pl_class_kl_gt"] = class_kl(self.pseudo_per_class, self.gt_per_class)
        return out


def class_kl(counts: np.ndarray, prior: np.ndarray, eps: float = 1e-6) -> float:
    """KL(pseudo-label class distribution || labeled class distribution), smoothed by ``eps``."""
    p = (counts + eps) / (counts + eps).sum()
    q = (prior + eps) / (prior + eps).sum()
    return float(np.sum(p * np.log(p / q)))
