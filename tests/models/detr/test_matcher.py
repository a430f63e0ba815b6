"""Hungarian matching against brute force, the focal / L1 / GIoU matching cost by hand, the guard
against non-finite costs, and the assigner interface."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssodlib.models.detr.matcher import (Assigner, Assignment, CostWeights, HungarianAssigner, OneToManyAssigner,
                                         focal_cost, hungarian_match, match_cost)


def brute_force_minimum(cost: torch.Tensor) -> float:
    """The smallest total over every injective assignment of the shorter side into the longer."""
    rows, cols = cost.shape
    if rows >= cols:
        return min(sum(float(cost[p[j], j]) for j in range(cols)) for p in itertools.permutations(range(rows), cols))
    return min(sum(float(cost[i, p[i]]) for i in range(rows)) for p in itertools.permutations(range(cols), rows))


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (6, 1), (1, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_match_is_optimal_and_one_to_one(shape, seed):
    cost = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 10 - 3
    rows, cols = hungarian_match(cost)
    assert rows.dtype == cols.dtype == torch.int64
    assert len(rows) == len(cols) == min(shape)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert rows.tolist() == sorted(rows.tolist())
    assert float(cost[rows, cols].sum()) == pytest.approx(brute_force_minimum(cost), abs=1e-5)


def test_hungarian_match_golden():
    # the greedy choice (row 0 -> col 0, cost 1) forces row 1 -> col 1 (cost 10): 11;
    # the optimum crosses: 2 + 3 = 5
    cost = torch.tensor([[1.0, 2.0], [3.0, 10.0]])
    rows, cols = hungarian_match(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_non_finite_costs_are_avoided_not_fatal():
    # NaN and +inf mean "never"; -inf means "always". Finite optimum: row 0 -> col 1, row 1 -> col 0
    cost = torch.tensor([[float("nan"), 1.0], [2.0, float("inf")]])
    rows, cols = hungarian_match(cost)
    assert cols.tolist() == [1, 0]
    cost = torch.tensor([[float("-inf"), 0.0], [0.0, 5.0]])
    assert hungarian_match(cost)[1].tolist() == [0, 1]
    rows, cols = hungarian_match(torch.full((2, 2), float("nan")))  # all unusable: still an assignment
    assert len(rows) == 2


def test_empty_cost():
    rows, cols = hungarian_match(torch.zeros(4, 0))
    assert rows.numel() == 0 and cols.numel() == 0


# -- matching cost ------------------------------------------------------------------------------------------
def test_focal_cost_golden():
    # p = 0.5: positive 0.25 * 0.5^2 * ln 2 = 0.043322, negative 0.75 * 0.5^2 * ln 2 = 0.129965
    c = focal_cost(torch.tensor([[0.5]]), torch.tensor([0]))
    assert float(c) == pytest.approx(0.043322 - 0.129965, abs=1e-6)


def test_match_cost_golden():
    # one prediction with p = 0.5 for the target class and the target's own box:
    # cls 2 * (0.043322 - 0.129965) = -0.173287, L1 0, GIoU -2 * 1 -> total -2.173287
    box = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    cost = match_cost(torch.zeros(1, 3), box, torch.tensor([1]), box)
    assert float(cost) == pytest.approx(-2.173287, abs=1e-5)


def test_match_cost_terms_by_hand():
    # prediction (0.5, 0.5, 0.2, 0.2) against target (0.5, 0.5, 0.4, 0.2): L1 = 0.2; as corners
    # (0.4, 0.4, 0.6, 0.6) inside (0.3, 0.4, 0.7, 0.6): IoU 0.04 / 0.08 = 0.5, enclosing box = target: GIoU 0.5.
    # logit ln 3 gives p = 0.75: cls = 0.25 * 0.0625 * -ln 0.75 - 0.75 * 0.5625 * -ln 0.25
    pred, gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.5, 0.5, 0.4, 0.2]])
    logits = torch.tensor([[math.log(3.0), -5.0]])
    cls = 0.25 * 0.0625 * -math.log(0.75) - 0.75 * 0.5625 * -math.log(0.25)
    cost = match_cost(logits, pred, torch.tensor([0]), gt, weights=CostWeights(cls=2.0, l1=5.0, giou=2.0))
    assert float(cost) == pytest.approx(2 * cls + 5 * 0.2 - 2 * 0.5, abs=1e-5)
    only_l1 = match_cost(logits, pred, torch.tensor([0]), gt, weights=CostWeights(cls=0.0, l1=1.0, giou=0.0))
    assert float(only_l1) == pytest.approx(0.2, abs=1e-6)


def test_match_cost_shape_and_no_gradient():
    logits = torch.randn(7, 4, requires_grad=True)
    boxes = torch.rand(7, 4).clamp(0.1, 0.9)
    cost = match_cost(logits, boxes, torch.tensor([0, 3]), torch.rand(2, 4).clamp(0.1, 0.9))
    assert cost.shape == (7, 2) and not cost.requires_grad


# -- assigners --------------------------------------------------------------------------------------------
def test_hungarian_assigner_picks_the_matching_query_per_target():
    gt = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]])
    boxes = torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]])
    a = HungarianAssigner()(torch.zeros(3, 2), boxes, torch.tensor([0, 1]), gt)
    assert isinstance(a, Assignment) and a.quality is None
    assert dict(zip(a.targets.tolist(), a.queries.tolist())) == {0: 2, 1: 0}
    empty = HungarianAssigner()(torch.zeros(3, 2), boxes, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    assert len(empty) == 0


def test_one_to_many_assigners_implement_the_protocol():
    class TopTwo:
        """Each target takes the two queries of lowest L1 distance (a stand-in one-to-many assigner)."""

        def __call__(self, logits, boxes, gt_labels, gt_boxes):
            best = torch.cdist(boxes, gt_boxes, p=1).topk(2, dim=0, largest=False).indices  # (2, G)
            return Assignment(queries=best.T.reshape(-1), targets=torch.arange(len(gt_boxes)).repeat_interleave(2),
                              quality=torch.ones(best.numel()))

    assert isinstance(TopTwo(), Assigner) and isinstance(TopTwo(), OneToManyAssigner)
    assert isinstance(HungarianAssigner(), Assigner)
