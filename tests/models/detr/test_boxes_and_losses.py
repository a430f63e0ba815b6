"""Box conversions (normalised ``cxcywh`` of the unpadded image against pixel ``xyxy``) and the set
losses (focal, L1, GIoU) with their weights and normaliser, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ssodlib.models.detr.boxes import (cxcywh_to_xyxy, denormalize_boxes, inverse_sigmoid, normalize_boxes,
                                       xyxy_to_cxcywh)
from ssodlib.models.detr.detector import DETRBase, layer_suffix
from ssodlib.models.detr.losses import LossWeights, average_count, class_targets, set_losses
from ssodlib.models.detr.matcher import Assignment

LN2 = math.log(2.0)


# -- boxes ----------------------------------------------------------------------------------------------
def test_normalise_a_box_by_the_unpadded_image():
    # box (10, 0, 30, 10) on a 100 x 100 image: centre (20, 5), size (20, 10) -> (0.2, 0.05, 0.2, 0.1)
    out = normalize_boxes(torch.tensor([[10.0, 0.0, 30.0, 10.0]]), (100, 100))
    assert out[0].tolist() == pytest.approx([0.2, 0.05, 0.2, 0.1])


def test_normalise_uses_height_for_y_and_width_for_x():
    # image (h=50, w=200); box (20, 10, 60, 30): cx 40/200, cy 20/50, w 40/200, h 20/50
    out = normalize_boxes(torch.tensor([[20.0, 10.0, 60.0, 30.0]]), (50, 200))
    assert out[0].tolist() == pytest.approx([0.2, 0.4, 0.2, 0.4])
    back = denormalize_boxes(out, (50, 200))
    assert back[0].tolist() == pytest.approx([20.0, 10.0, 60.0, 30.0])


def test_corner_and_centre_forms_round_trip():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    assert xyxy_to_cxcywh(boxes)[0].tolist() == pytest.approx([0.3, 0.55, 0.4, 0.7])
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def test_targets_are_normalised_by_each_images_own_size_not_the_padded_batch():
    # two images of 100 x 200 and 50 x 50 (h, w): the batch is padded to 100 x 200, but the second
    # image's box (0, 0, 25, 50) is half its width and all its height
    t = DETRBase.targets([torch.tensor([[0.0, 0.0, 100.0, 50.0]]), torch.tensor([[0.0, 0.0, 25.0, 50.0]])],
                         [torch.tensor([0]), torch.tensor([1])], [(100, 200), (50, 50)], torch.device("cpu"))
    assert t.boxes[0][0].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5])
    assert t.boxes[1][0].tolist() == pytest.approx([0.25, 0.5, 0.5, 1.0])
    assert t.num_boxes == 2 and t.binary().labels[1].tolist() == [0]


def test_inverse_sigmoid_is_the_clamped_logit():
    assert float(inverse_sigmoid(torch.tensor(0.5))) == pytest.approx(0.0)
    assert float(inverse_sigmoid(torch.tensor(0.75))) == pytest.approx(math.log(3.0))
    assert float(inverse_sigmoid(torch.tensor(1.0))) == pytest.approx(math.log(1 / 1e-5), rel=1e-4)  # finite
    assert float(inverse_sigmoid(torch.tensor(-0.2))) == pytest.approx(math.log(1e-5), rel=1e-4)


# -- losses ---------------------------------------------------------------------------------------------
def test_set_losses_by_hand():
    # one image, two queries, two classes, logits 0 (p = 0.5); target class 1 matched to query 0.
    # focal: the positive channel 0.25 * 0.25 * ln 2 = 0.043322, the three negative channels
    # 0.75 * 0.25 * ln 2 = 0.129965 each; sum 0.433217, weight 2, one box -> 0.866434
    # boxes: query 0 (0.5, 0.5, 0.2, 0.2) against (0.5, 0.5, 0.4, 0.2): L1 0.2 * 5 = 1.0;
    # GIoU 0.5 (IoU 0.04 / 0.08, the enclosing box is the target) -> (1 - 0.5) * 2 = 1.0
    logits = torch.zeros(1, 2, 2)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    a = [Assignment(queries=torch.tensor([0]), targets=torch.tensor([0]))]
    out = set_losses(logits, boxes, [torch.tensor([1])], [torch.tensor([[0.5, 0.5, 0.4, 0.2]])], a, num_boxes=1.0)
    assert float(out["cls"]) == pytest.approx(2 * (0.25 * 0.25 * LN2 + 3 * 0.75 * 0.25 * LN2), abs=1e-6)
    assert float(out["l1"]) == pytest.approx(1.0, abs=1e-5)  # float32
    assert float(out["giou"]) == pytest.approx(1.0, abs=1e-5)


def test_set_losses_divide_by_num_boxes_and_take_their_weights():
    logits, boxes = torch.zeros(1, 2, 2), torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    a = [Assignment(queries=torch.tensor([0]), targets=torch.tensor([0]))]
    args = (logits, boxes, [torch.tensor([1])], [torch.tensor([[0.5, 0.5, 0.4, 0.2]])], a)
    one = set_losses(*args, num_boxes=1.0)
    four = set_losses(*args, num_boxes=4.0, weights=LossWeights(cls=1.0, l1=1.0, giou=1.0))
    assert float(four["cls"]) == pytest.approx(float(one["cls"]) / 2 / 4)
    assert float(four["l1"]) == pytest.approx(float(one["l1"]) / 5 / 4)
    assert float(four["giou"]) == pytest.approx(float(one["giou"]) / 2 / 4)


def test_without_pairs_every_query_learns_background_and_box_terms_are_zero_with_a_graph():
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    boxes = torch.full((1, 3, 4), 0.5, requires_grad=True)
    empty = Assignment(queries=torch.zeros(0, dtype=torch.int64), targets=torch.zeros(0, dtype=torch.int64))
    out = set_losses(logits, boxes, [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)], [empty], num_boxes=1.0)
    # six negative channels of 0.75 * 0.25 * ln 2, weight 2
    assert float(out["cls"].detach()) == pytest.approx(2 * 6 * 0.75 * 0.25 * LN2, abs=1e-6)
    assert float(out["l1"].detach()) == 0.0 and float(out["giou"].detach()) == 0.0
    sum(out.values()).backward()
    assert boxes.grad is not None


def test_class_targets_are_one_hot_at_the_assigned_queries():
    a = [Assignment(queries=torch.tensor([2, 0]), targets=torch.tensor([0, 1]))]
    t = class_targets(torch.zeros(1, 3, 4), [torch.tensor([3, 1])], a)
    assert t[0].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_average_count_without_a_process_group_is_at_least_one():
    assert average_count(0, torch.device("cpu")) == 1.0
    assert average_count(7, torch.device("cpu")) == 7.0


def test_layer_names_follow_mmdetection():
    assert [layer_suffix(i, 3) for i in range(3)] == ["_d0", "_d1", ""]
