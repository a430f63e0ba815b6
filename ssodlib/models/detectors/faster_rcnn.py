"""Faster R-CNN + FPN from torchvision parts, with every stage exposed.

Semi-supervised methods reach inside the detector: they need the RPN's dense outputs, the RoI head
run on proposals of their choice (the teacher's, the student's, pooled from one chosen FPN level),
and the candidates that NMS suppressed. So instead of ``model(images, targets)`` the detector is a
set of stages:

    batch = det.preprocess(images)                 # normalise, pad; no resizing (views did that)
    feats = det.features(batch)                    # FPN levels
    rpn = det.rpn(feats, batch)                    # dense objectness / deltas / anchors
    props, _ = det.proposals(rpn, batch)           # per-image (P, 4)
    rois = det.roi_head(feats, props, level=None)  # class logits, box deltas, RoI features
    dets = det.postprocess(rois, props, batch, with_candidates=True)

Boxes are ``x1, y1, x2, y2`` pixels in the (view's) input image. Class labels are ``0..C-1`` at the
interface; the RoI classifier has ``C + 1`` outputs with background at index 0.

Two box heads (``box_head``): ``"regression"`` (class-specific deltas, smooth-L1 or GIoU; the
standard) and ``"side_classification"`` (Rethinking Pseudo Labels' localisation as classification,
:mod:`ssodlib.models.side_buckets`: class-agnostic bins and offsets per side, whose top-bin
probabilities give each detection a localisation quality ``v``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from ssodlib.config import Rule, check_fields, check_ranges
from ssodlib.io import InputError
from ssodlib.models.backbones import BACKBONES, FPN_STRIDES, build_backbone, resolve_trainable_layers
from ssodlib.models.detectors.base import Detections, ImageBatch, normalise_and_pad
from ssodlib.models.losses import box_regression_loss, softmax_focal_loss
from ssodlib.models.nms import nms_clusters
from ssodlib.models.roi_align import MultiScaleRoIAlign, roi_align
from ssodlib.models.side_buckets import (BIN_LOSSES, SideBucketPredictor, decode_sides, encode_sides, side_losses,
                                        side_quality, split_side_outputs)


@dataclass(frozen=True, kw_only=True)
class FasterRCNNOptions:
    """Faster R-CNN hyper-parameters, the ``detector_options`` of the ``faster_rcnn`` family
    (torchvision / mmdetection defaults unless noted)."""

    backbone: str = "resnet50"  # "resnet50" | "resnet18" | "tiny" (see models.backbones)
    pretrained: bool = False  # resnets: ImageNet weights; tiny: ssodlib.models.pretrain's (built on first use)
    trainable_layers: int | None = None  # with pretrained weights, of (stem, stage 1..4): 3 freezes stem and
    # stage 1, 5 nothing; None: the backbone's standard (ResNets: 3; tiny: 5, see backbones.STANDARD_TRAINABLE_LAYERS)
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one size per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000)  # (train, test), per level
    rpn_post_nms_top_n: tuple[int, int] = (1000, 1000)
    rpn_nms_thresh: float = 0.7
    rpn_iou_thresholds: tuple[float, float] = (0.3, 0.7)
    rpn_batch_size: int = 256
    rpn_positive_fraction: float = 0.5
    roi_iou_threshold: float = 0.5
    roi_batch_size: int = 512
    roi_positive_fraction: float = 0.25
    representation_size: int = 1024
    roi_sampling_ratio: int = 2  # bilinear samples per bin side; RoIAlign's backward dominates CPU steps
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    cls_loss: str = "ce"  # "ce" or "focal"
    focal_gamma: float = 1.5
    box_loss: str = "smooth_l1"  # "smooth_l1" or "giou" (the regression head's)
    # "regression": class-specific deltas; "side_classification": class-agnostic side bins + offsets
    # (models.side_buckets; Rethinking Pseudo Labels, Sec. 2.2)
    box_head: str = "regression"
    side_bins: int = 30  # K, bins per side (Rethinking Pseudo Labels' value)
    side_segment_scale: float = 1.0  # a side's segment length / the RoI's extent on that axis
    # side head: the detection score is p * v ("product", the paper's certainty-aware score, as SABL's
    # NMS score) or p ("cls"); it is what the score threshold, NMS and ``Detections.scores`` see
    side_score: str = "product"
    # side head: "softmax" cross-entropy over a side's bins (v: top softmax probability) or "sigmoid"
    # one-hot binary cross-entropy (SABL's; v: top sigmoid probability); see models.side_buckets
    side_bin_loss: str = "softmax"
    # side head: a side's v also counts the second bin's probability when it neighbours the top one (SABL)
    side_neighbor_rescoring: bool = False
    # side head: refine each side within its top bin by the regressed offset (Eq. 5, the paper's); False:
    # classification only, the side at its bin's centre and no offset loss (the middle box head)
    side_refinement: bool = True
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisible: int = 32

    def check(self) -> None:
        """Raise ``InputError`` for a value of the wrong type, outside its range or not a choice."""
        check_fields(self, what="detector option")
        check_ranges(self, FASTER_RCNN_RULES, what="detector option")
        if len(self.anchor_sizes) != len(FPN_STRIDES):
            raise InputError(f"detector option anchor_sizes={self.anchor_sizes} has {len(self.anchor_sizes)} sizes; "
                             f"the FPN has {len(FPN_STRIDES)} levels (P2..P6). Fix: give one size per level.")
        if self.box_head == "side_classification" and self.box_loss != "smooth_l1":
            raise InputError(f"detector option box_loss={self.box_loss!r} is the regression head's; the "
                             "side-classification head trains its offsets with smooth-L1. Fix: drop box_loss or "
                             "use box_head='regression'.")

    def resolved(self) -> "FasterRCNNOptions":
        """The same options with ``trainable_layers=None`` spelt out as the backbone's standard."""
        return replace(self, trainable_layers=resolve_trainable_layers(self.backbone, self.trainable_layers))


