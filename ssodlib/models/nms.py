"""NMS clusters: which kept box suppressed each candidate, and the statistics of each cluster.

LabelMatch's reliable pseudo-label mining (mean score and mean IoU of a kept box's cluster) and
DTG-SSOD's Inverse NMS Clustering and Rank Matching (every member of a cluster takes the kept box as
its target) read the same clusters, and evaluation draws them (LabelMatch Fig. 3), so the maths lives
here, below every method.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def nms_clusters(boxes: Tensor, labels: Tensor, keep: Tensor, iou_threshold: float) -> Tensor:
    """For each of ``Q`` candidates, the position in ``keep`` of the kept box that greedy NMS let
    suppress it (itself if kept); -1 if no kept box qualifies. ``keep`` is sorted by score, so the
    first qualifying kept box (same class, IoU > threshold) is the one that suppressed it."""
    cluster = torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device)
    if len(keep) == 0 or len(boxes) == 0:
        return cluster
    iou = box_iou(boxes, boxes[keep])
    eligible = (iou > iou_threshold) & (labels[:, None] == labels[keep][None, :])
    has = eligible.any(1)
    cluster[has] = eligible.float().argmax(1)[has]
    cluster[keep] = torch.arange(len(keep), device=boxes.device)
    return cluster


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row ``i`` of ``(N, 4)`` boxes ``a`` with row ``i`` of ``(N, 4)`` boxes ``b``: ``(N,)``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def group_mean(values: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """Mean of ``(N,)`` values per group ``index`` in ``0..num_groups-1``: ``(num_groups,)``, NaN if empty."""
    values = values.float()
    total = values.new_zeros(num_groups).index_add_(0, index, values)
    count = values.new_zeros(num_groups).index_add_(0, index, torch.ones_like(values))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def nms_cluster_statistics(*, boxes: Tensor, scores: Tensor, candidate_boxes: Tensor, candidate_scores: Tensor,
                           cluster: Tensor) -> tuple[Tensor, Tensor]:
    """Mean score and mean IoU (with the kept box) of the candidates each kept box suppressed in NMS.

    Args:
        boxes, scores: ``(K, 4)`` / ``(K,)`` the kept (post-NMS) detections.
        candidate_boxes, candidate_scores: ``(Q, 4)`` / ``(Q,)`` every pre-NMS candidate.
        cluster: ``(Q,)`` index of the kept box that suppressed (or is) each candidate, -1 for none
            (``Detections.cluster``).
    Returns:
        ``(K,)`` mean score and ``(K,)`` mean IoU; NaN for a box that suppressed nothing (the kept
        box itself, the candidate identical to it, is not part of its cluster).
    """
    k = len(boxes)
    if k == 0 or len(candidate_boxes) == 0:
        nan = boxes.new_full((k,), float("nan"))
        return nan, nan.clone()
    idx = cluster.clamp(min=0)
    own = (candidate_boxes == boxes[idx]).all(1) & (candidate_scores == scores[idx])
    member = (cluster >= 0) & ~own
    iou = paired_iou(candidate_boxes[member], boxes[idx[member]])
    return group_mean(candidate_scores[member], idx[member], k), group_mean(iou, idx[member], k)
