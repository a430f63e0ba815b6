"""The deformable transformer of Deformable DETR (Zhu et al., ICLR 2021, https://arxiv.org/abs/2010.04159)
as DINO (Zhang et al., ICLR 2023, https://arxiv.org/abs/2203.03605) uses it.

Paper parts to functions and classes:

* sine positional encoding of each feature map, normalised by the valid (unpadded) extent:
  :func:`sine_position_encoding`; of a box (DINO's query position, Deformable DETR's two-stage query):
  :func:`box_sine_embedding`;
* the valid ratios and the encoder's reference points (pixel centres of every level, in the padded
  map's ``[0, 1]``): :func:`valid_ratios`, :func:`encoder_reference_points`;
* the encoder (§4.1 "Deformable Transformer Encoder", Eq. 3 as self-attention over all levels, post-norm
  FFN): :class:`EncoderLayer`, :class:`DeformableEncoder`;
* two-stage proposals from every encoder position (§A.4 of Deformable DETR: a box of size
  ``0.05 * 2^l`` centred on each position of level ``l``, in logit space, invalid near the border):
  :func:`encoder_proposals`;
* the decoder (self-attention among queries under an optional group mask, deformable cross-attention
  around each query's reference, FFN) with iterative box refinement: :class:`DecoderLayer`,
  :class:`DeformableDecoder`. Refinement adds each layer's box delta to the inverse sigmoid of its
  reference. DINO's look-forward-twice: layer ``l``'s output box adds to the **undetached** reference
  that layer ``l - 1`` refined, and the reference handed on to layer ``l + 1`` is detached.

From the authors' code (fundamentalvision/Deformable-DETR ``models/deformable_transformer.py``,
``models/position_encoding.py``; IDEA-Research/DINO ``models/dino/deformable_transformer.py``,
``models/dino/utils.py``): the layer order and post-norm, the ``(x + offset) / (extent + 1e-6) * 2 pi``
normalisation (offset -0.5 in Deformable DETR, 0 in DINO), the interleaved sin/cos layout, the box
embedding's coordinate order (DINO: ``y, x, w, h``; Deformable DETR two-stage: ``x, y, w, h``), the
``0.01 < p < 0.99`` proposal validity rule and DINO's query position ``MLP(sine(ref))`` computed from the
valid-ratio-scaled reference.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssodlib.models.detr.attention import MultiScaleDeformableAttention
from ssodlib.models.detr.boxes import inverse_sigmoid


# -- positional encodings --------------------------------------------------------------------------
def sine_position_encoding(mask: Tensor, *, num_feats: int, temperature: float = 10000.0,
                           offset: float = 0.0) -> Tensor:
    """``(B, 2 num_feats, H, W)`` encoding (``y`` features, then ``x``) of a padding ``mask`` ``(B, H, W)``
    (True = padding); coordinates are ``(cumsum + offset) / (valid extent + 1e-6) * 2 pi``."""
    valid = (~mask).float()
    y, x = valid.cumsum(1), valid.cumsum(2)
    y = (y + offset) / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = (x + offset) / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = temperature ** (2 * (torch.arange(num_feats, device=mask.device) // 2).float() / num_feats)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_sine_embedding(boxes: Tensor, *, num_feats: int, order: Sequence[int] = (1, 0, 2, 3),
                       temperature: float = 10000.0) -> Tensor:
    """``(..., 4 num_feats)`` embedding of ``(..., 4)`` boxes in ``[0, 1]``: each coordinate (in ``order``
    of ``cx, cy, w, h`` indices) times ``2 pi`` through ``num_feats`` interleaved sin/cos frequencies."""
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    dim_t = temperature ** (2 * (torch.arange(num_feats, device=boxes.device) // 2).to(dtype) / num_feats)
    parts = []
    for i in order:
        p = boxes[..., i, None].to(dtype) * 2 * math.pi / dim_t
        parts.append(torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2))
    return torch.cat(parts, dim=-1)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


# -- geometry of the flattened levels ------------------------------------------------------------
def valid_ratios(mask: Tensor) -> Tensor:
    """``(B, 2)`` fraction ``(w, h)`` of a level's padded map ``mask`` ``(B, H, W)`` that the image covers."""
    h, w = mask.shape[1:]
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / w, valid_h / h], -1)


def level_grid(h: int, w: int, *, device: torch.device) -> Tensor:
    """``(h w, 2)`` pixel centres ``(x, y)`` of an ``h x w`` map, row-major, in pixels."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def encoder_reference_points(spatial_shapes: Tensor, ratios: Tensor) -> Tensor:
    """``(B, S, L, 2)`` reference of every position for every level: its centre normalised by the
    valid extent of its own level, then scaled by each level's valid ratio (``ratios`` ``(B, L, 2)``)."""
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        grid = level_grid(h, w, device=ratios.device)[None]  # (1, hw, 2)
        refs.append(grid / (ratios[:, None, lvl] * torch.tensor([w, h], device=ratios.device)))
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]


