"""Detection-level ensemble: golden tests on hand-made detections, and the ensemble detector seen by
the COCO evaluation."""

import pytest
import torch
from torch import nn

from ssodlib.models.detectors.base import Detections
from ssodlib.models.ensemble import EnsembleDetector, ensemble_detections


def _dets(boxes, scores, labels, quality=None) -> Detections:
    scores = torch.tensor(scores)
    labels = torch.tensor(labels, dtype=torch.int64)
    probs = torch.zeros(len(labels), 3)  # columns: background, class 0, class 1
    probs[torch.arange(len(labels)), labels + 1] = scores
    probs[:, 0] = 1 - scores
    return Detections(torch.tensor(boxes, dtype=torch.float32), scores, labels, probs,
                      quality=None if quality is None else torch.tensor(quality))


def model_a() -> Detections:
    # a: class 0 at [0, 0, 10, 10] (0.9), class 1 at [20, 20, 30, 30] (0.6)
    return _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.6], [0, 1], quality=[0.5, 0.8])


def model_b() -> Detections:
    # b: class 0 at [1, 0, 10, 10] (0.7): IoU with a's first box = 90 / 100 = 0.9 -> suppressed by it;
    # class 1 at [0, 0, 10, 10] (0.8): same box as a's first but another class -> kept (class-wise NMS);
    # class 0 at [50, 50, 60, 60] (0.95): no overlap -> kept
    return _dets([[1, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.8, 0.95], [0, 1, 0],
                 quality=[0.9, 0.4, 1.0])


def test_the_union_is_suppressed_class_wise_and_sorted_by_score():
    out = ensemble_detections([model_a(), model_b()])
    # kept: b's 0.95, a's 0.9, b's 0.8 (class 1), a's 0.6; b's 0.7 is suppressed by a's 0.9
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.6])
    assert out.labels.tolist() == [0, 0, 1, 1]
    assert out.boxes.tolist() == [[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]
    # class_probs and quality follow their boxes: the rows of b[2], a[0], b[1], a[1]
    assert out.quality.tolist() == pytest.approx([1.0, 0.5, 0.4, 0.8])
    assert torch.equal(out.class_probs, torch.cat([model_b().class_probs[[2]], model_a().class_probs[[0]],
                                                   model_b().class_probs[[1]], model_a().class_probs[[1]]]))


def test_a_looser_iou_threshold_keeps_the_overlapping_box_and_top_k_cuts_the_lowest():
    # IoU 0.9 <= 0.95: b's 0.7 survives at threshold 0.95, and top 3 keeps 0.95, 0.9, 0.8
    out = ensemble_detections([model_a(), model_b()], iou_threshold=0.95)
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.7, 0.6])
    assert ensemble_detections([model_a(), model_b()], max_detections=3).scores.tolist() == pytest.approx(
        [0.95, 0.9, 0.8])


def test_quality_only_when_every_model_has_one_and_one_model_is_its_own_nms():
    b = model_b()
    b.quality = None
    assert ensemble_detections([model_a(), b]).quality is None
    # one model: its (already NMS-ed) detections come back unchanged, in score order
    out = ensemble_detections([model_b()])
    assert out.scores.tolist() == pytest.approx([0.95, 0.8, 0.7]) and out.labels.tolist() == [0, 1, 0]


def test_empty_detections_leave_the_other_model_s():
    empty = _dets(torch.zeros(0, 4).tolist(), [], [], quality=[])
    out = ensemble_detections([empty, model_a()])
    assert out.scores.tolist() == pytest.approx([0.9, 0.6]) and torch.equal(out.boxes, model_a().boxes)
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_detections([])


class _Fixed(nn.Module):
    """A stand-in detector that returns fixed detections for every image."""

    def __init__(self, dets: Detections) -> None:
        super().__init__()
        self.dets, self.num_classes = dets, 2
        self.layer = nn.Linear(1, 1)  # a parameter, so train / eval reach a module

    def predict(self, images, *, with_candidates=False):
        return [self.dets for _ in images]


def test_the_ensemble_detector_predicts_the_ensemble_of_its_members_per_image():
    a, b = _Fixed(model_a()), _Fixed(model_b())
    ens = EnsembleDetector(members=[a, b])
    out = ens.predict([torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)])
    assert len(out) == 2 and out[1].scores.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.6])
    assert ens.num_classes == 2 and (ens.iou_threshold, ens.max_detections) == (0.5, 100)
    ens.eval()
    assert not a.training and not b.training  # evaluate_detector's model.eval() reaches the members
    with pytest.raises(ValueError, match="no NMS candidates"):
        ens.predict([torch.zeros(3, 8, 8)], with_candidates=True)
