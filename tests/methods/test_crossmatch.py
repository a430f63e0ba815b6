"""CrossMatch: golden tests of Eq. 4-6 and the refined OHEM on tiny tensors (arithmetic in the comments),
the wiring of levels / lambda_h / lambda_s / delta / the K schedule / the soft branch's proposals, the
pseudo_label identity of Table 3's hard-only single-scale row, a smoke-scale training run and the
declarations of papers/crossmatch/experiments.yaml."""

import copy
import dataclasses
import math

import pytest
import torch

import ssodlib.methods.crossmatch as cm
from ssodlib.config import train_config
from ssodlib.data.batch import Batch
from ssodlib.data.transforms import WeakViewConfig
from ssodlib.engine.run_folder import read_metrics
from ssodlib.engine.trainer import Trainer
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.experiments.plan import load_declarations, plan, plan_items
from ssodlib.io import InputError
from ssodlib.methods import METHODS, RunInfo, StepContext
from ssodlib.methods.crossmatch import (CrossMatch, hard_consistency_loss, heuristic_level, kl_per_roi, ohem_k,
                                        ohem_select, soft_consistency_loss, true_positive_rois)
from ssodlib.models.detectors.faster_rcnn import FasterRCNN
from tiny_setup import published_counterparts, tiny_batch, tiny_detector

LN = math.log


def _logits(*probs):
    """``(R, C + 1)`` logits whose softmax is each row of ``probs``."""
    return torch.tensor(probs).log()


# -- Eq. 4: the heuristic level -----------------------------------------------------------------------
def _squares(*sides):
    return torch.tensor([[0.0, 0.0, s, s] for s in sides])


def test_heuristic_level_is_eq4_clamped_to_p2_p5():
    # k = floor(4 + log2(sqrt(wh) / 224)): 224 -> 4; 112 -> 4 - 1 = 3; 111 -> floor(4 - 1.0130) = 2;
    # 448 -> 5; 1000 -> floor(6.158) = 6, clamped to 5; 8 -> floor(-0.807) = -1, clamped to 2
    assert heuristic_level(_squares(224, 112, 111, 448, 1000, 8)).tolist() == [4, 3, 2, 5, 5, 2]
    # a 56 x 224 box has sqrt(wh) = 112: level 3, as the 112 px square
    assert heuristic_level(torch.tensor([[10.0, 10, 66, 234]])).tolist() == [3]


def _constant_pyramid(channels: int, size: int = 1024) -> dict[str, torch.Tensor]:
    """FPN maps of a ``size`` px image whose level k (P2..P6) is the constant k everywhere."""
    return {str(i): torch.full((1, channels, size // s, size // s), float(i + 2))
            for i, s in enumerate((4, 8, 16, 32, 64))}


class _Recorder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_roi_head_pools_by_the_heuristic_level_or_from_the_level_asked():
    det = tiny_detector().eval()
    det.box_head = _Recorder(det.box_head)
    feats = _constant_pyramid(det.config.fpn_channels)
    batch = det.preprocess([torch.zeros(3, 1024, 1024, dtype=torch.uint8)])
    boxes = _squares(224, 112, 111, 448, 1000, 8) + 4.0  # inside the image, away from its border
    det.roi_head(feats, [boxes], batch)  # level=None: torchvision's level mapper
    pooled_level = det.box_head.seen[-1].reshape(len(boxes), -1).mean(1)
    assert pooled_level.round().long().tolist() == heuristic_level(boxes).tolist() == [4, 3, 2, 5, 5, 2]
    for k in (2, 3, 4, 5):
        det.roi_head(feats, [boxes], batch, level=k)
        assert torch.allclose(det.box_head.seen[-1], torch.full_like(det.box_head.seen[-1], float(k)))


# -- Eq. 5: hard labels across scales -------------------------------------------------------------------
def test_hard_loss_is_the_mean_over_levels_of_the_classification_loss():
    # level a: RoI 1 (background) softmax (1/3, 1/3, 1/3) -> CE ln 3 = 1.098612; RoI 2 (class 2)
    #          p = 2/4 -> ln 2 = 0.693147; mean 0.895880
    # level b: RoI 1 p = 1/2 -> 0.693147; RoI 2 p = 6/8 -> -ln 0.75 = 0.287682; mean 0.490415
    # mean over the two levels: (0.895880 + 0.490415) / 2 = 0.693147
    labels = torch.tensor([0, 2])
    a = torch.tensor([[0.0, 0, 0], [0, 0, LN(2)]])
    b = torch.tensor([[LN(2), 0, 0], [0, 0, LN(6)]])
    assert float(hard_consistency_loss([a, b], labels, gamma=None)) == pytest.approx(0.693147, abs=1e-6)
    # focal (gamma 1.5): -(1 - p)^1.5 ln p = 0.598009 (p 1/3), 0.245065 (p 1/2), 0.035960 (p 3/4);
    # level a (0.598009 + 0.245065) / 2 = 0.421537, level b (0.245065 + 0.035960) / 2 = 0.140512; mean 0.281025
    assert float(hard_consistency_loss([a, b], labels, gamma=1.5)) == pytest.approx(0.281025, abs=1e-6)


def test_hard_loss_with_identical_levels_is_the_detectors_single_level_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 3, 0, 2, 0])
    for cls_loss, gamma in (("ce", None), ("focal", 1.5)):
        det = FasterRCNN(config=dataclasses.replace(tiny_detector().config, cls_loss=cls_loss))
        rois = cm.RoIOutput(logits, torch.zeros(6, 16), torch.zeros(6, 1), [6])
        samples = cm.RoISamples([torch.zeros(6, 4)], [labels], [torch.zeros(6, 4)], [torch.zeros(6, dtype=torch.long)])
        single = det.roi_loss(rois, samples, regression=False)["loss_cls"]
        assert torch.equal(hard_consistency_loss([logits], labels, gamma=gamma), single)
        assert float(hard_consistency_loss([logits] * 4, labels, gamma=gamma)) == pytest.approx(float(single), abs=1e-7)