def encoder_proposals(memory: Tensor, mask: Tensor, spatial_shapes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Two-stage proposals of ``memory`` ``(B, S, D)`` with padding ``mask`` ``(B, S)``: the memory zeroed
    at padding and invalid positions ``(B, S, D)``, proposals ``(B, S, 4)`` as logits of normalised
    ``cxcywh`` (``+inf`` where invalid), and validity ``(B, S)``."""
    b = memory.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        m = mask[:, start:start + h * w].view(b, h, w)
        valid_h, valid_w = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)
        scale = torch.stack([valid_w, valid_h], -1).float()[:, None]  # (B, 1, 2)
        xy = level_grid(h, w, device=memory.device)[None] / scale
        wh = torch.full_like(xy, 0.05 * 2.0 ** lvl)
        proposals.append(torch.cat([xy, wh], -1))
        start += h * w
    p = torch.cat(proposals, 1)
    valid = ((p > 0.01) & (p < 0.99)).all(-1) & ~mask
    logits = torch.log(p / (1 - p)).masked_fill(~valid[..., None], float("inf"))
    return memory.masked_fill(~valid[..., None], 0.0), logits, valid


# -- encoder ----------------------------------------------------------------------------------------
class _FFN(nn.Module):
    def __init__(self, *, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, ffn_dim), nn.Linear(ffn_dim, d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


class EncoderLayer(nn.Module):
    """Deformable self-attention over every level, then the FFN (post-norm)."""

    def __init__(self, *, d_model: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int,
                 num_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model=d_model, num_levels=num_levels, num_heads=num_heads,
                                                       num_points=num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = _FFN(d_model=d_model, ffn_dim=ffn_dim, dropout=dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                padding_mask: Tensor) -> Tensor:
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attn)))


class DeformableEncoder(nn.Module):
    """``num_layers`` :class:`EncoderLayer`; ``forward`` maps ``(B, S, D)`` tokens to the memory."""

    def __init__(self, *, num_layers: int, **layer: int | float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, ratios: Tensor, padding_mask: Tensor) -> Tensor:
        reference_points = encoder_reference_points(spatial_shapes, ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src


# -- decoder ----------------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    """Self-attention among the queries (``self_attn_mask`` True = blocked), deformable cross-attention
    to the memory around each query's reference, FFN; post-norm."""

    def __init__(self, *, d_model: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int,
                 num_points: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout_sa, self.norm_sa = nn.Dropout(dropout), nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(d_model=d_model, num_levels=num_levels, num_heads=num_heads,
                                                        num_points=num_points)
        self.dropout_ca, self.norm_ca = nn.Dropout(dropout), nn.LayerNorm(d_model)
        self.ffn = _FFN(d_model=d_model, ffn_dim=ffn_dim, dropout=dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, memory_mask: Tensor, self_attn_mask: Tensor | None) -> Tensor:
        q = tgt + query_pos
        sa = self.self_attn(q, q, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm_sa(tgt + self.dropout_sa(sa))
        ca = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_mask)
        return self.ffn(self.norm_ca(tgt + self.dropout_ca(ca)))


def refine(reference: Tensor, delta: Tensor) -> Tensor:
    """``sigmoid(delta + inverse_sigmoid(reference))`` for ``(..., 4)`` deltas; a 2-d point reference
    ``(..., 2)`` takes the centre deltas and the size deltas alone (Deformable DETR)."""
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()


class DeformableDecoder(nn.Module):
    """``num_layers`` :class:`DecoderLayer`. ``box_query_pos`` (DINO): each layer's query position is
    ``MLP(box_sine_embedding(ref))`` of its current reference box; otherwise the caller gives one.
    ``final_norm`` (DINO): a shared LayerNorm on each layer's output."""

    def __init__(self, *, num_layers: int, d_model: int, box_query_pos: bool, final_norm: bool,
                 **layer: int | float) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(DecoderLayer(d_model=d_model, **layer) for _ in range(num_layers))
        self.ref_point_head = (MLP(in_dim=2 * d_model, hidden_dim=d_model, out_dim=d_model, num_layers=2)
                               if box_query_pos else None)
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, tgt: Tensor, reference: Tensor, memory: Tensor, spatial_shapes: Tensor, ratios: Tensor,
                memory_mask: Tensor, *, query_pos: Tensor | None = None, self_attn_mask: Tensor | None = None,
                box_heads: Sequence[nn.Module] | None = None,
                look_forward_twice: bool = False) -> tuple[Tensor, list[Tensor]]:
        """``tgt`` ``(B, N, D)`` contents, ``reference`` ``(B, N, 2 | 4)`` in ``[0, 1]`` of the unpadded
        image. Returns every layer's normalised output ``(L, B, N, D)`` and, per layer, the reference its
        boxes refine ``(B, N, 2 | 4)``: the given one for the first layer, then (with ``box_heads``) the
        reference the layer before refined, undetached under ``look_forward_twice``."""
        if query_pos is None and self.ref_point_head is None:
            raise ValueError("this decoder needs query_pos (it has no box query-position head)")
        hidden, refs = [], [reference]
        for lid, layer in enumerate(self.layers):
            scale = ratios if reference.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
            ref_input = reference[:, :, None] * scale[:, None]  # (B, N, L, 2 | 4) in the padded map
            pos = query_pos
            if self.ref_point_head is not None:
                pos = self.ref_point_head(box_sine_embedding(ref_input[:, :, 0], num_feats=self.d_model // 2))
            tgt = layer(tgt, pos, ref_input, memory, spatial_shapes, memory_mask, self_attn_mask)
            hidden.append(self.norm(tgt))
            if box_heads is not None:
                refined = refine(reference, box_heads[lid](tgt))
                reference = refined.detach()
                refs.append(refined if look_forward_twice else reference)
            else:
                refs.append(reference)
        return torch.stack(hidden), refs[:-1]


__all__ = ["DecoderLayer", "DeformableDecoder", "DeformableEncoder", "EncoderLayer", "MLP", "box_sine_embedding",
           "encoder_proposals", "encoder_reference_points", "level_grid", "refine", "sine_position_encoding",
           "valid_ratios"]
