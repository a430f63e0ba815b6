import math

import numpy as np
import pytest
import torch

from ssodlib.evaluation.pseudo_labels import PseudoLabelStats, class_kl, match_to_ground_truth

GT = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
GT_LABELS = torch.tensor([0, 1])


def test_matching_is_greedy_one_to_one_in_score_order():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [40, 40, 50, 50], [20, 20, 30, 30]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.6, 0.9, 0.8, 0.7, 0.5])
    tp, iou = match_to_ground_truth(boxes, labels, scores, GT, GT_LABELS)
    # box 1 (score 0.9) takes GT 0 first (IoU 100/110); box 0 is then a duplicate; box 2 has the wrong class
    assert tp.tolist() == [False, True, False, False, True]
    assert iou[1].item() == pytest.approx(100 / 110) and iou[4].item() == pytest.approx(1.0)


def test_iou_threshold_is_inclusive_at_one_half():
    box = torch.tensor([[0.0, 0, 10, 20]])  # IoU with [0,0,10,10] is 100 / 200
    tp, _ = match_to_ground_truth(box, torch.tensor([0]), torch.tensor([1.0]), GT[:1], GT_LABELS[:1])
    assert tp.tolist() == [True]
    tp, _ = match_to_ground_truth(box, torch.tensor([0]), torch.tensor([1.0]), GT[:1], GT_LABELS[:1],
                                  iou_threshold=0.51)
    assert tp.tolist() == [False]


def test_stats_summary_by_hand():
    s = PseudoLabelStats(num_classes=3, labeled_class_prior=np.array([2.0, 1.0, 1.0]))
    s.add_image(boxes=torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), labels=torch.tensor([0, 2]),
                scores=torch.tensor([0.9, 0.8]), gt_boxes=GT, gt_labels=GT_LABELS)
    s.add_image(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0),
                gt_boxes=GT[:1], gt_labels=GT_LABELS[:1])
    out = s.summary()
    assert out["pl_images"] == 2 and out["pl_per_image"] == 1.0 and out["gt_per_image"] == 1.5
    assert out["pl_precision"] == 0.5 and out["pl_recall"] == pytest.approx(1 / 3)
    assert out["pl_mean_iou_tp"] == pytest.approx(1.0) and out["pl_per_class"] == [1, 0, 1]
    eps = 1e-6
    p = np.array([1 + eps, eps, 1 + eps]) / (2 + 3 * eps)
    q = np.array([2 + eps, 1 + eps, 1 + eps]) / (4 + 3 * eps)
    assert out["pl_class_kl"] == pytest.approx(float(np.sum(p * np.log(p / q))))


def test_roi_true_false_positives_and_false_negatives():
    s = PseudoLabelStats(num_classes=2)
    rois = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [60, 60, 70, 70]])
    labels = torch.tensor([1, 1, 0, 2])  # pseudo classes, 0 = background
    s.add_rois(roi_boxes=rois, roi_labels=labels, gt_boxes=GT, gt_labels=GT_LABELS)
    # roi 0: class 0 on GT 0 -> TP; roi 1: class 0 on GT 1 (class 1) -> FP; roi 2: background on GT -> FN;
    # roi 3: foreground on nothing -> FP
    assert (s.roi_tp, s.roi_fp, s.roi_fn) == (1, 2, 1)


def test_class_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    assert class_kl(np.array([2, 4]), np.array([1, 2])) == pytest.approx(0.0, abs=1e-9)
    assert class_kl(np.array([1, 0]), np.array([1, 1])) == pytest.approx(math.log(2), rel=1e-4)


def test_labelmatch_figure4_precision_counts_any_overlap_of_the_own_class_above_one_half():
    """Fig. 4a: duplicates on one ground truth all count; IoU exactly 0.5 does not (strictly above)."""
    s = PseudoLabelStats(num_classes=2)
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 10, 20], [20, 20, 30, 30], [20, 20, 30, 30]])
    labels = torch.tensor([0, 0, 0, 1, 0])
    s.add_image(boxes=boxes, labels=labels, scores=torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), gt_boxes=GT,
                gt_labels=GT_LABELS)
    out = s.summary()
    # boxes 0 and 1 hit GT 0 (IoU 1 and 100/110): both count; box 2: IoU 100/200 = 0.5 exactly, not above;
    # box 3 hits GT 1 of its class; box 4 overlaps GT 1 but has the wrong class -> 3 of 5
    assert out["pl_precision_any"] == pytest.approx(3 / 5)
    # one-to-one (this repository's): box 0 takes GT 0, box 1 is a duplicate, box 2 at IoU 0.5 finds GT 0 taken
    assert out["pl_precision"] == pytest.approx(2 / 5)


def test_labelmatch_figure4_kl_compares_with_the_unlabeled_images_ground_truth():
    s = PseudoLabelStats(num_classes=2, labeled_class_prior=np.array([1.0, 1.0]))
    s.add_image(boxes=torch.tensor([[0.0, 0, 10, 10]] * 3), labels=torch.tensor([0, 0, 1]),
                scores=torch.ones(3), gt_boxes=torch.tensor([[0.0, 0, 10, 10]] * 3), gt_labels=torch.tensor([0, 0, 1]))
    out = s.summary()
    # pseudo classes [2, 1] = ground truth classes [2, 1]: KL 0; against the labeled prior [1, 1] it is not 0
    assert out["pl_class_kl_gt"] == pytest.approx(0.0, abs=1e-9)
    assert out["pl_class_kl"] == pytest.approx(class_kl(np.array([2, 1]), np.array([1, 1]))) and out["pl_class_kl"] > 0


def test_rethinking_figure3_precision_at_stricter_iou_criteria_by_hand():
    s = PseudoLabelStats(num_classes=2)
    # box 0 matches GT 0 with IoU 100/120 = 0.833; box 1 GT 1 with IoU 1; box 2 is a false positive
    s.add_image(boxes=torch.tensor([[0.0, 0, 10, 12], [20, 20, 30, 30], [40, 40, 50, 50]]),
                labels=torch.tensor([0, 1, 1]), scores=torch.tensor([0.9, 0.8, 0.7]), gt_boxes=GT, gt_labels=GT_LABELS)
    precision = s.summary()["pl_precision_at_iou"]
    assert len(precision) == 10
    # criteria 0.50 ... 0.80: 2 of 3 boxes pass; 0.85 ... 0.95: only the exact box (1 of 3)
    assert precision == pytest.approx([2 / 3] * 7 + [1 / 3] * 3)
    assert precision[0] == s.summary()["pl_precision"]  # at 0.5 it is the one-to-one precision


def test_precision_at_iou_is_nan_without_pseudo_boxes():
    s = PseudoLabelStats(num_classes=2)
    s.add_image(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0),
                gt_boxes=GT, gt_labels=GT_LABELS)
    assert all(math.isnan(v) for v in s.summary()["pl_precision_at_iou"])
