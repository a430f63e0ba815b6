"""Weak and strong views that return the 3x3 matrix they applied.

Coordinates are continuous pixel-edge coordinates: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``,
so an image of width ``W`` spans ``[0, W]`` and a horizontal flip is ``x -> W - x``. A view's matrix
``M`` maps a point of the original image to the view (homogeneous column vectors). A box seen by the
teacher in view ``a`` lies in the student's view ``b`` at ``transform_boxes(box, M_b @ inv(M_a))``
(:func:`relative_matrix`).

Probabilities and ranges follow CrossMatch's Table 5 (Unbiased Teacher's recipe); the optional
geometric jitter follows Soft Teacher / DTG-SSOD (one of translate, rotate, shear, plus scale jitter).
Randomness comes only from the ``torch.Generator`` passed in, so views are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# matrices and boxes


def identity() -> Tensor:
    return torch.eye(3, dtype=torch.float64)


def scale_matrix(sx: float, sy: float) -> Tensor:
    return torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def hflip_matrix(width: float) -> Tensor:
    return torch.tensor([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def affine_about_center(*, width: float, height: float, angle: float = 0.0, scale: float = 1.0,
                        shear: tuple[float, float] = (0.0, 0.0), translate: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """Rotation (degrees, counter-clockwise on screen), scale and shear (degrees) about the image
    centre, then translation in pixels."""
    cx, cy = width / 2.0, height / 2.0
    a = math.radians(angle)
    rot = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0], [0, 0, 1.0]],
                       dtype=torch.float64)
    sh = torch.tensor([[1.0, math.tan(math.radians(shear[0])), 0.0], [math.tan(math.radians(shear[1])), 1.0, 0.0],
                       [0, 0, 1.0]], dtype=torch.float64)
    to_origin = torch.tensor([[1.0, 0, -cx], [0, 1.0, -cy], [0, 0, 1.0]], dtype=torch.float64)
    back = torch.tensor([[1.0, 0, cx + translate[0]], [0, 1.0, cy + translate[1]], [0, 0, 1.0]], dtype=torch.float64)
    return back @ scale_matrix(scale, scale) @ rot @ sh @ to_origin


def relative_matrix(to_view: Tensor, from_view: Tensor) -> Tensor:
    """Matrix taking coordinates of view ``from_view`` into view ``to_view`` (both from one image)."""
    return to_view @ torch.linalg.inv(from_view)


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Apply ``matrix`` (3, 3) to ``(N, 2)`` points."""
    m = matrix.to(torch.float64)
    p = points.to(torch.float64)
    out = p @ m[:2, :2].T + m[:2, 2]
    return out.to(points.dtype)


