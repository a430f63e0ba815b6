"""DTG-SSOD: Dense Teacher Guidance for Semi-Supervised Object Detection (Li et al., NeurIPS 2022,
https://arxiv.org/abs/2207.05536).

A mean teacher without sparse pseudo boxes: the teacher's NMS at each stage (RPN, R-CNN) groups its
dense candidates into clusters, and the student learns that grouping directly ("dense-to-dense").

* One-to-one correspondence (Sec. 3.2): at the R-CNN stage the teacher's proposals, mapped into the
  student's view, are the student's R-CNN samples; at the RPN stage each teacher anchor, mapped into
  the student's view, goes to an FPN level by its size (:func:`anchor_levels`) and to the student
  anchor of largest IoU on that level (:func:`match_anchors`, a local search, not all pairs).
* Inverse NMS Clustering, Eq. 2-3: every member of a cluster gets the kept box's class and the kept box
  (mapped into the student's view) as its target; samples whose teacher score is below ``tau`` are
  background (:func:`inverse_nms_targets`). Focal loss (the detector's ``cls_loss='focal'``) and
  smooth-L1, normalised as the detector does (by the number of samples).
* Rank Matching, Eq. 4-5: per cluster, KL(D_t || D_s) of the softmax at temperature ``T`` over the
  members' target-class logits, averaged over clusters (:func:`rank_matching_loss`).
* Eq. 6: ``L_u = L_cls + L_reg + beta * L_RM`` per stage; the trainer weights the sum by alpha
  (``unsup_weight``) and ramps it over ``unsup_warmup`` iterations (the paper's 4k warm-up).
* The sparse-to-dense baseline (Sec. 3.1, Tables 2c-d): ``rpn_mode`` / ``rcnn_mode`` ``"sparse"`` use
  the teacher's post-NMS detections above ``sparse_threshold`` (0.9) as pseudo boxes with the
  detector's IoU assignment and box regression on, per stage, on the same code path. Both stages
  sparse is the computation of ``pseudo_label`` with ``score_thresh 0.9, box_regression, rpn_regression``.
* The one-stage detector of Table 3c (GFL, :mod:`ssodlib.models.detectors.gfl`; the method dispatches on
  the student's family, Faster R-CNN is unchanged): one dense stage, its ``gfl_*`` options. The
  teacher's (location, class) pairs with sigmoid score ``> gfl_tau`` are clustered by its class-wise NMS
  (the detector's IoU 0.6); each teacher location goes to a student location by the RPN's anchor
  correspondence (:func:`anchor_levels` with ``S`` the finest anchor, :func:`match_anchors`); members
  get the kept box's class with GFL's own QFL target, the IoU of the student's predicted box with the
  kept box mapped into its view (``gfl_quality``), and DFL + GIoU toward that box; locations below
  ``gfl_tau`` are background; Rank Matching over the members' class-``c`` logits (:func:`gfl_inc`).
  GFL's losses keep its normalisation (QFL / positives; GIoU, DFL weighted by the predicted score).
  ``gfl_mode: sparse``: the teacher's detections above ``gfl_sparse_threshold`` with ATSS.

* Figures 3-4 (single examples in the paper) as training-log diagnostics of the dense R-CNN stage, our
  quantitative reading: the same teacher proposals labelled by INC and by IoU to the sparse pseudo boxes,
  each against the IoU assignment to the withheld labels (:func:`iou_assignment`,
  :func:`assignment_agreement`); pairs of a cluster's members ordered by the teacher's and by the student's
  class probability against their boxes' IoU with the cluster's ground truth (:func:`member_quality`,
  :func:`rank_agreement`; members closer than ``RANK_MIN_GAP`` in IoU are not ranked, our choice).

No official code exists (the authors' repository is a placeholder). Facts taken from the authors'
previous method PseCo where the paper is silent: the teacher's proposals are the student's R-CNN
input, boxes mapped by the views' matrices; R-CNN focal loss normalised by the number of samples.

Choices of this implementation (the paper is silent or wrong):
* the printed FPN-level rule ``log2(area / S)`` maps the paper's own 32 px anchor to level 5; we use
  ``clamp(round(log2(sqrt(area) / S)), 0, L - 1)`` with ``S`` the finest anchor size;
* NMS IoU: the detector's (RPN 0.7 per FPN level, R-CNN 0.5 per class); no ``detections_per_img``
  cap before clustering (the cap is an output rule); clusters are formed on the regressed boxes;
* with ``tau = 0.45`` a proposal may be a candidate of two classes: its label and box target come from
  its higher-scoring candidate (ties: the lower class); both stay members for Rank Matching;
* a cluster whose kept box leaves the student's view has its members ignored, not background;
  a student anchor reached by several teacher anchors takes a foreground one first, then the higher
  teacher score; student anchors no teacher anchor reaches are ignored; the RPN loss samples the
  INC-labelled anchors with the detector's RPN sampler (256, half positives);
* singleton clusters count in Rank Matching's mean (with KL 0), as "averaged over all NMS clusters";
  no ``T^2`` factor (the equation has none);
* the teacher is in eval mode, so its proposals use the detector's test-phase counts
  (``rcnn_max_proposals`` caps them further, for cost);
* GFL: ``gfl_tau = 0.4`` and the sparse baseline's threshold 0.4 (the paper gives neither; 0.4 is the
  authors' one-stage pseudo-label threshold in PseCo's RetinaNet configuration); no ``nms_pre`` cap
  before clustering; a location that is a candidate of two classes takes its higher-scoring one's
  label and box, both stay members for Rank Matching (as at the R-CNN stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from ssodlib.config import Rule, check_ranges
from ssodlib.data.batch import Batch
from ssodlib.data.transforms import transform_boxes
from ssodlib.methods.base import JointLosses, StepContext, TeacherStudentMethod
from ssodlib.methods.rcnn_passes import pseudo_labels_in_student_view, select_pseudo_labels, to_student_view
from ssodlib.models.detectors.base import ImageBatch
from ssodlib.models.detectors.faster_rcnn import FasterRCNN, RoISamples, RPNOutput
from ssodlib.models.detectors.gfl import GFL, GFLOutput
from ssodlib.models.losses import box_regression_loss
from ssodlib.models.nms import nms_clusters, paired_iou

BACKGROUND = 0  # the RoI head's background index (classes are 1..C inside it); RPN: 0 bg, 1 object
MODES = ("dense", "sparse", "none")  # not "off": YAML reads an unquoted off as false
GFL_QUALITY = ("iou", "teacher", "one")


@dataclass(frozen=True, kw_only=True)
class DTGOptions:
    """The switches of Tables 2-3 and the paper's constants."""

    rpn_mode: str = "dense"  # Tables 2a/2c: dense-to-dense (DTG), sparse-to-dense baseline, or no unlabeled loss
    rcnn_mode: str = "dense"
    rpn_tau: float = 0.9  # NMS score threshold of the RPN stage (Sec. 4.2)
    rcnn_tau: float = 0.45  # of the R-CNN stage
    rpn_inc_cls: bool = True  # Table 2b, per stage: INC classification labels
    rpn_inc_reg: bool = True  # INC regression targets
    rpn_rank_matching: bool = True  # RM
    rcnn_inc_cls: bool = True
    rcnn_inc_reg: bool = True
    rcnn_rank_matching: bool = True
    temperature: float = 1.0  # T of Eq. 4 (Table 3a)
    beta: float = 3.0  # weight of L_RM in Eq. 6 (Table 3b)
    sparse_threshold: float = 0.9  # score of the sparse baseline's pseudo boxes
    rpn_nms_iou: float | None = None  # None: the detector's rpn_nms_thresh
    rcnn_nms_iou: float | None = None  # None: the detector's nms_thresh
    rcnn_max_proposals: int | None = None  # cap on the teacher proposals per image (cost); None: all
    match_radius: int = 2  # grid cells searched around a mapped anchor's centre
    # GFL (Table 3c), whose dense head is the one stage (the rpn_* / rcnn_* options are Faster R-CNN's)
    gfl_mode: str = "dense"  # dense-to-dense (DTG), sparse-to-dense baseline, or no unlabeled loss
    gfl_tau: float = 0.4  # NMS score threshold of the teacher's candidates (not in the paper, see above)
    gfl_inc_cls: bool = True  # INC class labels (QFL)
    gfl_inc_reg: bool = True  # INC box targets (GIoU + DFL)
    gfl_rank_matching: bool = True
    gfl_nms_iou: float | None = None  # None: the detector's nms_thresh
    gfl_sparse_threshold: float = 0.4  # score of the sparse baseline's pseudo boxes
    # QFL target of the members' class: "iou" (GFL's: IoU of the student's box with the kept box),
    # "teacher" (the teacher's score of the location's candidate) or "one"
    gfl_quality: str = "iou"


