"""LabelMatch: golden tests of the maths on hand-made tensors, the method on a tiny detector, and
short training runs (diagnostics, exact resume)."""

import math
from dataclasses import replace

import pytest
import torch
from torchvision.ops import batched_nms

from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.engine.checkpoint import load_checkpoint
from ssodlib.config import train_config
from ssodlib.engine.run_folder import read_metrics
from ssodlib.engine.trainer import Trainer, run_info
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError
from ssodlib.methods import METHODS, StepContext, get_method
from ssodlib.methods.labelmatch import (
    act_thresholds,
    act_update_due,
    expected_counts,
    fixed_thresholds,
    group_mean,
    mining_mask,
    nms_cluster_statistics,
    self_assignment_loss,
    split_pseudo_labels,
)
from ssodlib.models.build import build_detector
from ssodlib.models.detectors.faster_rcnn import DetectorConfig, FasterRCNN
from ssodlib.models.nms import nms_clusters
from tiny_setup import tiny_batch, tiny_detector


# -- ACT (Eq. 5 and 6) ------------------------------------------------------------------------------
def test_expected_counts_follow_the_labeled_prior_and_boxes_per_image():
    # 3 labeled images with 6, 3 and 0 boxes of classes 0, 1, 2; the empty class counts as 1 box:
    # boxes per image 10/3, ratios 0.6 / 0.3 / 0.1; on 6 unlabeled images 20 boxes = 12 / 6 / 2,
    # i.e. n_c * N_u / N_l = 6*6/3, 3*6/3, 1*6/3
    e = expected_counts([6, 3, 0], num_labeled_images=3, num_images=6)
    torch.testing.assert_close(e, torch.tensor([12.0, 6.0, 2.0], dtype=torch.float64))


def test_act_thresholds_pick_the_expected_ranks():
    # class 0: 15 scores 0.99, 0.94, ..., 0.29 (given shuffled); E = 12, alpha = 0.2:
    #   reliable = sorted[int(12 * 0.2) = 2] = 0.89, uncertain = sorted[12] = 0.39
    # class 1: scores 0.6, 0.3, 0.02 (fewer than E = 6): reliable = sorted[int(1.2) = 1] = 0.3,
    #   uncertain = sorted[min(6, 2)] = 0.02, floored to 0.05
    # class 2: no detection: both thresholds are the floor 0.05
    shuffle = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    s0 = torch.tensor([0.99 - 0.05 * i for i in range(15)])[shuffle]
    scores = [s0, torch.tensor([0.02, 0.6, 0.3]), torch.zeros(0)]
    reliable, uncertain = act_thresholds(scores, expected=torch.tensor([12.0, 6.0, 2.0], dtype=torch.float64),
                                         alpha=0.2, min_threshold=0.05)
    torch.testing.assert_close(reliable, torch.tensor([0.89, 0.3, 0.05]))
    torch.testing.assert_close(uncertain, torch.tensor([0.39, 0.05, 0.05]))
    # alpha = 0: the reliable threshold is the top score of each class (0.99, 0.6)
    reliable0, _ = act_thresholds(scores, expected=torch.tensor([12.0, 6.0, 2.0], dtype=torch.float64), alpha=0.0)
    torch.testing.assert_close(reliable0, torch.tensor([0.99, 0.6, 0.05]))


def test_split_into_reliable_and_uncertain_pseudo_labels():
    # thresholds of the test above: reliable (0.89, 0.3, 0.05), uncertain (0.39, 0.05, 0.05)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    scores = torch.tensor([0.95, 0.5, 0.3, 0.1, 0.06, 0.2])
    rel, unc = split_pseudo_labels(labels, scores, reliable_thresholds=torch.tensor([0.89, 0.3, 0.05]),
                                   uncertain_thresholds=torch.tensor([0.39, 0.05, 0.05]))
    assert rel.tolist() == [True, False, True, False, True, False]  # 0.95>=0.89, 0.3>=0.3, 0.06>=0.05
    assert unc.tolist() == [False, True, False, True, False, False]  # 0.39<=0.5<0.89, 0.05<=0.1<0.3; 0.2<0.39


