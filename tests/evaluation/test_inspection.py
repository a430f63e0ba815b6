"""Inspection of a detector's boxes: NMS-cluster statistics against ground truth (LabelMatch Fig. 3)
and the true / false positives and false negatives drawn in Fig. 5, on hand-made detections."""

from __future__ import annotations

import math

import pytest
import torch

from ssodlib.experiments.inspection import ImageDetections, box_outcomes, cluster_quality, spread_indices


def _image() -> ImageDetections:
    # kept: A (class 0, 0.9) and B (class 1, 0.8). A suppressed A2 (IoU 0.8, score 0.7) and A3 (IoU 0.5,
    # score 0.5); B suppressed nothing. Ground truth: a class-0 box at IoU 0.9 with A, and a class-0 box
    # exactly at B (another class, so B is a false positive and that box a false negative).
    a, b = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]
    return ImageDetections(
        image=torch.zeros(3, 40, 40, dtype=torch.uint8),
        gt_boxes=torch.tensor([[0.0, 0.0, 10.0, 9.0], b]), gt_labels=torch.tensor([0, 0]),
        boxes=torch.tensor([a, b]), scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([0, 1]),
        candidate_boxes=torch.tensor([a, [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 5.0], b]),
        candidate_scores=torch.tensor([0.9, 0.7, 0.5, 0.8]), candidate_labels=torch.tensor([0, 0, 0, 1]),
        cluster=torch.tensor([0, 0, 0, 1]))


def test_cluster_quality_gives_cluster_means_and_iou_with_ground_truth_of_the_same_class():
    frame = cluster_quality([_image()])
    a, b = frame.to_dict("records")
    assert a["score"] == pytest.approx(0.9) and a["label"] == 0
    assert a["mean_score"] == pytest.approx(0.6) and a["mean_iou"] == pytest.approx(0.65)
    assert a["iou_gt"] == pytest.approx(0.9)
    assert math.isnan(b["mean_score"]) and math.isnan(b["mean_iou"]) and b["iou_gt"] == 0.0


def test_box_outcomes_mark_true_and_false_positives_and_missed_ground_truth():
    tp, keep, missed = box_outcomes(_image(), score_thresh=0.6)
    assert keep.tolist() == [0, 1] and tp.tolist() == [True, False] and missed.tolist() == [False, True]
    tp, keep, missed = box_outcomes(_image(), score_thresh=0.95)  # nothing shown: every box is missed
    assert keep.tolist() == [] and missed.tolist() == [True, True]


def test_spread_indices_are_fixed_and_cover_the_range():
    assert spread_indices(10, 3) == [0, 4, 9]  # 4.5 rounds to even
    assert spread_indices(2, 5) == [0, 1] and spread_indices(0, 3) == []


def test_inspection_figures_write_png_and_the_plotted_numbers(tmp_path):
    import pandas as pd

    from ssodlib.report.figures import cluster_quality_scatter, detection_grid

    frame = cluster_quality([_image()])
    assert cluster_quality_scatter(frame, path=tmp_path / "fig3.png")
    plotted = pd.read_csv(tmp_path / "fig3.csv")
    assert len(plotted) == 1 and plotted["iou_gt"].tolist() == pytest.approx([0.9])  # B has no cluster: not drawn
    assert not cluster_quality_scatter(frame.iloc[1:], path=tmp_path / "empty.png")

    im = _image()
    panel = {"image": im.image, "title": "t", "boxes": [(*im.boxes[0].tolist(), "lime"), (1, 2, 3, 4, "red")]}
    assert detection_grid({"run a": [panel, panel], "run b": [panel]}, path=tmp_path / "fig5.png")
    boxes = pd.read_csv(tmp_path / "fig5.csv")
    assert len(boxes) == 6 and set(boxes["colour"]) == {"lime", "red"}
    assert (tmp_path / "fig5.png").read_bytes()[:4] == b"\x89PNG"


def test_error_breakdown_sorts_boxes_into_true_positives_duplicates_wrong_class_localization_and_background():
    from ssodlib.experiments.inspection import error_breakdown

    gt = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    boxes = [[0.0, 0.0, 10.0, 9.0],   # class 0, IoU 0.9 with gt 0: true positive (highest score)
             [0.0, 0.0, 10.0, 8.0],   # class 0, IoU 0.8 with gt 0 again: duplicate
             [20.0, 20.0, 30.0, 30.0],  # class 1 on the class-0 gt 1: wrong class
             [20.0, 20.0, 30.0, 23.0],  # class 0, IoU 0.3 with gt 1: localization
             [50.0, 50.0, 60.0, 60.0],  # nothing there: background
             [50.0, 0.0, 60.0, 10.0]]   # below the threshold: not counted
    im = ImageDetections(
        image=torch.zeros(3, 64, 64, dtype=torch.uint8), gt_boxes=torch.tensor(gt), gt_labels=torch.tensor([0, 0]),
        boxes=torch.tensor(boxes), scores=torch.tensor([0.9, 0.85, 0.8, 0.75, 0.7, 0.3]),
        labels=torch.tensor([0, 0, 1, 0, 0, 0]), candidate_boxes=torch.zeros(0, 4), candidate_scores=torch.zeros(0),
        candidate_labels=torch.zeros(0, dtype=torch.long), cluster=torch.zeros(0, dtype=torch.long))
    out = error_breakdown([im], score_thresh=0.5)
    for kind in ("true_positive", "duplicate", "wrong_class", "localization", "background"):
        assert out[kind] == pytest.approx(0.2), kind
    assert out["boxes_per_image"] == 5 and out["gt_per_image"] == 2 and out["recall"] == pytest.approx(0.5)
    empty = error_breakdown([im], score_thresh=0.95)
    assert empty["boxes_per_image"] == 0 and empty["recall"] == 0 and empty["true_positive"] == 0


