"""CrossMatch: Improving Semi-Supervised Object Detection via Multi-Scale Consistency (Yu, Liu, Ma and
Kira, ICLR 2022 submission on OpenReview, 2021-09-29; it has no arXiv version, so the arXiv link is the
Unbiased Teacher baseline it is built on, https://arxiv.org/abs/2102.09480).

Unbiased Teacher (EMA teacher on the weak view, score-thresholded pseudo boxes, focal RoI loss, no box
regression on pseudo boxes) whose student learns from every FPN level P2-P5 while the teacher labels
at the level the size heuristic picks; the hard pseudo labels are joined by soft ones (the teacher's
class distribution on the student's RoIs) with a refined OHEM.

Equation -> function map:

* Eq. 1-3 (``L = L_s + beta L_u``, EMA, burn-in, supervised Faster R-CNN losses): the template
  (:class:`~ssodlib.methods.base.TeacherStudentMethod`, ``unsup_weight`` is beta) and the detector.
* Eq. 4 (heuristic level ``k = floor(k0 + log2(sqrt(wh) / 224))``, clamped to 2..5): :func:`heuristic_level`,
  which is what ``FasterRCNN.roi_head(level=None)`` pools by (torchvision's level mapper).
* Eq. 5 (hard labels across scales, ``L_p = L_rpn_cls + L_roi_cls``): :func:`select_hard_labels` (score
  >= delta after the teacher's NMS), :func:`multiscale_roi_outputs` (the same sampled RoIs pooled from
  each level with the shared box head) and :func:`hard_consistency_loss` (the RoI classification loss
  averaged over the levels); the RPN loss once.
* Eq. 6 (soft labels across scales): :func:`kl_per_roi` (``KL(p_t || p_s^k)`` over the ``C + 1``
  classes) and :func:`soft_consistency_loss` (per level the mean KL over its top-K RoIs, then the mean
  over levels).
* Refined OHEM (Sec. 3.3): :func:`ohem_select` (top-K by KL per level, no NMS) and :func:`ohem_k` (K
  ramped down by a cosine from all RoIs to K).
* Figures 1 and 4 (diagnostics): :func:`true_positive_rois`; the counts are logged through
  ``ctx.stats`` (see :meth:`CrossMatch.log_soft_rois`).

No official code exists. The closest public code is an early prototype inside Unbiased Teacher's
repository (facebookresearch/unbiased-teacher at commit 8cd8b34; attributed by its logs, not by the
authors). Facts taken from it where the paper is silent:

* the soft loss is ``KL(p_t || p_s)`` (``KLDivLoss(log p_s, p_t)``), summed over classes, the teacher's
  distribution including background;
* per level the mean over the top-K RoIs ranked by that KL, then the mean over the levels (Eq. 6
  prints a sum from k = 0 to M, an off-by-one; ``level_reduction='sum'`` is that sum over the levels);
* the OHEM ramp is a cosine from all RoIs to K that starts at the end of the burn-in (the prototype's
  ``START 2000``, ``RAMP_END 5000``, ``MIN_PROPOSAL 256``);
* the prototype adds the soft loss outside Unbiased Teacher's unsupervised weight (option
  ``soft_outside_unsup_weight``) and takes the soft branch's RoIs from the teacher's RPN (option
  ``soft_proposals='teacher'``).

Choices of this implementation (the paper is silent, ambiguous or contradicts itself):

* Whose RPN gives the soft branch's RoIs: Sec. 3.3 says "we first use the Student's region proposal
  network (RPN) to produce a list of RoIs" and two sentences later "We found the Teacher's RPN is more
  accurate ... and thus yields better performance"; the prototype uses the teacher's. Default
  ``soft_proposals='student'``: it is the procedure the section spells out, and Figure 4 ("RoIs sampled
  by the soft branch that the hard branch does not sample") is only defined when both branches draw
  their RoIs from one proposal list, the student's. ``'teacher'`` is the prototype's variant. The RoIs
  are the image's post-NMS proposals (top ``soft_max_rois`` by objectness when set), without the
  pseudo boxes added for sampling; the teacher scores them at the heuristic level after mapping them
  into the weak view (identity without geometric augmentation).
* Hard branch: RoIs are sampled once per image (the detector's matcher and sampler against the pseudo
  boxes) and the same RoIs are pooled from every level; re-sampling per level would no longer be a
  consistency across scales. ``lambda_hard`` weighs both hard terms (``L_p`` of Eq. 5).
* ``L_u = lambda_hard L_hard + lambda_soft L_soft`` inside beta (Eq. 1), unless
  ``soft_outside_unsup_weight``. The prototype's cosine re-weighting ``w L_soft + (1 - w) L_hard``
  (``WEIGHT_SCHEDULE``) and its box-offset consistency (``APPLY_REG``) are not in the paper and are
  left out.
* OHEM per image and level (``ohem_scope='image'``): the paper trains 8 unlabeled images on 8 GPUs, so
  the prototype's selection over its per-GPU batch is one image; ``'batch'`` selects the top-K over all
  unlabeled images of the step. The ranking is by KL, not cross-entropy (``CE = KL + H(p_t)`` would
  favour RoIs where the teacher is unsure). The ramp is a clean cosine over ``ohem_ramp_iters`` from
  the ramp start (the prototype divides by ``RAMP_END`` rather than its length, uses pi = 3.14 and
  jumps to K at iteration ``RAMP_END``).
* Two-pass OHEM (``ohem_two_pass='auto'``: on CPU): a no-grad pass pools all RoIs at every level and
  ranks them; a gradient pass pools only the kept RoIs. The box head has no dropout or batch norm, so
  the gradient equals that of the single pass that masks the other RoIs, at a fraction of RoIAlign's
  backward.
* The soft loss never reaches the RPN (proposals are detached) and uses the exact log-softmax (no
  +1e-7 as the prototype).
* ``multi_scale`` switches the student to every level of ``levels`` for whichever branches are on
  (Table 3's "Multi-Scale Features"); off, the student pools at the heuristic level as the teacher.
  With ``hard=False`` unlabeled images train no RPN. ``(soft, hard, multi_scale) = (False, True,
  False)`` computes exactly what ``pseudo_label`` computes with the same detector options.
* CrossMatch's multi-scale consistency is over FPN levels, not over input views: it declares no extra
  or down-scaled view. Its training scales are Unbiased Teacher's (detectron2's shorter side 640-800,
  longer side at most 1333), set by the paper rows of ``papers/crossmatch/experiments.yaml``.
* Inference uses the heuristic level (no overhead), as the paper says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from ssodlib.config import Rule, check_ranges
from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.io import InputError
from ssodlib.methods.base import JointLosses, RunInfo, StepContext, TeacherStudentMethod
from ssodlib.methods.rcnn_passes import (TeacherPass, pseudo_labels_in_student_view, select_pseudo_labels,
                                         teacher_on_rois, to_student_view)
from ssodlib.models.detectors.base import ImageBatch
from ssodlib.models.detectors.faster_rcnn import FasterRCNN, RoIOutput, RoISamples, RPNOutput
from ssodlib.models.losses import softmax_focal_loss

FPN_LEVELS = (2, 3, 4, 5)  # the RoI levels; P6 is the RPN's only


@dataclass(frozen=True, kw_only=True)
class CrossMatchOptions:
    """The switches of Tables 3, 4, 6 and Figures 3, 4, and the constants of Table 4 (COCO)."""

    hard: bool = True  # Table 3 "Hard Labels": Eq. 5
    soft: bool = True  # Table 3 "Soft Labels": Eq. 6
    multi_scale: bool = True  # Table 3 "Multi-Scale Features": the student at every level of `levels`
    levels: tuple[int, ...] = FPN_LEVELS  # the student's FPN levels (P2..P5)
    score_thresh: float = 0.7  # delta: hard pseudo labels (Table 4)
    lambda_hard: float = 1.0  # lambda_h (Table 4)
    lambda_soft: float = 1.0  # lambda_s (Table 4)
    soft_outside_unsup_weight: bool = False  # the prototype: lambda_s L_soft not multiplied by beta
    soft_proposals: str = "student"  # the soft branch's RoIs: "student" (Sec. 3.3, Fig. 4) | "teacher" (prototype)
    soft_max_rois: int | None = None  # cap on the soft branch's RoIs per image, top by objectness (cost); None: all
    ohem: bool = True  # refined OHEM in the soft branch (Fig. 3c "without OHEM" = False)
    ohem_k: int = 256  # K per level (per image); VOC 512 (Table 4); Fig. 3c sweeps 64 / 256 / 512
    ohem_scope: str = "image"  # top-K per image and level | "batch": over all unlabeled images of the step
    ohem_ramp_iters: int = 5000  # K ramps from all RoIs to K over this many iterations (0: K at once)
    ohem_ramp_start: int | None = None  # iteration the ramp starts at; None: the run's burn-in
    ohem_two_pass: str = "auto"  # "auto" (on CPU) | "always" | "never": rank without gradient, re-pool the kept
    level_reduction: str = "mean"  # soft loss over levels: "mean" (prototype) | "sum" (Eq. 6 as printed)
    supervised_multiscale: bool = False  # the prototype's SUPERVISED_CROSS_LEVEL: labeled RoIs at every level too


OPTION_RULES = {"levels": Rule(choices=FPN_LEVELS), "score_thresh": Rule(low=0, high=1),
                "lambda_hard": Rule(low=0), "lambda_soft": Rule(low=0),
                "soft_proposals": Rule(choices=("student", "teacher")), "soft_max_rois": Rule(low=1),
                "ohem_k": Rule(low=1), "ohem_scope": Rule(choices=("image", "batch")),
                "ohem_ramp_iters": Rule(low=0), "ohem_ramp_start": Rule(low=0),
                "ohem_two_pass": Rule(choices=("auto", "always", "never")),
                "level_reduction": Rule(choices=("mean", "sum"))}


# -- maths (pure functions) -----------------------------------------------------------------------
def heuristic_level(boxes: Tensor, *, canonical_scale: float = 224.0, canonical_level: int = 4,
                    min_level: int = 2, max_level: int = 5) -> Tensor:
    """Eq. 4: the ``(N,)`` FPN level of ``(N, 4)`` boxes, ``floor(k0 + log2(sqrt(w h) / 224))`` clamped to
    ``[2, 5]`` (torchvision's level mapper, with its ``1e-6``: ``sqrt(wh) = 112`` is level 3, 111 level 2)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).float()
    scale = (wh[:, 0] * wh[:, 1]).clamp(min=0).sqrt()
    level = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + 1e-6)
    return level.clamp(min_level, max_level).to(torch.int64)


