"""GFL: golden tests of QFL, DFL, the integral and ATSS on tiny tensors (arithmetic in the comments), the
losses' normalisation on a hand-made head output, shapes and anchors of each stage, post-processing,
options checked through ``build_detector``, the presets, and supervised training through the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.ops import box_iou

from detr_setup import two_images
from ssodlib.config import PRESETS, train_config
from ssodlib.engine.trainer import Trainer
from ssodlib.experiments.plan import load_declarations
from ssodlib.io import InputError
from ssodlib.models.backbones import TinyBackbone
from ssodlib.models.build import build_detector, detector_signature, pretrained_trunk
from ssodlib.models.detectors.base import Detector
from ssodlib.models.detectors.gfl import (GFL, GFL_PRESETS, GFLOptions, GFLOutput, atss_assign, box_distances,
                                          distances_to_boxes, distribution_focal_loss, integral_distances,
                                          quality_focal_loss)

C = 3
LN2 = math.log(2)


@pytest.fixture(autouse=True)
def _single_threaded(one_thread):
    yield


def _config(**options):
    return train_config("smoke", method="supervised", detector="gfl",
                        detector_options={**GFL_PRESETS["smoke"], **options})


def _model(seed: int = 0, **options) -> GFL:
    torch.manual_seed(seed)
    return build_detector(_config(**options), C)


# -- Eq. 5: Quality Focal Loss ------------------------------------------------------------------------
def test_quality_focal_loss_golden():
    # row 0, positive of class 0 with IoU target 0.8, logits (0, 0): sigma = 0.5 and BCE(0, y) = ln 2 for any y
    #   class 0: ln 2 * |0.8 - 0.5|^2 = 0.693147 * 0.09 = 0.0623832; class 1 (a negative): ln 2 * 0.5^2 = 0.1732868
    # row 1, a negative with logits (2, 0): softplus(2) * sigmoid(2)^2 = 2.126928 * 0.880797^2 = 1.650078, + 0.1732868
    loss = quality_focal_loss(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, -1]), torch.tensor([0.8, 0.0]))
    assert loss.tolist() == pytest.approx([0.0623832 + 0.1732868, 1.650078 + 0.1732868], abs=1e-6)
    # the positive's term vanishes when the score equals the target; beta = 0 is plain BCE
    at_target = quality_focal_loss(torch.tensor([[0.0]]), torch.tensor([0]), torch.tensor([0.5]))
    assert float(at_target) == pytest.approx(0.0, abs=1e-9)
    plain = quality_focal_loss(torch.tensor([[2.0]]), torch.tensor([-1]), torch.zeros(1), beta=0.0)
    assert float(plain) == pytest.approx(2.126928, abs=1e-6)
    # a label outside 0..C-1 (C, the mmdetection convention) is a negative too
    assert torch.equal(quality_focal_loss(torch.zeros(1, 2), torch.tensor([2]), torch.ones(1)),
                       quality_focal_loss(torch.zeros(1, 2), torch.tensor([-1]), torch.ones(1)))


# -- Eq. 6-7: the integral and Distribution Focal Loss ------------------------------------------------
P = torch.tensor([0.1, 0.1, 0.3, 0.3, 0.2])  # a distribution over the bins 0..4 (reg_max = 4)


def test_integral_is_the_expectation_over_the_bins():
    # 0 * .1 + 1 * .1 + 2 * .3 + 3 * .3 + 4 * .2 = 2.4; uniform logits over 17 bins: 8
    assert float(integral_distances(P.log())) == pytest.approx(2.4, abs=1e-6)
    assert float(integral_distances(torch.zeros(17))) == pytest.approx(8.0, abs=1e-6)
    assert integral_distances(torch.zeros(2, 4, 17)).shape == (2, 4)


def test_distribution_focal_loss_golden_and_clamped():
    # target 2.3: -(0.7 ln p2 + 0.3 ln p3) = -ln 0.3 = 1.203973 (p2 = p3); 2.5 the same; 0.5: -ln 0.1 = 2.302585;
    # target 4.0 = reg_max has no right bin: clamped to 3.99 -> -(0.01 ln p3 + 0.99 ln p4) = 0.012040 + 1.593344
    loss = distribution_focal_loss(P.log().expand(4, 5), torch.tensor([2.3, 2.5, 0.5, 4.0]))
    assert loss.tolist() == pytest.approx([1.203973, 1.203973, 2.302585, 1.605383], abs=1e-6)
    # uniform logits over 17 bins: ln 17 = 2.833213 whatever the target, 16.0 included (clamped to 15.99)
    assert distribution_focal_loss(torch.zeros(2, 17), torch.tensor([2.3, 16.0])).tolist() == \
        pytest.approx([2.833213] * 2, abs=1e-6)


def test_box_distances_are_in_strides_and_clamped_below_reg_max():
    # point (20, 20), box (12, 4, 44, 28), stride 8: (8, 16, 24, 8) / 8 = (1, 2, 3, 1); reg_max 2 -> (1, 1.99, 1.99, 1)
    point, box = torch.tensor([[20.0, 20]]), torch.tensor([[12.0, 4, 44, 28]])
    assert box_distances(point, box, torch.tensor([8.0]), reg_max=16).tolist() == [[1.0, 2.0, 3.0, 1.0]]
    assert box_distances(point, box, torch.tensor([8.0]), reg_max=2).tolist() == \
        [pytest.approx([1.0, 1.99, 1.99, 1.0])]
    assert distances_to_boxes(point, torch.tensor([[8.0, 16, 24, 8]])).tolist() == box.tolist()


# -- ATSS ------------------------------------------------------------------------------------------------
def _grid(n: int, stride: int, size: int) -> torch.Tensor:
    """``n x n`` square anchors of side ``size`` centred at ``(x * stride, y * stride)``, index ``y * n + x``."""
    return torch.tensor([[x * stride - size / 2, y * stride - size / 2, x * stride + size / 2, y * stride + size / 2]
                         for y in range(n) for x in range(n)])


ANCHORS = torch.cat([_grid(4, 8, 16), _grid(2, 16, 32)])  # level 0: indices 0..15, level 1: 16..19


def test_atss_golden_thresholds_and_conflicts():
    # topk 2 per level. A = (6, 8, 26, 17), centre (16, 12.5), area 180:
    #   level 0: anchor 10 (centre (16, 16)) at 3.5, anchor 6 ((16, 8)) at 4.5 (next: 8.73); level 1: 19 ((16, 16))
    #   at 3.5, 17 ((16, 0)) at 12.5. IoUs: 10: 144 / 292 = 0.493151; 6: 128 / 308 = 0.415584;
    #   19: 180 / 1024 = 0.175781; 17: 160 / 1044 = 0.153257. mean 0.309443, unbiased std 0.170564 -> 0.480007:
    #   only anchor 10 (its centre is inside A: min(10, 8, 10, 1) > 0.01)
    # B = (11, 7, 21, 26), centre (16, 16.5), area 190: level 0: 10 at 0.5, 14 ((16, 24)) at 7.5 (next 8.02);
    #   level 1: 19 at 0.5, 18 ((0, 16)) at 16.008. IoUs: 10: 160 / 286 = 0.559441; 14: 100 / 346 = 0.289017;
    #   19: 190 / 1024 = 0.185547; 18: 95 / 1119 = 0.084897. mean 0.279726, std 0.204250 -> 0.483976: anchor 10
    # anchor 10 is positive for both: it takes B, of larger IoU (0.559 > 0.493); every other anchor is background
    gt = torch.tensor([[6.0, 8, 26, 17], [11, 7, 21, 26]])
    iou = box_iou(ANCHORS, gt)
    assert iou[[10, 6, 19, 17], 0].tolist() == pytest.approx([0.493151, 0.415584, 0.175781, 0.153257], abs=1e-6)
    assert iou[[10, 14, 19, 18], 1].tolist() == pytest.approx([0.559441, 0.289017, 0.185547, 0.084897], abs=1e-6)
    assigned = atss_assign(ANCHORS, [16, 4], gt, topk=2)
    expected = torch.full((20,), -1)
    expected[10] = 1
    assert assigned.tolist() == expected.tolist()
    assert atss_assign(ANCHORS, [16, 4], gt[:1], topk=2).tolist() == [0 if i == 10 else -1 for i in range(20)]


def test_atss_needs_the_anchor_centre_inside_the_object():
    # level 0 alone, topk 1: one candidate per object, so its IoU is the threshold (std 0, not NaN).
    # (1, 2, 6, 7), centre (3.5, 4.5): nearest anchor 4 (centre (0, 8), at 4.95; anchor 0 at 5.70), IoU
    # 25 / 256 = 0.098, but its centre is left of x1 = 1: background. (10, 10, 22, 22): anchor 10 at (16, 16), inside
    gt = torch.tensor([[1.0, 2, 6, 7], [10, 10, 22, 22]])
    assigned = atss_assign(ANCHORS[:16], [16], gt, topk=1)
    assert assigned.tolist() == [1 if i == 10 else -1 for i in range(16)]
    assert atss_assign(ANCHORS[:16], [16], torch.zeros(0, 4), topk=1).tolist() == [-1] * 16


def _atss_reference(anchors, num_per_level, gt, topk):
    """mmdetection's ATSSAssigner written as plain loops."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    out, best = [-1] * len(anchors), [-1.0] * len(anchors)
    for k, g in enumerate(gt):
        gc = (g[:2] + g[2:]) / 2
        cands, start = [], 0
        for n in num_per_level:
            d = [float(((centres[i] - gc) ** 2).sum().sqrt()) for i in range(start, start + n)]
            cands += [start + i for i in sorted(range(n), key=lambda i: d[i])[:topk]]
            start += n
        ious = [float(box_iou(anchors[i:i + 1], g[None])) for i in cands]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cands, ious):
            cx, cy = float(centres[i, 0]), float(centres[i, 1])
            inside = min(cx - g[0], cy - g[1], g[2] - cx, g[3] - cy) > 0.01
            if v >= mean + std and inside and v > best[i]:
                out[i], best[i] = k, v
    return out


