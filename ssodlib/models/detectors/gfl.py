"""GFL: Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for Dense Object Detection
(Li et al., NeurIPS 2020, https://arxiv.org/abs/2006.04388), the one-stage detector of DTG-SSOD's Table 3c.

A trunk + FPN and one shared head over every level: two towers of ``stacked_convs`` 3x3 convolutions
(GroupNorm, ReLU), a class branch whose sigmoid score is the *joint* class-IoU score and a box branch
that predicts, for each of the four sides, a distribution over ``reg_max + 1`` integer distances (in
units of the level's stride); the box is the distributions' expectation. One square anchor per location
(side ``octave_base_scale x stride``) serves the ATSS assignment only. Stages::

    batch = det.preprocess(images)               # normalise, pad; no resizing (views did that)
    feats = det.features(batch)                  # FPN levels
    out = det.dense(feats)                       # GFLOutput: dense logits and anchors, levels concatenated
    labels, boxes = det.targets(out, gt_boxes, gt_labels)   # ATSS
    losses = det.dense_losses(out, labels, boxes)            # QFL + DFL + GIoU
    dets = det.postprocess(out, batch, with_candidates=True)

Paper parts to code:

* Quality Focal Loss, Eq. 5 (``-|y - sigma|^beta ((1 - y) log(1 - sigma) + y log sigma)``, ``y`` the IoU of
  the predicted box with its target for positives, 0 for negatives): :func:`quality_focal_loss`;
* the general distribution and its integral, Eq. 6: :func:`integral_distances`;
* Distribution Focal Loss, Eq. 7 (cross-entropy to the two bins around the target distance, weighted
  by closeness): :func:`distribution_focal_loss`;
* ATSS (Zhang et al., CVPR 2020, https://arxiv.org/abs/1912.02424), the paper's assigner:
  :func:`atss_assign`.

Facts from mmdetection's ``configs/gfl/gfl_r50_fpn_1x_coco.py``, ``mmdet/models/dense_heads/gfl_head.py``
and ``mmdet/models/losses/gfocal_loss.py`` (the paper's own values where it gives them): ResNet-50, FPN
P3-P7 (``start_level=1``, two 3x3 stride-2 convolutions on P5's output, no ReLU between them), 256
channels, 4 stacked convolutions with GroupNorm(32), one anchor per location (octave base scale 8, ratio
1, strides 8-128), a learnable scale per level on the box branch, ``reg_max = 16``, ATSS top-k 9, QFL
beta 2 (weight 1), DFL weight 0.25 with targets clamped to ``reg_max - 0.01``, GIoU weight 2; QFL
summed over every location and divided by the number of positives, GIoU and DFL weighted by each
positive's largest predicted score (detached) and divided by the sum of those weights (at least 1), DFL
also by its 4 sides; class prior 0.01; test ``nms_pre 1000`` per level, score threshold 0.05, class-wise
NMS at IoU 0.6, 100 detections. Anchor centres are at ``(x * stride, y * stride)``.

Choices of ours: GroupNorm with at most 32 groups of at least 4 channels (narrow smoke and mini heads);
the FPN convolutions keep torchvision's initialisation; ATSS with a single candidate per object uses a
standard deviation of 0 (torch's unbiased std would be NaN and drop the object).

Scales (:data:`GFL_PRESETS`, the ``detector_options``; the ``TrainConfig`` around them is the scale's
preset of :data:`ssodlib.config.PRESETS`, SGD as for Faster R-CNN):

* ``paper``: the configuration above, ResNet-50 with ImageNet weights.
* ``mini``: the embedded benchmark's pretrained tiny trunk and the mini Faster R-CNN's sizes: FPN
  P2-P6 with 64 channels and anchors of 2 x stride (8 ... 128 px, the mini RPN's), since P3-P7 with
  8 x stride anchors cannot assign the benchmark's 8 px objects; towers of 2 convolutions (64 channels)
  instead of 4, since four on P2 double the step (one thread, 2 + 2 images, a shared machine: supervised
  step 0.60 s with four, 0.29 s with two, Faster R-CNN's 0.26 s; DTG-SSOD step 1.6 s, 1.2 s and 1.1 s).
* ``smoke``: seconds, for tests.

In Python::

    config = train_config("mini", method="supervised", detector="gfl", detector_options=GFL_PRESETS["mini"])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from ssodlib.config import Rule, check_fields, check_ranges
from ssodlib.models.backbones import BACKBONES, build_backbone, resolve_trainable_layers
from ssodlib.models.detectors.base import Detections, ImageBatch, build_with_trunk, normalise_and_pad
from ssodlib.models.nms import nms_clusters, paired_iou

TRUNK_CHANNELS = {"resnet50": (256, 512, 1024, 2048), "resnet18": (64, 128, 256, 512), "tiny": (16, 32, 64, 128)}
TRUNK_STRIDES = (4, 8, 16, 32)  # C2..C5
DFL_EPS = 0.01  # distance targets stay below reg_max - 0.01, so that the right bin exists


@dataclass(frozen=True, kw_only=True)
class GFLOptions:
    """GFL's hyper-parameters, the ``detector_options`` of the ``gfl`` family (defaults: mmdetection's
    ``gfl_r50_fpn_1x_coco``)."""

    backbone: str = "resnet50"  # "resnet50" | "resnet18" | "tiny" (see models.backbones)
    pretrained: bool = False  # resnets: ImageNet weights; tiny: ssodlib.models.pretrain's (through build_detector)
    trainable_layers: int | None = None  # of (stem, stage 1..4) with pretrained weights; None: the backbone's standard
    fpn_channels: int = 256
    # 1: P3-P7 from C3-C5 and two stride-2 convolutions on P5 (GFL's); 0: P2-P6 from C2-C5 and a max-pooled
    # P6 (the repo's Faster R-CNN FPN, for small objects)
    fpn_start_level: int = 1
    stacked_convs: int = 4  # 3x3 convolutions of each tower (class, box)
    feat_channels: int = 256
    octave_base_scale: float = 8.0  # anchor side / stride (one square anchor per location; ATSS only)
    reg_max: int = 16  # distances 0..reg_max in strides (reg_max + 1 bins per side)
    atss_topk: int = 9  # candidates per level and object
    qfl_beta: float = 2.0
    qfl_weight: float = 1.0
    dfl_weight: float = 0.25
    giou_weight: float = 2.0
    prior_prob: float = 0.01  # initial sigmoid score of the class branch
    score_thresh: float = 0.05
    nms_pre: int = 1000  # (location, class) pairs kept per level before NMS at test
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisible: int = 32

    def check(self) -> None:
        """Raise ``InputError`` for a value of the wrong type, outside its range or not a choice."""
        check_fields(self, what="detector option")
        check_ranges(self, GFL_RULES, what="detector option")

    def resolved(self) -> "GFLOptions":
        """The same options with ``trainable_layers=None`` spelt out as the backbone's standard."""
        return replace(self, trainable_layers=resolve_trainable_layers(self.backbone, self.trainable_layers))

    @property
    def strides(self) -> tuple[int, ...]:
        """The five FPN levels' strides."""
        first = TRUNK_STRIDES[self.fpn_start_level]
        return tuple(first * 2 ** i for i in range(5))