def test_without_act_a_fixed_threshold_makes_every_pseudo_label_reliable():
    rel_t, unc_t = fixed_thresholds(3, reliable=0.9)
    assert rel_t.tolist() == unc_t.tolist() == [pytest.approx(0.9)] * 3
    rel, unc = split_pseudo_labels(torch.tensor([0, 1, 2]), torch.tensor([0.95, 0.85, 0.9]),
                                   reliable_thresholds=rel_t, uncertain_thresholds=unc_t)
    assert rel.tolist() == [True, False, True] and not unc.any()
    for thr in (0.7, 0.8, 0.9):  # the paper's single-threshold baselines; no setup, no teacher needed
        method = get_method("labelmatch")(options={"act": False, "fixed_threshold": thr})
        r, u = method.thresholds(None, iteration=123, num_classes=4)
        assert torch.equal(r, torch.full((4,), thr)) and torch.equal(u, r)
    r, u = get_method("labelmatch")(options={"act": False, "fixed_uncertain_threshold": 0.5}).thresholds(
        None, iteration=0, num_classes=2)
    assert r.tolist() == [pytest.approx(0.9)] * 2 and u.tolist() == [0.5, 0.5]


def test_act_schedule():
    # burn-in 2, K = 3: estimated before first use, then at 5, 8, ...
    due = lambda it, last, k=3: act_update_due(iteration=it, burn_in=2, interval=k, last_update=last)
    assert due(2, None) and due(7, None)  # first use (or a resumed run without saved thresholds)
    assert [due(it, 2) for it in (3, 4, 5)] == [False, False, True]
    assert not due(5, 5) and due(8, 5)
    assert not due(5, 2, None) and not due(1002, 2, None)  # K = never: only the initial estimate


# -- Eq. 7 ----------------------------------------------------------------------------------------------
def test_self_assignment_loss_golden():
    ln3 = math.log(3.0)
    teacher = torch.tensor([[0.0, 0.5 * ln3], [0.0, 0.5 * ln3]])  # / T_t = 0.5 -> [0, ln 3]: q = (1/4, 3/4)
    student = torch.tensor([[0.0, 0.0], [ln3, 0.0]])  # p = (1/2, 1/2) and (3/4, 1/4)
    # row 0: -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2 = 0.693147
    # row 1: -(1/4 ln 3/4 + 3/4 ln 1/4) = 0.071921 + 1.039721 = 1.111641
    loss = self_assignment_loss(student, teacher, normalizer=2.0)
    assert loss.item() == pytest.approx((0.693147 + 1.111641) / 2, abs=1e-6)
    weighted = self_assignment_loss(student, teacher, normalizer=4.0, weight=torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(0.693147 / 4, abs=1e-6)  # mined RoIs (weight 0) drop out
    # student temperature 2: logits (ln 9, 0) / 2 = (ln 3, 0), the row-1 case again
    hot = self_assignment_loss(torch.tensor([[2 * ln3, 0.0]]), teacher[:1], normalizer=1.0, student_temperature=2.0)
    assert hot.item() == pytest.approx(1.111641, abs=1e-6)
    # teacher temperature 1: q = softmax(0, ln 3 / 2); p = (1/2, 1/2), so the loss is ln 2 for any q
    assert self_assignment_loss(student[:1], teacher[:1], normalizer=1.0, teacher_temperature=1.0).item() == \
        pytest.approx(math.log(2.0), abs=1e-6)


def test_self_assignment_loss_sends_gradient_to_the_student_only():
    student = torch.zeros(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    self_assignment_loss(student, teacher, normalizer=3.0).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


# -- reliable pseudo-label mining -------------------------------------------------------------------------
def test_mining_rule_thresholds():
    # T_score = T_iou = 0.8, both inclusive; NaN (no evidence) never mines
    ms = torch.tensor([0.8, 0.79, 0.9, float("nan")])
    mi = torch.tensor([0.8, 0.9, 0.79, 0.95])
    assert mining_mask(ms, mi).tolist() == [True, False, False, False]
    assert mining_mask(ms, mi, score_thresh=0.7, iou_thresh=0.7).tolist() == [True, True, True, False]
    assert group_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 2]), 3).tolist()[::2] == [1.5, 3.0]