def test_atss_equals_a_plain_reference_on_random_objects():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([_grid(8, 8, 32), _grid(4, 16, 64), _grid(2, 32, 128)])
    for _ in range(5):
        xy = torch.rand(4, 2, generator=g) * 48
        wh = 6 + torch.rand(4, 2, generator=g) * 40
        gt = torch.cat([xy, xy + wh], 1)
        assert atss_assign(anchors, [64, 16, 4], gt, topk=3).tolist() == _atss_reference(anchors, [64, 16, 4], gt, 3)


# -- the losses' normalisation on a hand-made head output --------------------------------------------
def _hand_output(reg_logits: torch.Tensor) -> GFLOutput:
    """Two locations of one stride-1 level centred at (2, 2) and (8, 2), two classes, class logits 0."""
    return GFLOutput(cls_logits=torch.zeros(1, 2, 2, requires_grad=True), reg_logits=reg_logits,
                     anchors=torch.tensor([[0.0, 0, 4, 4], [6, 0, 10, 4]]), strides=torch.ones(2),
                     num_per_level=[2], level_sizes=[(1, 2)], level_strides=(1, 2, 4, 8, 16))


def test_dense_losses_normalisation_golden():
    model = _model(reg_max=4)
    # uniform distributions over the bins 0..4: every side at 2, so location 0 predicts (0, 0, 4, 4);
    # location 0 is class 0 with target (1, 1, 3, 5), location 1 background
    out = _hand_output(torch.zeros(1, 2, 4, 5, requires_grad=True))
    labels, boxes = torch.tensor([[1, 0]]), torch.tensor([[[1.0, 1, 3, 5], [0, 0, 0, 0]]])
    losses = model.dense_losses(out, labels, boxes)
    values = {k: float(v.detach()) for k, v in losses.items()}
    # IoU((0,0,4,4), (1,1,3,5)) = 6 / 18 = 1/3, enclosing (0,0,4,5) = 20: GIoU = 1/3 - 2/20 = 0.233333.
    # the positive's weight is its largest score sigmoid(0) = 0.5, normalised by max(0.5, 1) = 1:
    #   loss_bbox = 2 (weight) * 0.5 * (1 - 0.233333) = 0.766667
    #   loss_dfl = 0.25 * 0.5 * 4 sides * ln 5 / 4 = 0.201180
    # QFL / 1 positive: the positive's class ln 2 * |1/3 - 1/2|^2 = 0.019254, three negative logits 3 * 0.173287
    assert values["loss_bbox"] == pytest.approx(0.766667, abs=1e-5)
    assert values["loss_dfl"] == pytest.approx(0.25 * 0.5 * math.log(5), abs=1e-6)
    assert values["loss_cls"] == pytest.approx(LN2 / 36 + 3 * LN2 / 4, abs=1e-6)
    # an ignored location leaves QFL; a given quality replaces the IoU as the target
    ignored = model.dense_losses(out, torch.tensor([[1, -1]]), boxes, quality=torch.tensor([[0.8, 0.0]]))
    assert float(ignored["loss_cls"].detach()) == pytest.approx(LN2 * 0.09 + LN2 / 4, abs=1e-6)
    sum(losses.values()).backward()
    assert out.cls_logits.grad is not None and out.reg_logits.grad[0, 1].abs().sum() == 0  # no box loss at bg


