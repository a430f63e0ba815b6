"""Dynamic thresholding and re-weighting of "Rethinking Pseudo Labels for Semi-Supervised Object
Detection" (Li, Wu, Shrivastava and Davis, AAAI 2022, https://arxiv.org/abs/2106.00168), Sec. 2.3.

The class statistics and Eq. 6 that the method (:mod:`ssodlib.methods.rethinking_pl`, built on the
side-classification head of :mod:`ssodlib.models.side_buckets`) calls; kept apart as pure functions.

For each class ``m`` the classification confidence ``p`` and localisation quality ``v`` of its
foreground candidate boxes ``j`` are accumulated online into ``S_m = sum_j p_m^j v_m^j``, beside the
count ``N_m = sum_j 1``. With ``N_bar = mean_m N_m`` (the paper's "average number of foreground
instances from all categories"), Eq. 6 reads

    tau_m = (S_m / N_bar) ** gamma1 * tau,  clipped to [0.4, 0.9];    alpha_m = (N_bar / S_m) ** gamma2.

``tau_m`` filters the class-``m`` pseudo labels (in place of the fixed ``tau``) and ``alpha_m``
multiplies the losses of every class-``m`` foreground instance. Paper values: ``tau = 0.7``,
``gamma1 = 0.05``, ``gamma2 = 0.6``; ``gamma = 0`` disables either mechanism.

Equation -> function map:

* The accumulated statistics of one batch of candidates: :func:`class_statistics`.
* Eq. 6: :func:`dynamic_thresholds`.

No official code exists. What is printed and kept as printed: the denominator of the ratio is the mean
*count* ``N_bar``, not the mean of ``S`` (so the ratio mixes a class's frequency with its confidence: a
class of average frequency whose boxes have ``p * v = 0.5`` gets ratio 0.5, ``tau_m = 0.676`` and
``alpha_m = 1.52``); only ``tau_m`` is clipped (``alpha_m`` is not bounded in the paper).

Choices of this implementation (the paper is silent):

* A class without statistics (``N_m = 0``, or ``S_m = 0``, where Eq. 6's ``alpha_m`` is infinite) is
  treated as an average class, ratio 1: ``tau_m = clip(tau)`` and ``alpha_m = 1``. ``N_bar`` is the mean
  over all ``C`` classes, those without boxes included, as "from all categories" says.
* The window is the caller's: Eq. 6 depends on ``S_m`` and ``N_bar`` only through their ratio, which
  is unchanged when both accumulators are scaled alike, so cumulative sums since the first
  semi-supervised step (the specification's default, the thresholds of step ``t`` from the statistics
  up to ``t - 1``) and an exponential moving average of both are equally valid inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def class_statistics(labels: Tensor, p: Tensor, v: Tensor, *, num_classes: int) -> tuple[Tensor, Tensor]:
    """One batch's contribution to the accumulators of Eq. 6.

    Args:
        labels: ``(J,)`` int64 classes in ``0..C-1`` of ``J`` foreground candidate boxes (RoI labels
            ``1..C`` minus one).
        p: ``(J,)`` classification confidence of each box for its class; ``v``: ``(J,)`` localisation
            quality (``1`` for a head without one).
    Returns:
        ``(C,)`` float64 ``sum_j p_j v_j`` per class and ``(C,)`` int64 box counts, detached, on
        ``labels``' device; add them to the running sums.
    """
    labels = labels.detach().long()
    pv = (p.detach().double() * v.detach().double()).to(labels.device)
    sum_pv = torch.zeros(num_classes, dtype=torch.float64, device=labels.device).index_add_(0, labels, pv)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    return sum_pv, counts


def dynamic_thresholds(sum_pv: Tensor, counts: Tensor, *, tau: float, gamma1: float, gamma2: float,
                       clip: tuple[float, float] | None = (0.4, 0.9)) -> tuple[Tensor, Tensor]:
    """Eq. 6: per-class pseudo-label thresholds ``tau_m`` and loss weights ``alpha_m``.

    Args:
        sum_pv: ``(C,)`` accumulated ``S_m = sum_j p_m^j v_m^j`` over the class-``m`` foreground candidate
            boxes seen in the window (see the module docstring and :func:`class_statistics`).
        counts: ``(C,)`` the number ``N_m`` of those boxes, over the same window.
        tau: the fixed threshold Eq. 6 scales (0.7); ``gamma1``, ``gamma2``: 0.05 and 0.6 in the paper.
        clip: bounds of ``tau_m`` (the paper's ``[0.4, 0.9]``); ``None``: unclipped.
    Returns:
        ``(C,)`` float64 ``tau_m = clip((S_m / N_bar) ** gamma1 * tau)`` and ``(C,)`` float64
        ``alpha_m = (N_bar / S_m) ** gamma2`` with ``N_bar = mean_m N_m``; a class with ``N_m = 0`` or
        ``S_m = 0`` counts as ratio 1 (``tau_m = clip(tau)``, ``alpha_m = 1``).
    """
    s = torch.as_tensor(sum_pv, dtype=torch.float64)
    n = torch.as_tensor(counts, dtype=torch.float64, device=s.device)
    if s.shape != n.shape or s.dim() != 1:
        raise ValueError(f"sum_pv and counts must both be (C,); got {tuple(s.shape)} and {tuple(n.shape)}")
    mean_count = n.mean()
    seen = (n > 0) & (s > 0)
    # safe denominators: torch.where evaluates both branches, and an unseen class's ratio is never used
    ratio = torch.where(seen, s / mean_count.clamp(min=1e-12), torch.ones_like(s))
    tau_m = ratio**gamma1 * tau
    if clip is not None:
        tau_m = tau_m.clamp(min=clip[0], max=clip[1])
    return tau_m, ratio ** (-gamma2)


__all__ = ["class_statistics", "dynamic_thresholds"]