def test_nms_cluster_statistics_on_real_nms_output():
    # kept A (score 0.9) suppresses A1 (IoU 90/100 = 0.9, score 0.875) and A2 (IoU 0.9, score 0.75):
    #   mean score 0.8125, mean IoU 0.9 -> mined
    # kept B (0.85) suppresses B1 (IoU 60/100 = 0.6, score 0.84): mean score 0.84, mean IoU 0.6 -> not mined
    # kept C (0.95) suppresses nothing -> NaN, not mined; D (class 1) overlaps A but is another class
    cand = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [1, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 26],
                         [40, 40, 50, 50], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.875, 0.75, 0.85, 0.84, 0.95, 0.6])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    keep = batched_nms(cand, scores, labels, 0.5)
    cluster = nms_clusters(cand, labels, keep, 0.5)
    ms, mi = nms_cluster_statistics(boxes=cand[keep], scores=scores[keep], candidate_boxes=cand,
                                    candidate_scores=scores, cluster=cluster)
    by_box = {tuple(cand[k].tolist()) + (int(labels[k]),): (s, i)
              for k, s, i in zip(keep.tolist(), ms.tolist(), mi.tolist())}
    assert by_box[(0.0, 0, 10, 10, 0)] == (pytest.approx(0.8125), pytest.approx(0.9))
    assert by_box[(20.0, 20, 30, 30, 0)] == (pytest.approx(0.84), pytest.approx(0.6))
    assert all(math.isnan(v) for v in by_box[(40.0, 40, 50, 50, 0)] + by_box[(0.0, 0, 10, 10, 1)])
    mined = mining_mask(ms, mi)
    assert [tuple(cand[k].tolist()) for k in keep[mined].tolist()] == [(0.0, 0, 10, 10)]


# -- the method on a tiny detector -----------------------------------------------------------------------
def _losses(options: dict, *, iteration: int = 5, burn_in: bool = False):
    student, teacher = tiny_detector(), tiny_detector().eval()
    method = get_method("labelmatch")(options=options)
    stats = PseudoLabelStats(num_classes=3)
    ctx = StepContext(teacher=teacher, iteration=iteration, burn_in=burn_in, unsup_weight=2.0, stats=stats)
    torch.manual_seed(1)
    return method.losses(student, ctx, tiny_batch(mirrored=True)), stats


def _two_unlabeled(batch: Batch) -> Batch:
    """``batch`` with its unlabeled image twice (the labeled part unchanged)."""
    twice = {f: getattr(batch, f) * 2 for f in ("weak", "strong", "teacher_to_student", "gt_weak_boxes",
                                                "gt_weak_labels", "gt_strong_boxes", "gt_strong_labels")}
    return replace(batch, **twice)


# an untrained teacher scores ~1/4 everywhere: thresholds 0.9 / 0 make every detection uncertain
ALL_UNCERTAIN = {"act": False, "fixed_threshold": 0.9, "fixed_uncertain_threshold": 0.0}


def test_registry_and_option_errors():
    assert METHODS["labelmatch"].uses_teacher and METHODS["labelmatch"].uses_unlabeled
    with pytest.raises(InputError, match="assignment"):
        get_method("labelmatch")(options={"assignment": "hungarian"})
    with pytest.raises(InputError, match="mining_source"):
        get_method("labelmatch")(options={"mining_source": "x"})
    with pytest.raises(InputError, match="act_interval"):
        get_method("labelmatch")(options={"act_interval": 0})


def test_burn_in_is_supervised():
    out, stats = _losses(ALL_UNCERTAIN, burn_in=True)
    assert set(out) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box"} and stats.images == 0


