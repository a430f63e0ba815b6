"""COCO parsing and the CocoDetection dataset on tiny hand-made files."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssodlib.data.coco import CocoDetection, load_coco, parse_coco, read_image
from ssodlib.io import InputError

# Non-contiguous category ids, listed out of order: labels follow sorted id order 3 -> 0, 7 -> 1, 90 -> 2.
CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 3, "name": "car"},
    {"id": 7, "name": "train"},
]


def _pixels(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_png(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    arr = _pixels(h, w, seed)
    Image.fromarray(arr, "RGB").save(path, format="PNG")
    return arr


def _write_jpg(path: Path, h: int, w: int, seed: int) -> None:
    Image.fromarray(_pixels(h, w, seed), "RGB").save(path, format="JPEG")


def _write_json(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def dataset_dir(tmp_path: Path) -> dict:
    """Three images: a.png (4x5, two objects + one crowd), b.jpg (6x8, no objects), c.png (3x2, one object)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    pix_a = _write_png(img_dir / "a.png", 4, 5, seed=0)
    _write_jpg(img_dir / "b.jpg", 6, 8, seed=1)
    pix_c = _write_png(img_dir / "c.png", 3, 2, seed=2)
    data = {
        "info": {"description": "tiny"},
        "images": [
            {"id": 42, "file_name": "a.png", "height": 4, "width": 5},
            {"id": 7, "file_name": "b.jpg", "height": 6, "width": 8},
            {"id": 1000, "file_name": "c.png", "height": 3, "width": 2},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 90, "bbox": [0.5, 1.0, 2.0, 1.5], "iscrowd": 0},
            {"id": 2, "image_id": 1000, "category_id": 7, "bbox": [0.0, 0.0, 2.0, 3.0], "iscrowd": 0},
            {"id": 3, "image_id": 42, "category_id": 3, "bbox": [1.0, 0.0, 3.0, 2.25]},
            {"id": 4, "image_id": 42, "category_id": 7, "bbox": [0.0, 0.0, 5.0, 4.0], "iscrowd": 1},
        ],
        "categories": CATEGORIES,
    }
    ann = _write_json(tmp_path / "instances.json", data)
    return {"ann": ann, "img_dir": img_dir, "data": data, "pix_a": pix_a, "pix_c": pix_c}


# ----------------------------------------------------------------------------------------------
# targets


def test_targets_boxes_labels_and_metadata(dataset_dir: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file loads without any warning
        ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"])
    assert len(ds) == 3
    assert ds.num_classes == 3
    assert ds.class_names == ["car", "train", "toothbrush"]
    assert ds.label_to_cat_id == [3, 7, 90]
    assert ds.coco.cat_id_to_label == {3: 0, 7: 1, 90: 2}
    assert ds.skipped == {"missing": 0, "unreadable": 0}

    image, target = ds[0]
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, 4, 5)
    assert torch.equal(image, torch.from_numpy(dataset_dir["pix_a"]).permute(2, 0, 1))
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].shape == (2, 4)
    # annotation order within the image is kept: id 1 (cat 90) then id 3 (cat 3)
    assert target["boxes"].tolist() == [[0.5, 1.0, 2.5, 2.5], [1.0, 0.0, 4.0, 2.25]]
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [2, 0]
    assert target["crowd_boxes"].tolist() == [[0.0, 0.0, 5.0, 4.0]]
    assert target["image_id"] == 42
    assert isinstance(target["image_id"], int)
    assert target["orig_size"].tolist() == [4, 5]

    image, target = ds[2]
    assert tuple(image.shape) == (3, 3, 2)
    assert torch.equal(image, torch.from_numpy(dataset_dir["pix_c"]).permute(2, 0, 1))
    assert target["boxes"].tolist() == [[0.0, 0.0, 2.0, 3.0]]
    assert target["labels"].tolist() == [1]
    assert target["crowd_boxes"].shape == (0, 4)
    assert target["image_id"] == 1000
    assert target["orig_size"].tolist() == [3, 2]

    assert ds.image_info(1) == {"id": 7, "file_name": "b.jpg", "height": 6, "width": 8}