# -- Eq. 6 and the refined OHEM ---------------------------------------------------------------------------
def test_kl_is_teacher_to_student():
    # p_t = (0.5, 0.5), p_s = (0.9, 0.1): KL(p_t || p_s) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.510826;
    # the reverse KL(p_s || p_t) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.368064 must not come out
    kl = kl_per_roi(_logits([0.5, 0.5]), _logits([0.9, 0.1]))
    assert float(kl) == pytest.approx(0.510826, abs=1e-6) and float(kl) != pytest.approx(0.368064, abs=1e-3)


def test_ohem_ranks_by_kl_not_by_cross_entropy():
    # RoI A: p_t = p_s = (0.5, 0.5): KL 0, CE 0.693147
    # RoI B: p_t = (0.99, 0.01), p_s = (0.9, 0.1): KL = 0.094357 - 0.023026 = 0.071331, CE 0.127333
    # top-1 by KL is B (by CE it would be A): the loss is B's KL
    t = _logits([0.5, 0.5], [0.99, 0.01])
    s = _logits([0.5, 0.5], [0.9, 0.1])
    assert ohem_select(kl_per_roi(t, s), 1).tolist() == [1]
    assert float(soft_consistency_loss(t, [s], top_k=1)) == pytest.approx(0.071331, abs=1e-6)


def test_each_level_keeps_its_own_top_k_and_the_levels_are_averaged():
    # teacher (0.5, 0.5) on both RoIs; level a: RoI 0 at (0.9, 0.1) -> KL 0.510826, RoI 1 at (0.5, 0.5) -> 0;
    # level b the other way round. K = 1: level a keeps RoI 0, level b RoI 1 (2 RoIs in all > K), and the
    # loss is (0.510826 + 0.510826) / 2 = 0.510826; without OHEM: ((0.510826 + 0) / 2 + (0 + 0.510826) / 2) / 2
    t = _logits([0.5, 0.5], [0.5, 0.5])
    a, b = _logits([0.9, 0.1], [0.5, 0.5]), _logits([0.5, 0.5], [0.9, 0.1])
    assert {int(ohem_select(kl_per_roi(t, s), 1)) for s in (a, b)} == {0, 1}
    assert float(soft_consistency_loss(t, [a, b], top_k=1)) == pytest.approx(0.510826, abs=1e-6)
    assert float(soft_consistency_loss(t, [a, b], top_k=None)) == pytest.approx(0.255413, abs=1e-6)
    # level b all agreeing: (0.510826 / 1 + 0) / 2 with K = 1, (0.255413 + 0) / 2 without OHEM
    assert float(soft_consistency_loss(t, [a, t], top_k=1)) == pytest.approx(0.255413, abs=1e-6)
    assert float(soft_consistency_loss(t, [a, t], top_k=None)) == pytest.approx(0.127706, abs=1e-6)
    # K at least the number of RoIs keeps them all
    assert float(soft_consistency_loss(t, [a, b], top_k=5)) == pytest.approx(0.255413, abs=1e-6)