def test_uncertain_boxes_under_each_assignment():
    keys = {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box"}
    keys |= {f"{k}_unsup" for k in keys} | {"loss_soft_unsup"}
    self_out, stats = _losses({**ALL_UNCERTAIN, "mining": False})
    assert set(self_out) == keys
    assert stats.images == 1 and stats.counts["uncertain"] > 0 and stats.counts["reliable"] == 0
    assert self_out["loss_soft_unsup"].item() > 0  # Eq. 7 on the RoIs assigned to uncertain boxes
    assert self_out["loss_box_unsup"].item() == 0.0  # nothing reliable: no box regression
    assert self_out["loss_rpn_reg_unsup"].item() > 0  # the RPN learns from uncertain boxes too
    sum(self_out.values()).backward()
    iou_out, _ = _losses({**ALL_UNCERTAIN, "mining": False, "assignment": "iou"})
    ign_out, _ = _losses({**ALL_UNCERTAIN, "mining": False, "assignment": "ignore"})
    assert iou_out["loss_soft_unsup"].item() == ign_out["loss_soft_unsup"].item() == 0.0
    # same sampled RoIs; "iou" adds the uncertain RoIs' hard classes to the classification loss
    assert iou_out["loss_cls_unsup"].item() != ign_out["loss_cls_unsup"].item()
    torch.testing.assert_close(iou_out["loss_cls"], ign_out["loss_cls"])


def test_mining_turns_uncertain_rois_into_reliable_ones(monkeypatch):
    # mining thresholds 0 / 0: every uncertain box the student assigns proposals to is mined (official-code
    # evidence) and gets box regression instead of the soft loss
    out, stats = _losses({**ALL_UNCERTAIN, "mining_source": "proposals", "mining_score": 0.0, "mining_iou": 0.0})
    assert stats.counts["mined"] > 0 and out["loss_box_unsup"].item() > 0 and out["loss_soft_unsup"].item() == 0.0
    # the paper's evidence (NMS clusters; the untrained teacher's boxes rarely overlap, so the statistics are
    # stubbed to score 0.9 / IoU 0.85 for every box): mined before sampling, they become reliable pseudo labels
    import ssodlib.methods.labelmatch as lm

    monkeypatch.setattr(lm, "nms_cluster_statistics",
                        lambda *, boxes, **_: (torch.full((len(boxes),), 0.9), torch.full((len(boxes),), 0.85)))
    out, stats = _losses(ALL_UNCERTAIN)
    assert stats.counts["mined"] > 0 and stats.counts["reliable"] == stats.counts["mined"]
    assert out["loss_box_unsup"].item() > 0


# -- ACT on unlabeled images through the setup seam ------------------------------------------------------------
@pytest.fixture
def smoke_data(smoke_benchmark):
    labeled = CocoDetection(ann_file=smoke_benchmark.fold(fold=1, percent=10.0), image_dir=smoke_benchmark.image_dir)
    unlabeled = CocoDetection(ann_file=smoke_benchmark.fold(fold=1, percent=10.0, unlabeled=True),
                              image_dir=smoke_benchmark.image_dir, categories=labeled.label_to_cat_id)
    return labeled, unlabeled


def _smoke_teacher(num_classes: int) -> FasterRCNN:
    torch.manual_seed(0)
    cfg = train_config("smoke")
    return build_detector(cfg, num_classes).eval()


@pytest.mark.parametrize("interval", [None, 1000])
def test_act_is_estimated_at_first_use_and_never_again_when_k_is_never(smoke_data, interval):
    labeled, unlabeled = smoke_data
    config = train_config("smoke", burn_in=2)
    method = get_method("labelmatch")(options={"act_interval": interval, "act_images": 6})
    method.setup(labeled=labeled, unlabeled=unlabeled, run=run_info(config), device=torch.device("cpu"))
    teacher = _smoke_teacher(labeled.num_classes)
    first = [t.clone() for t in method.thresholds(teacher, iteration=2, num_classes=labeled.num_classes)]
    assert method.updated_at == 2 and first[0].shape == (labeled.num_classes,) and (first[0] >= first[1]).all()
    with torch.no_grad():  # the teacher moves on
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    later = method.thresholds(teacher, iteration=3, num_classes=labeled.num_classes)
    assert method.updated_at == 2 and all(torch.equal(a, b) for a, b in zip(first, later))
    method.thresholds(teacher, iteration=1002, num_classes=labeled.num_classes)
    assert method.updated_at == (2 if interval is None else 1002)
    state = method.state_dict()
    restored = get_method("labelmatch")(options={"act_interval": interval})
    restored.load_state_dict(state)
    assert restored.updated_at == method.updated_at and torch.equal(restored.reliable_thresholds,
                                                                    method.reliable_thresholds)


def test_act_without_setup_is_a_clear_error():
    method = get_method("labelmatch")()
    with pytest.raises(RuntimeError, match="setup"):
        method.thresholds(tiny_detector().eval(), iteration=0, num_classes=3)


# -- training runs ---------------------------------------------------------------------------------------------
@pytest.fixture
def lm_config(smoke_benchmark):
    # ACT every 2 iterations after a 2-iteration burn-in (updates at 2 and 4) on 8 unlabeled images
    return train_config("smoke", method="labelmatch", data_root=str(smoke_benchmark.root.parent), iterations=6,
                        burn_in=2, eval_every=100, log_every=1, checkpoint_every=2, threads=1,
                        method_options={"act_interval": 2, "act_images": 8})


def test_smoke_training_logs_pseudo_label_diagnostics(lm_config, tmp_path):
    Trainer(lm_config, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > lm_config.burn_in]
    assert len(after) == 4
    for r in after:
        assert r["pl_images"] == lm_config.unlabeled_per_batch and math.isfinite(r["loss"])
        assert {"pl_reliable_per_image", "pl_uncertain_per_image", "pl_mined_per_image"} <= set(r)
        assert r["pl_per_image"] == pytest.approx(r["pl_reliable_per_image"] + r["pl_uncertain_per_image"])
        assert "loss_soft_unsup" in r and len(r["pl_per_class"]) == 12
    state = load_checkpoint(tmp_path / "checkpoint.pt")["method"]
    assert state["updated_at"] == 4 and state["reliable_thresholds"].shape == (12,)
    assert (state["reliable_thresholds"] >= state["uncertain_thresholds"]).all()


def test_killed_after_a_threshold_update_and_resumed_ends_with_the_same_weights(lm_config, tmp_path):
    Trainer(lm_config, out_dir=tmp_path / "full", progress=False).run()
    Trainer(lm_config, out_dir=tmp_path / "cut", progress=False).run(stop_at=3)
    cut3 = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert cut3["iteration"] == 3 and cut3["method"]["updated_at"] == 2  # thresholds of iteration 2 are saved
    Trainer(lm_config, out_dir=tmp_path / "cut", resume=True, progress=False).run()
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert full["iteration"] == cut["iteration"] == 6
    for part in ("student", "teacher"):
        assert full[part].keys() == cut[part].keys()
        for k in full[part]:
            assert torch.equal(full[part][k], cut[part][k]), (part, k)
    for k in ("reliable_thresholds", "uncertain_thresholds"):
        assert torch.equal(full["method"][k], cut["method"][k])
    strip = lambda recs: [{k: v for k, v in r.items() if k != "sec_per_iter"} for r in recs if r["kind"] == "train"]
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(tmp_path / "cut"))


