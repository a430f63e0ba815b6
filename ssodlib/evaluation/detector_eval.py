"""COCO evaluation of a detector on a COCO-format validation set."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ssodlib.data.coco import CocoDetection
from ssodlib.data.transforms import WeakViewConfig, transform_boxes, weak_view
from ssodlib.evaluation.coco_eval import DetectionMetrics, detections_to_coco, evaluate_coco


@torch.no_grad()
def evaluate_detector(model: torch.nn.Module, *, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                      test_scale: int, max_size: int, device: torch.device | str = "cpu", batch_size: int = 8,
                      max_images: int | None = None, amp_dtype: torch.dtype | None = None,
                      progress: bool = False) -> DetectionMetrics:
    """Resize each image to ``test_scale`` (shorter side), detect, map boxes back to the original
    image through the inverse of the resize matrix, and score with pycocotools."""
    data = CocoDetection(ann_file=ann_file, image_dir=Path(image_dir))
    n = len(data) if max_images is None else min(max_images, len(data))
    view = WeakViewConfig(scales=(test_scale,), max_size=max_size, flip_prob=0.0)
    g = torch.Generator()
    was_training = model.training
    model.eval()
    results, ids = [], []
    device = torch.device(device)
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        images, inverses = [], []
        for i in range(start, min(start + batch_size, n)):
            image, target = data[i]
            v, m = weak_view(image, view, g)
            images.append(v)
            inverses.append(torch.linalg.inv(m))
            ids.append(target["image_id"])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            dets = model.predict(images)
        for det, inv in zip(dets, inverses):
            det.boxes = transform_boxes(det.boxes.float().cpu(), inv)
        results += detections_to_coco(image_ids=ids[-len(dets):], boxes=[d.boxes for d in dets],
                                      scores=[d.scores for d in dets], labels=[d.labels for d in dets],
                                      label_to_cat_id=data.label_to_cat_id)
    model.train(was_training)
    return evaluate_coco(data.coco.raw, results, image_ids=ids)
