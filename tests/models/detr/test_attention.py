"""Multi-scale deformable attention in plain PyTorch: hand-computed cases, a slow reference loop on random
inputs (values and gradients), ``gradcheck``, and the sampling locations of point and box references."""

from __future__ import annotations

import math

import pytest
import torch

from ssodlib.models.detr.attention import (MultiScaleDeformableAttention, multi_scale_deformable_attention,
                                           sampling_locations)


def reference_attention(value, spatial_shapes, locations, weights):
    """Eq. 3 point by point: bilinear interpolation with zero padding (align_corners=False: pixel ``i``
    covers ``[i, i + 1) / W``, its centre at ``(i + 0.5) / W``)."""
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in spatial_shapes.tolist()[:-1]:
        starts.append(starts[-1] + h * w)
    out = []
    for b in range(n):
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = value.new_zeros(dim)
                for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
                    for p in range(points):
                        x = locations[b, q, m, lvl, p, 0] * w - 0.5
                        y = locations[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = int(math.floor(float(x.detach()))), int(math.floor(float(y.detach())))
                        for xi in (x0, x0 + 1):
                            for yi in (y0, y0 + 1):
                                if 0 <= xi < w and 0 <= yi < h:
                                    bilinear = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                                    v = value[b, starts[lvl] + yi * w + xi, m]
                                    acc = acc + weights[b, q, m, lvl, p] * bilinear * v
                per_head.append(acc)
            out.append(torch.cat(per_head))
    return torch.stack(out).view(n, queries, heads * dim)


def _random_inputs(seed=0, n=2, queries=3, heads=2, dim=3, shapes=((4, 5), (2, 3)), points=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes)
    s = int(spatial.prod(1).sum())
    value = torch.randn(n, s, heads, dim, generator=g, dtype=dtype)
    # locations a little outside [0, 1] too, where part of the bilinear kernel falls on the zero padding
    loc = torch.rand(n, queries, heads, len(shapes), points, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    w = torch.rand(n, queries, heads, len(shapes), points, generator=g, dtype=dtype)
    return value, spatial, loc, w / w.sum((-1, -2), keepdim=True)


# -- hand-computed cases ------------------------------------------------------------------------------
# one level, value map [[1, 2], [3, 4]], one head, D = 1, weight 1; pixel centres at 0.25 and 0.75:
#   (0.25, 0.25) -> pixel (0, 0) = 1;  (0.75, 0.25) -> pixel (1, 0) = 2
#   (0.5, 0.5)   -> the mean of all four = 2.5
#   (0.0, 0.0)   -> a quarter of pixel (0, 0), the rest is padding: 0.25
#   (0.5, 0.25)  -> half of 1 and half of 2: 1.5
@pytest.mark.parametrize("xy, expected", [((0.25, 0.25), 1.0), ((0.75, 0.25), 2.0), ((0.5, 0.5), 2.5),
                                          ((0.0, 0.0), 0.25), ((0.5, 0.25), 1.5)])
def test_hand_computed_bilinear_samples(xy, expected):
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)  # row-major: (x=0,y=0), (1,0), (0,1), (1,1)
    loc = torch.tensor(xy).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, torch.tensor([[2, 2]]), loc, torch.ones(1, 1, 1, 1, 1))
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(expected)


def test_weights_sum_levels_points_and_heads_stay_apart():
    # two levels (1x1 of value 10, 2x2 [[1, 2], [3, 4]]), two heads whose values differ by a factor -1;
    # head 0: 0.25 * 10 (level 0 centre) + 0.75 * 2.5 (level 1 centre) = 2.5 + 1.875 = 4.375
    lvl0 = torch.tensor([10.0])
    lvl1 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    head0 = torch.cat([lvl0, lvl1])
    value = torch.stack([head0, -head0], -1).view(1, 5, 2, 1)
    loc = torch.full((1, 1, 2, 2, 1, 2), 0.5)
    w = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2, 1).expand(1, 1, 2, 2, 1)
    out = multi_scale_deformable_attention(value, torch.tensor([[1, 1], [2, 2]]), loc, w)
    assert out.flatten().tolist() == pytest.approx([4.375, -4.375])


