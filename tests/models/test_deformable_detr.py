"""Deformable DETR at smoke scale, plain and with its box-refinement and two-stage options: the shapes of
each stage, losses with gradients everywhere, detections in image pixels, a tiny overfit and options
checked through ``build_detector``."""

from __future__ import annotations

import math

import pytest
import torch

from detr_setup import C, overfit_losses, smoke_config, smoke_model, two_images
from ssodlib.config import train_config
from ssodlib.io import InputError
from ssodlib.models.build import build_detector
from ssodlib.models.detectors.base import Detector, Detections
from ssodlib.models.detectors.deformable_detr import DEFORMABLE_DETR_PRESETS, DeformableDETR, DeformableDETROptions
from ssodlib.models.detr_presets import detr_train_overrides

VARIANTS = [{}, {"with_box_refine": True}, {"two_stage": True}, {"two_stage": True, "with_box_refine": True}]


def _memory(model):
    images, _, _ = two_images()
    return model.encode(model.features(model.preprocess(images)))


def test_the_default_is_plain_deformable_detr_as_mmdetection_configures_it():
    o = DeformableDETROptions()
    assert (o.num_queries, o.with_box_refine, o.two_stage, o.num_feature_levels) == (300, False, False, 4)
    assert (o.ffn_dim, o.dropout, o.pe_temperature, o.pe_offset, o.cls_loss_weight) == (1024, 0.1, 10000.0, -0.5, 2.0)
    assert (o.lr_backbone_mult, o.lr_sampling_offsets_mult, o.detections_per_img) == (0.1, 0.1, 100)


def test_plain_queries_are_learnt_with_point_references():
    model = smoke_model("deformable_detr")
    assert isinstance(model, DeformableDETR) and isinstance(model, Detector)
    queries = model.select_queries(_memory(model))
    assert queries.content.shape == (2, 20, 32) and queries.query_pos.shape == (2, 20, 32)
    assert queries.boxes.shape == (2, 20, 2) and queries.enc_logits is None
    assert len(model.class_heads) == 1 and len(model.box_heads) == 1  # one head shared by every layer


def test_plain_decoder_outputs_boxes_around_fixed_point_references():
    model = smoke_model("deformable_detr")
    memory = _memory(model)
    queries = model.select_queries(memory)
    out = model.decode_queries(memory, queries)
    assert out.logits.shape == (2, 2, 20, C) and out.boxes.shape == (2, 2, 20, 4)
    assert all(torch.equal(r, queries.boxes) for r in out.references)  # no refinement: the same reference
    # the initial box head adds nothing to the centre and -2 to the size logits: (ref, sigmoid(-2))
    torch.testing.assert_close(out.boxes[0, ..., :2], queries.boxes)
    torch.testing.assert_close(out.boxes[0, ..., 2:], torch.full((2, 20, 2), float(torch.sigmoid(torch.tensor(-2.0)))))


def test_box_refinement_has_a_head_per_layer_and_detached_references():
    model = smoke_model("deformable_detr", with_box_refine=True)
    assert len(model.class_heads) == 2 and len(model.box_heads) == 2
    memory = _memory(model)
    out = model.decode_queries(memory, model.select_queries(memory))
    assert out.references[0].shape[-1] == 2 and out.references[1].shape[-1] == 4  # refined into a box
    assert not out.references[1].requires_grad  # Deformable DETR detaches (no look-forward-twice)


def test_two_stage_queries_come_from_the_encoder_proposals():
    model = smoke_model("deformable_detr", two_stage=True)
    memory = _memory(model)
    queries = model.select_queries(memory)
    assert queries.boxes.shape == (2, 20, 4) and not queries.boxes.requires_grad
    assert queries.enc_logits.shape == (2, 252, C)  # the encoder loss covers every position
    assert queries.query_pos.shape == (2, 20, 32)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(v) or "plain")
def test_supervised_losses_are_finite_and_reach_every_parameter(variant):
    model = smoke_model("deformable_detr", **variant).train()
    losses = model.supervised_losses(*two_images())
    expected = {f"loss_{k}{s}" for k in ("cls", "bbox", "giou") for s in ("", "_d0")}
    if variant.get("two_stage"):
        expected |= {f"loss_{k}_enc" for k in ("cls", "bbox", "giou")}
    assert set(losses) == expected
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(v) or "plain")
def test_predict_gives_detections_in_image_pixels(variant):
    model = smoke_model("deformable_detr", **variant).eval()
    images, _, _ = two_images()
    dets = model.predict(images)
    for d, (h, w) in zip(dets, [(96, 112), (80, 96)]):
        assert isinstance(d, Detections) and d.boxes.shape == (20, 4) and d.class_probs.shape == (20, C + 1)
        assert (d.boxes >= 0).all() and (d.boxes[:, 0::2] <= w).all() and (d.boxes[:, 1::2] <= h).all()


def test_a_tiny_overfit_on_one_image_lowers_the_loss():
    totals = overfit_losses(smoke_model("deformable_detr", seed=1), steps=40)
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5, totals


def test_sampling_offsets_and_reference_points_learn_at_a_tenth():
    model = smoke_model("deformable_detr")
    groups = {g["name"]: g for g in model.parameter_groups(2e-4)}
    names = {id(p): n for n, p in model.named_parameters()}
    slow = [names[id(p)] for p in groups["sampling_offsets"]["params"]]
    assert "reference_points.weight" in slow and any("sampling_offsets" in n for n in slow)
    assert groups["sampling_offsets"]["lr"] == pytest.approx(2e-5) and groups["backbone"]["lr"] == pytest.approx(2e-5)


@pytest.mark.parametrize("options, message", [
    ({"no_such_option": 1}, r"no option\(s\) \['no_such_option'\]"),
    ({"two_stage": "yes"}, "two_stage='yes' is not of type bool"),
    ({"num_feature_levels": 0}, "num_feature_levels=0 must be >= 1"),
    ({"trainable_layers": 7}, "trainable_layers=7 must be <= 5"),
    ({"dn_number": 10}, r"no option\(s\) \['dn_number'\]"),  # DINO's option, not Deformable DETR's
])
def test_bad_options_are_input_errors_through_build_detector(options, message):
    with pytest.raises(InputError, match=message):
        build_detector(train_config("smoke", detector="deformable_detr", detector_options=options), C)


def test_mini_preset():
    config = train_config("mini", method="supervised", **detr_train_overrides("deformable_detr", "mini"))
    assert config.detector_options == DEFORMABLE_DETR_PRESETS["mini"] and config.lr == 2e-4
    assert smoke_config("deformable_detr").optimizer == "adamw"
