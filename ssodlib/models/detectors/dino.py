"""DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object Detection (Zhang et al., ICLR 2023,
https://arxiv.org/abs/2203.03605), as Semi-DETR's code configures it, on the deformable transformer of
Deformable DETR (https://arxiv.org/abs/2010.04159); shared parts in :mod:`ssodlib.models.detr`.

Paper parts to code:

* §3.3 contrastive denoising (positive and negative noised ground-truth groups, Fig. 3's attention
  mask): :mod:`ssodlib.models.detr.denoising`, :meth:`DINO.denoising_layout`, :meth:`DINO.decode_with_denoising`,
  :meth:`DINO.denoising_losses`;
* §3.4 mixed query selection (reference boxes from the top-``Q`` encoder proposals, content queries
  learnt): :meth:`DINO.select_queries`;
* §3.5 look-forward-twice box refinement: :class:`ssodlib.models.detr.transformer.DeformableDecoder`;
* the two-stage encoder proposals and their loss: :meth:`DETRBase.encoder_outputs`, :meth:`DETRBase.encoder_losses`;
* Hungarian matching and the focal / L1 / GIoU losses on every decoder layer: :meth:`DETRBase.decoder_losses`.

Facts from the authors' code (Semi-DETR ``detr_od/models/utils/transformer.py`` ``DINOTransformer`` and
``configs/dino_detr/dino_detr_ssod_r50_coco_120k.py``, the same as IDEA-Research/DINO
``config/DINO/DINO_4scale.py``): d_model 256, 8 heads, 6 + 6 layers, FFN 2048, dropout 0, 4 levels
(C3-C5 and a 3x3/s2 convolution on C5), 4 points, 900 queries, sine PE with temperature 20 and no
offset, learnt content queries, one class and one box head shared by every decoder layer and separate
encoder heads, ``dn_number = 100``, box noise 0.4, label noise 0.5. Losses as Semi-DETR: focal weight
2.0 (DINO's own: 1.0), L1 5.0, GIoU 2.0, on every decoder layer, on the encoder proposals with every
target of class 0 and on the denoising queries; matching cost 2 / 5 / 2. Inference: top 300 of
queries x classes, no NMS. Optimiser (set through :func:`ssodlib.models.detr_presets.detr_train_overrides`):
AdamW 1e-4, weight decay 1e-4, backbone lr x0.1, gradient clipping at norm 0.1.

Choices of ours: the denoising group count ``max(1, dn_number // max_gt)`` always (see
:mod:`ssodlib.models.detr.denoising`); invalid encoder positions (padding, the border band) are never
selected as queries while valid ones remain (DINO can pick them; their boxes are degenerate).

Scales (:data:`DINO_PRESETS`, the ``detector_options``; the TrainConfig around them in
:data:`DINO_TRAIN`):

* ``paper``: the configuration above, ResNet-50 with ImageNet weights.
* ``mini``: a **reduction** of it for the embedded benchmark on 2 CPU cores: the benchmark's pretrained
  tiny trunk (strides 8/16/32, no stride-64 level at 256 px), 3 feature levels, d_model 128, FFN 512,
  2 encoder and 3 decoder layers, 100 queries (at most 15 objects per image), ``dn_number`` 20,
  top-100 detections.
* ``smoke``: seconds, for tests.

Command line (the overrides as a YAML file, then any further ``--set``)::

    python -m ssodlib.models.detr_presets dino mini > dino-mini.yaml
    ssod train --config dino-mini.yaml --method supervised --percent 5 --fold 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ssodlib.config import Rule
from ssodlib.models.detectors.base import build_with_trunk
from ssodlib.models.detr.denoising import DenoisingLayout, denoising_layout, group_attention_mask
from ssodlib.models.detr.detector import (DETR_RULES, DecoderOutput, DETRBase, DETROptions, EncoderOutputs, Memory,
                                          Queries, Targets, connected_zero, layer_suffix)
from ssodlib.models.detr.losses import average_count
from ssodlib.models.detr.matcher import Assignment


@dataclass(frozen=True, kw_only=True)
class DINOOptions(DETROptions):
    """DINO's hyper-parameters, the ``detector_options`` of the ``dino`` family (Semi-DETR's DINO)."""

    ffn_dim: int = 2048
    dropout: float = 0.0
    num_queries: int = 900
    pe_temperature: float = 20.0
    pe_offset: float = 0.0
    detections_per_img: int = 300
    lr_sampling_offsets_mult: float = 1.0  # Semi-DETR's DINO: only the backbone has a multiplier
    dn_number: int = 100  # denoising queries' budget: max(1, dn_number // max_gt) groups; 0: no denoising
    dn_label_noise: float = 0.5  # a label is redrawn with probability dn_label_noise / 2
    dn_box_noise: float = 0.4  # lambda of the corner noise
    enc_binary_labels: bool = True  # encoder loss against class-agnostic targets (Semi-DETR; DINO: False)
    shared_heads: bool = True  # one class / box head for every decoder layer
    look_forward_twice: bool = True

    @classmethod
    def rules(cls) -> dict[str, Rule]:
        return DINO_RULES


DINO_RULES = {**DETR_RULES, "dn_number": Rule(low=0), "dn_label_noise": Rule(low=0, high=1),
              "dn_box_noise": Rule(low=0)}


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``(B, S, K)`` at ``index`` ``(B, Q)`` -> ``(B, Q, K)``."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


class DINO(DETRBase):
    """DINO whose stages are methods (see :mod:`ssodlib.models.detr.detector`)."""

    box_query_pos = True
    decoder_norm = True

    def __init__(self, *, options: DINOOptions, num_classes: int, trunk_weights: str | None = None,
                 pretrained: bool | None = None) -> None:
        o = options
        super().__init__(options=o, num_classes=num_classes, two_stage=True, refine_boxes=True,
                         shared_heads=o.shared_heads, encoder_head=False, look_forward_twice=o.look_forward_twice,
                         wh_bias=0.0, trunk_weights=trunk_weights, pretrained=pretrained)
        self.enc_class_head = self._class_head()
        self.enc_box_head = self._box_head(wh_bias=0.0)
        self.tgt_embed = nn.Embedding(o.num_queries, o.d_model)
        nn.init.normal_(self.tgt_embed.weight)
        self.label_enc = nn.Embedding(num_classes + 1, o.d_model) if o.dn_number > 0 else None
        self._add_roi_query_head()

    # -- queries ----------------------------------------------------------------------------------------
    def encoder_outputs(self, memory: Memory, *, class_head: nn.Module | None = None,
                        box_head: nn.Module | None = None) -> EncoderOutputs:
        """Two-stage outputs through DINO's own encoder heads unless others are given."""
        return super().encoder_outputs(memory, class_head=self.enc_class_head if class_head is None else class_head,
                                       box_head=self.enc_box_head if box_head is None else box_head)

    def select_queries(self, memory: Memory) -> Queries:
        """Mixed query selection: the top-``Q`` valid encoder positions by their best class logit give
        the reference boxes (detached); the content queries are learnt (``tgt_embed``)."""
        enc = self.encoder_outputs(memory)
        k = min(self.options.num_queries, enc.logits.shape[1])
        scores = enc.logits.max(-1).values.float().masked_fill(~enc.valid, float("-inf"))
        index = scores.topk(k, dim=1).indices
        enc_logits, enc_boxes = _gather(enc.logits, index), _gather(enc.box_logits, index).sigmoid()
        content = self.tgt_embed.weight[:k][None].expand(len(index), -1, -1)
        return Queries(content=content, boxes=enc_boxes.detach(), enc_logits=enc_logits, enc_boxes=enc_boxes)

    # -- denoising ------------------------------------------------------------------------------------
    def denoising_layout(self, targets: Targets) -> DenoisingLayout | None:
        o = self.options
        return denoising_layout(targets.labels, targets.boxes, num_classes=self.num_classes, dn_number=o.dn_number,
                                label_noise=o.dn_label_noise, box_noise=o.dn_box_noise)

    def denoising_content(self, layout: DenoisingLayout) -> Tensor:
        """``(B, P, D)`` label embeddings of the noised labels; zero for padding queries."""
        return self.label_enc(layout.labels.clamp(min=0)) * (layout.labels >= 0)[..., None]

    def decode_with_denoising(self, memory: Memory, queries: Queries, layout: DenoisingLayout | None,
                              ) -> tuple[DecoderOutput | None, DecoderOutput]:
        """Decode ``[denoising groups | matching queries]`` under the group mask; the two parts' outputs."""
        if layout is None:
            return None, self.decode_queries(memory, queries)
        q = queries.content.shape[1]
        content = torch.cat([self.denoising_content(layout).to(queries.content.dtype), queries.content], 1)
        boxes = torch.cat([layout.boxes.to(queries.boxes), queries.boxes], 1)
        mask = group_attention_mask([layout.group_size] * layout.groups, q, device=content.device)
        out = self.decode(memory, content, boxes, self_attn_mask=mask)
        dn, matching = out.split([layout.num_queries, q])
        return dn, matching

    def denoising_losses(self, out: DecoderOutput | None, layout: DenoisingLayout | None,
                         targets: Targets) -> dict[str, Tensor]:
        """Set losses of the denoising queries on every layer: each positive learns its target, negatives
        and padding learn background; normalised by ``num_boxes * groups``."""
        if self.label_enc is None:
            return {}
        if out is None or layout is None:  # no target in the batch: zeros, with the embedding in the graph
            layers = self.options.decoder_layers
            zero = connected_zero(self.label_enc.weight)
            return {f"loss_{k}_dn{layer_suffix(lid, layers)}": zero for lid in range(layers)
                    for k in ("cls", "bbox", "giou")}
        pairs = [Assignment(queries=qi, targets=ti) for qi, ti in zip(layout.query_index, layout.target_index)]
        num_boxes = average_count(targets.num_boxes, out.logits.device) * layout.groups
        return self.decoder_losses(out, targets, tag="_dn", assignments=pairs, num_boxes=num_boxes)

    # -- whole passes -------------------------------------------------------------------------------
    def supervised_losses(self, images: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                          gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        batch = self.preprocess(images)
        targets = self.targets(gt_boxes, gt_labels, batch.image_sizes, batch.tensors.device)
        memory = self.encode(self.features(batch))
        queries = self.select_queries(memory)
        layout = self.denoising_layout(targets)
        dn, out = self.decode_with_denoising(memory, queries, layout)
        losses = self.decoder_losses(out, targets)
        losses.update(self.encoder_losses(queries, targets, binary=self.options.enc_binary_labels))
        losses.update(self.denoising_losses(dn, layout, targets))
        return losses


def build_dino(options: DINOOptions, num_classes: int, *, trunk_weights: str | None, from_checkpoint: bool) -> DINO:
    """The ``dino`` entry of ``DETECTOR_FAMILIES``."""
    return build_with_trunk(DINO, options, num_classes, trunk_weights=trunk_weights, from_checkpoint=from_checkpoint)


# -- scales ---------------------------------------------------------------------------------------------
DINO_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(backbone="tiny", pretrained=False, num_feature_levels=3, d_model=32, num_heads=4, ffn_dim=64,
                  encoder_layers=1, decoder_layers=2, encoder_points=2, decoder_points=2, num_queries=20,
                  dn_number=6, detections_per_img=20),
    "mini": dict(backbone="tiny", pretrained=True, num_feature_levels=3, d_model=128, num_heads=8, ffn_dim=512,
                 encoder_layers=2, decoder_layers=3, num_queries=100, dn_number=20, detections_per_img=100),
    "paper": dict(backbone="resnet50", pretrained=True, num_feature_levels=4, d_model=256, num_heads=8, ffn_dim=2048,
                  encoder_layers=6, decoder_layers=6, num_queries=900, dn_number=100, detections_per_img=300),
}

# the TrainConfig fields each scale sets besides the detector (Semi-DETR's optimiser; mini: our schedule)
DINO_TRAIN: dict[str, dict[str, Any]] = {
    "smoke": dict(optimizer="adamw", lr=2e-4, weight_decay=1e-4, grad_clip=0.1, warmup_iters=0),
    "mini": dict(optimizer="adamw", lr=1e-4, weight_decay=1e-4, grad_clip=0.1, warmup_iters=100,
                 iterations=5000, lr_steps=(4600,), eval_every=500, snapshots=(2000,)),
    "paper": dict(optimizer="adamw", lr=1e-4, weight_decay=1e-4, grad_clip=0.1, warmup_iters=0,
                  iterations=120000, lr_steps=(), burn_in=0, ema_keep_rate=0.999, unsup_weight=4.0),
}


__all__ = ["DINO", "DINOOptions", "DINO_PRESETS", "DINO_RULES", "DINO_TRAIN", "build_dino"]
