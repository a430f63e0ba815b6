"""Rethinking Pseudo Labels: golden tests of certainty-aware selection, Eq. 6's re-weighting and its
accumulators on hand-made tensors, the wiring of the options, the fixed teacher, and a smoke run."""

import math

import pytest
import torch

from ssodlib.config import train_config
from ssodlib.engine.ema import ema_update
from ssodlib.engine.run_folder import read_metrics
from ssodlib.engine.trainer import Trainer
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError
from ssodlib.data.transforms import WeakViewConfig
from ssodlib.methods import RunInfo, StepContext, get_method
from ssodlib.methods.rcnn_passes import TeacherPass
from ssodlib.methods import rethinking_pl as rt
from ssodlib.methods.rethinking_pl import (RethinkingPL, foreground_weights, reweighted_roi_loss, select_certain,
                                           teacher_fingerprint)
from ssodlib.models.detectors.base import Detections
from ssodlib.models.detectors.faster_rcnn import DetectorConfig, FasterRCNN, RoIOutput, RoISamples
from tiny_setup import tiny_batch, tiny_detector


def side_detector(**options) -> FasterRCNN:
    """The tiny detector of tiny_setup with the side-classification head (K = 4 bins per side)."""
    torch.manual_seed(0)
    return FasterRCNN(config=DetectorConfig(num_classes=3, backbone="tiny", fpn_channels=16, representation_size=32,
                                            anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n=(100, 50),
                                            rpn_post_nms_top_n=(50, 20), roi_batch_size=32,
                                            box_head="side_classification", side_bins=4, **options))


def three_detections() -> Detections:
    # classes 0, 1, 0 (class_probs columns: background, class 0, class 1); p = 0.9, 0.8, 0.75; v = 0.5, 0.95, 1.0
    probs = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8], [0.25, 0.75, 0.0]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]])
    labels = torch.tensor([0, 1, 0])
    quality = torch.tensor([0.5, 0.95, 1.0])
    return Detections(boxes, (probs[:, 1:].amax(1) * quality), labels, probs, quality=quality)


# -- certainty-aware selection -----------------------------------------------------------------------
def test_certainty_aware_selection_compares_p_times_v_with_the_class_threshold():
    det = three_detections()
    # p * v = 0.45, 0.76, 0.75 against tau = 0.7: the confident but badly localised first box is dropped
    boxes, labels, scores = select_certain(det, torch.tensor([0.7, 0.7]), certainty=True)
    assert labels.tolist() == [1, 0] and torch.allclose(scores, torch.tensor([0.76, 0.75]))
    assert torch.equal(boxes, det.boxes[1:])
    # class 1 at tau_1 = 0.8: 0.76 < 0.8 drops the second box too
    _, labels, _ = select_certain(det, torch.tensor([0.7, 0.8]), certainty=True)
    assert labels.tolist() == [0]
    # without certainty the scores are p = 0.9, 0.8, 0.75, all >= 0.7
    _, labels, scores = select_certain(det, torch.tensor([0.7, 0.7]), certainty=False)
    assert labels.tolist() == [0, 1, 0] and torch.allclose(scores, torch.tensor([0.9, 0.8, 0.75]))


def test_selection_uses_p_from_class_probs_whatever_side_score_made_the_scores():
    det = three_detections()
    det.scores = torch.tensor([0.0, 0.0, 0.0])  # side_score would only change these; selection reads p and v
    _, labels, _ = select_certain(det, torch.tensor([0.7, 0.7]), certainty=True)
    assert labels.tolist() == [1, 0]


def test_certainty_without_a_quality_is_a_clear_error():
    det = three_detections()
    det.quality = None
    with pytest.raises(InputError, match="box_head: side_classification"):
        select_certain(det, torch.tensor([0.7, 0.7]), certainty=True)


