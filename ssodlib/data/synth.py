"""The embedded benchmark: a seeded generator of COCO-format detection data.

No public detection data set can be fetched everywhere this library runs, so every command defaults
to this benchmark. It is built so that semi-supervised detection is a real problem on it:

* 12 shape classes that differ in topology (ring vs disk), corners (triangle, square, hexagon),
  concavity (star, cross, crescent, L) and elongation (ellipse, arrow); instances are rotated,
  stretched, randomly coloured and sometimes textured, so colour never gives the class away;
* long-tailed class frequencies (``p_c ~ (c + 1) ** -tail_exponent``; the most frequent class is
  about 25x the rarest), identical in labeled and unlabeled data;
* object sizes log-uniform from ``min_object_size`` to ``max_object_frac`` of the image side, so
  every FPN level gets work, 1-15 objects per image, partial occlusion (boxes are the visible
  extent, as in COCO), textured backgrounds and distractor clutter that pseudo-labelers confuse
  with objects.

Everything is a pure function of ``(seed, split, image index)``, so generation is deterministic and
parallel.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ssodlib.data.splits import split_file_names, write_coco_splits
from ssodlib.io import jsonable, read_json, write_json

CLASSES = (
    "disk", "square", "triangle", "ring", "star", "cross",
    "ellipse", "hexagon", "arrow", "crescent", "lshape", "halfdisk",
)
FORMAT_VERSION = 1
# 'pretrain' images belong to no benchmark split: the backbone pretraining set (see object_crops)
SPLIT_CODES = {"train": 0, "val": 1, "pretrain": 2}
BACKGROUND = len(CLASSES)  # label of object_crops' background crops


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Sizes of one benchmark scale. Presets: :data:`SYNTH_PRESETS`; override with :func:`synth_config`."""

    num_train: int
    num_val: int
    image_size: int  # nominal side; each image's sides vary by +-15 %
    min_object_size: float = 8.0
    max_object_frac: float = 0.5
    max_objects: int = 15
    tail_exponent: float = 1.3
    clutter: int = 6  # mean number of distractors per image
    occlusion_min_visible: float = 0.3  # objects more occluded than this are clutter, not labels
    jpeg_quality: int = 92
    split_folds: tuple[int, ...] = (1, 2, 3, 4, 5)
    split_percents: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)


SYNTH_PRESETS: dict[str, SynthConfig] = {
    "smoke": SynthConfig(num_train=100, num_val=20, image_size=96, max_objects=8, clutter=3),
    "mini": SynthConfig(num_train=2000, num_val=500, image_size=256),
}


def synth_config(scale: str, **overrides: Any) -> SynthConfig:
    """The preset of ``scale`` (``smoke`` or ``mini``) with explicit overrides applied."""
    if scale not in SYNTH_PRESETS:
        raise ValueError(f"no embedded benchmark at scale {scale!r}; choose one of {sorted(SYNTH_PRESETS)}")
    return replace(SYNTH_PRESETS[scale], **overrides)


def class_frequencies(config: SynthConfig) -> np.ndarray:
    """Sampling probability of each class, shape ``(C,)``, most frequent first."""
    weights = (np.arange(len(CLASSES)) + 1.0) ** -config.tail_exponent
    return weights / weights.sum()


# Shapes: lists of (polygon in unit coordinates, fill value); 0-fills cut holes.
def _circle(n: int = 40, rx: float = 1.0, ry: float = 1.0, cx: float = 0.0, a0: float = 0.0, a1: float = 2 * math.pi):
    t = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi - 1e-6)
    return np.stack([cx + rx * np.cos(t), ry * np.sin(t)], 1)


def _regular(k: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(k) * 2 * math.pi / k
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star() -> np.ndarray:
    t = -math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_W = 0.34
_SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "disk": [(_circle(), 255)],
    "square": [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85, 255)],
    "triangle": [(_regular(3, -math.pi / 2), 255)],
    "ring": [(_circle(), 255), (_circle(rx=0.55, ry=0.55), 0)],
    "star": [(_star(), 255)],
    "cross": [(np.array([[-_W, -1], [_W, -1], [_W, -_W], [1, -_W], [1, _W], [_W, _W], [_W, 1],
                         [-_W, 1], [-_W, _W], [-1, _W], [-1, -_W], [-_W, -_W]], float), 255)],
    "ellipse": [(_circle(rx=1.0, ry=0.38), 255)],
    "hexagon": [(_regular(6), 255)],
    "arrow": [(np.array([[-1, -0.22], [0.25, -0.22], [0.25, -0.6], [1, 0], [0.25, 0.6], [0.25, 0.22],
                         [-1, 0.22]], float), 255)],
    "crescent": [(_circle(), 255), (_circle(cx=0.45, rx=0.85, ry=0.85), 0)],
    "lshape": [(np.array([[-1, -1], [-0.3, -1], [-0.3, 0.4], [1, 0.4], [1, 1], [-1, 1]], float), 255)],
    "halfdisk": [(np.vstack([_circle(a0=0.0, a1=math.pi), [[1.0, 0.0]]]) - [0, 0.5], 255)],
}


