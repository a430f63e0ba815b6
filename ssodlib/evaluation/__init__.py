"""Detection evaluation: COCO AP/AR via pycocotools and Pascal VOC devkit AP."""

from ssodlib.evaluation.coco_eval import (
    IOU_THRESHOLDS,
    DetectionMetrics,
    detections_to_coco,
    evaluate_coco,
    pascal_voc_ap,
    pascal_voc_metrics,
)

__all__ = [
    "IOU_THRESHOLDS",
    "DetectionMetrics",
    "detections_to_coco",
    "evaluate_coco",
    "pascal_voc_ap",
    "pascal_voc_metrics",
]
