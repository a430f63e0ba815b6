"""A tiny detector, a one-image batch, a loader's first batch and a check of a declaration's published
counterparts, shared by the method tests (imported, not collected)."""

import torch

from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.engine.loader import build_loader, resolve_data
from ssodlib.models.detectors.faster_rcnn import DetectorConfig, FasterRCNN


def tiny_detector() -> FasterRCNN:
    """3 classes, tiny backbone, seeded: two calls give identical weights."""
    torch.manual_seed(0)
    return FasterRCNN(config=DetectorConfig(num_classes=3, backbone="tiny", fpn_channels=16, representation_size=32,
                                            anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n=(100, 50),
                                            rpn_post_nms_top_n=(50, 20), roi_batch_size=32))


def tiny_batch(*, mirrored: bool = False) -> Batch:
    """One labeled and one unlabeled 64 px image with one box; ``mirrored``: the student's view is the
    teacher's flipped horizontally (otherwise the identity)."""
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
    box, lab = torch.tensor([[8.0, 8, 40, 40]]), torch.tensor([1])
    matrix = torch.tensor([[-1.0, 0, 64], [0, 1, 0], [0, 0, 1]]) if mirrored else torch.eye(3)
    strong_box = torch.tensor([[24.0, 8, 56, 40]]) if mirrored else box
    return Batch(images=[img()], boxes=[box], labels=[lab], weak=[img()], strong=[img()],
                 teacher_to_student=[matrix], gt_weak_boxes=[box], gt_weak_labels=[lab],
                 gt_strong_boxes=[strong_box], gt_strong_labels=[lab])


def first_batch(config):
    """The labeled and unlabeled sets of ``config`` and its loader's first batch."""
    files = resolve_data(config)
    labeled = CocoDetection(ann_file=files.labeled_ann, image_dir=files.image_dir)
    loader = build_loader(config, files, labeled=labeled, uses_unlabeled=True, start_batch=0, rank=0, world_size=1)
    return labeled, loader.dataset.unlabeled, next(iter(loader))


def published_counterparts(paper: str) -> int:
    """How many (row reference, column) pairs of ``papers/<paper>/experiments.yaml`` name a published
    number, each asserted to resolve to one (the columns of each item's paper scale, else its mini)."""
    from ssodlib.experiments.plan import load_declarations
    from ssodlib.experiments.reference import published
    from ssodlib.report.experiments import references_of

    checked = 0
    for item in load_declarations(paper).items:
        scale = "paper" if "paper" in item.scales else "mini"
        columns = item.scales[scale].get("columns") or [c["name"] for c in item.columns]
        for row in item.rows:
            for column in columns:
                for ref in (r for r in references_of(row, column) if r):  # the references the report reads
                    value = published(ref["paper"], ref["item"], ref["row"], ref.get("columns", {}).get(column, column))
                    assert isinstance(value, float), (item.id, row["name"], column)
                    checked += 1
    return checked
