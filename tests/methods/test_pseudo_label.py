import torch

from ssodlib.data.transforms import hflip_matrix, scale_matrix
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.methods import METHODS, StepContext, get_method
from ssodlib.methods.pseudo_label import (background_weights, found_ground_truth, select_pseudo_labels, teacher_pass,
                                         to_student_view)
from ssodlib.models.detector import Detections
from tiny_setup import tiny_batch, tiny_detector


def test_registry_names_every_method():
    assert set(METHODS) >= {"supervised", "pseudo_label"}
    assert get_method("pseudo_label").uses_teacher and not get_method("supervised").uses_teacher


def test_score_threshold_keeps_scores_at_or_above_it():
    det = Detections(torch.arange(12.0).reshape(3, 4), torch.tensor([0.69, 0.7, 0.95]), torch.tensor([1, 2, 3]),
                     torch.zeros(3, 5))
    boxes, labels, scores = select_pseudo_labels(det, score_thresh=0.7)
    assert labels.tolist() == [2, 3] and scores.tolist() == [0.699999988079071, 0.949999988079071]
    assert boxes.tolist() == [[4.0, 5, 6, 7], [8, 9, 10, 11]]


def test_boxes_map_into_the_student_view_and_drop_when_outside():
    m = hflip_matrix(100) @ scale_matrix(2.0, 2.0)  # student view: twice as large, mirrored (width 100)
    boxes = torch.tensor([[10.0, 10, 20, 30], [60, 0, 80, 10]])
    mapped, keep = to_student_view(boxes, m, (60, 100))
    assert mapped[0].tolist() == [60.0, 20, 80, 60] and keep.tolist() == [True, False]


def test_burn_in_is_supervised_and_afterwards_unsupervised_losses_are_weighted():
    student, teacher = tiny_detector(), tiny_detector().eval()
    method = get_method("pseudo_label")(options={"score_thresh": 0.0})
    stats = PseudoLabelStats(num_classes=3)
    ctx = StepContext(teacher=teacher, iteration=0, burn_in=True, unsup_weight=0.0, stats=stats)
    assert set(method.losses(student, ctx, tiny_batch())) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box"}
    assert stats.images == 0
    torch.manual_seed(1)
    ctx1 = StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=1.0, stats=stats)
    one = method.losses(student, ctx1, tiny_batch())
    torch.manual_seed(1)
    ctx3 = StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=3.0, stats=stats)
    three = method.losses(student, ctx3, tiny_batch())
    assert stats.images == 2 and stats.pseudo > 0
    assert torch.allclose(three["loss_cls_unsup"], 3 * one["loss_cls_unsup"])
    assert torch.equal(three["loss_cls"], one["loss_cls"])
    assert one["loss_box_unsup"].item() == 0.0 and one["loss_box_unsup"].requires_grad  # no box loss on pseudo boxes
    with_box = get_method("pseudo_label")(options={"score_thresh": 0.0, "box_regression": True})
    torch.manual_seed(1)
    assert with_box.losses(student, ctx1, tiny_batch())["loss_box_unsup"].item() > 0


def test_unknown_option_is_a_clear_error():
    import pytest

    from ssodlib.io import InputError

    with pytest.raises(InputError, match="score_thresh"):
        get_method("pseudo_label")(options={"score_threshold": 0.5})


def test_oracle_trains_on_the_withheld_ground_truth_whatever_the_teacher_says():
    student, teacher = tiny_detector(), tiny_detector().eval()
    ctx = lambda stats: StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=1.0, stats=stats)
    thresholded, oracle = PseudoLabelStats(num_classes=3), PseudoLabelStats(num_classes=3)
    # an untrained teacher scores nothing at 0.99, so only the oracle has a foreground target
    get_method("pseudo_label")(options={"score_thresh": 0.99}).losses(student, ctx(thresholded), tiny_batch())
    get_method("pseudo_label")(options={"score_thresh": 0.99, "oracle": True}).losses(
        student, ctx(oracle), tiny_batch(mirrored=True))
    assert thresholded.pseudo == 0 and thresholded.roi_tp == 0
    assert oracle.pseudo == 1 and oracle.tp == 1 and oracle.tp_iou_sum == 1.0
    assert oracle.roi_tp > 0 and oracle.roi_fp == 0  # the student's foreground RoIs sit on the mirrored box


def test_background_weighting_scores_background_rois_with_the_teacher_in_its_view():
    student, teacher = tiny_detector(), tiny_detector().eval()
    batch = tiny_batch(mirrored=True)  # student view = teacher view flipped, 64 px wide
    tp = teacher_pass(teacher, batch.weak)
    props = [torch.tensor([[24.0, 8, 56, 40], [0, 0, 16, 16], [40, 40, 64, 64]])]  # the box, then 2 background
    samples = student.sample_rois(props, batch.gt_strong_boxes, batch.gt_strong_labels, add_gt=False)
    assert samples.labels[0].tolist() == [2, 0, 0]
    weights = background_weights(teacher, samples, tp, batch.teacher_to_student)
    in_teacher_view = torch.tensor([[48.0, 0, 64, 16], [0, 40, 24, 64]])  # x -> 64 - x
    with torch.no_grad():
        p_background = teacher.roi_head(tp.features, [in_teacher_view], tp.batch).class_logits.softmax(-1)[:, 0]
    torch.testing.assert_close(weights, torch.cat([torch.ones(1), p_background]))
    assert 0 < p_background.min() and p_background.max() < 1


def test_background_weighting_switch_reaches_the_unsupervised_classification_loss():
    student, teacher = tiny_detector(), tiny_detector().eval()
    ctx = StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=1.0, stats=PseudoLabelStats(num_classes=3))
    out = {}
    for weighting in (False, True):
        torch.manual_seed(1)  # the same sampled RoIs
        out[weighting] = get_method("pseudo_label")(options={"score_thresh": 0.0, "background_weighting": weighting}
                                                    ).losses(student, ctx, tiny_batch(mirrored=True))
    assert out[True]["loss_cls_unsup"].item() != out[False]["loss_cls_unsup"].item()
    for key in ("loss_cls", "loss_rpn_cls_unsup", "loss_rpn_cls"):
        torch.testing.assert_close(out[True][key], out[False][key])


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
        get_method("pseudo_label")(options={"oracle_found_only": True}).losses(student, ctx, tiny_batch())
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
        method = get_method("pseudo_label")(options={"oracle": True, "oracle_fraction": fraction})
        boxes, labels, scores = method.image_pseudo_labels(no_dets, gt, gt_labels)
        assert low <= len(boxes) <= high and (scores == 1).all()
        rows = (boxes[:, 0] / 4).long()  # which ground-truth boxes: each kept with its own label
        assert torch.equal(labels, gt_labels[rows]) and torch.equal(boxes, gt[rows])
    with pytest.raises(InputError, match="oracle_fraction"):
        get_method("pseudo_label")(options={"oracle": True, "oracle_fraction": 1.5})
    with pytest.raises(InputError, match="add oracle: true"):  # it would be ignored without the oracle
        get_method("pseudo_label")(options={"oracle_fraction": 0.4})