# -- re-weighting by alpha_m ----------------------------------------------------------------------------
def test_foreground_weights_are_alpha_of_the_class_and_one_for_background():
    # labels 0 (background), 1, 2, 1 -> 1, alpha_0 = 2, alpha_1 = 0.5, alpha_0 = 2
    w = foreground_weights(torch.tensor([0, 1, 2, 1]), torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert w.tolist() == [1.0, 2.0, 0.5, 2.0]


def _rois(logits: torch.Tensor, side_outputs: torch.Tensor) -> RoIOutput:
    return RoIOutput(logits, side_outputs, torch.zeros(len(logits), 1), [len(logits)])


def test_the_classification_loss_is_weighted_per_roi_and_still_divided_by_the_roi_count():
    student = side_detector()
    # two RoIs, zero logits over background + 3 classes: CE = ln 4 each; labels 0 (bg) and 2, weights 1 and 3:
    # (ln 4 * 1 + ln 4 * 3) / 2 RoIs = 2 ln 4 (not divided by the weights' sum 4, which would give ln 4)
    rois = _rois(torch.zeros(2, 4), torch.zeros(2, 32))
    samples = RoISamples([torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])], [torch.tensor([0, 2])],
                         [torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])], [torch.tensor([-1, 0])])
    out = reweighted_roi_loss(student, rois, samples, torch.tensor([1.0, 3.0]), regression=False)
    assert math.isclose(float(out["loss_cls"]), 2 * math.log(4), rel_tol=1e-6)
    assert float(out["loss_box"]) == 0.0


def test_unit_weights_give_the_detectors_roi_loss_and_doubled_foreground_weights_double_the_side_loss():
    student = side_detector()
    g = torch.Generator().manual_seed(0)
    rois = _rois(torch.randn(3, 4, generator=g), torch.randn(3, 32, generator=g))
    samples = RoISamples([torch.tensor([[0.0, 0, 10, 10], [4, 4, 20, 20], [8, 8, 30, 30]])], [torch.tensor([0, 1, 3])],
                         [torch.tensor([[0.0, 0, 10, 10], [5, 5, 21, 19], [9, 7, 31, 28]])],
                         [torch.tensor([-1, 0, 1])])
    plain = student.roi_loss(rois, samples)
    ones = reweighted_roi_loss(student, rois, samples, torch.ones(3))
    assert torch.allclose(ones["loss_cls"], plain["loss_cls"]) and torch.allclose(ones["loss_box"], plain["loss_box"])
    doubled = reweighted_roi_loss(student, rois, samples, torch.tensor([1.0, 2.0, 2.0]))
    # every positive weighs 2: the side loss (positives only) doubles; the background term of loss_cls does not
    assert torch.allclose(doubled["loss_box"], 2 * plain["loss_box"])
    ce = torch.nn.functional.cross_entropy(rois.class_logits, torch.tensor([0, 1, 3]), reduction="none")
    assert torch.allclose(doubled["loss_cls"], (ce[0] + 2 * ce[1] + 2 * ce[2]) / 3)


# -- Eq. 6 accumulators and their window -------------------------------------------------------------
def test_before_any_statistics_every_class_has_tau_and_weight_one():
    tau_m, alpha_m = RethinkingPL().class_parameters(3)
    assert tau_m.tolist() == [0.7] * 3 and alpha_m.tolist() == [1.0] * 3