_FRACTION = Rule(low=0, high=1)
BOX_HEADS = ("regression", "side_classification")
FASTER_RCNN_RULES = {
    "backbone": Rule(choices=BACKBONES), "cls_loss": Rule(choices=("ce", "focal")),
    "box_loss": Rule(choices=("smooth_l1", "giou")), "trainable_layers": Rule(low=0, high=5),
    "fpn_channels": Rule(low=1), "anchor_sizes": Rule(low=0, open_low=True), "rpn_pre_nms_top_n": Rule(low=1),
    "rpn_post_nms_top_n": Rule(low=1), "rpn_nms_thresh": _FRACTION, "rpn_iou_thresholds": _FRACTION,
    "rpn_batch_size": Rule(low=1), "rpn_positive_fraction": _FRACTION, "roi_iou_threshold": _FRACTION,
    "roi_batch_size": Rule(low=1), "roi_positive_fraction": _FRACTION, "representation_size": Rule(low=1),
    "roi_sampling_ratio": Rule(low=0), "score_thresh": _FRACTION, "nms_thresh": _FRACTION,
    "detections_per_img": Rule(low=1), "focal_gamma": Rule(low=0), "size_divisible": Rule(low=1),
    "box_head": Rule(choices=BOX_HEADS), "side_bins": Rule(low=2), "side_segment_scale": Rule(low=0, open_low=True),
    "side_score": Rule(choices=("product", "cls")), "side_bin_loss": Rule(choices=BIN_LOSSES),
}


@dataclass(frozen=True, kw_only=True)
class DetectorConfig(FasterRCNNOptions):
    """A Faster R-CNN's options with what a built model needs besides: its classes and, optionally, a
    state-dict file for the backbone (see ``build_backbone``)."""

    num_classes: int
    backbone_weights: str | None = None


