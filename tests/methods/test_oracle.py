"""The oracle diagnostic: pseudo_label trained on the withheld ground truth, all of it, the part the
teacher finds, or a random fraction."""

import torch

from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.methods import StepContext, get_method
from ssodlib.methods.oracle import found_ground_truth
from ssodlib.models.detectors.base import Detections
from tiny_setup import tiny_batch, tiny_detector


def test_oracle_trains_on_the_withheld_ground_truth_whatever_the_teacher_says():
    student, teacher = tiny_detector(), tiny_detector().eval()
    ctx = lambda stats: StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=1.0, stats=stats)
    thresholded, oracle = PseudoLabelStats(num_classes=3), PseudoLabelStats(num_classes=3)
    # an untrained teacher scores nothing at 0.99, so only the oracle has a foreground target
    get_method("pseudo_label")(options={"score_thresh": 0.99}).losses(student, ctx(thresholded), tiny_batch())
    get_method("oracle")(options={"score_thresh": 0.99}).losses(
        student, ctx(oracle), tiny_batch(mirrored=True))
    assert thresholded.pseudo == 0 and thresholded.roi_tp == 0
    assert oracle.pseudo == 1 and oracle.tp == 1 and oracle.tp_iou_sum == 1.0
    assert oracle.roi_tp > 0 and oracle.roi_fp == 0  # the student's foreground RoIs sit on the mirrored box


def test_found_ground_truth_is_any_box_at_iou_half_or_more():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    boxes = torch.tensor([[0.0, 0, 10, 11], [20, 20, 30, 40], [44, 40, 54, 50]])  # IoU 10/11, 1/2 exactly, 6/14
    assert found_ground_truth(boxes, gt).tolist() == [True, True, False]
    assert found_ground_truth(boxes[:0], gt).tolist() == [False] * 3


def test_oracle_found_only_keeps_the_ground_truth_the_teacher_finds(monkeypatch):
    import ssodlib.methods.pseudo_label as pl

    student, teacher = tiny_detector(), tiny_detector().eval()
    boxes = torch.tensor([[9.0, 9, 40, 40], [50, 50, 60, 60]])  # the ground-truth box [8, 8, 40, 40], then background
    for near_score, expected in [(0.9, 1), (0.6, 0)]:  # the box near the ground truth above / below 0.7
        det = Detections(boxes, torch.tensor([near_score, 0.95]), torch.tensor([2, 0]), torch.zeros(2, 4))
        monkeypatch.setattr(pl, "teacher_pass", lambda *a, det=det, **k: pl.TeacherPass([det], {}, None))
        stats = PseudoLabelStats(num_classes=3)
        ctx = StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=1.0, stats=stats)
        get_method("oracle")(options={"found_only": True}).losses(student, ctx, tiny_batch())
        # the found object with its true box and class (the teacher said class 2), the background box dropped
        assert stats.pseudo == expected and stats.tp == expected


def test_oracle_fraction_keeps_a_random_subset_of_the_ground_truth():
    import pytest

    from ssodlib.io import InputError

    gt = torch.arange(4000.0).reshape(1000, 4) + torch.tensor([0.0, 0, 5, 5])
    gt_labels = torch.arange(1000) % 3
    no_dets = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    torch.manual_seed(0)
    for fraction, low, high in [(1.0, 1000, 1000), (0.4, 350, 450), (0.0, 0, 0)]:
        method = get_method("oracle")(options={"fraction": fraction})
        boxes, labels, scores = method.image_pseudo_labels(no_dets, gt, gt_labels)
        assert low <= len(boxes) <= high and (scores == 1).all()
        rows = (boxes[:, 0] / 4).long()  # which ground-truth boxes: each kept with its own label
        assert torch.equal(labels, gt_labels[rows]) and torch.equal(boxes, gt[rows])
    with pytest.raises(InputError, match="fraction=1.5"):
        get_method("oracle")(options={"fraction": 1.5})
    with pytest.raises(InputError, match="set one of them"):  # two ways of choosing the kept ground truth
        get_method("oracle")(options={"fraction": 0.4, "found_only": True})


def test_the_oracle_options_left_the_baseline():
    import pytest

    from ssodlib.io import InputError

    for option in ("oracle", "oracle_found_only", "oracle_fraction"):
        with pytest.raises(InputError, match="has no option"):
            get_method("pseudo_label")(options={option: True})