OPTION_RULES = {"rpn_mode": Rule(choices=MODES), "rcnn_mode": Rule(choices=MODES),
                "rpn_tau": Rule(low=0, high=1), "rcnn_tau": Rule(low=0, high=1),
                "temperature": Rule(low=0, open_low=True), "beta": Rule(low=0),
                "sparse_threshold": Rule(low=0, high=1), "rpn_nms_iou": Rule(low=0, high=1),
                "rcnn_nms_iou": Rule(low=0, high=1), "rcnn_max_proposals": Rule(low=1), "match_radius": Rule(low=0),
                "gfl_mode": Rule(choices=MODES), "gfl_tau": Rule(low=0, high=1), "gfl_nms_iou": Rule(low=0, high=1),
                "gfl_sparse_threshold": Rule(low=0, high=1), "gfl_quality": Rule(choices=GFL_QUALITY)}


# -- maths (pure functions) -----------------------------------------------------------------------
def rank_matching_loss(teacher_logits: Tensor, student_logits: Tensor, cluster: Tensor, temperature: float) -> Tensor:
    """Eq. 4-5: ``(N,)`` target-class logits of ``N`` candidates and their ``(N,)`` cluster index (-1:
    in no cluster; indices need not be contiguous). Per cluster, ``D = softmax(logits / T)`` over its
    members for teacher and student; returns the mean over clusters of ``KL(D_t || D_s)``, the teacher
    detached (a singleton gives 0 and counts; no cluster: a zero that keeps the graph)."""
    member = cluster >= 0
    if not member.any():
        return student_logits.sum() * 0.0
    ids, group = torch.unique(cluster[member], return_inverse=True)
    t = teacher_logits[member].detach().float() / temperature
    s = student_logits[member].float() / temperature
    log_dt, log_ds = _group_log_softmax(t, group, len(ids)), _group_log_softmax(s, group, len(ids))
    kl = log_dt.exp() * (log_dt - log_ds)
    return kl.new_zeros(len(ids)).index_add_(0, group, kl).mean()


