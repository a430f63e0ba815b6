import torch

from ssodlib.data.transforms import hflip_matrix, scale_matrix
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.methods import METHODS, StepContext, get_method
from ssodlib.methods.pseudo_label import background_weights, select_pseudo_labels
from ssodlib.methods.rcnn_passes import teacher_pass, to_student_view
from ssodlib.models.detectors.base import Detections
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
