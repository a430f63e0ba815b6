"""The passes DETR-family methods share (Deformable DETR, https://arxiv.org/abs/2010.04159, and DINO,
https://arxiv.org/abs/2203.03605, in :mod:`ssodlib.models.detr`): the model up to its queries on a list of
images, the teacher's detections on weak views, boxes carried between views, extra query groups (boxes
as queries, denoising groups) decoded beside the matching queries under one attention mask, and a
gather of variable-length tensors over ranks. Methods compose them; none of them computes a loss.

Attention masks are ``nn.MultiheadAttention``'s: ``(N, N)`` bool, True = blocked, rows the queries that
attend. The query layout is ``[box-query groups | denoising groups | matching queries]``, as Semi-DETR's
code orders its consistency and denoising groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ssodlib.data.transforms import clip_boxes, transform_boxes
from ssodlib.models.detectors.base import Detections, ImageBatch
from ssodlib.models.detr.boxes import normalize_boxes
from ssodlib.models.detr.denoising import DenoisingLayout
from ssodlib.models.detr.detector import (DecoderOutput, DETRBase, Features, InferenceSettings, Memory, Queries)


# -- whole passes -----------------------------------------------------------------------------------
@dataclass
class DETRPass:
    """A model on a list of images up to its queries: the padded ``batch``, the projected ``features``,
    the encoder ``memory`` and the family's matching ``queries`` (two-stage encoder outputs included)."""

    batch: ImageBatch
    features: Features
    memory: Memory
    queries: Queries


def detr_pass(model: DETRBase, images: Sequence[Tensor]) -> DETRPass:
    """Preprocess, features, encoder and query selection (with gradient when the caller has it on)."""
    batch = model.preprocess(list(images))
    features = model.features(batch)
    memory = model.encode(features)
    return DETRPass(batch, features, memory, model.select_queries(memory))


@dataclass
class DETRTeacherPass(DETRPass):
    """The teacher on the weak views: :class:`DETRPass` plus its detections (pixel ``xyxy`` of each weak
    view, scores descending)."""

    detections: list[Detections]


def _take(det: Detections, index: Tensor) -> Detections:
    return Detections(det.boxes[index], det.scores[index], det.labels[index], det.class_probs[index],
                      extra={k: v[index] for k, v in det.extra.items()})


@torch.no_grad()
def detr_teacher_pass(teacher: DETRBase, weak: Sequence[Tensor], *, nms_iou: float | None, score_thresh: float,
                      max_dets: int) -> DETRTeacherPass:
    """The teacher's last decoder layer on the ``(3, h, w)`` weak views as detections: every query x class
    above ``score_thresh``, class-wise NMS at ``nms_iou``, then the ``max_dets`` best (mmdetection's
    ``multiclass_nms(score_thr, nms, max_num)``, which Semi-DETR's pseudo labels use)."""
    p = detr_pass(teacher, weak)
    out = teacher.decode_queries(p.memory, p.queries)
    q, c = out.logits.shape[-2:]
    settings = InferenceSettings(detections_per_img=q * c, score_thresh=score_thresh, nms_iou=nms_iou)
    dets = teacher.postprocess(out.logits[-1], out.boxes[-1], p.batch.image_sizes, settings=settings)
    dets = [_take(d, torch.argsort(d.scores, descending=True, stable=True)[:max_dets]) for d in dets]
    return DETRTeacherPass(p.batch, p.features, p.memory, p.queries, dets)