def test_dense_losses_without_positives_are_connected_zeros_and_qfl_over_the_negatives():
    model = _model(reg_max=4)
    out = _hand_output(torch.zeros(1, 2, 4, 5, requires_grad=True))
    losses = model.dense_losses(out, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 4))
    values = {k: float(v.detach()) for k, v in losses.items()}
    assert values["loss_bbox"] == 0 and values["loss_dfl"] == 0 and losses["loss_dfl"].requires_grad
    assert values["loss_cls"] == pytest.approx(4 * LN2 / 4, abs=1e-6)  # 4 negative logits / max(0, 1)


# -- the detector -----------------------------------------------------------------------------------------
def test_gfl_implements_the_detector_protocol_and_options_are_checked():
    model = _model()
    assert isinstance(model, GFL) and isinstance(model, Detector) and model.num_classes == C
    with pytest.raises(InputError, match="no option"):
        build_detector(_config(fpn_chanels=8), C)
    with pytest.raises(InputError, match="fpn_start_level"):
        build_detector(_config(fpn_start_level=2), C)
    with pytest.raises(InputError, match="nms_thresh"):
        build_detector(_config(nms_thresh=1.5), C)
    assert detector_signature(_config())["trainable_layers"] == 5  # the tiny trunk's standard, spelt out


