"""The model Deformable DETR (Zhu et al., ICLR 2021, https://arxiv.org/abs/2010.04159) and DINO (Zhang et
al., ICLR 2023, https://arxiv.org/abs/2203.03605) share, with every stage exposed as Faster R-CNN's are,
because semi-supervised methods (Semi-DETR) reach inside:

    batch = det.preprocess(images)             # normalise, pad; no resizing (views did that)
    feats = det.features(batch)                # Features: trunk levels after input projection, masks, PE
    memory = det.encode(feats)                 # Memory: encoder output (B, S, D), shapes, valid ratios
    enc = det.encoder_outputs(memory)          # two-stage: per-position class logits and proposals
    queries = det.select_queries(memory)       # the family's queries (content, reference boxes)
    out = det.decode(memory, content, boxes, self_attn_mask=mask)   # any queries, every layer
    dets = det.postprocess(out.logits[-1], out.boxes[-1], batch.image_sizes)

Boxes inside are normalised ``cxcywh`` of each **unpadded** image (:mod:`ssodlib.models.detr.boxes`);
``postprocess`` returns pixel ``xyxy`` detections of the view. Classes are ``0..C-1`` sigmoid channels (no
background channel).

Losses (:meth:`DETRBase.decoder_losses`): Hungarian matching and focal / L1 / GIoU on every decoder
layer (:mod:`ssodlib.models.detr.matcher`, :mod:`ssodlib.models.detr.losses`), keys ``loss_cls``,
``loss_bbox``, ``loss_giou`` for the last layer and ``..._d{l}`` for layer ``l`` before it, as
mmdetection names them. Inference: the top ``detections_per_img`` of queries x classes by sigmoid score,
optionally class-wise NMS (:class:`InferenceSettings`, a mutable attribute a method may change per
stage). Optimiser parameter groups: :meth:`DETRBase.parameter_groups` (backbone and sampling-offset
learning-rate multipliers; the trainer uses them).

From the authors' code: the class-bias prior 0.01, zero-initialised last box layers, Xavier-initialised
transformer weights, normal level embeddings, the per-layer loss layout. Ours: detections carry
``class_probs`` ``[1 - max_c s_c, s_1..s_C]`` (the interface's ``(K, C + 1)``) and ``extra["queries"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, roi_align

from ssodlib.config import Rule, check_fields, check_ranges
from ssodlib.io import InputError
from ssodlib.models.backbones import BACKBONES, resolve_trainable_layers
from ssodlib.models.detectors.base import Detections, ImageBatch, normalise_and_pad
from ssodlib.models.detr.attention import MultiScaleDeformableAttention
from ssodlib.models.detr.boxes import denormalize_boxes, normalize_boxes
from ssodlib.models.detr.losses import LossWeights, average_count, set_losses
from ssodlib.models.detr.matcher import Assignment, CostWeights, HungarianAssigner
from ssodlib.models.detr.transformer import (MLP, DeformableDecoder, DeformableEncoder, box_sine_embedding,
                                             encoder_proposals, refine, sine_position_encoding, valid_ratios)
from ssodlib.models.detr.trunk import Trunk, input_projection, project_levels
from ssodlib.models.nms import nms_clusters


# -- options ----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DETROptions:
    """Options both families share (defaults: plain Deformable DETR as mmdetection configures it)."""

    backbone: str = "resnet50"  # "resnet50" | "resnet18" | "tiny" (C3-C5 of models.backbones)
    pretrained: bool = False  # resnets: ImageNet weights; tiny: ssodlib.models.pretrain's (through build_detector)
    trainable_layers: int | None = None  # of (stem, stage 1..4); None: the backbone's standard
    num_feature_levels: int = 4  # C3-C5 and 3x3/s2 convolutions above (fewer: the last trunk levels)
    d_model: int = 256
    num_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_points: int = 4  # sampling points per head and level
    decoder_points: int = 4
    num_queries: int = 300
    pe_temperature: float = 10000.0
    pe_offset: float = -0.5  # added to the cumulative position before normalisation
    cls_loss_weight: float = 2.0
    l1_loss_weight: float = 5.0
    giou_loss_weight: float = 2.0
    match_cls_cost: float = 2.0
    match_l1_cost: float = 5.0
    match_giou_cost: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    detections_per_img: int = 100
    score_thresh: float = 0.0
    nms_iou: float | None = None  # None: no NMS at inference (DETR's set prediction)
    lr_backbone_mult: float = 0.1  # learning rate of the trunk's parameters, times the base lr
    lr_sampling_offsets_mult: float = 0.1  # of 'sampling_offsets' and 'reference_points' layers
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisible: int = 32
    # Semi-DETR's cross-view queries: a RoIAlign + projector head (:class:`RoIQueryHead`) that embeds
    # boxes as decoder content queries, built after every other module (off: no such parameters)
    roi_queries: bool = False

    def check(self) -> None:
        """Raise ``InputError`` for a value of the wrong type, outside its range or not a choice."""
        check_fields(self, what="detector option")
        check_ranges(self, self.rules(), what="detector option")
        if self.d_model % 2:
            raise InputError(f"detector option d_model={self.d_model} is odd. Fix: use an even d_model.")
        if self.d_model % self.num_heads:
            raise InputError(f"detector option d_model={self.d_model} is not a multiple of num_heads="
                             f"{self.num_heads}. Fix: choose d_model divisible by num_heads.")

    @classmethod
    def rules(cls) -> dict[str, Rule]:
        return DETR_RULES

    def resolved(self) -> "DETROptions":
        """The same options with ``trainable_layers=None`` spelt out as the backbone's standard."""
        return replace(self, trainable_layers=resolve_trainable_layers(self.backbone, self.trainable_layers))


