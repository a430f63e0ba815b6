"""Semi-DETR: Semi-Supervised Object Detection with Detection Transformers (Zhang et al., CVPR 2023,
https://arxiv.org/abs/2307.08095).

A mean teacher for DETR detectors (DINO or Deformable DETR, :mod:`ssodlib.models.detr`): the teacher
labels the weak view, the student learns the strong view with (1) stage-wise hybrid matching, one-to-
many assignment with a task-aligned loss until ``T1`` and DETR's one-to-one matching after it, (2)
cross-view query consistency, the RoI features of the pseudo boxes embedded as extra decoder queries in
both views, and (3) cost-based mining of the boxes that consistency uses, by a two-component Gaussian
mixture over the matching costs of the batch.

Equation -> function (shapes in each docstring):

* Eq. 1 (one-to-one): the detector's Hungarian matching (:meth:`DETRBase.decoder_losses`); Eq. 7 its losses.
* Eq. 2-3 (one-to-many, ``m = s^alpha u^beta``, top-k): :func:`alignment_metric`, :func:`one_to_many_assign`,
  :func:`normalized_alignment`; Table 6's alternatives :func:`max_iou_assign`, :func:`atss_assign`,
  :func:`simota_assign`.
* Eq. 4 (task-aligned focal loss): :func:`task_aligned_focal_loss`; Eq. 4-6 on one decoder layer:
  :func:`one_to_many_losses`.
* Eq. 9 (``c = MLP(RoIAlign(F, b))``): :class:`ssodlib.models.detr.detector.RoIQueryHead` (the detector
  option ``roi_queries``); Eq. 10 (decoding ``[c, q]`` under the mask ``A``):
  :func:`ssodlib.methods.detr_passes.cross_view_attention_mask`,
  :func:`~ssodlib.methods.detr_passes.decode_with_extras`.
* Eq. 11 (consistency): :func:`cqc_cosine_loss` (paper), :func:`cqc_mse_loss` (official code).
* Eq. 12 and §3.5 (mining): :func:`matched_costs`, :func:`fit_gaussian_mixture_1d`, :func:`gmm_cost_threshold`.
* Eq. 13 (the stage indicator, ``w_u``, ``w_c``): :func:`in_stage_one`, :meth:`SemiDETR.losses`.
* §3.2 / §3.5 pseudo labels (per-image ``mean + std``, then ``tau_s``): :func:`mean_std_filter`.
* The teacher's EMA from iteration 0 with the official ramp: :func:`ramped_keep_rate`.

Facts from the authors' code (JCZ404/Semi-DETR: ``detr_ssod/models/dino_detr_ssod.py``,
``detr_od/models/dense_heads/dino_detr_ssod_head.py``, ``detr_od/core/bbox/assigners/o2m_assigner.py``,
``detr_od/models/losses/task_aligned_focal_loss.py``, ``detr_ssod/utils/hooks/mean_teacher.py``, configs
``configs/detr_ssod``):

* top-13 candidates per pseudo box by ``s u^6``, positive iff ``m > 0``, a query claimed by several
  boxes goes to the one of largest IoU (the dynamic-k branch is unreachable); ``t_hat = m / (max m +
  1e-7) * max IoU`` per box; the focal term and the box terms normalised by ``sum t_hat`` over the batch
  (rank-averaged, at least 1); TAFL weight 2, L1 5, GIoU 2; one-to-many also on the supervised images,
  on every decoder layer and on the encoder proposals; denoising losses on pseudo boxes are off in stage
  1 (on ground truth always); inference with NMS 0.6 in stage 1 only, pseudo labels with NMS 0.6,
  score >= 0.01, at most 300, in both stages;
* pseudo labels: ``score >= mean + std`` per image (unbiased std: one detection keeps none), boxes of
  zero width or height dropped, then ``score >= tau_s`` for the main losses;
* mining: Hungarian costs (focal 2, L1 5, GIoU 2) of those boxes against a no-gradient student decode
  of the strong view (matching queries, last layer), pooled over the batch and the ranks; GMM with
  means at the minimum and maximum cost, weights 0.5, precisions 1, ``reg_covar 1e-5`` (sklearn, diag,
  tol 1e-3, 100 iterations); 0 costs -> threshold 0, 1 cost -> that cost; the mined set is
  ``{cost <= threshold} | {score >= tau_s}``;
* the code's consistency (``cqc_variant="code"``): one embedding of the teacher's features on the weak
  view for both decoders, 5 identical groups that also see the matching queries, ``10 x`` the MSE of
  L2-normalised decoder outputs per layer, stage 1 only, inside ``w_u``;
* EMA: teacher = student at iteration 0, momentum ``min(0.999, 1 - 1 / (t + 1))``, no burn-in; AdamW
  1e-4 (the paper's "Adam 1e-3" diverges; the DETR presets carry the code's optimiser).

Paper against code, as options (the paper's choice is the default): ``cqc_variant`` "paper" (``c_t``
into the student decoder, ``c_s`` into the teacher's, ``-cos`` of the decoded features, whole training,
``w_c`` outside ``w_u``) / "code"; ``gmm_threshold`` "center" (the reliable component's mean) /
"max_likelihood_sample"; ``cqc_union_tau`` (the code's union; the paper is silent: on);
``cqc_groups`` 1 / 5; ``cqc_sees_matching`` False / True; ``cqc_stage1_only``; ``cqc_weight`` 1 / 10;
``cqc_in_unsup_weight``; ``dn_on_pseudo_in_stage1``; ``ema_ramp``.

Choices of ours:

* Eq. 11 is printed on the embeddings ``c``; a cosine between inputs trains nothing, so the loss is on
  the decoded features ``o_hat`` of the cross-view queries (the paper's text and Fig. 4), the teacher's
  side detached, averaged over queries and layers; ``c_s`` comes from the student's features without
  gradient, ``c_t`` from the teacher's with gradient into the projector only;
* a cross-view group sees only itself (not the matching or denoising queries): the paper's "isolated
  per group"; the code's layout is ``cqc_sees_matching``; padding queries (images with fewer boxes)
  are decoded but never enter the loss;
* the cross-view queries' references are the pseudo boxes in the decoding model's own view (point
  references: their centres); families whose decoder takes query positions get them from the head;
* Table 6's assigners work on queries, which have no anchors: ATSS ranks queries by the distance of
  their predicted centre to the box centre and needs the centre inside the box; SimOTA's centre prior
  is "centre inside the box" and its classification cost the target-class BCE only; Max-IoU treats the
  IoU band between 0.4 and 0.5 as negative; each keeps the TOOD soft target of its pairs;
* at mini scale the shared supervised burn-in is one-to-one (it is the supervised run's snapshot);
  stage 1 starts after it. The burn-in and the ``stage1_iters`` are in iterations of the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, generalized_box_iou_loss

from ssodlib.config import Rule, check_ranges
from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.evaluation.pseudo_labels import match_to_ground_truth
from ssodlib.io import InputError
from ssodlib.methods.base import RunInfo, StepContext, TeacherStudentMethod
from ssodlib.methods.detr_passes import (BoxQueries, DETRPass, DETRTeacherPass, all_gather_1d, box_queries,
                                         boxes_to_view, decode_with_extras, detr_pass, detr_teacher_pass,
                                         normalized_queries_boxes)
from ssodlib.models.detr.boxes import cxcywh_to_xyxy
from ssodlib.models.detr.detector import DecoderOutput, DETRBase, Queries, Targets, connected_zero, layer_suffix
from ssodlib.models.detr.losses import LossWeights, average_count
from ssodlib.models.detr.matcher import Assignment, CostWeights, hungarian_match, match_cost

ASSIGNERS = ("tood", "max_iou", "atss", "simota")  # Table 6
CQC_BOXES = ("fixed", "topk", "mean_std", "gmm")  # Table 5
GMM_RULES = ("center", "max_likelihood_sample")
CQC_VARIANTS = ("paper", "code")
MAX_IOU_POS, MAX_IOU_NEG = 0.5, 0.4  # mmdetection's MaxIoUAssigner (RetinaNet)
ATSS_TOPK = 9  # mmdetection's ATSSAssigner
SIMOTA_CANDIDATES, SIMOTA_IOU_WEIGHT, SIMOTA_OUTSIDE = 10, 3.0, 1e5  # mmdetection's SimOTAAssigner


# -- teacher protocol and stages --------------------------------------------------------------------
def ramped_keep_rate(step: int, keep_rate: float) -> float:
    """The official EMA momentum ``min(keep_rate, 1 - 1 / (step + 1))`` of the update before training
    step ``step`` (0: the copy): 0, 0.5, 0.9, 0.999 at steps 0, 1, 9, 999 for keep 0.999."""
    return min(keep_rate, 1.0 - 1.0 / (max(step, 0) + 1))


def in_stage_one(iteration: int, *, stage1_iters: int, shm: bool = True) -> bool:
    """Whether training step ``iteration`` (0-based, of the whole run) is in SHM's one-to-many stage:
    ``iteration < stage1_iters`` (the code's ``curr_step < warm_up_step``, the paper's ``t <= T1`` in
    1-based steps); never without SHM. A function of the iteration alone, so a resumed run switches
    where an uninterrupted one does."""
    return shm and iteration < stage1_iters


def mean_std_filter(scores: Tensor) -> Tensor:
    """``(N,)`` bool: ``scores >= mean + std`` of this image's ``(N,)`` scores, ``std`` unbiased
    (``n - 1``), so fewer than two scores keep nothing (the code's ``torch.std`` of one value is NaN)."""
    if scores.numel() < 2:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    s = scores.float()
    return s >= s.mean() + s.std()


# -- one-to-many assignment (Eq. 2-3, Table 6) ------------------------------------------------------------
def alignment_metric(scores: Tensor, ious: Tensor, *, alpha: float, beta: float) -> Tensor:
    """Eq. 3: ``(Q, G)`` ``m = s^alpha * u^beta`` of the queries' scores ``s`` at each pseudo box's class
    and their IoUs ``u`` with it (float64)."""
    return scores.double().clamp(min=0) ** alpha * ious.double().clamp(min=0) ** beta


def normalized_alignment(assigned: Tensor, metric: Tensor, ious: Tensor) -> Tensor:
    """TOOD's soft targets: for the positives of each box ``g`` (``assigned`` ``(Q,)`` == g),
    ``t_hat = m / (max m + 1e-7) * max u`` over them; 0 for negatives (``assigned`` -1). ``metric`` /
    ``ious`` ``(Q, G)``. Returns ``(Q,)`` in ``ious``' float dtype (at least float32)."""
    out = torch.zeros(assigned.shape, dtype=torch.float64, device=assigned.device)
    pos = torch.where(assigned >= 0)[0]
    if len(pos):
        g = assigned[pos]
        m, u = metric.double()[pos, g], ious.double()[pos, g]
        for box in torch.unique(g):
            sel = g == box
            out[pos[sel]] = m[sel] / (m[sel].max() + 1e-7) * u[sel].max()
    return out.to(torch.promote_types(ious.dtype, torch.float32))


def _resolve_by_iou(candidate: Tensor, ious: Tensor) -> Tensor:
    """``(Q,)`` assignment from a ``(Q, G)`` bool candidate matrix: each query to the candidate box of
    largest IoU (ties: the lower box index), -1 where it is no box's candidate."""
    masked = torch.where(candidate, ious.double(), torch.full_like(ious, -1.0, dtype=torch.float64))
    best, box = masked.max(1)
    return torch.where(candidate.any(1), box, torch.full_like(box, -1))


def one_to_many_assign(scores: Tensor, ious: Tensor, *, topk: int, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """Eq. 2-3 as the authors' code computes it, for ``Q`` queries and ``G`` pseudo boxes of one image:
    ``scores`` ``(Q, G)`` each query's sigmoid score of each box's class, ``ious`` ``(Q, G)``.

    Each box takes the ``min(topk, Q)`` queries of largest ``m = s^alpha u^beta`` (ties: the lower query
    index); a candidate is positive iff ``m > 0``; a query that is a positive candidate of several boxes
    goes to the one of largest IoU (ties: the lower box index). Returns ``assigned`` ``(Q,)`` int64 (the
    box index, -1 negative) and ``target`` ``(Q,)`` the normalised soft target of
    :func:`normalized_alignment` (0 for negatives)."""
    scores, ious = torch.as_tensor(scores), torch.as_tensor(ious)
    q, g = scores.shape
    assigned = torch.full((q,), -1, dtype=torch.int64, device=scores.device)
    if q == 0 or g == 0:
        return assigned, torch.zeros(q, dtype=torch.promote_types(ious.dtype, torch.float32), device=scores.device)
    metric = alignment_metric(scores, ious, alpha=alpha, beta=beta)
    k = min(int(topk), q)
    order = torch.sort(metric, dim=0, descending=True, stable=True).indices[:k]  # (k, G)
    positive = metric.gather(0, order) > 0
    candidate = torch.zeros((q, g), dtype=torch.bool, device=scores.device)
    cols = torch.arange(g, device=scores.device).expand(k, g)
    candidate[order[positive], cols[positive]] = True
    assigned = _resolve_by_iou(candidate, ious)
    return assigned, normalized_alignment(assigned, metric, ious)


def max_iou_assign(ious: Tensor, *, pos_iou: float = MAX_IOU_POS, neg_iou: float = MAX_IOU_NEG) -> Tensor:
    """Table 6 "Max-IoU" (mmdetection's ``MaxIoUAssigner``, RetinaNet thresholds): a query goes to its
    box of largest IoU when that IoU is ``>= pos_iou``; below it (the ``[neg_iou, pos_iou)`` band, which
    mmdetection ignores, included) it is negative; then every box with a positive IoU also takes each
    query whose IoU with it equals its largest. ``(Q, G)`` -> ``(Q,)`` (-1 negative)."""
    q, g = ious.shape
    if q == 0 or g == 0:
        return torch.full((q,), -1, dtype=torch.int64, device=ious.device)
    best, box = ious.max(1)
    assigned = torch.where(best >= pos_iou, box, torch.full_like(box, -1))
    gt_best = ious.max(0).values
    for j in range(g):
        if gt_best[j] > 0:
            assigned[ious[:, j] == gt_best[j]] = j
    del neg_iou  # the band below pos_iou is negative here (see the docstring)
    return assigned


def atss_assign(ious: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, *, topk: int = ATSS_TOPK) -> Tensor:
    """Table 6 "ATSS" on queries: each box's candidates are the ``topk`` queries whose predicted centre
    (``pred_boxes`` ``(Q, 4)`` normalised ``cxcywh``) is nearest its centre (``gt_boxes`` ``(G, 4)``); the
    positives are the candidates with IoU ``>= mean + std`` (unbiased) of the candidates' IoUs and their
    centre inside the box; conflicts go to the largest IoU. ``ious`` ``(Q, G)`` -> ``(Q,)``."""
    q, g = ious.shape
    if q == 0 or g == 0:
        return torch.full((q,), -1, dtype=torch.int64, device=ious.device)
    k = min(topk, q)
    dist_ = torch.cdist(pred_boxes[:, :2].double(), gt_boxes[:, :2].double())  # (Q, G)
    cand = dist_.topk(k, dim=0, largest=False).indices  # (k, G)
    cand_iou = ious.double().gather(0, cand)
    std = cand_iou.std(0) if k > 1 else torch.zeros(g, dtype=torch.float64, device=ious.device)
    threshold = cand_iou.mean(0) + std
    gt = cxcywh_to_xyxy(gt_boxes.double())
    cx, cy = pred_boxes[:, 0].double()[cand], pred_boxes[:, 1].double()[cand]  # (k, G)
    inside = (cx > gt[:, 0]) & (cx < gt[:, 2]) & (cy > gt[:, 1]) & (cy < gt[:, 3])
    positive = (cand_iou >= threshold) & inside
    candidate = torch.zeros((q, g), dtype=torch.bool, device=ious.device)
    cols = torch.arange(g, device=ious.device).expand(k, g)
    candidate[cand[positive], cols[positive]] = True
    return _resolve_by_iou(candidate, ious)


def simota_assign(scores: Tensor, ious: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, *,
                  candidates: int = SIMOTA_CANDIDATES) -> Tensor:
    """Table 6 "SimOTA" on queries (YOLOX): cost ``BCE(s, u) + 3 (-log(u + 1e-7)) + 1e5 [centre outside
    the box]``; each box takes its ``dynamic_k = max(1, floor(sum of its top-``candidates`` IoUs))``
    cheapest queries; a query taken by several boxes keeps the cheapest. ``scores`` / ``ious`` ``(Q, G)``,
    boxes normalised ``cxcywh`` -> ``(Q,)``."""
    q, g = ious.shape
    if q == 0 or g == 0:
        return torch.full((q,), -1, dtype=torch.int64, device=ious.device)
    s, u = scores.double().clamp(1e-7, 1 - 1e-7), ious.double().clamp(min=0)
    gt = cxcywh_to_xyxy(gt_boxes.double())
    cx, cy = pred_boxes[:, 0, None].double(), pred_boxes[:, 1, None].double()
    inside = (cx > gt[None, :, 0]) & (cx < gt[None, :, 2]) & (cy > gt[None, :, 1]) & (cy < gt[None, :, 3])
    cls = -(u * s.log() + (1 - u) * (1 - s).log())
    cost = cls + SIMOTA_IOU_WEIGHT * -(u + 1e-7).log() + SIMOTA_OUTSIDE * (~inside).double()
    k = min(candidates, q)
    dynamic = u.topk(k, dim=0).values.sum(0).floor().clamp(min=1).long()  # (G,)
    chosen = torch.zeros((q, g), dtype=torch.bool, device=ious.device)
    for j in range(g):
        chosen[torch.argsort(cost[:, j], stable=True)[:int(dynamic[j])], j] = True
    masked = torch.where(chosen, cost, torch.full_like(cost, float("inf")))
    box = masked.argmin(1)
    return torch.where(chosen.any(1), box, torch.full_like(box, -1))


# -- losses (Eq. 4-6, 11) ------------------------------------------------------------------------------
def task_aligned_focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0) -> Tensor:
    """Eq. 4 summed over every query and class: ``|t - s|^gamma BCE(s, t)`` with ``s = sigmoid(logits)``
    and soft targets ``target`` (``(N, C)``, ``t_hat`` at a positive's class, 0 elsewhere; so a negative
    channel costs ``s^gamma BCE(s, 0)``). Unnormalised."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return ((target - logits.sigmoid()).abs() ** gamma * bce).sum()


# (scores, ious, predicted boxes, pseudo boxes) -> (assigned, t_hat)
Assign = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _scores_and_ious(logits: Tensor, boxes: Tensor, labels: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """``(Q, G)`` each query's sigmoid score of each target's class and its IoU with the target, from one
    image's ``(Q, C)`` logits, ``(Q, 4)`` and ``(G, 4)`` normalised ``cxcywh`` boxes, without gradient."""
    with torch.no_grad():
        scores = logits.detach().float().sigmoid()[:, labels]
        ious = box_iou(cxcywh_to_xyxy(boxes.detach().float()), cxcywh_to_xyxy(gt.to(boxes).float()))
    return scores, ious


@dataclass(frozen=True)
class AlignedAssigner:
    """The detector family's one-to-many interface (:class:`~ssodlib.models.detr.matcher.OneToManyAssigner`)
    filled in with an ``Assign`` rule (``SemiDETR.assigner()``: Table 6's choice, TOOD's top-k by default):
    the pairs of one image with their normalised alignment ``t_hat`` as ``quality``."""

    assign: Assign

    def __call__(self, logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> Assignment:
        labels, gt = gt_labels.to(logits.device).long(), gt_boxes.to(boxes)
        assigned, t_hat = self.assign(*_scores_and_ious(logits, boxes, labels, gt), boxes.detach(), gt)
        pos = torch.where(assigned >= 0)[0]
        return Assignment(queries=pos, targets=assigned[pos], quality=t_hat[pos])


def one_to_many_losses(logits: Tensor, boxes: Tensor, gt_labels: Sequence[Tensor], gt_boxes: Sequence[Tensor], *,
                       assign: Assign, weights: LossWeights, gamma: float) -> dict[str, Tensor]:
    """Eq. 4-6 on one decoder layer: ``logits`` ``(B, Q, C)``, ``boxes`` ``(B, Q, 4)`` normalised ``cxcywh``,
    per-image targets (``(G_b,)`` labels, ``(G_b, 4)`` normalised ``cxcywh``). Per image, ``assign`` gives
    each query a pseudo box and ``t_hat``; the TAFL over every query and class, and the ``t_hat``-weighted
    L1 and ``1 - GIoU`` of the positives, each divided by ``sum t_hat`` over the batch (rank-averaged, at
    least 1) and weighted by ``weights`` (``cls`` is the TAFL weight). Keys ``cls``, ``l1``, ``giou``."""
    logits, boxes = logits.float(), boxes.float()
    target = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    preds, gts, ws = [], [], []
    for b, (labels, gt) in enumerate(zip(gt_labels, gt_boxes)):
        labels, gt = labels.to(logits.device).long(), gt.to(boxes)
        if len(labels) == 0:
            continue
        with torch.no_grad():
            assigned, t_hat = assign(*_scores_and_ious(logits[b], boxes[b], labels, gt), boxes[b].detach(), gt)
        pos = torch.where(assigned >= 0)[0]
        if len(pos):
            target[b, pos, labels[assigned[pos]]] = t_hat[pos].float()
            preds.append(boxes[b, pos])
            gts.append(gt[assigned[pos]])
            ws.append(t_hat[pos].float())
    norm = average_count(float(target.sum()), logits.device)
    cls = weights.cls * task_aligned_focal_loss(logits, target, gamma=gamma) / norm
    if not preds:
        zero = boxes.sum() * 0.0
        return {"cls": cls, "l1": zero, "giou": zero.clone()}
    pred, gt, w = torch.cat(preds), torch.cat(gts), torch.cat(ws)
    l1 = ((pred - gt).abs().sum(-1) * w).sum()
    giou = (generalized_box_iou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt), reduction="none") * w).sum()
    return {"cls": cls, "l1": weights.l1 * l1 / norm, "giou": weights.giou * giou / norm}


