"""COCO and VOC AP on tiny cases whose answers are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pycocotools.coco import COCO

from ssodlib.evaluation import (
    IOU_THRESHOLDS,
    DetectionMetrics,
    detections_to_coco,
    evaluate_coco,
    pascal_voc_ap,
)
from ssodlib.io import InputError

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731


def _gt(
    boxes: list[tuple[int, list[float]]] | list[tuple[int, list[float], dict[str, Any]]],
    *,
    categories: tuple[str, ...] = ("cat",),
    image_ids: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Minimal COCO dict: no info/licenses/area/iscrowd/id, which evaluation must fill in.

    ``boxes`` holds ``(category_id, [x, y, w, h])`` or ``(category_id, bbox, extra keys)``
    on the first image.
    """
    annotations = []
    for item in boxes:
        cat_id, bbox, *extra = item
        annotations.append({"image_id": image_ids[0], "category_id": cat_id, "bbox": bbox, **(extra[0] if extra else {})})
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in enumerate(categories, start=1)],
    }


def _det(bbox: list[float], score: float, *, cat: int = 1, image: int = 1) -> dict[str, Any]:
    return {"image_id": image, "category_id": cat, "bbox": bbox, "score": score}


# --------------------------------------------------------------------------- evaluate_coco


def test_perfect_detection_gives_one(capsys: pytest.CaptureFixture[str]) -> None:
    m = evaluate_coco(_gt([(1, [10, 10, 50, 50])]), [_det([10, 10, 50, 50], 0.9)])
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced
    assert (m.ap, m.ap50, m.ap75, m.ar100) == (approx(1), approx(1), approx(1), approx(1))
    assert m.ap_medium == approx(1)  # 2500 px^2 is COCO "medium"
    assert math.isnan(m.ap_small) and math.isnan(m.ap_large)  # no GT in those ranges
    assert m.per_class_ap == {"cat": approx(1)}
    assert m.num_images == 1 and m.num_detections == 1


@pytest.mark.parametrize(
    ("width", "matched_thresholds"),
    [
        (5.75, 2),  # IoU 0.575: matches at 0.50 and 0.55 only
        (6.25, 3),  # IoU 0.625: also 0.60 (COCOeval matches iou >= threshold)
    ],
)
def test_partial_overlap_counts_thresholds_below_iou(width: float, matched_thresholds: int) -> None:
    m = evaluate_coco(_gt([(1, [0, 0, 10, 10])]), [_det([0, 0, width, 10], 0.9)])
    assert m.ap50 == approx(1)
    assert m.ap75 == approx(0)
    assert m.ap == approx(matched_thresholds / 10)
    assert list(m.ap_per_iou) == list(IOU_THRESHOLDS)
    expected = {t: (1.0 if i < matched_thresholds else 0.0) for i, t in enumerate(IOU_THRESHOLDS)}
    assert m.ap_per_iou == {t: approx(v) for t, v in expected.items()}


def test_half_recall_gives_51_of_101_points() -> None:
    # Precision 1 at recall thresholds 0.00..0.50 (51 of 101), 0 above.
    m = evaluate_coco(_gt([(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])]), [_det([0, 0, 10, 10], 0.9)])
    assert m.ap50 == approx(51 / 101)
    assert m.ap == approx(51 / 101)
    assert m.ar100 == approx(0.5)


def test_false_positive_ranked_first_halves_precision() -> None:
    # Ranked FP, TP: precision 0.5 at recall 1, envelope 0.5 at all 101 points.
    m = evaluate_coco(_gt([(1, [0, 0, 10, 10])]), [_det([100, 100, 10, 10], 0.9), _det([0, 0, 10, 10], 0.8)])
    assert m.ap50 == approx(0.5)


def test_false_positive_between_true_positives() -> None:
    # Ranked TP, FP, TP on 2 GT: (recall, precision) = (.5, 1), (.5, .5), (1, 2/3).
    # Envelope: 1 at recall 0.00..0.50 (51 points), 2/3 at 0.51..1.00 (50 points).
    gt = _gt([(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])])
    dets = [_det([0, 0, 10, 10], 0.9), _det([100, 100, 10, 10], 0.8), _det([50, 50, 10, 10], 0.7)]
    m = evaluate_coco(gt, dets)
    assert m.ap50 == approx((51 + 50 * 2 / 3) / 101)
    assert m.ap == approx((51 + 50 * 2 / 3) / 101)


def test_detection_on_crowd_region_is_not_a_false_positive() -> None:
    gt = _gt([(1, [0, 0, 10, 10]), (1, [50, 50, 40, 40], {"iscrowd": 1})])
    # Ranked above the true positive: as a FP it would make AP 0.5.
    dets = [_det([55, 55, 10, 10], 0.9), _det([0, 0, 10, 10], 0.5)]
    m = evaluate_coco(gt, dets)
    assert m.ap == approx(1)
    assert m.ap50 == approx(1)


