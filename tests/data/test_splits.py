"""COCO-standard labeled/unlabeled folds: golden values of the reference tools (STAC, LabelMatch, mmdetection)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssodlib.data.splits import (
    STANDARD_FOLDS,
    STANDARD_PERCENTS,
    format_percent,
    labeled_draw,
    split_coco,
    split_file_names,
    write_coco_splits,
)
from ssodlib.io import InputError

N_COCO_TRAIN = 118287


def _reference_draw(n: int, fold: int, percent: float) -> np.ndarray:
    """The reference procedure, verbatim, on the global generator (whose state is restored)."""
    state = np.random.get_state()
    try:
        np.random.seed(fold)
        return np.random.choice(range(n), size=int(percent / 100.0 * n))
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize(
    ("fold", "percent", "draws", "unique"),
    [(1, 1.0, 1182, 1174), (1, 10.0, 11828, 11285), (1, 0.5, 591, 590)],
)
def test_labeled_draw_golden_sizes(fold: int, percent: float, draws: int, unique: int) -> None:
    d = labeled_draw(N_COCO_TRAIN, fold=fold, percent=percent)
    assert d.shape == (draws,)
    assert len(np.unique(d)) == unique
    assert d.min() >= 0 and d.max() < N_COCO_TRAIN


def test_labeled_draw_half_percent_size() -> None:
    assert len(labeled_draw(N_COCO_TRAIN, fold=3, percent=0.5)) == int(0.005 * N_COCO_TRAIN) == 591


@pytest.mark.parametrize("fold", [1, 2, 5])
@pytest.mark.parametrize("percent", [0.5, 1.0, 10.0])
def test_labeled_draw_equals_reference_procedure(fold: int, percent: float) -> None:
    expected = _reference_draw(N_COCO_TRAIN, fold, percent)
    np.testing.assert_array_equal(labeled_draw(N_COCO_TRAIN, fold=fold, percent=percent), expected)


def test_labeled_draw_leaves_global_state_alone() -> None:
    state = np.random.get_state()
    try:
        np.random.seed(12345)
        before = np.random.get_state()
        labeled_draw(1000, fold=1, percent=10)
        after = np.random.get_state()
        assert before[0] == after[0]
        np.testing.assert_array_equal(before[1], after[1])
        assert before[2:] == after[2:]
    finally:
        np.random.set_state(state)


def test_labeled_draw_differs_between_folds() -> None:
    a = labeled_draw(N_COCO_TRAIN, fold=1, percent=1)
    b = labeled_draw(N_COCO_TRAIN, fold=2, percent=1)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("percent", [0, -1, -0.5, 100.01, 150])
def test_labeled_draw_rejects_bad_percent(percent: float) -> None:
    with pytest.raises(ValueError):
        labeled_draw(100, fold=1, percent=percent)


def test_labeled_draw_accepts_100() -> None:
    d = labeled_draw(50, fold=1, percent=100)
    assert d.shape == (50,)
    np.testing.assert_array_equal(d, _reference_draw(50, 1, 100))


def test_split_file_names() -> None:
    assert split_file_names("instances_train2017", fold=1, percent=1.0) == (
        "instances_train2017.1@1.json",
        "instances_train2017.1@1-unlabeled.json",
    )
    assert split_file_names("instances_train2017", fold=2, percent=0.5) == (
        "instances_train2017.2@0.5.json",
        "instances_train2017.2@0.5-unlabeled.json",
    )
    assert split_file_names("instances_train2017", fold=5, percent=10) == (
        "instances_train2017.5@10.json",
        "instances_train2017.5@10-unlabeled.json",
    )
    assert [format_percent(p) for p in STANDARD_PERCENTS] == ["0.5", "1", "2", "5", "10"]
    assert STANDARD_FOLDS == (1, 2, 3, 4, 5)


def _synthetic_coco(n: int = 1000) -> dict:
    images = [{"id": 10 * i + 7, "file_name": f"{i:06d}.jpg", "height": 20, "width": 30} for i in range(n)]
    annotations = []
    for i in range(n):
        for k in range(i % 3):  # 0, 1 or 2 boxes per image
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": 10 * i + 7,
                "category_id": 1 + k,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 0,
            })
    return {
        "info": {"description": "synthetic", "year": 2017},
        "licenses": [{"id": 1, "name": "x"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


@pytest.mark.parametrize(("fold", "percent"), [(1, 10.0), (2, 5.0), (3, 1.0)])
def test_split_coco_partitions_images(fold: int, percent: float) -> None:
    data = _synthetic_coco(1000)
    labeled, unlabeled = split_coco(data, fold=fold, percent=percent)

    draw = _reference_draw(1000, fold, percent)
    expected_labeled_ids = {10 * int(i) + 7 for i in np.unique(draw)}
    lab_ids = [img["id"] for img in labeled["images"]]
    unl_ids = [img["id"] for img in unlabeled["images"]]
    assert set(lab_ids) == expected_labeled_ids
    assert len(lab_ids) == len(np.unique(draw))
    assert set(lab_ids).isdisjoint(unl_ids)
    assert len(lab_ids) + len(unl_ids) == 1000
    all_ids = [img["id"] for img in data["images"]]
    assert set(lab_ids) | set(unl_ids) == set(all_ids)
    # file order kept
    assert lab_ids == [i for i in all_ids if i in expected_labeled_ids]
    assert unl_ids == [i for i in all_ids if i not in expected_labeled_ids]
    # whole image dicts are carried over
    assert labeled["images"] == [img for img in data["images"] if img["id"] in expected_labeled_ids]

    # annotations follow their images, in file order
    assert labeled["annotations"] == [a for a in data["annotations"] if a["image_id"] in expected_labeled_ids]
    assert unlabeled["annotations"] == [a for a in data["annotations"] if a["image_id"] not in expected_labeled_ids]
    assert len(labeled["annotations"]) + len(unlabeled["annotations"]) == len(data["annotations"])

    for part in (labeled, unlabeled):
        assert part["info"] == data["info"]
        assert part["licenses"] == data["licenses"]
        assert part["categories"] == data["categories"]
        assert set(part) == {"info", "licenses", "images", "annotations", "categories"}
    # the input is untouched
    assert data == _synthetic_coco(1000)


def test_split_coco_ids_not_indices() -> None:
    """The draw indexes positions in the file, not image ids."""
    data = _synthetic_coco(200)
    labeled, _ = split_coco(data, fold=1, percent=10)
    positions = sorted(set(_reference_draw(200, 1, 10).tolist()))
    assert [img["file_name"] for img in labeled["images"]] == [f"{p:06d}.jpg" for p in positions]


def test_split_coco_without_annotations() -> None:
    data = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(100)], "categories": []}
    labeled, unlabeled = split_coco(data, fold=1, percent=10)
    assert labeled["annotations"] == [] and unlabeled["annotations"] == []
    assert len(labeled["images"]) == len(set(_reference_draw(100, 1, 10).tolist()))
    assert len(labeled["images"]) + len(unlabeled["images"]) == 100


def test_write_coco_splits(tmp_path: Path) -> None:
    data = _synthetic_coco(300)
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(data))
    out = tmp_path / "out" / "semi"
    folds, percents = (1, 2), (0.5, 1.0, 10.0)
    written = write_coco_splits(ann, out_dir=out, folds=folds, percents=percents)

    expected_names = []
    for fold in folds:
        for percent in percents:
            expected_names += list(split_file_names("instances_train2017", fold=fold, percent=percent))
    assert [p.name for p in written] == expected_names
    assert len(written) == 2 * len(folds) * len(percents) == 12
    assert all(Path(p).parent == out for p in written)
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_names)  # no leftover temporary files
    assert "instances_train2017.1@0.5.json" in expected_names
    assert "instances_train2017.2@10-unlabeled.json" in expected_names

    for fold in folds:
        for percent in percents:
            lab_name, unl_name = split_file_names("instances_train2017", fold=fold, percent=percent)
            labeled, unlabeled = split_coco(data, fold=fold, percent=percent)
            assert json.loads((out / lab_name).read_text()) == labeled
            assert json.loads((out / unl_name).read_text()) == unlabeled


def test_write_coco_splits_overwrites_atomically(tmp_path: Path) -> None:
    data = _synthetic_coco(100)
    ann = tmp_path / "inst.json"
    ann.write_text(json.dumps(data))
    (tmp_path / "inst.1@10.json").write_text("stale")
    written = write_coco_splits(ann, out_dir=tmp_path, folds=(1,), percents=(10,))
    assert [p.name for p in written] == ["inst.1@10.json", "inst.1@10-unlabeled.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst.1@10-unlabeled.json", "inst.1@10.json", "inst.json"]
    assert json.loads((tmp_path / "inst.1@10.json").read_text()) == split_coco(data, fold=1, percent=10)[0]


def test_write_coco_splits_percent_too_small(tmp_path: Path) -> None:
    ann = tmp_path / "small.json"
    ann.write_text(json.dumps(_synthetic_coco(50)))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        write_coco_splits(ann, out_dir=out, folds=(1,), percents=(1.0,))  # int(0.01 * 50) == 0
    assert str(ann) in str(exc.value)
    assert not out.exists() or not any(out.iterdir())


def test_write_coco_splits_no_images(tmp_path: Path) -> None:
    ann = tmp_path / "noimages.json"
    ann.write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(InputError) as exc:
        write_coco_splits(ann, out_dir=tmp_path / "out", folds=(1,), percents=(10,))
    assert str(ann) in str(exc.value)
    assert "images" in str(exc.value)

    arr = tmp_path / "list.json"
    arr.write_text("[1, 2, 3]")
    with pytest.raises(InputError, match="list.json"):
        write_coco_splits(arr, out_dir=tmp_path / "out", folds=(1,), percents=(10,))


def test_write_coco_splits_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="absent.json"):
        write_coco_splits(tmp_path / "absent.json", out_dir=tmp_path / "out", folds=(1,), percents=(10,))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(InputError, match=r"bad\.json.*line 1, column 13"):
        write_coco_splits(bad, out_dir=tmp_path / "out", folds=(1,), percents=(10,))
