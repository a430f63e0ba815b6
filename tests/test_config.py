"""The training configuration: presets with one level of overrides, every field checked against its
declared type and range when a config is built, and YAML that reads scientific notation as numbers."""

from __future__ import annotations

import dataclasses

import pytest

from ssodlib.config import PRESETS, TrainConfig, load_yaml, parse_overrides, train_config
from ssodlib.io import InputError
from ssodlib.methods import get_method
from ssodlib.models.build import detector_options


@pytest.mark.parametrize("text, value", [("1e-3", 0.001), ("1e6", 1e6), ("1.0e6", 1e6), ("-2E-4", -2e-4),
                                         ("0.5", 0.5), ("3", 3), ("[1e3, 2]", [1000.0, 2]), ("abc", "abc")])
def test_scientific_notation_in_set_and_config_files_is_a_number(text, value):
    assert load_yaml(text) == value and type(load_yaml(text)) is type(value)
    assert parse_overrides([f"lr={text}"])["lr"] == value


def test_set_lr_in_scientific_notation_builds_a_config():
    assert train_config("smoke", **parse_overrides(["lr=1e-3", "weight_decay=5e-5"])).lr == 0.001
    config = train_config("smoke", **load_yaml("lr: 1e-3\nweight_decay: 1.0e-4\nlr_steps: [300]\n"))
    assert (config.lr, config.weight_decay, config.lr_steps) == (0.001, 1e-4, (300,))


@pytest.mark.parametrize("field, value, expected", [
    ("iterations", "abc", "iterations='abc' is not of type int"),
    ("iterations", 10.5, "iterations=10.5 is not of type int"),
    ("lr", "1e-3", "lr='1e-3' is not of type float"),  # a string from Python stays a string
    ("lr_steps", [1, "x"], "lr_steps=(1, 'x') is not of type tuple[int, ...]"),
    ("threads", True, "threads=True is not of type int or None"),
])
def test_a_field_of_the_wrong_type_names_the_field_the_value_and_the_type(field, value, expected):
    with pytest.raises(InputError, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train_config("smoke", **{field: value})
    with pytest.raises(InputError, match=f"Fix: set {field} to a value of type"):
        TrainConfig(**{field: value})  # the Python API checks too


@pytest.mark.parametrize("field, value, expected", [
    ("iterations", 0, "iterations=0 must be > 0"), ("percent", 0, "percent=0 must be > 0"),
    ("percent", 100.5, "percent=100.5 must be <= 100"), ("fold", 0, "fold=0 must be >= 1"),
    ("ema_keep_rate", 1.5, "ema_keep_rate=1.5 must be <= 1"), ("lr_steps", (10, -1), r"lr_steps=\(10, -1\) must be >= 0"),
    ("threads", 0, "threads=0 must be >= 1"),
])
def test_a_value_out_of_its_range_is_refused(field, value, expected):
    with pytest.raises(InputError, match=expected):
        train_config("smoke", **{field: value})


def test_an_option_dict_that_is_not_a_mapping_is_refused():
    with pytest.raises(InputError, match="method_options must be a mapping"):
        train_config("smoke", method_options=[1])
    with pytest.raises(InputError, match=r"method_options=\[1\] is not of type dict"):
        TrainConfig(method_options=[1])


def test_an_unknown_choice_lists_the_choices():
    with pytest.raises(InputError, match=r"amp='fp32' is not a choice. Fix: choose one of \['none', 'bf16', 'fp16'\]"):
        train_config("smoke", amp="fp32")
    with pytest.raises(InputError, match=r"optimizer='adam' is not a choice. Fix: choose one of \['sgd', 'adamw'\]"):
        train_config("smoke", optimizer="adam")
    assert train_config("smoke", device="cuda:1").device == "cuda:1"
    with pytest.raises(InputError, match="device='gpu' is not a choice"):
        train_config("smoke", device="gpu")


def test_a_detector_option_of_the_wrong_type_or_choice_is_refused():
    bad = [({"cls_loss": "bce"}, r"cls_loss='bce' is not a choice. Fix: choose one of \['ce', 'focal'\]"),
           ({"fpn_channels": "64"}, "fpn_channels='64' is not of type int"),
           ({"backbone": "vgg16"}, "backbone='vgg16' is not a choice"),
           ({"anchor_sizes": [8, 16]}, "has 2 sizes; the FPN has 5 levels"),
           ({"nms_thresh": 1.5}, "nms_thresh=1.5 must be <= 1")]
    for options, expected in bad:
        with pytest.raises(InputError, match=expected):
            detector_options(train_config("smoke", detector_options=options))


def test_a_method_option_of_the_wrong_type_is_refused():
    with pytest.raises(InputError, match="method 'pseudo_label' option score_thresh='0.7' is not of type float"):
        get_method("pseudo_label")(options={"score_thresh": "0.7"})


def test_a_detector_option_override_keeps_the_presets_other_options():
    config = train_config("mini", detector_options={"cls_loss": "ce"})
    assert config.detector_options == {**PRESETS["mini"]["detector_options"], "cls_loss": "ce"}
    assert train_config("mini").detector_options["cls_loss"] == "focal"  # the preset itself is untouched


def test_dotted_set_keys_set_one_option_of_a_dict():
    overrides = parse_overrides(["detector_options.fpn_channels=16", "method_options.score_thresh=0.6",
                                 "detector_options.cls_loss=focal"])
    assert overrides == {"detector_options": {"fpn_channels": 16, "cls_loss": "focal"},
                         "method_options": {"score_thresh": 0.6}}
    config = train_config("smoke", **overrides)
    assert detector_options(config).fpn_channels == 16 and detector_options(config).backbone == "tiny"
    with pytest.raises(InputError, match="only .*detector_options.* take dotted keys"):
        parse_overrides(["lr.x=1"])


def test_a_flat_detector_knob_says_where_it_went():
    with pytest.raises(InputError, match="a detector's knobs are keys of detector_options"):
        train_config("smoke", fpn_channels=16)


def test_lists_from_yaml_become_tuples():
    config = train_config("smoke", lr_steps=[5, 7], train_scales=[64, 80])
    assert config.lr_steps == (5, 7) and config.train_scales == (64, 80)
    assert dataclasses.replace(config, snapshots=[3]).snapshots == (3,)
