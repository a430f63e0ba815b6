"""Faster R-CNN stages on the tiny backbone: shapes, hand-made golden cases and a short overfit."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, roi_align

from ssodlib.models.backbones import build_backbone
from ssodlib.models.detectors.faster_rcnn import DetectorConfig, FasterRCNN, RoIOutput, RoISamples
from ssodlib.models.nms import nms_clusters

C = 3  # classes (the RoI classifier has C + 1 outputs)


def _config(**kw) -> DetectorConfig:
    base = dict(num_classes=C, backbone="tiny", fpn_channels=32, representation_size=64, roi_batch_size=64,
                rpn_batch_size=64, rpn_pre_nms_top_n=(100, 20), rpn_post_nms_top_n=(60, 10))
    base.update(kw)
    return DetectorConfig(**base)


def _model(seed: int = 0, **kw) -> FasterRCNN:
    torch.manual_seed(seed)
    return FasterRCNN(config=_config(**kw))


def _image(h: int, w: int, value: float | None = None) -> torch.Tensor:
    if value is None:
        return torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    return torch.full((3, h, w), value, dtype=torch.uint8)


# -- nms_clusters ---------------------------------------------------------------------------------

# candidates in decreasing score; IoUs by hand:
#   b0/b1 (class 0): 60 / 140 = 0.43 -> both kept
#   b2 (class 0) vs b0: 70 / 130 = 0.54, vs b1: 90 / 110 = 0.82 -> suppressed by b0 (higher score first)
#   b3 (class 1) = b0's box, other class -> kept
#   b4 (class 1) vs b3: 90 / 110 = 0.82; also vs b0 (class 0) 0.82 -> belongs to b3, not b0
#   b5 (class 0) far away -> kept; b6 vs b5: 90 / 110 -> suppressed by b5
BOXES = torch.tensor([
    [0, 0, 10, 10], [4, 0, 14, 10], [3, 0, 13, 10], [0, 0, 10, 10], [1, 0, 11, 10],
    [40, 40, 50, 50], [41, 40, 51, 50]], dtype=torch.float32)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.35, 0.3])
LABELS = torch.tensor([0, 0, 0, 1, 1, 0, 0])


def test_nms_clusters_golden():
    keep = batched_nms(BOXES, SCORES, LABELS, 0.5)
    assert keep.tolist() == [0, 1, 3, 5]
    cluster = nms_clusters(BOXES, LABELS, keep, 0.5)
    assert cluster.dtype == torch.int64
    assert cluster.tolist() == [0, 1, 0, 2, 2, 3, 3]


def test_nms_clusters_truncated_keep():
    # detections_per_img = 3 cut b5: b5 and the box it suppressed get -1
    assert nms_clusters(BOXES, LABELS, torch.tensor([0, 1, 3]), 0.5).tolist() == [0, 1, 0, 2, 2, -1, -1]
    # b0 cut: b2 still qualifies with b1 (IoU 0.82) and moves there; b0 itself overlaps b1 at 0.43 only
    assert nms_clusters(BOXES, LABELS, torch.tensor([1, 3, 5]), 0.5).tolist() == [-1, 0, 0, 1, 1, 2, 2]


def test_nms_clusters_empty():
    assert nms_clusters(BOXES, LABELS, torch.zeros(0, dtype=torch.int64), 0.5).tolist() == [-1] * 7
    assert nms_clusters(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                        0.5).numel() == 0


# -- preprocess / features / RPN ------------------------------------------------------------------

def test_preprocess_normalises_and_pads():
    m = _model()
    batch = m.preprocess([_image(50, 70, 100), _image(60, 40, 200)])
    assert batch.image_sizes == [(50, 70), (60, 40)]
    assert batch.tensors.shape == (2, 3, 64, 96)  # max 60 x 70 rounded up to multiples of 32
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    for i, (v, (h, w)) in enumerate([(100, (50, 70)), (200, (60, 40))]):
        for ch in range(3):
            want = torch.full((h, w), (v - mean[ch]) / std[ch])
            torch.testing.assert_close(batch.tensors[i, ch, :h, :w], want)
        pad = batch.tensors[i].clone()
        pad[:, :h, :w] = 0
        assert (pad == 0).all()
    # already divisible: no padding; float 0-255 input is accepted as well
    b2 = m.preprocess([torch.full((3, 64, 32), 123.675)])
    assert b2.tensors.shape == (1, 3, 64, 32)
    assert b2.tensors[0, 0].abs().max().item() < 1e-6


def test_rpn_shapes_and_anchor_count():
    m = _model()
    batch = m.preprocess([_image(50, 70), _image(64, 96)])
    feats = m.features(batch)
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    rpn = m.rpn(feats, batch)
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]  # strides 4..64 on a 64 x 96 batch
    assert len(rpn.objectness) == len(rpn.deltas) == 5
    for o, d, (h, w) in zip(rpn.objectness, rpn.deltas, sizes):
        assert o.shape == (2, 3, h, w)
        assert d.shape == (2, 12, h, w)
    total = sum(3 * h * w for h, w in sizes)
    assert rpn.num_anchors_per_level == [3 * h * w for h, w in sizes]
    assert len(rpn.anchors) == 2 and all(a.shape == (total, 4) for a in rpn.anchors)
    obj, deltas = rpn.flat()
    assert obj.shape == (2, total) and deltas.shape == (2, total, 4)


def test_rpn_targets_hand_case():
    m = _model()
    batch = m.preprocess([_image(64, 96), _image(64, 96)])
    rpn = m.rpn(m.features(batch), batch)
    anchors = rpn.anchors[0]
    # level 0 (stride 4, 24 columns, size 32, ratios 0.5/1/2): cell (x=8, y=8), ratio 1 -> [16, 16, 48, 48]
    i = (8 * 24 + 8) * 3 + 1
    assert anchors[i].tolist() == [16.0, 16.0, 48.0, 48.0]
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    labels, targets = m.rpn_targets(rpn, [gt, torch.zeros(0, 4)])
    assert labels.shape == (2, len(anchors)) and targets.shape == (2, len(anchors), 4)
    assert labels[0, i].item() == 1.0
    assert targets[0, i].abs().max().item() < 1e-6  # the anchor is the box: zero deltas
    iou = box_iou(gt, anchors)[0]
    want = torch.where(iou >= 0.7, 1.0, torch.where(iou >= 0.3, -1.0, 0.0))
    assert torch.equal(labels[0], want)
    far = iou == 0
    assert far.sum() > 100 and (labels[0][far] == 0).all()
    assert (labels[1] == 0).all()  # no GT: every anchor background
    # a positive anchor's target: the anchor shifted by 4 px in x -> dx = 4 / 32, others 0
    j = (8 * 24 + 9) * 3 + 1
    assert anchors[j].tolist() == [20.0, 16.0, 52.0, 48.0]
    assert labels[0, j].item() == 1.0  # IoU 28 / 36 = 0.78
    torch.testing.assert_close(targets[0, j], torch.tensor([-4 / 32, 0.0, 0.0, 0.0]))


def test_proposals_train_vs_eval():
    m = _model()
    batch = m.preprocess([_image(50, 70), _image(64, 96)])
    m.train()
    with torch.no_grad():
        feats = m.features(batch)
        rpn = m.rpn(feats, batch)
    train_boxes, train_scores = m.proposals(rpn, batch)
    m.eval()
    eval_boxes, eval_scores = m.proposals(rpn, batch)
    for boxes, scores, top_n in ((train_boxes, train_scores, 60), (eval_boxes, eval_scores, 10)):
        assert len(boxes) == 2
        for b, s, (h, w) in zip(boxes, scores, batch.image_sizes):
            assert 0 < len(b) <= top_n and b.shape[1] == 4 and s.shape == (len(b),)
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
            assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert ((s > 0) & (s < 1)).all()
            assert not b.requires_grad
    # train keeps 100 per level before NMS and 60 after: far more than eval's 10
    assert all(len(b) > 10 for b in train_boxes)
    assert all(len(b) == 10 for b in eval_boxes)


def test_boxes_are_decoded_in_float32_under_bf16_autocast():
    """bf16 keeps 8 bits of mantissa: a box edge near x = 700 decoded in bf16 lands on a multiple of 4 px.
    Proposals and detections are decoded in float32 whatever the autocast dtype."""
    m = _model().eval()
    batch = m.preprocess([_image(64, 64)])
    with torch.no_grad():
        rpn = m.rpn(m.features(batch), batch)
    far = [a + 700.0 for a in rpn.anchors]  # anchors where bf16's spacing is 4 px
    rpn = type(rpn)(rpn.objectness, [d.bfloat16() for d in rpn.deltas], far, rpn.num_anchors_per_level)
    batch.image_sizes = [(2000, 2000)]
    boxes, _ = m.proposals(rpn, batch)
    assert boxes[0].dtype == torch.float32
    assert ((boxes[0] % 4) != 0).float().mean() > 0.5  # not quantised to bf16's 4 px grid
    rois = m.roi_head(m.features(batch), [torch.tensor([[700.5, 701.25, 760.75, 790.5]])], batch)
    rois = type(rois)(rois.class_logits, rois.box_deltas.bfloat16(), rois.features, rois.counts)
    decoded = m.decode_boxes(rois, [torch.tensor([[700.5, 701.25, 760.75, 790.5]])])
    assert decoded.dtype == torch.float32
    expected = m.roi_coder.decode(rois.box_deltas.float(), [torch.tensor([[700.5, 701.25, 760.75, 790.5]])])
    torch.testing.assert_close(decoded, expected.reshape(decoded.shape))


# -- RoI head -------------------------------------------------------------------------------------

def _small_props() -> list[torch.Tensor]:
    return [torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 10.0, 50.0, 40.0], [0.0, 0.0, 16.0, 32.0]]),
            torch.tensor([[10.0, 10.0, 26.0, 26.0], [40.0, 40.0, 60.0, 60.0]])]


def test_roi_head_levels():
    m = _model().eval()
    batch = m.preprocess([_image(64, 64), _image(64, 64)])
    with torch.no_grad():
        feats = m.features(batch)
        props = _small_props()
        outs = {lvl: m.roi_head(feats, props, batch, level=lvl) for lvl in (None, 2, 3, 4, 5)}
    for out in outs.values():
        assert out.class_logits.shape == (5, C + 1)
        assert out.box_deltas.shape == (5, 4 * (C + 1))
        assert out.features.shape == (5, 64)
        assert out.counts == [3, 2]
    for a in (2, 3, 4, 5):
        for b in (2, 3, 4, 5):
            if a < b:
                assert not torch.allclose(outs[a].features, outs[b].features)
    # every box side <= 32 px: the size rule (4 + log2(sqrt(area) / 224)) clamps them to P2
    torch.testing.assert_close(outs[None].features, outs[2].features)
    # level 3 is P3 (features '1', stride 8) pooled by roi_align, then the box head
    with torch.no_grad():
        pooled = roi_align(feats["1"], props, output_size=7, spatial_scale=1 / 8, sampling_ratio=2)
        torch.testing.assert_close(outs[3].features, m.box_head(pooled))
    for bad in (1, 6, 0):
        with pytest.raises(ValueError):
            m.roi_head(feats, props, batch, level=bad)


def test_roi_head_size_rule_after_small_first_batch():
    m = _model().eval()
    batch = m.preprocess([_image(40, 40)])  # padded to 64: P2 is 16 x 16, stride 4
    with torch.no_grad():
        feats = m.features(batch)
        props = [torch.tensor([[4.0, 4.0, 20.0, 20.0], [10.0, 2.0, 30.0, 30.0]])]
        torch.testing.assert_close(m.roi_head(feats, props, batch).features,
                                   m.roi_head(feats, props, batch, level=2).features)


# -- RoI sampling and losses ----------------------------------------------------------------------

def _background_boxes(n: int) -> torch.Tensor:
    """Boxes in the right half of a 128-px image, far from GT in the left part."""
    torch.manual_seed(1)
    xy = torch.rand(n, 2) * 40 + torch.tensor([70.0, 0.0])
    return torch.cat([xy, xy + 16], 1)


def test_sample_rois_add_gt():
    m = _model()
    gt = torch.tensor([[5.0, 5.0, 25.0, 30.0], [30.0, 40.0, 60.0, 60.0]])
    lab = torch.tensor([0, 2])
    props = _background_boxes(10)
    s = m.sample_rois([props, props], [gt, torch.zeros(0, 4)], [lab, torch.zeros(0, dtype=torch.int64)], add_gt=True)
    p, labels, mb, mi = s.proposals[0], s.labels[0], s.matched_boxes[0], s.matched_index[0]
    assert len(p) == 12 == len(labels) == len(mb) == len(mi)  # all 10 negatives + the 2 GT
    pos = labels > 0
    assert pos.sum().item() == 2
    order = mi[pos].argsort()
    assert torch.equal(p[pos][order], gt)
    assert labels[pos][order].tolist() == [1, 3]
    assert torch.equal(mb[pos][order], gt)
    assert mi[pos][order].tolist() == [0, 1]
    assert (labels[~pos] == 0).all() and (mi[~pos] == -1).all()
    # image without GT: the proposals, all background
    assert len(s.proposals[1]) == 10 and (s.labels[1] == 0).all() and (s.matched_index[1] == -1).all()
    # without add_gt and no overlapping proposal there is no positive
    s2 = m.sample_rois([props], [gt], [lab], add_gt=False)
    assert len(s2.proposals[0]) == 10 and (s2.labels[0] == 0).all()


def test_sample_rois_balance():
    m = _model()
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    torch.manual_seed(2)
    jitter = gt + torch.randint(-3, 4, (40, 4)).float()  # IoU > 0.5 with the GT
    assert (box_iou(jitter, gt) > 0.5).all()
    props = torch.cat([jitter, _background_boxes(100)])
    s = m.sample_rois([props], [gt], [torch.tensor([1])], add_gt=True)
    labels = s.labels[0]
    assert len(labels) == 64  # roi_batch_size
    assert (labels == 2).sum().item() == 16  # 0.25 * 64 positives of 41
    assert (labels == 0).sum().item() == 48
    pos = labels > 0
    assert torch.equal(s.matched_boxes[0][pos], gt.expand(16, 4))
    assert (box_iou(s.proposals[0][pos], gt) >= 0.5).all()
    assert (box_iou(s.proposals[0][~pos], gt) < 0.5).all()
    # batch_size override
    s3 = m.sample_rois([props], [gt], [torch.tensor([1])], batch_size=16)
    assert len(s3.labels[0]) == 16 and (s3.labels[0] > 0).sum().item() == 4


def _hand_rois(requires_grad: bool = True) -> tuple[RoIOutput, RoISamples]:
    """Two RoIs, one class: a positive whose GT is the proposal shifted 1 px right, and a background."""
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=requires_grad)
    # background-class deltas of the positive are large: the loss must use the class-1 slot (zeros)
    deltas = torch.tensor([[5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 8], requires_grad=requires_grad)
    rois = RoIOutput(logits, deltas, torch.zeros(2, 4), [2])
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    samples = RoISamples([props], [torch.tensor([1, 0])], [torch.tensor([[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])],
                         [torch.tensor([0, -1])])
    return rois, samples


def _hand_cls(gamma: float) -> float:
    p1 = _softmax([0.0, 1.0])[1]
    p2 = _softmax([2.0, 0.0])[0]
    return sum(-((1 - p) ** gamma) * math.log(p) for p in (p1, p2)) / 2


def _softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def test_roi_loss_hand_values():
    m = _model(num_classes=1)
    rois, samples = _hand_rois()
    out = m.roi_loss(rois, samples)
    assert out["loss_cls"].item() == pytest.approx(_hand_cls(0.0), rel=1e-6)
    # target dx = 10 * (1 / 10) = 1 -> smooth-L1 1 - beta / 2; divided by the 2 sampled RoIs
    assert out["loss_box"].item() == pytest.approx((1 - 1 / 18) / 2, rel=1e-6)
    (out["loss_cls"] + out["loss_box"]).backward()
    assert rois.box_deltas.grad[0, :4].abs().sum() == 0 and rois.box_deltas.grad[0, 4].item() != 0

    m.config = replace(m.config, cls_loss="focal", focal_gamma=1.5)
    rois, samples = _hand_rois()
    focal = m.roi_loss(rois, samples)
    assert focal["loss_cls"].item() == pytest.approx(_hand_cls(1.5), rel=1e-6)
    assert focal["loss_cls"].item() < out["loss_cls"].item()
    # the detector passes its own gamma on (the focal loss's default is also 1.5): gamma 3 weighs
    # confident RoIs down further
    m.config = replace(m.config, focal_gamma=3.0)
    rois, samples = _hand_rois()
    assert m.roi_loss(rois, samples)["loss_cls"].item() == pytest.approx(_hand_cls(3.0), rel=1e-6)
    assert _hand_cls(3.0) < _hand_cls(1.5)

    m.config = replace(m.config, cls_loss="ce", box_loss="giou")
    rois, samples = _hand_rois()
    giou = m.roi_loss(rois, samples)
    # predicted box = proposal [0,0,10,10], GT [1,0,11,10]: IoU 90/110, hull = union -> loss 2/11, / 2 RoIs
    assert giou["loss_box"].item() == pytest.approx(1 / 11, rel=1e-5)
    giou["loss_box"].backward()
    assert rois.box_deltas.grad is not None and rois.box_deltas.grad[0, 4:].abs().sum() > 0

    m.config = replace(m.config, cls_loss="bce")
    with pytest.raises(ValueError):
        m.roi_loss(*_hand_rois())


def test_roi_loss_weights_each_roi_and_divides_by_the_weights_sum_at_least_one():
    m = _model(num_classes=1)
    ce = [-math.log(p) for p in (_softmax([0.0, 1.0])[1], _softmax([2.0, 0.0])[0])]  # the two RoIs' losses
    for weights, expected in [((1.0, 0.5), (ce[0] + 0.5 * ce[1]) / 1.5),
                              ((0.25, 0.25), 0.25 * (ce[0] + ce[1])),  # sum 0.5: divided by 1
                              ((0.0, 1.0), ce[1])]:
        rois, samples = _hand_rois()
        out = m.roi_loss(rois, samples, cls_weights=torch.tensor(weights))
        assert out["loss_cls"].item() == pytest.approx(expected, rel=1e-6)
        assert out["loss_box"].item() == pytest.approx((1 - 1 / 18) / 2, rel=1e-6)  # box loss unweighted
    rois, samples = _hand_rois()
    m.roi_loss(rois, samples, cls_weights=torch.tensor([0.0, 1.0]))["loss_cls"].backward()
    assert rois.class_logits.grad[0].abs().sum() == 0 and rois.class_logits.grad[1].abs().sum() > 0

def test_roi_loss_no_regression_keeps_graph():
    m = _model(num_classes=1)
    rois, samples = _hand_rois()
    out = m.roi_loss(rois, samples, regression=False)
    assert out["loss_box"].item() == 0.0
    assert out["loss_box"].requires_grad and out["loss_box"].grad_fn is not None
    out["loss_box"].backward()
    assert rois.box_deltas.grad is not None and (rois.box_deltas.grad == 0).all()


def test_roi_loss_ce_vs_focal_on_model():
    m = _model()
    batch = m.preprocess([_image(64, 64)])
    feats = m.features(batch)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    s = m.sample_rois([_background_boxes(20) * 0.5], [gt], [torch.tensor([2])])
    rois = m.roi_head(feats, s.proposals, batch)
    ce = m.roi_loss(rois, s)
    m.config = replace(m.config, cls_loss="focal")
    focal = m.roi_loss(rois, s)
    labels = torch.cat(s.labels)
    torch.testing.assert_close(ce["loss_cls"], F.cross_entropy(rois.class_logits, labels))
    assert focal["loss_cls"].item() < ce["loss_cls"].item()
    torch.testing.assert_close(ce["loss_box"], focal["loss_box"])
    assert ce["loss_box"].item() > 0


# -- postprocess ----------------------------------------------------------------------------------

def test_postprocess_with_candidates():
    m = _model(detections_per_img=4, score_thresh=0.05).eval()
    batch = m.preprocess([_image(96, 96), _image(64, 80)])
    torch.manual_seed(3)
    centres = torch.tensor([[20.0, 20.0], [60.0, 30.0], [40.0, 70.0]])
    props = []
    for h, w in batch.image_sizes:
        c = centres.repeat(8, 1) + torch.randn(24, 2) * 3
        wh = torch.rand(24, 2) * 10 + 15
        props.append(torch.cat([c - wh / 2, c + wh / 2], 1).clamp(min=0, max=min(h, w)))
    feats = m.features(batch)
    rois = m.roi_head(feats, props, batch)
    dets = m.postprocess(rois, props, batch, with_candidates=True)
    plain = m.postprocess(rois, props, batch)
    nms = m.config.nms_thresh
    saw_cut = False
    for det, p, (h, w) in zip(dets, plain, batch.image_sizes):
        k = len(det.boxes)
        assert 0 < k <= 4
        assert torch.equal(det.boxes, p.boxes) and p.cluster is None and p.candidate_boxes is None
        assert (det.scores[:-1] >= det.scores[1:]).all()
        assert ((det.labels >= 0) & (det.labels < C)).all()
        assert det.class_probs.shape == (k, C + 1)
        torch.testing.assert_close(det.class_probs.sum(1), torch.ones(k))
        torch.testing.assert_close(det.class_probs[torch.arange(k), det.labels + 1], det.scores)
        assert (det.boxes[:, 0::2] >= 0).all() and (det.boxes[:, 0::2] <= w).all()
        assert (det.boxes[:, 1::2] >= 0).all() and (det.boxes[:, 1::2] <= h).all()
        cb, cs, cl, cluster = det.candidate_boxes, det.candidate_scores, det.candidate_labels, det.cluster
        assert (cs > 0.05).all() and len(cb) == len(cs) == len(cl) == len(cluster)
        if (h, w) == (96, 96):  # probabilities near 1 / (C + 1) > 0.05: every class of every RoI
            assert len(cb) == 3 * 24
        assert len(cb) > 3 * k
        # every kept detection is a candidate, and its cluster is itself
        for j in range(k):
            same = (cb == det.boxes[j]).all(1) & (cs == det.scores[j]) & (cl == det.labels[j])
            assert same.sum() == 1
            assert cluster[same].item() == j
        iou = box_iou(cb, det.boxes)
        same_cls = cl[:, None] == det.labels[None, :]
        qualifies = (iou > nms) & same_cls
        for q in range(len(cb)):
            j = cluster[q].item()
            if j >= 0:
                assert qualifies[q, j] and cs[q] <= det.scores[j]
                assert not qualifies[q, :j].any()  # the first (highest-scoring) qualifying kept box
            else:
                assert not qualifies[q].any()
                saw_cut = True
    assert saw_cut  # detections_per_img = 4 cut some NMS survivors
    # a threshold override above every probability leaves nothing
    none = m.postprocess(rois, props, batch, with_candidates=True, score_thresh=1.0)
    assert all(len(d.boxes) == 0 and len(d.candidate_boxes) == 0 and len(d.cluster) == 0 for d in none)


def test_predict_runs_in_eval():
    m = _model(detections_per_img=7).eval()
    dets = m.predict([_image(64, 64), _image(48, 80)], with_candidates=True)
    assert len(dets) == 2
    for d in dets:
        assert len(d.boxes) <= 7 and d.cluster is not None


# -- whole supervised pass ------------------------------------------------------------------------

def test_supervised_losses_with_empty_gt():
    m = _model().train()
    images = [_image(64, 64), _image(64, 64)]
    gt = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    losses = m.supervised_losses(images, gt, labels)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    # a batch with no GT at all: no positives, box losses exactly zero
    m.zero_grad()
    losses = m.supervised_losses(images, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_reg"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    sum(losses.values()).backward()


def test_overfit_one_image():
    torch.manual_seed(0)
    m = FasterRCNN(config=_config(num_classes=1, anchor_sizes=(16, 32, 64, 128, 256), roi_batch_size=32,
                                  rpn_batch_size=32))
    m.train()
    img = torch.full((3, 96, 96), 20, dtype=torch.uint8)
    img[:, 32:64, 24:60] = 230
    gt = [torch.tensor([[24.0, 32.0, 60.0, 64.0]])]
    lab = [torch.tensor([0])]
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    history = []
    for _ in range(100):
        losses = m.supervised_losses([img], gt, lab)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    start = sum(history[:3]) / 3
    end = sum(history[-5:]) / 5
    assert end < 0.5 * start, (start, end)


# -- backbones ------------------------------------------------------------------------------------

def test_backbones():
    torch.manual_seed(0)
    bb = build_backbone("resnet18", fpn_channels=64)
    assert bb.out_channels == 64
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 128, 128))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [(1, 64, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    tiny = build_backbone("tiny", fpn_channels=32)
    with torch.no_grad():
        out = tiny(torch.randn(1, 3, 128, 128))
    assert [tuple(v.shape) for v in out.values()] == [(1, 32, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="pretrained"):
        build_backbone("tiny", pretrained=True)


def test_paper_backbone_loads_imagenet_weights_frozen_bn_and_frozen_stem(monkeypatch):
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models._api import WeightsEnum
    from torchvision.ops.misc import FrozenBatchNorm2d

    reference = resnet50().state_dict()
    requested = []

    def fake_get_state_dict(self, *args, **kwargs):  # stands in for the download
        requested.append(self)
        return reference

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    backbone = build_backbone("resnet50", pretrained=True, fpn_channels=256, trainable_layers=3)
    assert requested == [ResNet50_Weights.IMAGENET1K_V1]
    body = backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    torch.testing.assert_close(body.conv1.weight, reference["conv1.weight"])