_FRACTION, _POSITIVE, _NON_NEGATIVE = Rule(low=0, high=1), Rule(low=0, open_low=True), Rule(low=0)
DETR_RULES: dict[str, Rule] = {
    "backbone": Rule(choices=BACKBONES), "trainable_layers": Rule(low=0, high=5), "num_feature_levels": Rule(low=1),
    "d_model": Rule(low=2), "num_heads": Rule(low=1), "ffn_dim": Rule(low=1), "dropout": Rule(low=0, high=0.99),
    "encoder_layers": _NON_NEGATIVE, "decoder_layers": Rule(low=1), "encoder_points": Rule(low=1),
    "decoder_points": Rule(low=1), "num_queries": Rule(low=1), "pe_temperature": _POSITIVE,
    "cls_loss_weight": _NON_NEGATIVE, "l1_loss_weight": _NON_NEGATIVE, "giou_loss_weight": _NON_NEGATIVE,
    "match_cls_cost": _NON_NEGATIVE, "match_l1_cost": _NON_NEGATIVE, "match_giou_cost": _NON_NEGATIVE,
    "focal_alpha": _FRACTION, "focal_gamma": _NON_NEGATIVE, "detections_per_img": Rule(low=1),
    "score_thresh": _FRACTION, "nms_iou": _FRACTION, "lr_backbone_mult": _NON_NEGATIVE,
    "lr_sampling_offsets_mult": _NON_NEGATIVE, "pixel_std": _POSITIVE, "size_divisible": Rule(low=1),
}


@dataclass
class InferenceSettings:
    """How the last layer's predictions become detections: the top ``detections_per_img`` of queries x
    classes by sigmoid score, above ``score_thresh``, then class-wise NMS at ``nms_iou`` unless ``None``."""

    detections_per_img: int
    score_thresh: float = 0.0
    nms_iou: float | None = None