def test_per_class_ap_and_class_without_ground_truth() -> None:
    gt = _gt(
        [(1, [0, 0, 10, 10]), (2, [50, 50, 10, 10]), (2, [100, 100, 10, 10])],
        categories=("cat", "dog", "bird"),
    )
    dets = [
        _det([0, 0, 10, 10], 0.9, cat=1),
        _det([50, 50, 10, 10], 0.9, cat=2),
        _det([150, 150, 10, 10], 0.9, cat=3),  # bird has no GT: undefined, not a zero
    ]
    m = evaluate_coco(gt, dets)
    assert m.per_class_ap["cat"] == approx(1)
    assert m.per_class_ap["dog"] == approx(51 / 101)
    assert math.isnan(m.per_class_ap["bird"]) and math.isnan(m.per_class_ap50["bird"])
    assert m.per_class_ap50 == {"cat": approx(1), "dog": approx(51 / 101), "bird": m.per_class_ap50["bird"]}
    assert m.ap == approx((1 + 51 / 101) / 2)
    assert m.ap50 == approx((1 + 51 / 101) / 2)
    assert m.ap_per_iou[0.5] == approx((1 + 51 / 101) / 2)
    out = m.to_dict()
    assert out["per_class_ap"]["bird"] is None
    assert out["ap_per_iou"]["0.50"] == approx((1 + 51 / 101) / 2)
    json.dumps(out, allow_nan=False)


def test_no_detections_gives_zeros() -> None:
    m = evaluate_coco(_gt([(1, [0, 0, 10, 10])], categories=("cat", "dog")), [])
    assert (m.ap, m.ap50, m.ap75, m.ap_small, m.ar1, m.ar10, m.ar100) == (0, 0, 0, 0, 0, 0, 0)
    assert m.per_class_ap["cat"] == 0 and math.isnan(m.per_class_ap["dog"])
    assert set(m.ap_per_iou.values()) == {0.0}
    assert m.num_detections == 0


def test_unknown_category_or_image_raises_input_error() -> None:
    gt = _gt([(1, [0, 0, 10, 10])])
    with pytest.raises(InputError, match="category_id 7"):
        evaluate_coco(gt, [_det([0, 0, 10, 10], 0.9, cat=7)])
    with pytest.raises(InputError, match="image_id 42"):
        evaluate_coco(gt, [_det([0, 0, 10, 10], 0.9, image=42)])


