"""VOC / COCO20cls / unlabeled-folder conversion on tiny hand-made datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ssodlib.data.voc import (
    VOC_CLASSES,
    coco_to_voc_classes,
    from_image_info,
    image_list_to_coco,
    voc_to_coco,
)
from ssodlib.io import InputError


def _xml(width: int, height: int, objects: list[tuple[str, int, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{diff}</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2, diff in objects
    )
    return f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>"


def _voc_tree(root: Path, annotations: dict[str, str], image_set: list[str], *, year: str = "2007") -> Path:
    voc = root / f"VOC{year}"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "JPEGImages").mkdir(parents=True)
    for voc_id, text in annotations.items():
        (voc / "Annotations" / f"{voc_id}.xml").write_text(text)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in image_set))
    return root


def test_voc_classes_order() -> None:
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[19] == "tvmonitor"


def test_box_coordinates_are_pixel_edges(tmp_path: Path) -> None:
    root = _voc_tree(tmp_path, {"000005": _xml(500, 375, [("dog", 10, 20, 50, 80, 0)])}, ["000005"])
    coco = voc_to_coco(root, year="2007", image_set="trainval")
    assert coco["images"] == [{"id": 1, "file_name": "VOC2007/JPEGImages/000005.jpg", "width": 500, "height": 375}]
    (ann,) = coco["annotations"]
    # pixels 10..50 inclusive (1-based) -> edges [9, 50]: width 41; rows 20..80 -> [19, 80]: height 61
    assert ann == {
        "id": 1, "image_id": 1, "category_id": 12, "bbox": [9.0, 19.0, 41.0, 61.0],
        "area": 41.0 * 61.0, "iscrowd": 0, "difficult": 0,
    }  # fmt: skip
    assert coco["categories"][11] == {"id": 12, "name": "dog", "supercategory": "none"}
    assert [c["id"] for c in coco["categories"]] == list(range(1, 21))


def test_difficult_becomes_crowd(tmp_path: Path) -> None:
    xml = _xml(100, 100, [("person", 1, 1, 10, 10, 1), ("car", 5, 5, 6, 6, 0)])
    coco = voc_to_coco(_voc_tree(tmp_path, {"a": xml}, ["a"]), year="2007", image_set="trainval")
    assert [(a["category_id"], a["iscrowd"], a["difficult"]) for a in coco["annotations"]] == [(15, 1, 1), (7, 0, 0)]
    assert coco["annotations"][1]["bbox"] == [4.0, 4.0, 2.0, 2.0]


def test_image_set_order_and_ids(tmp_path: Path) -> None:
    anns = {
        "b": _xml(10, 20, [("cat", 1, 1, 2, 2, 0)]),
        "a": _xml(30, 40, [("cow", 1, 1, 2, 2, 0), ("bus", 1, 1, 3, 3, 0)]),
        "c": _xml(50, 60, []),
    }
    root = _voc_tree(tmp_path, anns, ["b", "c", "a"])
    coco = voc_to_coco(root, year="2007", image_set="trainval", first_image_id=100)
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (100, "VOC2007/JPEGImages/b.jpg", 10, 20),
        (101, "VOC2007/JPEGImages/c.jpg", 50, 60),
        (102, "VOC2007/JPEGImages/a.jpg", 30, 40),
    ]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in coco["annotations"]] == [
        (1, 100, 8), (2, 102, 10), (3, 102, 6),
    ]  # fmt: skip


def test_unknown_class_names_xml(tmp_path: Path) -> None:
    root = _voc_tree(tmp_path, {"x": _xml(10, 10, [("unicorn", 1, 1, 2, 2, 0)])}, ["x"])
    with pytest.raises(InputError) as err:
        voc_to_coco(root, year="2007", image_set="trainval")
    assert str(tmp_path / "VOC2007" / "Annotations" / "x.xml") in str(err.value)
    assert "'unicorn'" in str(err.value) and "Fix:" in str(err.value)


def test_malformed_xml_names_xml(tmp_path: Path) -> None:
    root = _voc_tree(tmp_path, {"x": "<annotation><size>"}, ["x"])
    with pytest.raises(InputError) as err:
        voc_to_coco(root, year="2007", image_set="trainval")
    assert str(tmp_path / "VOC2007" / "Annotations" / "x.xml") in str(err.value)
    assert "malformed" in str(err.value)


def test_missing_size_and_bndbox(tmp_path: Path) -> None:
    root = _voc_tree(
        tmp_path,
        {"s": "<annotation></annotation>", "b": "<annotation><size><width>5</width><height>5</height></size>"
         "<object><name>dog</name></object></annotation>"},
        ["s"],
    )  # fmt: skip
    with pytest.raises(InputError, match=r"s\.xml: VOC annotation has no <size>"):
        voc_to_coco(root, year="2007", image_set="trainval")
    (root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text("b\n")
    with pytest.raises(InputError, match=r"b\.xml: object 'dog' has no <bndbox>"):
        voc_to_coco(root, year="2007", image_set="trainval")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_a_nan_or_infinite_voc_coordinate_names_the_xml_file_and_the_tag(tmp_path: Path, value: str) -> None:
    text = _xml(10, 10, [("dog", 1, 1, 5, 5, 0)]).replace("<ymin>1</ymin>", f"<ymin>{value}</ymin>")
    root = _voc_tree(tmp_path, {"x": text}, ["x"])
    with pytest.raises(InputError) as err:
        voc_to_coco(root, year="2007", image_set="trainval")  # was converted into a NaN box
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "VOC2007" / "Annotations" / "x.xml"))
    assert f"<bndbox> has <ymin> {value!r}, not a finite number" in msg and "Fix:" in msg

def test_missing_image_set_file(tmp_path: Path) -> None:
    root = _voc_tree(tmp_path, {}, [])
    with pytest.raises(InputError) as err:
        voc_to_coco(root, year="2007", image_set="test")
    assert str(tmp_path / "VOC2007" / "ImageSets" / "Main" / "test.txt") in str(err.value)
    assert "not found" in str(err.value)


def _coco_categories() -> list[dict]:
    names = [
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "bird", "cat",
        "dog", "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv", "giraffe",
    ]  # fmt: skip
    # Non-contiguous ids as in real COCO (ids skip numbers), starting at 1.
    return [{"id": 1 + 2 * i, "name": n, "supercategory": "x"} for i, n in enumerate(names)]


def _ann(ann_id: int, image_id: int, cat_id: int, *, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": iscrowd}


def test_coco_to_voc_classes() -> None:
    cats = _coco_categories()
    cid = {c["name"]: c["id"] for c in cats}
    coco = {
        "info": {"v": 1},
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 9, "height": 9} for i in (10, 20, 30, 40)],
        "annotations": [
            _ann(1, 10, cid["airplane"]),
            _ann(2, 10, cid["giraffe"]),  # non-VOC: dropped
            _ann(3, 10, cid["tv"], iscrowd=1),  # crowd on a kept image: kept as ignore region
            _ann(4, 20, cid["giraffe"]),  # image 20 has only non-VOC classes: dropped
            _ann(5, 30, cid["person"], iscrowd=1),  # image 30 has only crowd VOC: dropped
            _ann(6, 40, cid["couch"]),
            _ann(7, 40, cid["dining table"]),
            _ann(8, 40, cid["motorcycle"]),
            _ann(9, 40, cid["potted plant"]),
        ],
        "categories": cats,
    }
    out = coco_to_voc_classes(coco)
    assert [i["id"] for i in out["images"]] == [10, 40]
    assert [(a["id"], a["image_id"], a["category_id"], a["iscrowd"]) for a in out["annotations"]] == [
        (1, 10, 1, 0), (3, 10, 20, 1), (6, 40, 18, 0), (7, 40, 11, 0), (8, 40, 14, 0), (9, 40, 16, 0),
    ]  # fmt: skip
    assert out["categories"] == [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(VOC_CLASSES)]
    assert out["info"] == {"v": 1}
    assert coco["annotations"][0]["category_id"] == cid["airplane"]  # input untouched


def test_coco_to_voc_classes_missing_category() -> None:
    cats = [c for c in _coco_categories() if c["name"] != "couch"]
    with pytest.raises(InputError) as err:
        coco_to_voc_classes({"images": [], "annotations": [], "categories": cats}, source="inst.json")
    assert str(err.value).startswith("inst.json: COCO categories lack ['couch']")


def test_image_list_to_coco(tmp_path: Path) -> None:
    folder = tmp_path / "unlabeled2017"
    folder.mkdir()
    Image.new("RGB", (7, 5)).save(folder / "b.jpg")
    Image.new("RGB", (3, 11)).save(folder / "a.PNG")
    Image.new("RGB", (4, 4)).save(folder / "c.jpeg")
    (folder / "notes.txt").write_text("skip me")
    coco = image_list_to_coco(folder, relative_to=tmp_path)
    assert coco["images"] == [
        {"id": 1, "file_name": "unlabeled2017/a.PNG", "width": 3, "height": 11},
        {"id": 2, "file_name": "unlabeled2017/b.jpg", "width": 7, "height": 5},
        {"id": 3, "file_name": "unlabeled2017/c.jpeg", "width": 4, "height": 4},
    ]
    assert coco["annotations"] == [] and coco["categories"] == []
    assert image_list_to_coco(folder)["images"][0]["file_name"] == "a.PNG"


def test_image_list_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no .jpg/.jpeg/.png images"):
        image_list_to_coco(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError) as err:
        image_list_to_coco(tmp_path)
    assert str(tmp_path / "bad.jpg") in str(err.value)


def test_from_image_info(tmp_path: Path) -> None:
    images = [{"id": 5, "file_name": "x.jpg", "width": 2, "height": 3}]
    cats = [{"id": 1, "name": "person", "supercategory": "person"}]
    path = tmp_path / "image_info_unlabeled2017.json"
    path.write_text(json.dumps({"images": images, "categories": cats}))
    assert from_image_info(path) == {"images": images, "annotations": [], "categories": cats}
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="no 'images' list"):
        from_image_info(path)


def test_merge_renumbers_ids_prefixes_file_names_and_checks_categories(tmp_path: Path) -> None:
    from ssodlib.cli import main
    from ssodlib.data.voc import merge_coco, voc_categories

    cats = voc_categories()
    voc12 = {"images": [{"id": 1, "file_name": "VOC2012/JPEGImages/a.jpg", "width": 9, "height": 9}],
             "annotations": [_ann(1, 1, 15)], "categories": cats}
    coco20 = {"images": [{"id": 1, "file_name": "x.jpg", "width": 9, "height": 9},
                         {"id": 7, "file_name": "y.jpg", "width": 9, "height": 9}],
              "annotations": [_ann(1, 7, 3), _ann(2, 1, 15)], "categories": cats}
    out = merge_coco([(voc12, ""), (coco20, "../coco/train2017/")])
    # the clashing image id 1 and annotation ids 1 become 1..3; each box follows its own image
    assert [(i["id"], i["file_name"], i["source"], i["source_id"]) for i in out["images"]] == [
        (1, "VOC2012/JPEGImages/a.jpg", 0, 1), (2, "../coco/train2017/x.jpg", 1, 1), (3, "../coco/train2017/y.jpg", 1, 7)]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in out["annotations"]] == [(1, 1, 15), (2, 3, 3), (3, 2, 15)]
    assert out["categories"] == cats and coco20["images"][0]["id"] == 1  # inputs untouched
    with pytest.raises(InputError, match="categories differ"):
        merge_coco([(voc12, ""), ({**coco20, "categories": cats[:5]}, "")], sources=["voc12.json", "other.json"])
    # the command writes the file the VOC12 + COCO20cls rows declare
    (tmp_path / "voc12.json").write_text(json.dumps(voc12))
    (tmp_path / "coco20.json").write_text(json.dumps(coco20))
    target = tmp_path / "voc12_trainval+coco20cls.json"
    main(["data", "merge", str(tmp_path / "voc12.json"), f"{tmp_path / 'coco20.json'}=../coco/train2017/",
          "--out", str(target)])
    assert json.loads(target.read_text()) == out
