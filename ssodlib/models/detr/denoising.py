"""Contrastive denoising queries (DINO: DETR with Improved DeNoising Anchor Boxes, Zhang et al., ICLR 2023,
https://arxiv.org/abs/2203.03605, §3.3 and Fig. 3) and the attention masks that isolate query groups.

Functions:

* the number of denoising groups: :func:`denoising_groups`;
* label noise (a label is redrawn uniformly, possibly as itself, with probability ``ratio / 2``):
  :func:`noise_labels`;
* box noise: each corner moves by ``lambda * (w/2, h/2)`` times a random sign and a magnitude in
  ``[0, 1)`` (positive queries) or ``[1, 2)`` (negative queries, which learn "no object"), clamped to
  the image: :func:`noise_boxes`;
* the layout of one batch's denoising queries: :func:`denoising_layout`;
* the self-attention mask of ``[group_1 | ... | group_k | matching queries]``, where each extra group sees
  itself and the matching queries and the matching queries see only themselves (DN-DETR's mask, which
  Semi-DETR's cross-view groups reuse): :func:`group_attention_mask`.

From the authors' code (IDEA-Research/DINO ``models/dino/dn_components.py::prepare_for_cdn``, which
Semi-DETR copies): per image the queries are laid out group after group, each group
``[max_gt positives | max_gt negatives]``, images with fewer targets padded with label-less queries at
box ``(0.5, 0.5, 0.5, 0.5)`` (logit 0) that are not masked; the noise formulas above.

Ours: the group count is ``max(1, dn_number // max_gt)`` always. DINO doubles ``dn_number`` and
divides by ``2 max_gt`` only when the doubled value is at least 100, so a small ``dn_number`` (20 at
mini scale) would give ``2 dn_number`` groups of ``2 max_gt`` queries each; with 100 (the paper) the
two rules agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ssodlib.models.detr.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

PAD_BOX = 0.5  # the box of padding queries: logit 0, as the authors' zero-initialised padding


def denoising_groups(dn_number: int, max_gt: int) -> int:
    """Groups of ``2 max_gt`` queries for a batch whose largest image has ``max_gt`` targets (0: none)."""
    if dn_number <= 0 or max_gt <= 0:
        return 0
    return max(1, dn_number // max_gt)


def noise_labels(labels: Tensor, *, ratio: float, num_classes: int,
                 generator: torch.Generator | None = None) -> Tensor:
    """``labels`` ``(K,)`` with each entry redrawn from ``0..num_classes-1`` with probability ``ratio / 2``."""
    if ratio <= 0 or labels.numel() == 0:
        return labels.clone()
    flip = torch.rand(labels.shape, generator=generator, device=labels.device) < ratio * 0.5
    drawn = torch.randint(0, num_classes, labels.shape, generator=generator, device=labels.device)
    return torch.where(flip, drawn, labels)


def noise_boxes(boxes: Tensor, negative: Tensor, *, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """Normalised ``cxcywh`` ``(K, 4)`` boxes with corner noise: each of ``x1, y1, x2, y2`` moves by
    ``sign * u * scale * (w/2 or h/2)`` with ``u`` in ``[0, 1)``, or in ``[1, 2)`` where ``negative`` ``(K,)``;
    clamped to ``[0, 1]``."""
    if scale <= 0 or boxes.numel() == 0:
        return boxes.clone()
    half = boxes[:, 2:].repeat(1, 2) / 2  # (w/2, h/2, w/2, h/2)
    sign = torch.randint(0, 2, boxes.shape, generator=generator, device=boxes.device).to(boxes) * 2 - 1
    magnitude = torch.rand(boxes.shape, generator=generator, device=boxes.device).to(boxes)
    magnitude = magnitude + negative[:, None].to(boxes)
    corners = cxcywh_to_xyxy(boxes) + sign * magnitude * half * scale
    return xyxy_to_cxcywh(corners.clamp(0.0, 1.0))


@dataclass
class DenoisingLayout:
    """The denoising queries of a batch: ``labels`` ``(B, P)`` noised labels (-1 at padding),
    ``boxes`` ``(B, P, 4)`` noised normalised ``cxcywh``; ``P = groups * group_size``, each group
    ``[positives | negatives]`` of ``group_size / 2`` queries. ``query_index[b]`` / ``target_index[b]``
    pair each positive query of image ``b`` with its target (negatives and padding learn background)."""

    labels: Tensor
    boxes: Tensor
    groups: int
    group_size: int
    query_index: list[Tensor]
    target_index: list[Tensor]

    @property
    def num_queries(self) -> int:
        return self.groups * self.group_size


def denoising_layout(gt_labels: Sequence[Tensor], gt_boxes: Sequence[Tensor], *, num_classes: int, dn_number: int,
                     label_noise: float, box_noise: float,
                     generator: torch.Generator | None = None) -> DenoisingLayout | None:
    """Noised copies of each image's targets (``gt_boxes[b]`` ``(G_b, 4)`` normalised ``cxcywh``) in
    :func:`denoising_groups` groups; ``None`` when no image has a target or ``dn_number`` is 0."""
    max_gt = max((len(t) for t in gt_labels), default=0)
    groups = denoising_groups(dn_number, max_gt)
    if groups == 0:
        return None
    size = 2 * max_gt
    device = gt_boxes[0].device
    labels = torch.full((len(gt_labels), groups * size), -1, dtype=torch.int64, device=device)
    boxes = torch.full((len(gt_labels), groups * size, 4), PAD_BOX, dtype=torch.float32, device=device)
    query_index, target_index = [], []
    for b, (lab, box) in enumerate(zip(gt_labels, gt_boxes)):
        g = len(lab)
        t = torch.arange(g, device=device)
        starts = torch.arange(groups, device=device)[:, None] * size
        pos, neg = (starts + t).reshape(-1), (starts + max_gt + t).reshape(-1)
        both = torch.cat([pos, neg])
        negative = torch.cat([torch.zeros(len(pos), device=device), torch.ones(len(neg), device=device)])
        src = box.float().to(device).repeat(2 * groups, 1)
        labels[b, both] = noise_labels(lab.to(device).repeat(2 * groups), ratio=label_noise, num_classes=num_classes,
                                       generator=generator)
        boxes[b, both] = noise_boxes(src, negative.bool(), scale=box_noise, generator=generator)
        query_index.append(pos)
        target_index.append(t.repeat(groups))
    return DenoisingLayout(labels, boxes, groups, size, query_index, target_index)


def group_attention_mask(group_sizes: Sequence[int], num_matching: int, *,
                         device: torch.device | str | None = None) -> Tensor:
    """``(N, N)`` bool self-attention mask, True = blocked (``nn.MultiheadAttention``'s convention), for
    queries ``[group_1 | ... | group_k | num_matching matching queries]``: a group sees itself and the
    matching queries; the matching queries see only themselves."""
    extra = sum(group_sizes)
    n = extra + num_matching
    mask = torch.zeros((n, n), dtype=torch.bool, device=device)
    mask[extra:, :extra] = True
    start = 0
    for size in group_sizes:
        mask[start:start + size, :extra] = True
        mask[start:start + size, start:start + size] = False
        start += size
    return mask


__all__ = ["DenoisingLayout", "denoising_groups", "denoising_layout", "group_attention_mask", "noise_boxes",
           "noise_labels"]