def _shape_mask(name: str, size: float, angle: float, stretch: float) -> np.ndarray:
    """Boolean mask of a shape whose unrotated extent is ``size`` px, rotated by ``angle`` rad."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]]) @ np.diag([stretch, 1.0 / stretch]) * (size / 2.0)
    polys = [(p @ rot.T, fill) for p, fill in _SHAPES[name]]
    extent = max(np.abs(p).max() for p, _ in polys)
    side = int(math.ceil(2 * extent)) + 2
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for p, fill in polys:
        draw.polygon([tuple(v) for v in (p + side / 2.0)], fill=fill)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    low = rng.uniform(30, 225, size=(3, 3, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta, period = rng.uniform(0, math.pi), rng.uniform(4, 40)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    base += (rng.uniform(0, 25) * stripes)[..., None]
    base += rng.normal(0, rng.uniform(2, 10), size=base.shape)
    return base


def _paint(img: np.ndarray, mask: np.ndarray, y0: int, x0: int, rng: np.random.Generator, owner: np.ndarray | None,
           value: int) -> None:
    """Paint ``mask`` at ``(y0, x0)`` (clipped to the image) in a random colour or texture."""
    h, w = img.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + mask.shape[0], h)), slice(max(x0, 0), min(x0 + mask.shape[1], w))
    m = mask[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    if m.size == 0:
        return
    region = img[ys, xs]
    local_mean = region.mean(axis=(0, 1))
    color = rng.uniform(0, 255, size=3)
    for _ in range(4):  # keep most objects visible against the local background
        if np.abs(color - local_mean).sum() > 120:
            break
        color = rng.uniform(0, 255, size=3)
    fill = np.broadcast_to(color, region.shape).astype(np.float32)
    if rng.random() < 0.3:
        second = rng.uniform(0, 255, size=3)
        yy, xx = np.mgrid[0:region.shape[0], 0:region.shape[1]]
        period = rng.uniform(3, 10)
        stripe = ((xx + yy * rng.uniform(-1, 1)) // period) % 2 == 1
        fill = np.where(stripe[..., None], second, fill)
    region[m] = fill[m]
    if owner is not None:
        owner[ys, xs][m] = value


def _clutter(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray, size_range: tuple[float, float]) -> None:
    """One distractor: a thick stroke, an arc, an irregular blob or a dot field."""
    h, w = img.shape[:2]
    size = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
    side = int(size) + 2
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    kind = rng.integers(4)
    if kind == 0:
        pts = rng.uniform(0, side, size=(2, 2))
        draw.line([tuple(p) for p in pts], fill=255, width=max(1, int(rng.uniform(1, max(2, side / 8)))))
    elif kind == 1:
        a0 = rng.uniform(0, 360)
        draw.arc([0, 0, side - 1, side - 1], a0, a0 + rng.uniform(60, 200), fill=255, width=max(1, side // 10))
    elif kind == 2:
        k = rng.integers(5, 10)
        t = np.sort(rng.uniform(0, 2 * math.pi, size=k))
        r = rng.uniform(0.3, 1.0, size=k) * side / 2
        draw.polygon([(side / 2 + ri * math.cos(ti), side / 2 + ri * math.sin(ti)) for ri, ti in zip(r, t)], fill=255)
    else:
        for p in rng.uniform(0, side, size=(rng.integers(3, 9), 2)):
            rad = rng.uniform(0.5, 2.0)
            draw.ellipse([p[0] - rad, p[1] - rad, p[0] + rad, p[1] + rad], fill=255)
    mask = np.asarray(canvas) > 127
    _paint(img, mask, int(rng.uniform(-side / 2, h - side / 2)), int(rng.uniform(-side / 2, w - side / 2)), rng,
           owner, -1)


def render_image(config: SynthConfig, seed: int, split: str, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render image ``index`` of ``split``; returns ``(H, W, 3)`` uint8 and its annotations (xywh boxes)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_CODES)}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    h, w = (int(round(config.image_size * rng.uniform(0.85, 1.15))) for _ in range(2))
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int16)
    lo, hi = config.min_object_size, config.max_object_frac * min(h, w)
    for _ in range(rng.poisson(config.clutter / 2)):
        _clutter(rng, img, owner, (lo, hi / 2))
    n = 1 + rng.binomial(config.max_objects - 1, 0.3)
    probs = class_frequencies(config)
    objects = []
    for k in range(n):
        label = int(rng.choice(len(CLASSES), p=probs))
        size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        # mild stretch only: a stretched disk must not pass for an ellipse
        mask = _shape_mask(CLASSES[label], size, rng.uniform(0, 2 * math.pi), math.exp(rng.uniform(-0.15, 0.15)))
        y0, x0 = (int(rng.uniform(-mask.shape[0] / 4, dim - mask.shape[0] * 3 / 4)) for dim in (h, w))
        _paint(img, mask, y0, x0, rng, owner, k)
        in_frame = mask[max(-y0, 0): h - y0, max(-x0, 0): w - x0]
        objects.append((label, int(in_frame.sum()), y0, x0, mask.shape))
    for _ in range(rng.poisson(config.clutter / 2)):  # clutter on top occludes objects too
        _clutter(rng, img, owner, (lo, hi / 2))
    return np.clip(img, 0, 255).astype(np.uint8), _annotations(owner, objects, config)


def _annotations(owner: np.ndarray, objects: list, config: SynthConfig) -> list[dict[str, Any]]:
    anns = []
    h, w = owner.shape
    for k, (label, in_frame_area, y0, x0, shape) in enumerate(objects):
        ys, xs = slice(max(y0, 0), min(y0 + shape[0], h)), slice(max(x0, 0), min(x0 + shape[1], w))
        visible = owner[ys, xs] == k
        area = int(visible.sum())
        if area < config.occlusion_min_visible * in_frame_area or area == 0:
            continue
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        bx, by = xs.start + cols[0], ys.start + rows[0]
        bw, bh = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
        if min(bw, bh) < 2:
            continue
        anns.append({"category_id": label + 1, "bbox": [int(bx), int(by), int(bw), int(bh)], "area": area,
                     "iscrowd": 0})
    return anns


def _render_and_save(args: tuple[SynthConfig, int, str, int, str]) -> tuple[int, int, int, list[dict[str, Any]]]:
    config, seed, split, index, path = args
    img, anns = render_image(config, seed, split, index)
    Image.fromarray(img).save(path, quality=config.jpeg_quality)
    return index, img.shape[0], img.shape[1], anns


def _generate_split(config: SynthConfig, seed: int, split: str, count: int, root: Path, workers: int,
                    progress: bool) -> dict[str, Any]:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(config, seed, split, i, str(image_dir / f"{i:06d}.jpg")) for i in range(count)]
    bar = dict(total=count, desc=f"synth {split}", disable=not progress, leave=False)
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_render_and_save, jobs, chunksize=16), **bar))
    else:
        results = [_render_and_save(j) for j in tqdm(jobs, **bar)]
    images, annotations = [], []
    for index, h, w, anns in results:
        images.append({"id": index + 1, "file_name": f"{split}/{index:06d}.jpg", "height": h, "width": w})
        for a in anns:
            annotations.append({**a, "id": len(annotations) + 1, "image_id": index + 1})
    return {
        "info": {"description": f"ssodlib embedded benchmark, {split}", "version": FORMAT_VERSION, "seed": seed},
        "licenses": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
        "images": images,
        "annotations": annotations,
    }


def _square_crop(img: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The ``side``-pixel square centred at ``(cx, cy)``, grey outside the image, resized to ``size``."""
    h, w = img.shape[:2]
    s = max(int(round(side)), 4)
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    out = np.full((s, s, 3), 114, dtype=np.uint8)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if xb > xa and yb > ya:
        out[ya - y0: yb - y0, xa - x0: xb - x0] = img[ya:yb, xa:xb]
    return np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR))


