"""Classification and box losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssodlib.models.losses import box_regression_loss, soft_cross_entropy, softmax_focal_loss

LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
LABELS = [0, 2]


def _softmax_row(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def _hand_focal(gamma: float) -> list[float]:
    out = []
    for row, label in zip(LOGITS, LABELS):
        p_t = _softmax_row(row)[label]
        out.append(-((1 - p_t) ** gamma) * math.log(p_t))
    return out


def test_focal_gamma0_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(7, 5)
    labels = torch.randint(0, 5, (7,))
    for reduction in ("none", "sum", "mean"):
        got = softmax_focal_loss(logits, labels, gamma=0.0, reduction=reduction)
        want = F.cross_entropy(logits, labels, reduction=reduction)
        torch.testing.assert_close(got, want)


def test_focal_gamma2_hand_value_and_reductions():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    want = _hand_focal(2.0)
    # row 0: p_t = e^2 / (e^2 + 1 + e^-1); row 1: p_t = 1 / (e^0.5 + e^1.5 + 1)
    assert want[0] == pytest.approx(-(1 - 0.8437947) ** 2 * math.log(0.8437947), rel=1e-5)
    none = softmax_focal_loss(logits, labels, gamma=2.0, reduction="none")
    assert none.shape == (2,)
    assert none.tolist() == pytest.approx(want, rel=1e-5)
    assert softmax_focal_loss(logits, labels, gamma=2.0, reduction="sum").item() == pytest.approx(sum(want), rel=1e-5)
    assert softmax_focal_loss(logits, labels, gamma=2.0, reduction="mean").item() == pytest.approx(sum(want) / 2, rel=1e-5)
    # default reduction is the mean, default gamma 1.5
    assert softmax_focal_loss(logits, labels).item() == pytest.approx(sum(_hand_focal(1.5)) / 2, rel=1e-5)
    # focal down-weights: every row strictly below its cross-entropy
    assert (none < F.cross_entropy(logits, labels, reduction="none")).all()


def test_focal_empty_and_bad_reduction():
    empty = softmax_focal_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    assert empty.item() == 0.0
    with pytest.raises(ValueError):
        softmax_focal_loss(torch.tensor(LOGITS), torch.tensor(LABELS), reduction="max")


def test_soft_cross_entropy_one_hot_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.randint(0, 4, (6,))
    onehot = F.one_hot(labels, 4).float()
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(soft_cross_entropy(logits, onehot, reduction=reduction),
                                   F.cross_entropy(logits, labels, reduction=reduction))


def test_soft_cross_entropy_hand_value():
    row, q = [1.0, 2.0, 0.0], [0.2, 0.5, 0.3]
    lse = math.log(sum(math.exp(v) for v in row))
    want = -sum(qk * (lk - lse) for qk, lk in zip(q, row))
    got = soft_cross_entropy(torch.tensor([row, row]), torch.tensor([q, [0.0, 1.0, 0.0]]), reduction="none")
    assert got[0].item() == pytest.approx(want, rel=1e-6)
    assert got[1].item() == pytest.approx(lse - 2.0, rel=1e-6)
    mean = soft_cross_entropy(torch.tensor([row, row]), torch.tensor([q, [0.0, 1.0, 0.0]]))
    assert mean.item() == pytest.approx((want + lse - 2.0) / 2, rel=1e-6)


def test_smooth_l1_hand_value():
    beta = 1 / 9
    pred = torch.tensor([[0.0, 0.05, 1.0, -0.5]])
    target = torch.zeros(1, 4)
    # |d| < beta: 0.5 d^2 / beta; else |d| - beta / 2; summed
    want = 0.0 + 0.5 * 0.05 ** 2 / beta + (1.0 - beta / 2) + (0.5 - beta / 2)
    assert box_regression_loss(pred, target).item() == pytest.approx(want, rel=1e-6)
    assert box_regression_loss(pred, target, kind="smooth_l1").item() == pytest.approx(want, rel=1e-6)
    # summed, not averaged: two identical rows give twice the value
    assert box_regression_loss(pred.repeat(2, 1), target.repeat(2, 1)).item() == pytest.approx(2 * want, rel=1e-6)


def test_giou_identical_and_disjoint():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 12.0]])
    d = torch.zeros(2, 4)
    same = box_regression_loss(d, d, kind="giou", pred_boxes=boxes, target_boxes=boxes.clone())
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # disjoint unit squares 1 apart: IoU 0, hull area 3, union 2 -> GIoU = -1/3, loss 4/3
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    dis = box_regression_loss(d[:1], d[:1], kind="giou", pred_boxes=a, target_boxes=b)
    assert dis.item() == pytest.approx(4 / 3, rel=1e-6)
    # partial overlap: inter 1, union 7, hull 9 -> GIoU = 1/7 - 2/9; summed with the disjoint pair
    c = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    e = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    both = box_regression_loss(d, d, kind="giou", pred_boxes=torch.cat([a, c]), target_boxes=torch.cat([b, e]))
    assert both.item() == pytest.approx(4 / 3 + 1 - (1 / 7 - 2 / 9), rel=1e-6)


def test_giou_needs_boxes_and_unknown_kind_raises():
    d = torch.zeros(1, 4)
    with pytest.raises(ValueError):
        box_regression_loss(d, d, kind="giou")
    with pytest.raises(ValueError, match="unknown box loss"):
        box_regression_loss(d, d, kind="l2")