def cqc_cosine_loss(student_hidden: Tensor, teacher_hidden: Tensor) -> Tensor:
    """Eq. 11 on the decoded cross-view queries: ``-cos(o_s, stopgrad(o_t))`` averaged over the ``(L, K)``
    layers and queries of ``(L, K, D)`` features (``K = 0``: a zero in the graph)."""
    if student_hidden.numel() == 0:
        return student_hidden.sum() * 0.0
    return -F.cosine_similarity(student_hidden.float(), teacher_hidden.detach().float(), dim=-1).mean()


def cqc_mse_loss(student_hidden: Tensor, teacher_hidden: Tensor) -> Tensor:
    """The official code's consistency (before its factor 10): per layer the mean over queries and
    channels of ``(n(o_s) - stopgrad(n(o_t)))^2`` with ``n`` the L2 normalisation, summed over layers.
    ``(L, K, D)`` features."""
    if student_hidden.numel() == 0:
        return student_hidden.sum() * 0.0
    s = F.normalize(student_hidden.float(), p=2, dim=-1)
    t = F.normalize(teacher_hidden.detach().float(), p=2, dim=-1)
    return ((s - t) ** 2).mean(dim=(1, 2)).sum()


# -- cost-based pseudo-label mining (Eq. 12, §3.5) ---------------------------------------------------------
def matched_costs(logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *,
                  weights: CostWeights = CostWeights()) -> Tensor:
    """Eq. 12 of each pseudo box at its Hungarian match among one image's predictions: ``logits``
    ``(Q, C)``, ``boxes`` ``(Q, 4)`` and ``gt_boxes`` ``(G, 4)`` normalised ``cxcywh``, ``gt_labels`` ``(G,)``
    -> ``(G,)`` float32 costs (``inf`` for a box left unmatched when ``G > Q``)."""
    out = torch.full((len(gt_labels),), float("inf"), dtype=torch.float32, device=logits.device)
    if len(gt_labels) == 0 or logits.shape[0] == 0:
        return out
    cost = match_cost(logits, boxes, gt_labels, gt_boxes, weights=weights)
    rows, cols = hungarian_match(cost)
    out[cols] = cost[rows, cols].float()
    return out


