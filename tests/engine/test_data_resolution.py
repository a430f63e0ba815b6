"""Which files a run reads: the COCO-standard layout under data_root, explicit files, and the errors
that say what is missing and how to make it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssodlib.config import train_config
from ssodlib.engine.loader import resolve_data
from ssodlib.io import InputError


def _coco_layout(root: Path, *, fold: int, percent: str) -> Path:
    coco = root / "coco"
    semi = coco / "annotations" / "semi"
    semi.mkdir(parents=True)
    (semi / f"instances_train2017.{fold}@{percent}.json").touch()
    (semi / f"instances_train2017.{fold}@{percent}-unlabeled.json").touch()
    (coco / "annotations" / "instances_val2017.json").touch()
    (coco / "train2017").mkdir()
    (coco / "val2017").mkdir()
    return coco


def test_coco_resolves_the_documented_layout(tmp_path):
    coco = _coco_layout(tmp_path, fold=2, percent="0.5")
    files = resolve_data(train_config("paper", dataset="coco", data_root=str(tmp_path), fold=2, percent=0.5))
    assert files.labeled_ann == coco / "annotations" / "semi" / "instances_train2017.2@0.5.json"
    assert files.unlabeled_ann == coco / "annotations" / "semi" / "instances_train2017.2@0.5-unlabeled.json"
    assert files.val_ann == coco / "annotations" / "instances_val2017.json"
    assert files.image_dir == coco / "train2017" and files.val_images == coco / "val2017"


def test_coco_without_data_root_reads_the_environment(tmp_path, monkeypatch):
    coco = _coco_layout(tmp_path, fold=1, percent="10")
    monkeypatch.setenv("SSOD_DATA_ROOT", str(tmp_path))
    files = resolve_data(train_config("mini", dataset="coco", percent=10.0))
    assert files.labeled_ann == coco / "annotations" / "semi" / "instances_train2017.1@10.json"


@pytest.mark.parametrize("remove", ["annotations/semi/instances_train2017.1@1.json",
                                    "annotations/semi/instances_train2017.1@1-unlabeled.json",
                                    "annotations/instances_val2017.json", "train2017", "val2017"])
def test_a_missing_coco_file_names_it_and_the_split_command(tmp_path, remove):
    coco = _coco_layout(tmp_path, fold=1, percent="1")
    missing = coco / remove
    if missing.is_dir():
        missing.rmdir()
    else:
        missing.unlink()
    with pytest.raises(InputError) as e:
        resolve_data(train_config("paper", dataset="coco", data_root=str(tmp_path)))
    message = str(e.value)
    assert message.startswith(f"{missing}: not found")
    assert "ssod data split-coco" in message and f"--out-dir {coco}/annotations/semi" in message


def test_paper_scale_on_the_embedded_benchmark_and_unknown_datasets_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="paper scale trains on COCO or VOC.*dataset=coco"):
        resolve_data(train_config("paper", dataset="synth", data_root=str(tmp_path)))
    with pytest.raises(InputError, match="unknown dataset 'voc07'.*synth, coco, coco-additional, voc"):
        resolve_data(train_config("smoke", dataset="voc07", data_root=str(tmp_path)))
    assert not list(tmp_path.iterdir())  # nothing generated on the way


def test_explicit_files_win_over_the_dataset(tmp_path):
    files = resolve_data(train_config("paper", dataset="coco", labeled_ann="l.json", val_ann="v.json",
                                      image_dir="img", data_root=str(tmp_path)))
    assert (files.labeled_ann, files.unlabeled_ann, files.val_ann, files.image_dir, files.val_images) == (
        Path("l.json"), None, Path("v.json"), Path("img"), Path("img"))
    with pytest.raises(InputError, match="labeled_ann needs val_ann and image_dir"):
        resolve_data(train_config("smoke", labeled_ann="l.json"))


def test_coco_additional_reads_unlabeled2017_from_its_own_folder(tmp_path):
    coco = tmp_path / "coco"
    for d in ("annotations", "train2017", "val2017", "unlabeled2017"):
        (coco / d).mkdir(parents=True)
    for f in ("instances_train2017.json", "instances_val2017.json"):
        (coco / "annotations" / f).touch()
    config = train_config("paper", dataset="coco-additional", data_root=str(tmp_path))
    with pytest.raises(InputError) as e:
        resolve_data(config)
    assert str(e.value).startswith(f"{coco}/annotations/unlabeled2017.json: not found")
    assert f"ssod data image-list --image-info {coco}/annotations/image_info_unlabeled2017.json" in str(e.value)
    (coco / "annotations" / "unlabeled2017.json").touch()
    files = resolve_data(config)
    assert files.labeled_ann == coco / "annotations" / "instances_train2017.json"
    assert files.image_dir == coco / "train2017" and files.unlabeled_images == coco / "unlabeled2017"
    assert files.val_ann == coco / "annotations" / "instances_val2017.json" and files.val_images == coco / "val2017"


def test_voc_reads_the_converted_files_of_voc_to_coco(tmp_path):
    voc = tmp_path / "VOCdevkit"
    (voc / "coco_json").mkdir(parents=True)
    config = train_config("paper", dataset="voc", data_root=str(tmp_path))
    with pytest.raises(InputError, match=f"voc07_trainval.json: not found.*voc-to-coco --devkit {voc} "):
        resolve_data(config)
    for f in ("voc07_trainval.json", "voc12_trainval.json", "voc07_test.json"):
        (voc / "coco_json" / f).touch()
    files = resolve_data(config)
    assert (files.labeled_ann.name, files.unlabeled_ann.name, files.val_ann.name) == (
        "voc07_trainval.json", "voc12_trainval.json", "voc07_test.json")
    assert files.image_dir == files.val_images == files.unlabeled_images == voc


def test_a_percent_or_fold_without_a_generated_split_says_which_exist_and_how_to_make_others(smoke_benchmark):
    root = str(smoke_benchmark.root.parent)
    for overrides, missing in [({"percent": 3.0}, "instances_train.1@3.json"), ({"fold": 9}, "instances_train.9@10.json")]:
        with pytest.raises(InputError) as e:
            resolve_data(train_config("smoke", data_root=root, **overrides))
        message = str(e.value)
        assert message.startswith(str(smoke_benchmark.root / "annotations" / "semi" / missing) + ": not found")
        assert "holds percents ['1', '2', '5', '10'] x folds [1, 2, 3, 4, 5]" in message
        assert "Fix: choose one of those, or make others with `ssod data split-coco" in message


def test_a_coco_percent_without_a_split_lists_the_splits_there_are(tmp_path):
    _coco_layout(tmp_path, fold=2, percent="0.5")
    with pytest.raises(InputError, match=r"holds percents \['0.5'\] x folds \[2\]. Fix: choose one of those"):
        resolve_data(train_config("paper", dataset="coco", data_root=str(tmp_path), fold=1, percent=10.0))