# Eq. 5's hard labels: the teacher's post-NMS detections with score >= score_thresh (delta), the
# baseline's selection: (K, 4) boxes, (K,) labels 0..C-1 and (K,) scores
select_hard_labels = select_pseudo_labels


def multiscale_roi_outputs(student: FasterRCNN, features: dict[str, Tensor], rois: Sequence[Tensor],
                           batch: ImageBatch, levels: Sequence[int | None]) -> list[RoIOutput]:
    """The shared box head on per-image ``(P_b, 4)`` RoIs pooled from each FPN level of ``levels``
    (``None``: the heuristic level of Eq. 4): one :class:`RoIOutput` per level, ``class_logits``
    ``(sum P_b, C + 1)``."""
    return [student.roi_head(features, rois, batch, level=level) for level in levels]


def hard_consistency_loss(logits_per_level: Sequence[Tensor], labels: Tensor, *, gamma: float | None) -> Tensor:
    """Eq. 5's RoI term across scales: the classification loss of the same ``R`` sampled RoIs at each level,
    averaged over the levels. ``logits_per_level``: ``L`` tensors ``(R, C + 1)``; ``labels`` ``(R,)`` with 0
    background and ``1..C`` classes; ``gamma``: softmax focal loss (Unbiased Teacher's, 1.5) or ``None``
    for cross-entropy; each level's loss is the mean over its RoIs (as the detector's ``roi_loss``)."""
    per_level = []
    for logits in logits_per_level:
        if gamma is None:
            per_roi = F.cross_entropy(logits.float(), labels, reduction="none")
        else:
            per_roi = softmax_focal_loss(logits, labels, gamma=gamma, reduction="none")
        per_level.append(per_roi.mean() if per_roi.numel() else per_roi.sum())
    return sum(per_level) / len(per_level)