@dataclass(frozen=True)
class GaussianMixture1D:
    """A fitted two-component 1-D mixture: ``weights``, ``means``, ``variances`` ``(2,)`` float64."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    converged: bool
    iterations: int

    def weighted_log_prob(self, x: np.ndarray) -> np.ndarray:
        """``(n, 2)`` ``log w_k + log N(x | mu_k, var_k)`` in sklearn's diagonal form."""
        return _weighted_log_prob(np.asarray(x, np.float64).reshape(-1, 1), self.weights, self.means.reshape(2, 1),
                                  1.0 / np.sqrt(self.variances.reshape(2, 1)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` the component of largest weighted likelihood (ties: component 0)."""
        return self.weighted_log_prob(x).argmax(1)

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` the mixture's log-likelihood of each sample."""
        return _logsumexp(self.weighted_log_prob(x))


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(a - top).sum(1, keepdims=True)) + top)[:, 0]


def _weighted_log_prob(x: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    """sklearn's ``_estimate_log_gaussian_prob`` (diag) plus ``log weights``: ``x`` ``(n, 1)``, ``means`` /
    ``prec_chol`` ``(2, 1)``."""
    log_det = np.log(prec_chol).sum(1)
    precisions = prec_chol ** 2
    log_prob = ((means ** 2 * precisions).sum(1) - 2.0 * x @ (means * precisions).T + (x ** 2) @ precisions.T)
    return -0.5 * (x.shape[1] * np.log(2 * np.pi) + log_prob) + log_det + np.log(weights)


def fit_gaussian_mixture_1d(values: Tensor | np.ndarray | Sequence[float], *, tol: float = 1e-3, max_iter: int = 100,
                            reg_covar: float = 1e-5) -> GaussianMixture1D:
    """EM for two 1-D Gaussians exactly as ``sklearn.mixture.GaussianMixture(2, covariance_type='diag',
    weights_init=[.5, .5], means_init=[min, max], precisions_init=[1, 1], reg_covar=1e-5)`` fits (tol
    1e-3 on the mean log-likelihood, 100 iterations, one initialisation): E-step, M-step (``nk + 10 eps``,
    variances ``E[x^2] - 2 mu E[x] + mu^2 + reg``), stop when the E-step's mean log-likelihood changes by
    less than ``tol``. ``values``: ``n >= 2`` numbers."""
    x = np.asarray(values.detach().cpu().double() if isinstance(values, Tensor) else values, np.float64).reshape(-1, 1)
    if len(x) < 2:
        raise ValueError(f"a two-component mixture needs at least 2 values, got {len(x)}")
    weights, means = np.array([0.5, 0.5]), np.array([[x.min()], [x.max()]])
    prec_chol = np.ones((2, 1))
    lower, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        previous = lower
        wlp = _weighted_log_prob(x, weights, means, prec_chol)
        norm = _logsumexp(wlp)
        resp = np.exp(wlp - norm[:, None])
        nk = resp.sum(0) + 10 * np.finfo(resp.dtype).eps
        means = resp.T @ x / nk[:, None]
        avg_x_means = means * (resp.T @ x) / nk[:, None]
        variances = resp.T @ (x * x) / nk[:, None] - 2 * avg_x_means + means ** 2 + reg_covar
        weights = nk / nk.sum()
        prec_chol = 1.0 / np.sqrt(variances)
        lower = float(norm.mean())
        if abs(lower - previous) < tol:
            converged = True
            break
    return GaussianMixture1D(weights, means[:, 0], 1.0 / prec_chol[:, 0] ** 2, converged, it)


def gmm_cost_threshold(costs: Tensor | np.ndarray | Sequence[float], *, rule: str = "center") -> float:
    """§3.5: the mining threshold of the matched costs ``costs`` ``(N,)`` of a batch (all ranks). A
    two-component mixture (:func:`fit_gaussian_mixture_1d`) initialised at the minimum and maximum cost;
    ``rule="center"`` (paper): the mean of component 0, the reliable (low-cost) one;
    ``"max_likelihood_sample"`` (official code): the cost of the sample of largest mixture likelihood
    among those predicted as component 0 (none: as component 1). No cost -> 0.0; one cost -> that cost
    (the code's fallbacks). Non-finite costs (unmatched boxes) are left out."""
    if rule not in GMM_RULES:
        raise ValueError(f"rule {rule!r} is not one of {GMM_RULES}")
    x = np.asarray(costs.detach().cpu().double() if isinstance(costs, Tensor) else costs, np.float64).reshape(-1)
    x = np.sort(x[np.isfinite(x)])  # the code sorts the costs (its tie-break among equal likelihoods)
    if len(x) == 0:
        return 0.0
    if len(x) == 1:
        return float(x[0])
    gmm = fit_gaussian_mixture_1d(x)
    if rule == "center":
        return float(gmm.means[0])
    labels, loglik = gmm.predict(x), gmm.score_samples(x)
    sel = labels == 0 if (labels == 0).any() else labels == 1
    return float(x[sel][int(np.argmax(loglik[sel]))])


# -- options ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SemiDETROptions:
    """The switches of Tables 4-8 and the paper-vs-code differences (the paper's choice by default)."""

    shm: bool = True  # Table 4 SHM; False: one-to-one throughout (the "SSOD baseline" with cqc=False)
    stage1_iters: int = 60000  # T1 (Table 7), in iterations of the run; >= iterations: one-to-many throughout (+ NMS)
    o2m_assigner: str = "tood"  # Table 6: "tood" (ours) | "max_iou" | "atss" | "simota"
    o2m_topk: int = 13  # candidates per pseudo box (clamped to the number of queries)
    o2m_alpha: float = 1.0  # Eq. 3
    o2m_beta: float = 6.0  # Eq. 3
    tafl_gamma: float = 2.0  # Eq. 4
    stage1_nms_iou: float = 0.6  # inference (evaluation) NMS in stage 1
    pseudo_nms_iou: float = 0.6  # the teacher's NMS for pseudo labels, both stages
    pseudo_score_floor: float = 0.01
    pseudo_max_dets: int = 300
    tau_s: float = 0.4  # Table 8
    cqc: bool = True  # Table 4 CQC
    cqc_boxes: str = "gmm"  # Table 5: "fixed" | "topk" | "mean_std" | "gmm"; CQC without CPM (Table 4 ID 3): "mean_std"
    cqc_fixed_thresh: float = 0.4  # Table 5 "Fixed(0.4)"
    cqc_topk: int = 9  # Table 5 "Top-K(K=9)"
    cqc_union_tau: bool = True  # code: the mined set is {cost <= threshold} | {score >= tau_s}
    gmm_threshold: str = "center"  # paper; "max_likelihood_sample": code
    cqc_variant: str = "paper"  # "paper" (c_t -> student, c_s -> teacher, -cos) | "code" (c_t -> both, normalised MSE)
    cqc_groups: int = 1  # copies of the cross-view queries (code: 5)
    cqc_sees_matching: bool = False  # code: True (a cross-view group also attends to the matching queries)
    cqc_stage1_only: bool = False  # code: True
    cqc_weight: float = 1.0  # w_c of Eq. 13 (code: 10, per layer)
    cqc_in_unsup_weight: bool = False  # code: True (the consistency loss is also multiplied by w_u)
    dn_on_pseudo_in_stage1: bool = False  # the code zeroes the denoising losses of pseudo boxes in stage 1
    ema_ramp: bool = True  # EMA momentum min(keep, 1 - 1/(t + 1)) from the copy on

    @classmethod
    def code(cls, **overrides: Any) -> "SemiDETROptions":
        """The official code's choices of every paper-vs-code difference."""
        return cls(**{**CODE_OPTIONS, **overrides})


CODE_OPTIONS: dict[str, Any] = dict(cqc_variant="code", gmm_threshold="max_likelihood_sample", cqc_groups=5,
                                    cqc_sees_matching=True, cqc_stage1_only=True, cqc_weight=10.0,
                                    cqc_in_unsup_weight=True)

_FRACTION = Rule(low=0, high=1)
OPTION_RULES = {"stage1_iters": Rule(low=0), "o2m_assigner": Rule(choices=ASSIGNERS), "o2m_topk": Rule(low=1),
                "o2m_alpha": Rule(low=0), "o2m_beta": Rule(low=0), "tafl_gamma": Rule(low=0),
                "stage1_nms_iou": _FRACTION, "pseudo_nms_iou": _FRACTION, "pseudo_score_floor": _FRACTION,
                "pseudo_max_dets": Rule(low=1), "tau_s": _FRACTION, "cqc_boxes": Rule(choices=CQC_BOXES),
                "cqc_fixed_thresh": _FRACTION, "cqc_topk": Rule(low=1), "gmm_threshold": Rule(choices=GMM_RULES),
                "cqc_variant": Rule(choices=CQC_VARIANTS), "cqc_groups": Rule(low=1), "cqc_weight": Rule(low=0)}


# -- per-step bookkeeping -----------------------------------------------------------------------------------
@dataclass
class PseudoCandidates:
    """One unlabeled image's teacher detections (scores descending) in both views: ``boxes`` ``(K, 4)``
    in the weak view, ``student_boxes`` ``(K, 4)`` in the strong view, ``labels`` / ``scores`` ``(K,)``;
    ``usable`` ``(K,)`` positive size and inside the strong view; ``mean_std`` ``(K,)`` the initial set
    (``score >= mean + std`` and usable); ``main`` ``(K,)`` the main losses' set (also ``>= tau_s``)."""

    boxes: Tensor
    student_boxes: Tensor
    labels: Tensor
    scores: Tensor
    usable: Tensor
    mean_std: Tensor
    main: Tensor


def _has_denoising(model: DETRBase) -> bool:
    return getattr(model, "label_enc", None) is not None


# -- the method ------------------------------------------------------------------------------------------
class SemiDETR(TeacherStudentMethod):
    """Stage-wise hybrid matching, cross-view query consistency and cost-based mining on a DETR."""

    name = "semi_detr"
    detector_family = ("dino", "deformable_detr")
    Options = SemiDETROptions
    # the cross-view queries' RoIAlign + projector lives in the detector (trained, checkpointed with it)
    required_detector_options: ClassVar[dict[str, Any]] = {"roi_queries": True}

    def __init__(self, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(options=options)
        check_ranges(self.options, OPTION_RULES, what=f"method {self.name!r} option")
        self._burn_in = 0

    def setup(self, *, labeled: CocoDetection, unlabeled: CocoDetection | None, run: RunInfo,
              device: torch.device) -> None:
        self._burn_in = run.burn_in

    # -- the schedule, a function of the iteration --------------------------------------------------
    def ema_keep_rate(self, *, iteration: int, keep_rate: float) -> float:
        """After step ``iteration`` the update before step ``iteration + 1``: ``ramped_keep_rate`` of the
        steps since the teacher's copy (at the burn-in's end; iteration 0 without burn-in)."""
        if not self.options.ema_ramp:
            return keep_rate
        return ramped_keep_rate(iteration + 1 - self._burn_in, keep_rate)

    def stage_one(self, iteration: int) -> bool:
        return in_stage_one(iteration, stage1_iters=self.options.stage1_iters, shm=self.options.shm)

    def inference_nms(self, model: DETRBase, iteration: int) -> float | None:
        """The NMS IoU of evaluation after step ``iteration``: stage 1's, else the detector's own (none)."""
        return self.options.stage1_nms_iou if self.stage_one(iteration) else model.options.nms_iou

    def _set_inference(self, models: Sequence[DETRBase | None], iteration: int) -> None:
        for model in models:
            if model is not None:
                model.inference.nms_iou = self.inference_nms(model, iteration)

    def prepare_evaluation(self, models: list[nn.Module], *, iteration: int) -> None:
        """Evaluation after step ``iteration`` uses that step's stage (NMS only in stage 1), also when a
        resumed run evaluates before it has trained a step."""
        self._set_inference([m for m in models if isinstance(m, DETRBase)], iteration)

    def _check(self, student: nn.Module) -> None:
        if not isinstance(student, DETRBase):
            raise InputError(f"method {self.name!r} needs a DETR detector (dino or deformable_detr), got "
                             f"{type(student).__name__}. Fix: set detector=dino.")
        if self.options.cqc and getattr(student, "roi_query_head", None) is None:
            raise InputError(f"method {self.name!r} with cqc=true needs the detector's cross-view query head. "
                             "Fix: set detector_options.roi_queries=true (or method_options.cqc=false).")

    # -- losses ---------------------------------------------------------------------------------------
    def losses(self, student: DETRBase, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        """Eq. 13: the supervised and unsupervised set losses of the step's stage (the unsupervised ones
        renamed ``*_unsup`` and weighted by ``w_u``), plus ``loss_cqc`` weighted by ``w_c`` (inside ``w_u``
        as ``loss_cqc_unsup`` with ``cqc_in_unsup_weight``). The burn-in (mini scale's shared supervised
        snapshot) is the detector's own supervised step."""
        self._check(student)
        self._set_inference((student, ctx.teacher), ctx.iteration)
        if ctx.burn_in:
            return self._keep_head_in_graph(student, student.supervised_losses(batch.images, batch.boxes,
                                                                                batch.labels), distributed_only=True)
        stage1 = self.stage_one(ctx.iteration)
        out = self.supervised_losses(student, batch, stage1=stage1)
        if batch.num_unlabeled == 0:
            return self._keep_head_in_graph(student, out, distributed_only=True)
        unsup, consistency = self.unsupervised_terms(student, ctx, batch, stage1=stage1)
        out.update({f"{k}_unsup": v * ctx.unsup_weight for k, v in unsup.items()})
        if consistency is not None:
            if self.options.cqc_in_unsup_weight:
                out["loss_cqc_unsup"] = consistency * self.options.cqc_weight * ctx.unsup_weight
            else:
                out["loss_cqc"] = consistency * self.options.cqc_weight
        return self._keep_head_in_graph(student, out, distributed_only=True)

    @staticmethod
    def _keep_head_in_graph(student: DETRBase, losses: dict[str, Tensor], *,
                            distributed_only: bool) -> dict[str, Tensor]:
        """A zero through the cross-view head's parameters when the step did not use them, so that
        DistributedDataParallel sees every parameter receive a gradient."""
        head = getattr(student, "roi_query_head", None)
        if head is None or any(k.startswith("loss_cqc") for k in losses):
            return losses
        if distributed_only and not (dist.is_available() and dist.is_initialized()):
            return losses
        first = next(iter(losses))
        return {**losses, first: losses[first] + connected_zero(*head.parameters())}

    def assigner(self) -> AlignedAssigner:
        """Stage 1's one-to-many assigner (the option ``o2m_assigner``) behind the family's interface."""
        return AlignedAssigner(self._assign)

    def _assign(self, scores: Tensor, ious: Tensor, pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        o = self.options
        if o.o2m_assigner == "tood":
            return one_to_many_assign(scores, ious, topk=o.o2m_topk, alpha=o.o2m_alpha, beta=o.o2m_beta)
        if o.o2m_assigner == "max_iou":
            assigned = max_iou_assign(ious)
        elif o.o2m_assigner == "atss":
            assigned = atss_assign(ious, pred, gt)
        else:
            assigned = simota_assign(scores, ious, pred, gt)
        metric = alignment_metric(scores, ious, alpha=o.o2m_alpha, beta=o.o2m_beta)
        return assigned, normalized_alignment(assigned, metric, ious)

    def set_losses(self, model: DETRBase, out: DecoderOutput, queries: Queries, targets: Targets, *,
                   stage1: bool) -> dict[str, Tensor]:
        """Every decoder layer's and the two-stage encoder's set losses: one-to-many (Eq. 4-6) in stage
        1, the detector's Hungarian ones (Eq. 7) after; keys ``loss_{cls,bbox,giou}{_d<l>,_enc}``."""
        binary = getattr(model.options, "enc_binary_labels", True)
        if not stage1:
            return {**model.decoder_losses(out, targets), **model.encoder_losses(queries, targets, binary=binary)}
        losses: dict[str, Tensor] = {}
        layers = out.logits.shape[0]
        kw = dict(assign=self._assign, weights=model.loss_weights, gamma=self.options.tafl_gamma)
        parts = [(out.logits[lid], out.boxes[lid], targets, layer_suffix(lid, layers)) for lid in range(layers)]
        if queries.enc_logits is not None and queries.enc_boxes is not None:
            parts.append((queries.enc_logits, queries.enc_boxes, targets.binary() if binary else targets, "_enc"))
        for logits, boxes, t, suffix in parts:
            terms = one_to_many_losses(logits, boxes, t.labels, t.boxes, **kw)
            losses.update({f"loss_cls{suffix}": terms["cls"], f"loss_bbox{suffix}": terms["l1"],
                           f"loss_giou{suffix}": terms["giou"]})
        return losses

    def supervised_losses(self, student: DETRBase, batch: Batch, *, stage1: bool) -> dict[str, Tensor]:
        """The labeled images' losses: the detector's own after stage 1; in stage 1 one-to-many on the
        matching queries and the encoder, denoising on the ground truth as usual."""
        if not stage1:
            return student.supervised_losses(batch.images, batch.boxes, batch.labels)
        p = detr_pass(student, batch.images)
        targets = student.targets(batch.boxes, batch.labels, p.batch.image_sizes, p.batch.tensors.device)
        layout = student.denoising_layout(targets) if _has_denoising(student) else None
        _, dn, out = decode_with_extras(student, p.memory, p.queries, denoising=layout)
        losses = self.set_losses(student, out, p.queries, targets, stage1=True)
        if _has_denoising(student):
            losses.update(student.denoising_losses(dn, layout, targets))
        return losses

    # -- the unlabeled images -----------------------------------------------------------------------------
    def candidates(self, tp: DETRTeacherPass, batch: Batch) -> list[PseudoCandidates]:
        """Each unlabeled image's teacher detections, the ``mean + std`` set and the ``tau_s`` set."""
        out = []
        for det, matrix, strong in zip(tp.detections, batch.teacher_to_student, batch.strong):
            wh = det.boxes[:, 2:] - det.boxes[:, :2]
            mapped, in_view = boxes_to_view(det.boxes, matrix, tuple(strong.shape[1:]))
            usable = (wh > 0).all(1) & in_view.to(wh.device)
            initial = mean_std_filter(det.scores) & usable
            out.append(PseudoCandidates(det.boxes, mapped.to(det.boxes), det.labels, det.scores, usable, initial,
                                        initial & (det.scores >= self.options.tau_s)))
        return out

    def mined_masks(self, student: DETRBase, sp: DETRPass, cands: list[PseudoCandidates]) -> tuple[list[Tensor], float]:
        """§3.5: per image the ``mean + std`` boxes whose matched cost against the student's last layer
        (no gradient) is at most the batch's GMM threshold (``| main`` with ``cqc_union_tau``), and the
        threshold."""
        o = self.options
        with torch.no_grad():
            plain = student.decode_queries(sp.memory, sp.queries)
            costs = []
            for b, c in enumerate(cands):
                gt = normalized_queries_boxes(c.student_boxes[c.mean_std], sp.batch.image_sizes[b])
                costs.append(matched_costs(plain.logits[-1, b], plain.boxes[-1, b], c.labels[c.mean_std], gt,
                                           weights=student.assigner.weights))
        flat = torch.cat(costs) if costs else torch.zeros(0, device=sp.batch.tensors.device)
        pooled = all_gather_1d(flat[torch.isfinite(flat)])
        threshold = gmm_cost_threshold(pooled, rule=o.gmm_threshold)
        masks = []
        for c, cost in zip(cands, costs):
            mined = torch.zeros_like(c.mean_std)
            mined[torch.where(c.mean_std)[0]] = cost.to(c.mean_std.device) <= threshold
            masks.append(mined | c.main if o.cqc_union_tau else mined)
        return masks, threshold

    def consistency_masks(self, student: DETRBase, sp: DETRPass, cands: list[PseudoCandidates]
                          ) -> tuple[list[Tensor], float | None]:
        """Table 5: the boxes of the cross-view queries per image (and the GMM threshold, if mined)."""
        o = self.options
        if o.cqc_boxes == "gmm":
            return self.mined_masks(student, sp, cands)
        if o.cqc_boxes == "mean_std":
            return [c.mean_std for c in cands], None
        if o.cqc_boxes == "fixed":
            return [c.usable & (c.scores >= o.cqc_fixed_thresh) for c in cands], None
        masks = []
        for c in cands:  # "topk": the best usable detections (scores are descending)
            mask = torch.zeros_like(c.usable)
            mask[torch.where(c.usable)[0][:o.cqc_topk]] = True
            masks.append(mask)
        return masks, None

    def _log(self, ctx: StepContext, batch: Batch, cands: list[PseudoCandidates], cqc_masks: list[Tensor] | None,
             threshold: float | None) -> None:
        for b, c in enumerate(cands):
            gt_b, gt_l = batch.gt_weak_boxes[b], batch.gt_weak_labels[b]
            ctx.stats.add_image(boxes=c.boxes[c.main], labels=c.labels[c.main], scores=c.scores[c.main],
                                gt_boxes=gt_b, gt_labels=gt_l)
            counts: dict[str, float] = {"mean_std_boxes": int(c.mean_std.sum())}
            if cqc_masks is not None:
                m = cqc_masks[b]
                tp, _ = match_to_ground_truth(c.boxes[m], c.labels[m], c.scores[m], gt_b, gt_l)
                counts.update(cqc_boxes=int(m.sum()), cqc_tp=int(tp.sum()))
            if threshold is not None:
                counts["gmm_threshold"] = threshold
            ctx.stats.add_counts(**counts)

    def unsupervised_terms(self, student: DETRBase, ctx: StepContext, batch: Batch, *, stage1: bool
                           ) -> tuple[dict[str, Tensor], Tensor | None]:
        """The unlabeled images' set losses (unweighted) and the consistency term (``None`` when off)."""
        o = self.options
        teacher: DETRBase = ctx.teacher
        tp = detr_teacher_pass(teacher, batch.weak, nms_iou=o.pseudo_nms_iou, score_thresh=o.pseudo_score_floor,
                               max_dets=o.pseudo_max_dets)
        sp = detr_pass(student, batch.strong)
        cands = self.candidates(tp, batch)
        cqc_on = o.cqc and (stage1 or not o.cqc_stage1_only)
        cqc_masks, threshold = self.consistency_masks(student, sp, cands) if cqc_on else (None, None)
        self._log(ctx, batch, cands, cqc_masks, threshold)

        sizes = sp.batch.image_sizes
        targets = Targets([c.labels[c.main] for c in cands],
                          [normalized_queries_boxes(c.student_boxes[c.main], s) for c, s in zip(cands, sizes)])
        dn_on = _has_denoising(student) and (not stage1 or o.dn_on_pseudo_in_stage1)
        layout = student.denoising_layout(targets) if dn_on else None
        student_queries = teacher_queries = None
        if cqc_on:
            student_queries, teacher_queries = self.cross_view_queries(student, tp, sp, cands, cqc_masks)
        cqc_out, dn, out = decode_with_extras(student, sp.memory, sp.queries, box_queries=student_queries,
                                              denoising=layout, box_groups_see_matching=o.cqc_sees_matching)
        unsup = self.set_losses(student, out, sp.queries, targets, stage1=stage1)
        if dn_on:
            unsup.update(student.denoising_losses(dn, layout, targets))
        if not o.cqc:
            return unsup, None
        if student_queries is None:  # consistency off in this stage, or no box in the batch
            return unsup, connected_zero(*student.roi_query_head.parameters())
        with torch.no_grad():
            t_out, _, _ = decode_with_extras(teacher, tp.memory, tp.queries if o.cqc_sees_matching else None,
                                             box_queries=teacher_queries, box_groups_see_matching=o.cqc_sees_matching)
        hs = cqc_out.hidden[:, student_queries.valid]  # (L, K, D)
        ht = t_out.hidden[:, teacher_queries.valid]
        loss = cqc_cosine_loss(hs, ht) if o.cqc_variant == "paper" else cqc_mse_loss(hs, ht)
        return unsup, loss

    def cross_view_queries(self, student: DETRBase, tp: DETRTeacherPass, sp: DETRPass, cands: list[PseudoCandidates],
                           masks: list[Tensor]) -> tuple[BoxQueries | None, BoxQueries | None]:
        """Eq. 9-10: the student decoder's queries (``c_t``: the student's head on the teacher's weak-view
        features, with gradient into the head; references in the strong view) and the teacher decoder's
        (paper: ``c_s``, the head on the student's strong-view features, no gradient; code: ``c_t``
        detached; references in the weak view)."""
        head = student.roi_query_head
        weak_boxes = [c.boxes[m] for c, m in zip(cands, masks)]
        strong_boxes = [c.student_boxes[m] for c, m in zip(cands, masks)]
        if sum(len(b) for b in weak_boxes) == 0:
            return None, None
        c_t = head(tp.features.srcs, weak_boxes, tuple(tp.batch.tensors.shape[-2:]))
        with torch.no_grad():
            if self.options.cqc_variant == "paper":
                c_s = head([s.detach() for s in sp.features.srcs], strong_boxes, tuple(sp.batch.tensors.shape[-2:]))
            else:
                c_s = c_t.detach()
        groups = self.options.cqc_groups
        s_refs = [normalized_queries_boxes(b, s) for b, s in zip(strong_boxes, sp.batch.image_sizes)]
        t_refs = [normalized_queries_boxes(b, s) for b, s in zip(weak_boxes, tp.batch.image_sizes)]
        return box_queries(c_t, s_refs, groups=groups), box_queries(c_s, t_refs, groups=groups)


__all__ = ["ASSIGNERS", "AlignedAssigner", "CODE_OPTIONS", "CQC_BOXES", "GMM_RULES", "GaussianMixture1D", "PseudoCandidates", "SemiDETR",
           "SemiDETROptions", "alignment_metric", "atss_assign", "cqc_cosine_loss", "cqc_mse_loss",
           "fit_gaussian_mixture_1d", "gmm_cost_threshold", "in_stage_one", "matched_costs", "max_iou_assign",
           "mean_std_filter", "normalized_alignment", "one_to_many_assign", "one_to_many_losses",
           "ramped_keep_rate", "simota_assign", "task_aligned_focal_loss"]