@pytest.mark.parametrize("start_level, strides, sizes", [
    (0, (4, 8, 16, 32, 64), [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]),  # P6: max-pooled P5
    (1, (8, 16, 32, 64, 128), [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]),  # P6, P7: 3x3 stride-2 convolutions
])
def test_levels_anchors_and_head_shapes(start_level, strides, sizes):
    model = _model(fpn_start_level=start_level)
    images, _, _ = two_images()
    batch = model.preprocess(images)
    assert batch.tensors.shape == (2, 3, 96, 128)
    feats = model.features(batch)
    assert [tuple(f.shape[-2:]) for f in feats] == sizes and all(f.shape[1] == 32 for f in feats)
    out = model.dense(feats)
    m = sum(h * w for h, w in out.level_sizes)
    assert out.level_strides == strides and out.num_per_level == [h * w for h, w in out.level_sizes]
    assert out.cls_logits.shape == (2, m, C) and out.reg_logits.shape == (2, m, 4, 17)
    assert out.reg_logits.dtype == torch.float32 and out.anchors.shape == (m, 4)
    # level 0, location (y=1, x=2): centred at (2 s, s), side 2 s (octave base scale 2)
    s, w = strides[0], out.level_sizes[0][1]
    assert out.anchors[1 * w + 2].tolist() == [2 * s - s, s - s, 2 * s + s, s + s]
    assert out.strides[out.num_per_level[0]].item() == strides[1]
    assert model.finest_anchor_size == 2 * strides[0]
    assert model.decode(out).shape == (2, m, 4)
    # the prior: every score starts at 0.01
    assert torch.allclose(out.cls_logits.sigmoid().mean(), torch.tensor(0.01), atol=2e-3)


