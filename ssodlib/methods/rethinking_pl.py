"""Rethinking Pseudo Labels for Semi-Supervised Object Detection (Li, Wu, Shrivastava and Davis,
AAAI 2022, https://arxiv.org/abs/2106.00168).

Certainty-aware pseudo labels: the detector localises each side of a RoI by classifying it into one
of ``K`` bins (the side-classification box head, ``detector_options.box_head='side_classification'``,
:mod:`ssodlib.models.side_buckets`), which gives each box a localisation quality ``v`` beside its class
probability ``p``. ``p * v`` ranks boxes in NMS and selects pseudo labels; per-class thresholds
``tau_m`` and loss weights ``alpha_m`` (Eq. 6), computed from the accumulated ``p * v`` of each class's
foreground candidates, keep more pseudo labels of rare classes and weigh their losses up.

Equation -> function map:

* Eq. 3-5 (localisation as classification, quality ``v``): the detector's side head
  (:mod:`ssodlib.models.side_buckets`); certainty in NMS is ``detector_options.side_score``
  (``"product"``: NMS and the score threshold see ``p * v``; ``"cls"``: ``p``).
* Certainty-aware selection (Sec. 2.2-2.3, ``p * v >= tau_m``): :func:`certainty_scores`,
  :func:`select_certain`.
* Eq. 6 accumulators over foreground candidates: :func:`roi_statistics` with
  :func:`~ssodlib.methods.rethinking_pl_maths.class_statistics`; ``tau_m``, ``alpha_m``:
  :func:`~ssodlib.methods.rethinking_pl_maths.dynamic_thresholds`.
* Eq. 6's ``alpha_m`` multiplying the losses of foreground instances (in Eq. 2):
  :func:`foreground_weights`, :func:`reweighted_roi_loss`.
* Eq. 2 (``L_s + lambda_u L_u``, ``lambda_u = 1``): the template's ``unsup_weight`` (set 1.0 in the runs).

No official code exists. Choices of this implementation (the paper is silent or ambiguous):

* Teacher (option ``teacher``). The paper trains the teacher on labeled data, then keeps it fixed and
  starts the student from it ("Mean Teacher ... not in our method"). Here the burn-in is that
  supervised training (with the side head, so the runs need their own burn-in), the trainer copies the
  student into the teacher at its end, and ``teacher='fixed'`` requires the trainer's EMA to be the
  identity: ``ema_keep_rate: 1.0`` (``t * 1 + s * 0 == t`` exactly). The method cannot switch the
  trainer's EMA off, so it checks it: it fingerprints the teacher's weights at its first
  semi-supervised step (the fingerprint is method state, kept in checkpoints) and raises ``InputError``
  at a later step whose teacher differs. ``teacher='mean_teacher'`` uses whatever EMA is configured.
* Candidates of Eq. 6: the student's sampled foreground RoIs of the step (labeled and pseudo-labeled
  images), ``p`` the student's detached probability of the RoI's assigned class, ``v`` its side-head
  quality (1 when ``certainty`` is off). Sec. 2.1 calls the RoIs "candidate boxes", and with a fixed
  teacher only the student has a "current overall confidence level" that changes.
* Window of the accumulators: sums since the first semi-supervised step (``stats_momentum = 1``;
  the paper's "accumulated online"). Eq. 6 depends on ``S_m`` and ``N_bar`` only through their ratio, so
  the growing totals need no normalising, and the whole run's history gives rare classes (a few RoIs
  per step) a stable estimate. ``stats_momentum < 1`` decays both sums by that factor per step (an
  exponential window, following the detector's current confidence more closely). The thresholds of
  step ``t`` come from the statistics up to step ``t - 1``; before any statistics every class has
  ``tau_m = tau`` and ``alpha_m = 1``. Under torch.distributed the step's statistics are summed over
  ranks, so every rank uses the same ``tau_m``.
* Re-weighting: per-RoI weight ``alpha_m`` for foreground RoIs of class ``m``, 1 for background ones,
  on the RoI classification loss and (side head) the side-bin and offset losses, divided by the number
  of sampled RoIs as without weights (dividing by the sum of the weights would cancel much of the
  effect). Not on the class-agnostic RPN. With the regression head only the classification loss is
  re-weighted (its box loss takes no weights). ``reweight_scope='all'`` (Eq. 2: "losses ... of all
  foreground instances") or ``'unlabeled'``.
* Pseudo boxes train the RPN (objectness and regression) and the RoI head (classification and
  localisation), as Eq. 2's ``p_u*, t_u*`` (STAC's convention).
* Switches: ``certainty`` (selection by ``p * v`` rather than ``p``), ``dynamic_threshold`` (off:
  ``gamma1 = 0``, i.e. ``tau_m = tau``), ``reweight`` (off: ``gamma2 = 0``, ``alpha_m = 1``).
* Model ensemble (Table 3, Sec. 3.2: two teachers trained separately, their ensemble labels the images
  of two students, and the two students are evaluated as one): option ``ensemble_teachers`` names
  other runs of the same results store (run keys: sibling folders of this run's) whose burn-in
  snapshots ``checkpoint-{burn_in}.pt`` are extra fixed teachers, loaded once at the first
  semi-supervised step. The pseudo labels are then the certainty-aware selection from the
  detection-level ensemble (:func:`~ssodlib.models.ensemble.ensemble_detections`: union, class-wise
  NMS, top-k; our choice, the paper's "simplified model ensemble from [49]" is unspecified) of every
  teacher's detections on the weak view. The students' ensemble is evaluated by the trainer
  (``TrainConfig.ensemble_with``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssodlib.config import Rule, check_ranges
from ssodlib.data.batch import Batch
from ssodlib.io import InputError
from ssodlib.methods.base import JointLosses, RunInfo, StepContext, TeacherStudentMethod
from ssodlib.methods.rcnn_passes import log_student_rois, pseudo_labels_in_student_view, student_pass, teacher_pass
from ssodlib.methods.rethinking_pl_maths import class_statistics, dynamic_thresholds
from ssodlib.models.detectors.base import Detections
from ssodlib.models.detectors.faster_rcnn import FasterRCNN, RoIOutput, RoISamples
from ssodlib.models.ensemble import ensemble_detections, frozen_copy
from ssodlib.models.losses import softmax_focal_loss
from ssodlib.models.side_buckets import decode_sides, encode_sides, side_losses

SIDE_HEAD = "side_classification"


@dataclass(frozen=True, kw_only=True)
class RethinkingPLOptions:
    """The paper's switches (Tables 5 and 8) and constants (Sec. 3.1)."""

    teacher: str = "fixed"  # "fixed" (the paper; needs ema_keep_rate 1.0) | "mean_teacher"
    certainty: bool = True  # CA: select pseudo labels by p * v (needs the side head); NMS: detector side_score
    dynamic_threshold: bool = True  # DT: tau_m of Eq. 6 (off: tau for every class)
    reweight: bool = True  # RE: alpha_m of Eq. 6 (off: 1)
    tau: float = 0.7
    gamma1: float = 0.05
    gamma2: float = 0.6
    tau_clip: tuple[float, float] | None = (0.4, 0.9)  # bounds of tau_m; None: unclipped
    stats_momentum: float = 1.0  # per-step decay of the Eq. 6 sums; 1: cumulative since the first SSL step
    reweight_scope: str = "all"  # "all" (labeled and unlabeled fg RoIs) | "unlabeled"
    box_regression: bool = True  # RoI side / box loss on pseudo boxes
    rpn_regression: bool = True  # RPN box loss on pseudo boxes
    # Table 3: run keys (same results store) whose burn-in snapshots are extra fixed teachers
    ensemble_teachers: tuple[str, ...] = ()


