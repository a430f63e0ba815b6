"""The grid-sampling RoIAlign against torchvision's kernel: values and gradients, the edge cases of its
boundary rule, and the multi-scale pooler the two-stage detector uses."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align

from ssodlib.models.roi_align import MultiScaleRoIAlign, roi_align, uses_sampling_grid


def _rois(k: int, images: int, size: float, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=g) * size * 0.9
    wh = torch.rand(k, 2, generator=g) * size * 0.4 + 0.5
    return torch.cat([torch.randint(0, images, (k, 1), generator=g).float(), xy, xy + wh], 1)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.25, 0.125])
def test_values_and_gradients_match_torchvision(sampling_ratio, scale):
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(3, 5, 17, 13, generator=g, requires_grad=True)
    rois = _rois(40, 3, 13 / scale, g)
    ours = roi_align(feature, rois, output_size=7, spatial_scale=scale, sampling_ratio=sampling_ratio)
    theirs = torchvision_roi_align(feature, rois, output_size=7, spatial_scale=scale, sampling_ratio=sampling_ratio)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    weights = torch.randn(ours.shape, generator=g)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), feature)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), feature)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-4, rtol=1e-5)


def test_boundary_rule_matches_torchvision():
    """Points within one cell outside the map read the clamped edge, farther ones read 0; a RoI
    narrower than a cell is widened to one cell; an image may have no RoI."""
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(3, 2, 6, 8, generator=g, requires_grad=True)
    rois = torch.tensor([[0, -0.9, -0.5, 3.0, 2.0],    # within one cell left of and above the map
                         [0, 6.5, 4.5, 8.9, 6.9],      # up to one cell right of and below it
                         [2, -5.0, -4.0, 12.0, 10.0],  # well beyond every side: zeros
                         [2, 3.0, 3.0, 3.2, 3.1]])     # thinner than a cell
    ours = roi_align(feature, rois, output_size=4, spatial_scale=1.0, sampling_ratio=2)
    theirs = torchvision_roi_align(feature, rois, output_size=4, spatial_scale=1.0, sampling_ratio=2)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    assert ours[2].abs().sum() > 0 and (ours[2] == 0).any()  # the far RoI has both kinds of point
    (g_ours,) = torch.autograd.grad(ours.sum(), feature)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), feature)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-5)
    assert g_ours[1].abs().sum() == 0  # image 1 has no RoI


def test_no_rois_and_the_routes():
    feature = torch.randn(2, 3, 4, 4)
    assert roi_align(feature, torch.zeros(0, 5), output_size=7, spatial_scale=1.0, sampling_ratio=1).shape == (0, 3, 7, 7)
    assert uses_sampling_grid(feature, 1) and uses_sampling_grid(feature, 2)
    assert not uses_sampling_grid(feature, 0)  # adaptive sampling: torchvision's kernel
    assert not uses_sampling_grid(feature.bfloat16(), 1)  # reduced precision would move the sample points


@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_multi_scale_pooler_matches_torchvision(sampling_ratio):
    g = torch.Generator().manual_seed(2)
    size = 640
    features = {str(i): torch.randn(2, 4, size // s, size // s, generator=g, requires_grad=True)
                for i, s in enumerate((4, 8, 16, 32))}
    sides = torch.tensor([40.0, 150.0, 300.0, 500.0]).repeat(10)  # every level gets RoIs
    boxes = [torch.cat([xy := torch.rand(40, 2, generator=g) * 200, xy + sides[:, None]], 1) for _ in range(2)]
    ours = MultiScaleRoIAlign(featmap_names=list(features), output_size=7, sampling_ratio=sampling_ratio)
    theirs = TorchvisionMultiScaleRoIAlign(featmap_names=list(features), output_size=7, sampling_ratio=sampling_ratio)
    a, b = ours(features, boxes, [(size, size)] * 2), theirs(features, boxes, [(size, size)] * 2)
    # sample positions differ by float rounding of the normalised grid: ~1e-7 of the map's size
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    assert len(set(ours.map_levels(boxes).tolist())) == 4
    grads_a = torch.autograd.grad(a.sum(), list(features.values()))
    grads_b = torch.autograd.grad(b.sum(), list(features.values()))
    for x, y in zip(grads_a, grads_b):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-5)