def test_ground_truth_from_path_and_coco_object(tmp_path: Path) -> None:
    gt = _gt([(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    dets = [_det([0, 0, 10, 10], 0.9)]
    coco = COCO()
    coco.dataset = _gt([(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])])
    for ann_id, ann in enumerate(coco.dataset["annotations"], start=1):
        ann["id"] = ann_id  # a COCO object cannot be indexed without annotation ids
    coco.createIndex()
    for source in (path, str(path), coco):
        assert evaluate_coco(source, dets).ap50 == approx(51 / 101)
    assert "info" not in gt and all("area" not in a for a in gt["annotations"])  # input not mutated
    with pytest.raises(InputError, match="missing.json"):
        evaluate_coco(tmp_path / "missing.json", dets)


def test_image_ids_restrict_evaluation() -> None:
    gt = _gt([(1, [0, 0, 10, 10])], image_ids=(1, 2))
    gt["annotations"].append({"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]})
    dets = [_det([0, 0, 10, 10], 0.9, image=1)]
    assert evaluate_coco(gt, dets).ap50 == approx(51 / 101)
    m = evaluate_coco(gt, dets, image_ids=[1])
    assert m.ap50 == approx(1) and m.num_images == 1
    assert evaluate_coco(gt, dets, image_ids=[2]).num_detections == 0


def test_metrics_are_frozen() -> None:
    m = evaluate_coco(_gt([(1, [0, 0, 10, 10])]), [])
    assert isinstance(m, DetectionMetrics)
    with pytest.raises(AttributeError):
        m.ap = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- detections_to_coco


def test_detections_to_coco_is_exact() -> None:
    out = detections_to_coco(
        image_ids=[7, 9],
        boxes=[torch.tensor([[1.0, 2.0, 11.5, 22.25], [0.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)],
        scores=[torch.tensor([0.5, 0.25]), torch.zeros(0)],
        labels=[torch.tensor([1, 0]), torch.zeros(0, dtype=torch.long)],
        label_to_cat_id=[3, 8],
    )
    assert out == [
        {"image_id": 7, "category_id": 8, "bbox": [1.0, 2.0, 10.5, 20.25], "score": 0.5},
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 4.0, 4.0], "score": 0.25},
    ]
    assert all(type(v) is float for d in out for v in [*d["bbox"], d["score"]])
    assert all(type(d["image_id"]) is int and type(d["category_id"]) is int for d in out)


def test_detections_to_coco_rejects_label_outside_map() -> None:
    with pytest.raises(ValueError, match="labels"):
        detections_to_coco(
            image_ids=[1],
            boxes=[torch.zeros(1, 4)],
            scores=[torch.ones(1)],
            labels=[torch.tensor([2])],
            label_to_cat_id=[1, 2],
        )


# --------------------------------------------------------------------------- pascal_voc_ap


def _voc_case() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """2 positives + 1 difficult box; ranked TP, FP, (on difficult: ignored), TP.

    Curve (recall, precision): (.5, 1), (.5, .5), (.5, .5), (1, 2/3).
    Area: .5 * 1 + .5 * 2/3 = 5/6.  11-point: recall 0..0.5 -> 1 (6 points),
    0.6..1.0 -> 2/3 (5 points): (6 + 10/3) / 11 = 28/33.
    """
    gt = _gt(
        [
            (1, [0, 0, 10, 10]),
            (1, [20, 0, 10, 10]),
            (1, [40, 0, 10, 10], {"difficult": 1}),
        ]
    )
    dets = [
        _det([0, 0, 10, 10], 0.9),
        _det([60, 0, 10, 10], 0.8),
        _det([40, 0, 10, 10], 0.7),
        _det([20, 0, 10, 10], 0.6),
    ]
    return gt, dets


def test_pascal_voc_area_metric_ignores_difficult() -> None:
    gt, dets = _voc_case()
    assert pascal_voc_ap(gt, dets) == {"cat": approx(5 / 6), "mAP": approx(5 / 6)}


def test_pascal_voc_11_point_metric() -> None:
    gt, dets = _voc_case()
    assert pascal_voc_ap(gt, dets, use_07_metric=True) == {"cat": approx(28 / 33), "mAP": approx(28 / 33)}


def test_pascal_voc_crowd_counts_as_difficult() -> None:
    gt, dets = _voc_case()
    gt["annotations"][2] = {**gt["annotations"][2], "difficult": 0, "iscrowd": 1}
    assert pascal_voc_ap(gt, dets)["cat"] == approx(5 / 6)


def test_pascal_voc_duplicate_and_threshold() -> None:
    # A duplicate on a matched box is a FP; IoU 0.5 is not > 0.5 (devkit's strict test).
    gt = _gt([(1, [0, 0, 10, 10])])
    dets = [_det([0, 0, 10, 10], 0.9), _det([0, 0, 10, 10], 0.8)]
    assert pascal_voc_ap(gt, dets)["cat"] == approx(1)  # FP after full recall costs nothing
    dets = [_det([0, 0, 5, 10], 0.9)]  # IoU exactly 0.5
    assert pascal_voc_ap(gt, dets)["cat"] == approx(0)
    assert pascal_voc_ap(gt, dets, iou_threshold=0.4)["cat"] == approx(1)


def test_pascal_voc_map_skips_class_without_positives() -> None:
    gt = _gt(
        [(1, [0, 0, 10, 10]), (2, [50, 50, 10, 10]), (2, [100, 100, 10, 10])],
        categories=("cat", "dog", "bird"),
    )
    dets = [_det([0, 0, 10, 10], 0.9, cat=1), _det([50, 50, 10, 10], 0.9, cat=2), _det([0, 0, 5, 5], 0.9, cat=3)]
    result = pascal_voc_ap(gt, dets)
    assert result["cat"] == approx(1)
    assert result["dog"] == approx(0.5)  # recall 0.5 at precision 1
    assert math.isnan(result["bird"])
    assert result["mAP"] == approx(0.75)
    assert pascal_voc_ap(gt, dets, use_07_metric=True)["dog"] == approx(6 / 11)


def test_pascal_voc_metrics_average_the_devkit_map_over_coco_ious() -> None:
    from ssodlib.evaluation.coco_eval import pascal_voc_metrics

    # one box, one detection shifted by 1 px: IoU 9 * 10 / (11 * 10) = 0.818, a TP up to threshold 0.80
    # (strictly above), a miss from 0.85: AP 1 at 0.50-0.80 (7 thresholds), 0 at 0.85-0.95 (3)
    gt = _gt([(1, [0, 0, 10, 10])])
    dets = [_det([1, 0, 10, 10], 0.9)]
    m = pascal_voc_metrics(gt, dets)
    assert m["voc_ap50"] == approx(1.0) and m["voc_ap"] == approx(0.7)
