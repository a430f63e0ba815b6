"""Deformable DETR: Deformable Transformers for End-to-End Object Detection (Zhu et al., ICLR 2021,
https://arxiv.org/abs/2010.04159) as Semi-DETR's authors used it: plain (300 queries, no box refinement,
no two-stage), with both variants available as options; shared parts in :mod:`ssodlib.models.detr`.

Paper parts to code:

* §4.1 multi-scale deformable attention and the encoder: :mod:`ssodlib.models.detr.attention`,
  :mod:`ssodlib.models.detr.transformer`;
* the decoder with learnt queries, each split into a position and a content part, and a 2-d reference
  point ``sigmoid(Linear(position))``; boxes relative to it (``sigmoid(delta + [logit(ref), 0, 0])``):
  :meth:`DeformableDETR.select_queries`, :meth:`DETRBase.decode`;
* §4.2 iterative bounding box refinement (``with_box_refine``: a head per layer, each layer refining the
  detached box of the one before);
* §4.2 two-stage (``two_stage``: proposals from every encoder position, the top ``num_queries`` by
  their class-0 logit become reference boxes, queries from their sine embedding through
  ``Linear + LayerNorm``; the encoder loss over every position with class-agnostic targets).

Facts from mmdetection's ``configs/deformable_detr/deformable_detr_r50_16x2_50e_coco.py`` (the
configuration Semi-DETR's authors name in JCZ404/Semi-DETR#16) and the authors' code: 4 levels, 6 + 6
layers, d_model 256, 8 heads, FFN 1024, dropout 0.1, sine PE with temperature 10000 and offset -0.5,
focal weight 2.0, L1 5.0, GIoU 2.0, matching cost 2 / 5 / 2, top 100 detections; AdamW 2e-4 with
x0.1 on the backbone, ``sampling_offsets`` and ``reference_points``, gradient clipping at norm 0.1
(:data:`DEFORMABLE_DETR_TRAIN`). With refinement the heads are per layer; without, one head is shared by
every layer (and by the two-stage encoder), as in the authors' code.

Scales (:data:`DEFORMABLE_DETR_PRESETS`): ``paper`` the above; ``mini`` the reduction of DINO's mini
(tiny pretrained trunk, 3 levels, d_model 128, FFN 512, 2 + 3 layers, 100 queries); ``smoke`` seconds.
Command line::

    python -m ssodlib.models.detr_presets deformable_detr mini > ddetr-mini.yaml
    ssod train --config ddetr-mini.yaml --method supervised --percent 5 --fold 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ssodlib.models.detectors.base import build_with_trunk
from ssodlib.models.detr.detector import DETRBase, DETROptions, Memory, Queries
from ssodlib.models.detr.transformer import box_sine_embedding


@dataclass(frozen=True, kw_only=True)
class DeformableDETROptions(DETROptions):
    """Deformable DETR's hyper-parameters, the ``detector_options`` of the ``deformable_detr`` family."""

    with_box_refine: bool = False
    two_stage: bool = False


