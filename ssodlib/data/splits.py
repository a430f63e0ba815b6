"""COCO-partial ("COCO-standard") labeled/unlabeled folds, identical to STAC, LabelMatch and mmdetection.

The reference procedure seeds NumPy's legacy generator with the fold number and draws
``int(percent / 100 * N)`` image indices *with replacement*, so duplicates make the labeled set a
little smaller than the draw. Images keep the annotation file's order. We use a private
``RandomState(fold)``, which yields the same stream as ``np.random.seed(fold)`` without touching
global state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ssodlib.io import InputError, read_json, write_json

STANDARD_PERCENTS = (0.5, 1.0, 2.0, 5.0, 10.0)
STANDARD_FOLDS = (1, 2, 3, 4, 5)


def format_percent(percent: float) -> str:
    """``1.0 -> '1'``, ``0.5 -> '0.5'``: the spelling used in the reference file names."""
    return format(float(percent), "g")


def split_file_names(stem: str, *, fold: int, percent: float) -> tuple[str, str]:
    """``('instances_train2017.1@1.json', 'instances_train2017.1@1-unlabeled.json')`` for stem
    ``instances_train2017``."""
    tag = f"{stem}.{fold}@{format_percent(percent)}"
    return f"{tag}.json", f"{tag}-unlabeled.json"


def labeled_draw(num_images: int, *, fold: int, percent: float) -> np.ndarray:
    """The raw draw of labeled image indices (with duplicates), as the reference tools make it."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    size = int(percent / 100.0 * num_images)
    return np.random.RandomState(fold).choice(range(num_images), size=size)


def split_coco(data: dict[str, Any], *, fold: int, percent: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a COCO instances dict into (labeled, unlabeled) dicts.

    The unlabeled dict keeps its annotations: they are the withheld ground truth that pseudo-label
    diagnostics compare against, never a training signal.
    """
    images = data["images"]
    chosen = set(labeled_draw(len(images), fold=fold, percent=percent).tolist())
    labeled_ids = {img["id"] for i, img in enumerate(images) if i in chosen}
    common = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    parts = []
    for keep in (lambda i: i in labeled_ids, lambda i: i not in labeled_ids):
        parts.append({
            **common,
            "images": [img for img in images if keep(img["id"])],
            "annotations": [a for a in data.get("annotations", []) if keep(a["image_id"])],
        })
    return parts[0], parts[1]


def write_coco_splits(
    ann_file: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    folds: Iterable[int] = STANDARD_FOLDS,
    percents: Iterable[float] = STANDARD_PERCENTS,
) -> list[Path]:
    """Write every (fold, percent) split of ``ann_file`` into ``out_dir``; returns the paths written."""
    ann_file = Path(ann_file)
    data = read_json(ann_file, what="COCO annotation file")
    if not isinstance(data, dict) or "images" not in data:
        raise InputError(f"{ann_file}: no 'images' list. Fix: pass a COCO instances file.")
    stem = ann_file.name.removesuffix(".json")
    written = []
    for fold in folds:
        for percent in percents:
            labeled, unlabeled = split_coco(data, fold=fold, percent=percent)
            if not labeled["images"]:
                raise InputError(
                    f"{ann_file}: {percent}% of {len(data['images'])} images is no image. Fix: use a larger percent."
                )
            names = split_file_names(stem, fold=fold, percent=percent)
            for name, part in zip(names, (labeled, unlabeled)):
                written.append(write_json(Path(out_dir) / name, part))
    return written