def kl_per_roi(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``(R,)`` ``KL(p_t || p_s) = sum_c p_t (log p_t - log p_s)`` of ``(R, C + 1)`` teacher and student
    logits (softmax over the classes, background included; the teacher detached)."""
    log_t = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def ohem_select(kl: Tensor, top_k: int | None) -> Tensor:
    """Refined OHEM's selection: indices of the ``top_k`` largest of ``(R,)`` per-RoI losses (no NMS);
    all ``R`` (in order) when ``top_k`` is ``None`` or at least ``R``."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for all RoIs), got {top_k}")
    if top_k is None or top_k >= len(kl):
        return torch.arange(len(kl), device=kl.device)
    return kl.detach().topk(top_k).indices


def soft_consistency_loss(teacher_logits: Tensor, student_logits_per_level: Sequence[Tensor], *,
                          top_k: int | None) -> Tensor:
    """Eq. 6 with refined OHEM: per level, ``KL(p_t || p_s^k)`` of each of the ``R`` RoIs, the mean over the
    ``top_k`` RoIs of largest KL of that level (``None``: all RoIs; levels may keep different RoIs), then
    the mean over the levels. ``teacher_logits`` ``(R, C + 1)`` (detached); ``student_logits_per_level``:
    ``L`` tensors ``(R, C + 1)``. No RoI: a zero that keeps the graph."""
    if len(teacher_logits) == 0:
        return sum(s.sum() for s in student_logits_per_level) * 0.0
    per_level = []
    for student_logits in student_logits_per_level:
        kl = kl_per_roi(teacher_logits, student_logits)
        per_level.append(kl[ohem_select(kl, top_k)].mean())
    return sum(per_level) / len(per_level)


