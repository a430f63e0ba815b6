"""Pseudo-label mean teacher: the sparse-to-dense baseline that all five papers start from.

Unbiased Teacher (Liu et al., 2021, https://arxiv.org/abs/2102.09480) as the papers describe their
baseline: the EMA teacher detects on the weak view, detections above a score threshold (after the
detector's NMS) become pseudo boxes, they are mapped into the student's strong view by the views'
matrices, and the student is trained on them with the RPN objectness and RoI classification losses
(focal loss when ``cls_loss='focal'``); box regression on pseudo boxes is a switch (off in Unbiased
Teacher, on in Soft Teacher / DTG-SSOD's baseline).

``background_weighting`` is Soft Teacher's background reliability (Xu et al., 2021,
https://arxiv.org/abs/2106.09018, Eq. 2-3): the student's background RoIs on the unlabeled images
are mapped into the teacher's view and scored by the teacher's RoI head; each background RoI's
classification loss is weighted by the teacher's background probability, foreground RoIs by 1, and
the sum is divided by the sum of the weights (as Soft Teacher's code). An object the threshold
missed but the teacher half-recognises then weighs little as background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image

from ssodlib.data.transforms import clip_boxes, transform_boxes
from ssodlib.engine.data import Batch
from ssodlib.io import InputError
from ssodlib.methods.base import Method, StepContext
from ssodlib.models.detector import Detections, FasterRCNN, ImageBatch, RoIOutput, RoISamples, RPNOutput


@dataclass(frozen=True, kw_only=True)
class PseudoLabelOptions:
    score_thresh: float = 0.7  # Unbiased Teacher's threshold
    box_regression: bool = False  # RoI box loss on pseudo boxes
    rpn_regression: bool = False  # RPN box loss on pseudo boxes
    background_weighting: bool = False  # Soft Teacher: background RoIs weighted by the teacher's background score
    # diagnostic upper bound, not a method: the unlabeled images' withheld ground truth replaces the
    # teacher's detections, so a run measures what perfect pseudo labels would add through this pipeline
    oracle: bool = False
    # diagnostic: only the ground-truth boxes that a teacher box at score_thresh (any class) overlaps at
    # IoU >= 0.5, with their true boxes and classes: the teacher's recall without its errors
    oracle_found_only: bool = False
    # with oracle: each ground-truth box is kept with this probability at each visit, a random subset of
    # the objects at a chosen recall (against oracle_found_only: the teacher's own subset)
    oracle_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.oracle_fraction <= 1.0:
            raise InputError(f"pseudo_label option oracle_fraction={self.oracle_fraction} is not a probability. "
                             "Fix: a value in [0, 1].")
        if self.oracle_fraction < 1.0 and not self.oracle:
            raise InputError("pseudo_label option oracle_fraction subsamples the oracle's ground truth. "
                             "Fix: add oracle: true, or drop oracle_fraction.")


def select_pseudo_labels(det: Detections, *, score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher detections at or above ``score_thresh``: ``(K, 4)`` boxes, ``(K,)`` labels, scores."""
    keep = det.scores >= score_thresh
    return det.boxes[keep], det.labels[keep], det.scores[keep]


def found_ground_truth(boxes: Tensor, gt_boxes: Tensor, *, iou_thresh: float = 0.5) -> Tensor:
    """``(G,)`` mask of the ground-truth boxes that one of the ``(K, 4)`` boxes overlaps at ``iou_thresh``."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(gt_boxes), dtype=torch.bool, device=gt_boxes.device)
    return (box_iou(gt_boxes.float(), boxes.float().to(gt_boxes.device)) >= iou_thresh).any(1)


def to_student_view(boxes: Tensor, matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """Map ``(K, 4)`` teacher-view boxes into the student's view; returns them clipped plus a keep mask."""
    mapped = transform_boxes(boxes.float(), matrix.to(boxes.device))
    return clip_boxes(mapped, height=size[0], width=size[1], min_size=2.0)


@dataclass
class StudentPass:
    """One student pass over the labeled images and the strong views: RPN outputs, sampled RoIs and
    RoI outputs of all images, the supervised losses of the labeled ones; ``unl`` selects the rest."""

    rpn: RPNOutput
    samples: RoISamples
    rois: RoIOutput
    supervised: dict[str, Tensor]
    unl: slice


def student_pass(student: nn.Module, batch: Batch, targets: list[Tensor], target_labels: list[Tensor]) -> StudentPass:
    """``targets`` / ``target_labels``: per unlabeled image, ``(K, 4)`` boxes in the student's view and ``(K,)``
    labels that RoI sampling matches against, after the labeled images' ground truth."""
    n_lab = len(batch.images)
    sb = student.preprocess(batch.images + batch.strong)
    feats = student.features(sb)
    rpn = student.rpn(feats, sb)
    props, _ = student.proposals(rpn, sb)
    samples = student.sample_rois(props, batch.boxes + targets, batch.labels + target_labels)
    rois = student.roi_head(feats, samples.proposals, sb)
    lab = slice(0, n_lab)
    supervised = {**student.rpn_loss(rpn.select(lab), batch.boxes),
                  **student.roi_loss(rois.select(lab), samples.select(lab))}
    return StudentPass(rpn, samples, rois, supervised, slice(n_lab, None))


