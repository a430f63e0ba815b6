"""evaluate_detector: every rank detects on its shard of the validation images and rank 0 scores all of
them, with exactly the metrics of a single process."""

from __future__ import annotations

import json

import torch
import torch.multiprocessing as mp
from torch import nn

from ssodlib.data.coco import CocoDetection
from ssodlib.data.transforms import WeakViewConfig, transform_boxes, weak_view
from ssodlib.evaluation.detector_eval import evaluate_detector
from ssodlib.models.detectors.base import Detections


class LookupDetector(nn.Module):
    """A stand-in detector that knows each validation image's ground truth in the test view (found by
    the image's pixel sum) and answers it with image-dependent scores plus one false positive, so
    the metrics are neither 0 nor 1 and a shard that lost or swapped images changes them."""

    def __init__(self, truth: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.truth = truth

    def predict(self, images, *, with_candidates=False):
        out = []
        for im in images:
            key = int(im.long().sum())
            boxes, labels = self.truth[key]
            fp = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
            score = torch.linspace(0.3, 0.9, len(boxes) + 1) * (0.5 + (key % 97) / 194)
            out.append(Detections(torch.cat([boxes, fp]), score, torch.cat([labels, labels[:1] if len(labels) else
                                  torch.zeros(1, dtype=torch.int64)]), torch.zeros(len(boxes) + 1, 4)))
        return out


def _truth(root: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    data = CocoDetection(ann_file=f"{root}/annotations/instances_val.json", image_dir=f"{root}/images")
    view = WeakViewConfig(scales=(96,), max_size=160, flip_prob=0.0)
    truth = {}
    for i in range(len(data)):
        image, target = data[i]
        v, m = weak_view(image, view, torch.Generator())
        truth[int(v.long().sum())] = (transform_boxes(target["boxes"], m), target["labels"])
    assert len(truth) == len(data)  # the pixel sums tell the images apart
    return truth


def _evaluate(root: str, rank: int = 0, world_size: int = 1):
    return evaluate_detector(LookupDetector(_truth(root)), ann_file=f"{root}/annotations/instances_val.json",
                             image_dir=f"{root}/images", test_scale=96, max_size=160, batch_size=1, rank=rank,
                             world_size=world_size)


def _worker(rank: int, world: int, root: str, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metrics = _evaluate(root, rank, world)
        if rank == 0:
            with open(result_file, "w") as f:
                json.dump(metrics.to_dict(), f)
        else:
            assert metrics is None
    finally:
        dist.destroy_process_group()


def test_two_ranks_score_exactly_what_one_process_scores(smoke_benchmark, tmp_path):
    single = _evaluate(str(smoke_benchmark.root)).to_dict()
    assert 0.2 < single["ap50"] < 1.0  # neither nothing nor everything, so the comparison says something
    result = tmp_path / "metrics.json"
    mp.start_processes(_worker, args=(2, str(smoke_benchmark.root), str(tmp_path / "init"), str(result)), nprocs=2,
                       join=True, start_method="spawn")
    assert json.loads(result.read_text()) == json.loads(json.dumps(single))


def test_pascal_voc_metrics_are_added_only_when_asked_and_score_the_same_detections(smoke_benchmark):
    from ssodlib.evaluation.coco_eval import pascal_voc_ap

    root = str(smoke_benchmark.root)
    plain = _evaluate(root)
    assert plain.voc_ap50 is None and "voc_ap50" not in plain.to_dict()
    model = LookupDetector(_truth(root))
    voc = evaluate_detector(model, ann_file=f"{root}/annotations/instances_val.json", image_dir=f"{root}/images",
                            test_scale=96, max_size=160, batch_size=1, max_images=7, pascal_voc=True)
    assert voc.num_images == 7 and 0 < voc.voc_ap50 < 1 and 0 < voc.voc_ap <= voc.voc_ap50
    assert set(voc.to_dict()) >= {"voc_ap50", "voc_ap"}
    # the same number from the devkit function on the scored images' ground truth and detections: the
    # ground truth of the images not evaluated (max_images) must not count as missed
    data = CocoDetection(ann_file=f"{root}/annotations/instances_val.json", image_dir=f"{root}/images")
    ids = [data[i][1]["image_id"] for i in range(7)]
    gt = {**data.coco.raw, "images": [im for im in data.coco.raw["images"] if im["id"] in ids],
          "annotations": [a for a in data.coco.raw["annotations"] if a["image_id"] in ids]}
    from ssodlib.evaluation.coco_eval import detections_to_coco

    dets = []
    view = WeakViewConfig(scales=(96,), max_size=160, flip_prob=0.0)
    for i in range(7):
        image, target = data[i]
        v, m = weak_view(image, view, torch.Generator())
        det = model.predict([v])[0]
        dets += detections_to_coco(image_ids=[target["image_id"]], boxes=[transform_boxes(det.boxes, torch.linalg.inv(m))],
                                   scores=[det.scores], labels=[det.labels], label_to_cat_id=data.label_to_cat_id)
    assert voc.voc_ap50 == pascal_voc_ap(gt, dets)["mAP"]