def ohem_k(iteration: int, *, start: int, ramp_iters: int, num_rois: int, k: int) -> int:
    """Refined OHEM's ramp-down: the RoIs kept per level at ``iteration`` out of ``num_rois``:
    ``K + floor((N - K) (1 + cos(pi (t - start) / T)) / 2)`` for ``start <= t < start + T``, all ``N``
    before ``start``, ``K`` from ``start + T`` on (never more than ``N``)."""
    if num_rois <= k:
        return num_rois
    t = iteration - start
    if t < 0:
        return num_rois
    if t >= ramp_iters:
        return k
    return k + int(math.floor((num_rois - k) * 0.5 * (1.0 + math.cos(math.pi * t / ramp_iters))))


def true_positive_rois(boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                       iou_threshold: float = 0.5) -> Tensor:
    """``(N,)`` True where a foreground RoI (``labels`` 1..C; 0 background) overlaps a ground-truth box of its
    class (``gt_labels`` 0..C-1) by IoU ``>= iou_threshold`` (Figures 1b and 4b)."""
    fg = labels > 0
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    iou = box_iou(boxes.detach().float(), gt_boxes.float().to(boxes.device))
    same = labels[:, None] - 1 == gt_labels.to(labels.device)[None, :]
    return fg & ((iou >= iou_threshold) & same).any(1)


# -- teacher --------------------------------------------------------------------------------------
@dataclass
class TeacherOutputs:
    """The teacher on the weak views: what :func:`~ssodlib.methods.rcnn_passes.teacher_pass` gives, plus its
    per-image ``(P_b, 4)`` proposals and their ``(P_b, C + 1)`` class logits at the heuristic level."""

    tp: TeacherPass
    proposals: list[Tensor]
    logits: list[Tensor]


@torch.no_grad()
def teacher_outputs(teacher: FasterRCNN, weak: list[Tensor]) -> TeacherOutputs:
    """The same computation as ``teacher_pass`` (detections from the teacher's proposals at the heuristic
    level), keeping the proposals and their logits for the soft branch's ``'teacher'`` RoIs."""
    tb = teacher.preprocess(weak)
    feats = teacher.features(tb)
    props, _ = teacher.proposals(teacher.rpn(feats, tb), tb)
    rois = teacher.roi_head(feats, props, tb)
    dets = teacher.postprocess(rois, props, tb)
    return TeacherOutputs(TeacherPass(dets, feats, tb), props, list(rois.class_logits.float().split(rois.counts)))


