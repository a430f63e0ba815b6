"""RoIAlign whose CPU backward uses vectorised kernels, with torchvision's values and gradients.

torchvision's CPU ``roi_align`` backward is a serial scalar loop: at mini scale it was 12 % of a
mean-teacher step. With a fixed ``sampling_ratio`` (>= 1) every RoI samples the same regular grid,
so RoIAlign is bilinear sampling at known points followed by an ``s x s`` mean: ``grid_sample``
(vectorised forward and backward) and ``avg_pool2d``. The two agree to float rounding
(``tests/models/test_roi_align.py`` checks values and gradients against torchvision). Elsewhere
(adaptive sampling ratio, CUDA, reduced precision) torchvision's kernel runs unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as _TorchvisionMultiScaleRoIAlign
from torchvision.ops import roi_align as _torchvision_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def uses_sampling_grid(feature: Tensor, sampling_ratio: int) -> bool:
    """Whether :func:`roi_align` takes the ``grid_sample`` route for this feature map."""
    return feature.device.type == "cpu" and feature.dtype == torch.float32 and sampling_ratio >= 1


def roi_align(feature: Tensor, rois: Tensor | list[Tensor], *, output_size: int, spatial_scale: float,
              sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align`` (``aligned=False``) of ``(N, C, H, W)`` features at ``(K, 5)`` RoIs
    ``[image, x1, y1, x2, y2]`` (or a list of per-image ``(K_b, 4)`` boxes) in image coordinates ->
    ``(K, C, output_size, output_size)``."""
    if isinstance(rois, (list, tuple)):
        rois = _convert_to_roi_format(list(rois))
    if not uses_sampling_grid(feature, sampling_ratio):
        return _torchvision_roi_align(feature, rois, output_size=output_size, spatial_scale=spatial_scale,
                                      sampling_ratio=sampling_ratio)
    return _grid_roi_align(feature, rois, output_size, spatial_scale, sampling_ratio)


def _sample_points(start: Tensor, length: Tensor, n: int) -> Tensor:
    """``(K, n)`` pixel coordinates: the centres of ``n`` equal cells over ``[start, start + length]``."""
    cells = (torch.arange(n, dtype=start.dtype, device=start.device) + 0.5) / n
    return start[:, None] + cells[None] * length[:, None]


def _grid_roi_align(feature: Tensor, rois: Tensor, out: int, scale: float, s: int) -> Tensor:
    n_img, channels, height, width = feature.shape
    k, side = len(rois), out * s
    if k == 0:
        return feature.new_zeros(0, channels, out, out)
    image = rois[:, 0].long()
    x1, y1 = rois[:, 1] * scale, rois[:, 2] * scale
    # as torchvision without `aligned`: a RoI is at least one feature cell wide and high
    w, h = (rois[:, 3] * scale - x1).clamp(min=1.0), (rois[:, 4] * scale - y1).clamp(min=1.0)
    xs, ys = _sample_points(x1, w, side), _sample_points(y1, h, side)
    # torchvision reads 0 beyond one cell outside the map and clamps within it; border padding
    # clamps, and the mask zeroes the rest
    inside = (((ys >= -1) & (ys <= height))[:, :, None] & ((xs >= -1) & (xs <= width))[:, None, :])
    # grid_sample's normalised coordinates (align_corners=False): pixel centres at (2i + 1) / size - 1
    gx, gy = (2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1
    grid_k = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (K, side, side, 2)
    # grid_sample samples per image: lay each image's RoIs out in rows, padded to the busiest image
    counts = torch.bincount(image, minlength=n_img)
    order = torch.argsort(image, stable=True)  # RoIs need not come grouped by image
    slot = torch.empty_like(image)
    slot[order] = torch.arange(k, device=rois.device) - (torch.cumsum(counts, 0) - counts)[image[order]]
    rows = int(counts.max())
    grid = feature.new_zeros(n_img, rows, side, side, 2)
    grid[image, slot] = grid_k
    sampled = F.grid_sample(feature, grid.view(n_img, rows * side, side, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
    sampled = sampled.view(n_img, channels, rows, side, side).permute(0, 2, 1, 3, 4)[image, slot]  # (K, C, side, side)
    sampled = sampled * inside[:, None].to(sampled.dtype)
    return F.avg_pool2d(sampled, s) if s > 1 else sampled


class MultiScaleRoIAlign(_TorchvisionMultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same level assignment and scales) pooling each level
    with :func:`roi_align`."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            if len(index):
                pooled = roi_align(feature, rois[index], output_size=self.output_size[0], spatial_scale=scale,
                                   sampling_ratio=self.sampling_ratio)
                result[index] = pooled.to(result.dtype)
        return result