def test_image_without_annotations_is_kept(dataset_dir: dict) -> None:
    ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"])
    image, target = ds[1]
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, 6, 8)
    assert target["boxes"].dtype == torch.float32
    assert tuple(target["boxes"].shape) == (0, 4)
    assert target["labels"].dtype == torch.int64
    assert tuple(target["labels"].shape) == (0,)
    assert tuple(target["crowd_boxes"].shape) == (0, 4)
    assert target["image_id"] == 7
    assert target["orig_size"].tolist() == [6, 8]
    # target() gives the same without decoding
    t = ds.target(1)
    assert t["image_id"] == 7 and tuple(t["boxes"].shape) == (0, 4)


def test_crowd_boxes_excluded_from_training_targets(dataset_dir: dict) -> None:
    coco = load_coco(dataset_dir["ann"])
    assert [b.tolist() for b in coco.crowd_boxes] == [[[0.0, 0.0, 5.0, 4.0]], [], []]
    assert [lab.tolist() for lab in coco.labels] == [[2, 0], [], [1]]
    assert coco.repairs.crowd == 1
    assert coco.repairs.clipped == 0
    assert coco.repairs.dropped_degenerate == 0
    # the crowd box (category 7 -> label 1) is not counted
    assert coco.class_counts().tolist() == [1, 1, 1]
    assert coco.class_counts().dtype == np.int64


def test_parse_coco_arrays(dataset_dir: dict) -> None:
    coco = parse_coco(dataset_dir["data"], source="mem.json")
    assert coco.source == "mem.json"
    assert coco.cat_ids == [3, 7, 90]
    assert coco.num_classes == 3
    assert [img["id"] for img in coco.images] == [42, 7, 1000]
    assert all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4 for b in coco.boxes)
    assert all(c.dtype == np.float32 and c.shape[1] == 4 for c in coco.crowd_boxes)
    assert all(lab.dtype == np.int64 for lab in coco.labels)
    np.testing.assert_array_equal(coco.boxes[0], np.array([[0.5, 1, 2.5, 2.5], [1, 0, 4, 2.25]], np.float32))
    assert coco.boxes[1].shape == (0, 4)


def test_class_counts_exact() -> None:
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 10, "width": 10} for i in range(3)],
        "annotations": [
            {"id": k, "image_id": img, "category_id": cat, "bbox": [1, 1, 2, 2], "iscrowd": crowd}
            for k, (img, cat, crowd) in enumerate(
                [(0, 90, 0), (0, 90, 0), (1, 90, 0), (1, 3, 0), (2, 90, 0), (2, 3, 1), (2, 90, 1)]
            )
        ],
        "categories": CATEGORIES,
    }
    coco = parse_coco(data, source="x.json")
    assert coco.class_counts().tolist() == [1, 0, 4]


# ----------------------------------------------------------------------------------------------
# repairs


def test_out_of_image_boxes_clipped_and_zero_area_dropped(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": 8, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "bbox": [-2, 1, 5, 3]},  # clipped -> 0,1,3,4
            {"id": 2, "image_id": 5, "category_id": 7, "bbox": [8, 6, 5, 5]},  # clipped -> 8,6,10,8
            {"id": 3, "image_id": 5, "category_id": 90, "bbox": [12, 0, 3, 3]},  # clipped to zero width, dropped
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [2, 2, 0, 3]},  # zero area inside, dropped
            {"id": 5, "image_id": 5, "category_id": 90, "bbox": [1, 2, 3, 4]},  # untouched
        ],
        "categories": CATEGORIES,
    }
    ann = _write_json(tmp_path / "repairs.json", data)
    with pytest.warns(UserWarning, match=re.escape(f"{ann}: clipped 3 box(es)")) as w:
        coco = load_coco(ann)
    assert len(w) == 1  # one warning for the whole file, not one per box
    msg = str(w[0].message)
    assert str(ann) in msg
    assert "clipped 3 box(es)" in msg
    assert "dropped 2 box(es)" in msg
    assert coco.repairs.clipped == 3
    assert coco.repairs.dropped_degenerate == 2
    assert coco.repairs.crowd == 0
    assert coco.boxes[0].tolist() == [[0, 1, 3, 4], [8, 6, 10, 8], [1, 2, 4, 6]]
    assert coco.labels[0].tolist() == [0, 1, 2]


