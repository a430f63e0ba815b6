"""A trained run's detector on a few images: its detections before and after NMS next to the ground
truth, and the quality of each kept box against the statistics of its NMS cluster (LabelMatch
Fig. 3, 5 and 7)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ssodlib.config import TrainConfig
from ssodlib.data.coco import CocoDetection, load_coco
from ssodlib.data.transforms import WeakViewConfig, transform_boxes, weak_view
from ssodlib.engine.checkpoint import checkpoint_config, load_checkpoint
from ssodlib.engine.loader import DataFiles, resolve_data
from ssodlib.evaluation.pseudo_labels import match_to_ground_truth
from ssodlib.io import InputError
from ssodlib.methods import get_method
from ssodlib.models.build import build_detector
from ssodlib.models.nms import nms_cluster_statistics


def load_run_detector(checkpoint: str | os.PathLike, *, model: str = "teacher") -> tuple[torch.nn.Module, TrainConfig,
                                                                                         DataFiles]:
    """The ``model`` ("teacher" or "student") weights of a run's checkpoint, its config and data files."""
    ckpt = load_checkpoint(checkpoint)
    config = checkpoint_config(ckpt, checkpoint)
    files = resolve_data(config)
    if not ckpt.get(model):
        raise InputError(f"{checkpoint}: has no {model} weights (the method has no teacher). Fix: use the student.")
    detector = build_detector(config, load_coco(files.labeled_ann).num_classes, from_checkpoint=True)
    detector.load_state_dict(ckpt[model])
    # the inference the run's own evaluation used at that iteration (e.g. Semi-DETR's NMS in stage 1)
    get_method(config.method)(options=config.method_options).prepare_evaluation(
        [detector], iteration=int(ckpt["iteration"]) - 1)
    return detector.eval(), config, files


@dataclass
class ImageDetections:
    """One image (``(3, H, W)`` uint8), its ground truth and the detector's output, all in its pixels:
    kept ``boxes`` ``(K, 4)`` / ``scores`` / ``labels``, pre-NMS ``candidate_*`` ``(Q, ...)`` and
    ``cluster`` ``(Q,)`` (the kept box that suppressed each candidate, -1 for none); ``label_probs``
    ``(K,)`` each kept box's class probability ``p`` and, from a side-classification head, ``quality``
    ``(K,)`` its localisation quality ``v`` (else ``None``)."""

    image: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    candidate_boxes: Tensor
    candidate_scores: Tensor
    candidate_labels: Tensor
    cluster: Tensor
    label_probs: Tensor | None = None
    quality: Tensor | None = None


@torch.no_grad()
def detect_images(detector: torch.nn.Module, dataset: CocoDetection, indices: Sequence[int], *, test_scale: int,
                  max_size: int) -> list[ImageDetections]:
    """Detections with NMS candidates on images ``indices`` seen at the test view, mapped back."""
    view = WeakViewConfig(scales=(test_scale,), max_size=max_size, flip_prob=0.0)
    g = torch.Generator()
    out = []
    for i in indices:
        image, target = dataset[i]
        v, m = weak_view(image, view, g)
        det = detector.predict([v], with_candidates=True)[0]
        inv = torch.linalg.inv(m)
        out.append(ImageDetections(
            image=image, gt_boxes=target["boxes"], gt_labels=target["labels"],
            boxes=transform_boxes(det.boxes.float().cpu(), inv), scores=det.scores.float().cpu(),
            labels=det.labels.cpu(), candidate_boxes=transform_boxes(det.candidate_boxes.float().cpu(), inv),
            candidate_scores=det.candidate_scores.float().cpu(), candidate_labels=det.candidate_labels.cpu(),
            cluster=det.cluster.cpu(),
            label_probs=det.class_probs[torch.arange(len(det.labels)), det.labels + 1].float().cpu(),
            quality=None if det.quality is None else det.quality.float().cpu()))
    return out


def cluster_quality(images: Sequence[ImageDetections]) -> pd.DataFrame:
    """One line per kept box: its score, the mean score and mean IoU of its NMS cluster (the candidates
    it suppressed, itself excluded; NaN when it suppressed none), and its best IoU with a ground-truth
    box of its class (0 when there is none)."""
    lines = []
    for n, im in enumerate(images):
        ms, mi = nms_cluster_statistics(boxes=im.boxes, scores=im.scores, candidate_boxes=im.candidate_boxes,
                                        candidate_scores=im.candidate_scores, cluster=im.cluster)
        best = _best_iou_same_class(im.boxes, im.labels, im.gt_boxes, im.gt_labels)
        lines += [{"image": n, "label": int(c), "score": float(s), "mean_score": float(a), "mean_iou": float(b),
                   "iou_gt": float(i)} for c, s, a, b, i in zip(im.labels, im.scores, ms, mi, best)]
    return pd.DataFrame(lines, columns=["image", "label", "score", "mean_score", "mean_iou", "iou_gt"])