def _image_crops(args: tuple[SynthConfig, int, int, int, int]) -> list[tuple[np.ndarray, int]]:
    config, seed, index, size, background = args
    img, anns = render_image(config, seed, "pretrain", index)
    rng = np.random.default_rng([seed, SPLIT_CODES["pretrain"], index, 1])
    h, w = img.shape[:2]
    boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)], dtype=float)
    crops = []
    for a, (x0, y0, x1, y1) in zip(anns, boxes):  # context around the object, as in object-centred photos
        side = max(x1 - x0, y1 - y0) * rng.uniform(1.1, 1.5)
        crops.append((_square_crop(img, (x0 + x1) / 2, (y0 + y1) / 2, side, size), a["category_id"] - 1))
    for _ in range(background):
        side = math.exp(rng.uniform(math.log(config.min_object_size), math.log(min(h, w) / 2)))
        cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
        ix = (np.minimum(cx + side / 2, boxes[:, 2]) - np.maximum(cx - side / 2, boxes[:, 0])).clip(0)
        iy = (np.minimum(cy + side / 2, boxes[:, 3]) - np.maximum(cy - side / 2, boxes[:, 1])).clip(0)
        covered = ix * iy / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        if covered.size == 0 or covered.max() <= 0.2:  # holds at most a sliver of any object
            crops.append((_square_crop(img, cx, cy, side, size), BACKGROUND))
    return crops