@dataclass
class RPNOutput:
    """Dense RPN outputs. ``objectness[l]`` ``(B, A, H_l, W_l)`` logits, ``deltas[l]`` ``(B, 4A, H_l, W_l)``,
    ``anchors[b]`` ``(M, 4)`` for all levels of image ``b``; ``flat()`` gives ``(B, M)`` and ``(B, M, 4)``."""

    objectness: list[Tensor]
    deltas: list[Tensor]
    anchors: list[Tensor]
    num_anchors_per_level: list[int]

    def flat(self) -> tuple[Tensor, Tensor]:
        obj, deltas = concat_box_prediction_layers(self.objectness, self.deltas)
        b = len(self.anchors)
        return obj.reshape(b, -1), deltas.reshape(b, -1, 4)

    def select(self, images: slice) -> "RPNOutput":
        """The outputs of a contiguous range of images of the batch."""
        return RPNOutput([o[images] for o in self.objectness], [d[images] for d in self.deltas],
                         self.anchors[images], self.num_anchors_per_level)


@dataclass
class RoIOutput:
    """RoI head outputs for ``R`` RoIs (all images, in order): ``class_logits`` ``(R, C + 1)``,
    ``box_deltas`` ``(R, 4 (C + 1))`` (the regression head) or ``(R, 8K)`` side outputs (the
    side-classification head: bin logits then offsets, see ``FasterRCNN.side_outputs``),
    ``features`` ``(R, D)``; ``counts`` RoIs per image."""

    class_logits: Tensor
    box_deltas: Tensor
    features: Tensor
    counts: list[int]

    def select(self, images: slice) -> "RoIOutput":
        """The RoIs of a contiguous range of images."""
        start, stop, _ = images.indices(len(self.counts))
        lo, hi = sum(self.counts[:start]), sum(self.counts[:stop])
        return RoIOutput(self.class_logits[lo:hi], self.box_deltas[lo:hi], self.features[lo:hi],
                         self.counts[start:stop])


@dataclass
class RoISamples:
    """Sampled training RoIs per image: ``proposals[b]`` ``(S, 4)``, ``labels[b]`` ``(S,)`` with 0 =
    background and ``1..C`` classes, ``matched_boxes[b]`` ``(S, 4)``, ``matched_index[b]`` ``(S,)``
    (index of the matched target, -1 for background)."""

    proposals: list[Tensor]
    labels: list[Tensor]
    matched_boxes: list[Tensor]
    matched_index: list[Tensor]

    def select(self, images: slice) -> "RoISamples":
        return RoISamples(self.proposals[images], self.labels[images], self.matched_boxes[images],
                          self.matched_index[images])


def _zero(*tensors: Tensor) -> Tensor:
    """A zero that keeps the graph connected (DDP needs every parameter to receive a gradient)."""
    return sum(t.sum() for t in tensors) * 0.0


