"""Weak / strong views and their matrices: hand-computed maps, image-vs-box agreement, and the
teacher-to-student box mapping the pseudo-label path relies on."""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssodlib.data.transforms import (
    CutoutPass,
    StrongViewConfig,
    WeakViewConfig,
    affine_about_center,
    clip_boxes,
    cutout,
    hflip_matrix,
    identity,
    relative_matrix,
    resize_size,
    scale_matrix,
    strong_view,
    teacher_student_views,
    transform_boxes,
    transform_points,
    warp_affine,
    weak_view,
)

# Tolerances, argued once here and used below.
# A rectangle drawn on whole pixels has its edges on integer (pixel-edge) coordinates. Bilinear
# sampling of it gives exactly 0.5 * 255 on the edge, so thresholding at 127 keeps an output pixel
# iff its centre's preimage lies inside the rectangle (corners are only ever cut, never grown: the
# value there is a product of two ramps). Hence:
#  * the mask's box lies inside the mapped hull grown by half a pixel (pixel centre inside -> pixel
#    edge at most 0.5 beyond); for axis-aligned maps every edge is a straight line, so the mask box
#    is also within 0.5 px of the hull on every side;
#  * for rotation / shear the hull's extremes are single corner tips of a parallelogram (cut a little
#    by bilinear rounding and missed by the pixel grid), so the mask may fall short of them by more;
#    1.5 px covers the tip geometry at the ranges used here.
EPS = 1e-3  # rounding ties of the uint8 output at exactly 127.5
AXIS_TOL = 0.5 + EPS
TIP_TOL = 1.5


def _mask_box(image: torch.Tensor) -> torch.Tensor:
    """Pixel-edge box ``x1, y1, x2, y2`` of the pixels brighter than 127 in any channel."""
    mask = (image > 127).any(0) if image.dim() == 3 else image > 127
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert len(ys) > 0, "the rectangle vanished"
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float64)