def test_the_sums_accumulate_over_all_semi_supervised_steps_by_default():
    method = RethinkingPL()
    method.class_parameters(3)
    # candidates of classes 0, 0, 1 with p * v = 0.5 * 1, 1 * 0.5, 0.8 * 0.5 -> S = [1.0, 0.4, 0], N = [2, 1, 0]
    step = (torch.tensor([0, 0, 1]), torch.tensor([0.5, 1.0, 0.8]), torch.tensor([1.0, 0.5, 0.5]))
    method.accumulate(*step)
    method.accumulate(*step)  # cumulative: S = [2.0, 0.8, 0], N = [4, 2, 0]
    assert torch.allclose(method.sum_pv, torch.tensor([2.0, 0.8, 0.0], dtype=torch.float64))
    assert method.counts.tolist() == [4.0, 2.0, 0.0]
    tau_m, alpha_m = method.class_parameters(3)
    # N_bar = 6 / 3 = 2; ratios 2.0 / 2 = 1, 0.8 / 2 = 0.4, class 2 unseen -> 1:
    # tau_m = 0.7, 0.4 ** 0.05 * 0.7 = 0.668653, 0.7; alpha_m = 1, 0.4 ** -0.6 = 1.732862, 1
    assert torch.allclose(tau_m, torch.tensor([0.7, 0.668653, 0.7], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(alpha_m, torch.tensor([1.0, 1.732862, 1.0], dtype=torch.float64), atol=1e-6)


def test_stats_momentum_decays_the_window():
    method = RethinkingPL(options={"stats_momentum": 0.5})
    method.class_parameters(3)
    step = (torch.tensor([0, 0, 1]), torch.tensor([0.5, 1.0, 0.8]), torch.tensor([1.0, 0.5, 0.5]))
    method.accumulate(*step)
    method.accumulate(*step)  # S = 0.5 * [1, 0.4, 0] + [1, 0.4, 0] = [1.5, 0.6, 0]; N = [3, 1.5, 0]
    assert torch.allclose(method.sum_pv, torch.tensor([1.5, 0.6, 0.0], dtype=torch.float64))
    assert method.counts.tolist() == [3.0, 1.5, 0.0]


def test_the_options_reach_eq6_and_the_switches_zero_the_gammas(monkeypatch):
    seen = []

    def record(sum_pv, counts, **kwargs):
        seen.append(kwargs)
        return torch.full((3,), 0.7, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    monkeypatch.setattr(rt, "dynamic_thresholds", record)
    RethinkingPL(options={"tau": 0.6, "gamma1": 0.03, "gamma2": 0.8, "tau_clip": (0.3, 0.95)}).class_parameters(3)
    RethinkingPL(options={"dynamic_threshold": False, "reweight": False}).class_parameters(3)
    RethinkingPL(options={"tau_clip": None}).class_parameters(3)
    assert seen[0] == {"tau": 0.6, "gamma1": 0.03, "gamma2": 0.8, "clip": (0.3, 0.95)}
    assert seen[1] == {"tau": 0.7, "gamma1": 0.0, "gamma2": 0.0, "clip": (0.4, 0.9)}
    assert seen[2]["clip"] is None


def test_an_out_of_range_or_unknown_option_value_is_an_input_error():
    with pytest.raises(InputError, match="teacher"):
        RethinkingPL(options={"teacher": "ema"})
    with pytest.raises(InputError, match="stats_momentum"):
        RethinkingPL(options={"stats_momentum": 0.0})


# -- the method on a tiny detector ---------------------------------------------------------------------
def _ctx(teacher, iteration=10) -> StepContext:
    return StepContext(teacher=teacher, iteration=iteration, burn_in=False, unsup_weight=1.0,
                       stats=PseudoLabelStats(num_classes=3))


def _teacher(student: FasterRCNN) -> FasterRCNN:
    teacher = side_detector().eval()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return teacher


def test_a_step_thresholds_with_the_previous_statistics_weights_by_alpha_and_then_accumulates(monkeypatch):
    student = side_detector().train()
    method = RethinkingPL()
    method.class_parameters(3)
    method.sum_pv = torch.tensor([8.0, 1.0, 4.0], dtype=torch.float64)
    method.counts = torch.tensor([10.0, 2.0, 3.0], dtype=torch.float64)
    # N_bar = 5; ratios 1.6, 0.2, 0.8 -> tau_m = 1.6 ** 0.05 * 0.7 etc., alpha_m = ratio ** -0.6
    expected_tau, expected_alpha = rt.dynamic_thresholds(method.sum_pv, method.counts, tau=0.7, gamma1=0.05,
                                                         gamma2=0.6)
    thresholds, weights = [], []
    real_select, real_loss = rt.select_certain, rt.reweighted_roi_loss
    monkeypatch.setattr(rt, "select_certain", lambda det, t, **kw: thresholds.append(t) or real_select(det, t, **kw))
    monkeypatch.setattr(rt, "reweighted_roi_loss",
                        lambda s, r, smp, w, **kw: weights.append((torch.cat(smp.labels), w)) or real_loss(s, r, smp, w,
                                                                                                             **kw))
    before = method.counts.clone()
    ctx = _ctx(_teacher(student))
    losses = method.losses(student, ctx, tiny_batch())
    assert torch.equal(thresholds[0], expected_tau)
    # the step's tau_m and alpha_m are logged per class (the statistics before this step's update)
    assert ctx.stats.values["tau_m"] == pytest.approx(expected_tau.tolist())
    assert ctx.stats.values["alpha_m"] == pytest.approx(expected_alpha.tolist())
    assert ctx.stats.summary()["tau_m"] == ctx.stats.values["tau_m"]
    assert len(weights) == 2  # the unlabeled RoIs, then (reweight_scope 'all') the labeled ones
    for labels, w in weights:
        fg = labels > 0
        assert torch.allclose(w[fg], expected_alpha.float()[labels[fg] - 1]) and bool((w[~fg] == 1).all())
    n_fg = sum(int((labels > 0).sum()) for labels, _ in weights)
    assert n_fg > 0 and float((method.counts - before).sum()) == n_fg  # every fg RoI of the step, once
    assert {"loss_cls_unsup", "loss_box_unsup", "loss_cls", "loss_box"} <= set(losses)


def test_certainty_on_a_regression_head_is_a_clear_error_from_the_first_burn_in_step():
    ctx = StepContext(teacher=None, iteration=0, burn_in=True, unsup_weight=0.0, stats=PseudoLabelStats(num_classes=3))
    with pytest.raises(InputError, match="box_head='side_classification'.*certainty: false"):
        RethinkingPL().losses(tiny_detector(), ctx, tiny_batch())
    # without certainty the regression head is allowed (Table 5's first row)
    student = tiny_detector().train()
    teacher = tiny_detector().eval().requires_grad_(False)
    losses = RethinkingPL(options={"certainty": False}).losses(student, _ctx(teacher), tiny_batch())
    assert "loss_cls_unsup" in losses


def test_a_fixed_teacher_that_the_ema_moved_is_an_input_error_and_keep_rate_one_keeps_it():
    student = side_detector().train()
    teacher = _teacher(student)
    method = RethinkingPL()
    method.check_fixed_teacher(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1)
    ema_update(teacher, student, keep_rate=1.0)  # the fixed teacher's configuration: the identity
    method.check_fixed_teacher(teacher)
    assert torch.equal(method.state_dict()["teacher_fingerprint"], teacher_fingerprint(teacher))
    ema_update(teacher, student, keep_rate=0.99)
    with pytest.raises(InputError, match="ema_keep_rate: 1.0"):
        method.check_fixed_teacher(teacher)
    RethinkingPL(options={"teacher": "mean_teacher"}).losses(student, _ctx(teacher), tiny_batch())  # no check


def test_state_dict_restores_the_window_and_the_fingerprint():
    method = RethinkingPL()
    method.class_parameters(3)
    method.accumulate(torch.tensor([1]), torch.tensor([0.5]), torch.tensor([0.5]))
    method.fingerprint = torch.tensor([1.0, 2.0], dtype=torch.float64)
    restored = get_method("rethinking_pl")()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.sum_pv, method.sum_pv) and torch.equal(restored.counts, method.counts)
    assert torch.equal(restored.fingerprint, method.fingerprint)


# -- a short training run ----------------------------------------------------------------------------
def test_a_smoke_run_trains_with_a_fixed_teacher(smoke_benchmark, tmp_path):
    cfg = train_config("smoke", data_root=str(smoke_benchmark.root.parent), method="rethinking_pl",
                       detector_options={"box_head": "side_classification"}, iterations=4, burn_in=2,
                       ema_keep_rate=1.0, unsup_weight=1.0, eval_every=100, log_every=1, threads=1,
                       method_options={"tau": 0.05})  # a low tau so the untrained teacher gives pseudo boxes
    Trainer(cfg, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > cfg.burn_in]
    assert after and all(math.isfinite(r["loss"]) and "loss_box_unsup" in r for r in after)
    assert all(len(r["tau_m"]) == len(r["alpha_m"]) == len(r["pl_per_class"]) for r in after)


def test_a_smoke_run_with_the_ema_on_and_a_fixed_teacher_stops_with_the_fix(smoke_benchmark, tmp_path):
    cfg = train_config("smoke", data_root=str(smoke_benchmark.root.parent), method="rethinking_pl",
                       detector_options={"box_head": "side_classification"}, iterations=4, burn_in=2,
                       ema_keep_rate=0.9, eval_every=100, log_every=1, threads=1)
    with pytest.raises(InputError, match="ema_keep_rate: 1.0"):
        Trainer(cfg, out_dir=tmp_path, progress=False).run()


# -- Table 3: extra teachers ---------------------------------------------------------------------------
def _run(tmp_path, burn_in=4) -> RunInfo:
    return RunInfo(seed=0, burn_in=burn_in, test_view=WeakViewConfig(), run_dir=tmp_path / "runs" / "me")


def test_an_extra_teacher_is_the_burn_in_snapshot_s_student_loaded_once(tmp_path):
    other = side_detector()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)  # weights unlike the run's own teacher's
    snapshot = tmp_path / "runs" / "other-key" / "checkpoint-4.pt"
    snapshot.parent.mkdir(parents=True)
    torch.save({"iteration": 4, "student": other.state_dict(), "teacher": {}}, snapshot)
    method = RethinkingPL(options={"ensemble_teachers": ["other-key"]})
    method.setup(labeled=None, unlabeled=None, run=_run(tmp_path), device=torch.device("cpu"))
    assert method.snapshot_paths() == [snapshot]
    teacher = _teacher(side_detector())
    (extra,) = method.load_extra_teachers(teacher)
    assert extra is not teacher and not extra.training
    assert not any(p.requires_grad for p in extra.parameters())
    for name, value in extra.state_dict().items():
        assert torch.equal(value, other.state_dict()[name]), name
    assert method.load_extra_teachers(teacher)[0] is extra  # once, not per step


def test_a_missing_extra_teacher_snapshot_names_the_path_and_the_fix(tmp_path):
    method = RethinkingPL(options={"ensemble_teachers": ["absent"]})
    method.setup(labeled=None, unlabeled=None, run=_run(tmp_path), device=torch.device("cpu"))
    missing = tmp_path / "runs" / "absent" / "checkpoint-4.pt"
    with pytest.raises(InputError, match=f"{missing}: no burn-in snapshot.*Fix: run that run to its burn-in"):
        method.load_extra_teachers(_teacher(side_detector()))


def _one_box(box, p, v) -> Detections:
    # one class-0 detection: class_probs (background, class 0, class 1) = (1 - p, p, 0), quality v
    probs = torch.tensor([[1 - p, p, 0.0]])
    return Detections(torch.tensor([box]), torch.tensor([p * v]), torch.tensor([0]), probs, quality=torch.tensor([v]))


def _nothing() -> Detections:
    return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3),
                      quality=torch.zeros(0))


