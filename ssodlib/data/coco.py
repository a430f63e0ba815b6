"""COCO-format detection data: annotation parsing with counted repairs, and a map-style dataset."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from PIL import Image, UnidentifiedImageError

from ssodlib.io import InputError, read_json


@dataclass(kw_only=True)
class BoxRepairs:
    """What loading did to boxes that were not usable as given (reported, never silent)."""

    clipped: int = 0
    dropped_degenerate: int = 0
    crowd: int = 0

    def message(self, source: str) -> str | None:
        if not (self.clipped or self.dropped_degenerate):
            return None
        return (
            f"{source}: clipped {self.clipped} box(es) extending beyond their image and dropped "
            f"{self.dropped_degenerate} box(es) with zero area after clipping."
        )


@dataclass(kw_only=True)
class CocoAnnotations:
    """A parsed COCO instances file.

    ``boxes[i]`` is a float32 ``(N_i, 4)`` array of ``x1, y1, x2, y2`` pixel boxes of image ``i``
    (crowd boxes excluded), ``labels[i]`` its ``(N_i,)`` contiguous labels ``0..C-1`` in sorted
    category-id order, ``crowd_boxes[i]`` the image's ``iscrowd`` regions.
    """

    source: str
    images: list[dict[str, Any]]
    cat_ids: list[int]
    class_names: list[str]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    crowd_boxes: list[np.ndarray]
    repairs: BoxRepairs = field(default_factory=BoxRepairs)
    raw: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def cat_id_to_label(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.cat_ids)}

    def class_counts(self) -> np.ndarray:
        """Number of (non-crowd) boxes per contiguous label, shape ``(C,)``."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for lab in self.labels:
            counts += np.bincount(lab, minlength=self.num_classes)
        return counts


def _require(obj: dict, key: str, source: str, where: str) -> Any:
    if key not in obj:
        raise InputError(f"{source}: {where} has no '{key}' field. Fix: the file must be COCO instances format.")
    return obj[key]


def _categories(data: dict, source: str) -> tuple[list[int], list[str]]:
    cats = sorted(_require(data, "categories", source, "the file"), key=lambda c: c["id"])
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise InputError(f"{source}: duplicate category ids. Fix: give each category a unique id.")
    return ids, [str(c.get("name", c["id"])) for c in cats]


def _box_numbers(bbox: Any, source: str, ann_id: Any) -> tuple[float, ...]:
    """The four finite numbers of a COCO ``bbox``: a NaN box would pass every clipping comparison and
    reach the losses, so a bad box is an error naming its annotation, not a repair."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox)):
        raise InputError(f"{source}: annotation {ann_id} has bbox {bbox!r}, not four numbers [x, y, width, height]. "
                         "Fix: correct the annotation's bbox or remove the annotation.")
    values = tuple(float(v) for v in bbox)
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{source}: annotation {ann_id} has a NaN or infinite bbox {bbox!r}. Fix: correct the "
                         "annotation's bbox or remove the annotation.")
    return values


def _sanitize_box(bbox: tuple[float, ...], width: float, height: float, repairs: BoxRepairs) -> list[float] | None:
    x, y, w, h = bbox
    x1, y1, x2, y2 = x, y, x + w, y + h
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        repairs.clipped += 1
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        repairs.dropped_degenerate += 1
        return None
    return [cx1, cy1, cx2, cy2]


def parse_coco(data: dict[str, Any], *, source: str, categories: list[int] | None = None) -> CocoAnnotations:
    """Validate and index a COCO instances dict.

    Args:
        data: the parsed JSON.
        source: the file name, used in every message.
        categories: category ids defining the label space (default: the file's own). Unlabeled
            splits must share their labeled split's label space.
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: top level is not a JSON object. Fix: use a COCO instances file.")
    file_ids, file_names = _categories(data, source)
    cat_ids = list(categories) if categories is not None else file_ids
    names = dict(zip(file_ids, file_names))
    images = list(_require(data, "images", source, "the file"))
    index = {}
    for i, img in enumerate(images):
        img_id = _require(img, "id", source, f"image entry {i}")
        _require(img, "file_name", source, f"image {img_id}")
        if img_id in index:
            raise InputError(f"{source}: duplicate image id {img_id}. Fix: image ids must be unique.")
        index[img_id] = i
    boxes: list[list[list[float]]] = [[] for _ in images]
    labels: list[list[int]] = [[] for _ in images]
    crowd: list[list[list[float]]] = [[] for _ in images]
    label_of = {c: i for i, c in enumerate(cat_ids)}
    repairs = BoxRepairs()
    for ann in data.get("annotations", []):
        ann_id = ann.get("id", "?")
        cat = _require(ann, "category_id", source, f"annotation {ann_id}")
        if cat not in label_of:
            raise InputError(
                f"{source}: annotation {ann_id} has unknown category_id {cat} (known: {sorted(label_of)}). "
                "Fix: add the category to 'categories' or remove the annotation."
            )
        img_id = _require(ann, "image_id", source, f"annotation {ann_id}")
        if img_id not in index:
            raise InputError(f"{source}: annotation {ann_id} refers to unknown image_id {img_id}. Fix: remove it.")
        i = index[img_id]
        img = images[i]
        w, h = float(img.get("width", np.inf)), float(img.get("height", np.inf))
        bbox = _box_numbers(_require(ann, "bbox", source, f"annotation {ann_id}"), source, ann_id)
        box = _sanitize_box(bbox, w, h, repairs)
        if box is None:
            continue
        if ann.get("iscrowd", 0):
            repairs.crowd += 1
            crowd[i].append(box)
        else:
            boxes[i].append(box)
            labels[i].append(label_of[cat])

    def as_boxes(rows: list[list[float]]) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32).reshape(-1, 4)

    return CocoAnnotations(
        source=source,
        images=images,
        cat_ids=cat_ids,
        class_names=[names.get(c, str(c)) for c in cat_ids],
        boxes=[as_boxes(b) for b in boxes],
        labels=[np.asarray(lab, dtype=np.int64) for lab in labels],
        crowd_boxes=[as_boxes(b) for b in crowd],
        repairs=repairs,
        raw=data,
    )


