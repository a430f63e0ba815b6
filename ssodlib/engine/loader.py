"""Training data for the engine: which files a run reads (:func:`resolve_data`) and the loader of its
batches (:func:`build_loader`, :class:`ssodlib.data.batch.Batch`): labeled images in a weak view,
unlabeled images in the teacher's weak and the student's strong view, every view's matrix, and the
withheld ground truth of unlabeled images (diagnostics only). Augmentation randomness is a function
of (seed, rank, batch, slot), so a resumed run sees exactly the images and views an uninterrupted
one would."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssodlib.data.coco import CocoDetection
from ssodlib.data.sampler import MixedBatchSampler
from ssodlib.data.splits import split_file_names
from ssodlib.data.synth import default_data_root, ensure_benchmark
from ssodlib.data.transforms import (
    StrongViewConfig,
    WeakViewConfig,
    clip_boxes,
    teacher_student_views,
    transform_boxes,
    weak_view,
)
from ssodlib.config import TrainConfig
from ssodlib.data.batch import Batch
from ssodlib.io import InputError


@dataclass
class DataFiles:
    labeled_ann: Path
    unlabeled_ann: Path | None
    val_ann: Path
    image_dir: Path
    val_image_dir: Path | None = None
    unlabeled_image_dir: Path | None = None

    @property
    def val_images(self) -> Path:
        return self.val_image_dir or self.image_dir

    @property
    def unlabeled_images(self) -> Path:
        return self.unlabeled_image_dir or self.image_dir


def resolve_data(config: TrainConfig, *, progress: bool = False) -> DataFiles:
    """Explicit files when given; else the config's ``dataset``: the embedded benchmark of the config's
    scale (generated on first use) or the COCO-standard folds under ``{data_root}/coco``."""
    if config.labeled_ann:
        if not (config.val_ann and config.image_dir):
            raise InputError("labeled_ann needs val_ann and image_dir too. Fix: set all three (--set KEY=VALUE).")
        return DataFiles(Path(config.labeled_ann), Path(config.unlabeled_ann) if config.unlabeled_ann else None,
                         Path(config.val_ann), Path(config.image_dir),
                         Path(config.val_image_dir) if config.val_image_dir else None)
    if config.dataset in DATASETS:
        return _checked(DATASETS[config.dataset](config), config)
    if config.dataset != "synth":
        raise InputError(f"unknown dataset {config.dataset!r}. Fix: synth, {', '.join(DATASETS)}, or explicit "
                         "labeled_ann / val_ann / image_dir files.")
    if config.scale == "paper":
        raise InputError("the paper scale trains on COCO or VOC, not on the embedded benchmark. Fix: set dataset=coco "
                         "(folds made by `ssod data split-coco`) or explicit labeled_ann / val_ann / image_dir.")
    paths = ensure_benchmark(config.scale, data_root=config.data_root, progress=progress)
    labeled = paths.fold(fold=config.fold, percent=config.percent)
    if not labeled.is_file():
        raise InputError(
            f"{labeled}: not found (no split at {config.percent:g} % fold {config.fold}). "
            f"{available_splits(labeled.parent, 'instances_train')} Fix: choose one of those, or make others with "
            f"`ssod data split-coco {paths.annotations('train')} --out-dir {labeled.parent} --folds {config.fold} "
            f"--percents {config.percent:g}`.")
    return DataFiles(labeled,
                     paths.fold(fold=config.fold, percent=config.percent, unlabeled=True),
                     paths.annotations("val"), paths.image_dir)


def _root(config: TrainConfig) -> Path:
    return Path(config.data_root) if config.data_root else default_data_root()


def coco_standard_files(config: TrainConfig) -> DataFiles:
    """COCO-standard: ``{root}/coco/annotations/semi/instances_train2017.{fold}@{percent}[-unlabeled].json``,
    ``{root}/coco/annotations/instances_val2017.json``, images in ``{root}/coco/train2017`` and
    ``val2017`` (``root``: data_root, ``$SSOD_DATA_ROOT`` or ``./data``)."""
    coco = _root(config) / "coco"
    labeled, unlabeled = split_file_names("instances_train2017", fold=config.fold, percent=config.percent)
    return DataFiles(coco / "annotations" / "semi" / labeled, coco / "annotations" / "semi" / unlabeled,
                     coco / "annotations" / "instances_val2017.json", coco / "train2017", coco / "val2017")


def coco_additional_files(config: TrainConfig) -> DataFiles:
    """COCO-additional: all of ``train2017`` labeled, ``unlabeled2017`` unlabeled
    (``{root}/coco/annotations/unlabeled2017.json``), evaluated on val2017."""
    coco = _root(config) / "coco"
    ann = coco / "annotations"
    return DataFiles(ann / "instances_train2017.json", ann / "unlabeled2017.json", ann / "instances_val2017.json",
                     coco / "train2017", coco / "val2017", coco / "unlabeled2017")


def voc_files(config: TrainConfig) -> DataFiles:
    """VOC: VOC07 trainval labeled, VOC12 trainval unlabeled, VOC07 test (``{root}/VOCdevkit/coco_json/
    voc07_trainval.json`` ...; file names relative to ``{root}/VOCdevkit``)."""
    voc = _root(config) / "VOCdevkit"
    ann = voc / "coco_json"
    return DataFiles(ann / "voc07_trainval.json", ann / "voc12_trainval.json", ann / "voc07_test.json", voc)


DATASETS = {"coco": coco_standard_files, "coco-additional": coco_additional_files, "voc": voc_files}
PREPARE = {
    "coco": "put COCO 2017 under {root}/coco and make the folds with `ssod data split-coco "
            "{root}/coco/annotations/instances_train2017.json --out-dir {root}/coco/annotations/semi`",
    "coco-additional": "put COCO 2017 (train2017, val2017, unlabeled2017) under {root}/coco and run `ssod data "
                       "image-list --image-info {root}/coco/annotations/image_info_unlabeled2017.json --out "
                       "{root}/coco/annotations/unlabeled2017.json`",
    "voc": "put VOC2007 and VOC2012 under {root}/VOCdevkit and run `ssod data voc-to-coco --devkit "
           "{root}/VOCdevkit --out-dir {root}/VOCdevkit/coco_json`",
}


def available_splits(folder: Path, stem: str) -> str:
    """The labeled splits of ``stem`` in ``folder`` (``{stem}.{fold}@{percent}.json``), as a sentence."""
    found = [m.groups() for p in sorted(folder.glob(f"{stem}.*@*.json"))
             if (m := re.fullmatch(re.escape(stem) + r"\.(\d+)@([0-9.]+)\.json", p.name))]
    if not found:
        return f"{folder} holds no split."
    folds = sorted({int(f) for f, _ in found})
    percents = sorted({float(p) for _, p in found})
    return f"{folder} holds percents {[f'{p:g}' for p in percents]} x folds {folds}."


def _checked(files: DataFiles, config: TrainConfig) -> DataFiles:
    if config.dataset == "coco" and not files.labeled_ann.exists() and files.labeled_ann.parent.is_dir():
        raise InputError(
            f"{files.labeled_ann}: not found (no split at {config.percent:g} % fold {config.fold}). "
            f"{available_splits(files.labeled_ann.parent, 'instances_train2017')} Fix: choose one of those, or make "
            f"others with `ssod data split-coco {files.labeled_ann.parent.parent / 'instances_train2017.json'} "
            f"--out-dir {files.labeled_ann.parent} --folds {config.fold} --percents {config.percent:g}`.")
    for path in (files.labeled_ann, files.unlabeled_ann, files.val_ann, files.image_dir, files.val_image_dir,
                 files.unlabeled_image_dir):
        if path is not None and not path.exists():
            raise InputError(f"{path}: not found. Fix: {PREPARE[config.dataset].format(root=_root(config))}.")
    return files


def _mapped(boxes: Tensor, labels: Tensor, matrix: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    boxes, keep = clip_boxes(transform_boxes(boxes, matrix), height=size[0], width=size[1])
    return boxes[keep], labels[keep]


class SemiSupervisedData(Dataset):
    """Items keyed by ``(batch, slot, index)``; index < ``len(labeled)`` is labeled."""

    def __init__(self, *, labeled: CocoDetection, unlabeled: CocoDetection | None, weak: WeakViewConfig,
                 strong: StrongViewConfig, seed: int, rank: int = 0) -> None:
        self.labeled, self.unlabeled = labeled, unlabeled
        self.weak, self.strong = weak, strong
        self.seed, self.rank = seed, rank

    def __len__(self) -> int:
        return len(self.labeled) + (len(self.unlabeled) if self.unlabeled is not None else 0)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[str, dict]:
        batch, slot, index = key
        g = torch.Generator().manual_seed(((self.seed * 7919 + self.rank) * 1_000_003 + batch) * 64 + slot)
        if index < len(self.labeled):
            image, target = self.labeled[index]
            view, matrix = weak_view(image, self.weak, g)
            boxes, labels = _mapped(target["boxes"], target["labels"], matrix, view.shape[1:])
            return "labeled", {"image": view, "boxes": boxes, "labels": labels}
        image, target = self.unlabeled[index - len(self.labeled)]
        v = teacher_student_views(image, weak=self.weak, strong=self.strong, g=g)
        gw = _mapped(target["boxes"], target["labels"], v.weak_matrix, v.weak.shape[1:])
        gs = _mapped(target["boxes"], target["labels"], v.strong_matrix, v.strong.shape[1:])
        return "unlabeled", {"weak": v.weak, "strong": v.strong, "t2s": v.teacher_to_student.float(), "gw": gw, "gs": gs}


def collate(items: list[tuple[str, dict]]) -> Batch:
    b = Batch()
    for kind, it in items:
        if kind == "labeled":
            b.images.append(it["image"]); b.boxes.append(it["boxes"]); b.labels.append(it["labels"])
        else:
            b.weak.append(it["weak"]); b.strong.append(it["strong"]); b.teacher_to_student.append(it["t2s"])
            b.gt_weak_boxes.append(it["gw"][0]); b.gt_weak_labels.append(it["gw"][1])
            b.gt_strong_boxes.append(it["gs"][0]); b.gt_strong_labels.append(it["gs"][1])
    return b


class KeyedBatches:
    """Turns a :class:`MixedBatchSampler` into batches of ``(batch, slot, index)`` keys."""

    def __init__(self, sampler: MixedBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for k, batch in enumerate(self.sampler, start=self.sampler.start_batch):
            yield [(k, slot, i) for slot, i in enumerate(batch)]


def strong_view_config(config: TrainConfig) -> StrongViewConfig:
    """The student's strong view with only the photometric augmentations of ``config.strong_augment``
    (Rethinking PL's Table 6 switches them off one by one), plus the geometric jitter and the student's own
    resize when set."""
    keep = set(config.strong_augment)
    off: dict = {}
    if "color" not in keep:
        off.update(jitter_prob=0.0, grayscale_prob=0.0)
    if "blur" not in keep:
        off.update(blur_prob=0.0)
    if "cutout" not in keep:
        off.update(cutouts=())
    return StrongViewConfig(geometric=config.geometric_jitter, independent_resize=config.independent_student_view, **off)


def build_loader(config: TrainConfig, files: DataFiles, *, labeled: CocoDetection, uses_unlabeled: bool,
                 start_batch: int, rank: int, world_size: int, pin_memory: bool = False) -> DataLoader:
    unlabeled = None
    if uses_unlabeled:
        if files.unlabeled_ann is None:
            raise ValueError("this method needs unlabeled data: set unlabeled_ann")
        unlabeled = CocoDetection(ann_file=files.unlabeled_ann, image_dir=files.unlabeled_images,
                                  categories=labeled.label_to_cat_id)
    weak = WeakViewConfig(scales=config.train_scales, max_size=config.max_size)
    strong = strong_view_config(config)
    data = SemiSupervisedData(labeled=labeled, unlabeled=unlabeled, weak=weak, strong=strong, seed=config.seed,
                              rank=rank)
    sampler = MixedBatchSampler(num_labeled=len(labeled), num_unlabeled=len(unlabeled) if unlabeled else 1,
                                labeled_per_batch=config.labeled_per_batch,
                                unlabeled_per_batch=config.unlabeled_per_batch if unlabeled else 0,
                                seed=config.seed, rank=rank, world_size=world_size, start_batch=start_batch)
    loader = DataLoader(data, batch_sampler=KeyedBatches(sampler), collate_fn=collate,
                        num_workers=config.num_workers, persistent_workers=config.num_workers > 0, pin_memory=pin_memory,
                        prefetch_factor=2 if config.num_workers > 0 else None)
    return loader