# -- the official code's separate assignment (roi_sampling="separate") ------------------------------------
def test_separate_sampling_assigns_each_set_on_its_own_and_samples_reliable_positives_first():
    from ssodlib.methods.labelmatch import sample_separately

    reliable, reliable_labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([2])
    uncertain, uncertain_labels = torch.tensor([[20.0, 20, 30, 30], [0, 0, 10, 9]]), torch.tensor([0, 1])
    proposals = torch.tensor([[0.0, 0, 10, 10.5],   # IoU 0.95 with the reliable box, 0.86 with uncertain 1
                              [21.0, 21, 30, 30],   # IoU 0.81 with uncertain 0
                              [50.0, 50, 60, 60],   # background for both
                              [0.0, 0, 30, 30]])    # IoU < 0.5 with every box: background
    torch.manual_seed(0)
    rois, labels, index, matched = sample_separately(proposals, reliable, reliable_labels, uncertain,
                                                     uncertain_labels, batch_size=16, positive_fraction=0.5)
    by_roi = {tuple(r.tolist()): (int(l), int(i)) for r, l, i in zip(rois, labels, index)}
    # positives: the reliable box itself and proposal 0 (reliable wins over uncertain 1); the uncertain boxes
    # themselves and proposal 1 -> targets R + u; negatives: proposals 2 and 3 (budget 16 - 5 = 11, 2 exist)
    assert by_roi[(0.0, 0.0, 10.0, 10.0)] == (3, 0) and by_roi[(0.0, 0.0, 10.0, 10.5)] == (3, 0)
    assert by_roi[(20.0, 20.0, 30.0, 30.0)] == (1, 1) and by_roi[(21.0, 21.0, 30.0, 30.0)] == (1, 1)
    assert by_roi[(0.0, 0.0, 10.0, 9.0)] == (2, 2)
    assert by_roi[(50.0, 50.0, 60.0, 60.0)] == (0, -1) and by_roi[(0.0, 0.0, 30.0, 30.0)] == (0, -1)
    assert len(rois) == 7 and torch.equal(matched[index >= 0], torch.cat([reliable, uncertain])[index[index >= 0]])