# -- boxes between views ------------------------------------------------------------------------------
def boxes_to_view(boxes: Tensor, matrix: Tensor, size: tuple[int, int], *,
                  min_size: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(K, 4)`` pixel ``xyxy`` boxes of one view through the ``(3, 3)`` view-to-view ``matrix`` into a
    view of ``size`` ``(h, w)``: the clipped boxes ``(K, 4)`` and a keep mask ``(K,)`` of those whose sides
    are at least ``min_size`` pixels there (index-aligned with the input, so a box keeps its identity in
    both views)."""
    mapped = transform_boxes(boxes.float(), matrix.to(boxes.device).float())
    return clip_boxes(mapped, height=size[0], width=size[1], min_size=min_size)


def normalized_queries_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel ``xyxy`` ``(K, 4)`` as the decoder's normalised ``cxcywh`` references, clamped to ``[0, 1]``."""
    return normalize_boxes(boxes, size).clamp(0.0, 1.0)


# -- ranks ----------------------------------------------------------------------------------------------
def all_gather_1d(values: Tensor) -> Tensor:
    """The concatenation over every rank of a 1-D tensor whose length may differ by rank (rank order);
    ``values`` itself without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    world = dist.get_world_size()
    n = torch.tensor([values.numel()], device=values.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = values.new_zeros(longest)
    padded[:values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])


# -- extra query groups ----------------------------------------------------------------------------
def cross_view_attention_mask(box_group_sizes: Sequence[int], dn_group_sizes: Sequence[int], num_matching: int, *,
                              box_groups_see_matching: bool = False,
                              device: torch.device | str | None = None) -> Tensor:
    """``(N, N)`` bool mask (True = blocked) of ``[box groups | denoising groups | matching queries]``:
    every group sees only itself, and denoising groups also the matching queries (DN-DETR); box groups
    see the matching queries only with ``box_groups_see_matching`` (Semi-DETR's code); the matching
    queries see only themselves."""
    sizes = list(box_group_sizes) + list(dn_group_sizes)
    extra = sum(sizes)
    n = extra + num_matching
    mask = torch.zeros((n, n), dtype=torch.bool, device=device)
    mask[extra:, :extra] = True
    start = 0
    for i, size in enumerate(sizes):
        mask[start:start + size, :extra] = True
        mask[start:start + size, start:start + size] = False
        if i < len(box_group_sizes) and not box_groups_see_matching:
            mask[start:start + size, extra:] = True
        start += size
    return mask


@dataclass
class BoxQueries:
    """Boxes as decoder queries in ``groups`` identical groups of ``group_size`` (the batch's largest box
    count) per image: ``content`` ``(B, P, D)``, ``boxes`` ``(B, P, 4)`` normalised ``cxcywh`` references
    in the decoding model's view, ``valid`` ``(B, P)`` False at padding (content 0, box at the centre);
    ``P = groups * group_size``, image ``b``'s ``n_b`` boxes first in each group, in their given order."""

    content: Tensor
    boxes: Tensor
    valid: Tensor
    groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        return self.groups * self.group_size

    def group_sizes(self) -> list[int]:
        return [self.group_size] * self.groups


def box_queries(contents: Tensor, boxes: Sequence[Tensor], *, groups: int) -> BoxQueries | None:
    """Lay out ``contents`` ``(N, D)`` (the boxes of every image, concatenated in image order) and the
    per-image normalised ``cxcywh`` references ``boxes[b]`` ``(n_b, 4)`` as :class:`BoxQueries`; ``None``
    when no image has a box."""
    counts = [len(b) for b in boxes]
    size = max(counts, default=0)
    if size == 0:
        return None
    n_img, d = len(boxes), contents.shape[-1]
    total = groups * size
    content = contents.new_zeros((n_img, total, d))
    refs = contents.new_full((n_img, total, 4), 0.5)
    valid = torch.zeros((n_img, total), dtype=torch.bool, device=contents.device)
    start = 0
    for b, (count, bx) in enumerate(zip(counts, boxes)):
        pos = (torch.arange(groups, device=contents.device)[:, None] * size
               + torch.arange(count, device=contents.device)[None]).reshape(-1)
        content[b, pos] = contents[start:start + count].repeat(groups, 1)
        refs[b, pos] = bx.to(refs).repeat(groups, 1)
        valid[b, pos] = True
        start += count
    return BoxQueries(content, refs, valid, groups, size)


def reference_dim(model: DETRBase) -> int:
    """The size of the family's query references: 4 (boxes) for two-stage models (DINO), else 2 (points)."""
    return 4 if model.two_stage else 2


def decode_with_extras(model: DETRBase, memory: Memory, queries: Queries | None, *,
                       box_queries: BoxQueries | None = None, denoising: DenoisingLayout | None = None,
                       box_groups_see_matching: bool = False
                       ) -> tuple[DecoderOutput | None, DecoderOutput | None, DecoderOutput | None]:
    """Decode ``[box queries | denoising groups | matching queries]`` (any part may be absent) under
    :func:`cross_view_attention_mask`; the three parts' outputs (``None`` for an absent part). Families
    whose decoder takes query positions get the box queries' from ``model.roi_query_head.position``."""
    contents, refs, pos, parts = [], [], [], []
    ref_dtype = queries.boxes.dtype if queries is not None else torch.float32
    if box_queries is not None:  # point references (plain Deformable DETR): the box centres
        contents.append(box_queries.content)
        refs.append(box_queries.boxes[..., :reference_dim(model)].to(ref_dtype))
        pos.append(None if model.box_query_pos else model.roi_query_head.position(box_queries.boxes))
        parts.append(box_queries.num_queries)
    if denoising is not None:
        contents.append(model.denoising_content(denoising).to(memory.memory.dtype))
        refs.append(denoising.boxes.to(ref_dtype))
        pos.append(None)
        parts.append(denoising.num_queries)
    if queries is not None:
        contents.append(queries.content)
        refs.append(queries.boxes)
        pos.append(queries.query_pos)
        parts.append(queries.content.shape[1])
    box_sizes = box_queries.group_sizes() if box_queries is not None else []
    dn_sizes = [denoising.group_size] * denoising.groups if denoising is not None else []
    num_matching = queries.content.shape[1] if queries is not None else 0
    mask = None
    if box_sizes or dn_sizes:
        mask = cross_view_attention_mask(box_sizes, dn_sizes, num_matching,
                                         box_groups_see_matching=box_groups_see_matching,
                                         device=memory.memory.device)
    query_pos = None if model.box_query_pos else torch.cat(pos, 1)
    out = model.decode(memory, torch.cat(contents, 1), torch.cat(refs, 1), query_pos=query_pos, self_attn_mask=mask)
    split = iter(out.split(parts) if len(parts) > 1 else [out])
    return (next(split) if box_queries is not None else None, next(split) if denoising is not None else None,
            next(split) if queries is not None else None)


__all__ = ["BoxQueries", "DETRPass", "DETRTeacherPass", "all_gather_1d", "box_queries", "boxes_to_view",
           "cross_view_attention_mask", "decode_with_extras", "detr_pass", "detr_teacher_pass",
           "normalized_queries_boxes", "reference_dim"]