def load_coco(ann_file: str | os.PathLike, *, categories: list[int] | None = None) -> CocoAnnotations:
    """Read and validate a COCO instances JSON file; box repairs are reported as one warning."""
    ann = parse_coco(read_json(ann_file, what="COCO annotation file"), source=str(ann_file), categories=categories)
    msg = ann.repairs.message(str(ann_file))
    if msg:
        warnings.warn(msg, stacklevel=2)
    return ann


def read_image(path: str | os.PathLike, *, listed_in: str | None = None) -> Tensor:
    """Decode an image file to a ``(3, H, W)`` uint8 RGB tensor; errors name the file and, when given,
    ``listed_in``: the annotation entry that names it (e.g. ``"instances.json as image 42"``)."""
    path = Path(path)
    entry = f" (listed in {listed_in})" if listed_in else ""
    if not path.is_file():
        raise InputError(f"{path}: image not found{entry}. Fix: check the image folder (--data-root, or "
                         "--set image_dir=FOLDER), or remove the image's entry from the annotation file.")
    try:
        # EXIF orientation is deliberately not applied: COCO's width/height describe the stored pixels
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(f"{path}: cannot decode image ({e}){entry}. Fix: replace the file with a good copy, "
                         "or remove the image's entry from the annotation file.") from e


class CocoDetection(Dataset):
    """Images and targets of a COCO instances file.

    Item ``i`` is ``(image, target)``: ``image`` a ``(3, H, W)`` uint8 tensor; ``target`` a dict with
    ``boxes`` float32 ``(N, 4)`` ``x1, y1, x2, y2`` pixels, ``labels`` int64 ``(N,)`` in ``0..C-1``,
    ``crowd_boxes`` ``(M, 4)`` (ignore regions, excluded from training targets), ``image_id`` and
    ``orig_size`` ``(H, W)``. Images without objects are kept.

    With ``skip_missing=True`` images whose files are missing are dropped when the dataset is built
    and an unreadable image is replaced by the next one; both are counted in ``skipped`` and warned.
    """

    def __init__(
        self,
        *,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        categories: list[int] | None = None,
        skip_missing: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.coco = load_coco(self.ann_file, categories=categories)
        self.skip_missing = skip_missing
        self.skipped: dict[str, int] = {"missing": 0, "unreadable": 0}
        self.indices = list(range(len(self.coco.images)))
        if skip_missing:
            self.indices = [i for i in self.indices if self._path(i).is_file()]
            self.skipped["missing"] = len(self.coco.images) - len(self.indices)
            if self.skipped["missing"]:
                warnings.warn(f"{self.ann_file}: skipped {self.skipped['missing']} image(s) missing under {self.image_dir}.")
            if not self.indices:
                raise InputError(f"{self.ann_file}: no image found under {self.image_dir}. Fix: check --data-root.")

    @property
    def num_classes(self) -> int:
        return self.coco.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.coco.class_names

    @property
    def label_to_cat_id(self) -> list[int]:
        return self.coco.cat_ids

    def image_info(self, idx: int) -> dict[str, Any]:
        return self.coco.images[self.indices[idx]]

    def _path(self, raw_index: int) -> Path:
        return self.image_dir / self.coco.images[raw_index]["file_name"]

    def __len__(self) -> int:
        return len(self.indices)

    def target(self, idx: int) -> dict[str, Tensor | int]:
        """The target of item ``idx`` without decoding its image."""
        i = self.indices[idx]
        img = self.coco.images[i]
        return {
            "boxes": torch.from_numpy(self.coco.boxes[i]),
            "labels": torch.from_numpy(self.coco.labels[i]),
            "crowd_boxes": torch.from_numpy(self.coco.crowd_boxes[i]),
            "image_id": int(img["id"]),
            "orig_size": torch.tensor([int(img.get("height", 0)), int(img.get("width", 0))]),
        }

    def __getitem__(self, idx: int) -> tuple[Tensor, dict[str, Tensor | int]]:
        for attempt in range(len(self)):
            j = (idx + attempt) % len(self)
            try:
                image = self._load(j)
            except InputError as e:
                if not self.skip_missing:
                    raise
                self.skipped["unreadable"] += 1
                warnings.warn(f"{e} Skipped ({self.skipped['unreadable']} unreadable so far).")
                continue
            return image, self.target(j)
        raise InputError(f"{self.ann_file}: no readable image under {self.image_dir}.")

    def _load(self, idx: int) -> Tensor:
        i = self.indices[idx]
        path = self._path(i)
        info = self.coco.images[i]
        image = read_image(path, listed_in=f"{self.ann_file} as image {info['id']}")
        expected = (info.get("height"), info.get("width"))
        if None not in expected and tuple(image.shape[1:]) != tuple(expected):
            raise InputError(
                f"{path}: image is {image.shape[1]}x{image.shape[2]} (HxW) but {self.ann_file} says "
                f"{expected[0]}x{expected[1]}. Fix: correct width/height in the annotation file."
            )
        return image
