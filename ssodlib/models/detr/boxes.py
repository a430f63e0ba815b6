"""Box conventions of the detection transformers (Deformable DETR, arXiv 2010.04159; DINO, arXiv 2203.03605).

DETR heads predict ``cx, cy, w, h`` normalised by the **unpadded** image size ``(h, w)`` of each image
(the authors' code normalises targets by ``img_shape``, not by the padded batch size); the rest of
ssodlib speaks pixel ``x1, y1, x2, y2`` of the (view's) image. :func:`normalize_boxes` and
:func:`denormalize_boxes` convert between the two; :func:`inverse_sigmoid` is the clamped logit the
authors use to add box deltas to references (``eps = 1e-5`` as Deformable DETR's and mmdetection's ``inverse_sigmoid``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre-size boxes to corner boxes."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corner boxes to centre-size boxes."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def _scale(image_size: tuple[int, int], like: Tensor) -> Tensor:
    h, w = image_size
    return torch.tensor([w, h, w, h], dtype=like.dtype, device=like.device)


def normalize_boxes(boxes_xyxy: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Pixel ``xyxy`` ``(K, 4)`` of an image of unpadded ``(h, w)`` to normalised ``cxcywh`` (float32 at least)."""
    boxes = boxes_xyxy.to(torch.promote_types(boxes_xyxy.dtype, torch.float32))
    return xyxy_to_cxcywh(boxes / _scale(image_size, boxes))


def denormalize_boxes(boxes_cxcywh: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Normalised ``cxcywh`` ``(K, 4)`` to pixel ``xyxy`` of an image of unpadded ``(h, w)``."""
    boxes = boxes_cxcywh.to(torch.promote_types(boxes_cxcywh.dtype, torch.float32))
    return cxcywh_to_xyxy(boxes) * _scale(image_size, boxes)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


__all__ = ["cxcywh_to_xyxy", "denormalize_boxes", "inverse_sigmoid", "normalize_boxes", "xyxy_to_cxcywh"]