# -- stage outputs ----------------------------------------------------------------------------------
@dataclass
class Targets:
    """Per-image targets: ``labels[b]`` ``(G_b,)`` and ``boxes[b]`` ``(G_b, 4)`` normalised ``cxcywh``."""

    labels: list[Tensor]
    boxes: list[Tensor]

    @property
    def num_boxes(self) -> int:
        return sum(len(t) for t in self.labels)

    def binary(self) -> "Targets":
        """The same boxes, every label 0 (class-agnostic encoder proposals)."""
        return Targets([torch.zeros_like(t) for t in self.labels], self.boxes)


@dataclass
class Features:
    """Per level ``l``: ``srcs[l]`` ``(B, D, H_l, W_l)`` projected maps, ``masks[l]`` ``(B, H_l, W_l)``
    True at padding, ``pos[l]`` ``(B, D, H_l, W_l)`` sine encodings; ``image_sizes`` unpadded ``(h, w)``."""

    srcs: list[Tensor]
    masks: list[Tensor]
    pos: list[Tensor]
    image_sizes: list[tuple[int, int]]


@dataclass
class Memory:
    """The encoder's output over the flattened levels: ``memory`` ``(B, S, D)``, ``pos`` ``(B, S, D)``
    (sine + level embedding), ``mask`` ``(B, S)`` True at padding, ``spatial_shapes`` ``(L, 2)`` int64
    ``(H_l, W_l)``, ``level_start`` ``(L,)``, ``valid_ratios`` ``(B, L, 2)`` ``(w, h)`` fractions."""

    memory: Tensor
    pos: Tensor
    mask: Tensor
    spatial_shapes: Tensor
    level_start: Tensor
    valid_ratios: Tensor
    image_sizes: list[tuple[int, int]]


@dataclass
class EncoderOutputs:
    """Two-stage outputs at every position: ``memory`` ``(B, S, D)`` after the output layer and norm,
    ``logits`` ``(B, S, C)``, ``box_logits`` ``(B, S, 4)`` proposal + delta in logit space (``inf`` where
    invalid), ``valid`` ``(B, S)``."""

    memory: Tensor
    logits: Tensor
    box_logits: Tensor
    valid: Tensor


@dataclass
class Queries:
    """The decoder's queries: ``content`` ``(B, Q, D)``, ``boxes`` ``(B, Q, 2 | 4)`` reference points or
    boxes in ``[0, 1]`` (detached), ``query_pos`` ``(B, Q, D)`` or ``None`` (computed from the boxes);
    ``enc_logits`` ``(B, K, C)`` / ``enc_boxes`` ``(B, K, 4)``: the encoder predictions the encoder loss
    supervises (two-stage only)."""

    content: Tensor
    boxes: Tensor
    query_pos: Tensor | None = None
    enc_logits: Tensor | None = None
    enc_boxes: Tensor | None = None


@dataclass
class DecoderOutput:
    """Every decoder layer's output for ``N`` queries: ``hidden`` ``(L, B, N, D)``, ``logits``
    ``(L, B, N, C)``, ``boxes`` ``(L, B, N, 4)`` normalised ``cxcywh``; ``references[l]`` ``(B, N, 2 | 4)``
    the reference layer ``l``'s boxes refine."""

    hidden: Tensor
    logits: Tensor
    boxes: Tensor
    references: list[Tensor]

    def split(self, sizes: Sequence[int]) -> list["DecoderOutput"]:
        """The outputs of consecutive query groups of ``sizes`` (e.g. ``[denoising, matching]``)."""
        parts = [t.split(list(sizes), dim=2) for t in (self.hidden, self.logits, self.boxes)]
        refs = [r.split(list(sizes), dim=1) for r in self.references]
        return [DecoderOutput(parts[0][i], parts[1][i], parts[2][i], [r[i] for r in refs]) for i in range(len(sizes))]