def _rect_image(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    img = torch.zeros(3, height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 255
    return img


def _assert_axis_aligned_agrees(mask_box: torch.Tensor, hull: torch.Tensor) -> None:
    assert (mask_box - hull).abs().max().item() <= AXIS_TOL, (mask_box, hull)


def _assert_hull_agrees(mask_box: torch.Tensor, hull: torch.Tensor, tip_tol: float = TIP_TOL) -> None:
    # contained in the hull grown by half a pixel ...
    assert mask_box[0] >= hull[0] - AXIS_TOL and mask_box[1] >= hull[1] - AXIS_TOL, (mask_box, hull)
    assert mask_box[2] <= hull[2] + AXIS_TOL and mask_box[3] <= hull[3] + AXIS_TOL, (mask_box, hull)
    # ... and reaching the hull's extreme corners up to the tip tolerance
    assert mask_box[0] <= hull[0] + tip_tol and mask_box[1] <= hull[1] + tip_tol, (mask_box, hull)
    assert mask_box[2] >= hull[2] - tip_tol and mask_box[3] >= hull[3] - tip_tol, (mask_box, hull)


def _box(*v: float) -> torch.Tensor:
    return torch.tensor([list(v)], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# matrices by hand


def test_hflip_matrix_maps_box_by_hand():
    out = transform_boxes(_box(10, 20, 30, 40), hflip_matrix(100))
    assert torch.equal(out, _box(70, 20, 90, 40))
    # a flip is its own inverse
    assert torch.equal(hflip_matrix(100) @ hflip_matrix(100), identity())


def test_scale_matrix_by_hand():
    out = transform_boxes(_box(10, 20, 30, 40), scale_matrix(0.5, 2.0))
    assert torch.equal(out, _box(5, 40, 15, 80))


def test_affine_rotation_90_about_centre_by_hand():
    m = affine_about_center(width=120, height=100, angle=90)
    # centre (60, 50): relative corners dx in [-30, 10], dy in [-30, -10] map to (dy, -dx)
    out = transform_boxes(_box(30, 20, 70, 40), m)
    torch.testing.assert_close(out, _box(30, 40, 50, 80), atol=1e-9, rtol=0)
    # the centre is fixed; a point right of the centre goes up (counter-clockwise on screen)
    pts = transform_points(torch.tensor([[60.0, 50.0], [70.0, 50.0]], dtype=torch.float64), m)
    torch.testing.assert_close(pts, torch.tensor([[60.0, 50.0], [60.0, 40.0]], dtype=torch.float64),
                               atol=1e-9, rtol=0)


def test_affine_scale_about_centre_and_translate_by_hand():
    m = affine_about_center(width=100, height=80, scale=2.0, translate=(5.0, -3.0))
    # centre (50, 40): x -> 2 (x - 50) + 55, y -> 2 (y - 40) + 37
    out = transform_boxes(_box(40, 30, 60, 50), m)
    torch.testing.assert_close(out, _box(35, 17, 75, 57), atol=1e-12, rtol=0)
    m = affine_about_center(width=100, height=80, translate=(7.0, 2.0))
    torch.testing.assert_close(m, torch.tensor([[1.0, 0, 7], [0, 1.0, 2], [0, 0, 1.0]], dtype=torch.float64))


def test_affine_shear_by_hand():
    m = affine_about_center(width=100, height=100, shear=(45.0, 0.0))
    # x -> x + tan(45) (y - 50) about the centre (50, 50)
    pts = transform_points(torch.tensor([[50.0, 60.0], [50.0, 40.0]], dtype=torch.float64), m)
    torch.testing.assert_close(pts, torch.tensor([[60.0, 60.0], [40.0, 40.0]], dtype=torch.float64),
                               atol=1e-9, rtol=0)


def test_relative_matrix_round_trip():
    m = affine_about_center(width=90, height=70, angle=17, scale=1.3, shear=(5, -8), translate=(3, 4))
    torch.testing.assert_close(relative_matrix(m, m), identity(), atol=1e-12, rtol=0)
    a = hflip_matrix(90) @ scale_matrix(0.5, 0.5)
    # relative_matrix(to, from) = to @ inv(from): composing it with from gives to
    torch.testing.assert_close(relative_matrix(m, a) @ a, m, atol=1e-12, rtol=0)
    box = _box(10, 12, 30, 40)
    back = transform_boxes(transform_boxes(box, a), relative_matrix(identity(), a))
    torch.testing.assert_close(back, box, atol=1e-12, rtol=0)


def test_transform_boxes_empty():
    out = transform_boxes(torch.zeros(0, 4), hflip_matrix(10))
    assert out.shape == (0, 4)
    out = transform_boxes(torch.zeros(0), hflip_matrix(10))
    assert out.shape == (0, 4)


def test_transform_boxes_keeps_dtype_and_hulls_rotations():
    out = transform_boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), affine_about_center(width=2, height=2, angle=45))
    assert out.dtype == torch.float32
    r = math.sqrt(2)
    torch.testing.assert_close(out, torch.tensor([[1 - r, 1 - r, 1 + r, 1 + r]]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# clipping


def test_clip_boxes_values_and_keep():
    boxes = torch.tensor([[-5.0, -5.0, 10.0, 10.0],
                          [90.0, 70.0, 120.0, 130.0],
                          [50.0, 50.0, 50.5, 60.0],
                          [-10.0, 20.0, 0.5, 30.0],
                          [105.0, 10.0, 120.0, 20.0]])
    clipped, keep = clip_boxes(boxes, height=80, width=100)
    expected = torch.tensor([[0.0, 0.0, 10.0, 10.0],
                             [90.0, 70.0, 100.0, 80.0],
                             [50.0, 50.0, 50.5, 60.0],
                             [0.0, 20.0, 0.5, 30.0],
                             [100.0, 10.0, 100.0, 20.0]])
    assert torch.equal(clipped, expected)
    assert keep.tolist() == [True, True, False, False, False]
    _, keep = clip_boxes(boxes, height=80, width=100, min_size=0.5)
    assert keep.tolist() == [True, True, True, True, False]
    _, keep = clip_boxes(boxes, height=80, width=100, min_size=11.0)
    assert keep.tolist() == [False, False, False, False, False]
    _, keep = clip_boxes(boxes, height=80, width=100, min_size=10.0)
    assert keep.tolist() == [True, True, False, False, False]


# ---------------------------------------------------------------------------------------------
# warp_affine agrees with transform_boxes

H, W = 60, 80
RECT = (30, 20, 50, 35)


def test_warp_integer_translation_is_pixel_exact():
    img = _rect_image(H, W, RECT)
    m = affine_about_center(width=W, height=H, translate=(5.0, -3.0))
    out = warp_affine(img, m, out_size=(H, W), fill=0)
    assert out.dtype == torch.uint8 and out.shape == (3, H, W)
    assert torch.equal(out, _rect_image(H, W, (35, 17, 55, 32)))
    assert torch.equal(transform_boxes(_box(*RECT), m), _box(35, 17, 55, 32))


def test_warp_fills_outside_with_fill():
    img = torch.full((3, H, W), 200, dtype=torch.uint8)
    out = warp_affine(img, affine_about_center(width=W, height=H, translate=(10.0, 0.0)), out_size=(H, W), fill=114)
    assert (out[:, :, :10] == 114).all()
    assert (out[:, :, 10:] == 200).all()


def test_warp_out_size_and_scale():
    img = _rect_image(H, W, RECT)
    out = warp_affine(img, scale_matrix(2.0, 2.0), out_size=(2 * H, 2 * W), fill=0)
    assert out.shape == (3, 2 * H, 2 * W)
    expected = _rect_image(2 * H, 2 * W, tuple(2 * v for v in RECT))
    # the mask is exact; bilinear upsampling leaves 3/4 and 1/4 ramps on the two pixels at each edge
    assert torch.equal(out > 127, expected > 127)
    x1, y1, x2, y2 = (2 * v for v in RECT)
    assert out[0, (y1 + y2) // 2, x1 - 1:x1 + 2].tolist() == [64, 191, 255]
    assert out[0, (y1 + y2) // 2, x2 - 2:x2 + 1].tolist() == [255, 191, 64]


def test_warp_rotation_90_is_pixel_exact():
    img = _rect_image(H, W, RECT)
    m = affine_about_center(width=W, height=H, angle=90)
    # centre (40, 30): dx in [-10, 10], dy in [-10, 5] -> x' = dy + 40, y' = -dx + 30
    torch.testing.assert_close(transform_boxes(_box(*RECT), m), _box(30, 20, 45, 40), atol=1e-9, rtol=0)
    out = warp_affine(img, m, out_size=(H, W), fill=0)
    assert torch.equal(out, _rect_image(H, W, (30, 20, 45, 40)))


def test_warp_float_image_keeps_dtype():
    img = _rect_image(H, W, RECT).float() / 255
    out = warp_affine(img, affine_about_center(width=W, height=H, translate=(2.0, 1.0)), out_size=(H, W), fill=0.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _rect_image(H, W, (32, 21, 52, 36)).float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [
    dict(scale=1.37),
    dict(scale=0.63, translate=(3.3, -2.7)),
    dict(scale=1.21, translate=(-4.6, 1.4)),
])
def test_warp_axis_aligned_matches_boxes(kwargs):
    img = _rect_image(H, W, RECT)
    m = affine_about_center(width=W, height=H, **kwargs)
    hull = transform_boxes(_box(*RECT), m)[0]
    _assert_axis_aligned_agrees(_mask_box(warp_affine(img, m, out_size=(H, W), fill=0)), hull)


@pytest.mark.parametrize("kwargs", [
    dict(angle=30.0, scale=1.3),
    dict(angle=-45.0, translate=(2.5, 1.5)),
    dict(angle=13.0, scale=0.7),
    dict(shear=(20.0, -15.0), scale=0.8),
    dict(shear=(-30.0, 30.0), scale=1.1),
    dict(angle=-25.0, shear=(10.0, 5.0), scale=1.2),
])
def test_warp_rotation_shear_within_hull(kwargs):
    img = _rect_image(H, W, RECT)
    m = affine_about_center(width=W, height=H, **kwargs)
    hull = transform_boxes(_box(*RECT), m)[0]
    assert hull[0] >= 0 and hull[1] >= 0 and hull[2] <= W and hull[3] <= H  # stays in view
    _assert_hull_agrees(_mask_box(warp_affine(img, m, out_size=(H, W), fill=0)), hull)


# ---------------------------------------------------------------------------------------------
# weak view


def test_resize_size_by_hand():
    assert resize_size(100, 200, short=50, max_size=1333) == (50, 100)
    assert resize_size(100, 200, short=50, max_size=80) == (40, 80)
    assert resize_size(200, 100, short=50, max_size=80) == (80, 40)
    assert resize_size(480, 640, short=600, max_size=1000) == (600, 800)
    assert resize_size(480, 640, short=600, max_size=700) == (525, 700)


@pytest.mark.parametrize("scales,max_size,expected", [((50,), 1333, (50, 100)), ((50,), 80, (40, 80)),
                                                       ((100,), 1333, (100, 200))])
def test_weak_view_output_size(scales, max_size, expected):
    img = torch.randint(0, 256, (3, 100, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    view, m = weak_view(img, WeakViewConfig(scales=scales, max_size=max_size, flip_prob=0.0),
                        torch.Generator().manual_seed(1))
    assert view.shape == (3, *expected) and view.dtype == torch.uint8
    oh, ow = expected
    assert torch.equal(m, scale_matrix(ow / 200, oh / 100))
    if expected == (100, 200):
        assert torch.equal(view, img) and torch.equal(m, identity())


def test_weak_view_picks_among_scales():
    img = torch.zeros(3, 100, 200, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    heights = {weak_view(img, WeakViewConfig(scales=(30, 40, 50), flip_prob=0.0), g)[0].shape[1]
               for _ in range(40)}
    assert heights == {30, 40, 50}


def test_weak_view_flip():
    img = torch.randint(0, 256, (3, 100, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    view, m = weak_view(img, WeakViewConfig(scales=(100,), flip_prob=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(view, img.flip(-1))
    assert torch.equal(m, hflip_matrix(200))
    view, m = weak_view(img, WeakViewConfig(scales=(50,), flip_prob=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(view, TF.resize(img, [50, 100], antialias=True).flip(-1))
    assert torch.equal(m, hflip_matrix(100) @ scale_matrix(0.5, 0.5))
    assert torch.equal(transform_boxes(_box(10, 20, 30, 40), m), _box(85, 10, 95, 20))


@pytest.mark.parametrize("flip", [0.0, 1.0])
@pytest.mark.parametrize("short", [70, 50, 130])
def test_weak_view_box_lands_where_matrix_says(flip, short):
    box = (40, 20, 120, 60)
    img = _rect_image(100, 200, box)
    view, m = weak_view(img, WeakViewConfig(scales=(short,), flip_prob=flip), torch.Generator().manual_seed(0))
    s = short / 100
    x1, y1, x2, y2 = (v * s for v in box)
    if flip:
        x1, x2 = 200 * s - x2, 200 * s - x1
    expected = _box(x1, y1, x2, y2)
    torch.testing.assert_close(transform_boxes(_box(*box), m), expected, atol=1e-9, rtol=0)
    assert (_mask_box(view) - expected[0]).abs().max().item() <= 1.0


# ---------------------------------------------------------------------------------------------
# teacher -> student: the key property

TS_H, TS_W = 160, 192
TS_RECT = (84, 70, 116, 90)  # even coordinates: exact after halving, off-centre so flips show
GEOMETRIC_ONLY = StrongViewConfig(geometric=True, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                                  cutouts=(), fill=0)


def _branch(jitter: torch.Tensor) -> str:
    a = jitter[:2, :2]
    assert abs(a[0, 0] - a[1, 1]) < 1e-9  # no branch scales the axes differently
    if abs(a[0, 1]) < 1e-12 and abs(a[1, 0]) < 1e-12:
        return "translate"
    if abs(a[0, 1] + a[1, 0]) < 1e-9:
        return "rotate"
    return "shear"


def test_teacher_boxes_map_into_student_view():
    img = _rect_image(TS_H, TS_W, TS_RECT)
    rect = _box(*TS_RECT)
    weak_cfg = WeakViewConfig(scales=(TS_H, TS_H // 2), flip_prob=0.5)
    seen = {"translate": 0, "rotate": 0, "shear": 0}
    flips = sizes = 0
    for seed in range(20):
        views = teacher_student_views(img, weak=weak_cfg, strong=GEOMETRIC_ONLY, g=torch.Generator().manual_seed(seed))
        assert views.strong.shape == views.weak.shape
        flips += int(views.weak_matrix[0, 0] < 0)
        sizes += int(views.weak.shape[1] == TS_H)
        # the teacher's box in its (weak) view: exactly where the weak matrix says
        teacher_box = _mask_box(views.weak)
        torch.testing.assert_close(teacher_box[None], transform_boxes(rect, views.weak_matrix), atol=1e-9, rtol=0)
        # teacher -> student, both from the teacher's box and from the original rectangle
        t2s = views.teacher_to_student
        torch.testing.assert_close(t2s @ views.weak_matrix, views.strong_matrix, atol=1e-12, rtol=0)
        hull = transform_boxes(teacher_box[None], t2s)[0]
        torch.testing.assert_close(hull, transform_boxes(rect, views.strong_matrix)[0], atol=1e-9, rtol=0)
        _, h, w = views.strong.shape
        assert hull[0] >= 0 and hull[1] >= 0 and hull[2] <= w and hull[3] <= h
        student_box = _mask_box(views.strong)
        branch = _branch(t2s)
        seen[branch] += 1
        if branch == "translate":
            _assert_axis_aligned_agrees(student_box, hull)
        else:
            _assert_hull_agrees(student_box, hull)
    assert all(n > 0 for n in seen.values()), seen
    assert 0 < flips < 20 and 0 < sizes < 20


def test_an_independent_student_view_has_its_own_size_and_flip_and_boxes_still_map():
    # Soft Teacher's student view: scales 160 / 80 and flip 0.5 drawn again for the student; the teacher's
    # rectangle, mapped by teacher_to_student, lands on the student's rectangle (scales halve exactly)
    img = _rect_image(TS_H, TS_W, TS_RECT)
    weak_cfg = WeakViewConfig(scales=(TS_H, TS_H // 2), flip_prob=0.5)
    strong = dataclasses.replace(GEOMETRIC_ONLY, geometric=False, independent_resize=True)
    sizes_differ = flips_differ = 0
    for seed in range(20):
        views = teacher_student_views(img, weak=weak_cfg, strong=strong, g=torch.Generator().manual_seed(seed))
        sizes_differ += int(views.strong.shape != views.weak.shape)
        flips_differ += int((views.weak_matrix[0, 0] < 0) != (views.strong_matrix[0, 0] < 0))
        hull = transform_boxes(_mask_box(views.weak)[None], views.teacher_to_student)[0]
        torch.testing.assert_close(hull, _mask_box(views.strong), atol=1e-6, rtol=0)
    assert 0 < sizes_differ < 20 and 0 < flips_differ < 20
    # off (the default), the generator draws exactly what it drew before the option existed
    off = teacher_student_views(img, weak=weak_cfg, strong=GEOMETRIC_ONLY, g=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    weak_img, weak_m = weak_view(img, weak_cfg, g)
    strong_img, jitter = strong_view(weak_img, GEOMETRIC_ONLY, g)
    assert torch.equal(off.strong, strong_img) and torch.equal(off.strong_matrix, jitter @ weak_m)


def test_teacher_to_student_is_identity_without_geometry():
    img = _rect_image(TS_H, TS_W, TS_RECT)
    views = teacher_student_views(img, weak=WeakViewConfig(scales=(TS_H // 2,), flip_prob=1.0),
                                  strong=StrongViewConfig(), g=torch.Generator().manual_seed(3))
    torch.testing.assert_close(views.teacher_to_student, identity(), atol=1e-12, rtol=0)
    assert torch.equal(views.strong_matrix, views.weak_matrix)


# ---------------------------------------------------------------------------------------------
# determinism


def _views(seed: int):
    img = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(123))
    return teacher_student_views(img, weak=WeakViewConfig(scales=(48, 64, 80), flip_prob=0.5),
                                 strong=StrongViewConfig(geometric=True), g=torch.Generator().manual_seed(seed))


def test_views_are_deterministic_in_the_generator():
    a, b = _views(7), _views(7)
    assert torch.equal(a.weak, b.weak) and torch.equal(a.strong, b.strong)
    assert torch.equal(a.weak_matrix, b.weak_matrix) and torch.equal(a.strong_matrix, b.strong_matrix)
    c = _views(8)
    assert not (torch.equal(a.strong_matrix, c.strong_matrix) and a.strong.shape == c.strong.shape
                and torch.equal(a.strong, c.strong))
    assert not torch.equal(a.strong_matrix, c.strong_matrix)


# ---------------------------------------------------------------------------------------------
# strong view, photometric


def _random_image(seed: int = 0, h: int = 48, w: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_strong_view_defaults_keep_shape_dtype_identity():
    img = _random_image()
    for seed in range(5):
        out, m = strong_view(img, StrongViewConfig(), torch.Generator().manual_seed(seed))
        assert out.shape == img.shape and out.dtype == torch.uint8
        assert torch.equal(m, identity())
        assert not torch.equal(out, img)


def test_strong_view_all_off_is_identity():
    img = _random_image()
    cfg = StrongViewConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, cutouts=())
    out, m = strong_view(img, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, img) and torch.equal(m, identity())


def test_strong_view_grayscale_channels_equal():
    img = _random_image()
    cfg = StrongViewConfig(jitter_prob=1.0, grayscale_prob=1.0, blur_prob=0.0, cutouts=())
    out, m = strong_view(img, cfg, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert torch.equal(m, identity())
    assert not torch.equal(out[0], TF.rgb_to_grayscale(img)[0])  # jitter changed it before


def test_strong_view_blur_only_smooths():
    img = _random_image()
    cfg = StrongViewConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=1.0, blur_sigma=(1.5, 1.5), cutouts=())
    out, _ = strong_view(img, cfg, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8
    # blur lowers the variation between neighbouring pixels
    assert out.float().diff(dim=-1).abs().mean() < 0.5 * img.float().diff(dim=-1).abs().mean()


# ---------------------------------------------------------------------------------------------
# cutout


def _changed(out: torch.Tensor, value: int) -> torch.Tensor:
    return (out != value).any(0)


@pytest.mark.parametrize("via_strong_view", [False, True])
def test_cutout_erases_the_requested_area(via_strong_view):
    spec = CutoutPass(prob=1.0, scale=(0.1, 0.1), ratio=(1.0, 1.0))
    img = torch.full((3, 100, 100), 7, dtype=torch.uint8)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        if via_strong_view:
            out, _ = strong_view(img, StrongViewConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                                                       cutouts=(spec,)), g)
        else:
            out = cutout(img, spec, g)
        assert (img == 7).all()  # input untouched
        changed = _changed(out, 7)
        # area 1000 with aspect 1: a round(sqrt(1000)) = 32 px square, i.e. 1024 px = 0.1024 of the image
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (32, 32)
        # noise equals 7 in all three channels with probability 256**-3: a handful of misses at most
        assert 1020 <= int(changed.sum()) <= 1024
        assert (out[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1].float().std() > 50)


def test_cutout_prob_zero_and_impossible_size_keep_image():
    img = torch.full((3, 20, 20), 7, dtype=torch.uint8)
    out, _ = strong_view(img, StrongViewConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                                               cutouts=(CutoutPass(prob=0.0, scale=(0.1, 0.1), ratio=(1, 1)),)),
                         torch.Generator().manual_seed(0))
    assert torch.equal(out, img)
    # a rectangle as large as the image never fits (sides must be < H and < W): unchanged
    out = cutout(img, CutoutPass(prob=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0)), torch.Generator().manual_seed(0))
    assert torch.equal(out, img)
