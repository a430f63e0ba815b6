import json

import numpy as np
import pytest
import torch

from ssodlib.data.synth import BACKGROUND, CLASSES, object_crops, synth_config
from ssodlib.io import InputError
from ssodlib.models.backbones import build_backbone
from ssodlib.models.pretrain import (
    PRETRAIN_PRESETS,
    PretrainConfig,
    accuracy,
    ensure_pretrained_backbone,
    pretrained_backbone_paths,
    train_crop_classifier,
)


@pytest.fixture(scope="module")
def crops():
    cfg = synth_config("smoke")
    train = object_crops(cfg, count=160, size=32, workers=2)
    val = object_crops(cfg, start=160, count=40, size=32)
    return train, val


def test_crop_classification_learns_the_shapes_beyond_the_majority_class(crops):
    (x, y), (xv, yv) = crops
    # 8 epochs, not 6: with one thread on some CPUs 6 ended at 0.40 against a majority of 0.31 (8: 0.58)
    config = PretrainConfig(images=0, val_images=0, epochs=8, crop_size=32, batch_size=32, lr=0.05)
    model, losses = train_crop_classifier(x, y, config)
    majority = np.bincount(yv, minlength=BACKGROUND + 1).max() / len(yv)
    assert losses[-1] < losses[0]
    assert accuracy(model, xv, yv) > majority + 0.1
    # with labels shuffled, what it learns does not carry over to held-out crops
    shuffled, _ = train_crop_classifier(x, np.random.default_rng(0).permutation(y), config)
    assert accuracy(shuffled, xv, yv) < accuracy(model, xv, yv)


def test_training_is_deterministic_and_leaves_the_global_rng_alone(crops):
    (x, y), _ = crops
    config = PretrainConfig(images=0, val_images=0, epochs=1, crop_size=32, batch_size=32)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a, _ = train_crop_classifier(x[:64], y[:64], config)
    assert torch.equal(torch.rand(1), expected)
    b, _ = train_crop_classifier(x[:64], y[:64], config)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretrained_weights_are_cached_and_rebuilt_when_the_recipe_changes(tmp_path):
    weights = ensure_pretrained_backbone("smoke", data_root=tmp_path, workers=1, progress=False)
    assert (weights, weights.with_suffix(".json")) == pretrained_backbone_paths("smoke", data_root=tmp_path)
    manifest = json.loads(weights.with_suffix(".json").read_text())
    assert manifest["recipe"]["pretrain"]["images"] == PRETRAIN_PRESETS["smoke"].images
    assert 0.0 <= manifest["val_accuracy"] <= 1.0 and manifest["crops"] > 0
    state = torch.load(weights, weights_only=True)
    assert state and not any(k.startswith("fpn.") for k in state)
    stamp = weights.stat().st_mtime_ns
    assert ensure_pretrained_backbone("smoke", data_root=tmp_path, progress=False).stat().st_mtime_ns == stamp
    ensure_pretrained_backbone("smoke", data_root=tmp_path, workers=1, progress=False, epochs=2)
    assert json.loads(weights.with_suffix(".json").read_text())["recipe"]["pretrain"]["epochs"] == 2
    assert weights.stat().st_mtime_ns != stamp
    with pytest.raises(InputError, match="pretrained=false"):
        ensure_pretrained_backbone("paper", data_root=tmp_path)


def test_pretrained_weights_are_rebuilt_when_the_benchmark_classes_change(tmp_path, monkeypatch):
    # the crops' labels are class indices: weights learnt under another class order would mislabel every class
    weights = ensure_pretrained_backbone("smoke", data_root=tmp_path, workers=1, progress=False)
    stamp = weights.stat().st_mtime_ns
    monkeypatch.setattr("ssodlib.data.synth.CLASSES", tuple(reversed(CLASSES)))
    ensure_pretrained_backbone("smoke", data_root=tmp_path, workers=1, progress=False)
    assert weights.stat().st_mtime_ns != stamp
    assert json.loads(weights.with_suffix(".json").read_text())["recipe"]["benchmark"]["classes"][0] == CLASSES[-1]


def test_the_tiny_backbone_loads_the_trunk_and_keeps_its_own_fpn(tmp_path):
    weights = ensure_pretrained_backbone("smoke", data_root=tmp_path, workers=1, progress=False)
    state = torch.load(weights, weights_only=True)
    torch.manual_seed(0)
    scratch = build_backbone("tiny", fpn_channels=32)
    torch.manual_seed(0)
    loaded = build_backbone("tiny", pretrained=True, fpn_channels=32, weights=weights)
    for key, value in loaded.state_dict().items():
        if key.startswith("fpn."):
            assert torch.equal(value, scratch.state_dict()[key])
        else:
            assert torch.equal(value, state[key]) and not torch.equal(value, scratch.state_dict()[key])
    with pytest.raises(ValueError, match="pass weights="):
        build_backbone("tiny", pretrained=True)


def test_a_pretrained_tiny_trunk_freezes_its_first_layers_on_request(tmp_path):
    weights = ensure_pretrained_backbone("smoke", data_root=tmp_path, workers=1, progress=False)

    def trainable(backbone):
        return [all(p.requires_grad for p in m.parameters()) for m in [backbone.stem, *backbone.stages, backbone.fpn]]

    frozen_stem = build_backbone("tiny", pretrained=True, weights=weights, trainable_layers=3)
    assert trainable(frozen_stem) == [False, False, True, True, True, True]
    assert trainable(build_backbone("tiny", pretrained=True, weights=weights, trainable_layers=1)) == [False] * 4 + [True] * 2
    assert all(trainable(build_backbone("tiny", pretrained=True, weights=weights)))  # the tiny trunk's standard: 5
    assert all(trainable(build_backbone("tiny", trainable_layers=0)))  # from scratch nothing is frozen
    with pytest.raises(ValueError, match="0..5"):
        build_backbone("tiny", pretrained=True, weights=weights, trainable_layers=6)


def test_unusable_weight_files_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="missing.pt: backbone weights not found"):
        build_backbone("tiny", weights=tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="broken.pt: not a readable state-dict"):
        build_backbone("tiny", weights=tmp_path / "broken.pt")
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "shape.pt")
    with pytest.raises(InputError, match="shape.pt: does not fit the backbone"):
        build_backbone("tiny", weights=tmp_path / "shape.pt")
    torch.save({"extra": torch.zeros(1)}, tmp_path / "keys.pt")
    with pytest.raises(InputError, match=r"keys.pt: does not fit the backbone \(keys \['extra'"):
        build_backbone("tiny", weights=tmp_path / "keys.pt")