def test_no_repairs_no_warning(dataset_dir: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coco = load_coco(dataset_dir["ann"])
    assert coco.repairs.message("x") is None


# ----------------------------------------------------------------------------------------------
# annotation file errors


def test_unknown_category_id(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "annotations": [{"id": 17, "image_id": 1, "category_id": 55, "bbox": [0, 0, 1, 1]}],
        "categories": CATEGORIES,
    }
    ann = _write_json(tmp_path / "badcat.json", data)
    with pytest.raises(InputError) as exc:
        load_coco(ann)
    msg = str(exc.value)
    assert str(ann) in msg
    assert "category_id 55" in msg
    assert "annotation 17" in msg


def test_unknown_image_id(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "annotations": [{"id": 9, "image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1]}],
        "categories": CATEGORIES,
    }
    ann = _write_json(tmp_path / "badimg.json", data)
    with pytest.raises(InputError) as exc:
        load_coco(ann)
    msg = str(exc.value)
    assert str(ann) in msg
    assert "image_id 2" in msg


def test_truncated_json(tmp_path: Path) -> None:
    ann = tmp_path / "trunc.json"
    ann.write_text('{\n  "images": [\n    {"id": 1,')
    with pytest.raises(InputError) as exc:
        load_coco(ann)
    msg = str(exc.value)
    assert str(ann) in msg
    assert "line 3, column 14" in msg


def test_missing_annotation_file(tmp_path: Path) -> None:
    ann = tmp_path / "nope" / "instances_missing.json"
    with pytest.raises(InputError, match=re.escape(str(ann))):
        load_coco(ann)
    with pytest.raises(InputError, match=re.escape(str(ann))):
        CocoDetection(ann_file=ann, image_dir=tmp_path)


def test_duplicate_image_id(tmp_path: Path) -> None:
    data = {
        "images": [
            {"id": 3, "file_name": "a.png", "height": 4, "width": 4},
            {"id": 3, "file_name": "b.png", "height": 4, "width": 4},
        ],
        "annotations": [],
        "categories": CATEGORIES,
    }
    ann = _write_json(tmp_path / "dup.json", data)
    with pytest.raises(InputError) as exc:
        load_coco(ann)
    assert str(ann) in str(exc.value)
    assert "duplicate image id 3" in str(exc.value)


@pytest.mark.parametrize(
    "bbox, problem",
    [([1, float("nan"), 2, 2], "NaN or infinite"), ([1, 1, float("inf"), 2], "NaN or infinite"),
     ([1, 1, 2], "not four numbers"), ([1, 1, 2, 2, 5], "not four numbers"), ([1, "a", 2, 2], "not four numbers"),
     ([1, True, 2, 2], "not four numbers"), (None, "not four numbers"), ({"x": 1}, "not four numbers")],
    ids=["nan", "inf", "three", "five", "string", "bool", "null", "object"],
)
def test_a_box_that_is_not_four_finite_numbers_names_the_annotation_file_and_id(tmp_path: Path, bbox, problem) -> None:
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": 8, "width": 10}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 2, 2]},
                        {"id": 17, "image_id": 5, "category_id": 3, "bbox": bbox}],
        "categories": CATEGORIES,
    }
    ann = _write_json(tmp_path / "bad_box.json", data)  # json writes NaN and Infinity as Python reads them
    with pytest.raises(InputError) as exc:
        load_coco(ann)  # a NaN box was kept silently; the others raised a bare ValueError or TypeError
    msg = str(exc.value)
    assert msg.startswith(f"{ann}: annotation 17 has ") and problem in msg
    assert "Fix: correct the annotation's bbox or remove the annotation." in msg


def test_a_zero_area_box_is_still_dropped_with_a_warning_not_an_error(tmp_path: Path) -> None:
    data = {"images": [{"id": 5, "file_name": "a.png", "height": 8, "width": 10}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 0, 2]}], "categories": CATEGORIES}
    with pytest.warns(UserWarning, match="dropped 1 box"):
        coco = load_coco(_write_json(tmp_path / "zero.json", data))
    assert coco.repairs.dropped_degenerate == 1 and coco.boxes[0].shape == (0, 4)