def _best_iou_same_class(boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(boxes))
    iou = box_iou(boxes, gt_boxes.float())
    iou[labels[:, None] != gt_labels[None, :]] = 0.0
    return iou.max(1).values


def box_outcomes(im: ImageDetections, *, score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """Kept boxes scoring ``>= score_thresh``: ``(K',)`` true-positive flags (IoU 0.5, same class), their
    index into ``im.boxes``, and ``(M,)`` flags of ground-truth boxes no kept box found (false negatives)."""
    keep = torch.where(im.scores >= score_thresh)[0]
    tp, _ = match_to_ground_truth(im.boxes[keep], im.labels[keep], im.scores[keep], im.gt_boxes, im.gt_labels)
    found = torch.zeros(len(im.gt_boxes), dtype=torch.bool)
    if len(keep) and len(im.gt_boxes):
        iou = box_iou(im.boxes[keep][tp], im.gt_boxes.float())
        iou[im.labels[keep][tp][:, None] != im.gt_labels[None, :]] = 0.0
        if len(iou):
            found[iou.max(0).values >= 0.5] = True
    return tp, keep, ~found


ERROR_KINDS = ("true_positive", "duplicate", "wrong_class", "localization", "background")


def error_breakdown(images: Sequence[ImageDetections], *, score_thresh: float) -> dict[str, float]:
    """What the kept boxes scoring ``>= score_thresh`` are, as fractions of them (each box's first match):
    ``true_positive`` (matched one-to-one in score order as detection AP does, ``match_to_ground_truth``),
    ``duplicate`` (IoU >= 0.5 with a box of its class that a higher-scoring box took), ``wrong_class``
    (IoU >= 0.5 with a box of another class only), ``localization`` (best IoU in [0.1, 0.5)) and
    ``background`` (below 0.1: clutter); plus
    ``boxes_per_image``, ``gt_per_image`` and ``recall`` (matched ground truth / all of it)."""
    counts = dict.fromkeys(ERROR_KINDS, 0)
    num_gt = matched_gt = 0
    for im in images:
        num_gt += len(im.gt_boxes)
        kinds, matched = _error_kinds(im, score_thresh)
        matched_gt += matched
        for kind in kinds:
            counts[kind] += 1
    total = sum(counts.values())
    out = {k: v / total if total else 0.0 for k, v in counts.items()}
    n = max(len(images), 1)
    return {**out, "boxes_per_image": total / n, "gt_per_image": num_gt / n,
            "recall": matched_gt / num_gt if num_gt else 0.0}


def _error_kinds(im: ImageDetections, score_thresh: float) -> tuple[list[str], int]:
    keep = torch.where(im.scores >= score_thresh)[0]
    if len(im.gt_boxes) == 0:
        return ["background"] * len(keep), 0
    boxes, labels = im.boxes[keep].float(), im.labels[keep]
    tp, _ = match_to_ground_truth(boxes, labels, im.scores[keep], im.gt_boxes, im.gt_labels)
    same_class = _best_iou_same_class(boxes, labels, im.gt_boxes, im.gt_labels)
    any_class = box_iou(boxes, im.gt_boxes.float()).max(1).values
    kinds = ["true_positive" if t else "duplicate" if s >= 0.5 else "wrong_class" if a >= 0.5
             else "localization" if a >= 0.1 else "background"
             for t, s, a in zip(tp.tolist(), same_class.tolist(), any_class.tolist())]
    return kinds, int(tp.sum())


def inspection_images(files: DataFiles, *, unlabeled: bool) -> tuple[CocoDetection, Path]:
    """The unlabeled training images (with their withheld labels) or the validation images of a run."""
    if unlabeled and files.unlabeled_ann is not None:
        return CocoDetection(ann_file=files.unlabeled_ann, image_dir=files.unlabeled_images), files.unlabeled_ann
    return CocoDetection(ann_file=files.val_ann, image_dir=files.val_images), files.val_ann


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``0..n-1`` (a fixed, seed-free choice of images)."""
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist())) if n else []


# -- the localisation quality v of a side-classification head (Rethinking Pseudo Labels) ----------------

QUALITY_THRESHOLDS = (0.5, 0.6, 0.7)


def quality_summary(detector: torch.nn.Module, dataset: CocoDetection, indices: Sequence[int], *, test_scale: int,
                    max_size: int, thresholds: Sequence[float] = QUALITY_THRESHOLDS,
                    confident: float = 0.5) -> dict[str, float]:
    """How the side head's quality ``v`` of the kept detections compares with the pseudo-label threshold
    (the certainty-aware filter keeps ``p * v >= tau``) and how well it ranks localisation.

    ``p`` is each detection's class probability, ``v`` its quality, IoU its best with a ground-truth box
    of the image (any class). Returns, over the detections with ``p >= confident``: their count per image,
    the mean and quartiles of ``v``, and the Spearman rank correlations of ``v`` and of ``p`` with IoU;
    and for each threshold ``t`` the detections per image with ``p >= t`` and with ``p * v >= t``."""
    images = detect_images(detector, dataset, indices, test_scale=test_scale, max_size=max_size)
    if any(im.quality is None for im in images):
        raise InputError("quality_summary needs a detector with a localisation quality (Faster R-CNN's "
                         "box_head='side_classification'). Fix: pass such a run's checkpoint.")
    iou = [box_iou(im.boxes, im.gt_boxes.float()).amax(dim=1) if len(im.gt_boxes) and len(im.boxes)
           else torch.zeros(len(im.boxes)) for im in images]
    return _quality_stats(torch.cat([im.label_probs for im in images]), torch.cat([im.quality for im in images]),
                          torch.cat(iou), num_images=max(len(indices), 1), thresholds=thresholds,
                          confident=confident)


def _quality_stats(p: Tensor, v: Tensor, iou: Tensor, *, num_images: int, thresholds: Sequence[float],
                   confident: float) -> dict[str, float]:
    sure = p >= confident
    quartiles = v[sure].quantile(torch.tensor([0.25, 0.5, 0.75])).tolist() if sure.any() else [float("nan")] * 3
    out = {f"detections_p>={confident:g}_per_image": sure.sum().item() / num_images,
           "mean_v": v[sure].mean().item() if sure.any() else float("nan"),
           "v_q25": quartiles[0], "v_median": quartiles[1], "v_q75": quartiles[2],
           "rank_corr_v_iou": _spearman(v[sure], iou[sure]), "rank_corr_p_iou": _spearman(p[sure], iou[sure])}
    for t in thresholds:
        out[f"p>={t:g}_per_image"] = (p >= t).sum().item() / num_images
        out[f"pv>={t:g}_per_image"] = (p * v >= t).sum().item() / num_images
    return out


def _spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation (ties broken by position; NaN below 3 values)."""
    if len(a) < 3:
        return float("nan")
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return torch.corrcoef(ranks)[0, 1].item()


# -- DTG-SSOD Fig. 3: one proposal, two paradigms ---------------------------------------------------------

@dataclass
class AssignmentExample:
    """A teacher proposal (image pixels) that INC and the sparse paradigm label differently: its labels
    (0 background, ``1..C``) by INC, by IoU to the sparse pseudo boxes and by IoU to the ground truth,
    the teacher's best class probability on it and its IoU with the nearest pseudo box."""

    proposal: Tensor
    dense: int
    sparse: int
    truth: int
    teacher_score: float
    pseudo_iou: float


@torch.no_grad()
def assignment_examples(teacher: torch.nn.Module, image: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                        options, test_scale: int, max_size: int) -> tuple[list[AssignmentExample], Tensor, Tensor]:
    """The proposals of ``teacher`` (a Faster R-CNN) on ``image``'s test view that INC (``options``: the
    run's :class:`~ssodlib.methods.dtg_ssod.DTGOptions`) labels rightly and the sparse paradigm wrongly
    (against the IoU assignment to ``gt_boxes``), best teacher score first; and the sparse pseudo boxes with
    their labels, all in image pixels. The paper's two cases are a poor proposal the sparse paradigm makes
    foreground and a precise one it makes background."""
    from ssodlib.methods import dtg_ssod as dtg
    from ssodlib.methods.rcnn_passes import select_pseudo_labels

    view, matrix = weak_view(image, WeakViewConfig(scales=(test_scale,), max_size=max_size, flip_prob=0.0),
                             torch.Generator())
    t = dtg._teacher_outputs(teacher, [view], max_proposals=options.rcnn_max_proposals)
    iou = teacher.config.nms_thresh if options.rcnn_nms_iou is None else options.rcnn_nms_iou
    st, props = dtg.rcnn_inc(t, 0, torch.eye(3), view.shape[1:], tau=options.rcnn_tau, iou=iou)
    boxes, labels, _ = select_pseudo_labels(t.detections[0], score_thresh=options.sparse_threshold)
    props, boxes = props.float().cpu(), boxes.float().cpu()
    fg_iou = teacher.config.roi_iou_threshold
    sparse = dtg.iou_assignment(props, boxes, labels.cpu(), iou_threshold=fg_iou)
    gt_view = transform_boxes(gt_boxes.float(), matrix)
    truth = dtg.iou_assignment(props, gt_view, gt_labels, iou_threshold=fg_iou)
    dense, score = st.labels.cpu(), t.roi_logits[0].softmax(-1)[:, 1:].amax(1).cpu()
    pseudo_iou = box_iou(props, boxes).amax(1) if len(boxes) else torch.zeros(len(props))
    inv = torch.linalg.inv(matrix)
    picked = torch.where((dense == truth) & (sparse != truth))[0]
    picked = picked[torch.argsort(-score[picked], stable=True)]
    examples = [AssignmentExample(transform_boxes(props[i:i + 1], inv)[0], int(dense[i]), int(sparse[i]), int(truth[i]),
                                  float(score[i]), float(pseudo_iou[i])) for i in picked.tolist()]
    return examples, transform_boxes(boxes, inv), labels.cpu()
