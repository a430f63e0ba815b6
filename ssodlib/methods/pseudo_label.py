"""Pseudo-label mean teacher: the sparse-to-dense baseline that all five papers start from.

Unbiased Teacher (Liu et al., 2021, https://arxiv.org/abs/2102.09480) as the papers describe their
baseline: the EMA teacher detects on the weak view, detections above a score threshold (after the
detector's NMS) become pseudo boxes, they are mapped into the student's strong view by the views'
matrices, and the student is trained on them with the RPN objectness and RoI classification losses
(focal loss when ``cls_loss='focal'``); box regression on pseudo boxes is a switch (off in Unbiased
Teacher, on in Soft Teacher / DTG-SSOD's baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssodlib.data.transforms import clip_boxes, transform_boxes
from ssodlib.engine.data import Batch
from ssodlib.methods.base import Method, StepContext
from ssodlib.models.detector import Detections, RoIOutput, RoISamples, RPNOutput


@dataclass(frozen=True, kw_only=True)
class PseudoLabelOptions:
    score_thresh: float = 0.7  # Unbiased Teacher's threshold
    box_regression: bool = False  # RoI box loss on pseudo boxes
    rpn_regression: bool = False  # RPN box loss on pseudo boxes
    # diagnostic upper bound, not a method: the unlabeled images' withheld ground truth replaces the
    # teacher's detections, so a run measures what perfect pseudo labels would add through this pipeline
    oracle: bool = False


def select_pseudo_labels(det: Detections, *, score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher detections at or above ``score_thresh``: ``(K, 4)`` boxes, ``(K,)`` labels, scores."""
    keep = det.scores >= score_thresh
    return det.boxes[keep], det.labels[keep], det.scores[keep]


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


def mean_teacher_losses(student: nn.Module, batch: Batch, pseudo_boxes: list[Tensor], pseudo_labels: list[Tensor], *,
                        unsup_weight: float, box_regression: bool, rpn_regression: bool,
                        ctx: StepContext | None = None) -> dict[str, Tensor]:
    """Supervised losses on the labeled images and weighted unsupervised losses on the strong views,
    from one student pass over all images. Pseudo boxes are in the student's view."""
    sp = student_pass(student, batch, pseudo_boxes, pseudo_labels)
    unl = sp.unl
    unsup = {**student.rpn_loss(sp.rpn.select(unl), pseudo_boxes, regression=rpn_regression),
             **student.roi_loss(sp.rois.select(unl), sp.samples.select(unl), regression=box_regression)}
    out = {**sp.supervised, **{f"{k}_unsup": v * unsup_weight for k, v in unsup.items()}}
    if ctx is not None:
        log_student_rois(ctx, sp, batch)
    return out


class PseudoLabel(Method):
    """Score-threshold pseudo labels from an EMA teacher (see the module docstring)."""

    name = "pseudo_label"
    uses_teacher = True
    uses_unlabeled = True
    Options = PseudoLabelOptions

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        if ctx.burn_in or batch.num_unlabeled == 0:
            return student.supervised_losses(batch.images, batch.boxes, batch.labels)
        with torch.no_grad():
            dets = ctx.teacher.predict(batch.weak)
        pseudo_boxes, pseudo_labels = [], []
        for det, m, strong, gt_b, gt_l in zip(dets, batch.teacher_to_student, batch.strong, batch.gt_weak_boxes,
                                              batch.gt_weak_labels):
            if self.options.oracle:
                boxes, labels, scores = gt_b, gt_l, torch.ones(len(gt_l), device=gt_b.device)
            else:
                boxes, labels, scores = select_pseudo_labels(det, score_thresh=self.options.score_thresh)
            ctx.stats.add_image(boxes=boxes, labels=labels, scores=scores, gt_boxes=gt_b, gt_labels=gt_l)
            mapped, keep = to_student_view(boxes, m, strong.shape[1:])
            pseudo_boxes.append(mapped[keep])
            pseudo_labels.append(labels[keep])
        return mean_teacher_losses(student, batch, pseudo_boxes, pseudo_labels, unsup_weight=ctx.unsup_weight,
                                   box_regression=self.options.box_regression,
                                   rpn_regression=self.options.rpn_regression, ctx=ctx)