def object_crops(config: SynthConfig, *, seed: int = 0, start: int = 0, count: int, size: int,
                 background: int = 2, workers: int = 1, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labelled square crops of images ``start .. start + count - 1`` of the ``pretrain`` split.

    The stand-in for ImageNet at mini and smoke scale: object-centred pictures of the benchmark's
    shape classes (ImageNet likewise holds many COCO classes) cut from images that neither the
    training nor the validation split contains. Each object gives one crop with 10-50 % context;
    each image gives up to ``background`` crops that hold no object (label :data:`BACKGROUND`).
    Returns ``(N, size, size, 3)`` uint8 crops and ``(N,)`` int64 labels.
    """
    jobs = [(config, seed, i, size, background) for i in range(start, start + count)]
    bar = dict(total=count, desc="pretraining crops", disable=not progress, leave=False)
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            per_image = list(tqdm(pool.imap(_image_crops, jobs, chunksize=16), **bar))
    else:
        per_image = [_image_crops(j) for j in tqdm(jobs, **bar)]
    pairs = [pair for crops in per_image for pair in crops]
    images = np.stack([c for c, _ in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    return images, np.array([label for _, label in pairs], dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class SynthPaths:
    """Where a generated benchmark lives. ``image_dir`` is the root of every ``file_name``."""

    root: Path

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def fold(self, *, fold: int, percent: float, unlabeled: bool = False) -> Path:
        names = split_file_names("instances_train", fold=fold, percent=percent)
        return self.root / "annotations" / "semi" / names[int(unlabeled)]

    @property
    def manifest(self) -> Path:
        return self.root / "benchmark.json"


def benchmark_identity(config: SynthConfig, *, seed: int = 0) -> dict[str, Any]:
    """What identifies a generated benchmark: a cache built from it (such as pretrained weights) records this."""
    return {"format_version": FORMAT_VERSION, "seed": seed, "config": asdict(config), "classes": list(CLASSES)}


def generate(config: SynthConfig, *, root: str | os.PathLike, seed: int = 0, workers: int | None = None,
             progress: bool = True, force: bool = False) -> SynthPaths:
    """Generate the benchmark under ``root`` (train, val, and the labeled/unlabeled folds of train).

    Reuses an existing complete benchmark made with the same configuration and seed unless ``force``;
    the manifest is written last, so an interrupted generation is redone rather than half-used.
    """
    paths = SynthPaths(root=Path(root))
    manifest = benchmark_identity(config, seed=seed)
    if not force and paths.manifest.is_file() and read_json(paths.manifest) == jsonable(manifest):
        return paths
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    for split, count in (("train", config.num_train), ("val", config.num_val)):
        data = _generate_split(config, seed, split, count, paths.root, workers if count >= 500 else 1, progress)
        write_json(paths.annotations(split), data)
    write_coco_splits(paths.annotations("train"), out_dir=paths.root / "annotations" / "semi",
                      folds=config.split_folds, percents=config.split_percents)
    write_json(paths.manifest, manifest, indent=2)
    return paths


def default_data_root() -> Path:
    """``$SSOD_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get("SSOD_DATA_ROOT", "data"))


def ensure_benchmark(scale: str, *, data_root: str | os.PathLike | None = None, seed: int = 0,
                     progress: bool = True) -> SynthPaths:
    """The embedded benchmark of ``scale`` under ``data_root/synth-{scale}``, generated on first use."""
    root = Path(data_root) if data_root is not None else default_data_root()
    return generate(synth_config(scale), root=root / f"synth-{scale}", seed=seed, progress=progress)