_FRACTION, _NON_NEGATIVE = Rule(low=0, high=1), Rule(low=0)
GFL_RULES: dict[str, Rule] = {
    "backbone": Rule(choices=BACKBONES), "trainable_layers": Rule(low=0, high=5), "fpn_channels": Rule(low=1),
    "fpn_start_level": Rule(low=0, high=1), "stacked_convs": _NON_NEGATIVE, "feat_channels": Rule(low=1),
    "octave_base_scale": Rule(low=0, open_low=True), "reg_max": Rule(low=1), "atss_topk": Rule(low=1),
    "qfl_beta": _NON_NEGATIVE, "qfl_weight": _NON_NEGATIVE, "dfl_weight": _NON_NEGATIVE, "giou_weight": _NON_NEGATIVE,
    "prior_prob": Rule(low=0, high=0.999, open_low=True), "score_thresh": _FRACTION, "nms_pre": Rule(low=1),
    "nms_thresh": _FRACTION, "detections_per_img": Rule(low=1), "size_divisible": Rule(low=1),
}


# -- maths (pure functions) -----------------------------------------------------------------------
def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, *, beta: float = 2.0) -> Tensor:
    """QFL (Eq. 5) of ``(N, C)`` class logits: every logit is pushed to 0 with weight ``sigma^beta``,
    except each positive's own class, pushed to its soft target ``scores[i]`` (the IoU) with weight
    ``|scores[i] - sigma|^beta``. ``labels`` ``(N,)``: the class ``0..C-1`` of a positive, any other
    value (e.g. -1) for a negative. Returns ``(N,)``, summed over classes."""
    logits = logits.float()
    sigma = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * sigma.pow(beta)
    pos = torch.where((labels >= 0) & (labels < logits.shape[1]))[0]
    if len(pos):
        cls = labels[pos].long()
        target = scores[pos].to(logits)
        pos_logits = logits[pos, cls]
        pos_loss = (F.binary_cross_entropy_with_logits(pos_logits, target, reduction="none")
                    * (target - sigma[pos, cls]).abs().pow(beta))
        loss = loss.index_put((pos, cls), pos_loss)
    return loss.sum(1)