def test_separate_sampling_fills_the_positive_budget_with_reliable_rois_before_uncertain_ones():
    from ssodlib.methods.labelmatch import sample_separately

    reliable, uncertain = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[40.0, 40, 50, 50]])
    near = lambda b: b + torch.rand(6, 4) * 0.3  # six proposals around each box
    proposals = torch.cat([near(reliable), near(uncertain), torch.tensor([[80.0, 80, 90, 90]])])
    torch.manual_seed(0)
    _, labels, index, _ = sample_separately(proposals, reliable, torch.tensor([0]), uncertain, torch.tensor([1]),
                                            batch_size=16, positive_fraction=0.5)
    # budget 8 positives: all 7 reliable (6 proposals + the box), then 1 of 7 uncertain; 8 negatives wanted, 1 exists
    assert int((index == 0).sum()) == 7 and int((index == 1).sum()) == 1 and int((index == -1).sum()) == 1


def test_separate_sampling_runs_in_the_method_and_keeps_the_loss_keys(monkeypatch):
    import ssodlib.methods.labelmatch as lm

    calls = []
    real = lm.sample_separately
    monkeypatch.setattr(lm, "sample_separately", lambda *a, **k: calls.append(k) or real(*a, **k))
    joint, _ = _losses({**ALL_UNCERTAIN, "mining": False})
    assert not calls  # the default (joint) assignment does not use it
    separate, stats = _losses({**ALL_UNCERTAIN, "mining": False, "roi_sampling": "separate"})
    # the option reaches the sampler: once per unlabeled image, with the detector's RoI budget
    assert len(calls) == 1 and calls[0]["batch_size"] == tiny_detector().config.roi_batch_size
    assert set(separate) == set(joint) and separate["loss_soft_unsup"].item() > 0
    torch.testing.assert_close(separate["loss_cls"], joint["loss_cls"])  # labeled images sample as before
    with pytest.raises(InputError, match="roi_sampling"):
        get_method("labelmatch")(options={"roi_sampling": "both"})