OPTION_RULES = {"teacher": Rule(choices=("fixed", "mean_teacher")), "tau": Rule(low=0, high=1),
                "gamma1": Rule(low=0), "gamma2": Rule(low=0), "tau_clip": Rule(low=0, high=1),
                "stats_momentum": Rule(low=0, high=1, open_low=True),
                "reweight_scope": Rule(choices=("all", "unlabeled"))}


# -- maths (pure functions) -----------------------------------------------------------------------
def certainty_scores(det: Detections, *, certainty: bool) -> Tensor:
    """``(K,)`` selection scores of one image's detections: the class probability ``p`` of each
    detection's label (from ``class_probs``, whatever ``side_score`` made ``det.scores``), times its
    quality ``v`` when ``certainty``."""
    p = det.class_probs[torch.arange(len(det.labels), device=det.labels.device), det.labels + 1]
    if not certainty:
        return p
    if det.quality is None:
        raise InputError("certainty-aware pseudo labels need each detection's localisation quality v. Fix: set "
                         f"detector_options.box_head: {SIDE_HEAD}, or method_options.certainty: false.")
    return p * det.quality.to(p)


def select_certain(det: Detections, thresholds: Tensor, *, certainty: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Detections whose score (:func:`certainty_scores`) is at least their class's threshold
    (``(C,)``, ``tau_m``): ``(K', 4)`` boxes, ``(K',)`` labels, ``(K',)`` scores."""
    scores = certainty_scores(det, certainty=certainty)
    keep = scores >= thresholds.to(scores)[det.labels]
    return det.boxes[keep], det.labels[keep], scores[keep]


def roi_statistics(student: FasterRCNN, rois: RoIOutput, samples: RoISamples, *,
                   certainty: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The foreground RoIs' ``(J,)`` classes ``0..C-1``, detached ``(J,)`` probability ``p`` of their
    assigned class and ``(J,)`` quality ``v`` (1 without ``certainty``): the candidates of Eq. 6."""
    labels = torch.cat(samples.labels)
    fg = labels > 0
    probs = F.softmax(rois.class_logits.detach().float(), dim=-1)[fg, labels[fg]]
    if certainty:
        v = student.localization_quality(student.side_outputs(rois)[0][fg].detach())
    else:
        v = torch.ones_like(probs)
    return labels[fg] - 1, probs, v


def foreground_weights(labels: Tensor, alpha: Tensor) -> Tensor:
    """``(R,)`` per-RoI loss weights from ``(R,)`` RoI labels (0 background, ``1..C``): ``alpha[label - 1]``
    for foreground RoIs, 1 for background ones."""
    weights = torch.ones(len(labels), dtype=torch.float32, device=labels.device)
    fg = labels > 0
    weights[fg] = alpha.to(weights)[labels[fg] - 1]
    return weights


def reweighted_roi_loss(student: FasterRCNN, rois: RoIOutput, samples: RoISamples, weights: Tensor, *,
                        regression: bool = True) -> dict[str, Tensor]:
    """The detector's RoI losses with ``(R,)`` per-RoI multipliers, still divided by the number ``R`` of
    sampled RoIs (all weights 1: exactly ``student.roi_loss``). Classification: each RoI's CE / focal
    loss times its weight; side head: the positives' bin and offset losses times theirs; regression
    head: the box loss unweighted."""
    c = student.config
    labels = torch.cat(samples.labels)
    if c.cls_loss == "focal":
        per_roi = softmax_focal_loss(rois.class_logits, labels, gamma=c.focal_gamma, reduction="none")
    else:
        per_roi = F.cross_entropy(rois.class_logits.float(), labels, reduction="none")
    w = weights.detach().to(per_roi)
    n = max(len(labels), 1)
    loss_cls = (per_roi * w).sum() / n
    pos = torch.where(labels > 0)[0]
    if not regression or pos.numel() == 0:
        return {"loss_cls": loss_cls, "loss_box": rois.box_deltas.sum() * 0.0}  # keeps the graph connected (DDP)
    if c.box_head != SIDE_HEAD:
        return {"loss_cls": loss_cls, "loss_box": student.roi_loss(rois, samples)["loss_box"]}
    logits, offsets = student.side_outputs(rois)
    props, gt = torch.cat(samples.proposals)[pos], torch.cat(samples.matched_boxes)[pos]
    bins, target = encode_sides(props, gt, num_bins=c.side_bins, segment_scale=c.side_segment_scale)
    loss_bins, loss_offsets = side_losses(logits[pos], offsets[pos], bins, target, weights=w[pos],
                                          bin_loss=c.side_bin_loss)
    return {"loss_cls": loss_cls, "loss_box": (loss_bins + loss_offsets) / n}


def teacher_fingerprint(teacher: nn.Module) -> Tensor:
    """``(T,)`` float64 sums of the teacher's floating-point tensors (on the CPU): equal fingerprints
    mean, in practice, unchanged weights; any EMA step with keep rate below 1 changes them."""
    sums = [t.detach().sum(dtype=torch.float64) for t in teacher.state_dict().values() if t.is_floating_point()]
    return torch.stack(sums).cpu()


def _all_reduce(t: Tensor) -> Tensor:
    """Sum over the ranks of torch.distributed (identity in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


# -- the method -----------------------------------------------------------------------------------
class RethinkingPL(TeacherStudentMethod):
    """Certainty-aware pseudo labels with Eq. 6's dynamic thresholds and re-weighting (module docstring)."""

    name = "rethinking_pl"
    detector_family = "faster_rcnn"
    Options = RethinkingPLOptions
    # what the default options need of the detector (the contract test builds its detector with them)
    required_detector_options: ClassVar[dict[str, Any]] = {"box_head": SIDE_HEAD}

    def __init__(self, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(options=options)
        check_ranges(self.options, OPTION_RULES, what=f"method {self.name!r} option")
        self.sum_pv: Tensor | None = None  # (C,) float64, Eq. 6's S_m over the window
        self.counts: Tensor | None = None  # (C,) float64, N_m (float: the decayed window is fractional)
        self.fingerprint: Tensor | None = None  # the fixed teacher's, from the first semi-supervised step
        self.run: RunInfo | None = None
        self.extra_teachers: list[nn.Module] | None = None  # loaded at the first semi-supervised step

    def setup(self, *, labeled: Any, unlabeled: Any, run: RunInfo, device: torch.device) -> None:
        """Keeps the run (its folder locates the ``ensemble_teachers`` snapshots)."""
        self.run = run

    # -- seam with the trainer --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {}
        if self.sum_pv is not None:
            state.update(sum_pv=self.sum_pv.clone(), counts=self.counts.clone())
        if self.fingerprint is not None:
            state["teacher_fingerprint"] = self.fingerprint.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "sum_pv" in state:
            self.sum_pv, self.counts = state["sum_pv"].cpu().double(), state["counts"].cpu().double()
        if "teacher_fingerprint" in state:
            self.fingerprint = state["teacher_fingerprint"].cpu()

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        self.check_detector(student)  # from the first burn-in step: a wrong head would waste the burn-in
        return super().losses(student, ctx, batch)

    def check_detector(self, student: nn.Module) -> None:
        head = getattr(getattr(student, "config", None), "box_head", None)
        if self.options.certainty and head != SIDE_HEAD:
            raise InputError(f"method {self.name!r} with certainty=true needs the localisation quality v of "
                             f"box_head={SIDE_HEAD!r}; the detector has box_head={head!r}. Fix: set "
                             f"detector_options.box_head: {SIDE_HEAD} (and a burn-in with it), or "
                             "method_options.certainty: false.")

    def check_fixed_teacher(self, teacher: nn.Module) -> None:
        """``teacher='fixed'``: raise ``InputError`` when the teacher changed since the first
        semi-supervised step (the trainer's EMA is on)."""
        fingerprint = teacher_fingerprint(teacher)
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif not torch.equal(fingerprint, self.fingerprint):
            raise InputError(f"method {self.name!r} with teacher='fixed' needs a teacher that stays the burn-in "
                             "model, but the trainer's EMA changed it. Fix: set ema_keep_rate: 1.0, or "
                             "method_options.teacher: mean_teacher.")

    # -- Table 3: extra teachers ---------------------------------------------------------------------
    def snapshot_paths(self) -> list[Path]:
        """The burn-in snapshots of the runs ``ensemble_teachers`` names, beside this run's folder."""
        if self.run is None or self.run.run_dir is None:
            raise InputError(f"method {self.name!r} with ensemble_teachers needs its run folder to find the other "
                             "runs' snapshots. Fix: train through the trainer (ssod train / ssod experiments run), "
                             "or drop method_options.ensemble_teachers.")
        return [self.run.run_dir.parent / key / f"checkpoint-{self.run.burn_in}.pt"
                for key in self.options.ensemble_teachers]

    def load_extra_teachers(self, teacher: nn.Module) -> list[nn.Module]:
        """Copies of ``teacher`` with the student weights of each ``ensemble_teachers`` run's burn-in
        snapshot (the model its own teacher starts as), in eval mode without gradients; loaded once."""
        if self.extra_teachers is not None:
            return self.extra_teachers
        extra = []
        for path in self.snapshot_paths():
            if not path.is_file():
                raise InputError(f"{path}: no burn-in snapshot of the extra teacher (method_options."
                                 "ensemble_teachers). Fix: run that run to its burn-in first (ssod experiments run "
                                 "waits for it), with snapshots including the burn-in, or drop its key.")
            ckpt = torch.load(path, map_location=next(teacher.parameters()).device, weights_only=True)
            extra.append(frozen_copy(teacher, ckpt["student"], source=f"{path}: not a snapshot of this run's detector",
                                     fix="name runs with the same detector options in ensemble_teachers."))
        self.extra_teachers = extra
        return extra

    def teacher_detections(self, teacher: nn.Module, weak: list[Tensor]) -> list[Detections]:
        """Per weak view, the teacher's detections, or (``ensemble_teachers``) the ensemble of its and
        the extra teachers' detections."""
        dets = teacher_pass(teacher, weak).detections
        extra = self.load_extra_teachers(teacher) if self.options.ensemble_teachers else []
        if not extra:
            return dets
        others = [teacher_pass(t, weak).detections for t in extra]
        c = teacher.config
        return [ensemble_detections(list(image_dets), iou_threshold=c.nms_thresh, max_detections=c.detections_per_img)
                for image_dets in zip(dets, *others)]

    # -- Eq. 6 ------------------------------------------------------------------------------------
    def class_parameters(self, num_classes: int) -> tuple[Tensor, Tensor]:
        """``(C,)`` ``tau_m`` and ``alpha_m`` from the statistics so far (the switches zero the gammas)."""
        o = self.options
        if self.sum_pv is None:
            self.sum_pv = torch.zeros(num_classes, dtype=torch.float64)
            self.counts = torch.zeros(num_classes, dtype=torch.float64)
        return dynamic_thresholds(self.sum_pv, self.counts, tau=o.tau,
                                  gamma1=o.gamma1 if o.dynamic_threshold else 0.0,
                                  gamma2=o.gamma2 if o.reweight else 0.0, clip=o.tau_clip)

    def accumulate(self, labels: Tensor, p: Tensor, v: Tensor) -> None:
        """Add one step's foreground candidates (summed over ranks) to the decayed sums."""
        sum_pv, counts = class_statistics(labels, p, v, num_classes=len(self.sum_pv))
        step = _all_reduce(torch.stack([sum_pv, counts.double()])).cpu()
        m = self.options.stats_momentum
        self.sum_pv = self.sum_pv * m + step[0]
        self.counts = self.counts * m + step[1]

    # -- losses -----------------------------------------------------------------------------------
    def pseudo_labels(self, ctx: StepContext, batch: Batch, tau_m: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per unlabeled image, the selected teacher detections mapped into the student's view."""
        dets = self.teacher_detections(ctx.teacher, batch.weak)
        return pseudo_labels_in_student_view(
            ctx, dets, batch, lambda det, *_: select_certain(det, tau_m, certainty=self.options.certainty))

    def unsupervised_losses(self, student: FasterRCNN, ctx: StepContext, batch: Batch) -> JointLosses:
        o = self.options
        if o.teacher == "fixed":
            self.check_fixed_teacher(ctx.teacher)
        tau_m, alpha_m = self.class_parameters(student.num_classes)  # statistics up to the previous step
        ctx.stats.set_values(tau_m=tau_m, alpha_m=alpha_m)  # logged per class with the pseudo-label diagnostics
        targets, target_labels = self.pseudo_labels(ctx, batch, tau_m)
        sp = student_pass(student, batch, targets, target_labels)
        lab, unl = slice(0, len(batch.images)), sp.unl
        weights = foreground_weights(torch.cat(sp.samples.labels), alpha_m)
        n_lab = sum(sp.rois.counts[lab])
        unsup = {**student.rpn_loss(sp.rpn.select(unl), targets, regression=o.rpn_regression),
                 **reweighted_roi_loss(student, sp.rois.select(unl), sp.samples.select(unl), weights[n_lab:],
                                       regression=o.box_regression)}
        supervised = sp.supervised
        if o.reweight_scope == "all":
            supervised = {**supervised, **reweighted_roi_loss(student, sp.rois.select(lab), sp.samples.select(lab),
                                                              weights[:n_lab])}
        self.accumulate(*roi_statistics(student, sp.rois, sp.samples, certainty=o.certainty))
        log_student_rois(ctx, sp, batch)
        return JointLosses(supervised, unsup)


# the paper's public pure functions are importable from here too (their homes: rethinking_pl_maths, side_buckets)
__all__ = ["RethinkingPL", "RethinkingPLOptions", "certainty_scores", "decode_sides", "dynamic_thresholds",
           "encode_sides", "foreground_weights", "reweighted_roi_loss", "roi_statistics", "select_certain",
           "teacher_fingerprint"]