def integral_distances(logits: Tensor) -> Tensor:
    """Eq. 6: the expectation of the ``(..., n + 1)`` distribution logits over the bins ``0..n``: ``(...)``."""
    bins = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    return (logits.float().softmax(-1) * bins).sum(-1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """DFL (Eq. 7) of ``(N, n + 1)`` distribution logits toward ``(N,)`` float distances ``y`` (in bins):
    ``-((y_r - y) log S_l + (y - y_l) log S_r)`` with ``y_l = floor(y)``, ``y_r = y_l + 1``. ``y`` is clamped
    to ``[0, n - 0.01]`` first, so that ``y_r`` is a bin. Returns ``(N,)``."""
    n = logits.shape[-1] - 1
    y = target.float().clamp(0, n - DFL_EPS)
    left = y.long()
    right = left + 1
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.gather(1, left[:, None])[:, 0] * (right.float() - y)
             + logp.gather(1, right[:, None])[:, 0] * (y - left.float()))


def box_distances(points: Tensor, boxes: Tensor, strides: Tensor, *, reg_max: int) -> Tensor:
    """``(N, 4)`` distances (left, top, right, bottom) from ``(N, 2)`` points to the sides of ``(N, 4)``
    boxes, in units of each point's ``(N,)`` stride, clamped to ``[0, reg_max - 0.01]`` (the DFL targets)."""
    d = torch.stack([points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1],
                     boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]], 1)
    return (d / strides[:, None]).clamp(0, reg_max - DFL_EPS)


def distances_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """``(N, 4)`` boxes from ``(N, 2)`` points and ``(N, 4)`` pixel distances (left, top, right, bottom)."""
    return torch.cat([points - distances[:, :2], points + distances[:, 2:]], 1)


def atss_assign(anchors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, *, topk: int = 9) -> Tensor:
    """ATSS: for each object, the ``topk`` anchors of each level closest to its centre are candidates;
    those whose IoU with it reaches the mean + standard deviation of the candidates' IoUs and whose centre
    lies inside it (by more than 0.01 px) are its positives; an anchor positive for several objects takes
    the one of largest IoU.

    Args:
        anchors: ``(M, 4)`` all levels concatenated; num_per_level: anchors per level; gt_boxes: ``(K, 4)``.
    Returns:
        ``(M,)`` int64 index of each anchor's object, -1 for background.
    """
    m, k = len(anchors), len(gt_boxes)
    assigned = torch.full((m,), -1, dtype=torch.int64, device=anchors.device)
    if k == 0 or m == 0:
        return assigned
    gt = gt_boxes.to(anchors)
    iou = box_iou(anchors, gt)  # (M, K)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt[:, :2] + gt[:, 2:]) / 2
    distance = torch.cdist(centres, gt_centres)  # (M, K)
    candidates, start = [], 0
    for n in num_per_level:
        if n:
            candidates.append(distance[start:start + n].topk(min(topk, n), dim=0, largest=False).indices + start)
        start += n
    cand = torch.cat(candidates)  # (k * L, K)
    cand_iou = iou.gather(0, cand)
    std = cand_iou.std(0) if len(cand) > 1 else torch.zeros_like(cand_iou[0])
    positive = cand_iou >= (cand_iou.mean(0) + std)[None]
    c = centres[cand]  # (k * L, K, 2)
    inside = torch.stack([c[..., 0] - gt[:, 0], c[..., 1] - gt[:, 1], gt[:, 2] - c[..., 0], gt[:, 3] - c[..., 1]],
                         -1).amin(-1) > 0.01
    positive &= inside
    best = torch.full((m, k), -1.0, device=anchors.device)  # IoU of the objects each anchor is positive for
    obj = torch.arange(k, device=anchors.device).expand_as(cand)
    best[cand[positive], obj[positive]] = cand_iou[positive]
    top, index = best.max(1)
    return torch.where(top >= 0, index, assigned)