# -- wiring: what the method passes on, pinned ---------------------------------------------------------------
def test_the_soft_loss_gets_the_image_count_normaliser_and_the_temperature_options(monkeypatch):
    import ssodlib.methods.labelmatch as lm

    seen = {}
    real = lm.self_assignment_loss

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lm, "self_assignment_loss", spy)
    # two unlabeled images and a RoI budget (256) above what they can sample (at most 50 proposals + 1
    # box each): the official avg_factor, images x budget = 512, differs from the budget alone (256),
    # from the sampled RoIs (<= 102) and from labeled + unlabeled images x budget (768)
    student, teacher = tiny_detector(), tiny_detector().eval()
    student.config = replace(student.config, roi_batch_size=256)
    method = get_method("labelmatch")(options={**ALL_UNCERTAIN, "mining": False, "teacher_temperature": 0.3,
                                               "student_temperature": 2.0})
    ctx = StepContext(teacher=teacher, iteration=5, burn_in=False, unsup_weight=2.0,
                      stats=PseudoLabelStats(num_classes=3))
    torch.manual_seed(1)
    method.losses(student, ctx, _two_unlabeled(tiny_batch(mirrored=True)))
    assert seen["normalizer"] == 2 * 256
    assert (seen["teacher_temperature"], seen["student_temperature"]) == (0.3, 2.0)
    defaults = get_method("labelmatch")().options
    assert (defaults.teacher_temperature, defaults.student_temperature) == (0.5, 1.0)  # the official tpt / tps


def test_act_scores_a_subset_of_act_images_drawn_from_the_seed_and_iteration(smoke_data, monkeypatch):
    import ssodlib.methods.labelmatch as lm

    labeled, unlabeled = smoke_data
    drawn = []
    monkeypatch.setattr(lm, "teacher_class_scores", lambda teacher, dataset, indices, *, view:
                        drawn.append(list(indices)) or [torch.rand(5) for _ in range(labeled.num_classes)])
    sized, real_counts = [], lm.expected_counts
    monkeypatch.setattr(lm, "expected_counts", lambda *a, **k: sized.append(k) or real_counts(*a, **k))
    for seed in (0, 0, 1):
        method = get_method("labelmatch")(options={"act_images": 7})
        method.setup(labeled=labeled, unlabeled=unlabeled, run=run_info(train_config("smoke", seed=seed)),
                     device=torch.device("cpu"))
        method.update_thresholds(None, iteration=4)
    assert [len(d) for d in drawn] == [7, 7, 7] and len(unlabeled) > 7
    assert drawn[0] == drawn[1] != drawn[2]  # the same subset for the same seed and iteration
    # the expected counts are those of the subset scored (7 images), not of every unlabeled image
    assert [k["num_images"] for k in sized] == [7, 7, 7]
    # act_images above the unlabeled set's size: every unlabeled image, once
    method = get_method("labelmatch")(options={"act_images": 10 * len(unlabeled)})
    method.setup(labeled=labeled, unlabeled=unlabeled, run=run_info(train_config("smoke", seed=0)),
                 device=torch.device("cpu"))
    method.update_thresholds(None, iteration=4)
    assert sorted(drawn[-1]) == list(range(len(unlabeled))) and sized[-1]["num_images"] == len(unlabeled)
    assert get_method("labelmatch")().options.act_images == 10000  # the official manual_length


def test_defaults_the_papers_rely_on(monkeypatch):
    import ssodlib.data.transforms as T
    from ssodlib.models.detectors.faster_rcnn import FasterRCNNOptions

    # Unbiased Teacher's focal loss of the RoI classifier (gamma 1.5), used when cls_loss="focal"
    assert FasterRCNNOptions().focal_gamma == 1.5
    # the strong view's colour jitter is applied with probability 0.8 (Unbiased Teacher's recipe): count
    # how often strong_view calls it with the default config (400 draws: 320 expected, sd 8)
    calls = []
    monkeypatch.setattr(T, "color_jitter", lambda image, config, g: calls.append(1) or image)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    for _ in range(400):
        T.strong_view(image, T.StrongViewConfig(), g)
    assert T.StrongViewConfig().jitter_prob == 0.8 and 290 <= len(calls) <= 350