def _zero(t: Tensor) -> Tensor:
    """A zero that keeps the graph connected (DDP needs every parameter to receive a gradient)."""
    return t.sum() * 0.0


@dataclass
class SoftRoIs:
    """The soft branch of one step: per unlabeled image the ``(P_b, 4)`` student-view RoIs, the ``(P, C + 1)``
    teacher logits of all of them, and per image the ``(P_b,)`` mask of the RoIs some level kept."""

    rois: list[Tensor]
    teacher_logits: Tensor
    kept: list[Tensor]


# -- the method -----------------------------------------------------------------------------------
class CrossMatch(TeacherStudentMethod):
    """Hard and soft multi-scale consistency with refined OHEM on Unbiased Teacher (module docstring)."""

    name = "crossmatch"
    detector_family = "faster_rcnn"
    Options = CrossMatchOptions

    def __init__(self, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(options=options)
        o = self.options
        check_ranges(o, OPTION_RULES, what=f"method {self.name!r} option")
        if not o.levels or len(set(o.levels)) != len(o.levels):
            raise InputError(f"method {self.name!r} option levels={o.levels!r} must name distinct FPN levels. "
                             f"Fix: a non-empty subset of {list(FPN_LEVELS)}.")
        if not (o.hard or o.soft):
            raise InputError(f"method {self.name!r} with hard=false and soft=false learns nothing from unlabeled "
                             "images. Fix: switch one branch on, or use method supervised.")
        self.run: RunInfo | None = None

    def setup(self, *, labeled: CocoDetection, unlabeled: CocoDetection | None, run: RunInfo,
              device: torch.device) -> None:
        self.run = run

    # -- schedule ---------------------------------------------------------------------------------
    @property
    def ramp_start(self) -> int:
        """The first iteration of the OHEM ramp: ``ohem_ramp_start``, else the run's burn-in (0 before setup)."""
        if self.options.ohem_ramp_start is not None:
            return self.options.ohem_ramp_start
        return self.run.burn_in if self.run is not None else 0

    def top_k(self, iteration: int, num_rois: int) -> int | None:
        """The RoIs kept per level of a group of ``num_rois`` at ``iteration`` (``None``: OHEM off)."""
        o = self.options
        if not o.ohem:
            return None
        return ohem_k(iteration, start=self.ramp_start, ramp_iters=o.ohem_ramp_iters, num_rois=num_rois, k=o.ohem_k)

    @property
    def student_levels(self) -> tuple[int | None, ...]:
        return tuple(self.options.levels) if self.options.multi_scale else (None,)

    def _two_pass(self, device: torch.device) -> bool:
        mode = self.options.ohem_two_pass
        return mode == "always" or (mode == "auto" and device.type == "cpu")

    # -- losses -----------------------------------------------------------------------------------
    def hard_labels(self, ctx: StepContext, t: TeacherOutputs, batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        """Per unlabeled image the hard pseudo boxes in the student's view and their labels (Fig. 1a logged)."""
        def select(det, *_):
            return select_hard_labels(det, score_thresh=self.options.score_thresh)

        return pseudo_labels_in_student_view(ctx, t.tp.detections, batch, select)

    def unsupervised_losses(self, student: FasterRCNN, ctx: StepContext, batch: Batch) -> JointLosses:
        o = self.options
        t = teacher_outputs(ctx.teacher, batch.weak)
        pseudo_boxes, pseudo_labels = self.hard_labels(ctx, t, batch)
        n_lab = len(batch.images)
        lab, unl = slice(0, n_lab), slice(n_lab, None)
        sb = student.preprocess(batch.images + batch.strong)
        feats = student.features(sb)
        rpn = student.rpn(feats, sb)
        props, _ = student.proposals(rpn, sb)
        empty = [p[:0] for p in props]
        if o.hard:
            samples = student.sample_rois(props, batch.boxes + pseudo_boxes, batch.labels + pseudo_labels)
        else:  # the unlabeled images sample no RoI
            lab_s = student.sample_rois(props[:n_lab], batch.boxes, batch.labels)
            no_labels = [p.new_zeros(0, dtype=torch.int64) for p in empty[n_lab:]]
            samples = RoISamples(lab_s.proposals + empty[n_lab:], lab_s.labels + no_labels,
                                 lab_s.matched_boxes + empty[n_lab:], lab_s.matched_index + no_labels)
        # the heuristic-level pass: the labeled images, and the unlabeled ones when the hard branch uses it
        single_hard = o.hard and not o.multi_scale
        rois = student.roi_head(feats, samples.proposals if single_hard else samples.proposals[:n_lab] + empty[n_lab:],
                                sb)
        supervised = {**student.rpn_loss(rpn.select(lab), batch.boxes),
                      **self.supervised_roi_loss(student, feats, sb, rois, samples, n_lab)}
        unsup: dict[str, Tensor] = {}
        if o.hard:
            unsup.update(self.hard_losses(student, feats, sb, rpn, rois, samples, pseudo_boxes, n_lab))
        soft = None
        if o.soft:
            soft_loss, soft = self.soft_loss(student, ctx, feats, sb, props[n_lab:], t, batch, n_lab)
            if o.multi_scale and o.level_reduction == "sum":
                soft_loss = soft_loss * len(o.levels)
            if o.soft_outside_unsup_weight:
                supervised["loss_soft_unsup"] = o.lambda_soft * soft_loss
            else:
                unsup["loss_soft"] = o.lambda_soft * soft_loss
        self.log_soft_rois(ctx, batch, samples.select(unl) if o.hard else None, soft)
        return JointLosses(supervised, unsup)

    def supervised_roi_loss(self, student: FasterRCNN, feats: dict[str, Tensor], sb: ImageBatch, rois: RoIOutput,
                            samples: RoISamples, n_lab: int) -> dict[str, Tensor]:
        """The labeled images' RoI losses: at the heuristic level, or with ``supervised_multiscale`` the
        classification averaged over ``levels`` (the box loss stays at the heuristic level)."""
        lab = slice(0, n_lab)
        losses = student.roi_loss(rois.select(lab), samples.select(lab))
        if self.options.supervised_multiscale:
            props = samples.proposals[:n_lab] + [p[:0] for p in samples.proposals[n_lab:]]
            outs = multiscale_roi_outputs(student, feats, props, sb, self.options.levels)
            losses["loss_cls"] = hard_consistency_loss([r.select(lab).class_logits for r in outs],
                                                       torch.cat(samples.labels[:n_lab]), gamma=_gamma(student))
        return losses

    def hard_losses(self, student: FasterRCNN, feats: dict[str, Tensor], sb: ImageBatch, rpn: RPNOutput,
                    rois: RoIOutput, samples: RoISamples, pseudo_boxes: list[Tensor], n_lab: int) -> dict[str, Tensor]:
        """Eq. 5 weighted by ``lambda_hard``: the RPN objectness loss once and the RoI classification loss of
        the sampled RoIs averaged over the student's levels (no box regression on pseudo boxes)."""
        o = self.options
        unl = slice(n_lab, None)
        if o.multi_scale:
            props = [p[:0] for p in samples.proposals[:n_lab]] + samples.proposals[n_lab:]
            outs = [r.select(unl) for r in multiscale_roi_outputs(student, feats, props, sb, o.levels)]
        else:
            outs = [rois.select(unl)]
        labels = torch.cat(samples.labels[n_lab:])
        loss_cls = hard_consistency_loss([r.class_logits for r in outs], labels, gamma=_gamma(student))
        rpn_losses = student.rpn_loss(rpn.select(unl), pseudo_boxes, regression=False)
        return {"loss_rpn_cls": o.lambda_hard * rpn_losses["loss_rpn_cls"], "loss_rpn_reg": rpn_losses["loss_rpn_reg"],
                "loss_cls": o.lambda_hard * loss_cls, "loss_box": sum(_zero(r.box_deltas) for r in outs)}

    def soft_rois(self, ctx: StepContext, student_props: list[Tensor], t: TeacherOutputs,
                  batch: Batch) -> tuple[list[Tensor], Tensor]:
        """Per unlabeled image the soft branch's ``(P_b, 4)`` student-view RoIs and the ``(P, C + 1)`` teacher
        logits of all of them (the teacher at the heuristic level in the weak view)."""
        o = self.options
        cap = o.soft_max_rois
        if o.soft_proposals == "student":
            rois = [p.detach()[:cap] for p in student_props]
            logits, _ = teacher_on_rois(ctx.teacher, rois, t.tp, batch.teacher_to_student)
            return rois, logits
        rois, logits = [], []
        for props, t_logits, m, strong in zip(t.proposals, t.logits, batch.teacher_to_student, batch.strong):
            mapped, keep = to_student_view(props, m, strong.shape[1:])
            rois.append(mapped[keep][:cap])
            logits.append(t_logits[keep][:cap])
        return rois, torch.cat(logits)

    def soft_loss(self, student: FasterRCNN, ctx: StepContext, feats: dict[str, Tensor], sb: ImageBatch,
                  student_props: list[Tensor], t: TeacherOutputs, batch: Batch, n_lab: int) -> tuple[Tensor, SoftRoIs]:
        """Eq. 6 with refined OHEM over the soft branch's RoIs (unweighted): per OHEM group (an image, or
        the batch) :func:`soft_consistency_loss` with the group's K of :func:`ohem_k`, then the mean over the
        groups; and which RoIs some level kept. ``student_props``: the unlabeled images' ``(P_b, 4)``
        proposals; ``n_lab`` labeled images lead the student's batch ``sb``."""
        o = self.options
        rois, t_logits = self.soft_rois(ctx, student_props, t, batch)
        counts = [len(r) for r in rois]
        pad = [sb.tensors.new_zeros((0, 4))] * n_lab  # the labeled images take no soft RoI
        levels = self.student_levels
        bounds = _group_bounds(counts, per_image=o.ohem_scope == "image")
        ks = [self.top_k(ctx.iteration, hi - lo) for lo, hi in bounds]
        if sum(counts) == 0:
            outs = multiscale_roi_outputs(student, feats, pad + rois, sb, levels)
            nothing = [r.new_zeros(0, dtype=torch.bool) for r in rois]
            return sum(_zero(r.class_logits) for r in outs), SoftRoIs(rois, t_logits, nothing)
        ranking = any(k is not None and k < hi - lo for k, (lo, hi) in zip(ks, bounds))
        if ranking and self._two_pass(sb.tensors.device):
            with torch.no_grad():
                full = [r.class_logits.float() for r in multiscale_roi_outputs(student, feats, pad + rois, sb, levels)]
            selected = [_select(t_logits, logits, bounds, ks) for logits in full]
            student_logits = []
            for level, logits, sel in zip(levels, full, selected):
                image = torch.bucketize(sel, torch.tensor(_offsets(counts)[1:], device=sel.device), right=True)
                local = sel - torch.tensor(_offsets(counts), device=sel.device)[image]
                kept = [rois[b][local[image == b]] for b in range(len(rois))]
                grad = student.roi_head(feats, pad + kept, sb, level=level).class_logits.float()
                student_logits.append(logits.index_put((sel,), grad))  # sel is image-major, as `kept`
        else:
            student_logits = [r.class_logits for r in multiscale_roi_outputs(student, feats, pad + rois, sb, levels)]
            selected = [_select(t_logits, logits.detach(), bounds, ks) for logits in student_logits]
        per_group = [soft_consistency_loss(t_logits[lo:hi], [s[lo:hi] for s in student_logits], top_k=k)
                     for (lo, hi), k in zip(bounds, ks) if hi > lo]
        kept = torch.zeros(sum(counts), dtype=torch.bool, device=t_logits.device)
        for sel in selected:
            kept[sel] = True
        # RoIs kept per level, summed over the groups (logged per image: the mean K of an image)
        ctx.stats.add_counts(cm_ohem_k=sum(hi - lo if k is None else min(k, hi - lo)
                                           for k, (lo, hi) in zip(ks, bounds)))
        return sum(per_group) / len(per_group), SoftRoIs(rois, t_logits, list(kept.split(counts)))

    # -- diagnostics ------------------------------------------------------------------------------
    def log_soft_rois(self, ctx: StepContext, batch: Batch, hard: RoISamples | None, soft: SoftRoIs | None) -> None:
        """Figure 1b: the hard branch's sampled RoIs as true / false positives and false negatives. Figure
        4a: the RoIs the soft branch trains (kept at some level) and those the hard branch did not sample
        (``soft_only``, with student proposals: the same boxes of one proposal list). Figure 4b: true
        positives among them (a soft RoI's class: the teacher's argmax) only hard / in both / only soft.
        Logged per image as ``pl_cm_*_per_image``."""
        for b, (gt_b, gt_l) in enumerate(zip(batch.gt_strong_boxes, batch.gt_strong_labels)):
            if hard is not None:
                ctx.stats.add_rois(roi_boxes=hard.proposals[b], roi_labels=hard.labels[b], gt_boxes=gt_b,
                                   gt_labels=gt_l)
            if soft is None:
                continue
            offsets = _offsets([len(r) for r in soft.rois])
            mask = soft.kept[b]
            soft_boxes = soft.rois[b][mask]
            soft_labels = soft.teacher_logits[offsets[b]:offsets[b + 1]][mask].argmax(-1)
            tp_soft = true_positive_rois(soft_boxes, soft_labels, gt_b, gt_l)
            levels = heuristic_level(soft_boxes)
            ctx.stats.add_counts(cm_soft_rois=len(soft_boxes), cm_soft_tp=int(tp_soft.sum()),
                                 **{f"cm_soft_level{k}": int((levels == k).sum()) for k in FPN_LEVELS})
            if hard is None or self.options.soft_proposals != "student":
                continue
            hard_boxes, hard_labels = hard.proposals[b].detach(), hard.labels[b]
            same = (soft_boxes[:, None, :] == hard_boxes.to(soft_boxes)[None, :, :]).all(-1)  # (S_soft, S_hard)
            soft_only, hard_in_soft = ~same.any(1), same.any(0)
            tp_hard = true_positive_rois(hard_boxes, hard_labels, gt_b, gt_l)
            ctx.stats.add_counts(cm_soft_only_rois=int(soft_only.sum()),
                                 cm_tp_hard_only=int((tp_hard & ~hard_in_soft).sum()),
                                 cm_tp_both=int((tp_hard & hard_in_soft).sum()),
                                 cm_tp_soft_only=int((tp_soft & soft_only).sum()))


def _gamma(student: FasterRCNN) -> float | None:
    """The detector's RoI classification loss as :func:`hard_consistency_loss` takes it."""
    return student.config.focal_gamma if student.config.cls_loss == "focal" else None


def _offsets(counts: Sequence[int]) -> list[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


def _group_bounds(counts: Sequence[int], *, per_image: bool) -> list[tuple[int, int]]:
    """``(start, stop)`` of each OHEM group in the concatenated RoIs: one per image, or one for all."""
    offsets = _offsets(counts)
    if per_image:
        return list(zip(offsets[:-1], offsets[1:]))
    return [(0, offsets[-1])]


def _select(teacher_logits: Tensor, student_logits: Tensor, bounds: Sequence[tuple[int, int]],
            ks: Sequence[int | None]) -> Tensor:
    """The concatenated indices (ascending, so image-major) that :func:`ohem_select` keeps in each group."""
    picked = [lo + ohem_select(kl_per_roi(teacher_logits[lo:hi], student_logits[lo:hi]), k)
              for (lo, hi), k in zip(bounds, ks) if hi > lo]
    return torch.cat(picked).sort().values


__all__ = ["CrossMatch", "CrossMatchOptions", "hard_consistency_loss", "heuristic_level", "kl_per_roi",
           "multiscale_roi_outputs", "ohem_k", "ohem_select", "select_hard_labels", "soft_consistency_loss",
           "true_positive_rois"]