def transform_boxes(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Map ``(N, 4)`` ``x1, y1, x2, y2`` boxes through ``matrix``; returns the axis-aligned hull of
    the four mapped corners (exact for flips, scaling and translation)."""
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).clone()
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack([torch.stack(c, -1) for c in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)
    mapped = transform_points(corners.reshape(-1, 2), matrix).reshape(-1, 4, 2)
    return torch.cat([mapped.amin(1), mapped.amax(1)], -1)


def clip_boxes(boxes: Tensor, *, height: int, width: int, min_size: float = 1.0) -> tuple[Tensor, Tensor]:
    """Clip ``(N, 4)`` boxes to the image; returns the clipped boxes and a keep mask of those whose
    sides are at least ``min_size`` pixels after clipping."""
    clipped = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                           boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], -1)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= min_size) & ((clipped[:, 3] - clipped[:, 1]) >= min_size)
    return clipped, keep


def warp_affine(image: Tensor, matrix: Tensor, *, out_size: tuple[int, int], fill: float = 114.0) -> Tensor:
    """Resample a ``(C, H, W)`` image so that ``out[p] = image[inv(matrix) p]`` at pixel centres."""
    c, h, w = image.shape
    oh, ow = out_size
    inv = torch.linalg.inv(matrix.to(torch.float64))
    ys, xs = torch.meshgrid(torch.arange(oh, dtype=torch.float64) + 0.5, torch.arange(ow, dtype=torch.float64) + 0.5,
                            indexing="ij")
    src = torch.stack([xs, ys], -1).reshape(-1, 2) @ inv[:2, :2].T + inv[:2, 2]
    grid = torch.stack([src[:, 0] * 2 / w - 1, src[:, 1] * 2 / h - 1], -1).reshape(1, oh, ow, 2)
    img = image.to(torch.float32).unsqueeze(0)
    # sample "image - fill" with zero padding, so that outside pixels come out as ``fill``
    out = F.grid_sample(img - fill, grid.to(torch.float32), mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out[0] + fill
    return out.round().clamp(0, 255).to(image.dtype) if image.dtype == torch.uint8 else out.to(image.dtype)


# ---------------------------------------------------------------------------------------------
# random helpers


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _bernoulli(g: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=g, dtype=torch.float64)) < p


# ---------------------------------------------------------------------------------------------
# views


@dataclass(frozen=True, kw_only=True)
class WeakViewConfig:
    """Random horizontal flip and multi-scale resize (shorter side drawn from ``scales``, longer side
    capped at ``max_size``)."""

    scales: tuple[int, ...] = (256,)
    max_size: int = 1333
    flip_prob: float = 0.5


@dataclass(frozen=True, kw_only=True)
class CutoutPass:
    prob: float
    scale: tuple[float, float]
    ratio: tuple[float, float]


@dataclass(frozen=True, kw_only=True)
class StrongViewConfig:
    """Photometric strong augmentation of CrossMatch Table 5, plus optional geometric jitter."""

    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutouts: tuple[CutoutPass, ...] = (
        CutoutPass(prob=0.7, scale=(0.05, 0.2), ratio=(0.3, 3.3)),
        CutoutPass(prob=0.5, scale=(0.02, 0.2), ratio=(0.1, 6.0)),
        CutoutPass(prob=0.3, scale=(0.02, 0.2), ratio=(0.05, 8.0)),
    )
    geometric: bool = False
    # Soft Teacher's (DTG-SSOD's recipe): the student's view takes its own random resize and flip of the
    # image (the weak view's scales) instead of the teacher's, so the two views differ in size
    independent_resize: bool = False
    translate: float = 0.1  # fraction of the image side
    rotate: float = 30.0  # degrees
    shear: float = 30.0  # degrees
    scale_range: tuple[float, float] = (0.5, 1.5)
    fill: float = 114.0


def resize_size(height: int, width: int, *, short: int, max_size: int) -> tuple[int, int]:
    """Output ``(H, W)`` with the shorter side ``short`` unless the longer side would pass ``max_size``."""
    s = min(short / min(height, width), max_size / max(height, width))
    return max(1, int(round(height * s))), max(1, int(round(width * s)))


def weak_view(image: Tensor, config: WeakViewConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip + multi-scale resize of a ``(3, H, W)`` uint8 image; returns ``(view, matrix)``."""
    _, h, w = image.shape
    short = config.scales[int(torch.randint(len(config.scales), (), generator=g))]
    oh, ow = resize_size(h, w, short=short, max_size=config.max_size)
    matrix = identity()
    if (oh, ow) != (h, w):
        image = TF.resize(image, [oh, ow], antialias=True)
        matrix = scale_matrix(ow / w, oh / h)
    if _bernoulli(g, config.flip_prob):
        image = TF.horizontal_flip(image)
        matrix = hflip_matrix(ow) @ matrix
    return image, matrix


def color_jitter(image: Tensor, config: StrongViewConfig, g: torch.Generator) -> Tensor:
    """torchvision's ColorJitter: the four adjustments in random order with uniform factors."""
    ops = [
        lambda im: TF.adjust_brightness(im, _uniform(g, 1 - config.brightness, 1 + config.brightness)),
        lambda im: TF.adjust_contrast(im, _uniform(g, 1 - config.contrast, 1 + config.contrast)),
        lambda im: TF.adjust_saturation(im, _uniform(g, 1 - config.saturation, 1 + config.saturation)),
        lambda im: TF.adjust_hue(im, _uniform(g, -config.hue, config.hue)),
    ]
    for i in torch.randperm(4, generator=g).tolist():
        image = ops[i](image)
    return image


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    return TF.gaussian_blur(image, [2 * radius + 1, 2 * radius + 1], [sigma, sigma])


def cutout(image: Tensor, spec: CutoutPass, g: torch.Generator) -> Tensor:
    """RandomErasing: a rectangle of area fraction in ``scale`` and log-uniform aspect ``ratio``,
    filled with uniform noise (Unbiased Teacher erases with random values)."""
    _, h, w = image.shape
    area = h * w
    for _ in range(10):
        target = area * _uniform(g, *spec.scale)
        aspect = math.exp(_uniform(g, math.log(spec.ratio[0]), math.log(spec.ratio[1])))
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            y = int(torch.randint(h - eh + 1, (), generator=g))
            x = int(torch.randint(w - ew + 1, (), generator=g))
            image = image.clone()
            noise = torch.randint(0, 256, (image.shape[0], eh, ew), generator=g, dtype=torch.int32)
            image[:, y:y + eh, x:x + ew] = noise.to(image.dtype)
            return image
    return image


def geometric_matrix(height: int, width: int, config: StrongViewConfig, g: torch.Generator) -> Tensor:
    """One of translate / rotate / shear, then scale jitter, about the image centre."""
    kind = int(torch.randint(3, (), generator=g))
    kwargs: dict = {"scale": _uniform(g, *config.scale_range)}
    if kind == 0:
        kwargs["translate"] = (_uniform(g, -config.translate, config.translate) * width,
                               _uniform(g, -config.translate, config.translate) * height)
    elif kind == 1:
        kwargs["angle"] = _uniform(g, -config.rotate, config.rotate)
    else:
        kwargs["shear"] = (_uniform(g, -config.shear, config.shear), _uniform(g, -config.shear, config.shear))
    return affine_about_center(width=width, height=height, **kwargs)


def strong_view(image: Tensor, config: StrongViewConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Strong augmentation of a ``(3, H, W)`` uint8 image; returns ``(view, matrix)`` where the
    matrix is the identity unless ``config.geometric``."""
    if _bernoulli(g, config.jitter_prob):
        image = color_jitter(image, config, g)
    if _bernoulli(g, config.grayscale_prob):
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if _bernoulli(g, config.blur_prob):
        image = gaussian_blur(image, _uniform(g, *config.blur_sigma))
    matrix = identity()
    if config.geometric:
        _, h, w = image.shape
        matrix = geometric_matrix(h, w, config, g)
        image = warp_affine(image, matrix, out_size=(h, w), fill=config.fill)
    for spec in config.cutouts:
        if _bernoulli(g, spec.prob):
            image = cutout(image, spec, g)
    return image, matrix


@dataclass(frozen=True, kw_only=True)
class TeacherStudentViews:
    """The two views of an unlabeled image; ``*_matrix`` maps original-image coordinates into each."""

    weak: Tensor
    weak_matrix: Tensor
    strong: Tensor
    strong_matrix: Tensor

    @property
    def teacher_to_student(self) -> Tensor:
        return relative_matrix(self.strong_matrix, self.weak_matrix)


def teacher_student_views(image: Tensor, *, weak: WeakViewConfig, strong: StrongViewConfig,
                          g: torch.Generator) -> TeacherStudentViews:
    """The teacher's weak view and the student's strong view of one image. Both share the weak
    view's flip and resize (as in Unbiased Teacher), unless ``strong.independent_resize`` (Soft Teacher:
    the student's own resize and flip, drawn after the teacher's); the strong view adds photometric noise
    and, optionally, its own geometric jitter."""
    weak_img, weak_m = weak_view(image, weak, g)
    base, base_m = weak_view(image, weak, g) if strong.independent_resize else (weak_img, weak_m)
    strong_img, jitter_m = strong_view(base, strong, g)
    return TeacherStudentViews(weak=weak_img, weak_matrix=weak_m, strong=strong_img, strong_matrix=jitter_m @ base_m)
