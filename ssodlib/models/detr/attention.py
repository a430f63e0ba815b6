"""Multi-scale deformable attention (Deformable DETR: Deformable Transformers for End-to-End Object
Detection, Zhu et al., ICLR 2021, https://arxiv.org/abs/2010.04159) in plain PyTorch.

Equations to functions:

* Eq. 3, the sum over heads ``m``, levels ``l`` and points ``k`` of ``A_mlqk * x^l(phi_l(p_q) + dp_mlqk)``:
  :func:`multi_scale_deformable_attention` (bilinear sampling by ``grid_sample``, zero outside the map);
* the sampling locations ``phi_l(p_q) + dp_mlqk``: :func:`sampling_locations`, for 2-d reference points
  (offsets in pixels of level ``l``: ``loc = ref + off / (W_l, H_l)``) and, as the authors' code does for
  box references (two-stage, box refinement, DINO), 4-d boxes (``loc = ref_xy + off / P * ref_wh / 2``);
* the module around them (value projection, offsets and softmaxed weights from the query, output
  projection) with the authors' initialisation: :class:`MultiScaleDeformableAttention`.

From the authors' code (``models/ops/functions/ms_deform_attn_func.py::ms_deform_attn_core_pytorch`` and
``models/ops/modules/ms_deform_attn.py`` of fundamentalvision/Deformable-DETR): the tensor layouts, the
``align_corners=False`` / zero-padding sampling convention and the initial offsets (head ``m`` points
along angle ``2 pi m / M``, point ``k`` at distance ``k + 1``). Ours: the sampling locations and
``grid_sample`` run in float32 whenever a float32 tensor takes part, so that under bf16 autocast the
locations are not rounded to bf16's 8-bit mantissa (``grid_sample`` is a promote-to-widest op for
autocast, so it runs in float32 anyway). Its CUDA backward accumulates with atomics and is not
deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                                     attention_weights: Tensor) -> Tensor:
    """Eq. 3 without the projections.

    ``value`` ``(N, S, M, D)``: ``M`` heads of ``D`` channels at the ``S = sum_l H_l W_l`` positions of
    every level, flattened level after level, row-major; ``spatial_shapes`` ``(L, 2)`` the ``(H_l, W_l)``;
    ``sampling_locations`` ``(N, Lq, M, L, P, 2)`` as ``(x, y)`` in ``[0, 1]`` of each level's map (0 and 1
    are the outer edges of its border pixels); ``attention_weights`` ``(N, Lq, M, L, P)``. Returns
    ``(N, Lq, M * D)``, head after head."""
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    grids = 2 * sampling_locations.to(dtype) - 1  # grid_sample's [-1, 1]
    sampled = []
    for lvl, (v, (h, w)) in enumerate(zip(value.to(dtype).split([h * w for h, w in shapes], dim=1), shapes)):
        v = v.flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)  # (N*M, D, H_l, W_l)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(n, heads * dim, queries).transpose(1, 2).contiguous()


def sampling_locations(reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor) -> Tensor:
    """``(N, Lq, M, L, P, 2)`` locations from ``reference_points`` ``(N, Lq, L, 2)`` points or
    ``(N, Lq, L, 4)`` ``cxcywh`` boxes (in ``[0, 1]`` of each level's padded map) and ``offsets``
    ``(N, Lq, M, L, P, 2)``: in pixels of level ``l`` for points, in ``1 / P`` of half the box for boxes.
    Computed in float32 at least."""
    dtype = torch.promote_types(reference_points.dtype, torch.float32)
    ref, off = reference_points.to(dtype), offsets.to(dtype)
    if ref.shape[-1] == 2:
        normaliser = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(ref)  # (L, 2): (W, H)
        return ref[:, :, None, :, None, :] + off / normaliser[None, None, None, :, None, :]
    if ref.shape[-1] == 4:
        points = off.shape[4]
        return ref[:, :, None, :, None, :2] + off / points * ref[:, :, None, :, None, 2:] * 0.5
    raise ValueError(f"reference points must end in 2 (points) or 4 (boxes), got shape {tuple(ref.shape)}")


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``num_levels`` maps: each query attends to ``num_points`` points per
    head and level around its reference (Eq. 3)."""

    def __init__(self, *, d_model: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of num_heads={num_heads}")
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: zero offset weights, biases on a star of ``M`` directions with
        point ``k`` at distance ``k + 1``; uniform attention; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: Tensor,
                padding_mask: Tensor | None = None) -> Tensor:
        """``query`` ``(N, Lq, C)`` (with its positional embedding), ``reference_points`` ``(N, Lq, L, 2 | 4)``,
        ``value`` ``(N, S, C)``, ``padding_mask`` ``(N, S)`` True at padding (those values count as 0).
        Returns ``(N, Lq, C)``."""
        n, lq, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(n, v.shape[1], m, -1)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        locations = sampling_locations(reference_points, offsets, spatial_shapes)
        out = multi_scale_deformable_attention(v, spatial_shapes, locations, weights)
        return self.output_proj(out.to(query.dtype))


__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention", "sampling_locations"]
