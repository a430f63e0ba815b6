"""Statistics and figures of a COCO-format detection data set (and of a labeled/unlabeled fold)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ssodlib.data.coco import CocoAnnotations, load_coco, read_image

# COCO's area ranges (pixels^2) and the FPN level a box of that size is assigned to (P2 for < 56 px).
COCO_AREA_RANGES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}


@dataclass(kw_only=True)
class DatasetStats:
    source: str
    num_images: int
    num_boxes: int
    images_without_boxes: int
    boxes_per_image_mean: float
    boxes_per_image_max: int
    class_names: list[str]
    class_counts: list[int]
    head_to_tail_ratio: float  # most frequent class count / rarest (non-zero) class count
    box_side_px: dict[str, float]  # percentiles of sqrt(box area)
    area_fractions: dict[str, float]  # COCO small / medium / large share of boxes
    fpn_level_fractions: dict[str, float]  # share of boxes each FPN level P2..P5 is assigned

    def to_dict(self) -> dict:
        return asdict(self)


def fpn_levels(sides: np.ndarray, *, canonical: float = 224.0, canonical_level: int = 4) -> np.ndarray:
    """FPN level of RoIs of side ``sqrt(w*h)`` (Eq. 1 of the FPN paper, clamped to P2..P5)."""
    return np.clip(np.floor(canonical_level + np.log2(np.maximum(sides, 1e-6) / canonical)), 2, 5).astype(int)


def dataset_stats(ann: CocoAnnotations) -> DatasetStats:
    boxes = np.concatenate(ann.boxes) if ann.boxes else np.zeros((0, 4), np.float32)
    per_image = np.array([len(b) for b in ann.boxes])
    counts = ann.class_counts()
    wh = boxes[:, 2:] - boxes[:, :2]
    sides = np.sqrt(wh[:, 0] * wh[:, 1])
    areas = sides**2
    n = max(len(sides), 1)
    levels = fpn_levels(sides)
    nonzero = counts[counts > 0]
    return DatasetStats(
        source=ann.source,
        num_images=len(ann.images),
        num_boxes=int(len(boxes)),
        images_without_boxes=int((per_image == 0).sum()),
        boxes_per_image_mean=float(per_image.mean()) if len(per_image) else 0.0,
        boxes_per_image_max=int(per_image.max()) if len(per_image) else 0,
        class_names=list(ann.class_names),
        class_counts=counts.tolist(),
        head_to_tail_ratio=float(nonzero.max() / nonzero.min()) if len(nonzero) else float("nan"),
        box_side_px={f"p{q}": float(np.percentile(sides, q)) if len(sides) else float("nan") for q in (1, 50, 99)},
        area_fractions={k: float(((areas >= lo) & (areas < hi)).sum() / n) for k, (lo, hi) in COCO_AREA_RANGES.items()},
        fpn_level_fractions={f"P{lvl}": float((levels == lvl).sum() / n) for lvl in range(2, 6)},
    )


def class_distribution_kl(p_counts: np.ndarray, q_counts: np.ndarray, eps: float = 1e-8) -> float:
    """KL(p || q) between two class histograms, each normalised (LabelMatch Figure 4c)."""
    p = p_counts / max(p_counts.sum(), 1)
    q = q_counts / max(q_counts.sum(), 1)
    return float(np.sum(np.where(p > 0, p * (np.log(p + eps) - np.log(q + eps)), 0.0)))


def plot_dataset(stats: DatasetStats, out_dir: str | os.PathLike, *, compare: DatasetStats | None = None) -> list[Path]:
    """Class-frequency bars (optionally against a second set) and the box-size histogram, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(stats.class_names))
    share = np.array(stats.class_counts) / max(stats.num_boxes, 1)
    ax.bar(x - 0.2 if compare else x, share, width=0.4 if compare else 0.8, label=Path(stats.source).name)
    if compare:
        ax.bar(x + 0.2, np.array(compare.class_counts) / max(compare.num_boxes, 1), width=0.4,
               label=Path(compare.source).name)
        ax.legend(fontsize=8)
    ax.set_xticks(x, stats.class_names, rotation=45, ha="right")
    ax.set_ylabel("share of boxes")
    ax.set_yscale("log")
    ax.set_title("class distribution")
    fig.tight_layout()
    paths = [out_dir / "class_distribution.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def plot_samples(ann: CocoAnnotations, image_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                 count: int = 8) -> Path:
    """A grid of the first ``count`` images with their ground-truth boxes and class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = min(count, len(ann.images))
    cols = min(4, count)
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        img = read_image(Path(image_dir) / ann.images[k]["file_name"]).permute(1, 2, 0).numpy()
        ax.imshow(img)
        for (x1, y1, x2, y2), lab in zip(ann.boxes[k], ann.labels[k]):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1))
            ax.text(x1, y1, ann.class_names[lab], color="yellow", fontsize=6, va="bottom")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def load_stats(ann_file: str | os.PathLike, *, categories: list[int] | None = None) -> tuple[CocoAnnotations, DatasetStats]:
    ann = load_coco(ann_file, categories=categories)
    return ann, dataset_stats(ann)
