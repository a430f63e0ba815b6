"""COCO-style and Pascal-VOC-style box AP on COCO-format ground truth and detections.

Ground truth is a COCO instances dict (``images``, ``annotations``, ``categories``;
annotation ``bbox`` is ``[x, y, w, h]`` in pixels). Detections are COCO result dicts
``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssodlib.io import InputError, read_json

__all__ = [
    "IOU_THRESHOLDS",
    "DetectionMetrics",
    "detections_to_coco",
    "evaluate_coco",
    "pascal_voc_ap",
    "pascal_voc_metrics",
]

GroundTruth = Mapping[str, Any] | str | os.PathLike | COCO

# COCOeval's default IoU thresholds 0.50:0.05:0.95, as dict keys.
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True, kw_only=True)
class DetectionMetrics:
    """COCO box metrics; every AP/AR is a fraction in [0, 1].

    A value is NaN where it is undefined: a class without ground truth, or an area range
    (small / medium / large) with no ground-truth box (COCOeval reports -1 there).
    """

    ap: float  # stats[0]: AP@[.5:.95], area all, maxDets 100
    ap50: float  # stats[1]
    ap75: float  # stats[2]
    ap_small: float  # stats[3]
    ap_medium: float  # stats[4]
    ap_large: float  # stats[5]
    ar1: float  # stats[6]
    ar10: float  # stats[7]
    ar100: float  # stats[8]
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    ap_per_iou: dict[float, float]
    num_images: int
    num_detections: int
    # Pascal VOC devkit AP (area under the precision envelope, :func:`pascal_voc_ap`) at IoU 0.5 and
    # averaged over IoU 0.5:0.95, where the evaluation asked for it (VOC test sets); else None
    voc_ap50: float | None = None
    voc_ap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy: NaN becomes None, IoU keys become strings like ``"0.50"``; the Pascal
        VOC keys only where they were computed."""
        voc = {k: _json_float(v) for k, v in (("voc_ap50", self.voc_ap50), ("voc_ap", self.voc_ap)) if v is not None}
        return {**voc,
            "ap": _json_float(self.ap),
            "ap50": _json_float(self.ap50),
            "ap75": _json_float(self.ap75),
            "ap_small": _json_float(self.ap_small),
            "ap_medium": _json_float(self.ap_medium),
            "ap_large": _json_float(self.ap_large),
            "ar1": _json_float(self.ar1),
            "ar10": _json_float(self.ar10),
            "ar100": _json_float(self.ar100),
            "per_class_ap": {k: _json_float(v) for k, v in self.per_class_ap.items()},
            "per_class_ap50": {k: _json_float(v) for k, v in self.per_class_ap50.items()},
            "ap_per_iou": {f"{k:.2f}": _json_float(v) for k, v in self.ap_per_iou.items()},
            "num_images": self.num_images,
            "num_detections": self.num_detections,
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


# --------------------------------------------------------------------------- ground truth


def _load_ground_truth(ground_truth: GroundTruth) -> tuple[dict[str, Any], str]:
    """Return ``(dataset dict, source name for error messages)``; the dict is not copied."""
    if isinstance(ground_truth, COCO):
        return ground_truth.dataset, "<COCO object>"
    if isinstance(ground_truth, (str, os.PathLike)):
        data = read_json(ground_truth, what="COCO ground-truth annotation file")
        return data, os.fspath(ground_truth)
    if isinstance(ground_truth, Mapping):
        return dict(ground_truth), "<ground-truth dict>"
    raise TypeError(f"ground_truth must be a COCO dict, a path or a pycocotools COCO, not {type(ground_truth)!r}")


def _prepare_ground_truth(data: Any, source: str) -> dict[str, Any]:
    """Copy ``data`` and fill the keys pycocotools indexes on but COCO-like files may omit."""
    if not isinstance(data, Mapping):
        raise InputError(f"{source}: ground truth is not a JSON object. Fix: point to a COCO instances file.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(
                f"{source}: missing the '{key}' list of a COCO instances file. "
                "Fix: point to a COCO instances file (images, annotations, categories)."
            )
    annotations = [_prepare_annotation(ann, i, source) for i, ann in enumerate(data["annotations"])]
    ids = [ann.get("id") for ann in annotations]
    # pycocotools indexes annotations by id, so missing or repeated ids would drop boxes.
    if None in ids or len(set(ids)) != len(ids):
        for new_id, ann in enumerate(annotations, start=1):
            ann["id"] = new_id
    return {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": list(data["images"]),
        "annotations": annotations,
        "categories": list(data["categories"]),
    }


def _prepare_annotation(ann: Any, index: int, source: str) -> dict[str, Any]:
    bbox = ann.get("bbox") if isinstance(ann, Mapping) else None
    if bbox is None or len(bbox) != 4:
        raise InputError(
            f"{source}: annotations[{index}] has no 4-number 'bbox' [x, y, w, h]. "
            "Fix: regenerate the annotation file with boxes."
        )
    ann = dict(ann)
    ann.setdefault("iscrowd", 0)
    # COCO files carry the segmentation area; box-only files fall back to the box area.
    ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    return ann


def _category_names(categories: list[dict[str, Any]]) -> dict[int, str]:
    """Category id -> unique display name (the id is appended to repeated names)."""
    names = [str(cat.get("name", cat["id"])) for cat in categories]
    repeated = {n for n in names if names.count(n) > 1}
    return {
        cat["id"]: f"{name} ({cat['id']})" if name in repeated else name
        for cat, name in zip(categories, names)
    }


def _quiet_coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------- detections


def _check_detections(
    detections: Sequence[Mapping[str, Any]], *, image_ids: set[int], cat_ids: set[int], source: str
) -> None:
    """Raise :class:`InputError` on the first detection that COCOeval could not place."""
    for i, det in enumerate(detections):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            raise InputError(
                f"detections[{i}]: missing {', '.join(missing)}. "
                "Fix: give COCO result dicts {image_id, category_id, bbox: [x, y, w, h], score}."
            )
        if len(det["bbox"]) != 4:
            raise InputError(f"detections[{i}]: bbox must be [x, y, w, h]. Fix: convert boxes to COCO xywh.")
        if det["image_id"] not in image_ids:
            raise InputError(
                f"detections[{i}]: image_id {det['image_id']!r} is not an image in {source}. "
                "Fix: evaluate against the annotation file the detections were made on."
            )
        if det["category_id"] not in cat_ids:
            raise InputError(
                f"detections[{i}]: category_id {det['category_id']!r} is not a category in {source} "
                f"(known: {sorted(cat_ids)}). Fix: map detector labels to the file's category ids "
                "(detections_to_coco label_to_cat_id)."
            )


def _results_coco(gt: dict[str, Any], detections: Sequence[Mapping[str, Any]]) -> COCO:
    """Build the result COCO that ``COCO.loadRes`` would, without its crash on an empty list."""
    annotations = []
    for new_id, det in enumerate(detections, start=1):
        x, y, w, h = (float(v) for v in det["bbox"])
        annotations.append(
            {
                "id": new_id,
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "bbox": [x, y, w, h],
                "score": float(det["score"]),
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return _quiet_coco(
        {
            "info": gt["info"],
            "licenses": gt["licenses"],
            "images": gt["images"],
            "categories": gt["categories"],
            "annotations": annotations,
        }
    )


# --------------------------------------------------------------------------- COCO AP


def evaluate_coco(
    ground_truth: GroundTruth,
    detections: Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
) -> DetectionMetrics:
    """COCO box AP/AR of ``detections`` against ``ground_truth`` with pycocotools COCOeval.

    ``ground_truth``: a COCO instances dict, a path to one, or a ``pycocotools.coco.COCO``.
    ``detections``: COCO result dicts, ``bbox`` as ``[x, y, w, h]`` in pixels.
    ``image_ids``: evaluate only these images (default: every ground-truth image);
    ``num_detections`` counts the detections on them.

    Crowd boxes (``iscrowd = 1``) are handled as COCOeval does: detections matched to them
    are ignored. With no detections every defined AP/AR is 0.
    """
    data, source = _load_ground_truth(ground_truth)
    gt = _prepare_ground_truth(data, source)
    all_image_ids = {img["id"] for img in gt["images"]}
    cat_names = _category_names(gt["categories"])
    _check_detections(detections, image_ids=all_image_ids, cat_ids=set(cat_names), source=source)
    eval_ids = _evaluated_image_ids(image_ids, all_image_ids, source)

    coco_eval = COCOeval(_quiet_coco(gt), _results_coco(gt, detections), iouType="bbox")
    coco_eval.params.imgIds = eval_ids
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return _metrics(coco_eval, cat_names, eval_ids, detections)


def _evaluated_image_ids(image_ids: Sequence[int] | None, all_image_ids: set[int], source: str) -> list[int]:
    if image_ids is None:
        eval_ids = sorted(all_image_ids)
    else:
        eval_ids = sorted({int(i) for i in image_ids})
        unknown = [i for i in eval_ids if i not in all_image_ids]
        if unknown:
            raise InputError(
                f"image_ids {unknown[:10]} are not images in {source}. "
                "Fix: pass ids from the annotation file's 'images' list."
            )
    if not eval_ids:
        raise InputError(f"{source}: no images to evaluate. Fix: use an annotation file with images.")
    return eval_ids


def _metrics(
    coco_eval: COCOeval,
    cat_names: dict[int, str],
    eval_ids: list[int],
    detections: Sequence[Mapping[str, Any]],
) -> DetectionMetrics:
    stats = [_undefined_to_nan(float(s)) for s in coco_eval.stats[:9]]
    # precision: (iou thresholds T, recall thresholds R, categories K, area ranges A, max dets M);
    # area 'all' is index 0 and maxDets 100 the last; -1 marks "no ground truth".
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    cat_ids = coco_eval.params.catIds
    eval_set = set(eval_ids)
    return DetectionMetrics(
        ap=stats[0],
        ap50=stats[1],
        ap75=stats[2],
        ap_small=stats[3],
        ap_medium=stats[4],
        ap_large=stats[5],
        ar1=stats[6],
        ar10=stats[7],
        ar100=stats[8],
        per_class_ap={cat_names[c]: _mean_defined(precision[:, :, k]) for k, c in enumerate(cat_ids)},
        per_class_ap50={cat_names[c]: _mean_defined(precision[0, :, k]) for k, c in enumerate(cat_ids)},
        ap_per_iou={
            round(float(t), 2): _mean_defined(precision[i]) for i, t in enumerate(coco_eval.params.iouThrs)
        },
        num_images=len(eval_ids),
        num_detections=sum(1 for det in detections if det["image_id"] in eval_set),
    )


def _undefined_to_nan(value: float) -> float:
    return math.nan if value < 0 else value


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else math.nan


# --------------------------------------------------------------------------- conversion


def detections_to_coco(
    *,
    image_ids: Sequence[int],
    boxes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    label_to_cat_id: Sequence[int],
) -> list[dict[str, Any]]:
    """Per-image detector outputs -> COCO result dicts (python numbers, ``bbox`` xywh).

    For image ``i``: ``boxes[i]`` is ``(N, 4)`` x1, y1, x2, y2 in pixels, ``scores[i]`` is
    ``(N,)``, ``labels[i]`` is ``(N,)`` contiguous labels ``0..C-1`` mapped to COCO category
    ids by ``label_to_cat_id`` (length C). Tensors may live on any device.
    """
    if not len(image_ids) == len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"image_ids, boxes, scores, labels must have one entry per image; got lengths "
            f"{len(image_ids)}, {len(boxes)}, {len(scores)}, {len(labels)}"
        )
    results: list[dict[str, Any]] = []
    for image_id, b, s, l in zip(image_ids, boxes, scores, labels):
        results.extend(_image_detections(int(image_id), b, s, l, label_to_cat_id))
    return results


def _image_detections(
    image_id: int, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, label_to_cat_id: Sequence[int]
) -> list[dict[str, Any]]:
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"image {image_id}: expected boxes (N, 4), scores (N,), labels (N,); got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    # float64 so that w = x2 - x1 does not pick up float32 rounding.
    xyxy = boxes.detach().to("cpu", torch.float64).tolist()
    score_list = scores.detach().to("cpu", torch.float64).tolist()
    label_list = labels.detach().to("cpu", torch.int64).tolist()
    bad = [l for l in label_list if not 0 <= l < len(label_to_cat_id)]
    if bad:
        raise ValueError(
            f"image {image_id}: labels {sorted(set(bad))[:10]} outside 0..{len(label_to_cat_id) - 1}; "
            "label_to_cat_id must have one category id per detector class"
        )
    return [
        {
            "image_id": image_id,
            "category_id": int(label_to_cat_id[l]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": s,
        }
        for (x1, y1, x2, y2), s, l in zip(xyxy, score_list, label_list)
    ]


# --------------------------------------------------------------------------- Pascal VOC AP


def pascal_voc_metrics(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``voc_ap50`` and ``voc_ap`` (the mean over IoU 0.50, 0.55, ..., 0.95) of :func:`pascal_voc_ap`'s
    mAP: CrossMatch's Table 6 ("Pascal-style AP calculation")."""
    per_iou = [pascal_voc_ap(ground_truth, detections, iou_threshold=t)["mAP"] for t in IOU_THRESHOLDS]
    return {"voc_ap50": per_iou[0], "voc_ap": float(np.mean(per_iou))}


def pascal_voc_ap(
    ground_truth: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> dict[str, float]:
    """Pascal VOC devkit AP per category name, plus ``"mAP"``.

    The devkit algorithm: per class, detections sorted by descending score are matched
    greedily to the highest-IoU ground-truth box of their image; IoU > ``iou_threshold``
    (strictly, as the devkit) with an unmatched box is a TP, otherwise a FP. A detection
    whose best box is difficult (``difficult == 1`` or ``iscrowd == 1``) counts as neither,
    and difficult boxes are not positives. AP is the area under the monotone precision
    envelope, or the 11-point mean (recall 0, 0.1, ..., 1) when ``use_07_metric``.

    Unlike the devkit, IoU uses continuous coordinates (``w = x2 - x1``, no ``+ 1`` pixel),
    consistent with COCO boxes. A class with no non-difficult ground truth gets NaN and is
    left out of ``"mAP"``.
    """
    gt = _prepare_ground_truth(ground_truth, "<ground-truth dict>")
    cat_names = _category_names(gt["categories"])
    image_ids = {img["id"] for img in gt["images"]}
    _check_detections(detections, image_ids=image_ids, cat_ids=set(cat_names), source="<ground-truth dict>")
    gt_by_cat: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in gt["annotations"]:
        gt_by_cat[ann["category_id"]].append(ann)
    dets_by_cat: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for det in detections:
        dets_by_cat[det["category_id"]].append(det)

    result = {
        name: _voc_class_ap(gt_by_cat[cat_id], dets_by_cat[cat_id], iou_threshold, use_07_metric)
        for cat_id, name in cat_names.items()
    }
    defined = [ap for ap in result.values() if not math.isnan(ap)]
    result["mAP"] = float(np.mean(defined)) if defined else math.nan
    return result


def _voc_class_ap(
    gts: list[dict[str, Any]], dets: list[Mapping[str, Any]], iou_threshold: float, use_07_metric: bool
) -> float:
    boxes_by_image: dict[Any, list[list[float]]] = defaultdict(list)
    difficult_by_image: dict[Any, list[bool]] = defaultdict(list)
    for ann in gts:
        boxes_by_image[ann["image_id"]].append(_xywh_to_xyxy(ann["bbox"]))
        difficult_by_image[ann["image_id"]].append(bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0)))
    num_positives = sum(not d for flags in difficult_by_image.values() for d in flags)
    if num_positives == 0:
        return math.nan

    matched = {img: [False] * len(b) for img, b in boxes_by_image.items()}
    # Stable sort: equal scores keep input order, as the devkit's argsort on -score does for ties.
    ordered = sorted(dets, key=lambda d: -float(d["score"]))
    tp = np.zeros(len(ordered))
    fp = np.zeros(len(ordered))
    for i, det in enumerate(ordered):
        image = det["image_id"]
        ious = _ious(_xywh_to_xyxy(det["bbox"]), boxes_by_image.get(image, []))
        best = int(np.argmax(ious)) if ious.size else -1
        if best < 0 or ious[best] <= iou_threshold:
            fp[i] = 1
        elif difficult_by_image[image][best]:
            continue
        elif not matched[image][best]:
            tp[i] = 1
            matched[image][best] = True
        else:
            fp[i] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _voc_ap_from_curve(recall, precision, use_07_metric)


def _xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _ious(box: list[float], boxes: list[list[float]]) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box with ``(M, 4)`` boxes, continuous coordinates -> ``(M,)``."""
    if not boxes:
        return np.zeros(0)
    b = np.asarray(boxes, dtype=np.float64)
    iw = np.maximum(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0.0)
    ih = np.maximum(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0.0)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def _voc_ap_from_curve(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """VOC devkit ``voc_ap`` on cumulative ``(D,)`` recall / precision over sorted detections."""
    if use_07_metric:
        # i / 10 rather than the devkit's np.arange(0, 1.1, 0.1), whose 0.30000000000000004
        # would miss a recall of exactly 0.3.
        total = 0.0
        for t in (i / 10 for i in range(11)):
            above = precision[recall >= t]
            total += float(above.max()) if above.size else 0.0
        return total / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