# ----------------------------------------------------------------------------------------------
# image errors


def test_missing_image_raises_naming_path(dataset_dir: dict) -> None:
    (dataset_dir["img_dir"] / "b.jpg").unlink()
    ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"])
    assert len(ds) == 3
    ds[0]  # others still load
    with pytest.raises(InputError, match=re.escape(str(dataset_dir["img_dir"] / "b.jpg"))):
        ds[1]


def test_corrupt_image_raises_naming_path(dataset_dir: dict) -> None:
    bad = dataset_dir["img_dir"] / "b.jpg"
    bad.write_bytes(b"this is definitely not a jpeg" * 4)
    ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"])
    with pytest.raises(InputError, match=re.escape(str(bad))):
        ds[1]
    with pytest.raises(InputError, match=re.escape(str(bad))):
        read_image(bad)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_an_unreadable_image_advises_what_a_cli_user_can_do_and_names_its_annotation_entry(
    dataset_dir: dict, damage: str
) -> None:
    image = dataset_dir["img_dir"] / "b.jpg"
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(b"not an image")
    ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"])
    with pytest.raises(InputError) as exc:
        ds[1]
    msg = str(exc.value)
    assert msg.startswith(str(image)) and f"(listed in {dataset_dir['ann']} as image 7)" in msg
    # skip_missing is a keyword of the dataset class, which no command-line flag offers
    assert "skip_missing" not in msg and "remove the image's entry from the annotation file" in msg
    with pytest.raises(InputError) as exc:
        read_image(image)
    assert "skip_missing" not in str(exc.value) and "Fix:" in str(exc.value)

def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    with pytest.raises(InputError, match=re.escape(str(bad))):
        read_image(bad)


def test_skip_missing_drops_missing_files(dataset_dir: dict) -> None:
    (dataset_dir["img_dir"] / "a.png").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) missing"):
        ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"], skip_missing=True)
    assert len(ds) == 2
    assert ds.skipped == {"missing": 1, "unreadable": 0}
    assert [ds.image_info(i)["id"] for i in range(len(ds))] == [7, 1000]
    image, target = ds[1]
    assert target["image_id"] == 1000
    assert torch.equal(image, torch.from_numpy(dataset_dir["pix_c"]).permute(2, 0, 1))
    assert target["labels"].tolist() == [1]
    assert ds.target(0)["image_id"] == 7


def test_skip_missing_all_missing_raises(dataset_dir: dict) -> None:
    for name in ("a.png", "b.jpg", "c.png"):
        (dataset_dir["img_dir"] / name).unlink()
    with pytest.warns(UserWarning):
        with pytest.raises(InputError, match="no image found"):
            CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"], skip_missing=True)