def _group_log_softmax(x: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``log softmax`` of ``(N,)`` values within each group (max-subtracted for stability)."""
    top = x.new_full((num_groups,), float("-inf")).scatter_reduce(0, group, x.detach(), "amax")
    z = x - top[group]
    total = z.new_zeros(num_groups).index_add_(0, group, z.exp())
    return z - total.log()[group]


def anchor_levels(boxes: Tensor, *, finest_anchor_size: float, num_levels: int) -> Tensor:
    """``(N,)`` FPN level (0 = finest) of ``(N, 4)`` boxes: ``clamp(round(log2(sqrt(area) / S)), 0, L-1)``.
    The paper prints ``log2(area / S)``, which sends its own 32 px anchor (S = 32) to level 5; with the
    square root every untransformed anchor lands on its own level and a view scaled by ``s`` moves it
    by ``log2 s`` levels."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    level = torch.round(torch.log2(wh.prod(1).sqrt() / finest_anchor_size))
    return level.clamp(0, num_levels - 1).to(torch.int64)


def inverse_nms_targets(clusters: Tensor | Sequence[Tensor], kept_boxes: Tensor, kept_labels: Tensor,
                        num_candidates: int) -> tuple[Tensor, Tensor]:
    """Eq. 2-3's labels: every member of cluster ``j`` takes the kept box's class and box.

    Args:
        clusters: ``(num_candidates,)`` index into the kept boxes of each candidate's cluster, -1 for a
            candidate in none (below ``tau``); or a sequence of ``K`` index tensors, the members of each.
        kept_boxes: ``(K, 4)``; kept_labels: ``(K,)`` classes ``0..C-1`` (the interface's).
    Returns:
        ``(num_candidates,)`` target labels, ``BACKGROUND`` (0) or class + 1 (the RoI head's ``1..C``;
        for the RPN, kept labels 0 give 1 = object), and ``(num_candidates, 4)`` target boxes (zeros for
        background).
    """
    if not isinstance(clusters, Tensor):
        index = torch.full((num_candidates,), -1, dtype=torch.int64, device=kept_boxes.device)
        for j, members in enumerate(clusters):
            index[members] = j
        clusters = index
    clusters = clusters.to(torch.int64)
    fg = clusters >= 0
    labels = torch.full((num_candidates,), BACKGROUND, dtype=torch.int64, device=kept_boxes.device)
    boxes = kept_boxes.new_zeros((num_candidates, 4))
    labels[fg] = kept_labels.to(torch.int64)[clusters[fg]] + 1
    boxes[fg] = kept_boxes[clusters[fg]]
    return labels, boxes


def match_anchors(boxes: Tensor, levels: Tensor, grids: Sequence["LevelGrid"], *, radius: int = 2) -> Tensor:
    """For ``(N, 4)`` boxes (teacher anchors in the student's view) on ``(N,)`` levels, the flat index of
    the student anchor of largest IoU on that level, searched over the ``(2r+1)^2 * A`` anchors around
    the box centre's grid cell (an all-pairs IoU against a level would be ~10^8 values at mini scale).
    -1 where the best IoU is 0."""
    out = torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device)
    steps = torch.arange(-radius, radius + 1, device=boxes.device)
    for lvl, g in enumerate(grids):
        sel = torch.where(levels == lvl)[0]
        if len(sel) == 0:
            continue
        b = boxes[sel]
        cx = torch.round((b[:, 0] + b[:, 2]) / 2 / g.stride[1]).long()
        cy = torch.round((b[:, 1] + b[:, 3]) / 2 / g.stride[0]).long()
        xs = (cx[:, None] + steps).clamp(0, g.width - 1)  # (n, 2r+1)
        ys = (cy[:, None] + steps).clamp(0, g.height - 1)
        cell = (ys[:, :, None] * g.width + xs[:, None, :]).reshape(len(b), -1)  # (n, (2r+1)^2)
        shift = torch.stack([xs[:, None, :].expand(-1, len(steps), -1) * g.stride[1],
                             ys[:, :, None].expand(-1, -1, len(steps)) * g.stride[0]], -1).reshape(len(b), -1, 2)
        cand = g.cell_anchors[None, None] + shift.repeat(1, 1, 2)[:, :, None, :].to(b)  # (n, cells, A, 4)
        iou = paired_iou(cand.reshape(-1, 4), b[:, None, None, :].expand_as(cand).reshape(-1, 4))
        best_iou, best = iou.reshape(len(b), -1).max(1)
        a = g.cell_anchors.shape[0]
        flat = g.offset + cell.gather(1, (best // a)[:, None])[:, 0] * a + best % a
        out[sel] = torch.where(best_iou > 0, flat, torch.full_like(flat, -1))
    return out


@dataclass(frozen=True)
class LevelGrid:
    """One FPN level's anchors: ``stride`` (y, x) px, grid ``height x width``, ``cell_anchors`` ``(A, 4)``
    at cell (0, 0) and the level's ``offset`` in the flat anchor order (torchvision's:
    ``offset + (y * width + x) * A + a``, anchors centred at ``(x * stride, y * stride)``)."""

    stride: tuple[int, int]
    height: int
    width: int
    cell_anchors: Tensor
    offset: int


def level_grids(rpn: RPNOutput, batch: ImageBatch) -> list[LevelGrid]:
    """The anchor grids of a batch (every image of a padded batch has the same anchors)."""
    h_img, w_img = batch.tensors.shape[-2:]
    grids, offset = [], 0
    for obj, n in zip(rpn.objectness, rpn.num_anchors_per_level):
        a, h, w = obj.shape[1:]
        grids.append(LevelGrid((h_img // h, w_img // w), h, w, rpn.anchors[0][offset:offset + a], offset))
        offset += n
    return grids


def candidate_clusters(boxes: Tensor, scores: Tensor, groups: Tensor, *, tau: float,
                       iou: float) -> tuple[Tensor, Tensor]:
    """The teacher's NMS on its candidates (``scores > tau``), per group (class or FPN level), no cap:
    ``(Q,)`` indices of the candidates and ``(Q,)`` cluster index in ``keep`` order, and ``keep``."""
    cand = torch.where(scores > tau)[0]
    keep = batched_nms(boxes[cand], scores[cand], groups[cand], iou)
    return cand, nms_clusters(boxes[cand], groups[cand], keep, iou), keep


def best_candidate_per_sample(sample: Tensor, scores: Tensor, num_samples: int) -> Tensor:
    """``(num_samples,)`` index of each sample's highest-scoring candidate (ties: the earlier one), -1 if none."""
    order = torch.argsort(-scores, stable=True)
    order = order[torch.argsort(sample[order], stable=True)]
    out = torch.full((num_samples,), -1, dtype=torch.int64, device=sample.device)
    first = torch.ones(len(order), dtype=torch.bool, device=sample.device)
    first[1:] = sample[order][1:] != sample[order][:-1]
    out[sample[order][first]] = order[first]
    return out


def scatter_by_priority(target: Tensor, priority: Tensor, size: int) -> Tensor:
    """``(size,)`` index of the highest-``priority`` entry sent to each ``target`` (-1 none);
    deterministic (sorts, no racing writes)."""
    ok = target >= 0
    idx = torch.where(ok)[0]
    idx = idx[torch.argsort(priority[idx], stable=True)]
    idx = idx[torch.argsort(target[idx], stable=True)]
    out = torch.full((size,), -1, dtype=torch.int64, device=target.device)
    if len(idx):
        last = torch.ones(len(idx), dtype=torch.bool, device=target.device)
        last[:-1] = target[idx][1:] != target[idx][:-1]
        out[target[idx][last]] = idx[last]
    return out


# -- diagnostics of Figures 3 and 4 ------------------------------------------------------------------
RANK_MIN_GAP = 0.05  # two members whose IoUs differ by less are not ranked (a tie, our choice)


def iou_assignment(proposals: Tensor, boxes: Tensor, labels: Tensor, *, iou_threshold: float) -> Tensor:
    """The detector's RoI assignment of ``(N, 4)`` proposals to ``(K, 4)`` boxes of 0-based ``(K,)``
    labels: the label + 1 of the box of largest IoU where that IoU is >= ``iou_threshold``, else 0
    (background); ``(N,)``."""
    out = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
    if len(boxes) == 0 or len(proposals) == 0:
        return out
    iou = box_iou(proposals.float(), boxes.float().to(proposals.device))
    best, index = iou.max(1)
    fg = best >= iou_threshold
    out[fg] = labels.to(proposals.device)[index[fg]].long() + 1
    return out


def assignment_agreement(dense: Tensor, sparse: Tensor, truth: Tensor) -> dict[str, int]:
    """Fig. 3's comparison over identical samples, ``(N,)`` labels each (0 background, -1 ignored by
    ``dense``: left out): per paradigm its foreground labels (``*_fg``) and the correct ones
    (``*_tp``: the class ``truth`` gives), the true foreground (``gt_fg``), and the samples where the two
    paradigms disagree, split by which one ``truth`` sides with (``*_right``; both wrong: neither)."""
    use = dense >= 0
    dense, sparse, truth = dense[use], sparse[use], truth[use]
    differ = dense != sparse
    return {"assign_samples": int(use.sum()), "assign_gt_fg": int((truth > 0).sum()),
            "assign_dense_fg": int((dense > 0).sum()), "assign_dense_tp": int(((dense > 0) & (dense == truth)).sum()),
            "assign_sparse_fg": int((sparse > 0).sum()),
            "assign_sparse_tp": int(((sparse > 0) & (sparse == truth)).sum()),
            "assign_differ": int(differ.sum()), "assign_differ_dense_right": int((differ & (dense == truth)).sum()),
            "assign_differ_sparse_right": int((differ & (sparse == truth)).sum())}


def member_quality(boxes: Tensor, cluster: Tensor, kept_boxes: Tensor, kept_labels: Tensor, gt_boxes: Tensor,
                   gt_labels: Tensor, *, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Each cluster member's localization quality for Fig. 4: ``(Q, 4)`` member boxes of ``(Q,)`` clusters
    (-1 none) whose ``(K, 4)`` kept boxes have 0-based ``(K,)`` labels. A cluster is judged when its kept
    box overlaps a ground truth of its class by IoU >= ``iou_threshold`` (the one of largest IoU); its
    members' quality is their IoU with that ground truth. Returns ``(Q,)`` quality and ``(Q,)`` clusters,
    -1 where the member's cluster is not judged."""
    quality = boxes.new_zeros(len(boxes)).float()
    judged = torch.full((len(kept_boxes),), -1, dtype=torch.int64, device=boxes.device)
    if len(kept_boxes) and len(gt_boxes):
        iou = box_iou(kept_boxes.float(), gt_boxes.float().to(boxes.device))
        iou[kept_labels.to(boxes.device)[:, None] != gt_labels.to(boxes.device)[None, :]] = -1.0
        best, index = iou.max(1)
        judged = torch.where(best >= iou_threshold, index, -1)
    gt_of = torch.where(cluster >= 0, judged[cluster.clamp(min=0)], -1) if len(judged) else cluster.new_full(cluster.shape, -1)
    has = gt_of >= 0
    if has.any():
        quality[has] = paired_iou(boxes[has].float(), gt_boxes.float().to(boxes.device)[gt_of[has]])
    return quality, torch.where(has, cluster, -1)


def rank_agreement(teacher: Tensor, student: Tensor, quality: Tensor, cluster: Tensor, *,
                   min_gap: float = RANK_MIN_GAP) -> dict[str, int]:
    """Fig. 4 as counts over the pairs of members of one cluster (``(Q,)`` clusters, -1: not judged)
    whose ``(Q,)`` quality differs by at least ``min_gap``: ``rank_pairs``, and the pairs the ``(Q,)``
    teacher and student scores order as the quality does (``rank_teacher_agree`` / ``rank_student_agree``;
    a tied score agrees with neither order)."""
    same = (cluster[:, None] == cluster[None, :]) & (cluster[:, None] >= 0)
    gap = quality[:, None] - quality[None, :]
    pairs = same & (gap >= min_gap)  # i better than j: each unordered pair once
    t_gap = teacher.float()[:, None] - teacher.float()[None, :]
    s_gap = student.float()[:, None] - student.float()[None, :]
    return {"rank_pairs": int(pairs.sum()), "rank_teacher_agree": int((pairs & (t_gap > 0)).sum()),
            "rank_student_agree": int((pairs & (s_gap > 0)).sum())}


# -- per-stage assignments ------------------------------------------------------------------------
@dataclass
class StageTargets:
    """One stage's INC assignment for one image, in the student's samples: ``labels`` ``(S,)`` (-1
    ignored), ``boxes`` ``(S, 4)`` student-view targets, and for Rank Matching the members' teacher
    logits, the student sample each corresponds to and their cluster."""

    labels: Tensor
    boxes: Tensor
    rm_teacher: Tensor
    rm_sample: Tensor
    rm_cluster: Tensor
    rm_class: Tensor | None  # (Q,) the cluster's class + 1 (R-CNN logit column); None at the RPN
    num_clusters: int
    kept_boxes: Tensor  # (K, 4) teacher view, and their labels / scores (diagnostics)
    kept_labels: Tensor
    kept_scores: Tensor
    scores: Tensor | None = None  # (S,) the teacher's score of each sample's candidate (GFL's quality option)
    rm_boxes: Tensor | None = None  # (Q, 4) the members' own boxes in the teacher's view (Fig. 4's diagnostics)
    rm_scores: Tensor | None = None  # (Q,) the teacher's probability of the members' class (Fig. 4's diagnostics)


class DTGSSOD(TeacherStudentMethod):
    """Inverse NMS Clustering and Rank Matching at the RPN and R-CNN stages of Faster R-CNN, or at GFL's
    dense head (see the module docstring)."""

    name = "dtg_ssod"
    detector_family = ("faster_rcnn", "gfl")
    Options = DTGOptions

    def __init__(self, *, options=None) -> None:
        super().__init__(options=options)
        check_ranges(self.options, OPTION_RULES, what=f"method {self.name!r} option")

    def unsupervised_losses(self, student: FasterRCNN | GFL, ctx: StepContext, batch: Batch) -> JointLosses:
        if isinstance(student, GFL):
            return self._gfl_step(student, ctx, batch)
        o = self.options
        t = _teacher_outputs(ctx.teacher, batch.weak, max_proposals=o.rcnn_max_proposals)
        n_lab = len(batch.images)
        sb = student.preprocess(batch.images + batch.strong)
        feats = student.features(sb)
        rpn = student.rpn(feats, sb)
        props, _ = student.proposals(rpn, sb)
        sparse = self._sparse_pseudo_boxes(ctx, t, batch) if "sparse" in (o.rpn_mode, o.rcnn_mode) else None
        lab_samples = student.sample_rois(props[:n_lab], batch.boxes, batch.labels)
        unl_samples, rcnn_rm = self._rcnn_samples(student, ctx, t, batch, props[n_lab:], sparse)
        samples = RoISamples(*(a + b for a, b in zip(
            (lab_samples.proposals, lab_samples.labels, lab_samples.matched_boxes, lab_samples.matched_index),
            (unl_samples.proposals, unl_samples.labels, unl_samples.matched_boxes, unl_samples.matched_index))))
        rois = student.roi_head(feats, samples.proposals, sb)
        lab, unl = slice(0, n_lab), slice(n_lab, None)
        supervised = {**student.rpn_loss(rpn.select(lab), batch.boxes),
                      **student.roi_loss(rois.select(lab), samples.select(lab))}
        unsup = {**self._rpn_losses(student, ctx, t, batch, rpn.select(unl), sb, sparse),
                 **self._rcnn_losses(student, rois.select(unl), samples.select(unl), rcnn_rm)}
        if rcnn_rm is not None:
            self._log_ranks(ctx, rois.select(unl), rcnn_rm, batch)
        return JointLosses(supervised, unsup)

    # -- sparse-to-dense baseline ------------------------------------------------------------------
    def _sparse_pseudo_boxes(self, ctx: StepContext, t: "TeacherOutputs", batch: Batch) -> tuple[list, list]:
        def select(det, *_):
            return select_pseudo_labels(det, score_thresh=self.options.sparse_threshold)

        # the R-CNN's pseudo labels are what the diagnostics show
        return pseudo_labels_in_student_view(ctx, t.detections, batch, select,
                                             log=self.options.rcnn_mode == "sparse")

    # -- R-CNN stage ---------------------------------------------------------------------------------
    def _rcnn_samples(self, student: FasterRCNN, ctx: StepContext, t: "TeacherOutputs", batch: Batch,
                      student_props: list[Tensor], sparse) -> tuple[RoISamples, list[StageTargets] | None]:
        o = self.options
        if o.rcnn_mode == "sparse":
            return student.sample_rois(student_props, *sparse), None
        if o.rcnn_mode == "none":
            empty = [p[:0] for p in student_props]
            return RoISamples(empty, [p.new_zeros(0, dtype=torch.int64) for p in empty], empty,
                              [p.new_zeros(0, dtype=torch.int64) for p in empty]), None
        iou = student.config.nms_thresh if o.rcnn_nms_iou is None else o.rcnn_nms_iou
        out, targets = RoISamples([], [], [], []), []
        for b, (m, strong) in enumerate(zip(batch.teacher_to_student, batch.strong)):
            st, mapped = rcnn_inc(t, b, m, strong.shape[1:], tau=o.rcnn_tau, iou=iou)
            keep = st.labels >= 0  # ignored proposals (their kept box left the view) are dropped
            new_index = torch.cumsum(keep.long(), 0) - 1
            st.rm_sample = torch.where(keep[st.rm_sample], new_index[st.rm_sample], -1)
            st.rm_cluster = torch.where(st.rm_sample >= 0, st.rm_cluster, -1)
            out.proposals.append(mapped[keep])
            out.labels.append(st.labels[keep])
            out.matched_boxes.append(st.boxes[keep])
            out.matched_index.append(torch.where(st.labels[keep] > 0, 0, -1))
            targets.append(st)
            self._log_rcnn(ctx, st, batch, b, mapped[keep])
            self._log_assignments(ctx, t, batch, b, mapped[keep], st.labels[keep], student.config.roi_iou_threshold)
        return out, targets

    def _log_assignments(self, ctx: StepContext, t: "TeacherOutputs", batch: Batch, b: int, props: Tensor,
                         dense: Tensor, iou_threshold: float) -> None:
        """Fig. 3 as counts: the identical proposals labelled by INC (``dense``) and by the sparse paradigm
        (IoU assignment to the teacher's detections >= ``sparse_threshold``), each against the IoU
        assignment to the withheld labels, all in the student's view."""
        m, size = batch.teacher_to_student[b], batch.strong[b].shape[1:]
        boxes, labels, _ = select_pseudo_labels(t.detections[b], score_thresh=self.options.sparse_threshold)
        mapped, ok = to_student_view(boxes, m, size)
        sparse = iou_assignment(props, mapped[ok], labels[ok], iou_threshold=iou_threshold)
        truth = iou_assignment(props, batch.gt_strong_boxes[b], batch.gt_strong_labels[b], iou_threshold=iou_threshold)
        ctx.stats.add_counts(**{f"dtg_{k}": v for k, v in assignment_agreement(dense, sparse, truth).items()})

    def _log_rcnn(self, ctx: StepContext, st: StageTargets, batch: Batch, b: int, props: Tensor) -> None:
        """INC's assignment as diagnostics: the kept boxes of the clusters (as pseudo boxes: per image and
        precision against the withheld labels), members and foreground targets per image, and the
        foreground proposals' labels against the withheld labels in the student's view."""
        ctx.stats.add_image(boxes=st.kept_boxes, labels=st.kept_labels, scores=st.kept_scores,
                            gt_boxes=batch.gt_weak_boxes[b], gt_labels=batch.gt_weak_labels[b])
        labels = st.labels[st.labels >= 0]
        ctx.stats.add_counts(dtg_rcnn_clusters=st.num_clusters, dtg_rcnn_members=int((st.rm_cluster >= 0).sum()),
                             dtg_rcnn_fg_targets=int((labels > 0).sum()))
        ctx.stats.add_rois(roi_boxes=props, roi_labels=labels, gt_boxes=batch.gt_strong_boxes[b],
                           gt_labels=batch.gt_strong_labels[b])

    def _rcnn_losses(self, student: FasterRCNN, rois, samples: RoISamples,
                     targets: list[StageTargets] | None) -> dict[str, Tensor]:
        o = self.options
        if o.rcnn_mode == "none":
            return {"loss_cls": _zero_like(rois.class_logits), "loss_box": _zero_like(rois.box_deltas)}
        dense = o.rcnn_mode == "dense"
        losses = student.roi_loss(rois, samples, regression=o.rcnn_inc_reg or not dense)
        if dense and not o.rcnn_inc_cls:
            losses["loss_cls"] = _zero_like(rois.class_logits)
        if dense and o.rcnn_rank_matching:
            losses["loss_rm"] = o.beta * self._rcnn_rm(rois, targets)
        return losses

    def _rcnn_rm(self, rois, targets: list[StageTargets]) -> Tensor:
        """Rank Matching over all images' R-CNN clusters: the student's logit of the cluster's class."""
        t_logits, s_logits, clusters, start, offset = [], [], [], 0, 0
        for st, count in zip(targets, rois.counts):
            ok = st.rm_sample >= 0
            s_logits.append(rois.class_logits[start + st.rm_sample[ok], st.rm_class[ok]])
            t_logits.append(st.rm_teacher[ok])
            clusters.append(st.rm_cluster[ok] + offset)
            start, offset = start + count, offset + st.num_clusters
        if not clusters:
            return _zero_like(rois.class_logits)
        return rank_matching_loss(torch.cat(t_logits), torch.cat(s_logits), torch.cat(clusters), self.options.temperature)

    @torch.no_grad()
    def _log_ranks(self, ctx: StepContext, rois, targets: list[StageTargets], batch: Batch) -> None:
        """Fig. 4 as counts: within each R-CNN cluster whose kept box finds a withheld box of its class
        (IoU >= 0.5), the pairs of members ordered by the teacher's and by the student's probability of
        the cluster's class (the score NMS ranks by) against their boxes' IoU with that ground truth
        (teacher view)."""
        start = 0
        for b, (st, count) in enumerate(zip(targets, rois.counts)):
            ok = st.rm_sample >= 0
            probs = rois.class_logits[start:start + count].float().softmax(-1)
            student_scores = probs[st.rm_sample[ok], st.rm_class[ok]]
            start += count
            quality, cluster = member_quality(st.rm_boxes[ok], st.rm_cluster[ok], st.kept_boxes, st.kept_labels,
                                              batch.gt_weak_boxes[b], batch.gt_weak_labels[b])
            agree = rank_agreement(st.rm_scores[ok], student_scores, quality, cluster)
            ctx.stats.add_counts(**{f"dtg_{k}": v for k, v in agree.items()})

    # -- RPN stage -----------------------------------------------------------------------------------
    def _rpn_losses(self, student: FasterRCNN, ctx: StepContext, t: "TeacherOutputs", batch: Batch,
                    rpn: RPNOutput, sb: ImageBatch, sparse) -> dict[str, Tensor]:
        o = self.options
        if o.rpn_mode == "none":
            obj, deltas = rpn.flat()
            return {"loss_rpn_cls": _zero_like(obj), "loss_rpn_reg": _zero_like(deltas)}
        if o.rpn_mode == "sparse":
            return student.rpn_loss(rpn, sparse[0], regression=True)
        grids = level_grids(rpn, sb)
        iou = student.config.rpn_nms_thresh if o.rpn_nms_iou is None else o.rpn_nms_iou
        obj, _ = rpn.flat()
        labels, boxes, rm = [], [], ([], [], [])
        for b, (m, strong) in enumerate(zip(batch.teacher_to_student, batch.strong)):
            st = rpn_inc(t, b, m, strong.shape[1:], grids, len(rpn.anchors[b]), student.config.anchor_sizes[0],
                         tau=o.rpn_tau, iou=iou, radius=o.match_radius)
            labels.append(st.labels)
            boxes.append(st.boxes)
            ok = st.rm_sample >= 0
            rm[0].append(st.rm_teacher[ok]); rm[1].append(obj[b, st.rm_sample[ok]])
            rm[2].append(st.rm_cluster[ok] + b * len(rpn.anchors[b]))  # unique ids across images
            ctx.stats.add_counts(dtg_rpn_clusters=st.num_clusters, dtg_rpn_members=int(ok.sum()),
                                 dtg_rpn_fg_anchors=int((st.labels > 0).sum()))
        losses = rpn_loss_from_labels(student, rpn, torch.stack(labels), torch.stack(boxes),
                                      regression=o.rpn_inc_reg)
        if not o.rpn_inc_cls:
            losses["loss_rpn_cls"] = _zero_like(obj)
        if o.rpn_rank_matching:
            losses["loss_rpn_rm"] = o.beta * rank_matching_loss(torch.cat(rm[0]), torch.cat(rm[1]), torch.cat(rm[2]),
                                                                o.temperature)
        return losses

    # -- GFL (Table 3c) ------------------------------------------------------------------------------
    def _gfl_step(self, student: GFL, ctx: StepContext, batch: Batch) -> JointLosses:
        """One student pass over the labeled images and the strong views; GFL's supervised losses on the
        former, the ``gfl_mode`` losses on the latter."""
        t = _gfl_teacher_outputs(ctx.teacher, batch.weak, detections=self.options.gfl_mode == "sparse")
        n_lab = len(batch.images)
        sb = student.preprocess(batch.images + batch.strong)
        out = student.dense(student.features(sb))
        supervised = student.head_losses(out.select(slice(0, n_lab)), batch.boxes, batch.labels)
        return JointLosses(supervised, self._gfl_losses(student, ctx, t, batch, out.select(slice(n_lab, None))))

    def _gfl_losses(self, student: GFL, ctx: StepContext, t: "GFLTeacherOutputs", batch: Batch,
                    out: GFLOutput) -> dict[str, Tensor]:
        o = self.options
        if o.gfl_mode == "none":
            return {"loss_cls": _zero_like(out.cls_logits), "loss_bbox": _zero_like(out.reg_logits),
                    "loss_dfl": _zero_like(out.reg_logits)}
        if o.gfl_mode == "sparse":
            return student.head_losses(out, *self._gfl_pseudo_boxes(ctx, t, batch))
        grids = gfl_level_grids(out)
        iou = student.options.nms_thresh if o.gfl_nms_iou is None else o.gfl_nms_iou
        targets = []
        for b, (m, strong) in enumerate(zip(batch.teacher_to_student, batch.strong)):
            st = gfl_inc(t, b, m, strong.shape[1:], grids, len(out.anchors), student.finest_anchor_size,
                         tau=o.gfl_tau, iou=iou, radius=o.match_radius)
            targets.append(st)
            ctx.stats.add_image(boxes=st.kept_boxes, labels=st.kept_labels, scores=st.kept_scores,
                                gt_boxes=batch.gt_weak_boxes[b], gt_labels=batch.gt_weak_labels[b])
            ctx.stats.add_counts(dtg_gfl_clusters=st.num_clusters, dtg_gfl_members=int((st.rm_cluster >= 0).sum()),
                                 dtg_gfl_fg_targets=int((st.labels > 0).sum()))
        labels = torch.stack([st.labels for st in targets])
        quality = None
        if o.gfl_quality == "teacher":
            quality = torch.stack([st.scores for st in targets])
        elif o.gfl_quality == "one":
            quality = torch.ones(labels.shape, device=labels.device)
        losses = student.dense_losses(out, labels, torch.stack([st.boxes for st in targets]), quality=quality)
        if not o.gfl_inc_cls:
            losses["loss_cls"] = _zero_like(out.cls_logits)
        if not o.gfl_inc_reg:
            losses["loss_bbox"] = losses["loss_dfl"] = _zero_like(out.reg_logits)
        if o.gfl_rank_matching:
            losses["loss_rm"] = o.beta * self._gfl_rm(out, targets)
        return losses

    def _gfl_rm(self, out: GFLOutput, targets: list[StageTargets]) -> Tensor:
        """Rank Matching over all images' clusters: the student's class-``c`` logit at each member's
        location."""
        t_logits, s_logits, clusters, offset = [], [], [], 0
        for b, st in enumerate(targets):
            ok = st.rm_sample >= 0
            t_logits.append(st.rm_teacher[ok])
            s_logits.append(out.cls_logits[b, st.rm_sample[ok], st.rm_class[ok]])
            clusters.append(st.rm_cluster[ok] + offset)
            offset += st.num_clusters
        return rank_matching_loss(torch.cat(t_logits), torch.cat(s_logits), torch.cat(clusters),
                                  self.options.temperature)

    def _gfl_pseudo_boxes(self, ctx: StepContext, t: "GFLTeacherOutputs", batch: Batch) -> tuple[list, list]:
        """The sparse baseline's pseudo boxes: the teacher's detections scoring at least
        ``gfl_sparse_threshold``, in the student's view."""
        def select(det, *_):
            return select_pseudo_labels(det, score_thresh=self.options.gfl_sparse_threshold)

        return pseudo_labels_in_student_view(ctx, t.detections, batch, select)


def _zero_like(t: Tensor) -> Tensor:
    """A zero that keeps the graph connected (DDP needs every parameter to receive a gradient)."""
    return t.sum() * 0.0


# -- teacher ----------------------------------------------------------------------------------------
@dataclass
class TeacherOutputs:
    """The teacher on the weak views: per image its RPN objectness logits ``(M,)``, decoded anchors
    ``(M, 4)``, anchors ``(M, 4)`` and anchor levels ``(M,)``; its proposals ``(P, 4)``, RoI logits
    ``(P, C + 1)`` and class boxes ``(P, C + 1, 4)``; and its post-NMS detections (sparse baseline)."""

    rpn_logits: Tensor
    rpn_boxes: Tensor
    anchors: list[Tensor]
    anchor_levels: Tensor
    proposals: list[Tensor]
    roi_logits: list[Tensor]
    roi_boxes: list[Tensor]
    detections: list


@torch.no_grad()
def _teacher_outputs(teacher: FasterRCNN, weak: list[Tensor], *, max_proposals: int | None) -> TeacherOutputs:
    tb = teacher.preprocess(weak)
    feats = teacher.features(tb)
    rpn = teacher.rpn(feats, tb)
    props, _ = teacher.proposals(rpn, tb)
    if max_proposals is not None:  # proposals come sorted by objectness after NMS
        props = [p[:max_proposals] for p in props]
    rois = teacher.roi_head(feats, props, tb)
    obj, deltas = rpn.flat()
    boxes = teacher.rpn_coder.decode(deltas.float().reshape(-1, 4), rpn.anchors).reshape(obj.shape[0], -1, 4)
    boxes = torch.stack([clip_boxes_to_image(bx, s) for bx, s in zip(boxes, tb.image_sizes)])
    levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=obj.device)
                        for i, n in enumerate(rpn.num_anchors_per_level)])
    class_boxes = [clip_boxes_to_image(bx, s) for bx, s in
                   zip(teacher.decode_boxes(rois, props).split(rois.counts), tb.image_sizes)]
    dets = teacher.postprocess(rois, props, tb)
    return TeacherOutputs(obj.float(), boxes, rpn.anchors, levels, props,
                          list(rois.class_logits.float().split(rois.counts)), class_boxes, dets)


def rcnn_inc(t: TeacherOutputs, b: int, matrix: Tensor, size: tuple[int, int], *, tau: float,
             iou: float) -> tuple[StageTargets, Tensor]:
    """Image ``b``'s R-CNN INC: candidates are (proposal, class) pairs with ``p(c) > tau`` on their class's
    regressed box, clustered by the teacher's class-wise NMS; each proposal takes its best candidate's
    cluster target. Returns the targets over the proposals and the proposals in the student's view."""
    logits, boxes, props = t.roi_logits[b], t.roi_boxes[b], t.proposals[b]
    n, c1 = logits.shape
    probs = logits.softmax(-1)[:, 1:].reshape(-1)
    roi = torch.arange(n, device=logits.device).repeat_interleave(c1 - 1)
    cls = torch.arange(c1 - 1, device=logits.device).repeat(n)
    flat_boxes = boxes[:, 1:].reshape(-1, 4)
    cand, cluster, keep = candidate_clusters(flat_boxes, probs, cls, tau=tau, iou=iou)
    kept = cand[keep]
    cand_labels, _ = inverse_nms_targets(cluster, flat_boxes[kept], cls[kept], len(cand))
    mapped_kept, kept_ok = to_student_view(flat_boxes[kept], matrix, size)
    best = best_candidate_per_sample(roi[cand], probs[cand], n)
    has = best >= 0
    labels = torch.zeros(n, dtype=torch.int64, device=logits.device)
    target = props.new_zeros((n, 4)).float()
    labels[has] = cand_labels[best[has]]
    target[has] = mapped_kept[cluster[best[has]]]
    outside = torch.zeros_like(has)
    outside[has] = ~kept_ok[cluster[best[has]]]
    labels[outside] = -1  # the kept box left the student's view: ignored, not background
    mapped_props, props_ok = to_student_view(props, matrix, size)
    labels[~props_ok] = -1
    st = StageTargets(labels, target, rm_teacher=logits[roi[cand], cls[cand] + 1], rm_sample=roi[cand],
                      rm_cluster=torch.where(kept_ok[cluster], cluster, -1), rm_class=cls[cand] + 1,
                      num_clusters=len(keep), kept_boxes=flat_boxes[kept], kept_labels=cls[kept],
                      kept_scores=probs[kept], rm_boxes=flat_boxes[cand], rm_scores=probs[cand])
    return st, mapped_props


def rpn_inc(t: TeacherOutputs, b: int, matrix: Tensor, size: tuple[int, int], grids: Sequence[LevelGrid],
            num_student_anchors: int, finest_anchor_size: float, *, tau: float, iou: float,
            radius: int) -> StageTargets:
    """Image ``b``'s RPN INC: anchors with ``sigmoid(objectness) > tau``, clustered by the teacher's per-level
    NMS on their decoded boxes; labels and student-view kept boxes moved to the corresponding student
    anchors (teacher anchor -> student view -> :func:`anchor_levels` -> :func:`match_anchors`)."""
    logits, boxes, anchors = t.rpn_logits[b], t.rpn_boxes[b], t.anchors[b]
    scores = logits.sigmoid()
    cand, cluster, keep = candidate_clusters(boxes, scores, t.anchor_levels, tau=tau, iou=iou)
    kept = cand[keep]
    m = len(anchors)
    cand_labels, _ = inverse_nms_targets(cluster, boxes[kept], torch.zeros_like(kept), len(cand))
    mapped_kept, kept_ok = to_student_view(boxes[kept], matrix, size)
    t_labels = torch.zeros(m, dtype=torch.int64, device=logits.device)
    t_boxes = boxes.new_zeros((m, 4))
    t_labels[cand] = torch.where(kept_ok[cluster], cand_labels, -1)
    t_boxes[cand] = mapped_kept[cluster]
    mapped_anchors = _map_boxes(anchors, matrix)
    levels = anchor_levels(mapped_anchors, finest_anchor_size=finest_anchor_size, num_levels=len(grids))
    s_index = match_anchors(mapped_anchors, levels, grids, radius=radius)
    # foreground beats background, then the higher teacher score; ignored teacher anchors send nothing
    priority = (t_labels > 0).float() * 2 + scores
    winner = scatter_by_priority(torch.where(t_labels >= 0, s_index, -1), priority, num_student_anchors)
    labels = torch.full((num_student_anchors,), -1, dtype=torch.int64, device=logits.device)
    s_boxes = boxes.new_zeros((num_student_anchors, 4))
    won = winner >= 0
    labels[won], s_boxes[won] = t_labels[winner[won]], t_boxes[winner[won]]
    rm_cluster = torch.where(kept_ok[cluster] & (s_index[cand] >= 0), cluster, -1)
    return StageTargets(labels, s_boxes, rm_teacher=logits[cand], rm_sample=torch.where(rm_cluster >= 0, s_index[cand], -1),
                        rm_cluster=rm_cluster, rm_class=None, num_clusters=len(keep), kept_boxes=boxes[kept],
                        kept_labels=torch.zeros_like(kept), kept_scores=scores[kept])


def _map_boxes(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Boxes through the views' matrix, unclipped (an anchor's size decides its level)."""
    return transform_boxes(boxes.float(), matrix.to(boxes.device))


def rpn_loss_from_labels(student: FasterRCNN, rpn: RPNOutput, labels: Tensor, boxes: Tensor, *,
                         regression: bool) -> dict[str, Tensor]:
    """The detector's RPN loss (sampler, BCE, smooth-L1 of positives, both / sampled anchors) on
    ``(B, M)`` INC labels (1, 0, -1 ignored) and ``(B, M, 4)`` student-view target boxes."""
    c = student.config
    obj, deltas = rpn.flat()
    sampler = BalancedPositiveNegativeSampler(c.rpn_batch_size, c.rpn_positive_fraction)
    pos, neg = sampler([lab.float() for lab in labels])
    pos, neg = torch.stack(pos).bool(), torch.stack(neg).bool()
    n = (pos | neg).sum().clamp(min=1)
    loss_obj = F.binary_cross_entropy_with_logits(obj[pos | neg].float(), labels[pos | neg].float(),
                                                  reduction="sum") / n
    if not regression or not pos.any():
        return {"loss_rpn_cls": loss_obj, "loss_rpn_reg": _zero_like(deltas)}
    anchors = torch.stack(rpn.anchors)
    target = student.rpn_coder.encode_single(boxes[pos].to(anchors), anchors[pos])
    return {"loss_rpn_cls": loss_obj, "loss_rpn_reg": box_regression_loss(deltas[pos], target) / n}


# -- GFL (Table 3c) ---------------------------------------------------------------------------------
@dataclass
class GFLTeacherOutputs:
    """The teacher GFL on the weak views: per image its class logits ``(M, C)`` and decoded boxes
    ``(M, 4)`` (clipped), the batch's anchors ``(M, 4)``, and its post-NMS detections (sparse baseline)."""

    logits: Tensor
    boxes: Tensor
    anchors: Tensor
    detections: list


@torch.no_grad()
def _gfl_teacher_outputs(teacher: GFL, weak: list[Tensor], *, detections: bool) -> GFLTeacherOutputs:
    tb = teacher.preprocess(weak)
    out = teacher.dense(teacher.features(tb))
    boxes = torch.stack([clip_boxes_to_image(bx, s) for bx, s in zip(teacher.decode(out), tb.image_sizes)])
    dets = teacher.postprocess(out, tb) if detections else []
    return GFLTeacherOutputs(out.cls_logits.float(), boxes, out.anchors, dets)


def gfl_level_grids(out: GFLOutput) -> list[LevelGrid]:
    """GFL's location grids as anchor grids for :func:`match_anchors` (one anchor per location)."""
    grids, offset = [], 0
    for (h, w), stride, n in zip(out.level_sizes, out.level_strides, out.num_per_level):
        grids.append(LevelGrid((stride, stride), h, w, out.anchors[offset:offset + 1], offset))
        offset += n
    return grids


def gfl_inc(t: GFLTeacherOutputs, b: int, matrix: Tensor, size: tuple[int, int], grids: Sequence[LevelGrid],
            num_student_locations: int, finest_anchor_size: float, *, tau: float, iou: float,
            radius: int) -> StageTargets:
    """Image ``b``'s INC on GFL: candidates are (location, class) pairs with ``sigmoid(logit) > tau`` on the
    location's decoded box, clustered by the teacher's class-wise NMS; each location takes its best
    candidate's cluster (class + 1, the kept box in the student's view, the candidate's score) and sends
    it to the student location its anchor corresponds to (teacher anchor -> student view ->
    :func:`anchor_levels` -> :func:`match_anchors`; foreground first, then the higher teacher score).
    Labels ``(S,)``: 1..C members, 0 background, -1 ignored (no teacher location reaches it, or its
    cluster's kept box left the student's view); ``rm_class`` is the cluster's class ``0..C-1``."""
    logits, boxes, anchors = t.logits[b], t.boxes[b], t.anchors
    m, c = logits.shape
    probs = logits.sigmoid()
    flat = probs.reshape(-1)
    sel = torch.where(flat > tau)[0]
    loc, cls = sel // c, sel % c
    cand, cluster, keep = candidate_clusters(boxes[loc], flat[sel], cls, tau=tau, iou=iou)
    loc, cls, score = loc[cand], cls[cand], flat[sel][cand]
    kept_boxes = boxes[loc[keep]]
    cand_labels, _ = inverse_nms_targets(cluster, kept_boxes, cls[keep], len(loc))
    mapped_kept, kept_ok = to_student_view(kept_boxes, matrix, size)
    member = (cluster >= 0) & kept_ok[cluster.clamp(min=0)]  # a kept box outside the view: ignored
    best = best_candidate_per_sample(loc, score, m)
    has = best >= 0
    t_labels = torch.zeros(m, dtype=torch.int64, device=logits.device)
    t_boxes, t_scores = boxes.new_zeros((m, 4)), probs.new_zeros(m)
    t_labels[has] = torch.where(member[best[has]], cand_labels[best[has]], -1)
    t_boxes[has] = mapped_kept[cluster[best[has]].clamp(min=0)]
    t_scores[has] = score[best[has]]
    mapped_anchors = _map_boxes(anchors, matrix)
    levels = anchor_levels(mapped_anchors, finest_anchor_size=finest_anchor_size, num_levels=len(grids))
    s_index = match_anchors(mapped_anchors, levels, grids, radius=radius)
    priority = (t_labels > 0).float() * 2 + probs.amax(1)
    winner = scatter_by_priority(torch.where(t_labels >= 0, s_index, -1), priority, num_student_locations)
    labels = torch.full((num_student_locations,), -1, dtype=torch.int64, device=logits.device)
    s_boxes, s_scores = boxes.new_zeros((num_student_locations, 4)), probs.new_zeros(num_student_locations)
    won = winner >= 0
    labels[won], s_boxes[won], s_scores[won] = t_labels[winner[won]], t_boxes[winner[won]], t_scores[winner[won]]
    rm_cluster = torch.where(member & (s_index[loc] >= 0), cluster, -1)
    return StageTargets(labels, s_boxes, rm_teacher=logits[loc, cls],
                        rm_sample=torch.where(rm_cluster >= 0, s_index[loc], -1), rm_cluster=rm_cluster,
                        rm_class=cls, num_clusters=len(keep), kept_boxes=kept_boxes, kept_labels=cls[keep],
                        kept_scores=score[keep], scores=s_scores)
