"""Label Matching Semi-Supervised Object Detection (LabelMatch; Chen et al., CVPR 2022,
https://arxiv.org/abs/2206.06608).

A mean teacher whose pseudo labels are matched to the labeled data at two levels:

* Re-distribution mean teacher (Eq. 4-6): adaptive label-distribution-aware confidence thresholds
  (ACT). With ``E_c = n_c^l * N_u / N_l`` the number of class-``c`` boxes that ``N_u`` unlabeled
  images should hold if they follow the labeled set's class prior and boxes per image, the
  uncertain threshold ``t_c`` is the ``E_c``-th highest post-NMS teacher score of class ``c`` on a
  random subset of ``N_u`` unlabeled images (Eq. 5) and the reliable threshold ``t_c^r`` the
  ``alpha * E_c``-th (Eq. 6). They are what minimises the KL objective of Eq. 4, and are
  re-estimated every ``K`` iterations (:func:`expected_counts`, :func:`act_thresholds`).
* Eq. 8: teacher detections with score ``>= t_c^r`` are reliable pseudo boxes (hard classification
  and box regression); those in ``[t_c, t_c^r)`` are uncertain. Student proposals IoU-assigned to an
  uncertain box go through proposal self-assignment: mapped into the teacher's view, they pass the
  teacher's RoI head and the student learns the teacher's class distribution by the soft
  cross-entropy of Eq. 7 (:func:`self_assignment_loss`).
* Reliable pseudo-label mining (RPLM, Sec. 3.3): an uncertain box whose evidence has mean score
  ``>= T_score`` and mean IoU ``>= T_iou`` (0.8 / 0.8) becomes reliable. The paper's evidence is the
  NMS cluster of the box (:func:`nms_cluster_statistics`, default); the official code's is the
  teacher's refinement of the student proposals assigned to the box (``mining_source='proposals'``).
  The cluster statistics live in :mod:`ssodlib.models.nms`, shared with DTG-SSOD and evaluation.

Facts taken from the official code (HIK-LAB/SSOD) where the paper is silent: thresholds estimated
before the first semi-supervised step and then every K = 1000 iterations on 10000 random unlabeled
images; a class without labeled boxes counts as one box; each score index is capped at the last
score and both thresholds are floored at 0.05 (a class without detections gets 0.05); without ACT a
single fixed 0.9 (no uncertain boxes); alpha = 0.2; teacher temperature 0.5 and student temperature
1.0 in Eq. 7, summed over the ``C + 1`` classes, weighted by ``1 - mined`` and divided by
``images * roi_batch_size``; the RPN learns from reliable and uncertain boxes together (with box
regression); the unlabeled loss weight is the trainer's ``unsup_weight`` (2.0 in LabelMatch).

Choices of this implementation: by default RoIs are sampled by one IoU assignment against reliable
and uncertain boxes together (``roi_sampling='joint'``); ``roi_sampling='separate'`` is the official
code's (:func:`sample_separately`: the two sets assigned separately, reliable positives sampled
first; its assigner's ``ignore_iof_thr`` 0.5 acts only on ignore boxes, which that path never
passes, so it changes nothing there); a mined box's RoIs get the hard class and box regression and no soft loss (as
the official code); an NMS cluster is the set of candidates a kept box suppressed, itself excluded,
so a box that suppressed nothing is never mined. ACT runs the teacher at the test view
(``test_scale``, no flip); under torch.distributed each rank scores a shard of the subset and the
scores are gathered, so every rank gets the same thresholds. Thresholds are method state saved in
checkpoints (:meth:`LabelMatch.state_dict`), so a resumed run uses exactly the thresholds an
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.data.transforms import WeakViewConfig, weak_view
from ssodlib.io import InputError
from ssodlib.methods.base import JointLosses, RunInfo, StepContext, TeacherStudentMethod
from ssodlib.methods.rcnn_passes import (TeacherPass, log_student_rois, student_pass, teacher_on_rois, teacher_pass,
                                         to_student_view)
from ssodlib.models.detectors.base import Detections
from ssodlib.models.detectors.faster_rcnn import FasterRCNN, RoIOutput, RoISamples
from ssodlib.models.losses import soft_cross_entropy
from ssodlib.models.nms import group_mean, nms_cluster_statistics, paired_iou

ASSIGNMENTS = ("ignore", "iou", "self")
MINING_SOURCES = ("nms_cluster", "proposals")
ROI_SAMPLINGS = ("joint", "separate")


@dataclass(frozen=True, kw_only=True)
class LabelMatchOptions:
    """The paper's switches (ablations of Fig. 6 and 8) and the official code's constants."""

    act: bool = True  # adaptive thresholds; off: ``fixed_threshold`` for every class
    act_interval: int | None = 1000  # K; None: only the initial estimate (K = +inf in Fig. 6a)
    act_images: int = 10000  # unlabeled images per estimate (all of them when fewer)
    alpha: float = 0.2  # fraction of the expected boxes that are reliable (Eq. 6)
    min_threshold: float = 0.05  # floor of both ACT thresholds
    fixed_threshold: float = 0.9  # without ACT (the paper compares 0.7 / 0.8 / 0.9)
    fixed_uncertain_threshold: float | None = None  # without ACT; None: no uncertain boxes (official code)
    assignment: str = "self"  # uncertain boxes: "ignore", "iou" (hard class, no box loss), "self" (Eq. 7)
    mining: bool = True  # reliable pseudo-label mining
    mining_source: str = "nms_cluster"  # "nms_cluster" (paper) or "proposals" (official code)
    mining_score: float = 0.8  # T_score
    mining_iou: float = 0.8  # T_iou
    teacher_temperature: float = 0.5
    student_temperature: float = 1.0
    rpn_regression: bool = True  # RPN box loss on reliable + uncertain boxes (official code)
    # RoIs of the unlabeled images: "joint" (one IoU assignment against reliable and uncertain boxes) or
    # "separate" (the official code: two assignments, reliable positives sampled first)
    roi_sampling: str = "joint"


# -- maths (pure functions) -----------------------------------------------------------------------
def expected_counts(class_counts: Tensor | np.ndarray | Sequence[int], *, num_labeled_images: int,
                    num_images: int) -> Tensor:
    """Expected boxes per class among ``num_images`` unlabeled images, ``(C,)`` float64:
    ``num_images * boxes_per_image * r_c`` with the labeled set's boxes per image and class ratio
    ``r_c`` (= ``n_c^l * N_u / N_l`` of Eq. 5); a class without labeled boxes counts as one box."""
    n = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64).clamp(min=1.0)
    boxes_per_image = n.sum() / max(num_labeled_images, 1)
    return num_images * boxes_per_image * (n / n.sum())


def act_thresholds(scores: Sequence[Tensor], *, expected: Tensor, alpha: float,
                   min_threshold: float = 0.05) -> tuple[Tensor, Tensor]:
    """ACT thresholds (Eq. 6 and Eq. 5) from per-class lists of post-NMS teacher scores.

    Args:
        scores: ``C`` tensors ``(M_c,)``, the scores of every class-``c`` detection on the subset.
        expected: ``(C,)`` expected boxes per class on the subset (:func:`expected_counts`).
    Returns:
        ``(C,)`` reliable thresholds ``s_c[int(alpha * E_c)]`` and ``(C,)`` uncertain thresholds
        ``s_c[int(E_c)]`` with ``s_c`` sorted descending, each index capped at ``M_c - 1`` and each
        threshold at least ``min_threshold`` (``min_threshold`` for a class without detections).
    """
    reliable, uncertain = [], []
    for s, e in zip(scores, expected.tolist()):
        s = torch.sort(s.detach().float().cpu().reshape(-1), descending=True).values
        if s.numel() == 0:
            s = torch.zeros(1)
        last = s.numel() - 1
        reliable.append(max(min_threshold, float(s[min(int(e * alpha), last)])))
        uncertain.append(max(min_threshold, float(s[min(int(e), last)])))
    return torch.tensor(reliable), torch.tensor(uncertain)


def fixed_thresholds(num_classes: int, *, reliable: float, uncertain: float | None = None) -> tuple[Tensor, Tensor]:
    """The single-threshold fallback without ACT: ``(C,)`` reliable and uncertain thresholds
    (``uncertain=None``: equal to ``reliable``, so no box is uncertain)."""
    low = reliable if uncertain is None else min(uncertain, reliable)
    return torch.full((num_classes,), float(reliable)), torch.full((num_classes,), float(low))


def act_update_due(*, iteration: int, burn_in: int, interval: int | None, last_update: int | None) -> bool:
    """Whether ACT is (re-)estimated at ``iteration``: before the first use, then every ``interval``
    iterations counted from the end of the burn-in (``interval=None``: never again)."""
    if last_update is None:
        return True
    if interval is None or iteration == last_update:
        return False
    return (iteration - burn_in) % interval == 0


def split_pseudo_labels(labels: Tensor, scores: Tensor, *, reliable_thresholds: Tensor,
                        uncertain_thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Masks ``(K,)`` of reliable (``score >= t^r_label``) and uncertain (``t_label <= score < t^r_label``)
    detections, given ``(K,)`` labels in ``0..C-1`` and scores and ``(C,)`` thresholds."""
    t_rel = reliable_thresholds.to(scores.device, scores.dtype)[labels]
    t_unc = uncertain_thresholds.to(scores.device, scores.dtype)[labels]
    reliable = scores >= t_rel
    return reliable, (scores >= t_unc) & ~reliable