def test_soft_loss_detaches_the_teacher_and_is_a_connected_zero_without_rois():
    t = _logits([0.99, 0.01]).requires_grad_()
    s = _logits([0.9, 0.1]).requires_grad_()
    soft_consistency_loss(t, [s], top_k=None).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    empty = soft_consistency_loss(torch.zeros(0, 3), [torch.zeros(0, 3, requires_grad=True)], top_k=4)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_ohem_k_ramps_down_by_a_cosine_from_all_rois_to_k():
    # N = 1000, K = 256, T = 100: K(t) = 256 + floor(744 (1 + cos(pi t / 100)) / 2):
    # t = 0 -> 1000; t = 25 -> 256 + floor(635.04) = 891; t = 50 -> 256 + 372 = 628; t >= 100 -> 256
    k = lambda it: ohem_k(it, start=2000, ramp_iters=100, num_rois=1000, k=256)
    assert [k(2000), k(2025), k(2050), k(2100), k(2200)] == [1000, 891, 628, 256, 256]
    assert k(1999) == 1000  # before the ramp starts: all RoIs
    ramp = [k(2000 + t) for t in range(0, 120)]
    assert all(x >= y for x, y in zip(ramp, ramp[1:]))  # monotone
    assert ohem_k(2050, start=2000, ramp_iters=100, num_rois=200, k=256) == 200  # never more than N
    assert ohem_k(2000, start=2000, ramp_iters=0, num_rois=1000, k=256) == 256  # no ramp


def test_true_positive_rois_need_the_class_and_iou_half():
    gt, gt_labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1])
    rois = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 21]])
    # same box class 2 (= gt class 1 + 1): TP; background: no; IoU 100/200 = 0.5: TP; IoU 100/210 < 0.5: no
    labels = torch.tensor([2, 0, 2, 2])
    assert true_positive_rois(rois, labels, gt, gt_labels).tolist() == [True, False, True, False]
    assert true_positive_rois(rois, torch.tensor([1, 1, 1, 1]), gt, gt_labels).tolist() == [False] * 4


# -- the method: options and wiring ---------------------------------------------------------------------
def test_registered_and_options_are_checked():
    assert METHODS["crossmatch"] is CrossMatch
    for bad, match in (({"levels": (6,)}, "levels"), ({"levels": (2, 2)}, "distinct"), ({"levels": ()}, "distinct"),
                       ({"hard": False, "soft": False}, "learns nothing"),
                       ({"soft_proposals": "rpn"}, "soft_proposals"),
                       ({"ohem_k": 0}, "ohem_k"), ({"score_thresh": 1.5}, "score_thresh"),
                       ({"ohem_scope": "gpu"}, "ohem_scope"), ({"level_reduction": "max"}, "level_reduction")):
        with pytest.raises(InputError, match=match):
            CrossMatch(options=bad)


def _two_unlabeled() -> Batch:
    """One labeled image and two unlabeled ones (the second mirrored)."""
    a, b = tiny_batch(), tiny_batch(mirrored=True)
    return Batch(images=a.images, boxes=a.boxes, labels=a.labels, weak=a.weak + b.weak, strong=a.strong + b.strong,
                 teacher_to_student=a.teacher_to_student + b.teacher_to_student,
                 gt_weak_boxes=a.gt_weak_boxes + b.gt_weak_boxes, gt_weak_labels=a.gt_weak_labels + b.gt_weak_labels,
                 gt_strong_boxes=a.gt_strong_boxes + b.gt_strong_boxes,
                 gt_strong_labels=a.gt_strong_labels + b.gt_strong_labels)


