"""Eq. 6 of Rethinking Pseudo Labels (dynamic thresholds and loss weights): golden values by hand."""

from __future__ import annotations

import pytest
import torch

from ssodlib.methods.rethinking_pl_maths import class_statistics, dynamic_thresholds

PAPER = dict(tau=0.7, gamma1=0.05, gamma2=0.6)


def test_dynamic_thresholds_golden():
    # S = (30, 2, 0.5), N = (50, 5, 2): N_bar = 57 / 3 = 19 (the mean count, not the mean of S);
    # ratios S / N_bar = 1.578947, 0.105263, 0.026316
    #   tau_m = ratio^0.05 * 0.7 = 0.716170, 0.625478, 0.583591 (inside [0.4, 0.9])
    #   alpha_m = ratio^-0.6     = 0.760290, 3.860416, 8.868908 (not clipped)
    tau_m, alpha_m = dynamic_thresholds(torch.tensor([30.0, 2.0, 0.5]), torch.tensor([50, 5, 2]), **PAPER)
    assert tau_m.dtype == alpha_m.dtype == torch.float64
    assert tau_m.tolist() == pytest.approx([0.716170, 0.625478, 0.583591], abs=1e-6)
    assert alpha_m.tolist() == pytest.approx([0.760290, 3.860416, 8.868908], abs=1e-6)


def test_zero_gammas_disable_both_mechanisms():
    tau_m, alpha_m = dynamic_thresholds(torch.tensor([30.0, 2.0, 0.5]), torch.tensor([50, 5, 2]), tau=0.7,
                                        gamma1=0.0, gamma2=0.0)
    assert tau_m.tolist() == pytest.approx([0.7] * 3) and alpha_m.tolist() == [1.0] * 3


def test_thresholds_are_clipped_and_weights_are_not():
    # lower bound: ratio 1e-6 (S = (1e-6, 1), N = (1, 1), N_bar = 1): 0.7 * 1e-6^0.05 = 0.7 * 10^-0.3
    # = 0.350831 -> 0.4
    # (a ratio of 1e-4 gives 0.7 * 10^-0.2 = 0.441670, still inside the bounds); alpha = 1e-6^-0.6 = 10^3.6
    tau_m, alpha_m = dynamic_thresholds(torch.tensor([1e-6, 1.0]), torch.tensor([1, 1]), **PAPER)
    assert tau_m[0].item() == pytest.approx(0.4) and alpha_m[0].item() == pytest.approx(10**3.6, rel=1e-6)
    tau_m, _ = dynamic_thresholds(torch.tensor([1e-4, 1.0]), torch.tensor([1, 1]), **PAPER)
    assert tau_m[0].item() == pytest.approx(0.441670, abs=1e-6)
    # upper bound: gamma1 = 1, ratio 30 / 19 = 1.578947 -> 1.105263 -> 0.9; without clip it stays
    s, n = torch.tensor([30.0, 2.0, 0.5]), torch.tensor([50, 5, 2])
    assert dynamic_thresholds(s, n, tau=0.7, gamma1=1.0, gamma2=0.6)[0][0].item() == pytest.approx(0.9)
    unclipped = dynamic_thresholds(s, n, tau=0.7, gamma1=1.0, gamma2=0.6, clip=None)[0]
    assert unclipped[0].item() == pytest.approx(0.7 * 30 / 19)


def test_classes_without_statistics_count_as_average():
    # class 1 has no boxes (N_bar = (4 + 0 + 2) / 3 = 2 counts it), class 2 boxes of p * v = 0:
    # both get tau (clipped) and alpha 1 instead of Eq. 6's infinite weight; class 0: ratio 2 / 2 = 1
    tau_m, alpha_m = dynamic_thresholds(torch.tensor([2.0, 0.0, 0.0]), torch.tensor([4, 0, 2]), **PAPER)
    assert tau_m.tolist() == pytest.approx([0.7, 0.7, 0.7]) and alpha_m.tolist() == pytest.approx([1.0, 1.0, 1.0])
    tau_m, alpha_m = dynamic_thresholds(torch.zeros(3), torch.zeros(3, dtype=torch.int64), **PAPER)
    assert tau_m.tolist() == pytest.approx([0.7] * 3) and alpha_m.tolist() == [1.0] * 3
    assert torch.isfinite(alpha_m).all()
    tau_m, _ = dynamic_thresholds(torch.zeros(2), torch.zeros(2), tau=0.95, gamma1=0.05, gamma2=0.6)
    assert tau_m.tolist() == pytest.approx([0.9, 0.9])  # clip applies to every class alike


def test_only_the_ratio_matters_so_the_window_is_the_callers():
    s, n = torch.tensor([30.0, 2.0, 0.5]), torch.tensor([50.0, 5.0, 2.0])
    a = dynamic_thresholds(s, n, **PAPER)
    b = dynamic_thresholds(3 * s, 3 * n, **PAPER)  # e.g. three times as long a cumulative window
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    # a rarer / less confident class gets a lower threshold and a larger weight
    assert (a[0].diff() < 0).all() and (a[1].diff() > 0).all()


def test_dynamic_thresholds_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sum_pv and counts"):
        dynamic_thresholds(torch.zeros(3), torch.zeros(2), **PAPER)


def test_class_statistics_golden():
    # boxes of classes 0, 2, 0, 2 with p * v = 0.9 * 0.5, 0.8 * 1.0, 0.6 * 0.5, 0.4 * 0.25:
    #   S = (0.45 + 0.30, 0, 0.80 + 0.10) = (0.75, 0, 0.90), N = (2, 0, 2)
    labels = torch.tensor([0, 2, 0, 2])
    p = torch.tensor([0.9, 0.8, 0.6, 0.4], requires_grad=True)
    v = torch.tensor([0.5, 1.0, 0.5, 0.25])
    sum_pv, counts = class_statistics(labels, p, v, num_classes=3)
    assert sum_pv.dtype == torch.float64 and counts.dtype == torch.int64 and not sum_pv.requires_grad
    assert sum_pv.tolist() == pytest.approx([0.75, 0.0, 0.90]) and counts.tolist() == [2, 0, 2]
    empty_s, empty_n = class_statistics(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0),
                                        num_classes=3)
    assert empty_s.tolist() == [0.0] * 3 and empty_n.tolist() == [0] * 3