def log_student_rois(ctx: StepContext, sp: StudentPass, batch: Batch) -> None:
    """The unlabeled images' sampled RoIs as true / false positives and false negatives (diagnostics)."""
    for props_b, labels_b, gt_b, gt_l in zip(sp.samples.proposals[sp.unl], sp.samples.labels[sp.unl],
                                             batch.gt_strong_boxes, batch.gt_strong_labels):
        ctx.stats.add_rois(roi_boxes=props_b, roi_labels=labels_b, gt_boxes=gt_b, gt_labels=gt_l)


@dataclass
class TeacherPass:
    """The teacher on the weak views: its detections and what re-scoring RoIs needs."""

    detections: list[Detections]
    features: dict[str, Tensor]
    batch: ImageBatch


@torch.no_grad()
def teacher_pass(teacher: FasterRCNN, weak: list[Tensor], *, with_candidates: bool = False) -> TeacherPass:
    """The teacher's detections on the ``(3, h, w)`` weak views, keeping its features for :func:`teacher_on_rois`."""
    t_batch = teacher.preprocess(weak)
    t_feats = teacher.features(t_batch)
    t_props, _ = teacher.proposals(teacher.rpn(t_feats, t_batch), t_batch)
    dets = teacher.postprocess(teacher.roi_head(t_feats, t_props, t_batch), t_props, t_batch,
                               with_candidates=with_candidates)
    return TeacherPass(dets, t_feats, t_batch)


@torch.no_grad()
def teacher_on_rois(teacher: FasterRCNN, rois: Sequence[Tensor], tp: TeacherPass,
                    matrices: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The teacher's RoI head on per-image ``(P_b, 4)`` student-view RoIs mapped into the teacher's
    view by the inverse of each image's teacher-to-student ``(3, 3)`` matrix: ``(P, C + 1)`` logits
    and ``(P, C + 1, 4)`` refined boxes in the teacher's view."""
    mapped = []
    for props, matrix, size in zip(rois, matrices, tp.batch.image_sizes):
        inverse = torch.linalg.inv(matrix.double()).float().to(props.device)
        mapped.append(clip_boxes_to_image(transform_boxes(props.float(), inverse), size))
    t_rois = teacher.roi_head(tp.features, mapped, tp.batch)
    return t_rois.class_logits.float(), teacher.decode_boxes(t_rois, mapped).float()


def background_weights(teacher: FasterRCNN, samples: RoISamples, tp: TeacherPass,
                       matrices: Sequence[Tensor]) -> Tensor:
    """Soft Teacher's ``(R,)`` classification weights of the unlabeled images' sampled RoIs: the
    teacher's background probability for background RoIs, 1 for foreground ones."""
    labels = torch.cat(samples.labels)
    weights = torch.ones(len(labels), device=labels.device)
    background = labels == 0
    if background.any():
        masks = background.split([len(p) for p in samples.proposals])
        logits, _ = teacher_on_rois(teacher, [p[m] for p, m in zip(samples.proposals, masks)], tp, matrices)
        weights[background] = logits.softmax(-1)[:, 0].to(weights)
    return weights


class PseudoLabel(Method):
    """Score-threshold pseudo labels from an EMA teacher (see the module docstring)."""

    name = "pseudo_label"
    uses_teacher = True
    uses_unlabeled = True
    Options = PseudoLabelOptions

    def image_pseudo_labels(self, det: Detections, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One image's ``(K, 4)`` boxes, ``(K,)`` labels and scores: the teacher's detections at the
        threshold, or under the oracle switches the withheld ground truth (scores 1)."""
        o = self.options
        boxes, labels, scores = select_pseudo_labels(det, score_thresh=o.score_thresh)
        if not (o.oracle or o.oracle_found_only):
            return boxes, labels, scores
        if o.oracle_found_only:
            keep = found_ground_truth(boxes, gt_boxes)
        elif o.oracle_fraction < 1.0:
            keep = torch.rand(len(gt_labels), device=gt_boxes.device) < o.oracle_fraction
        else:
            keep = torch.ones(len(gt_labels), dtype=torch.bool, device=gt_boxes.device)
        return gt_boxes[keep], gt_labels[keep], torch.ones(int(keep.sum()), device=gt_boxes.device)

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        if ctx.burn_in or batch.num_unlabeled == 0:
            return student.supervised_losses(batch.images, batch.boxes, batch.labels)
        tp = teacher_pass(ctx.teacher, batch.weak)
        pseudo_boxes, pseudo_labels = [], []
        for det, m, strong, gt_b, gt_l in zip(tp.detections, batch.teacher_to_student, batch.strong,
                                              batch.gt_weak_boxes, batch.gt_weak_labels):
            boxes, labels, scores = self.image_pseudo_labels(det, gt_b, gt_l)
            ctx.stats.add_image(boxes=boxes, labels=labels, scores=scores, gt_boxes=gt_b, gt_labels=gt_l)
            mapped, keep = to_student_view(boxes, m, strong.shape[1:])
            pseudo_boxes.append(mapped[keep])
            pseudo_labels.append(labels[keep])
        sp = student_pass(student, batch, pseudo_boxes, pseudo_labels)
        unl = sp.unl
        samples = sp.samples.select(unl)
        weights = (background_weights(ctx.teacher, samples, tp, batch.teacher_to_student)
                   if self.options.background_weighting else None)
        unsup = {**student.rpn_loss(sp.rpn.select(unl), pseudo_boxes, regression=self.options.rpn_regression),
                 **student.roi_loss(sp.rois.select(unl), samples, regression=self.options.box_regression,
                                    cls_weights=weights)}
        log_student_rois(ctx, sp, batch)
        return {**sp.supervised, **{f"{k}_unsup": v * ctx.unsup_weight for k, v in unsup.items()}}