# -- modules --------------------------------------------------------------------------------------
def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 4 channels (a group of one channel on a 1 x 1 level
    has no variance): mmdetection's GN(32) at 256 channels."""
    groups = max(g for g in range(1, max(1, min(32, channels // 4)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _P6P7(ExtraFPNBlock):
    """Two 3x3 stride-2 convolutions on P5's output (mmdetection's ``add_extra_convs='on_output'``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1])
        return [*results, p6, self.p7(p6)], [*names, "p6", "p7"]


class GFLBackbone(nn.Module):
    """A trunk of :mod:`ssodlib.models.backbones` (its trainable-layer rule and the tiny trunk's pretrained
    file) and an FPN over C2-C5 (``start_level`` 0: the repo's FPN with its max-pooled P6) or C3-C5 (1:
    with two extra stride-2 convolutions): ``forward(x) -> {name: (B, fpn_channels, H/s, W/s)}``, five levels."""

    def __init__(self, *, name: str, pretrained: bool, trainable_layers: int | None, weights: str | None,
                 fpn_channels: int, start_level: int) -> None:
        super().__init__()
        net = build_backbone(name, pretrained=pretrained, fpn_channels=fpn_channels, trainable_layers=trainable_layers,
                             weights=weights)
        self.tiny = name == "tiny"
        self.start_level = start_level
        if start_level == 0:
            self.fpn = net.fpn
        else:
            self.fpn = FeaturePyramidNetwork(list(TRUNK_CHANNELS[name][start_level:]), fpn_channels,
                                             extra_blocks=_P6P7(fpn_channels))
        del net.fpn
        self.body = net if self.tiny else net.body  # TinyBackbone (trunk only) / IntermediateLayerGetter

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body.trunk(x) if self.tiny else self.body(x)  # '0'..'3': C2..C5
        return self.fpn(OrderedDict((k, v) for i, (k, v) in enumerate(feats.items()) if i >= self.start_level))


class GFLHead(nn.Module):
    """The shared head: class and box towers, ``(B, C, H, W)`` class logits and ``(B, 4 (n + 1), H, W)``
    distribution logits per level (sides left, top, right, bottom, each its ``n + 1`` bins), the box
    logits times a learnable per-level scale."""

    def __init__(self, *, in_channels: int, feat_channels: int, stacked_convs: int, num_classes: int, reg_max: int,
                 num_levels: int, prior_prob: float) -> None:
        super().__init__()

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(stacked_convs):
                layers += [nn.Conv2d(in_channels if i == 0 else feat_channels, feat_channels, 3, 1, 1, bias=False),
                           _group_norm(feat_channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_convs, self.reg_convs = tower(), tower()
        out = feat_channels if stacked_convs else in_channels
        self.gfl_cls = nn.Conv2d(out, num_classes, 3, 1, 1)
        self.gfl_reg = nn.Conv2d(out, 4 * (reg_max + 1), 3, 1, 1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cls, reg = [], []
        for level, x in enumerate(feats):
            cls.append(self.gfl_cls(self.cls_convs(x)))
            reg.append(self.gfl_reg(self.reg_convs(x)) * self.scales[level])
        return cls, reg


@dataclass
class GFLOutput:
    """Dense head outputs of a batch, levels concatenated in the order ``level, y, x``: ``cls_logits``
    ``(B, M, C)``, ``reg_logits`` ``(B, M, 4, n + 1)`` (float32), and for the padded batch (the same for
    every image) ``anchors`` ``(M, 4)``, ``strides`` ``(M,)``, ``num_per_level``, ``level_sizes``
    ``[(H_l, W_l)]`` and ``level_strides``. Location ``(y, x)`` of level ``l`` is centred at
    ``(x * stride, y * stride)``; its anchor has side ``octave_base_scale * stride``."""

    cls_logits: Tensor
    reg_logits: Tensor
    anchors: Tensor
    strides: Tensor
    num_per_level: list[int]
    level_sizes: list[tuple[int, int]]
    level_strides: tuple[int, ...]

    @property
    def points(self) -> Tensor:
        """``(M, 2)`` the locations' centres (x, y)."""
        return (self.anchors[:, :2] + self.anchors[:, 2:]) / 2

    def select(self, images: slice) -> "GFLOutput":
        """The outputs of a contiguous range of images of the batch."""
        return replace(self, cls_logits=self.cls_logits[images], reg_logits=self.reg_logits[images])


def _zero(*tensors: Tensor) -> Tensor:
    """A zero that keeps the graph connected (DDP needs every parameter to receive a gradient)."""
    return sum(t.sum() for t in tensors) * 0.0


class GFL(nn.Module):
    """GFL whose stages are methods; see the module docstring."""

    def __init__(self, *, options: GFLOptions, num_classes: int, trunk_weights: str | None = None,
                 pretrained: bool | None = None) -> None:
        super().__init__()
        o = options
        self.options = o
        self._num_classes = num_classes
        self.backbone = GFLBackbone(name=o.backbone, pretrained=o.pretrained if pretrained is None else pretrained,
                                    trainable_layers=o.trainable_layers, weights=trunk_weights,
                                    fpn_channels=o.fpn_channels, start_level=o.fpn_start_level)
        self.head = GFLHead(in_channels=o.fpn_channels, feat_channels=o.feat_channels, stacked_convs=o.stacked_convs,
                            num_classes=num_classes, reg_max=o.reg_max, num_levels=len(o.strides),
                            prior_prob=o.prior_prob)
        self.register_buffer("pixel_mean", torch.tensor(o.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(o.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def finest_anchor_size(self) -> float:
        """The anchor side of the finest level (the ``S`` of DTG-SSOD's FPN-level rule)."""
        return self.options.octave_base_scale * self.options.strides[0]

    # -- input ----------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Tensor]) -> ImageBatch:
        """Normalise ``(3, h, w)`` uint8 (or 0-255 float) images and pad them into one batch."""
        return normalise_and_pad(images, mean=self.pixel_mean, std=self.pixel_std,
                                 size_divisible=self.options.size_divisible)

    def features(self, batch: ImageBatch) -> list[Tensor]:
        return list(self.backbone(batch.tensors).values())

    # -- head -----------------------------------------------------------------------------------
    def dense(self, features: Sequence[Tensor]) -> GFLOutput:
        """The head on the FPN levels, flattened and concatenated, with the batch's anchors."""
        o = self.options
        cls, reg = self.head(features)
        b, c, n = cls[0].shape[0], self.num_classes, o.reg_max + 1
        anchors, strides, sizes = [], [], []
        for x, stride in zip(cls, o.strides):
            h, w = x.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32) * stride,
                                    torch.arange(w, device=x.device, dtype=torch.float32) * stride, indexing="ij")
            centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
            half = o.octave_base_scale * stride / 2
            anchors.append(torch.cat([centres - half, centres + half], 1))
            strides.append(torch.full((h * w,), float(stride), device=x.device))
            sizes.append((h, w))
        return GFLOutput(torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, c) for x in cls], 1),
                         torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4, n) for x in reg], 1).float(),
                         torch.cat(anchors), torch.cat(strides), [h * w for h, w in sizes], sizes, o.strides)

    def decode(self, out: GFLOutput) -> Tensor:
        """``(B, M, 4)`` predicted boxes in float32 (the distributions' expectations times the stride)."""
        dist = integral_distances(out.reg_logits) * out.strides[None, :, None]
        b, m = dist.shape[:2]
        points = out.points[None].expand(b, m, 2).reshape(-1, 2)
        return distances_to_boxes(points, dist.reshape(-1, 4)).reshape(b, m, 4)

    # -- training -------------------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, out: GFLOutput, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """ATSS: location labels ``(B, M)`` (0 background, ``1..C`` class + 1) and target boxes ``(B, M, 4)``."""
        labels, boxes = [], []
        for gt, lab in zip(gt_boxes, gt_labels):
            gt = gt.to(out.anchors).reshape(-1, 4)
            index = atss_assign(out.anchors, out.num_per_level, gt, topk=self.options.atss_topk)
            fg = index >= 0
            labels.append(torch.where(fg, lab.to(index.device).long()[index.clamp(min=0)] + 1, 0) if len(gt)
                          else torch.zeros_like(index))
            boxes.append(gt[index.clamp(min=0)] if len(gt) else torch.zeros_like(out.anchors))
        return torch.stack(labels), torch.stack(boxes)

    def dense_losses(self, out: GFLOutput, labels: Tensor, target_boxes: Tensor, *,
                     quality: Tensor | None = None) -> dict[str, Tensor]:
        """GFL's losses on given location targets: ``labels`` ``(B, M)`` (-1 ignored, 0 background,
        ``1..C`` class + 1), ``target_boxes`` ``(B, M, 4)`` pixels (read at the foreground); ``quality``
        ``(B, M)`` the QFL targets of the foreground (``None``: the IoU of each predicted box with its
        target, GFL's). QFL over every location not ignored / the number of positives (at least 1);
        GIoU and DFL of the positives, weighted by their largest predicted score (detached) / the sum
        of those weights (at least 1); DFL also / 4."""
        o = self.options
        cls, reg = out.cls_logits, out.reg_logits
        valid, pos = labels >= 0, labels > 0
        num_pos = int(pos.sum())
        if num_pos:
            b_idx, m_idx = torch.where(pos)
            points, strides = out.points[m_idx], out.strides[m_idx]
            pos_reg = reg[b_idx, m_idx]  # (P, 4, n + 1)
            pred = distances_to_boxes(points, integral_distances(pos_reg) * strides[:, None])
            target = target_boxes[b_idx, m_idx].float()
            score = paired_iou(pred.detach(), target) if quality is None else quality[b_idx, m_idx].float()
            weight = cls[b_idx, m_idx].detach().float().sigmoid().amax(1)
            norm = weight.sum().clamp(min=1.0)
            loss_bbox = (generalized_box_iou_loss(pred, target, reduction="none") * weight).sum() / norm
            dist = box_distances(points, target, strides, reg_max=o.reg_max)
            dfl = distribution_focal_loss(pos_reg.reshape(-1, o.reg_max + 1), dist.reshape(-1))
            loss_dfl = (dfl * weight.repeat_interleave(4)).sum() / 4.0 / norm
            scores = torch.zeros(labels.shape, device=cls.device)
            scores[b_idx, m_idx] = score.to(scores)
        else:
            scores = torch.zeros(labels.shape, device=cls.device)
            loss_bbox = loss_dfl = _zero(reg)
        qfl = quality_focal_loss(cls[valid], labels[valid] - 1, scores[valid], beta=o.qfl_beta)
        loss_cls = qfl.sum() / max(num_pos, 1) if qfl.numel() else _zero(cls)
        return {"loss_cls": o.qfl_weight * loss_cls, "loss_bbox": o.giou_weight * loss_bbox,
                "loss_dfl": o.dfl_weight * loss_dfl}

    def head_losses(self, out: GFLOutput, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """GFL's losses toward ``(K, 4)`` boxes / ``(K,)`` labels per image (ATSS, then :meth:`dense_losses`)."""
        return self.dense_losses(out, *self.targets(out, gt_boxes, gt_labels))

    def supervised_losses(self, images: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                          gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        batch = self.preprocess(images)
        return self.head_losses(self.dense(self.features(batch)), gt_boxes, gt_labels)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, out: GFLOutput, batch: ImageBatch, *, with_candidates: bool = False,
                    score_thresh: float | None = None) -> list[Detections]:
        """Per level the (location, class) pairs whose sigmoid score exceeds the threshold, at most
        ``nms_pre`` of them; boxes clipped to the image; class-wise NMS and the top ``detections_per_img``.
        ``class_probs`` are ``[1 - max_c s_c, s_1..s_C]`` of the location (the interface's ``(K, C + 1)``),
        ``extra["locations"]`` its index in ``M``; with candidates, every pair kept before NMS and the
        kept detection that suppressed (or is) each."""
        o = self.options
        thresh = o.score_thresh if score_thresh is None else score_thresh
        probs_all = out.cls_logits.detach().float().sigmoid()
        boxes_all = self.decode(out)
        c = probs_all.shape[-1]
        result = []
        for probs, boxes, size in zip(probs_all, boxes_all, batch.image_sizes):
            locs, labels, scores, start = [], [], [], 0
            for n in out.num_per_level:
                flat = probs[start:start + n].reshape(-1)
                cand = torch.where(flat > thresh)[0]
                if len(cand) > o.nms_pre:
                    cand = cand[flat[cand].topk(o.nms_pre).indices]
                locs.append(cand // c + start); labels.append(cand % c); scores.append(flat[cand])
                start += n
            loc, lab, sc = torch.cat(locs), torch.cat(labels), torch.cat(scores)
            bx = clip_boxes_to_image(boxes[loc], size)
            ok = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
            loc, lab, sc, bx = loc[ok], lab[ok], sc[ok], bx[ok]
            keep = batched_nms(bx, sc, lab, o.nms_thresh)[: o.detections_per_img]
            p = probs[loc]
            class_probs = torch.cat([1 - p.amax(1, keepdim=True), p], 1)
            det = Detections(bx[keep], sc[keep], lab[keep], class_probs[keep], extra={"locations": loc[keep]})
            if with_candidates:
                det.candidate_boxes, det.candidate_scores, det.candidate_labels = bx, sc, lab
                det.cluster = nms_clusters(bx, lab, keep, o.nms_thresh)
            result.append(det)
        return result

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], *, with_candidates: bool = False) -> list[Detections]:
        batch = self.preprocess(images)
        return self.postprocess(self.dense(self.features(batch)), batch, with_candidates=with_candidates)