class DeformableDETR(DETRBase):
    """Deformable DETR whose stages are methods (see :mod:`ssodlib.models.detr.detector`)."""

    def __init__(self, *, options: DeformableDETROptions, num_classes: int, trunk_weights: str | None = None,
                 pretrained: bool | None = None) -> None:
        o = options
        super().__init__(options=o, num_classes=num_classes, two_stage=o.two_stage, refine_boxes=o.with_box_refine,
                         shared_heads=not o.with_box_refine, encoder_head=o.two_stage,
                         wh_bias=0.0 if o.two_stage else -2.0, trunk_weights=trunk_weights, pretrained=pretrained)
        d = o.d_model
        if o.two_stage:
            self.pos_trans = nn.Linear(2 * d, 2 * d)
            self.pos_trans_norm = nn.LayerNorm(2 * d)
        else:
            self.query_embed = nn.Embedding(o.num_queries, 2 * d)
            self.reference_points = nn.Linear(d, 2)
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        self._add_roi_query_head()

    def select_queries(self, memory: Memory) -> Queries:
        """Plain: learnt ``(position, content)`` queries with 2-d references from the position part.
        Two-stage: the top encoder proposals as reference boxes and queries from their embedding."""
        if self.two_stage:
            return self._two_stage_queries(memory)
        b = memory.memory.shape[0]
        pos, content = self.query_embed.weight.split(self.options.d_model, dim=1)
        ref = self.reference_points(pos).sigmoid()
        expand = lambda t: t[None].expand(b, -1, -1)  # noqa: E731
        return Queries(content=expand(content), boxes=expand(ref), query_pos=expand(pos))

    def _two_stage_queries(self, memory: Memory) -> Queries:
        enc = self.encoder_outputs(memory)
        k = min(self.options.num_queries, enc.logits.shape[1])
        scores = enc.logits[..., 0].float().masked_fill(~enc.valid, float("-inf"))
        index = scores.topk(k, dim=1).indices
        boxes = torch.gather(enc.box_logits, 1, index[..., None].expand(-1, -1, 4)).detach().sigmoid()
        embed = self.pos_trans_norm(self.pos_trans(box_sine_embedding(boxes, num_feats=self.options.d_model // 2,
                                                                      order=(0, 1, 2, 3))))
        pos, content = embed.split(self.options.d_model, dim=-1)
        return Queries(content=content, boxes=boxes, query_pos=pos, enc_logits=enc.logits,
                       enc_boxes=enc.box_logits.sigmoid())

    def supervised_losses(self, images: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                          gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        batch = self.preprocess(images)
        targets = self.targets(gt_boxes, gt_labels, batch.image_sizes, batch.tensors.device)
        memory = self.encode(self.features(batch))
        queries = self.select_queries(memory)
        losses = self.decoder_losses(self.decode_queries(memory, queries), targets)
        losses.update(self.encoder_losses(queries, targets, binary=True))
        return losses


def build_deformable_detr(options: DeformableDETROptions, num_classes: int, *, trunk_weights: str | None,
                          from_checkpoint: bool) -> DeformableDETR:
    """The ``deformable_detr`` entry of ``DETECTOR_FAMILIES``."""
    return build_with_trunk(DeformableDETR, options, num_classes, trunk_weights=trunk_weights,
                        from_checkpoint=from_checkpoint)


DEFORMABLE_DETR_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(backbone="tiny", pretrained=False, num_feature_levels=3, d_model=32, num_heads=4, ffn_dim=64,
                  encoder_layers=1, decoder_layers=2, encoder_points=2, decoder_points=2, num_queries=20,
                  detections_per_img=20),
    "mini": dict(backbone="tiny", pretrained=True, num_feature_levels=3, d_model=128, num_heads=8, ffn_dim=512,
                 encoder_layers=2, decoder_layers=3, num_queries=100, detections_per_img=100),
    "paper": dict(backbone="resnet50", pretrained=True, num_feature_levels=4, d_model=256, num_heads=8, ffn_dim=1024,
                  encoder_layers=6, decoder_layers=6, num_queries=300, detections_per_img=100),
}

DEFORMABLE_DETR_TRAIN: dict[str, dict[str, Any]] = {
    "smoke": dict(optimizer="adamw", lr=2e-4, weight_decay=1e-4, grad_clip=0.1, warmup_iters=0),
    "mini": dict(optimizer="adamw", lr=2e-4, weight_decay=1e-4, grad_clip=0.1, warmup_iters=100,
                 iterations=5000, lr_steps=(4600,), eval_every=500, snapshots=(2000,)),
    "paper": dict(optimizer="adamw", lr=2e-4, weight_decay=1e-4, grad_clip=0.1, warmup_iters=0,
                  iterations=120000, lr_steps=(), burn_in=0, ema_keep_rate=0.999, unsup_weight=4.0),
}


__all__ = ["DEFORMABLE_DETR_PRESETS", "DEFORMABLE_DETR_TRAIN", "DeformableDETR", "DeformableDETROptions",
           "build_deformable_detr"]