def test_decode_is_the_expectation_times_the_stride_around_the_centre():
    model = _model(reg_max=4)
    logits = torch.zeros(1, 2, 4, 5)
    logits[0, 0] = P.log()  # every side of location 0 at 2.4 strides
    boxes = model.decode(_hand_output(logits))
    assert boxes[0, 0].tolist() == pytest.approx([2 - 2.4, 2 - 2.4, 2 + 2.4, 2 + 2.4])
    assert boxes[0, 1].tolist() == pytest.approx([6, 0, 10, 4])  # uniform: 2 strides each side of (8, 2)


def test_supervised_losses_are_finite_reach_every_parameter_and_survive_empty_targets():
    model = _model().train()
    images, boxes, labels = two_images()
    losses = model.supervised_losses(images, boxes, labels)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    assert all(v.dim() == 0 and math.isfinite(float(v.detach())) and float(v.detach()) > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    empty = model.supervised_losses(images, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert float(empty["loss_bbox"].detach()) == 0 and float(empty["loss_cls"].detach()) > 0


def test_targets_follow_atss_on_the_batch_anchors():
    model = _model()
    images, boxes, labels = two_images()
    out = model.dense(model.features(model.preprocess(images)))
    lab, tgt = model.targets(out, boxes, labels)
    assert lab.shape == out.cls_logits.shape[:2] and tgt.shape == (*lab.shape, 4)
    index = atss_assign(out.anchors, out.num_per_level, boxes[0], topk=9)
    assert torch.equal(lab[0], torch.where(index >= 0, labels[0][index.clamp(min=0)] + 1, 0))
    assert torch.equal(tgt[0][index >= 0], boxes[0][index[index >= 0]])
    assert set(lab[1].unique().tolist()) == {0, 2}  # image 1's only object is class 1 -> label 2


def test_postprocess_thresholds_nms_and_candidates():
    model = _model(reg_max=4, score_thresh=0.05, nms_thresh=0.6)
    # three locations of a stride-1 level centred at (2, 2), (4, 2) and (22, 22), uniform distributions
    out = GFLOutput(cls_logits=torch.tensor([[[2.0, -1.0], [1.0, -5.0], [-5.0, -5.0]]]),
                    reg_logits=torch.zeros(1, 3, 4, 5), anchors=torch.tensor([[0.0, 0, 4, 4], [2, 0, 6, 4],
                                                                                [20, 20, 24, 24]]),
                    strides=torch.ones(3), num_per_level=[3], level_sizes=[(1, 3)], level_strides=(1, 2, 4, 8, 16))
    batch = model.preprocess([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    det = model.postprocess(out, batch, with_candidates=True)[0]
    # boxes (2 px a side, clipped to the image): (0,0,4,4), (2,0,6,4), (20,20,24,24); candidates above 0.05:
    # (loc 0, c0) 0.881, (loc 1, c0) 0.731, (loc 0, c1) 0.269; location 2 (0.007) is not one.
    # class 0: IoU((0,0,4,4), (2,0,6,4)) = 8 / 24 = 1/3 < 0.6 -> both kept
    s = torch.tensor([2.0, 1.0, -1.0]).sigmoid()
    assert det.scores.tolist() == pytest.approx(s.tolist(), abs=1e-6)
    assert det.labels.tolist() == [0, 0, 1] and det.extra["locations"].tolist() == [0, 1, 0]
    assert det.boxes[1].tolist() == [2.0, 0, 6, 4]
    assert det.class_probs[0].tolist() == pytest.approx([1 - s[0].item(), s[0].item(), s[2].item()], abs=1e-6)
    assert det.cluster.tolist() == [0, 2, 1]  # the candidates in level order: (0, c0), (0, c1), (1, c0)
    tight = model.postprocess(out, batch, with_candidates=True, score_thresh=0.5)[0]
    assert tight.labels.tolist() == [0, 0]
    merged = _model(reg_max=4, nms_thresh=0.3).postprocess(out, batch)[0]
    assert merged.labels.tolist() == [0, 1]  # IoU 1/3 > 0.3: location 1 is suppressed


def test_overfit_one_image():
    torch.manual_seed(0)
    model = _model().train()
    image = torch.full((3, 64, 64), 60, dtype=torch.uint8)
    image[:, 16:48, 16:48] = 220
    box, label = torch.tensor([[16.0, 16, 48, 48]]), torch.tensor([1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    totals = []
    for _ in range(40):
        loss = sum(model.supervised_losses([image], [box], [label]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.5 * totals[0]
    det = model.eval().predict([image])[0]
    assert len(det.boxes) and det.labels[0] == 1 and float(box_iou(det.boxes[:1], box)) > 0.5


# -- presets and the build ------------------------------------------------------------------------------
def test_presets_are_valid_and_mini_has_the_mini_faster_rcnn_anchors():
    for scale, preset in GFL_PRESETS.items():
        options = GFLOptions(**preset)
        options.check()
    mini = GFLOptions(**GFL_PRESETS["mini"])
    mini_frcnn = PRESETS["mini"]["detector_options"]
    assert tuple(mini.octave_base_scale * s for s in mini.strides) == mini_frcnn["anchor_sizes"]
    assert mini.fpn_channels == mini_frcnn["fpn_channels"] and mini.pretrained
    paper = GFLOptions(**GFL_PRESETS["paper"])
    assert paper == GFLOptions(pretrained=True, trainable_layers=3)  # mmdetection's gfl_r50_fpn_1x are the defaults
    assert paper.strides == (8, 16, 32, 64, 128) and paper.octave_base_scale * 8 == 64


def test_the_dtg_ssod_declaration_uses_the_presets():
    item = load_declarations("dtg_ssod").item("table3c")
    for scale, at_scale in item.scales.items():
        assert at_scale["set"]["detector"] == "gfl"
        assert at_scale["set"]["detector_options"] == GFL_PRESETS[scale], scale


def test_the_pretrained_tiny_trunk_arrives_through_build_detector(tmp_path, monkeypatch):
    config = _config(pretrained=True)
    trunk = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in TinyBackbone().state_dict().items() if not k.startswith("fpn.")}
    torch.save(trunk, tmp_path / "trunk.pt")
    monkeypatch.setattr("ssodlib.models.build.ensure_pretrained_backbone", lambda scale, **kw: tmp_path / "trunk.pt")
    weights = pretrained_trunk(config)
    assert weights == str(tmp_path / "trunk.pt")
    model = build_detector(config, C, trunk_weights=weights)
    assert torch.equal(model.backbone.body.stem[0].weight, trunk["stem.0.weight"])
    assert torch.equal(model.backbone.body.stages[3][3].weight, trunk["stages.3.3.weight"])
    scratch = build_detector(config, C, trunk_weights=weights, from_checkpoint=True)
    assert not torch.equal(scratch.backbone.body.stem[0].weight, trunk["stem.0.weight"])


def test_supervised_smoke_training_through_the_trainer(smoke_benchmark, tmp_path):
    config = train_config("smoke", method="supervised", detector="gfl", detector_options=GFL_PRESETS["smoke"],
                          data_root=str(smoke_benchmark.root.parent), iterations=4, eval_every=4, checkpoint_every=2,
                          log_every=2, threads=1)
    final = Trainer(config, out_dir=tmp_path, progress=False).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4]
    assert all(math.isfinite(r["loss"]) and "loss_dfl" in r for r in train)
    assert 0.0 <= final["student"]["ap"] <= 1.0
    Trainer(config, out_dir=tmp_path, resume=True, progress=False).run()  # the checkpoint loads into a GFL
