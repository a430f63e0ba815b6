"""Detection-level model ensemble: several detectors' post-NMS detections of one image merged into one
set, for pseudo labels from several teachers and for scoring several students as one model.

Our choice (Rethinking Pseudo Labels' Table 3 uses "a simplified model ensemble method from [49]",
which neither paper specifies): concatenate every model's post-NMS detections of the image, run
class-wise NMS over the union (the members' own IoU threshold, 0.5 by default) and keep the
``max_detections`` highest-scoring boxes (the members' own ``detections_per_img``, 100 by default).
A box that several models agree on keeps the highest of their scores; a box only one model finds
survives, so the ensemble recalls what either model recalls.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ssodlib.io import InputError
from ssodlib.models.detectors.base import Detections

DEFAULT_IOU = 0.5  # the detectors' default class-wise NMS threshold (FasterRCNN's nms_thresh)
DEFAULT_MAX_DETECTIONS = 100  # and their default detections_per_img


def ensemble_detections(dets: Sequence[Detections], *, iou_threshold: float = DEFAULT_IOU,
                        max_detections: int = DEFAULT_MAX_DETECTIONS) -> Detections:
    """One image's detections from several models merged: the ``(sum K_i, ...)`` concatenation of
    ``boxes`` ``(K_i, 4)``, ``scores``, ``labels``, ``class_probs`` ``(K_i, C + 1)`` and ``quality``
    (only when every model has one, else ``None``), then class-wise NMS at ``iou_threshold`` and the
    top ``max_detections`` by score (in descending score order). Candidates and clusters are dropped:
    they index one model's pre-NMS boxes."""
    if not dets:
        raise ValueError("ensemble_detections needs the detections of at least one model")
    boxes = torch.cat([d.boxes.float() for d in dets])
    scores = torch.cat([d.scores.float() for d in dets])
    labels = torch.cat([d.labels for d in dets])
    probs = torch.cat([d.class_probs.float() for d in dets])
    has_quality = all(d.quality is not None for d in dets)
    quality = torch.cat([d.quality.float() for d in dets]) if has_quality else None
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]  # sorted by score, descending
    return Detections(boxes[keep], scores[keep], labels[keep], probs[keep],
                      quality=None if quality is None else quality[keep])


def frozen_copy(model: nn.Module, weights: dict[str, Tensor], *, source: str, fix: str) -> nn.Module:
    """A copy of ``model`` with ``weights`` (another run's), in eval mode without gradients: an ensemble
    member. Weights of another detector raise :class:`InputError` naming ``source`` and ``fix``."""
    member = copy.deepcopy(model)
    try:
        member.load_state_dict(weights)
    except RuntimeError as e:  # missing or misshapen weights: another detector
        raise InputError(f"{source}: {e}. Fix: {fix}") from e
    return member.eval().requires_grad_(False)


def _member_setting(member: nn.Module, name: str, default: float) -> float:
    """A member's own NMS setting (``config.nms_thresh``, ``config.detections_per_img``), else ``default``."""
    return getattr(getattr(member, "config", None), name, default)


class EnsembleDetector(nn.Module):
    """Several detectors of one family seen as one: :meth:`predict` (all that
    :func:`ssodlib.evaluation.detector_eval.evaluate_detector` calls, with ``train`` / ``eval``)
    returns each image's :func:`ensemble_detections` of the members' detections. ``iou_threshold`` /
    ``max_detections`` default to the first member's ``nms_thresh`` / ``detections_per_img``."""

    def __init__(self, *, members: Sequence[nn.Module], iou_threshold: float | None = None,
                 max_detections: int | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        first = self.members[0]
        self.iou_threshold = iou_threshold if iou_threshold is not None else _member_setting(
            first, "nms_thresh", DEFAULT_IOU)
        self.max_detections = max_detections if max_detections is not None else int(_member_setting(
            first, "detections_per_img", DEFAULT_MAX_DETECTIONS))

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], *, with_candidates: bool = False) -> list[Detections]:
        """Per ``(3, h, w)`` image, the ensembled post-NMS detections of every member (in its pixels)."""
        if with_candidates:
            raise ValueError("an ensemble has no NMS candidates: they belong to one member's pre-NMS boxes")
        per_member = [m.predict(images) for m in self.members]
        return [self.ensemble(list(image_dets)) for image_dets in zip(*per_member)]

    def ensemble(self, dets: Sequence[Detections]) -> Detections:
        """:func:`ensemble_detections` with this ensemble's NMS settings."""
        return ensemble_detections(dets, iou_threshold=self.iou_threshold, max_detections=self.max_detections)


__all__ = ["EnsembleDetector", "ensemble_detections"]
