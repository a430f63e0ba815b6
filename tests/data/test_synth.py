import json

import numpy as np
import pytest

from ssodlib.data.coco import CocoDetection, load_coco
from ssodlib.data.synth import (
    BACKGROUND,
    CLASSES,
    SYNTH_PRESETS,
    _annotations,
    class_frequencies,
    generate,
    object_crops,
    render_image,
    synth_config,
)


def test_render_is_a_pure_function_of_seed_split_index():
    cfg = synth_config("smoke")
    a, anns_a = render_image(cfg, 3, "train", 7)
    b, anns_b = render_image(cfg, 3, "train", 7)
    assert np.array_equal(a, b) and anns_a == anns_b
    c, _ = render_image(cfg, 4, "train", 7)
    d, _ = render_image(cfg, 3, "val", 7)
    assert not np.array_equal(a, c) if a.shape == c.shape else True
    assert a.shape != d.shape or not np.array_equal(a, d)


def test_long_tail_is_at_least_20x_and_covers_10_classes():
    p = class_frequencies(SYNTH_PRESETS["mini"])
    assert len(CLASSES) >= 10
    assert p.sum() == pytest.approx(1.0)
    assert np.all(np.diff(p) < 0)
    assert p[0] / p[-1] >= 20


def test_visible_extent_boxes_and_occlusion_rule():
    cfg = synth_config("smoke", occlusion_min_visible=0.3)
    owner = np.full((20, 20), -1, dtype=np.int16)
    owner[2:8, 2:12] = 0  # object 0: a 6x10 block ...
    owner[2:8, 8:12] = 1  # ... whose right part object 1 covers
    owner[10:12, 10:20] = 2  # object 2 drawn 4x10 but 80 % covered by object 3
    owner[10:14, 12:20] = 3
    objects = [(0, 60, 2, 2, (6, 10)), (5, 24, 2, 8, (6, 4)), (1, 40, 10, 10, (4, 10)), (2, 32, 10, 12, (4, 8))]
    anns = _annotations(owner, objects, cfg)
    assert [a["category_id"] for a in anns] == [1, 6, 3]  # object 2 (class 1) is 10 % visible: dropped
    assert anns[0]["bbox"] == [2, 2, 6, 6] and anns[0]["area"] == 36
    assert anns[1]["bbox"] == [8, 2, 4, 6]
    assert anns[2]["bbox"] == [12, 10, 8, 4]


def test_mini_statistics_match_the_specification():
    cfg = synth_config("mini")
    counts = np.zeros(len(CLASSES), int)
    sides, per_image = [], []
    for i in range(150):
        img, anns = render_image(cfg, 0, "train", i)
        assert 0.85 * 256 - 1 <= img.shape[0] <= 1.15 * 256 + 1
        per_image.append(len(anns))
        for a in anns:
            counts[a["category_id"] - 1] += 1
            sides.append(max(a["bbox"][2:]))
    sides = np.array(sides)
    assert max(per_image) <= 15 and np.mean(np.array(per_image) >= 1) > 0.95
    assert np.mean(per_image) > 3
    assert (counts > 0).sum() >= 10
    assert counts[0] > 8 * counts[-3:].mean()  # long tail shows in a sample
    assert sides.min() <= 12 and sides.max() >= 100  # every FPN level gets work
    assert 0.2 < np.mean(sides < 32) < 0.8


def test_generate_writes_coco_files_folds_and_manifest(smoke_benchmark):
    paths = smoke_benchmark
    cfg = SYNTH_PRESETS["smoke"]
    train = load_coco(paths.annotations("train"))
    val = load_coco(paths.annotations("val"))
    assert len(train.images) == cfg.num_train and len(val.images) == cfg.num_val
    assert train.class_names == list(CLASSES)
    ds = CocoDetection(ann_file=paths.annotations("val"), image_dir=paths.image_dir)
    image, target = ds[0]
    assert image.shape[1:] == tuple(target["orig_size"].tolist())
    for fold in cfg.split_folds:
        for percent in cfg.split_percents:
            lab = json.loads(paths.fold(fold=fold, percent=percent).read_text())
            unl = json.loads(paths.fold(fold=fold, percent=percent, unlabeled=True).read_text())
            ids = {i["id"] for i in lab["images"]} | {i["id"] for i in unl["images"]}
            assert len(lab["images"]) + len(unl["images"]) == cfg.num_train == len(ids)
            assert 0 < len(lab["images"]) <= int(percent * cfg.num_train / 100)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["seed"] == 0 and manifest["classes"] == list(CLASSES)


def test_generate_reuses_identical_benchmark_and_regenerates_otherwise(tmp_path):
    cfg = synth_config("smoke", num_train=12, num_val=4, split_percents=(10.0,), split_folds=(1,))
    paths = generate(cfg, root=tmp_path, seed=1, workers=1, progress=False)
    stamp = paths.annotations("train").stat().st_mtime_ns
    generate(cfg, root=tmp_path, seed=1, workers=1, progress=False)
    assert paths.annotations("train").stat().st_mtime_ns == stamp
    first = paths.annotations("train").read_bytes()
    generate(cfg, root=tmp_path, seed=2, workers=1, progress=False)
    assert paths.annotations("train").read_bytes() != first


def test_generation_is_identical_in_parallel(tmp_path):
    cfg = synth_config("smoke", num_train=8, num_val=2, split_percents=(25.0,), split_folds=(1,))
    serial = generate(cfg, root=tmp_path / "a", seed=5, workers=1, progress=False)
    from ssodlib.data.synth import _generate_split

    parallel = _generate_split(cfg, 5, "train", 8, tmp_path / "b", 2, False)
    assert json.loads(serial.annotations("train").read_text()) == json.loads(json.dumps(parallel))
    for i in range(8):
        name = f"train/{i:06d}.jpg"
        assert (serial.image_dir / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()


def test_unknown_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="smoke"):
        synth_config("huge")


def test_pretrain_split_is_its_own_and_unknown_splits_are_refused():
    cfg = synth_config("smoke")
    pre, _ = render_image(cfg, 0, "pretrain", 0)
    for split in ("train", "val"):
        other, _ = render_image(cfg, 0, split, 0)
        assert pre.shape != other.shape or not np.array_equal(pre, other)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        render_image(cfg, 0, "test", 0)


def test_object_crops_give_one_labelled_crop_per_object_then_background():
    cfg = synth_config("smoke")
    labels_per_image = [[a["category_id"] - 1 for a in render_image(cfg, 0, "pretrain", i)[1]] for i in (3, 4)]
    crops, labels = object_crops(cfg, start=3, count=2, size=24, background=0)
    assert crops.shape == (sum(map(len, labels_per_image)), 24, 24, 3) and crops.dtype == np.uint8
    assert labels.tolist() == labels_per_image[0] + labels_per_image[1]
    with_bg, bg_labels = object_crops(cfg, start=3, count=2, size=24, background=4)
    assert bg_labels.tolist()[: len(labels_per_image[0])] == labels_per_image[0]
    assert (bg_labels == BACKGROUND).sum() == len(bg_labels) - len(labels)
    assert (bg_labels == BACKGROUND).any()
    again, _ = object_crops(cfg, start=3, count=2, size=24, background=4, workers=2)
    assert np.array_equal(with_bg, again)

