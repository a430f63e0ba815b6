"""Unbiased Teacher for Semi-Supervised Object Detection (Liu et al., ICLR 2021,
https://arxiv.org/abs/2102.09480): the pseudo-label mean teacher, the sparse-to-dense baseline that
all five papers start from.

As the papers describe their baseline: the EMA teacher detects on the weak view, detections above a
score threshold (after the detector's NMS) become pseudo boxes, they are mapped into the student's
strong view by the views' matrices, and the student is trained on them with the RPN objectness and
RoI classification losses (focal loss when the detector's ``cls_loss='focal'``); box regression on
pseudo boxes is a switch (off in Unbiased Teacher, on in Soft Teacher / DTG-SSOD's baseline).

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
from torch import Tensor

from ssodlib.data.batch import Batch
from ssodlib.methods.base import JointLosses, StepContext, TeacherStudentMethod
from ssodlib.methods.rcnn_passes import (TeacherPass, log_student_rois, pseudo_labels_in_student_view,
                                         select_pseudo_labels, student_pass, teacher_on_rois, teacher_pass)
from ssodlib.models.detectors.base import Detections
from ssodlib.models.detectors.faster_rcnn import FasterRCNN, RoISamples


@dataclass(frozen=True, kw_only=True)
class PseudoLabelOptions:
    score_thresh: float = 0.7  # Unbiased Teacher's threshold
    box_regression: bool = False  # RoI box loss on pseudo boxes
    rpn_regression: bool = False  # RPN box loss on pseudo boxes
    background_weighting: bool = False  # Soft Teacher: background RoIs weighted by the teacher's background score


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


class PseudoLabel(TeacherStudentMethod):
    """Score-threshold pseudo labels from an EMA teacher (see the module docstring)."""

    name = "pseudo_label"
    Options = PseudoLabelOptions

    def image_pseudo_labels(self, det: Detections, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One image's ``(K, 4)`` boxes, ``(K,)`` labels and scores from the teacher's ``det``
        (``gt_*``: the withheld ground truth in the teacher's view, for diagnostic subclasses)."""
        return select_pseudo_labels(det, score_thresh=self.options.score_thresh)

    def unsupervised_losses(self, student: FasterRCNN, ctx: StepContext, batch: Batch) -> JointLosses:
        tp = teacher_pass(ctx.teacher, batch.weak)
        pseudo_boxes, pseudo_labels = pseudo_labels_in_student_view(ctx, tp.detections, batch, self.image_pseudo_labels)
        sp = student_pass(student, batch, pseudo_boxes, pseudo_labels)
        unl = sp.unl
        samples = sp.samples.select(unl)
        weights = (background_weights(ctx.teacher, samples, tp, batch.teacher_to_student)
                   if self.options.background_weighting else None)
        unsup = {**student.rpn_loss(sp.rpn.select(unl), pseudo_boxes, regression=self.options.rpn_regression),
                 **student.roi_loss(sp.rois.select(unl), samples, regression=self.options.box_regression,
                                    cls_weights=weights)}
        log_student_rois(ctx, sp, batch)
        return JointLosses(sp.supervised, unsup)