class RoIQueryHead(nn.Module):
    """Boxes as decoder queries (Semi-DETR, https://arxiv.org/abs/2307.08095, Eq. 9): each box's
    ``7 x 7`` RoIAlign on one projected level, then the authors' projector shape (two 3x3 convolutions
    with norm and ReLU, a ``49 D -> 4 D`` linear layer with norm and ReLU, a ``4 D -> D`` linear layer
    and ReLU) -> ``(N, D)`` content. ``with_pos`` (families whose decoder takes query positions): a
    linear map of the box's sine embedding gives each query's position.

    From the authors' code (``detr_ssod/models/dino_detr_ssod.py``: ``Projector``, mmdetection's
    ``SingleRoIExtractor``): the level rule ``clamp(floor(log2(sqrt(wh) / 56 + 1e-6)), 0, L - 1)``,
    aligned RoIAlign with an adaptive sampling ratio, the layer widths. Ours: GroupNorm / LayerNorm
    in place of BatchNorm (a batch may hold a single box)."""

    def __init__(self, *, d_model: int, with_pos: bool, output_size: int = 7, finest_scale: float = 56.0) -> None:
        super().__init__()
        d, groups = d_model, math.gcd(32, d_model)
        self.output_size, self.finest_scale = output_size, finest_scale
        self.convs = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.GroupNorm(groups, d), nn.ReLU(),
                                   nn.Conv2d(d, d, 3, padding=1, bias=False), nn.GroupNorm(groups, d), nn.ReLU())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(d * output_size ** 2, 4 * d), nn.LayerNorm(4 * d), nn.ReLU(),
                                nn.Linear(4 * d, d), nn.ReLU())
        self.pos = nn.Linear(2 * d, d) if with_pos else None

    def levels(self, boxes: Tensor, num_levels: int) -> Tensor:
        """``(N,)`` level of each pixel ``xyxy`` box ``(N, 4)`` (mmdetection's ``map_roi_levels``)."""
        scale = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
        return torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, num_levels - 1).long()

    def forward(self, srcs: Sequence[Tensor], boxes: Sequence[Tensor], padded_size: tuple[int, int]) -> Tensor:
        """``(N, D)`` contents of per-image pixel ``xyxy`` boxes ``boxes[b]`` ``(N_b, 4)`` (concatenated in
        image order) on the levels ``srcs[l]`` ``(B, D, H_l, W_l)`` of a batch padded to ``padded_size``."""
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b.float()], 1) for i, b in enumerate(boxes)])
        d = srcs[0].shape[1]
        pooled = srcs[0].new_zeros((len(rois), d, self.output_size, self.output_size))
        lvl = self.levels(rois[:, 1:], len(srcs))
        for level, src in enumerate(srcs):
            idx = torch.where(lvl == level)[0]
            if len(idx):
                scale = 2.0 ** round(math.log2(src.shape[-1] / padded_size[1]))
                pooled[idx] = roi_align(src, rois[idx].to(src.dtype), output_size=self.output_size,
                                        spatial_scale=scale, sampling_ratio=0, aligned=True)
        return self.fc(self.convs(pooled))

    def position(self, boxes: Tensor) -> Tensor:
        """``(..., D)`` query positions of normalised ``cxcywh`` boxes ``(..., 4)`` (``with_pos`` only)."""
        if self.pos is None:
            raise RuntimeError("this RoIQueryHead has no position layer (its family derives positions from boxes)")
        return self.pos(box_sine_embedding(boxes, num_feats=self.pos.out_features // 2, order=(0, 1, 2, 3)))


def connected_zero(*tensors: Tensor) -> Tensor:
    """A zero that keeps the graph connected (DDP needs every parameter to receive a gradient)."""
    return sum(t.sum() for t in tensors) * 0.0


def layer_suffix(layer: int, num_layers: int) -> str:
    """``""`` for the last layer, ``"_d{layer}"`` before it (mmdetection's ``d0.loss_cls`` ...)."""
    return "" if layer == num_layers - 1 else f"_d{layer}"


# -- the model ----------------------------------------------------------------------------------------
class DETRBase(nn.Module):
    """Trunk, input projection, deformable encoder and decoder, heads, inference and losses; a family
    sets the class attributes below and implements :meth:`select_queries` and ``supervised_losses``."""

    box_query_pos: bool = False  # DINO: query positions from the reference boxes
    decoder_norm: bool = False  # DINO: a LayerNorm on every decoder layer's output

    def __init__(self, *, options: DETROptions, num_classes: int, two_stage: bool, refine_boxes: bool,
                 shared_heads: bool, encoder_head: bool, look_forward_twice: bool = False, wh_bias: float = 0.0,
                 trunk_weights: str | None = None, pretrained: bool | None = None) -> None:
        """``shared_heads``: one class and one box head for every decoder layer; otherwise one per layer
        and, with ``encoder_head``, one more (the last) for the two-stage encoder. ``wh_bias``: the first
        box head's initial size bias (Deformable DETR: -2 for point references)."""
        super().__init__()
        o = options
        self.options, self._num_classes = o, num_classes
        self.two_stage, self.refine_boxes, self.look_forward_twice = two_stage, refine_boxes, look_forward_twice
        self.backbone = Trunk(name=o.backbone, pretrained=o.pretrained if pretrained is None else pretrained,
                              trainable_layers=o.trainable_layers, weights=trunk_weights)
        self.input_proj = input_projection(self.backbone.channels, d_model=o.d_model, num_levels=o.num_feature_levels)
        self.level_embed = nn.Parameter(torch.empty(o.num_feature_levels, o.d_model).normal_())
        layer = dict(d_model=o.d_model, ffn_dim=o.ffn_dim, dropout=o.dropout, num_levels=o.num_feature_levels,
                     num_heads=o.num_heads)
        self.encoder = DeformableEncoder(num_layers=o.encoder_layers, num_points=o.encoder_points, **layer)
        self.decoder = DeformableDecoder(num_layers=o.decoder_layers, box_query_pos=self.box_query_pos,
                                         final_norm=self.decoder_norm, num_points=o.decoder_points, **layer)
        _init_transformer(self.encoder, self.decoder)
        heads = 1 if shared_heads else o.decoder_layers + int(encoder_head)
        self.class_heads = nn.ModuleList(self._class_head() for _ in range(heads))
        self.box_heads = nn.ModuleList(self._box_head(wh_bias=wh_bias if i == 0 else 0.0) for i in range(heads))
        if two_stage:
            self.enc_output = nn.Linear(o.d_model, o.d_model)
            self.enc_output_norm = nn.LayerNorm(o.d_model)
        self.register_buffer("pixel_mean", torch.tensor(o.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(o.pixel_std).view(3, 1, 1), persistent=False)
        self.inference = InferenceSettings(detections_per_img=o.detections_per_img, score_thresh=o.score_thresh,
                                           nms_iou=o.nms_iou)
        self.assigner = HungarianAssigner(CostWeights(cls=o.match_cls_cost, l1=o.match_l1_cost, giou=o.match_giou_cost,
                                                      alpha=o.focal_alpha, gamma=o.focal_gamma))
        self.loss_weights = LossWeights(cls=o.cls_loss_weight, l1=o.l1_loss_weight, giou=o.giou_loss_weight,
                                        alpha=o.focal_alpha, gamma=o.focal_gamma)

    def _add_roi_query_head(self) -> None:
        """With ``options.roi_queries``: the :class:`RoIQueryHead` as ``roi_query_head``; a family calls
        this last in its constructor, so that every other initial weight is the same with or without it."""
        if self.options.roi_queries:
            self.roi_query_head = RoIQueryHead(d_model=self.options.d_model, with_pos=not self.box_query_pos)

    def _class_head(self) -> nn.Linear:
        head = nn.Linear(self.options.d_model, self._num_classes)
        nn.init.constant_(head.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        return head

    def _box_head(self, *, wh_bias: float) -> MLP:
        head = MLP(in_dim=self.options.d_model, hidden_dim=self.options.d_model, out_dim=4, num_layers=3)
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
        nn.init.constant_(head.layers[-1].bias[2:], wh_bias)
        return head

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def class_head(self, layer: int) -> nn.Module:
        """Decoder layer ``layer``'s classifier (-1: the two-stage encoder's; shared heads: the one head)."""
        return self.class_heads[layer if len(self.class_heads) > 1 else 0]

    def box_head(self, layer: int) -> nn.Module:
        return self.box_heads[layer if len(self.box_heads) > 1 else 0]

    # -- input and features -------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Tensor]) -> ImageBatch:
        """Normalise ``(3, h, w)`` uint8 (or 0-255 float) images and zero-pad them into one batch."""
        return normalise_and_pad(images, mean=self.pixel_mean, std=self.pixel_std,
                                 size_divisible=self.options.size_divisible)

    @staticmethod
    def pixel_mask(batch: ImageBatch) -> Tensor:
        """``(B, H, W)`` True at the padding of each image."""
        b, _, h, w = batch.tensors.shape
        mask = torch.ones((b, h, w), dtype=torch.bool, device=batch.tensors.device)
        for i, (ih, iw) in enumerate(batch.image_sizes):
            mask[i, :ih, :iw] = False
        return mask

    def features(self, batch: ImageBatch) -> Features:
        """The trunk's levels through the input projection, with their masks and sine encodings."""
        o = self.options
        srcs = project_levels(self.backbone(batch.tensors), self.input_proj)
        pixel_mask = self.pixel_mask(batch)
        masks = [F.interpolate(pixel_mask[None].float(), size=s.shape[-2:]).bool()[0] for s in srcs]
        pos = [sine_position_encoding(m, num_feats=o.d_model // 2, temperature=o.pe_temperature,
                                      offset=o.pe_offset).to(s.dtype) for m, s in zip(masks, srcs)]
        return Features(srcs, masks, pos, batch.image_sizes)

    # -- encoder --------------------------------------------------------------------------------------
    def encode(self, feats: Features) -> Memory:
        """Flatten the levels (level after level, row-major) and run the deformable encoder."""
        shapes = torch.tensor([s.shape[-2:] for s in feats.srcs], dtype=torch.int64, device=feats.srcs[0].device)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in feats.srcs], 1)
        pos = torch.cat([(p.flatten(2).transpose(1, 2) + self.level_embed[lvl].to(p.dtype))
                         for lvl, p in enumerate(feats.pos)], 1)
        mask = torch.cat([m.flatten(1) for m in feats.masks], 1)
        ratios = torch.stack([valid_ratios(m) for m in feats.masks], 1)
        level_start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        memory = self.encoder(src, pos, shapes, ratios, mask)
        return Memory(memory, pos, mask, shapes, level_start, ratios, feats.image_sizes)

    def encoder_outputs(self, memory: Memory, *, class_head: nn.Module | None = None,
                        box_head: nn.Module | None = None) -> EncoderOutputs:
        """Two-stage: the class logits and proposal boxes of every encoder position (heads: the
        family's encoder heads unless given)."""
        if not self.two_stage:
            raise RuntimeError("encoder_outputs needs a two-stage model")
        out, proposals, valid = encoder_proposals(memory.memory, memory.mask, memory.spatial_shapes)
        out = self.enc_output_norm(self.enc_output(out))
        class_head = self.class_head(-1) if class_head is None else class_head
        box_head = self.box_head(-1) if box_head is None else box_head
        return EncoderOutputs(out, class_head(out), box_head(out).float() + proposals, valid)

    def select_queries(self, memory: Memory) -> Queries:
        raise NotImplementedError

    # -- decoder --------------------------------------------------------------------------------------
    def decode(self, memory: Memory, content: Tensor, boxes: Tensor, *, query_pos: Tensor | None = None,
               self_attn_mask: Tensor | None = None) -> DecoderOutput:
        """Run the decoder on any queries: ``content`` ``(B, N, D)``, ``boxes`` ``(B, N, 2 | 4)``
        references in ``[0, 1]``, ``query_pos`` ``(B, N, D)`` (families without box query positions),
        ``self_attn_mask`` ``(N, N)`` bool, True = blocked (see ``denoising.group_attention_mask``)."""
        layers = self.options.decoder_layers
        heads = [self.box_head(lid) for lid in range(layers)] if self.refine_boxes else None
        hidden, refs = self.decoder(content, boxes, memory.memory, memory.spatial_shapes, memory.valid_ratios,
                                    memory.mask, query_pos=query_pos, self_attn_mask=self_attn_mask, box_heads=heads,
                                    look_forward_twice=self.look_forward_twice)
        logits = torch.stack([self.class_head(lid)(hidden[lid]) for lid in range(layers)])
        out_boxes = torch.stack([refine(refs[lid].float(), self.box_head(lid)(hidden[lid]).float())
                                 for lid in range(layers)])
        return DecoderOutput(hidden, logits, out_boxes, refs)

    def decode_queries(self, memory: Memory, queries: Queries) -> DecoderOutput:
        return self.decode(memory, queries.content, queries.boxes, query_pos=queries.query_pos)

    # -- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]], *,
                    with_candidates: bool = False, settings: InferenceSettings | None = None) -> list[Detections]:
        """Detections in pixels of each image from ``logits`` ``(B, N, C)`` and ``boxes`` ``(B, N, 4)``
        (normalised ``cxcywh``) under ``settings`` (default: :attr:`inference`). Candidates: the top-k
        before NMS, ``cluster`` the kept detection that suppressed (or is) each."""
        s = settings or self.inference
        return [self._detections(lg.float().sigmoid(), bx.float(), size, s, with_candidates)
                for lg, bx, size in zip(logits, boxes, image_sizes)]

    def _detections(self, probs: Tensor, boxes: Tensor, size: tuple[int, int], s: InferenceSettings,
                    with_candidates: bool) -> Detections:
        c = probs.shape[1]
        scores, index = probs.flatten().topk(min(s.detections_per_img, probs.numel()))
        cand = torch.where(scores > s.score_thresh)[0]
        scores, index = scores[cand], index[cand]
        query, labels = index // c, index % c
        pixel = clip_boxes_to_image(denormalize_boxes(boxes[query], size), size)
        keep = torch.arange(len(query), device=probs.device)
        if s.nms_iou is not None:
            keep = batched_nms(pixel, scores, labels, s.nms_iou)
        class_probs = torch.cat([1 - probs.max(1, keepdim=True).values, probs], 1)[query]
        det = Detections(pixel[keep], scores[keep], labels[keep], class_probs[keep], extra={"queries": query[keep]})
        if with_candidates:
            det.candidate_boxes, det.candidate_scores, det.candidate_labels = pixel, scores, labels
            det.cluster = nms_clusters(pixel, labels, keep, s.nms_iou) if s.nms_iou is not None else keep.clone()
        return det

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], *, with_candidates: bool = False) -> list[Detections]:
        batch = self.preprocess(images)
        memory = self.encode(self.features(batch))
        out = self.decode_queries(memory, self.select_queries(memory))
        return self.postprocess(out.logits[-1], out.boxes[-1], batch.image_sizes, with_candidates=with_candidates)

    # -- losses ---------------------------------------------------------------------------------------
    @staticmethod
    def targets(gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                device: torch.device) -> Targets:
        """Pixel ``xyxy`` targets of each image as normalised ``cxcywh`` of its unpadded size."""
        boxes = [normalize_boxes(b.to(device), size) for b, size in zip(gt_boxes, image_sizes)]
        return Targets([lab.to(device).long() for lab in gt_labels], boxes)

    def match(self, logits: Tensor, boxes: Tensor, targets: Targets) -> list[Assignment]:
        """One-to-one assignment per image of ``(B, N, C)`` / ``(B, N, 4)`` predictions."""
        return [self.assigner(lg, bx, lab, gt) for lg, bx, lab, gt in zip(logits, boxes, targets.labels, targets.boxes)]

    def layer_losses(self, logits: Tensor, boxes: Tensor, targets: Targets, *, suffix: str, num_boxes: float,
                     assignments: Sequence[Assignment] | None = None) -> dict[str, Tensor]:
        """``loss_cls{suffix}``, ``loss_bbox{suffix}``, ``loss_giou{suffix}`` of one layer (Hungarian unless
        ``assignments`` are given)."""
        if assignments is None:
            assignments = self.match(logits, boxes, targets)
        terms = set_losses(logits, boxes, targets.labels, targets.boxes, assignments, num_boxes=num_boxes,
                           weights=self.loss_weights)
        return {f"loss_cls{suffix}": terms["cls"], f"loss_bbox{suffix}": terms["l1"],
                f"loss_giou{suffix}": terms["giou"]}

    def decoder_losses(self, out: DecoderOutput, targets: Targets, *, tag: str = "",
                       assignments: Sequence[Assignment] | None = None, num_boxes: float | None = None
                       ) -> dict[str, Tensor]:
        """The set losses of every decoder layer (``tag`` joins the names, e.g. ``"_dn"``)."""
        layers = out.logits.shape[0]
        if num_boxes is None:
            num_boxes = average_count(targets.num_boxes, out.logits.device)
        losses: dict[str, Tensor] = {}
        for lid in range(layers):
            losses.update(self.layer_losses(out.logits[lid], out.boxes[lid], targets, num_boxes=num_boxes,
                                            suffix=tag + layer_suffix(lid, layers), assignments=assignments))
        return losses

    def encoder_losses(self, queries: Queries, targets: Targets, *, binary: bool = True) -> dict[str, Tensor]:
        """The set losses of the two-stage encoder predictions (``binary``: every target of class 0)."""
        if queries.enc_logits is None or queries.enc_boxes is None:
            return {}
        t = targets.binary() if binary else targets
        num_boxes = average_count(targets.num_boxes, queries.enc_logits.device)
        return self.layer_losses(queries.enc_logits, queries.enc_boxes, t, suffix="_enc", num_boxes=num_boxes)

    # -- optimisation ---------------------------------------------------------------------------------
    def parameter_groups(self, base_lr: float) -> list[dict]:
        """AdamW / SGD parameter groups: the rest at ``base_lr`` (first, so it is the logged lr), the
        trunk at ``lr_backbone_mult`` times it, layers named ``sampling_offsets`` / ``reference_points`` at
        ``lr_sampling_offsets_mult`` times it. Frozen parameters are left out."""
        o = self.options
        groups: dict[str, list[nn.Parameter]] = {"base": [], "backbone": [], "sampling_offsets": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("backbone."):
                groups["backbone"].append(p)
            elif "sampling_offsets" in name or "reference_points" in name:
                groups["sampling_offsets"].append(p)
            else:
                groups["base"].append(p)
        mult = {"base": 1.0, "backbone": o.lr_backbone_mult, "sampling_offsets": o.lr_sampling_offsets_mult}
        return [{"params": ps, "lr": base_lr * mult[k], "name": k} for k, ps in groups.items() if ps]


def _init_transformer(*modules: nn.Module) -> None:
    """Xavier-uniform for every weight matrix, then the deformable attention's own initialisation."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in module.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()




__all__ = ["DETROptions", "DETRBase", "DETR_RULES", "DecoderOutput", "EncoderOutputs", "Features", "InferenceSettings",
           "Memory", "Queries", "RoIQueryHead", "Targets", "connected_zero", "layer_suffix"]