class _FixedDetector:
    """Returns the same side-head detections for every image (class probabilities with their quality v)."""

    def __init__(self, boxes, p, v):
        from ssodlib.models.detectors.base import Detections

        n = len(p)
        probs = torch.zeros(n, 3)
        probs[:, 1] = torch.tensor(p)
        probs[:, 0] = 1 - probs[:, 1]
        boxes, scores, labels = torch.tensor(boxes), torch.tensor(p) * torch.tensor(v), torch.zeros(n, dtype=torch.int64)
        self.det = Detections(boxes=boxes, scores=scores, labels=labels, class_probs=probs, quality=torch.tensor(v),
                              candidate_boxes=boxes, candidate_scores=scores, candidate_labels=labels,
                              cluster=torch.arange(n))

    def predict(self, images, *, with_candidates=False):
        return [self.det for _ in images]


def test_quality_summary_golden():
    from ssodlib.experiments.inspection import quality_summary

    # identical 40 x 40 images seen at scale 40 (the identity view), ground truth (0,0,10,10), (20,20,30,30).
    # detections (p, v, best IoU): (0.9, 0.8, 1.0), (0.8, 0.5, 0.5), (0.85, 0.9, 0.6), (0.3, 0.2, 0.0)
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([0, 0])}
    dataset = [(torch.zeros(3, 40, 40, dtype=torch.uint8), gt)] * 2
    detector = _FixedDetector([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 25.0], [0.0, 0.0, 10.0, 6.0],
                               [30.0, 0.0, 38.0, 8.0]], p=[0.9, 0.8, 0.85, 0.3], v=[0.8, 0.5, 0.9, 0.2])
    out = quality_summary(detector, dataset, [0], test_scale=40, max_size=40)
    # p >= 0.5: the first three, 3 per image; v 0.8, 0.5, 0.9: mean 0.7333, quartiles (linear) 0.65, 0.8, 0.85
    assert out["detections_p>=0.5_per_image"] == 3
    assert out["mean_v"] == pytest.approx(0.733333, abs=1e-5)
    assert [out["v_q25"], out["v_median"], out["v_q75"]] == pytest.approx([0.65, 0.8, 0.85], abs=1e-5)
    # ranks over those three: IoU (1.0, 0.5, 0.6) -> 2, 0, 1; v -> 1, 0, 2 (correlation 0.5); p -> 2, 0, 1 (1.0)
    assert out["rank_corr_v_iou"] == pytest.approx(0.5) and out["rank_corr_p_iou"] == pytest.approx(1.0)
    # p * v = 0.72, 0.40, 0.765, 0.06: two pass 0.5, 0.6 and 0.7, while p alone passes three at each
    for t in ("0.5", "0.6", "0.7"):
        assert out[f"p>={t}_per_image"] == 3 and out[f"pv>={t}_per_image"] == 2
    both = quality_summary(detector, dataset, [0, 1], test_scale=40, max_size=40)  # counts are per image
    assert both["detections_p>=0.5_per_image"] == 3 and both["pv>=0.7_per_image"] == 2


def test_dtg_assignment_examples_are_proposals_inc_labels_rightly_and_the_sparse_paradigm_wrongly():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
    from tiny_setup import tiny_detector

    from ssodlib.experiments.inspection import assignment_examples
    from ssodlib.methods.dtg_ssod import DTGOptions

    # untrained teacher (class probabilities near 1/4): with rcnn_tau 0.99 INC labels every proposal
    # background, with sparse_threshold 0 every detection is a pseudo box; the one ground-truth box sits in a
    # corner, so the proposals on pseudo boxes elsewhere are sparse-foreground, truly background
    teacher = tiny_detector().eval()
    image = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    examples, pseudo, labels = assignment_examples(
        teacher, image, torch.tensor([[0.0, 0.0, 6.0, 6.0]]), torch.tensor([0]),
        options=DTGOptions(rcnn_tau=0.99, sparse_threshold=0.0), test_scale=128, max_size=256)
    assert examples and len(pseudo) == len(labels) > 0
    assert all(e.dense == e.truth == 0 and e.sparse > 0 and e.pseudo_iou >= 0.5 for e in examples)
    scores = [e.teacher_score for e in examples]
    assert scores == sorted(scores, reverse=True)
    # the 128 px view's boxes come back in the 64 px image's pixels
    assert all(0 <= float(v) <= 64 for e in examples for v in e.proposal)
    assert float(pseudo.max()) <= 64