def build_gfl(options: GFLOptions, num_classes: int, *, trunk_weights: str | None, from_checkpoint: bool) -> GFL:
    """The ``gfl`` entry of ``DETECTOR_FAMILIES`` (see :func:`build_with_trunk`)."""
    return build_with_trunk(GFL, options, num_classes, trunk_weights=trunk_weights, from_checkpoint=from_checkpoint)


# -- scales ---------------------------------------------------------------------------------------------
GFL_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(backbone="tiny", pretrained=False, fpn_channels=32, fpn_start_level=0, stacked_convs=2,
                  feat_channels=32, octave_base_scale=2.0, nms_pre=200, detections_per_img=100),
    # the mini Faster R-CNN's trunk, FPN width and anchor sizes (8 ... 128 px on P2-P6); 2-conv towers (cost)
    "mini": dict(backbone="tiny", pretrained=True, fpn_channels=64, fpn_start_level=0, stacked_convs=2,
                 feat_channels=64, octave_base_scale=2.0, nms_pre=1000, detections_per_img=100),
    # mmdetection's gfl_r50_fpn_1x_coco, every value named
    "paper": dict(backbone="resnet50", pretrained=True, trainable_layers=3, fpn_channels=256, fpn_start_level=1,
                  stacked_convs=4, feat_channels=256, octave_base_scale=8.0, reg_max=16, atss_topk=9, qfl_beta=2.0,
                  qfl_weight=1.0, dfl_weight=0.25, giou_weight=2.0, prior_prob=0.01, score_thresh=0.05, nms_pre=1000,
                  nms_thresh=0.6, detections_per_img=100),
}


__all__ = ["GFL", "GFLBackbone", "GFLHead", "GFLOptions", "GFLOutput", "GFL_PRESETS", "GFL_RULES", "atss_assign",
           "box_distances", "build_gfl", "distances_to_boxes", "distribution_focal_loss", "integral_distances",
           "quality_focal_loss"]