def test_output_shape_follows_the_reference_implementation():
    value, spatial, loc, w = _random_inputs(dtype=torch.float32)
    out = multi_scale_deformable_attention(value, spatial, loc, w)
    assert out.shape == (2, 3, 2 * 3)  # (N, Lq, M * D)


# -- against the reference loop ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_reference_loop_on_random_inputs(seed):
    value, spatial, loc, w = _random_inputs(seed)
    fast = multi_scale_deformable_attention(value, spatial, loc, w)
    slow = reference_attention(value, spatial, loc, w)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_gradients_match_the_reference_loop():
    value, spatial, loc, w = _random_inputs(3)
    cotangent = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = []
    for fn in (multi_scale_deformable_attention, reference_attention):
        inputs = [t.clone().requires_grad_(True) for t in (value, loc, w)]
        (fn(inputs[0], spatial, inputs[1], inputs[2]) * cotangent).sum().backward()
        grads.append([t.grad for t in inputs])
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-11)


def test_gradcheck_on_small_maps():
    value, spatial, loc, w = _random_inputs(4, n=1, queries=2, heads=1, dim=2, shapes=((3, 3), (2, 1)), points=2)
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, loc, w))
    assert torch.autograd.gradcheck(lambda v, l, a: multi_scale_deformable_attention(v, spatial, l, a), inputs)


# -- sampling locations -------------------------------------------------------------------------------------
def test_point_reference_offsets_are_pixels_of_their_level():
    # reference (0.5, 0.5) on a level of W = 10, H = 20; offset (1, 2) pixels -> (0.5 + 1/10, 0.5 + 2/20)
    ref = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    off = torch.tensor([1.0, 2.0]).view(1, 1, 1, 1, 1, 2)
    loc = sampling_locations(ref, off, torch.tensor([[20, 10]]))
    assert loc.flatten().tolist() == pytest.approx([0.6, 0.6])


def test_box_reference_offsets_scale_with_half_the_box_over_the_points():
    # box (0.5, 0.5, 0.2, 0.4), P = 4, offset (1, -1): x = 0.5 + 1/4 * 0.2 * 0.5 = 0.525,
    # y = 0.5 - 1/4 * 0.4 * 0.5 = 0.45
    ref = torch.tensor([0.5, 0.5, 0.2, 0.4]).view(1, 1, 1, 4)
    off = torch.zeros(1, 1, 1, 1, 4, 2)
    off[..., 0, :] = torch.tensor([1.0, -1.0])
    loc = sampling_locations(ref, off, torch.tensor([[8, 8]]))
    assert loc[0, 0, 0, 0, 0].tolist() == pytest.approx([0.525, 0.45])
    assert loc[0, 0, 0, 0, 1].tolist() == pytest.approx([0.5, 0.5])  # zero offset: the centre


def test_locations_are_float32_under_bf16_inputs():
    ref = torch.rand(1, 2, 1, 4, dtype=torch.bfloat16)
    loc = sampling_locations(ref, torch.zeros(1, 2, 1, 1, 2, 2, dtype=torch.bfloat16), torch.tensor([[4, 4]]))
    assert loc.dtype == torch.float32


# -- the module -----------------------------------------------------------------------------------------------
def test_initial_offsets_point_along_each_head_direction_at_growing_distances():
    attn = MultiScaleDeformableAttention(d_model=8, num_levels=2, num_heads=4, num_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, head 1 along +y (cos / sin of 2 pi m / 4, scaled so the larger is 1)
    assert bias[0, 0, :, 0].tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert bias[1, 1, :, 1].tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert torch.equal(bias[:, 0], bias[:, 1])  # the same for every level
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0


def test_module_ignores_padded_values():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(d_model=8, num_levels=1, num_heads=2, num_points=2).double()
    query = torch.randn(1, 3, 8, dtype=torch.float64)
    value = torch.randn(1, 4, 8, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True]])  # the second row of a 2x2 map is padding
    ref = torch.rand(1, 3, 1, 2, dtype=torch.float64)
    out = attn(query, ref, value, torch.tensor([[2, 2]]), mask)
    changed = value.clone()
    changed[0, 2:] += 100.0
    assert torch.equal(out, attn(query, ref, changed, torch.tensor([[2, 2]]), mask))