def test_the_pseudo_labels_come_from_the_ensemble_of_the_own_and_the_extra_teachers(monkeypatch):
    own, extra = _teacher(side_detector()), _teacher(side_detector())
    found = {id(own): [_nothing()], id(extra): [_one_box([8.0, 8, 40, 40], 0.9, 0.9)]}
    monkeypatch.setattr(rt, "teacher_pass", lambda t, weak: TeacherPass(found[id(t)], {}, None))
    method = RethinkingPL(options={"ensemble_teachers": ["b"]})
    method.extra_teachers = [extra]  # as load_extra_teachers leaves them
    tau = torch.tensor([0.7, 0.7])
    # the own teacher detects nothing; the extra one a box with p * v = 0.81 >= 0.7: that box is the label
    boxes, labels = method.pseudo_labels(_ctx(own), tiny_batch(), tau)
    assert boxes[0].tolist() == [[8.0, 8, 40, 40]] and labels[0].tolist() == [0]
    # both teachers find the box (IoU 1): NMS keeps one, the higher-scored (own 0.95 * 0.95 = 0.9025 > 0.81)
    found[id(own)] = [_one_box([8.0, 8, 40, 40], 0.95, 0.95)]
    dets = method.teacher_detections(own, tiny_batch().weak)
    assert len(dets[0].boxes) == 1 and dets[0].quality.tolist() == pytest.approx([0.95])
    # without ensemble_teachers only the own teacher labels
    alone = RethinkingPL()
    found[id(own)] = [_nothing()]
    boxes, _ = alone.pseudo_labels(_ctx(own), tiny_batch(), tau)
    assert boxes[0].shape == (0, 4)
