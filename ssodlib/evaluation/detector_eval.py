"""COCO evaluation of a detector on a COCO-format validation set."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ssodlib.data.coco import CocoDetection
from ssodlib.data.transforms import WeakViewConfig, transform_boxes, weak_view
from ssodlib.evaluation.coco_eval import DetectionMetrics, detections_to_coco, evaluate_coco, pascal_voc_metrics


@torch.no_grad()
def evaluate_detector(model: torch.nn.Module, *, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                      test_scale: int, max_size: int, device: torch.device | str = "cpu", batch_size: int = 8,
                      max_images: int | None = None, amp_dtype: torch.dtype | None = None,
                      progress: bool = False, rank: int = 0, world_size: int = 1,
                      pascal_voc: bool = False) -> DetectionMetrics | None:
    """Resize each image to ``test_scale`` (shorter side), detect, map boxes back to the original
    image through the inverse of the resize matrix, and score with pycocotools.

    Under torch.distributed (``world_size > 1``, every rank calling) rank ``r`` detects on images
    ``r, r + world_size, ...`` and rank 0 scores them all; the other ranks return ``None``. Sharding
    keeps each rank busy for ``1 / world_size`` of the time instead of waiting on a collective while
    rank 0 evaluates alone (which can exceed NCCL's timeout at paper scale). ``pascal_voc``: also the
    Pascal VOC devkit AP (``voc_ap50``, ``voc_ap``) of the same detections."""
    data = CocoDetection(ann_file=ann_file, image_dir=Path(image_dir))
    n = len(data) if max_images is None else min(max_images, len(data))
    indices = list(range(n))[rank::world_size]
    view = WeakViewConfig(scales=(test_scale,), max_size=max_size, flip_prob=0.0)
    g = torch.Generator()
    was_training = model.training
    model.eval()
    per_image: list[tuple[int, int, list[dict]]] = []  # (index, image id, COCO results)
    device = torch.device(device)
    for start in tqdm(range(0, len(indices), batch_size), desc="eval", disable=not progress, leave=False):
        images, inverses, ids = [], [], []
        for i in indices[start:start + batch_size]:
            image, target = data[i]
            v, m = weak_view(image, view, g)
            images.append(v)
            inverses.append(torch.linalg.inv(m))
            ids.append((i, target["image_id"]))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            dets = model.predict(images)
        for (i, image_id), det, inv in zip(ids, dets, inverses):
            boxes = transform_boxes(det.boxes.float().cpu(), inv)
            per_image.append((i, image_id, detections_to_coco(
                image_ids=[image_id], boxes=[boxes], scores=[det.scores], labels=[det.labels],
                label_to_cat_id=data.label_to_cat_id)))
    model.train(was_training)
    per_image = _gather_to_main(per_image, world_size)
    if rank != 0:
        return None
    per_image.sort(key=lambda item: item[0])  # the order of a single process, whatever the sharding
    results = [r for _, _, image_results in per_image for r in image_results]
    metrics = evaluate_coco(data.coco.raw, results, image_ids=[image_id for _, image_id, _ in per_image])
    if pascal_voc:
        scored = {image_id for _, image_id, _ in per_image}
        ground_truth = {**data.coco.raw, "images": [i for i in data.coco.raw["images"] if i["id"] in scored],
                        "annotations": [a for a in data.coco.raw["annotations"] if a["image_id"] in scored]}
        metrics = replace(metrics, **pascal_voc_metrics(ground_truth, results))
    return metrics


def _gather_to_main(items: list, world_size: int) -> list:
    """Every rank's ``items`` concatenated (identity in a single process)."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return items
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
