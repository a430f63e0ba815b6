"""The two-stage passes every Faster R-CNN method shares: the student on labeled images and strong
views, the teacher on weak views, the teacher's RoI head on the student's RoIs, and boxes mapped
between the views. Methods compose them; none of them computes a loss of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from ssodlib.data.batch import Batch
from ssodlib.data.transforms import clip_boxes, transform_boxes
from ssodlib.methods.base import StepContext
from ssodlib.models.detectors.base import Detections, ImageBatch
from ssodlib.models.detectors.faster_rcnn import FasterRCNN, RoIOutput, RoISamples, RPNOutput


def to_student_view(boxes: Tensor, matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """Map ``(K, 4)`` teacher-view boxes into the student's view; returns them clipped plus a keep mask."""
    mapped = transform_boxes(boxes.float(), matrix.to(boxes.device))
    return clip_boxes(mapped, height=size[0], width=size[1], min_size=2.0)


def select_pseudo_labels(det: Detections, *, score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher detections at or above ``score_thresh``: ``(K, 4)`` boxes, ``(K,)`` labels, scores."""
    keep = det.scores >= score_thresh
    return det.boxes[keep], det.labels[keep], det.scores[keep]


# one image's selection: (teacher detections, withheld boxes, withheld labels) -> (K, 4) boxes, (K,) labels, scores
Selection = Callable[[Detections, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def pseudo_labels_in_student_view(ctx: StepContext, detections: Sequence[Detections], batch: Batch,
                                  select: Selection, *, log: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """Per unlabeled image, the teacher-view pseudo labels that ``select`` picks from its detections,
    logged against the withheld ground truth (``log``), then mapped into the student's view (boxes the
    mapping leaves outside the view dropped): ``(K', 4)`` boxes and ``(K',)`` labels per image."""
    boxes_out, labels_out = [], []
    for det, m, strong, gt_b, gt_l in zip(detections, batch.teacher_to_student, batch.strong,
                                          batch.gt_weak_boxes, batch.gt_weak_labels):
        boxes, labels, scores = select(det, gt_b, gt_l)
        if log:
            ctx.stats.add_image(boxes=boxes, labels=labels, scores=scores, gt_boxes=gt_b, gt_labels=gt_l)
        mapped, keep = to_student_view(boxes, m, strong.shape[1:])
        boxes_out.append(mapped[keep])
        labels_out.append(labels[keep])
    return boxes_out, labels_out


@dataclass
class StudentPass:
    """One student pass over the labeled images and the strong views: RPN outputs, sampled RoIs and
    RoI outputs of all images, the supervised losses of the labeled ones; ``unl`` selects the rest."""

    rpn: RPNOutput
    samples: RoISamples
    rois: RoIOutput
    supervised: dict[str, Tensor]
    unl: slice


def student_pass(student: nn.Module, batch: Batch, targets: list[Tensor], target_labels: list[Tensor], *,
                 sample_unlabeled: Callable[[list[Tensor]], RoISamples] | None = None) -> StudentPass:
    """``targets`` / ``target_labels``: per unlabeled image, ``(K, 4)`` boxes in the student's view and ``(K,)``
    labels that RoI sampling matches against, after the labeled images' ground truth. ``sample_unlabeled``
    (the strong views' proposals -> their samples) replaces the detector's sampling on unlabeled images."""
    n_lab = len(batch.images)
    sb = student.preprocess(batch.images + batch.strong)
    feats = student.features(sb)
    rpn = student.rpn(feats, sb)
    props, _ = student.proposals(rpn, sb)
    if sample_unlabeled is None:
        samples = student.sample_rois(props, batch.boxes + targets, batch.labels + target_labels)
    else:
        lab_s, unl_s = student.sample_rois(props[:n_lab], batch.boxes, batch.labels), sample_unlabeled(props[n_lab:])
        samples = RoISamples(*(a + b for a, b in zip((lab_s.proposals, lab_s.labels, lab_s.matched_boxes,
                                                      lab_s.matched_index),
                                                     (unl_s.proposals, unl_s.labels, unl_s.matched_boxes,
                                                      unl_s.matched_index))))
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