def test_skip_missing_replaces_unreadable_with_next(dataset_dir: dict) -> None:
    bad = dataset_dir["img_dir"] / "b.jpg"
    bad.write_bytes(b"garbage bytes, not an image" * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing: no construction warning
        ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"], skip_missing=True)
    assert len(ds) == 3
    assert ds.skipped == {"missing": 0, "unreadable": 0}
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        image, target = ds[1]
    assert target["image_id"] == 1000
    assert torch.equal(image, torch.from_numpy(dataset_dir["pix_c"]).permute(2, 0, 1))
    assert target["boxes"].tolist() == [[0.0, 0.0, 2.0, 3.0]]
    assert ds.skipped == {"missing": 0, "unreadable": 1}


def test_skip_missing_unreadable_last_wraps_to_first(dataset_dir: dict) -> None:
    bad = dataset_dir["img_dir"] / "c.png"
    bad.write_bytes(b"\x00\x01\x02 not a png")
    ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"], skip_missing=True)
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        image, target = ds[2]
    assert target["image_id"] == 42
    assert torch.equal(image, torch.from_numpy(dataset_dir["pix_a"]).permute(2, 0, 1))
    assert ds.skipped["unreadable"] == 1


def test_image_size_mismatch(dataset_dir: dict) -> None:
    path = dataset_dir["img_dir"] / "c.png"
    _write_png(path, 5, 2, seed=3)  # JSON says 3x2
    ds = CocoDetection(ann_file=dataset_dir["ann"], image_dir=dataset_dir["img_dir"])
    with pytest.raises(InputError) as exc:
        ds[2]
    msg = str(exc.value)
    assert str(path) in msg
    assert "5x2" in msg and "3x2" in msg


def test_read_image_png_exact_and_grayscale(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    pix = _write_png(rgb, 3, 4, seed=5)
    t = read_image(rgb)
    assert t.dtype == torch.uint8
    assert torch.equal(t, torch.from_numpy(pix).permute(2, 0, 1))

    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    t = read_image(tmp_path / "g.png")
    assert tuple(t.shape) == (3, 3, 4)
    for c in range(3):
        assert t[c].tolist() == gray.tolist()

    rgba = np.concatenate([pix, np.full((3, 4, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    t = read_image(tmp_path / "a.png")
    assert torch.equal(t, torch.from_numpy(pix).permute(2, 0, 1))

    _write_jpg(tmp_path / "j.jpg", 7, 9, seed=6)
    t = read_image(tmp_path / "j.jpg")
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, 7, 9)

    with pytest.raises(InputError, match=re.escape(str(tmp_path / "absent.png"))):
        read_image(tmp_path / "absent.png")


# ----------------------------------------------------------------------------------------------
# shared label space


def test_categories_argument_shares_label_space(tmp_path: Path) -> None:
    labeled = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]},
            {"id": 3, "image_id": 1, "category_id": 90, "bbox": [0, 0, 3, 3]},
        ],
        "categories": CATEGORIES,
    }
    # the unlabeled file lists only some categories, in another order
    unlabeled = {
        "images": [{"id": 2, "file_name": "b.png", "height": 10, "width": 10}],
        "annotations": [
            {"id": 4, "image_id": 2, "category_id": 90, "bbox": [0, 0, 3, 3]},
            {"id": 5, "image_id": 2, "category_id": 7, "bbox": [0, 0, 2, 2]},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 7, "name": "train"}],
    }
    lab = load_coco(_write_json(tmp_path / "l.json", labeled))
    unl = load_coco(_write_json(tmp_path / "u.json", unlabeled), categories=lab.cat_ids)
    assert lab.labels[0].tolist() == [0, 1, 2]
    assert unl.cat_ids == [3, 7, 90]
    assert unl.num_classes == 3
    assert unl.cat_id_to_label == lab.cat_id_to_label
    assert unl.labels[0].tolist() == [2, 1]
    assert unl.class_names[1:] == ["train", "toothbrush"]
    assert unl.class_counts().tolist() == [0, 1, 1]
    # without the argument the file's own (smaller) label space is used
    own = load_coco(tmp_path / "u.json")
    assert own.cat_ids == [7, 90]
    assert own.labels[0].tolist() == [1, 0]

    # through the dataset as well
    Image.fromarray(_pixels(10, 10, 0)).save(tmp_path / "b.png")
    ds = CocoDetection(ann_file=tmp_path / "u.json", image_dir=tmp_path, categories=[3, 7, 90])
    assert ds.label_to_cat_id == [3, 7, 90]
    assert ds.num_classes == 3
    assert ds[0][1]["labels"].tolist() == [2, 1]

    # a category of the unlabeled file outside the given label space is an error
    with pytest.raises(InputError, match="category_id 90"):
        load_coco(tmp_path / "u.json", categories=[3, 7])