def mining_mask(mean_score: Tensor, mean_iou: Tensor, *, score_thresh: float = 0.8, iou_thresh: float = 0.8) -> Tensor:
    """RPLM: ``(K,)`` True where mean score ``>= score_thresh`` and mean IoU ``>= iou_thresh`` (NaN: False)."""
    return (mean_score >= score_thresh) & (mean_iou >= iou_thresh)


def self_assignment_loss(student_logits: Tensor, teacher_logits: Tensor, *, normalizer: float,
                         weight: Tensor | None = None, teacher_temperature: float = 0.5,
                         student_temperature: float = 1.0) -> Tensor:
    """Eq. 7: ``sum_i w_i sum_c -softmax(t_i / T_t)_c log softmax(s_i / T_s)_c / normalizer`` over
    ``(N, C + 1)`` student and teacher logits of the same ``N`` proposals (background included)."""
    target = F.softmax(teacher_logits.detach().float() / teacher_temperature, dim=-1)
    loss = soft_cross_entropy(student_logits.float() / student_temperature, target, reduction="none")
    if weight is not None:
        loss = loss * weight.to(loss)
    return loss.sum() / normalizer


def sample_separately(proposals: Tensor, reliable: Tensor, reliable_labels: Tensor, uncertain: Tensor,
                      uncertain_labels: Tensor, *, iou_threshold: float = 0.5, batch_size: int = 512,
                      positive_fraction: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The official code's RoI sampling of one unlabeled image (``roi_sampling='separate'``).

    The ``(P, 4)`` proposals, with both sets of pseudo boxes added as proposals, are assigned to the
    ``(R, 4)`` reliable and the ``(U, 4)`` uncertain boxes separately (IoU ``>= iou_threshold``:
    positive; an added box is ignored by the other set's assignment). Up to ``batch_size *
    positive_fraction`` positives are drawn from the reliable ones first, the rest of that budget
    from the uncertain ones (a proposal positive for both counts as reliable), and the remaining
    slots from proposals that are background for both sets.
    Returns ``(S, 4)`` RoIs, ``(S,)`` labels (0 background, ``1..C``), ``(S,)`` target index
    (``0..R-1`` reliable, ``R..R+U-1`` uncertain, -1 background) and ``(S, 4)`` matched boxes.
    """
    device = proposals.device
    reliable, uncertain = reliable.to(proposals), uncertain.to(proposals)
    rois = torch.cat([reliable, uncertain, proposals])
    n_rel, n_unc = len(reliable), len(uncertain)
    added_rel = torch.zeros(len(rois), dtype=torch.bool, device=device)
    added_rel[:n_rel] = True
    added_unc = torch.zeros_like(added_rel)
    added_unc[n_rel:n_rel + n_unc] = True

    def assign(targets: Tensor) -> tuple[Tensor, Tensor]:
        if len(targets) == 0:
            return torch.full((len(rois),), -1, dtype=torch.long, device=device), torch.zeros(len(rois), device=device)
        best, index = box_iou(targets, rois).max(0)
        return torch.where(best >= iou_threshold, index, -1), best

    idx_rel, _ = assign(reliable)
    idx_unc, _ = assign(uncertain)
    pos_rel = (idx_rel >= 0) & ~added_unc
    pos_unc = (idx_unc >= 0) & ~added_rel & ~pos_rel
    negative = (idx_rel < 0) & (idx_unc < 0) & ~added_rel & ~added_unc
    budget = int(batch_size * positive_fraction)
    take_rel = _random_subset(torch.where(pos_rel)[0], budget)
    take_unc = _random_subset(torch.where(pos_unc)[0], budget - len(take_rel))
    take_neg = _random_subset(torch.where(negative)[0], batch_size - len(take_rel) - len(take_unc))
    keep = torch.cat([take_rel, take_unc, take_neg])
    index = torch.cat([idx_rel[take_rel], n_rel + idx_unc[take_unc], torch.full_like(take_neg, -1)])
    if n_rel + n_unc == 0:  # no pseudo box: every sampled RoI is background
        return rois[keep], torch.zeros_like(index), index, rois.new_zeros((len(keep), 4))
    all_labels = torch.cat([reliable_labels.to(device), uncertain_labels.to(device)]).long()
    labels = torch.where(index >= 0, all_labels[index.clamp(min=0)] + 1, 0)
    return rois[keep], labels, index, torch.cat([reliable, uncertain])[index.clamp(min=0)]


def _random_subset(candidates: Tensor, k: int) -> Tensor:
    """At most ``k`` of ``candidates`` at random (the global generator, seeded per step by the trainer)."""
    k = max(k, 0)
    if len(candidates) <= k:
        return candidates
    return candidates[torch.randperm(len(candidates), device=candidates.device)[:k]]


# -- teacher passes -------------------------------------------------------------------------------
@torch.no_grad()
def teacher_class_scores(teacher: FasterRCNN, dataset: CocoDetection, indices: Sequence[int], *,
                         view: WeakViewConfig, batch_size: int = 8) -> list[Tensor]:
    """Post-NMS teacher scores on images ``indices`` of ``dataset`` seen at ``view``: ``C`` tensors."""
    was_training = teacher.training
    teacher.eval()
    per_class: list[list[Tensor]] = [[] for _ in range(teacher.num_classes)]
    g = torch.Generator()  # the test view (one scale, no flip) draws nothing that matters
    for start in range(0, len(indices), batch_size):
        images = [weak_view(dataset[i][0], view, g)[0] for i in indices[start:start + batch_size]]
        for det in teacher.predict(images):
            scores, labels = det.scores.float().cpu(), det.labels.cpu()
            for c in labels.unique().tolist():
                per_class[c].append(scores[labels == c])
    teacher.train(was_training)
    return [torch.cat(s) if s else torch.zeros(0) for s in per_class]


def _gather_scores(scores: list[Tensor]) -> list[Tensor]:
    """Concatenate every rank's per-class scores (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return scores
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, scores)
    return [torch.cat([g[c] for g in gathered]) for c in range(len(scores))]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class PseudoBoxes:
    """Pseudo boxes of one unlabeled image, reliable first: ``boxes`` ``(P, 4)`` in the student's
    view, ``teacher_boxes`` ``(P, 4)`` the same boxes in the teacher's view, ``labels`` ``(P,)``;
    the first ``num_reliable`` are reliable, the rest uncertain."""

    boxes: Tensor
    teacher_boxes: Tensor
    labels: Tensor
    num_reliable: int


def _subset(rois: RoIOutput, samples: RoISamples, mask: Tensor) -> tuple[RoIOutput, RoISamples]:
    """The RoIs under ``mask`` (over all images' samples) as one pseudo-image."""
    rois_s = RoIOutput(rois.class_logits[mask], rois.box_deltas[mask], rois.features[mask], [int(mask.sum())])
    cat = lambda xs: torch.cat(xs)[mask]
    return rois_s, RoISamples([cat(samples.proposals)], [cat(samples.labels)], [cat(samples.matched_boxes)],
                              [cat(samples.matched_index)])


def _zero(t: Tensor) -> Tensor:
    return t.sum() * 0.0


# -- the method -----------------------------------------------------------------------------------
class LabelMatch(TeacherStudentMethod):
    """LabelMatch (see the module docstring): ACT pseudo labels split into reliable and uncertain
    boxes, proposal self-assignment for the uncertain ones, reliable pseudo-label mining."""

    name = "labelmatch"
    Options = LabelMatchOptions

    def __init__(self, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(options=options)
        o = self.options
        if o.assignment not in ASSIGNMENTS:
            raise InputError(f"labelmatch assignment {o.assignment!r} is unknown. Fix: choose one of {ASSIGNMENTS}.")
        if o.roi_sampling not in ROI_SAMPLINGS:
            raise InputError(f"labelmatch roi_sampling {o.roi_sampling!r} is unknown. Fix: choose one of {ROI_SAMPLINGS}.")
        if o.mining_source not in MINING_SOURCES:
            raise InputError(f"labelmatch mining_source {o.mining_source!r} is unknown. Fix: choose one of "
                             f"{MINING_SOURCES}.")
        if o.act_interval is not None and o.act_interval < 1:
            raise InputError("labelmatch act_interval must be at least 1. Fix: a positive K, or null for never.")
        if not 0.0 <= o.alpha <= 1.0:
            raise InputError(f"labelmatch alpha must lie in [0, 1], got {o.alpha}.")
        self.reliable_thresholds: Tensor | None = None
        self.uncertain_thresholds: Tensor | None = None
        self.updated_at: int | None = None
        self.class_counts: np.ndarray | None = None
        self.num_labeled_images = 0
        self.unlabeled: CocoDetection | None = None
        self.run: RunInfo | None = None

    # -- seam with the trainer --------------------------------------------------------------------
    def setup(self, *, labeled: CocoDetection, unlabeled: CocoDetection | None, run: RunInfo,
              device: torch.device) -> None:
        self.class_counts = labeled.coco.class_counts()
        self.num_labeled_images = len(labeled)
        self.unlabeled = unlabeled
        self.run = run

    def state_dict(self) -> dict[str, Any]:
        if self.reliable_thresholds is None:
            return {}
        return {"reliable_thresholds": self.reliable_thresholds.clone(),
                "uncertain_thresholds": self.uncertain_thresholds.clone(), "updated_at": self.updated_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.reliable_thresholds = state["reliable_thresholds"].cpu()
        self.uncertain_thresholds = state["uncertain_thresholds"].cpu()
        self.updated_at = int(state["updated_at"])

    # -- thresholds -------------------------------------------------------------------------------
    def update_thresholds(self, teacher: FasterRCNN, *, iteration: int) -> None:
        """Re-estimate ACT with ``teacher`` on a random subset of the unlabeled images, drawn from a
        generator seeded by the run's seed and ``iteration``."""
        self._require_setup()
        n = len(self.unlabeled)
        k = min(self.options.act_images, n)
        g = torch.Generator().manual_seed(self.run.seed * 1_000_003 + iteration)
        subset = torch.randperm(n, generator=g)[:k].sort().values.tolist()
        rank, world = _rank_world()
        scores = _gather_scores(teacher_class_scores(teacher, self.unlabeled, subset[rank::world],
                                                     view=self.run.test_view))
        expected = expected_counts(self.class_counts, num_labeled_images=self.num_labeled_images, num_images=k)
        self.reliable_thresholds, self.uncertain_thresholds = act_thresholds(
            scores, expected=expected, alpha=self.options.alpha, min_threshold=self.options.min_threshold)
        self.updated_at = iteration

    def _require_setup(self) -> None:
        if self.unlabeled is None or self.class_counts is None or self.run is None:
            raise RuntimeError("LabelMatch with act=True needs setup(labeled=..., unlabeled=..., run=...) first (the "
                               "trainer calls it); or set act=False.")

    def thresholds(self, teacher: FasterRCNN, *, iteration: int, num_classes: int) -> tuple[Tensor, Tensor]:
        """``(C,)`` reliable and uncertain thresholds for this iteration (ACT updated when due)."""
        o = self.options
        if not o.act:
            return fixed_thresholds(num_classes, reliable=o.fixed_threshold, uncertain=o.fixed_uncertain_threshold)
        self._require_setup()
        if act_update_due(iteration=iteration, burn_in=self.run.burn_in, interval=o.act_interval,
                          last_update=self.updated_at):
            self.update_thresholds(teacher, iteration=iteration)
        return self.reliable_thresholds, self.uncertain_thresholds

    # -- pseudo labels ----------------------------------------------------------------------------
    @property
    def _mines_by_cluster(self) -> bool:
        return self.options.mining and self.options.mining_source == "nms_cluster"

    def pseudo_boxes(self, det: Detections, *, matrix: Tensor, size: tuple[int, int], reliable_thresholds: Tensor,
                     uncertain_thresholds: Tensor, ctx: StepContext, gt_boxes: Tensor,
                     gt_labels: Tensor) -> PseudoBoxes:
        """Split one image's teacher detections, mine by NMS cluster, log, map into the student view."""
        o = self.options
        reliable, uncertain = split_pseudo_labels(det.labels, det.scores, reliable_thresholds=reliable_thresholds,
                                                  uncertain_thresholds=uncertain_thresholds)
        mined = torch.zeros_like(uncertain)
        if self._mines_by_cluster:
            ms, mi = nms_cluster_statistics(boxes=det.boxes, scores=det.scores, candidate_boxes=det.candidate_boxes,
                                            candidate_scores=det.candidate_scores, cluster=det.cluster)
            mined = uncertain & mining_mask(ms, mi, score_thresh=o.mining_score, iou_thresh=o.mining_iou)
            reliable, uncertain = reliable | mined, uncertain & ~mined
        used = reliable | uncertain
        ctx.stats.add_image(boxes=det.boxes[used], labels=det.labels[used], scores=det.scores[used],
                            gt_boxes=gt_boxes, gt_labels=gt_labels)
        ctx.stats.add_counts(reliable=int(reliable.sum()), uncertain=int(uncertain.sum()), mined=int(mined.sum()))
        order = torch.cat([torch.where(reliable)[0], torch.where(uncertain)[0]])
        teacher_boxes, labels = det.boxes[order], det.labels[order]
        mapped, keep = to_student_view(teacher_boxes, matrix, size)
        return PseudoBoxes(mapped[keep], teacher_boxes[keep], labels[keep], int(keep[: int(reliable.sum())].sum()))

    # -- losses -----------------------------------------------------------------------------------
    def unsupervised_losses(self, student: FasterRCNN, ctx: StepContext, batch: Batch) -> JointLosses:
        teacher = ctx.teacher
        t_rel, t_unc = self.thresholds(teacher, iteration=ctx.iteration, num_classes=student.num_classes)
        tp = teacher_pass(teacher, batch.weak, with_candidates=self._mines_by_cluster)
        pseudo = [self.pseudo_boxes(det, matrix=m, size=tuple(s.shape[1:]), reliable_thresholds=t_rel,
                                    uncertain_thresholds=t_unc, ctx=ctx, gt_boxes=gb, gt_labels=gl)
                  for det, m, s, gb, gl in zip(tp.detections, batch.teacher_to_student, batch.strong, batch.gt_weak_boxes,
                                               batch.gt_weak_labels)]
        targets, target_labels = [p.boxes for p in pseudo], [p.labels for p in pseudo]
        sp = student_pass(student, batch, targets, target_labels,
                          sample_unlabeled=self._separate_sampler(student, pseudo) if
                          self.options.roi_sampling == "separate" else None)
        unl = sp.unl
        unsup = {**student.rpn_loss(sp.rpn.select(unl), targets, regression=self.options.rpn_regression),
                 **self.roi_losses(student, teacher, sp.rois.select(unl), sp.samples.select(unl), pseudo=pseudo,
                                   tp=tp, matrices=batch.teacher_to_student, ctx=ctx)}
        log_student_rois(ctx, sp, batch)
        return JointLosses(sp.supervised, unsup)

    @staticmethod
    def _separate_sampler(student: FasterRCNN, pseudo: list[PseudoBoxes]):
        c = student.config

        def sample(proposals: list[Tensor]) -> RoISamples:
            out = RoISamples([], [], [], [])
            for props, p in zip(proposals, pseudo):
                r = p.num_reliable
                parts = sample_separately(props.detach(), p.boxes[:r], p.labels[:r], p.boxes[r:], p.labels[r:],
                                          iou_threshold=c.roi_iou_threshold, batch_size=c.roi_batch_size,
                                          positive_fraction=c.roi_positive_fraction)
                for field, value in zip((out.proposals, out.labels, out.matched_index, out.matched_boxes), parts):
                    field.append(value)
            return out
        return sample

    def roi_losses(self, student: FasterRCNN, teacher: FasterRCNN, rois: RoIOutput, samples: RoISamples, *,
                   pseudo: list[PseudoBoxes], tp: TeacherPass, matrices: list[Tensor],
                   ctx: StepContext) -> dict[str, Tensor]:
        """RoI losses of the unlabeled images (Eq. 8): hard classification of background, reliable and
        mined RoIs (plus uncertain ones under ``assignment='iou'``), box regression of reliable and
        mined RoIs, and Eq. 7 on the other uncertain RoIs under ``assignment='self'``."""
        o = self.options
        labels = torch.cat(samples.labels)
        index = torch.cat(samples.matched_index)
        n_rel = torch.cat([torch.full_like(m, p.num_reliable) for m, p in zip(samples.matched_index, pseudo)])
        reliable = (index >= 0) & (index < n_rel)
        uncertain = index >= n_rel
        mined = torch.zeros_like(uncertain)
        soft = _zero(rois.class_logits)
        want_mining = o.mining and o.mining_source == "proposals"
        if uncertain.any() and (o.assignment == "self" or want_mining):
            masks = uncertain.split([len(p) for p in samples.proposals])
            t_logits, t_boxes = teacher_on_rois(teacher, [p[m] for p, m in zip(samples.proposals, masks)], tp,
                                                matrices)
            if want_mining:
                mined[uncertain] = self._mine_by_proposals(samples, uncertain, pseudo, t_logits, t_boxes, ctx)
            if o.assignment == "self":
                soft = self_assignment_loss(
                    rois.class_logits[uncertain], t_logits, weight=(~mined[uncertain]).float(),
                    normalizer=len(pseudo) * student.config.roi_batch_size,
                    teacher_temperature=o.teacher_temperature, student_temperature=o.student_temperature)
        hard = (labels == 0) | reliable | mined | (uncertain if o.assignment == "iou" else torch.zeros_like(mined))
        regress = reliable | mined
        loss_cls = (student.roi_loss(*_subset(rois, samples, hard), regression=False)["loss_cls"] if hard.any()
                    else _zero(rois.class_logits))
        loss_box = _zero(rois.box_deltas)
        if regress.any():  # the box loss of the detector, normalised by all sampled RoIs
            loss_box = student.roi_loss(*_subset(rois, samples, regress))["loss_box"] * (regress.sum() / len(labels))
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_soft": soft}

    def _mine_by_proposals(self, samples: RoISamples, uncertain: Tensor, pseudo: list[PseudoBoxes], t_logits: Tensor,
                           t_boxes: Tensor, ctx: StepContext) -> Tensor:
        """Official-code RPLM: per uncertain box, mean teacher probability of its class and mean IoU
        of the teacher-refined RoIs assigned to it with the box; returns the ``(S,)`` mined flags."""
        labels = torch.cat(samples.labels)[uncertain]
        index = torch.cat(samples.matched_index)[uncertain]
        image = torch.cat([torch.full_like(m, b) for b, m in enumerate(samples.matched_index)])[uncertain]
        offsets = torch.tensor(np.cumsum([0] + [len(p.labels) for p in pseudo])[:-1], device=index.device)
        box_id = offsets[image] + index  # into the concatenation of every image's pseudo boxes
        own = torch.cat([p.teacher_boxes for p in pseudo]).to(t_boxes)[box_id]
        refined = t_boxes[torch.arange(len(labels), device=labels.device), labels]
        score = F.softmax(t_logits, -1).gather(1, labels[:, None]).squeeze(1)
        total = int(offsets[-1]) + len(pseudo[-1].labels)
        flags = mining_mask(group_mean(score, box_id, total), group_mean(paired_iou(own, refined), box_id, total),
                            score_thresh=self.options.mining_score, iou_thresh=self.options.mining_iou)
        ctx.stats.add_counts(mined=int(flags.sum()))
        return flags[box_id]


__all__ = ["LabelMatch", "LabelMatchOptions", "act_thresholds", "act_update_due", "expected_counts",
           "fixed_thresholds", "mining_mask", "self_assignment_loss", "split_pseudo_labels"]
