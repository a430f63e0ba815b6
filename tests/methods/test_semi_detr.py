"""Semi-DETR: golden tests of the maths on hand-made tensors (arithmetic in the comments), the DETR passes
on smoke-sized models, wiring tests that pin what the method hands each function, and short training
runs on DINO and Deformable DETR (the stage switch across a resume)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from ssodlib.config import train_config
from ssodlib.data.batch import Batch
from ssodlib.engine.run_folder import read_metrics
from ssodlib.engine.trainer import Trainer, run_info
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.experiments.inspection import load_run_detector
from ssodlib.io import InputError
from ssodlib.methods import METHODS, StepContext
from ssodlib.methods import semi_detr as sd
from ssodlib.methods.detr_passes import (all_gather_1d, box_queries, boxes_to_view, cross_view_attention_mask,
                                         decode_with_extras, detr_pass)
from ssodlib.methods.semi_detr import (SemiDETR, SemiDETROptions, atss_assign, cqc_cosine_loss, cqc_mse_loss,
                                       fit_gaussian_mixture_1d, gmm_cost_threshold, in_stage_one, matched_costs,
                                       max_iou_assign, mean_std_filter, normalized_alignment, one_to_many_assign,
                                       one_to_many_losses, ramped_keep_rate, simota_assign, task_aligned_focal_loss)
from ssodlib.models.build import build_detector
from ssodlib.models.detectors.base import Detections
from ssodlib.models.detr.detector import RoIQueryHead
from ssodlib.models.detr.losses import LossWeights
from ssodlib.models.detr_presets import detr_train_overrides
from tiny_setup import first_batch, published_counterparts

C = 3


def _config(family: str = "dino", **overrides):
    ov = detr_train_overrides(family, "smoke")
    ov["detector_options"].update(roi_queries=True)
    return train_config("smoke", method="semi_detr", **{**ov, **overrides})


def _model(family: str = "dino", seed: int = 0):
    torch.manual_seed(seed)
    return build_detector(_config(family), C)


# -- Eq. 2-3: one-to-many assignment ----------------------------------------------------------------------
def test_one_to_many_golden_from_the_specification():
    # one pseudo box, three queries: IoU (1, 0.5, 0), score (0.5, 0.9, 0.9), alpha 1, beta 6
    # m = (0.5 * 1, 0.9 * 0.5^6 = 0.0140625, 0.9 * 0 = 0): queries 0, 1 positive, query 2 negative (m = 0)
    # t_hat = m / (max m + 1e-7) * max IoU = (0.5 / 0.5000001, 0.0140625 / 0.5000001) * 1.0 = (1.0, 0.028125)
    scores = torch.tensor([[0.5], [0.9], [0.9]])
    ious = torch.tensor([[1.0], [0.5], [0.0]])
    assigned, target = one_to_many_assign(scores, ious, topk=13, alpha=1.0, beta=6.0)  # k > Q: clamped
    assert assigned.tolist() == [0, 0, -1]
    assert target.tolist() == pytest.approx([1.0, 0.028125, 0.0], abs=1e-6)


def test_one_to_many_keeps_only_the_top_k_and_breaks_ties_by_the_lower_query():
    scores = torch.tensor([[0.5], [0.9], [0.9]])
    ious = torch.tensor([[1.0], [0.5], [0.0]])
    assert one_to_many_assign(scores, ious, topk=1, alpha=1.0, beta=6.0)[0].tolist() == [0, -1, -1]
    # queries 1 and 2 tie at m = 0.4 * 0.5^6: top-1 takes query 1 (the lower index)
    tie_s, tie_u = torch.tensor([[0.1], [0.4], [0.4]]), torch.tensor([[0.5], [0.5], [0.5]])
    assert one_to_many_assign(tie_s, tie_u, topk=1, alpha=1.0, beta=6.0)[0].tolist() == [-1, 0, -1]


def test_one_to_many_conflict_goes_to_the_larger_iou_and_alpha_beta_shape_the_metric():
    # box 0: m = (0.6^6 = 0.046656, 0.5^6 = 0.015625) -> top-1 query 0; box 1: m = (0.8^6 = 0.262144, 0) -> query 0
    # query 0 is a candidate of both: box 1 (IoU 0.8 > 0.6); box 0 keeps no positive, query 1 is negative
    scores = torch.ones(2, 2)
    ious = torch.tensor([[0.6, 0.8], [0.5, 0.0]])
    assigned, target = one_to_many_assign(scores, ious, topk=1, alpha=1.0, beta=6.0)
    assert assigned.tolist() == [1, -1]
    assert target.tolist() == pytest.approx([0.262144 / (0.262144 + 1e-7) * 0.8, 0.0], abs=1e-6)
    # beta = 0 makes m the score alone: box 0 ranks query 1 (score 0.9) over query 0 (0.2)
    s2 = torch.tensor([[0.2], [0.9]])
    u2 = torch.tensor([[0.9], [0.1]])
    assert one_to_many_assign(s2, u2, topk=1, alpha=1.0, beta=0.0)[0].tolist() == [-1, 0]
    assert one_to_many_assign(s2, u2, topk=1, alpha=0.0, beta=1.0)[0].tolist() == [0, -1]  # alpha 0: IoU alone


def test_normalised_soft_targets_of_two_positives():
    # box 0 with positives m = (0.2, 0.1), IoU (0.9, 0.7): t_hat = (0.2 / 0.2, 0.1 / 0.2) * 0.9 = (0.9, 0.45)
    assigned = torch.tensor([0, 0, -1])
    metric = torch.tensor([[0.2], [0.1], [0.3]], dtype=torch.float64)
    ious = torch.tensor([[0.9], [0.7], [0.95]])
    t = normalized_alignment(assigned, metric, ious)
    assert t.tolist() == pytest.approx([0.2 / (0.2 + 1e-7) * 0.9, 0.1 / (0.2 + 1e-7) * 0.9, 0.0], abs=1e-7)
    # the same with beta 0 (m = s) through the assigner
    a, t2 = one_to_many_assign(torch.tensor([[0.2], [0.1]]), torch.tensor([[0.9], [0.7]]), topk=5, alpha=1.0,
                               beta=0.0)
    assert a.tolist() == [0, 0] and t2.tolist() == pytest.approx([0.9, 0.45], abs=1e-6)


def test_one_to_many_without_boxes_or_queries():
    a, t = one_to_many_assign(torch.zeros(4, 0), torch.zeros(4, 0), topk=13, alpha=1.0, beta=6.0)
    assert a.tolist() == [-1] * 4 and t.tolist() == [0.0] * 4
    a, t = one_to_many_assign(torch.zeros(0, 2), torch.zeros(0, 2), topk=13, alpha=1.0, beta=6.0)
    assert a.numel() == 0 and t.numel() == 0


# -- Table 6's assigners ----------------------------------------------------------------------------------
def test_max_iou_assignment_thresholds_and_low_quality_matches():
    # q0 -> box 0 (0.6 >= 0.5); q1 best 0.45 < 0.5 -> negative; q2 best 0.3 -> negative, but box 1's best
    # query is q2 (0.3): a low-quality match
    ious = torch.tensor([[0.6, 0.1], [0.45, 0.2], [0.1, 0.3]])
    assert max_iou_assign(ious).tolist() == [0, -1, 1]


def test_atss_assignment_on_query_centres():
    # a box centred at (0.5, 0.5) of size 0.4; query centres at distances 0, 0.1, 0.4 (the last outside the box).
    # top-2 by distance: q0, q1 with IoU (0.8, 0.2): threshold mean 0.5 + std 0.4243 = 0.9243, none passes;
    # top-3: IoU (0.8, 0.2, 0.1): mean 0.3667 + std 0.3786 = 0.7453, q0 passes (and its centre is inside)
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    pred = torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.6, 0.5, 0.2, 0.2], [0.9, 0.5, 0.1, 0.1]])
    ious = torch.tensor([[0.8], [0.2], [0.1]])
    assert atss_assign(ious, pred, gt, topk=2).tolist() == [-1, -1, -1]
    assert atss_assign(ious, pred, gt, topk=3).tolist() == [0, -1, -1]


def test_simota_assignment_takes_the_dynamic_k_cheapest():
    # dynamic k = floor(0.9 + 0.8 + 0.5) = 2 (three queries < 10 candidates); costs: q0 BCE(0.5, 0.9) = ln 2
    # + 3 * -ln 0.9 = 1.009, q1 ln 2 + 3 * -ln 0.8 = 1.362, q2 (centre outside the box) 1e5 + ...: q0, q1
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    pred = torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.55, 0.5, 0.3, 0.3], [0.95, 0.5, 0.1, 0.1]])
    ious = torch.tensor([[0.9], [0.8], [0.5]])
    scores = torch.tensor([[0.5], [0.5], [0.5]])
    assert simota_assign(scores, ious, pred, gt).tolist() == [0, 0, -1]


# -- Eq. 4-5 ------------------------------------------------------------------------------------------------
def test_task_aligned_focal_loss_golden():
    def logit(p):
        return math.log(p / (1 - p))

    def tafl(lg, t, **kw):
        return float(task_aligned_focal_loss(torch.tensor([[lg]]), torch.tensor([[t]]), **kw))

    # positive s = 0.5, t = 1: |1 - 0.5|^2 * BCE = 0.25 * 0.693147 = 0.173287
    assert tafl(0.0, 1.0) == pytest.approx(0.173287, abs=1e-6)
    # positive s = 0.9, t = 0.028125: 0.871875^2 * BCE = 0.760166 * 2.240788 = 1.703371
    assert tafl(logit(0.9), 0.028125) == pytest.approx(1.703371, abs=1e-5)
    # negative channel s = 0.2: 0.2^2 * -log(0.8) = 0.04 * 0.223144 = 0.008926
    assert tafl(logit(0.2), 0.0) == pytest.approx(0.008926, abs=1e-6)
    # gamma 0: plain BCE
    assert tafl(0.0, 1.0, gamma=0.0) == pytest.approx(0.693147, abs=1e-6)


def test_one_to_many_losses_weight_boxes_by_t_hat_and_divide_by_its_sum():
    # two positives of one box with t_hat (0.9, 0.45), sum 1.35 (> 1, so no clamp)
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, 2)  # s = 0.5 everywhere
    fixed = lambda s, u, p, g: (torch.tensor([0, 0, -1]), torch.tensor([0.9, 0.45, 0.0]))  # noqa: E731
    w = LossWeights(cls=2.0, l1=5.0, giou=2.0)
    out = one_to_many_losses(logits, boxes, [torch.tensor([1])], [gt], assign=fixed, weights=w, gamma=2.0)
    # L1: query 0 exact (0), query 1 off by 0.1 in cx -> 0.45 * 0.1 = 0.045; * 5 / 1.35
    assert float(out["l1"]) == pytest.approx(5 * 0.045 / 1.35, abs=1e-6)
    # GIoU: boxes (0.5, 0.4, 0.7, 0.6) vs (0.4, 0.4, 0.6, 0.6): IoU 0.02 / 0.06 = 1/3, hull = union -> 1 - GIoU = 2/3
    assert float(out["giou"]) == pytest.approx(2 * 0.45 * (2 / 3) / 1.35, abs=1e-5)  # float32, eps 1e-7
    # TAFL: class 1 of q0 (t 0.9): 0.4^2 * BCE(0.5, 0.9) = 0.16 * 0.693147; q1 (t 0.45): 0.05^2 * 0.693147;
    # the other 4 channels: 0.25 * 0.693147 each
    tafl = (0.16 + 0.0025 + 4 * 0.25) * math.log(2.0)
    assert float(out["cls"]) == pytest.approx(2 * tafl / 1.35, abs=1e-5)


# -- Eq. 11 ---------------------------------------------------------------------------------------------------
def test_consistency_losses_golden_and_the_teacher_gets_no_gradient():
    hs = torch.tensor([[[1.0, 0.0]]], requires_grad=True)  # (L=1, K=1, D=2)
    ht = torch.tensor([[[0.0, 1.0]]], requires_grad=True)
    assert float(cqc_cosine_loss(hs, ht).detach()) == pytest.approx(0.0, abs=1e-7)  # -cos 90 degrees = 0
    # normalised MSE per element: ((1 - 0)^2 + (0 - 1)^2) / 2 = 1 (the code's factor 10 is cqc_weight)
    mse = cqc_mse_loss(hs, ht)
    assert float(mse.detach()) == pytest.approx(1.0)
    mse.backward()
    assert hs.grad is not None and ht.grad is None
    same = torch.tensor([[[3.0, 4.0]], [[1.0, 1.0]]])  # two layers, identical views
    assert float(cqc_cosine_loss(same, same * 2)) == pytest.approx(-1.0) and float(cqc_mse_loss(same, same)) == 0.0
    # layers: the cosine averages them, the code's MSE sums them (one per layer)
    two = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    other = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    assert float(cqc_cosine_loss(two, other)) == pytest.approx(-0.5)
    assert float(cqc_mse_loss(two, other)) == pytest.approx(1.0)
    assert float(cqc_cosine_loss(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4))) == 0.0


# -- §3.2 / §3.5 pseudo labels ------------------------------------------------------------------------------
def test_mean_plus_std_filter_uses_the_unbiased_std():
    # (0, 0, 1, 1): mean 0.5, unbiased std sqrt(1 / 3) = 0.5774 -> 1.077: nothing (population std 0.5 would keep 2)
    assert mean_std_filter(torch.tensor([0.0, 0.0, 1.0, 1.0])).tolist() == [False] * 4
    # (0.1, 0.2, 0.9): mean 0.4, std sqrt((0.09 + 0.04 + 0.25) / 2) = 0.43589 -> 0.83589: keeps 0.9
    assert mean_std_filter(torch.tensor([0.1, 0.2, 0.9])).tolist() == [False, False, True]
    assert mean_std_filter(torch.tensor([0.7])).tolist() == [False]  # one score: std NaN, none
    assert mean_std_filter(torch.zeros(0)).numel() == 0


def test_matched_cost_golden():
    # p = 0.5 for the target class and the box equal to the target: focal pos 0.25 * 0.25 * ln 2 = 0.043322,
    # neg 0.75 * 0.25 * ln 2 = 0.129965 -> 2 * (pos - neg) = -0.173287; L1 0; -2 * GIoU = -2 -> -2.173287
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    costs = matched_costs(torch.zeros(1, 2), box, torch.tensor([1]), box)
    assert costs.tolist() == pytest.approx([-2.173287], abs=1e-5)
    # two boxes, one prediction: one is left unmatched (inf)
    costs = matched_costs(torch.zeros(1, 2), box, torch.tensor([1, 0]), torch.cat([box, box + 0.1]))
    assert torch.isinf(costs).sum() == 1


# -- GMM ----------------------------------------------------------------------------------------------------------
def test_gmm_threshold_rules_on_two_separated_clusters():
    costs = [0.9, 1.0, 1.1, 4.8, 5.0, 5.2]  # component means (1.0, 5.0); 1.0 is also the most likely sample
    assert gmm_cost_threshold(costs) == pytest.approx(1.0, abs=1e-9)
    assert gmm_cost_threshold(costs, rule="max_likelihood_sample") == 1.0
    # (0, 0.5, 0.8 | 5, 5.1): low mean 1.3 / 3 = 0.4333 admits {0}; the most likely component-0 sample
    # is the one nearest that mean, 0.5, which admits {0, 0.5}
    costs = torch.tensor([0.0, 0.5, 0.8, 5.0, 5.1])
    centre = gmm_cost_threshold(costs)
    assert centre == pytest.approx(1.3 / 3, abs=1e-6)
    assert (costs <= centre).tolist() == [True, False, False, False, False]
    code = gmm_cost_threshold(costs, rule="max_likelihood_sample")
    assert code == 0.5 and (costs <= code).sum() == 2


def test_gmm_closed_form_fit_and_degenerate_cases():
    # (0, 1, 2 | 10, 11, 12) from means 0 and 12, unit variances: each cluster takes its three points, so the
    # fit is the clusters' mean and population variance + reg_covar: means (1, 11), variances 2/3 + 1e-5, weights 1/2
    g = fit_gaussian_mixture_1d([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    assert g.converged and g.means.tolist() == pytest.approx([1.0, 11.0], abs=1e-9)
    assert g.variances.tolist() == pytest.approx([2 / 3 + 1e-5] * 2, abs=1e-9)
    assert g.weights.tolist() == pytest.approx([0.5, 0.5], abs=1e-9)
    assert g.predict(np.array([0.5, 11.5])).tolist() == [0, 1]
    assert gmm_cost_threshold([]) == 0.0 and gmm_cost_threshold(torch.zeros(0)) == 0.0  # the code's fallback
    assert gmm_cost_threshold([-1.7]) == -1.7  # one cost: that cost (costs may be negative)
    assert gmm_cost_threshold([float("inf"), 2.0]) == 2.0  # unmatched boxes (inf) are left out
    with pytest.raises(ValueError):
        gmm_cost_threshold([1.0, 2.0], rule="mode")


def test_gmm_equals_sklearn():
    from sklearn import mixture  # a test dependency (pyproject's test extra): the reference, not a runtime need

    rng = np.random.default_rng(0)
    for costs in (rng.normal(size=40), np.concatenate([rng.normal(-1, 0.3, 25), rng.normal(2, 0.8, 15)])):
        x = np.sort(costs).reshape(-1, 1)
        ref = mixture.GaussianMixture(2, covariance_type="diag", weights_init=[0.5, 0.5], reg_covar=1e-5,
                                      means_init=[[x.min()], [x.max()]], precisions_init=[[1.0], [1.0]]).fit(x)
        ours = fit_gaussian_mixture_1d(costs)
        assert ours.means.tolist() == pytest.approx(ref.means_[:, 0].tolist(), abs=1e-8)
        assert gmm_cost_threshold(costs) == pytest.approx(float(ref.means_[0, 0]), abs=1e-8)
        sel = ref.predict(x) == 0
        expected = x[sel][ref.score_samples(x)[sel].argmax(), 0]
        assert gmm_cost_threshold(costs, rule="max_likelihood_sample") == pytest.approx(float(expected))


def test_all_gather_without_a_process_group_is_the_tensor_itself():
    t = torch.tensor([1.0, 2.0])
    assert all_gather_1d(t) is t


# -- stages and the teacher protocol -------------------------------------------------------------------------
def test_stage_switch_at_t1_depends_on_the_iteration_only():
    assert in_stage_one(59999, stage1_iters=60000) and not in_stage_one(60000, stage1_iters=60000)
    assert not in_stage_one(0, stage1_iters=60000, shm=False)
    a = SemiDETR(options={"stage1_iters": 10})
    b = SemiDETR(options={"stage1_iters": 10})  # a fresh instance, as after --resume: no state to restore
    model = _model()
    for it, nms in ((9, 0.6), (10, None), (3, 0.6), (500, None)):
        assert a.stage_one(it) == b.stage_one(it) == (nms is not None)
        assert a.inference_nms(model, it) == b.inference_nms(model, it) == nms
    assert a.state_dict() == {}
    assert SemiDETR(options={"shm": False}).inference_nms(model, 0) is None
    assert SemiDETR(options={"stage1_iters": 10, "stage1_nms_iou": 0.5}).inference_nms(model, 0) == 0.5


def test_evaluation_uses_the_stage_of_the_last_step_even_right_after_a_resume():
    method = SemiDETR(options={"stage1_iters": 10})
    student, teacher = _model(), _model()
    method.prepare_evaluation([student, teacher], iteration=9)  # the trainer: after step 9 (stage 1)
    assert student.inference.nms_iou == teacher.inference.nms_iou == 0.6
    method.prepare_evaluation([student, teacher], iteration=10)  # after step 10 (stage 2): no NMS
    assert student.inference.nms_iou is None and teacher.inference.nms_iou is None


def test_the_trainer_prepares_each_evaluation_with_the_last_step(monkeypatch, smoke_benchmark, tmp_path):
    seen = []
    monkeypatch.setattr(SemiDETR, "prepare_evaluation",
                        lambda self, models, *, iteration: seen.append((len(models), iteration)))
    ov = detr_train_overrides("dino", "smoke")
    config = train_config("smoke", data_root=str(smoke_benchmark.root.parent), method="semi_detr", iterations=2,
                          burn_in=1, eval_every=1, threads=1, eval_images=2,
                          **{**ov, "detector_options": {**ov["detector_options"], "roi_queries": True}})
    Trainer(config, out_dir=tmp_path, progress=False).run()
    assert seen == [(1, 0), (2, 1)]  # after step 0 the student (burn-in), after step 1 the teacher and student


def test_ema_keep_rate_ramps_from_the_copy():
    # min(0.999, 1 - 1 / (t + 1)) at t = 0, 1, 9, 999: 0, 0.5, 0.9, 0.999
    assert [ramped_keep_rate(t, 0.999) for t in (0, 1, 9, 999)] == pytest.approx([0.0, 0.5, 0.9, 0.999])
    m = SemiDETR()
    assert m.ema_keep_rate(iteration=0, keep_rate=0.999) == 0.5  # after step 0: the update before step 1
    m._burn_in = 2000  # (setup) a run whose teacher is copied at the end of a 2000-iteration burn-in
    assert m.ema_keep_rate(iteration=2000, keep_rate=0.995) == 0.5
    assert m.ema_keep_rate(iteration=2008, keep_rate=0.995) == pytest.approx(0.9)
    assert SemiDETR(options={"ema_ramp": False}).ema_keep_rate(iteration=0, keep_rate=0.999) == 0.999


# -- the attention mask and the extra queries ---------------------------------------------------------------
def test_cross_view_groups_see_only_themselves():
    # [cqc 2 | cqc 2 | dn 3 | 2 matching]: 9 x 9, True = blocked
    m = cross_view_attention_mask([2, 2], [3], 2)
    cqc0, cqc1, dn, match = slice(0, 2), slice(2, 4), slice(4, 7), slice(7, 9)
    seen = lambda rows, cols: not m[rows, cols].any()  # noqa: E731
    blocked = lambda rows, cols: bool(m[rows, cols].all())  # noqa: E731
    assert seen(cqc0, cqc0) and blocked(cqc0, cqc1) and blocked(cqc0, dn) and blocked(cqc0, match)
    assert seen(cqc1, cqc1) and blocked(cqc1, cqc0) and blocked(cqc1, match)
    assert seen(dn, dn) and seen(dn, match) and blocked(dn, cqc0) and blocked(dn, cqc1)
    assert seen(match, match) and blocked(match, slice(0, 7))
    code = cross_view_attention_mask([2, 2], [3], 2, box_groups_see_matching=True)  # the official layout
    assert not code[cqc0, match].any() and code[cqc0, cqc1].all() and code[match, :7].all()
    # without box groups it is DINO's denoising mask
    from ssodlib.models.detr.denoising import group_attention_mask
    assert torch.equal(cross_view_attention_mask([], [4, 4], 3), group_attention_mask([4, 4], 3))


@pytest.mark.parametrize("family", ["dino", "deformable_detr"])
def test_extra_queries_do_not_leak_into_the_matching_queries_or_each_other(family):
    model = _model(family).eval()
    images = [torch.randint(0, 256, (3, 96, 112), dtype=torch.uint8),
              torch.randint(0, 256, (3, 80, 96), dtype=torch.uint8)]
    with torch.no_grad():
        p = detr_pass(model, images)
        contents = torch.randn(3, 32)
        refs = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]]), torch.tensor([[0.5, 0.5, 0.4, 0.4]])]
        bq = box_queries(contents, refs, groups=2)
        assert bq.num_queries == 4 and bq.valid.tolist() == [[True, True, True, True], [True, False, True, False]]
        cq, _, out = decode_with_extras(model, p.memory, p.queries, box_queries=bq)
        plain = model.decode_queries(p.memory, p.queries)
        assert torch.allclose(out.hidden, plain.hidden, atol=1e-5)  # the matching queries never see the extras
        bq2 = box_queries(torch.randn(3, 32), refs, groups=2)
        _, _, out2 = decode_with_extras(model, p.memory, p.queries, box_queries=bq2)
        assert torch.equal(out.hidden, out2.hidden)
        alone, _, _ = decode_with_extras(model, p.memory, None, box_queries=bq)  # isolated: the same without them
        assert torch.allclose(alone.hidden, cq.hidden, atol=1e-5)
        assert torch.allclose(cq.hidden[:, :, :2], cq.hidden[:, :, 2:], atol=1e-5)  # identical groups, same outputs


def test_roi_query_head_levels_and_shapes():
    head = RoIQueryHead(d_model=16, with_pos=True)
    # sqrt(wh) / 56: 8 -> level 0, 112 -> log2(2) = 1, 224 -> 2, 1000 -> clamp 2 of 3 levels
    boxes = torch.tensor([[0.0, 0, 8, 8], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 1000, 1000]])
    assert head.levels(boxes, 3).tolist() == [0, 1, 2, 2]
    srcs = [torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)]
    boxes = [torch.tensor([[4.0, 4, 40, 40]]), torch.tensor([[0.0, 0, 100, 60], [10, 10, 20, 20]])]
    out = head(srcs, boxes, (128, 128))
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    assert head.position(torch.rand(2, 5, 4)).shape == (2, 5, 16)
    assert RoIQueryHead(d_model=16, with_pos=False).pos is None


def test_boxes_to_view_keeps_identity_and_flags_boxes_that_leave():
    flip = torch.tensor([[-1.0, 0, 100], [0, 1, 0], [0, 0, 1]])
    mapped, keep = boxes_to_view(torch.tensor([[10.0, 0, 30, 10], [10, 0, 30, 10]]), flip, (50, 100))
    assert mapped[0].tolist() == [70.0, 0.0, 90.0, 10.0] and keep.tolist() == [True, True]
    shift = torch.tensor([[1.0, 0, 95], [0, 1, 0], [0, 0, 1]])
    _, keep = boxes_to_view(torch.tensor([[10.0, 0, 30, 10]]), shift, (50, 100))
    assert keep.tolist() == [False]  # moved out of the 100 px wide view


# -- the method on smoke models ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(smoke_benchmark):
    config = _config("dino", data_root=str(smoke_benchmark.root.parent))
    return (config, *first_batch(config))


def _step(smoke, options=None, *, family="dino", iteration=5, unsup_weight=4.0):
    config, labeled, unlabeled, batch = smoke
    method = METHODS["semi_detr"](options=options)
    method.setup(labeled=labeled, unlabeled=unlabeled, run=run_info(config), device=torch.device("cpu"))
    torch.manual_seed(0)
    student = build_detector(_config(family), labeled.num_classes).train()
    teacher = copy.deepcopy(student).eval()
    teacher.requires_grad_(False)
    ctx = StepContext(teacher=teacher, iteration=iteration, burn_in=False, unsup_weight=unsup_weight,
                      stats=PseudoLabelStats(num_classes=labeled.num_classes))
    losses = method.losses(student, ctx, batch)
    return method, student, teacher, ctx, losses


def _recorder(monkeypatch, name):
    calls = []
    original = getattr(sd, name)

    def record(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(sd, name, record)
    return calls


def test_options_are_checked_and_the_code_preset_names_the_differences():
    with pytest.raises(InputError, match="o2m_assigner"):
        SemiDETR(options={"o2m_assigner": "hungarian"})
    with pytest.raises(InputError, match="cqc_boxes"):
        SemiDETR(options={"cqc_boxes": "all"})
    with pytest.raises(InputError, match="tau_s"):
        SemiDETR(options={"tau_s": 1.5})
    code = SemiDETROptions.code()
    assert (code.cqc_variant, code.gmm_threshold, code.cqc_groups, code.cqc_weight) == ("code", "max_likelihood_sample",
                                                                                          5, 10.0)
    assert SemiDETR.required_detector_options == {"roi_queries": True}


def test_a_detector_without_the_cross_view_head_is_a_clear_error(smoke):
    config, labeled, _, batch = smoke
    ov = detr_train_overrides("dino", "smoke")
    student = build_detector(train_config("smoke", **ov), labeled.num_classes)
    ctx = StepContext(teacher=copy.deepcopy(student), iteration=0, burn_in=False, unsup_weight=1.0,
                      stats=PseudoLabelStats(num_classes=labeled.num_classes))
    with pytest.raises(InputError, match="roi_queries=true"):
        SemiDETR().losses(student, ctx, batch)
    assert SemiDETR(options={"cqc": False}).losses(student, ctx, batch)  # without CQC it needs none


def test_o2m_options_reach_the_assigner_in_stage_one_only(smoke, monkeypatch):
    calls = _recorder(monkeypatch, "one_to_many_assign")
    gammas = _recorder(monkeypatch, "task_aligned_focal_loss")
    opts = {"stage1_iters": 6, "o2m_topk": 7, "o2m_alpha": 0.5, "o2m_beta": 4.0, "tafl_gamma": 1.5}
    _step(smoke, opts, iteration=5)
    assert calls and all(c == {"topk": 7, "alpha": 0.5, "beta": 4.0} for c in calls)
    assert gammas and all(g == {"gamma": 1.5} for g in gammas)
    calls.clear()
    _, _, _, _, losses = _step(smoke, opts, iteration=6)  # T1: one-to-one, no assigner call
    assert not calls and "loss_cls_unsup" in losses and "loss_cls_dn_unsup" in losses


def test_the_stage_sets_inference_nms_on_student_and_teacher(smoke):
    _, student, teacher, _, _ = _step(smoke, {"stage1_iters": 6}, iteration=5)
    assert student.inference.nms_iou == teacher.inference.nms_iou == 0.6
    _, student, teacher, _, _ = _step(smoke, {"stage1_iters": 6}, iteration=6)
    assert student.inference.nms_iou is None and teacher.inference.nms_iou is None


def test_pseudo_label_settings_and_tau_s_reach_their_functions(smoke, monkeypatch):
    teacher_calls = _recorder(monkeypatch, "detr_teacher_pass")
    filters = _recorder(monkeypatch, "mean_std_filter")
    opts = {"pseudo_nms_iou": 0.55, "pseudo_score_floor": 0.02, "pseudo_max_dets": 50, "stage1_iters": 6}
    for it in (5, 6):  # NMS on the pseudo labels in both stages
        _step(smoke, opts, iteration=it)
    assert teacher_calls == [{"nms_iou": 0.55, "score_thresh": 0.02, "max_dets": 50}] * 2
    assert len(filters) == 2 * len(smoke[3].weak)
    # tau_s on the mean + std set: fake detections (scores descending) of one unlabeled image
    scores = torch.tensor([0.9, 0.5, 0.3, 0.05, 0.04, 0.03, 0.02, 0.01])
    boxes = torch.tensor([[1.0, 1, 20, 20]]).repeat(8, 1)
    det = Detections(boxes, scores, torch.zeros(8, dtype=torch.long), torch.zeros(8, 4))
    fake = type("TP", (), {"detections": [det]})()
    batch = Batch(strong=[torch.zeros(3, 64, 64)], teacher_to_student=[torch.eye(3)])
    # mean 0.23, std 0.3138 -> 0.5438: the mean + std set is {0.9}; with tau_s 0.95 the main set is empty
    (c,) = SemiDETR(options={"tau_s": 0.95}).candidates(fake, batch)
    assert c.mean_std.tolist() == [True] + [False] * 7 and not c.main.any()
    (c,) = SemiDETR(options={"tau_s": 0.4}).candidates(fake, batch)
    assert c.main.tolist() == [True] + [False] * 7


def test_mining_rule_and_union_reach_the_gmm(smoke, monkeypatch):
    rules = _recorder(monkeypatch, "gmm_cost_threshold")
    method, _, _, ctx, _ = _step(smoke, {"gmm_threshold": "max_likelihood_sample", "tau_s": 0.05})
    assert rules == [{"rule": "max_likelihood_sample"}]
    summary = ctx.stats.summary()
    assert math.isfinite(summary["pl_gmm_threshold_per_image"]) and "pl_cqc_tp_per_image" in summary
    rules.clear()
    _step(smoke, {"cqc_boxes": "mean_std"})  # CQC without CPM (Table 4 ID 3): no mixture
    assert rules == []


def test_consistency_variants_weights_and_stage(smoke, monkeypatch):
    cos, mse = _recorder(monkeypatch, "cqc_cosine_loss"), _recorder(monkeypatch, "cqc_mse_loss")
    *_, paper = _step(smoke, {"tau_s": 0.05, "cqc_weight": 2.0})
    assert len(cos) == 1 and not mse and "loss_cqc" in paper and not any(k.startswith("loss_cqc_") for k in paper)
    *_, unit = _step(smoke, {"tau_s": 0.05})
    assert float(paper["loss_cqc"].detach()) == pytest.approx(2.0 * float(unit["loss_cqc"].detach()), rel=1e-5)
    *_, code = _step(smoke, {**sd.CODE_OPTIONS, "tau_s": 0.05, "stage1_iters": 10}, unsup_weight=4.0)
    assert len(mse) == 1 and "loss_cqc_unsup" in code and "loss_cqc" not in code
    cos.clear()
    mse.clear()
    *_, later = _step(smoke, {**sd.CODE_OPTIONS, "tau_s": 0.05, "stage1_iters": 3})  # the code's CQC: stage 1 only
    assert not mse and float(later["loss_cqc_unsup"].detach()) == 0.0
    *_, off = _step(smoke, {"cqc": False})
    assert not any("cqc" in k for k in off)


def test_gradients_reach_the_student_and_its_head_never_the_teacher(smoke):
    _, student, teacher, _, losses = _step(smoke, {"tau_s": 0.05})
    sum(losses.values()).backward()
    head = student.roi_query_head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_denoising_on_pseudo_boxes_is_off_in_stage_one_unless_asked(smoke):
    *_, stage1 = _step(smoke, {"stage1_iters": 10, "tau_s": 0.05})
    assert "loss_cls_dn" in stage1 and not any("_dn" in k and k.endswith("_unsup") for k in stage1)
    *_, with_dn = _step(smoke, {"stage1_iters": 10, "tau_s": 0.05, "dn_on_pseudo_in_stage1": True})
    assert "loss_cls_dn_unsup" in with_dn


@pytest.mark.parametrize("options", [{"o2m_assigner": "max_iou"}, {"o2m_assigner": "atss"}, {"o2m_assigner": "simota"},
                                     {"cqc_boxes": "fixed"}, {"cqc_boxes": "topk"}, {"shm": False, "cqc": False}])
def test_every_table_switch_gives_finite_losses(smoke, options):
    *_, losses = _step(smoke, {"tau_s": 0.05, **options})
    assert all(math.isfinite(float(v.detach())) for v in losses.values())


def test_deformable_detr_step_has_no_denoising_and_point_references(smoke):
    *_, losses = _step(smoke, {"tau_s": 0.05}, family="deformable_detr")
    assert "loss_cqc" in losses and not any("_dn" in k for k in losses)
    assert all(math.isfinite(float(v.detach())) for v in losses.values())


# -- short training runs --------------------------------------------------------------------------------------------
def _train_config(smoke_benchmark, family="dino", **overrides):
    return _config(family, data_root=str(smoke_benchmark.root.parent), iterations=4, burn_in=0, eval_every=4,
                   log_every=1, checkpoint_every=100, threads=1,
                   method_options={"stage1_iters": 2, "tau_s": 0.05}, **overrides)


def test_smoke_training_switches_stage_and_survives_a_resume(smoke_benchmark, tmp_path):
    config = _train_config(smoke_benchmark)
    whole = Trainer(config, out_dir=tmp_path / "whole", progress=False)
    final = whole.run()
    records = [r for r in read_metrics(tmp_path / "whole") if r["kind"] == "train"]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in records)
    assert all("loss_cqc" in r and "pl_mean_std_boxes_per_image" in r for r in records)
    assert "loss_cls_dn_unsup" not in records[1] and "loss_cls_dn_unsup" in records[2]  # stage 2 from iteration 2
    assert whole.state.student.inference.nms_iou is None and "student" in final and "teacher" in final
    # stopped after 1 step (stage 1) and resumed by a new trainer and method: the same run, stage 2 from 2
    Trainer(config, out_dir=tmp_path / "split", progress=False).run(stop_at=1)
    # a checkpoint loaded for `ssod eval` and the report's figures infers as the run did at that step:
    # NMS after step 0 (stage 1), none after step 3 (stage 2)
    stage_one, _, _ = load_run_detector(tmp_path / "split" / "checkpoint.pt", model="student")
    stage_two, _, _ = load_run_detector(tmp_path / "whole" / "checkpoint.pt", model="student")
    assert stage_one.inference.nms_iou == SemiDETROptions().stage1_nms_iou and stage_two.inference.nms_iou is None
    resumed = Trainer(config, out_dir=tmp_path / "split", resume=True, progress=False)
    again = resumed.run()
    assert again["student"]["ap"] == final["student"]["ap"]
    split = [r for r in read_metrics(tmp_path / "split") if r["kind"] == "train"]
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in records], rel=1e-5)


def test_smoke_training_on_deformable_detr(smoke_benchmark, tmp_path):
    config = _train_config(smoke_benchmark, "deformable_detr")
    Trainer(config, out_dir=tmp_path, progress=False).run()
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert len(records) == 4 and all(math.isfinite(r["loss"]) and "loss_cqc" in r for r in records)


def test_the_trainer_refuses_a_faster_rcnn_run(smoke_benchmark, tmp_path):
    config = train_config("smoke", method="semi_detr", data_root=str(smoke_benchmark.root.parent))
    with pytest.raises(InputError, match="runs on the 'dino' or 'deformable_detr' detector family"):
        Trainer(config, out_dir=tmp_path, progress=False)
    assert dataclasses.is_dataclass(SemiDETROptions())


# -- the declarations -----------------------------------------------------------------------------------
def test_the_semi_detr_declaration_plans_at_every_scale(monkeypatch):
    from ssodlib.experiments.plan import plan, plan_items

    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    runs = {scale: plan("semi_detr", "all", scale) for scale in ("smoke", "mini", "paper")}
    mini = runs["mini"]
    # mechanics only: supervised DINO at 5 and 10 %, Semi-DETR at both, Table 4's other rows at 10 %; fold 1, seed 0
    assert sorted(s.config.method for s in mini) == ["semi_detr"] * 5 + ["supervised"] * 2
    assert {(s.fold, s.seed) for s in mini} == {(1, 0)} and {s.config.detector for s in mini} == {"dino"}
    assert all(s.burn_in_from and s.config.method_options["stage1_iters"] == 3500 for s in mini
               if s.config.method == "semi_detr")
    assert all(s.config.detector_options["roi_queries"] for s in mini)  # a snapshot is shared by equal detectors
    assert len(runs["smoke"]) <= 6  # the notebook regression trains every smoke run
    paper = runs["paper"]
    assert {s.config.detector for s in paper} == {"dino", "deformable_detr"}
    assert {s.config.dataset for s in paper} == {"coco", "coco-additional", "voc"}
    assert all(s.config.burn_in == 0 and not s.burn_in_from and s.config.ema_keep_rate == 0.999 for s in paper)
    for s in paper:  # cross-view queries need the detector's head; supervised runs never carry it (DDP)
        cqc = s.config.method == "semi_detr" and s.config.method_options.get("cqc", True)
        assert bool(s.config.detector_options.get("roi_queries")) == cqc, s.describe()
    items = plan_items("semi_detr", "all", "paper")  # per item (a run shared by items is in each)
    assert sorted(s.config.method_options.get("stage1_iters", 60000) for s in items["table7"]) == \
        [40000, 60000, 80000, 100000, 120000]
    assert {s.config.method_options.get("tau_s", 0.4) for s in items["table8"]} == {0.2, 0.3, 0.4, 0.5, 0.6}
    assert {s.config.method_options.get("o2m_assigner", "tood") for s in items["table6"]} == \
        {"tood", "max_iou", "atss", "simota"}
    assert all(s.config.iterations == 60000 for s in items["table6"])  # "all models are trained for 60k iterations"
    # ID 4 of Table 4 is Table 5's GMM row, Table 7's 60k and Table 8's 0.4: one run
    def keys(item, row, col=None):
        return {s.key for s in items[item] if s.row == row and col in (None, s.column)}

    assert keys("table4", "ID 4: SHM on, CQC on, CPM on", "mAP") == keys("table5", "Cost-based GMM") == \
        keys("table7", "mAP", "60k") == keys("table8", "mAP", "0.4")


def test_every_published_counterpart_of_the_declaration_resolves(monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    checked = published_counterparts("semi_detr")
    # Tables 1, 2, 3, 4, 5, 6, 7, 8, then table1_mini (2 rows x 2 columns) and table4_mini (4 rows x 3 columns)
    assert checked == 6 * 3 + 6 * 2 + 4 + 4 * 3 + 4 + 4 * 3 + 5 + 5 + 2 * 2 + 4 * 3


def test_the_one_to_many_interface_is_filled_in_by_the_methods_assigner():
    from torchvision.ops import box_iou

    from ssodlib.models.detr.boxes import cxcywh_to_xyxy
    from ssodlib.models.detr.matcher import OneToManyAssigner

    torch.manual_seed(0)
    logits, boxes = torch.randn(12, 3), torch.rand(12, 4) * 0.4 + 0.2
    gt_labels, gt_boxes = torch.tensor([0, 2]), torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.6, 0.5, 0.2, 0.4]])
    method = SemiDETR(options={"o2m_topk": 4})
    assigner = method.assigner()
    assert isinstance(assigner, OneToManyAssigner)
    got = assigner(logits, boxes, gt_labels, gt_boxes)
    # the same pairs as Eq. 2-3 on the scores of each box's class and the IoUs
    ious = box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
    assigned, t_hat = one_to_many_assign(logits.sigmoid()[:, gt_labels], ious, topk=4, alpha=1.0, beta=6.0)
    pos = torch.where(assigned >= 0)[0]
    assert len(got) == len(pos) > 2 and torch.equal(got.queries, pos) and torch.equal(got.targets, assigned[pos])
    torch.testing.assert_close(got.quality, t_hat[pos])
    assert set(got.targets.tolist()) == {0, 1} and len(set(got.queries.tolist())) == len(got)  # one-to-many, a query once