def _losses(options, *, name="crossmatch", iteration=10, burn_in=0, unsup_weight=2.0, batch=None, student=None):
    student = student or tiny_detector().train()
    teacher = copy.deepcopy(tiny_detector()).eval().requires_grad_(False)
    ctx = StepContext(teacher=teacher, iteration=iteration, burn_in=False, unsup_weight=unsup_weight,
                      stats=PseudoLabelStats(num_classes=3))
    method = METHODS[name](options=options)
    method.setup(labeled=None, unlabeled=None, run=RunInfo(seed=0, burn_in=burn_in, test_view=WeakViewConfig()),
                 device=torch.device("cpu"))
    torch.manual_seed(0)
    losses = method.losses(student, ctx, batch or tiny_batch(mirrored=True))
    return losses, ctx, student


def _spy(monkeypatch, name):
    calls, real = [], getattr(cm, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(cm, name, spy)
    return calls


def test_hard_only_single_scale_is_exactly_the_pseudo_label_baseline():
    # Table 3's (soft off, hard on, multi-scale off) row: the same losses and gradients as pseudo_label
    options = {"score_thresh": 0.0}  # the random tiny teacher's scores are low: every detection is a pseudo box
    ref, _, ref_student = _losses(options, name="pseudo_label")
    got, _, got_student = _losses({**options, "soft": False, "multi_scale": False})
    assert ref.keys() == got.keys()
    values = {k: (float(ref[k].detach()), float(got[k].detach())) for k in ref}
    assert all(torch.equal(ref[k], got[k]) for k in ref), values
    sum(ref.values()).backward()
    sum(got.values()).backward()
    for (n, p), q in zip(ref_student.named_parameters(), got_student.parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), n


def test_levels_and_the_multi_scale_switch_reach_the_pooling(monkeypatch):
    pooled = _spy(monkeypatch, "multiscale_roi_outputs")
    hard = _spy(monkeypatch, "hard_consistency_loss")
    soft = _spy(monkeypatch, "soft_consistency_loss")
    _losses({"score_thresh": 0.0, "levels": (3, 5), "ohem_two_pass": "never"})
    assert [tuple(a[4]) for a, _, _ in pooled] == [(3, 5), (3, 5)]  # the hard branch, then the soft one
    assert len(hard[0][0][0]) == 2 and hard[0][1]["gamma"] is None  # tiny_detector: cross-entropy
    assert len(soft[0][0][1]) == 2
    pooled.clear(), hard.clear(), soft.clear()
    _losses({"score_thresh": 0.0, "levels": (3, 5), "multi_scale": False})
    assert [tuple(a[4]) for a, _, _ in pooled] == [(None,)]  # the soft branch at the heuristic level
    assert len(hard[0][0][0]) == 1 and len(soft[0][0][1]) == 1
    hard.clear()
    focal = FasterRCNN(config=dataclasses.replace(tiny_detector().config, cls_loss="focal", focal_gamma=2.0)).train()
    _losses({"score_thresh": 0.0, "soft": False}, student=focal)
    assert hard[0][1]["gamma"] == 2.0 and len(hard[0][0][0]) == 4


def test_delta_reaches_the_hard_labels(monkeypatch):
    calls = _spy(monkeypatch, "select_hard_labels")
    _, ctx, _ = _losses({"score_thresh": 0.3})
    assert [kw["score_thresh"] for _, kw, _ in calls] == [0.3]
    assert ctx.stats.images == 1  # Fig. 1a: pseudo boxes against the ground truth, per image


def test_the_k_schedule_reaches_the_soft_loss(monkeypatch):
    ks = _spy(monkeypatch, "ohem_k")
    soft = _spy(monkeypatch, "soft_consistency_loss")
    # the ramp starts at the run's burn-in (7): iteration 8 is 1 of 3 ramp iterations in
    _losses({"score_thresh": 0.0, "ohem_k": 5, "ohem_ramp_iters": 3}, iteration=8, burn_in=7)
    (_, kw, k), = ks
    assert (kw["start"], kw["ramp_iters"], kw["k"]) == (7, 3, 5) and kw["num_rois"] > 5
    assert 5 < k < kw["num_rois"]  # mid-ramp
    assert soft[0][1]["top_k"] == k
    ks.clear(), soft.clear()
    _losses({"score_thresh": 0.0, "ohem_k": 5, "ohem_ramp_iters": 3, "ohem_ramp_start": 2}, iteration=8, burn_in=7)
    assert ks[0][1]["start"] == 2 and soft[0][1]["top_k"] == 5  # past the ramp: K
    ks.clear(), soft.clear()
    _losses({"score_thresh": 0.0, "ohem": False})
    assert ks == [] and soft[0][1]["top_k"] is None


def test_ohem_scope_selects_per_image_or_over_the_batch(monkeypatch):
    soft = _spy(monkeypatch, "soft_consistency_loss")
    _, per_image, _ = _losses({"score_thresh": 0.0, "ohem_k": 3, "ohem_ramp_iters": 0}, batch=_two_unlabeled())
    assert len(soft) == 2 and per_image.stats.counts["cm_ohem_k"] == 2 * 3
    soft.clear()
    _, batch, _ = _losses({"score_thresh": 0.0, "ohem_k": 3, "ohem_ramp_iters": 0, "ohem_scope": "batch"},
                          batch=_two_unlabeled())
    assert len(soft) == 1 and batch.stats.counts["cm_ohem_k"] == 3
    assert per_image.stats.counts["cm_soft_rois"] <= 2 * 3 * 4 and batch.stats.counts["cm_soft_rois"] <= 3 * 4


def _values(losses):
    return {k: float(v.detach()) for k, v in losses.items()}


def test_lambdas_and_beta_weigh_the_branches(monkeypatch):
    # unit branch losses: hard RoI term 1, soft term 1; beta (unsup_weight) 4
    monkeypatch.setattr(cm, "hard_consistency_loss", lambda logits, labels, *, gamma: logits[0].sum() * 0 + 1.0)
    monkeypatch.setattr(cm, "soft_consistency_loss", lambda t, s, *, top_k: s[0].sum() * 0 + 1.0)
    rpn = []
    real = FasterRCNN.rpn_loss
    monkeypatch.setattr(FasterRCNN, "rpn_loss", lambda self, *a, **kw: rpn.append(real(self, *a, **kw)) or rpn[-1])
    inside = _values(_losses({"score_thresh": 0.0}, unsup_weight=4.0)[0])
    # beta (lambda_h L_hard + lambda_s L_soft) = 4 (1 + 1) = 8; the RPN objectness once, also weighted
    assert (inside["loss_cls_unsup"] + inside["loss_soft_unsup"]) == pytest.approx(8.0)
    assert inside["loss_rpn_cls_unsup"] == pytest.approx(4.0 * float(rpn[-1]["loss_rpn_cls"].detach()))
    outside = _values(_losses({"score_thresh": 0.0, "soft_outside_unsup_weight": True}, unsup_weight=4.0)[0])
    assert (outside["loss_cls_unsup"] + outside["loss_soft_unsup"]) == pytest.approx(5.0)  # 4 * 1 + 1
    weighted = _values(_losses({"score_thresh": 0.0, "lambda_hard": 0.5, "lambda_soft": 2.0}, unsup_weight=4.0)[0])
    assert weighted["loss_cls_unsup"] == pytest.approx(2.0)
    assert weighted["loss_soft_unsup"] == pytest.approx(8.0)
    assert weighted["loss_rpn_cls_unsup"] == pytest.approx(2.0 * float(rpn[-1]["loss_rpn_cls"].detach()))


def test_level_reduction_sum_is_the_number_of_levels_times_the_mean():
    mean, _, _ = _losses({"score_thresh": 0.0, "hard": False})
    total, _, _ = _losses({"score_thresh": 0.0, "hard": False, "level_reduction": "sum"})
    mean_value, total_value = float(mean["loss_soft_unsup"].detach()), float(total["loss_soft_unsup"].detach())
    assert total_value == pytest.approx(4 * mean_value, rel=1e-6)
    assert not any(k.startswith("loss_rpn") and k.endswith("_unsup") for k in mean)  # hard off: no unlabeled RPN


def test_soft_rois_are_the_students_or_the_teachers_proposals(monkeypatch):
    props = []
    real = FasterRCNN.proposals
    monkeypatch.setattr(FasterRCNN, "proposals", lambda self, *a: props.append(real(self, *a)) or props[-1])
    seen = []
    real_soft_rois = CrossMatch.soft_rois

    def spy(self, *a):
        seen.append(real_soft_rois(self, *a))
        return seen[-1]

    monkeypatch.setattr(CrossMatch, "soft_rois", spy)
    _losses({"score_thresh": 0.0})
    teacher_props, student_props = props[0][0], props[1][0]  # the teacher runs first
    assert torch.equal(seen[0][0][0], student_props[1])  # the unlabeled image's post-NMS student proposals
    props.clear(), seen.clear()
    _losses({"score_thresh": 0.0, "soft_proposals": "teacher", "soft_max_rois": 7})
    mirror = torch.tensor([[-1.0, 0, 64], [0, 1, 0], [0, 0, 1]])
    mapped, keep = cm.to_student_view(props[0][0][0], mirror, (64, 64))
    assert torch.equal(seen[0][0][0], mapped[keep][:7]) and len(seen[0][1]) == len(seen[0][0][0])


def test_the_teacher_scores_student_rois_mapped_into_the_weak_view(monkeypatch):
    calls = []
    real = FasterRCNN.roi_head

    def spy(self, feats, proposals, batch, **kw):
        calls.append((self.training, [p.clone() for p in proposals]))
        return real(self, feats, proposals, batch, **kw)

    monkeypatch.setattr(FasterRCNN, "roi_head", spy)
    seen = []
    real_soft_rois = CrossMatch.soft_rois
    monkeypatch.setattr(CrossMatch, "soft_rois", lambda self, *a: seen.append(real_soft_rois(self, *a)) or seen[-1])
    _losses({"score_thresh": 0.0})
    teacher_calls = [p for training, p in calls if not training]
    student_rois = seen[0][0][0]
    # mirrored views of width 64: x -> 64 - x, so (10, 0, 30, 10) in the strong view is (34, 0, 54, 10)
    x1, y1, x2, y2 = student_rois.unbind(1)
    expected = torch.stack([64 - x2, y1, 64 - x1, y2], 1)
    assert torch.allclose(teacher_calls[-1][0], expected, atol=1e-4)


def test_two_pass_ohem_gives_the_single_pass_gradient_and_the_soft_loss_skips_the_rpn(monkeypatch):
    grads, heads = {}, []
    real = FasterRCNN.roi_head
    monkeypatch.setattr(FasterRCNN, "roi_head",
                        lambda self, *a, **kw: heads.append(torch.is_grad_enabled()) or real(self, *a, **kw))
    for mode in ("never", "always"):
        heads.clear()
        losses, _, student = _losses({"score_thresh": 0.0, "hard": False, "ohem_k": 3, "ohem_ramp_iters": 0,
                                      "ohem_two_pass": mode})
        # two passes: the ranking pass pools every level without gradients, then one pass per level (4)
        # re-pools only the kept RoIs with them; one pass pools with gradients only
        if mode == "always":
            assert heads.count(False) > 0 and heads[-4:] == [True] * 4
        else:
            assert False not in heads[-4:]
        losses["loss_soft_unsup"].backward()
        grads[mode] = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        assert all(float(g.abs().sum()) == 0 for n, g in grads[mode].items() if n.startswith("rpn_head"))
        assert float(grads[mode]["box_head.fc6.weight"].abs().sum()) > 0
    assert grads["never"].keys() == grads["always"].keys()
    for n in grads["never"]:
        assert torch.allclose(grads["never"][n], grads["always"][n], atol=1e-6), n


def test_no_soft_roi_gives_a_connected_zero(monkeypatch):
    monkeypatch.setattr(CrossMatch, "soft_rois", lambda self, ctx, props, t, batch: ([props[0][:0]], torch.zeros(0, 4)))
    losses, ctx, student = _losses({"score_thresh": 0.0, "ohem_k": 2})
    assert float(losses["loss_soft_unsup"].detach()) == 0.0 and losses["loss_soft_unsup"].requires_grad
    assert ctx.stats.counts["cm_soft_rois"] == 0
    sum(losses.values()).backward()


def test_figure_1_and_4_diagnostics_are_counted():
    _, ctx, _ = _losses({"score_thresh": 0.0, "ohem_k": 4, "ohem_ramp_iters": 0})
    c, summary = ctx.stats.counts, ctx.stats.summary()
    assert 4 <= c["cm_soft_rois"] <= 4 * 4 and 0 <= c["cm_soft_only_rois"] <= c["cm_soft_rois"]
    assert c["cm_tp_soft_only"] <= c["cm_soft_tp"] <= c["cm_soft_rois"]
    assert sum(c[f"cm_soft_level{k}"] for k in (2, 3, 4, 5)) == c["cm_soft_rois"]
    assert summary["roi_tp"] + summary["roi_fp"] > 0  # Fig. 1b: the hard branch's sampled RoIs
    assert "pl_cm_tp_both_per_image" in summary and "pl_cm_tp_hard_only_per_image" in summary
    _, teacher, _ = _losses({"score_thresh": 0.0, "soft_proposals": "teacher"})
    assert "cm_soft_rois" in teacher.stats.counts and "cm_soft_only_rois" not in teacher.stats.counts


# -- smoke training ------------------------------------------------------------------------------------
def test_smoke_training_runs_and_logs_the_soft_branch(smoke_benchmark, tmp_path):
    config = train_config("smoke", method="crossmatch", data_root=str(smoke_benchmark.root.parent), iterations=4,
                          burn_in=2, eval_every=100, log_every=1, checkpoint_every=100, threads=1,
                          detector_options={"cls_loss": "focal"},
                          method_options={"score_thresh": 0.3, "ohem_k": 8, "ohem_ramp_iters": 1})
    Trainer(config, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > config.burn_in]
    assert after and all(math.isfinite(r["loss"]) for r in after)
    assert all("loss_soft_unsup" in r and "loss_cls_unsup" in r and "pl_cm_soft_rois_per_image" in r for r in after)


# -- the declarations -----------------------------------------------------------------------------------
def test_the_crossmatch_declaration_plans_at_every_scale(monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    runs = {scale: plan("crossmatch", "all", scale) for scale in ("smoke", "mini", "paper")}
    mini = runs["mini"]
    methods = [s.config.method for s in mini]
    # Table 1's main rows at 1 and 5 % on 2 folds x 3 seeds: 12 runs per row; the ablations add
    # crossmatch runs at fold 1, seed 0 only
    assert methods.count("supervised") == 12 and methods.count("pseudo_label") == 12
    assert methods.count("crossmatch") == 12 + 4 * 2 + 3
    table1 = [s for s in mini if s.item == "table1" and s.row == "CrossMatch"]
    assert {(s.fold, s.seed, s.config.percent) for s in table1} == {(f, sd, p) for f in (1, 2) for sd in (0, 1, 2)
                                                                    for p in (1.0, 5.0)}
    assert all(s.burn_in_from for s in mini if s.config.method != "supervised")
    assert {s.burn_in_from for s in mini if s.item != "table1"} <= {s.key for s in mini if s.fold == 1 and s.seed == 0}
    # the scale's K (64) everywhere but in Figure 3c, whose columns set their own K
    assert {s.config.method_options.get("ohem_k") for s in mini
            if s.config.method == "crossmatch" and s.item != "figure3c"} == {64}
    figure3c = plan_items("crossmatch", "figure3c", "mini")["figure3c"]  # before plan() merges shared runs
    assert {(s.column, s.config.method_options.get("ohem_k"), s.config.method_options.get("ohem"))
            for s in figure3c if s.config.method == "crossmatch"} == \
        {("without OHEM", 64, False), ("K=16", 16, None), ("K=64", 64, None), ("K=128", 128, None)}
    # Table 3's hard-only single-scale row is the pseudo_label baseline: the runs of the baselines' table
    baselines = {s.key for s in plan("baselines", "table1", "mini")}
    assert {s.key for s in mini if s.config.method == "pseudo_label"} <= baselines
    # paper scale: COCO-standard 0.5-10 %, COCO-additional and the two VOC blocks (K = 512)
    paper = runs["paper"]
    assert {s.config.percent for s in paper if s.item == "table1" and s.column.startswith("COCO-standard")} == \
        {0.5, 1.0, 2.0, 5.0, 10.0}
    assert {s.config.dataset for s in paper} == {"coco", "coco-additional", "voc"}
    voc = [s for s in paper if s.item.startswith("table2") and s.config.method == "crossmatch"]
    assert len(voc) == 2 and all(s.config.method_options["ohem_k"] == 512 for s in voc)
    assert all(s.config.ema_keep_rate == 0.9996 and s.config.unsup_weight in (2.0, 4.0) for s in paper)
    assert len(runs["smoke"]) <= 10  # the notebook regression trains every smoke run


def test_every_published_counterpart_of_the_declaration_resolves(monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    assert all("paper" in item.scales for item in load_declarations("crossmatch").items)
    checked = published_counterparts("crossmatch")
    assert checked == 3 * 6 + 3 * 2 * 2 + 6 + 2 * 2