class FasterRCNN(nn.Module):
    """Faster R-CNN + FPN whose stages are methods; see the module docstring."""

    def __init__(self, *, config: DetectorConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.backbone = build_backbone(c.backbone, pretrained=c.pretrained, fpn_channels=c.fpn_channels,
                                       trainable_layers=c.trainable_layers, weights=c.backbone_weights)
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in c.anchor_sizes),
                                                (tuple(c.aspect_ratios),) * len(c.anchor_sizes))
        self.rpn_head = RPNHead(c.fpn_channels, len(c.aspect_ratios))
        self.roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7,
                                           sampling_ratio=c.roi_sampling_ratio)
        self.box_head = TwoMLPHead(c.fpn_channels * 49, c.representation_size)
        if c.box_head == "side_classification":
            self.box_predictor = SideBucketPredictor(in_channels=c.representation_size, num_classes=c.num_classes + 1,
                                                     num_bins=c.side_bins, bin_loss=c.side_bin_loss)
        else:
            self.box_predictor = FastRCNNPredictor(c.representation_size, c.num_classes + 1)
        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.roi_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.rpn_matcher = Matcher(c.rpn_iou_thresholds[1], c.rpn_iou_thresholds[0], allow_low_quality_matches=True)
        self.roi_matcher = Matcher(c.roi_iou_threshold, c.roi_iou_threshold, allow_low_quality_matches=False)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # -- input ----------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Tensor]) -> ImageBatch:
        """Normalise ``(3, h, w)`` uint8 (or 0-255 float) images and pad them into one batch."""
        return normalise_and_pad(images, mean=self.pixel_mean, std=self.pixel_std,
                                 size_divisible=self.config.size_divisible)

    def features(self, batch: ImageBatch) -> dict[str, Tensor]:
        return self.backbone(batch.tensors)

    # -- RPN ------------------------------------------------------------------------------------
    def rpn(self, features: dict[str, Tensor], batch: ImageBatch) -> RPNOutput:
        feats = list(features.values())
        objectness, deltas = self.rpn_head(feats)
        anchors = self.anchor_generator(batch.image_list(), feats)
        per_level = [o[0].numel() for o in objectness]
        return RPNOutput(objectness, deltas, anchors, per_level)

    def proposals(self, rpn: RPNOutput, batch: ImageBatch) -> tuple[list[Tensor], list[Tensor]]:
        """Top-scoring decoded anchors per level, clipped, NMS per level: per-image ``(P, 4)`` boxes and
        ``(P,)`` objectness probabilities (no gradient)."""
        c = self.config
        phase = int(not self.training)  # 0: train, 1: test
        obj, deltas = rpn.flat()
        obj = obj.detach()
        # float32: BoxCoder decodes in the deltas' dtype, and bf16 would quantise boxes to 4-8 px at COCO sizes
        boxes = self.rpn_coder.decode(deltas.detach().float().reshape(-1, 4), rpn.anchors)
        boxes = boxes.reshape(obj.shape[0], -1, 4)
        out_boxes, out_scores = [], []
        for b, (size, bx, sc) in enumerate(zip(batch.image_sizes, boxes, obj)):
            cand, scores, levels = [], [], []
            for lvl, (bl, sl) in enumerate(zip(bx.split(rpn.num_anchors_per_level), sc.split(rpn.num_anchors_per_level))):
                k = min(c.rpn_pre_nms_top_n[phase], sl.numel())
                top = sl.topk(k).indices
                cand.append(bl[top]); scores.append(sl[top]); levels.append(torch.full((k,), lvl, device=sl.device))
            bl, sl, lv = torch.cat(cand), torch.cat(scores).sigmoid(), torch.cat(levels)
            bl = clip_boxes_to_image(bl, size)
            keep = remove_small_boxes(bl, 1e-3)
            bl, sl, lv = bl[keep], sl[keep], lv[keep]
            keep = batched_nms(bl, sl, lv, c.rpn_nms_thresh)[: c.rpn_post_nms_top_n[phase]]
            out_boxes.append(bl[keep]); out_scores.append(sl[keep])
        return out_boxes, out_scores

    def rpn_targets(self, rpn: RPNOutput, gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Anchor labels ``(B, M)`` (1 fg, 0 bg, -1 ignored) and regression targets ``(B, M, 4)``."""
        labels, targets = [], []
        for anchors, gt in zip(rpn.anchors, gt_boxes):
            if gt.numel() == 0:
                labels.append(torch.zeros(len(anchors), device=anchors.device))
                targets.append(torch.zeros_like(anchors))
                continue
            idx = self.rpn_matcher(box_iou(gt.to(anchors), anchors))
            lab = (idx >= 0).float()
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            targets.append(self.rpn_coder.encode_single(gt.to(anchors)[idx.clamp(min=0)], anchors))
        return torch.stack(labels), torch.stack(targets)

    def rpn_loss(self, rpn: RPNOutput, gt_boxes: Sequence[Tensor], *, regression: bool = True) -> dict[str, Tensor]:
        """Objectness BCE over sampled anchors and smooth-L1 of positives (normalised by samples)."""
        c = self.config
        obj, deltas = rpn.flat()
        labels, targets = self.rpn_targets(rpn, gt_boxes)
        sampler = BalancedPositiveNegativeSampler(c.rpn_batch_size, c.rpn_positive_fraction)
        pos, neg = sampler(list(labels))
        pos, neg = torch.stack(pos).bool(), torch.stack(neg).bool()
        sampled = pos | neg
        n = sampled.sum().clamp(min=1)
        loss_obj = F.binary_cross_entropy_with_logits(obj[sampled].float(), labels[sampled], reduction="sum") / n
        if regression and pos.any():
            loss_reg = box_regression_loss(deltas[pos], targets[pos]) / n
        else:
            loss_reg = _zero(deltas)
        return {"loss_rpn_cls": loss_obj, "loss_rpn_reg": loss_reg}

    # -- RoI head -------------------------------------------------------------------------------
    def roi_head(self, features: dict[str, Tensor], proposals: Sequence[Tensor], batch: ImageBatch, *,
                 level: int | None = None) -> RoIOutput:
        """Run the box head on given per-image ``(P_b, 4)`` RoIs. ``level`` (2..5) pools every RoI
        from that FPN level instead of the size-based assignment."""
        proposals = [p.detach().to(batch.tensors.dtype) for p in proposals]
        if level is None:
            # the padded size: torchvision infers (and caches) level scales from the sizes it is given
            # first, and padded sizes are multiples of the largest stride, so the scales are exact
            padded = [tuple(batch.tensors.shape[-2:])] * len(proposals)
            pooled = self.roi_pool(features, proposals, padded)
        else:
            if level not in (2, 3, 4, 5):
                raise ValueError(f"FPN level must be 2..5, got {level}")
            pooled = roi_align(features[str(level - 2)], proposals, output_size=7,
                               spatial_scale=1.0 / FPN_STRIDES[level - 2],
                               sampling_ratio=self.config.roi_sampling_ratio)
        feats = self.box_head(pooled)
        logits, deltas = self.box_predictor(feats)
        return RoIOutput(logits, deltas, feats, [len(p) for p in proposals])

    def sample_rois(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], *,
                    add_gt: bool = True, batch_size: int | None = None) -> RoISamples:
        """Match proposals (plus the targets themselves when ``add_gt``) to targets at the RoI IoU
        threshold and sample ``roi_batch_size`` per image at ``roi_positive_fraction``."""
        c = self.config
        sampler = BalancedPositiveNegativeSampler(batch_size or c.roi_batch_size, c.roi_positive_fraction)
        out = RoISamples([], [], [], [])
        for props, gt, lab in zip(proposals, gt_boxes, gt_labels):
            gt = gt.to(props)
            if add_gt:
                props = torch.cat([props, gt])
            if gt.numel() == 0:
                idx = torch.full((len(props),), -1, dtype=torch.int64, device=props.device)
                labels = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                gt = props.new_zeros((1, 4))  # matched_boxes of background RoIs are never read
            else:
                idx = self.roi_matcher(box_iou(gt, props))  # equal thresholds: -1 or a target index
                labels = torch.where(idx >= 0, lab.to(props.device)[idx.clamp(min=0)] + 1, 0)
            pos, neg = sampler([torch.where(idx >= 0, 1, 0)])
            keep = torch.where(pos[0].bool() | neg[0].bool())[0]
            out.proposals.append(props[keep])
            out.labels.append(labels[keep])
            out.matched_index.append(idx[keep])
            out.matched_boxes.append(gt[idx[keep].clamp(min=0)])
        return out

    def roi_loss(self, rois: RoIOutput, samples: RoISamples, *, regression: bool = True,
                 cls_weights: Tensor | None = None) -> dict[str, Tensor]:
        """Classification (CE or focal) over sampled RoIs and the box loss of positives: class-specific
        regression, or with the side head the bin cross-entropy plus the offset smooth-L1 of
        :func:`~ssodlib.models.side_buckets.side_losses`; either summed and divided by the number
        of sampled RoIs. ``cls_weights`` ``(R,)``: per-RoI classification weights; the loss is then
        their weighted sum divided by their sum (at least 1, as Soft Teacher) instead of the mean."""
        c = self.config
        labels = torch.cat(samples.labels)
        if c.cls_loss == "focal":
            per_roi = softmax_focal_loss(rois.class_logits, labels, gamma=c.focal_gamma, reduction="none")
        elif c.cls_loss == "ce":
            per_roi = F.cross_entropy(rois.class_logits.float(), labels, reduction="none")
        else:
            raise ValueError(f"unknown classification loss {c.cls_loss!r}; choose ce or focal")
        if cls_weights is None:
            loss_cls = per_roi.mean() if per_roi.numel() else per_roi.sum()
        else:
            w = cls_weights.detach().to(per_roi)
            loss_cls = (per_roi * w).sum() / w.sum().clamp(min=1.0)
        pos = torch.where(labels > 0)[0]
        if not regression or pos.numel() == 0:
            return {"loss_cls": loss_cls, "loss_box": _zero(rois.box_deltas)}
        if c.box_head == "side_classification":
            return {"loss_cls": loss_cls, "loss_box": self._side_loss(rois, samples, pos) / max(len(labels), 1)}
        deltas = rois.box_deltas.reshape(len(labels), -1, 4)[pos, labels[pos]]
        props, gt = torch.cat(samples.proposals)[pos], torch.cat(samples.matched_boxes)[pos]
        target = self.roi_coder.encode_single(gt, props)
        pred_boxes = self.roi_coder.decode_single(deltas.float(), props) if c.box_loss == "giou" else None
        loss_box = box_regression_loss(deltas, target, kind=c.box_loss, pred_boxes=pred_boxes, target_boxes=gt)
        return {"loss_cls": loss_cls, "loss_box": loss_box / max(len(labels), 1)}

    def _side_loss(self, rois: RoIOutput, samples: RoISamples, pos: Tensor) -> Tensor:
        """Summed side-bin cross-entropy and offset loss of the positive RoIs ``pos`` (class-agnostic)."""
        c = self.config
        logits, offsets = self.side_outputs(rois)
        props, gt = torch.cat(samples.proposals)[pos], torch.cat(samples.matched_boxes)[pos]
        bins, target = encode_sides(props, gt, num_bins=c.side_bins, segment_scale=c.side_segment_scale)
        loss_bins, loss_offsets = side_losses(logits[pos], offsets[pos], bins, target, bin_loss=c.side_bin_loss)
        # without refinement the offsets are not trained; 0 * loss keeps them in the graph (DDP expects a
        # gradient for every parameter)
        return loss_bins + (loss_offsets if c.side_refinement else 0.0 * loss_offsets)

    def side_outputs(self, rois: RoIOutput) -> tuple[Tensor, Tensor]:
        """The side head's ``(R, 4, K)`` bin logits and ``(R, 4, K)`` offsets (sides left, top, right, bottom)."""
        if self.config.box_head != "side_classification":
            raise ValueError(f"side_outputs needs box_head='side_classification', not {self.config.box_head!r}")
        return split_side_outputs(rois.box_deltas, num_bins=self.config.side_bins)

    def _quality_options(self) -> dict[str, Any]:
        """How the side head scores ``v``: the keyword arguments of
        :func:`~ssodlib.models.side_buckets.side_quality` (and of ``decode_sides``)."""
        return {"bin_loss": self.config.side_bin_loss, "neighbor_rescoring": self.config.side_neighbor_rescoring}

    def localization_quality(self, bin_logits: Tensor) -> Tensor:
        """``(N,)`` localisation quality ``v`` of ``(N, 4, K)`` bin logits, as this detector scores them."""
        return side_quality(bin_logits, **self._quality_options())

    def decode_boxes_and_quality(self, rois: RoIOutput, proposals: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Boxes ``(R, C + 1, 4)`` of every RoI in float32 whatever the autocast dtype, and the side head's
        ``(R,)`` localisation quality ``v`` (``None`` for the regression head). The side head's box is
        class-agnostic: the same for every class."""
        props = torch.cat([p.detach() for p in proposals]).float()
        if self.config.box_head != "side_classification":
            return self.roi_coder.decode(rois.box_deltas.detach().float(), [props]).reshape(len(props), -1, 4), None
        logits, offsets = self.side_outputs(rois)
        offsets = offsets.detach() if self.config.side_refinement else torch.zeros_like(offsets)
        boxes, quality = decode_sides(props, logits.detach(), offsets,
                                      segment_scale=self.config.side_segment_scale, **self._quality_options())
        n = len(props)
        return boxes[:, None, :].expand(n, self.num_classes + 1, 4).contiguous(), quality

    def decode_boxes(self, rois: RoIOutput, proposals: Sequence[Tensor]) -> Tensor:
        """Boxes ``(R, C + 1, 4)`` of every RoI (class-specific, or the side head's one box per RoI
        repeated), in float32 whatever the autocast dtype."""
        return self.decode_boxes_and_quality(rois, proposals)[0]

    def _candidate_scores(self, probs: Tensor, quality: Tensor | None) -> Tensor:
        """``(n, C)`` scores of one image's RoIs per foreground class: ``p``, or ``p * v`` for the side head
        with ``side_score='product'``."""
        if quality is None or self.config.side_score == "cls":
            return probs[:, 1:]
        return probs[:, 1:] * quality[:, None]

    @torch.no_grad()
    def postprocess(self, rois: RoIOutput, proposals: Sequence[Tensor], batch: ImageBatch, *,
                    with_candidates: bool = False, score_thresh: float | None = None) -> list[Detections]:
        """Per-class score threshold, NMS and top-k, as torchvision; optionally with candidates and
        the NMS cluster of each (DTG-SSOD's inverse NMS clustering, LabelMatch's mining). With the side
        head, ``Detections.quality`` is each detection's ``v`` and the score is ``p * v`` or ``p``
        (``side_score``); ``class_probs`` stay the classifier's softmax either way."""
        c = self.config
        thresh = c.score_thresh if score_thresh is None else score_thresh
        boxes_all, quality_all = self.decode_boxes_and_quality(rois, proposals)
        boxes_all = boxes_all.float()
        probs_all = F.softmax(rois.class_logits.detach().float(), -1)
        quality_split = [None] * len(rois.counts) if quality_all is None else quality_all.split(rois.counts)
        out = []
        for boxes, probs, quality, size in zip(boxes_all.split(rois.counts), probs_all.split(rois.counts),
                                               quality_split, batch.image_sizes):
            boxes = clip_boxes_to_image(boxes[:, 1:], size)
            n, k = probs.shape[0], probs.shape[1] - 1
            labels = torch.arange(k, device=probs.device).expand(n, k).reshape(-1)
            roi_index = torch.arange(n, device=probs.device)[:, None].expand(n, k).reshape(-1)
            scores, boxes = self._candidate_scores(probs, quality).reshape(-1), boxes.reshape(-1, 4)
            cand = torch.where(scores > thresh)[0]
            cand = cand[remove_small_boxes(boxes[cand], 1e-2)]
            cb, cs, cl, ci = boxes[cand], scores[cand], labels[cand], roi_index[cand]
            keep = batched_nms(cb, cs, cl, c.nms_thresh)[: c.detections_per_img]
            det = Detections(cb[keep], cs[keep], cl[keep], probs[ci[keep]],
                             quality=None if quality is None else quality[ci[keep]])
            if with_candidates:
                det.candidate_boxes, det.candidate_scores, det.candidate_labels = cb, cs, cl
                det.cluster = nms_clusters(cb, cl, keep, c.nms_thresh)
            out.append(det)
        return out

    # -- whole passes ---------------------------------------------------------------------------
    def supervised_losses(self, images: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                          gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        batch = self.preprocess(images)
        feats = self.features(batch)
        rpn = self.rpn(feats, batch)
        props, _ = self.proposals(rpn, batch)
        samples = self.sample_rois(props, gt_boxes, gt_labels)
        rois = self.roi_head(feats, samples.proposals, batch)
        return {**self.rpn_loss(rpn, gt_boxes), **self.roi_loss(rois, samples)}

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], *, with_candidates: bool = False) -> list[Detections]:
        batch = self.preprocess(images)
        feats = self.features(batch)
        props, _ = self.proposals(self.rpn(feats, batch), batch)
        return self.postprocess(self.roi_head(feats, props, batch), props, batch, with_candidates=with_candidates)
