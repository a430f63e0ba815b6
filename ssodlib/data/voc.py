"""Pascal VOC and COCO annotation conversion into COCO instances dicts.

Every split the library trains or evaluates on is a COCO instances dict, so one
evaluator (pycocotools) and one dataset class serve VOC07/VOC12, COCO20cls
(COCO restricted to the VOC classes, as CrossMatch uses it) and unlabeled
image folders such as COCO's unlabeled2017 (COCO-additional).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ssodlib.io import InputError, read_json

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# VOC name -> COCO name; the 20 VOC classes are a subset of COCO's 80 under other spellings.
COCO_NAME_OF_VOC: dict[str, str] = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})


def voc_categories() -> list[dict[str, Any]]:
    """COCO ``categories`` for the VOC classes: ids 1..20 in :data:`VOC_CLASSES` order."""
    return [{"id": i, "name": name, "supercategory": "none"} for i, name in enumerate(VOC_CLASSES, start=1)]


# ---------------------------------------------------------------- VOC -> COCO


def voc_to_coco(
    devkit_root: Path,
    *,
    year: str,
    image_set: str,
    first_image_id: int = 1,
    first_annotation_id: int = 1,
) -> dict[str, Any]:
    """Convert ``VOC{year}`` split ``image_set`` under ``devkit_root`` to a COCO instances dict.

    Images follow the order of ``ImageSets/Main/{image_set}.txt`` with ids counting up
    from ``first_image_id`` (pass an offset to merge e.g. VOC07 and VOC12 without id
    clashes); ``file_name`` is relative to ``devkit_root``
    (``VOC2007/JPEGImages/000005.jpg``), width/height come from the XML ``<size>``.

    Coordinates: VOC pixel indices are 1-based and inclusive, so a box covering pixels
    ``xmin..xmax`` spans the continuous pixel-edge interval ``[xmin - 1, xmax]``. Hence
    ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` and
    ``bbox = [x1, y1, x2 - x1, y2 - y1]`` with ``area = w * h``.

    ``difficult`` objects are ignored as the VOC evaluation ignores them (neither a hit
    nor a miss): they get ``iscrowd = 1`` so COCOeval ignores detections matched to them,
    plus ``"difficult": 1``; all other objects get ``iscrowd = 0, "difficult": 0``.
    """
    devkit_root = Path(devkit_root)
    voc_dir = devkit_root / f"VOC{year}"
    image_ids = read_image_set(voc_dir / "ImageSets" / "Main" / f"{image_set}.txt")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, voc_id in enumerate(image_ids, start=first_image_id):
        xml_path = voc_dir / "Annotations" / f"{voc_id}.xml"
        width, height, objects = parse_voc_xml(xml_path)
        images.append(
            {
                "id": image_id,
                "file_name": f"VOC{year}/JPEGImages/{voc_id}.jpg",
                "width": width,
                "height": height,
            }
        )
        for obj in objects:
            annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id, **obj})
    return {"images": images, "annotations": annotations, "categories": voc_categories()}


def read_image_set(path: Path) -> list[str]:
    """Image ids of a VOC ``ImageSets`` file, in file order (first token of each line)."""
    if not path.is_file():
        raise InputError(
            f"{path}: VOC image-set file not found. Fix: check the devkit root, year and image set "
            "(expected <devkit_root>/VOC<year>/ImageSets/Main/<image_set>.txt)."
        )
    # Class-specific set files carry a second "±1" column; only the id matters here.
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{path}: VOC image-set file is empty. Fix: re-extract the VOC devkit.")
    return ids


def parse_voc_xml(path: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """``(width, height, objects)`` of one VOC annotation file; objects are COCO annotation fields."""
    if not path.is_file():
        raise InputError(f"{path}: VOC annotation file not found. Fix: re-extract the VOC devkit Annotations folder.")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(
            f"{path}: malformed VOC annotation XML ({e}). Fix: re-extract or re-download this file."
        ) from e
    size = root.find("size")
    if size is None:
        raise InputError(f"{path}: VOC annotation has no <size>. Fix: add <size><width>/<height></size>.")
    width = int(_number(size, "width", path))
    height = int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: <size> is {width}x{height}. Fix: set the real image width and height.")
    objects = [_parse_object(obj, path) for obj in root.findall("object")]
    return width, height, objects


def _parse_object(obj: ET.Element, path: Path) -> dict[str, Any]:
    name = (obj.findtext("name") or "").strip()
    if name not in VOC_CLASSES:
        raise InputError(
            f"{path}: unknown VOC class {name!r}. Fix: use one of the 20 VOC classes ({', '.join(VOC_CLASSES)})."
        )
    box = obj.find("bndbox")
    if box is None:
        raise InputError(f"{path}: object {name!r} has no <bndbox>. Fix: add <bndbox> with xmin/ymin/xmax/ymax.")
    xmin, ymin, xmax, ymax = (_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
    x1, y1 = xmin - 1.0, ymin - 1.0  # 1-based inclusive pixel indices -> pixel edges
    w, h = xmax - x1, ymax - y1
    if w <= 0 or h <= 0:
        raise InputError(
            f"{path}: object {name!r} has an empty box ({xmin}, {ymin}, {xmax}, {ymax}). "
            "Fix: xmax >= xmin and ymax >= ymin."
        )
    # VOC2012 omits <difficult> on some objects; absent means not difficult.
    difficult = int(_number(obj, "difficult", path, default=0.0)) != 0
    return {
        "category_id": VOC_CLASSES.index(name) + 1,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": int(difficult),
        "difficult": int(difficult),
    }


def _number(parent: ET.Element, tag: str, path: Path, *, default: float | None = None) -> float:
    text = parent.findtext(tag)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise InputError(f"{path}: <{parent.tag}> has no <{tag}>. Fix: add the <{tag}> value.")
    try:
        value = float(text)
    except ValueError as e:
        raise InputError(f"{path}: <{tag}> is {text!r}, not a number. Fix: write a number.") from e
    if not math.isfinite(value):  # float() accepts "nan" and "inf"; such a box would convert silently
        raise InputError(f"{path}: <{parent.tag}> has <{tag}> {text!r}, not a finite number. Fix: write the "
                         "pixel value, or re-extract this file from the VOC devkit.")
    return value


# ---------------------------------------------------------------- COCO -> COCO20cls


def coco_to_voc_classes(coco: dict[str, Any], *, source: str = "<coco>") -> dict[str, Any]:
    """Restrict a COCO instances dict to the 20 VOC classes ("COCO20cls" as CrossMatch uses it).

    Keeps only images with at least one non-crowd annotation of a VOC class and only the
    VOC-class annotations (crowd ones included, as ignore regions), remapped to the VOC
    category ids 1..20. Image and annotation ids are kept so results map back to the
    source file. ``source`` names the file in error messages. The input is not modified.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise InputError(f"{source}: no {key!r} list. Fix: pass a COCO instances annotation file.")
    voc_id_of_coco_id = _voc_id_of_coco_id(coco["categories"], source)
    annotations = [
        {**ann, "category_id": voc_id_of_coco_id[ann["category_id"]]}
        for ann in coco["annotations"]
        if ann["category_id"] in voc_id_of_coco_id
    ]
    kept_image_ids = {ann["image_id"] for ann in annotations if not ann.get("iscrowd", 0)}
    extra = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    return {
        **extra,
        "images": [dict(img) for img in coco["images"] if img["id"] in kept_image_ids],
        "annotations": [ann for ann in annotations if ann["image_id"] in kept_image_ids],
        "categories": voc_categories(),
    }


def _voc_id_of_coco_id(categories: list[dict[str, Any]], source: str) -> dict[int, int]:
    coco_id_of_name = {cat["name"]: cat["id"] for cat in categories}
    coco_names = [COCO_NAME_OF_VOC.get(name, name) for name in VOC_CLASSES]
    missing = [name for name in coco_names if name not in coco_id_of_name]
    if missing:
        raise InputError(
            f"{source}: COCO categories lack {missing}. Fix: pass a COCO instances file with the 80 COCO categories."
        )
    return {coco_id_of_name[name]: voc_id for voc_id, name in enumerate(coco_names, start=1)}


# ---------------------------------------------------------------- merged sets


def merge_coco(parts: list[tuple[dict[str, Any], str]], *, sources: list[str] | None = None) -> dict[str, Any]:
    """One COCO dict of several with the same categories (e.g. VOC12 trainval + COCO20cls, the
    unlabeled set of CrossMatch's and STAC's "VOC12 + COCO20cls" rows).

    ``parts``: ``(coco dict, prefix)``; each image's ``file_name`` gets its part's prefix (e.g.
    ``"../coco/train2017/"``, so that every name is relative to one image folder, here ``VOCdevkit``).
    Image and annotation ids are renumbered from 1 in order (the parts' ids may clash); each image
    keeps its part's id as ``source_id`` and its part's index as ``source``. The inputs are not modified.
    """
    names = sources or [f"<part {i + 1}>" for i in range(len(parts))]
    if not parts:
        raise InputError("nothing to merge. Fix: pass at least one COCO annotation file.")
    categories = None
    images, annotations = [], []
    for index, ((coco, prefix), source) in enumerate(zip(parts, names)):
        for key in ("images", "annotations", "categories"):
            if not isinstance(coco.get(key), list):
                raise InputError(f"{source}: no {key!r} list. Fix: pass a COCO instances annotation file.")
        cats = sorted((c["id"], c["name"]) for c in coco["categories"])
        if categories is None:
            categories, first = cats, source
        elif cats != categories:
            raise InputError(f"{source}: its categories differ from {first}'s. Fix: convert both to the same "
                             "classes first (e.g. `ssod data coco20cls` for COCO against VOC's 20).")
        new_id = {}
        for img in coco["images"]:
            new_id[img["id"]] = len(images) + 1
            images.append({**img, "id": new_id[img["id"]], "file_name": prefix + img["file_name"],
                           "source_id": img["id"], "source": index})
        for ann in coco["annotations"]:
            if ann["image_id"] not in new_id:
                raise InputError(f"{source}: annotation {ann.get('id')} names image {ann['image_id']}, which the "
                                 "file does not list. Fix: regenerate the file.")
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": new_id[ann["image_id"]]})
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in parts[0][0]["categories"]]}


# ---------------------------------------------------------------- unlabeled images


def image_list_to_coco(
    image_dir: Path,
    *,
    relative_to: Path | None = None,
    categories: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A COCO dict with images only for an unlabeled folder (e.g. COCO ``unlabeled2017``).

    Files with extension .jpg/.jpeg/.png (any case) directly in ``image_dir`` are listed in
    sorted name order with ids from 1; ``file_name`` is relative to ``relative_to``
    (default: ``image_dir`` itself). Width/height come from the image header (PIL opens
    lazily, so pixels are not decoded); like COCO, EXIF orientation is not applied.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: image folder not found. Fix: check the path (and DATA_ROOT / --data-root).")
    base = image_dir if relative_to is None else Path(relative_to)
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise InputError(
            f"{image_dir}: no .jpg/.jpeg/.png images. Fix: point to the folder that holds the images."
        )
    images = []
    for image_id, path in enumerate(paths, start=1):
        width, height = _image_size(path)
        images.append({"id": image_id, "file_name": _relative(path, base), "width": width, "height": height})
    return {"images": images, "annotations": [], "categories": list(categories or [])}


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: unreadable image ({e}). Fix: re-download it or remove it from the folder.") from e


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError as e:
        raise InputError(
            f"{path}: not under relative_to={base}. Fix: pass a relative_to folder that contains the images."
        ) from e


def from_image_info(info_json: Path) -> dict[str, Any]:
    """A COCO dict with images only from an image-info file such as ``image_info_unlabeled2017.json``."""
    info = read_json(info_json, what="COCO image-info JSON")
    if not isinstance(info, dict) or not isinstance(info.get("images"), list):
        raise InputError(
            f"{info_json}: no 'images' list. Fix: pass a COCO image-info file such as image_info_unlabeled2017.json."
        )
    for img in info["images"]:
        missing = [k for k in ("id", "file_name", "width", "height") if not isinstance(img, dict) or k not in img]
        if missing:
            raise InputError(f"{info_json}: an image entry lacks {missing}. Fix: regenerate or re-download the file.")
    return {**info, "annotations": [], "categories": list(info.get("categories", []))}
