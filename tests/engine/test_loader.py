"""The loader's strong view follows ``TrainConfig.strong_augment`` (Rethinking PL's Table 6 switches)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssodlib.config import train_config
from ssodlib.data.transforms import StrongViewConfig, identity, strong_view
from ssodlib.engine.loader import strong_view_config
from ssodlib.io import InputError


def test_default_strong_view_is_the_full_photometric_augmentation():
    config = train_config("smoke", method="pseudo_label")
    assert config.strong_augment == ("color", "blur", "cutout")
    assert strong_view_config(config) == StrongViewConfig(geometric=config.geometric_jitter)


def test_the_independent_student_view_reaches_the_strong_view():
    from ssodlib.experiments.plan import run_key

    config = train_config("smoke", method="pseudo_label")
    assert not config.independent_student_view and not strong_view_config(config).independent_resize
    on = dataclasses.replace(config, independent_student_view=True)
    assert strong_view_config(on).independent_resize
    # another run (the shipped records keep their keys: tests/experiments/test_plan_ensemble.py)
    assert run_key(on) != run_key(config)


@pytest.mark.parametrize("keep, off", [
    ((), {"jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0, "cutouts": ()}),
    (("color",), {"blur_prob": 0.0, "cutouts": ()}),
    (("color", "blur"), {"cutouts": ()}),
    (("blur", "cutout"), {"jitter_prob": 0.0, "grayscale_prob": 0.0}),
])
def test_each_switch_turns_off_only_its_augmentation(keep, off):
    config = dataclasses.replace(train_config("smoke", method="pseudo_label"), strong_augment=keep,
                                 geometric_jitter=True)
    assert strong_view_config(config) == StrongViewConfig(geometric=True, **off)


def test_no_strong_augmentation_leaves_the_image_as_it_is():
    config = dataclasses.replace(train_config("smoke", method="pseudo_label"), strong_augment=())
    image = torch.randint(0, 256, (3, 20, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out, matrix = strong_view(image, strong_view_config(config), torch.Generator().manual_seed(1))
    assert torch.equal(out, image) and torch.equal(matrix, identity())


def test_an_unknown_augmentation_is_an_error_that_lists_the_choices():
    with pytest.raises(InputError, match=r"strong_augment.*'colour'.*color"):
        train_config("smoke", method="pseudo_label", strong_augment=["colour"])


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")  # no accelerator here: pinning is a no-op
def test_worker_processes_give_the_same_batches_and_pinning_is_passed_on(smoke_benchmark):
    """The paper preset loads with 4 worker processes (and pinned memory on CUDA, the trainer's
    ``pin_memory=device.type == "cuda"``): workers must not change what a batch holds, which seeds
    per index (not per process) guarantee."""
    from ssodlib.data.coco import CocoDetection
    from ssodlib.engine.loader import build_loader, resolve_data

    assert train_config("paper").num_workers == 4 and train_config("mini").num_workers == 0
    batches = {}
    for workers in (0, 2):
        config = train_config("smoke", data_root=str(smoke_benchmark.root.parent), num_workers=workers)
        files = resolve_data(config)
        labeled = CocoDetection(ann_file=files.labeled_ann, image_dir=files.image_dir)
        loader = build_loader(config, files, labeled=labeled, uses_unlabeled=True, start_batch=3, rank=0,
                              world_size=1, pin_memory=workers > 0)
        assert loader.pin_memory is (workers > 0) and loader.num_workers == workers
        it = iter(loader)
        batches[workers] = [next(it) for _ in range(2)]
    for a, b in zip(batches[0], batches[2]):
        for name in ("images", "weak", "strong", "boxes", "teacher_to_student"):
            for x, y in zip(getattr(a, name), getattr(b, name)):
                assert torch.equal(x, y), name
