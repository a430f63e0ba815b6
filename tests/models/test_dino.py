"""DINO at smoke scale: the shapes of each stage, losses with gradients everywhere, look-forward-twice,
detections in image pixels, a tiny overfit, options checked through ``build_detector``, the optimiser's
parameter groups and the presets."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from detr_setup import C, object_image, overfit_losses, smoke_config, smoke_model, two_images
from ssodlib.config import train_config
from ssodlib.engine.trainer import build_optimizer
from ssodlib.io import InputError
from ssodlib.models.build import build_detector, detector_signature
from ssodlib.models.detectors.base import Detector, Detections
from ssodlib.models.detectors.dino import DINO, DINO_PRESETS
from ssodlib.models.detr_presets import detr_train_overrides, main as presets_main


def _stages(model):
    images, boxes, labels = two_images()
    batch = model.preprocess(images)
    feats = model.features(batch)
    memory = model.encode(feats)
    return batch, feats, memory


def test_dino_implements_the_detector_protocol():
    model = smoke_model("dino")
    assert isinstance(model, DINO) and isinstance(model, Detector) and model.num_classes == C


def test_features_are_three_levels_at_strides_8_16_32_with_masks_and_encodings():
    model = smoke_model("dino")
    batch, feats, _ = _stages(model)
    assert batch.tensors.shape == (2, 3, 96, 128)  # max 96 x 112 padded to multiples of 32
    assert [tuple(s.shape) for s in feats.srcs] == [(2, 32, 12, 16), (2, 32, 6, 8), (2, 32, 3, 4)]
    assert [tuple(m.shape) for m in feats.masks] == [(2, 12, 16), (2, 6, 8), (2, 3, 4)]
    assert all(p.shape == s.shape for p, s in zip(feats.pos, feats.srcs))
    # image 1 (80 x 96) covers 10 of 12 rows and 12 of 16 columns of the stride-8 level
    assert (~feats.masks[0][1]).sum(0).max() == 10 and (~feats.masks[0][1]).sum(1).max() == 12
    assert not feats.masks[0][0, :12, :14].any()  # image 0: 96 x 112 -> 12 x 14 valid


def test_four_levels_add_a_stride_64_convolution():
    model = smoke_model("dino", num_feature_levels=4)
    _, feats, memory = _stages(model)
    assert [tuple(s.shape[-2:]) for s in feats.srcs] == [(12, 16), (6, 8), (3, 4), (2, 2)]
    assert memory.spatial_shapes.tolist() == [[12, 16], [6, 8], [3, 4], [2, 2]]


def test_encoder_memory_shapes_and_valid_ratios():
    model = smoke_model("dino")
    _, _, memory = _stages(model)
    s = 12 * 16 + 6 * 8 + 3 * 4
    assert memory.memory.shape == (2, s, 32) and memory.pos.shape == (2, s, 32) and memory.mask.shape == (2, s)
    assert memory.level_start.tolist() == [0, 192, 240]
    assert memory.valid_ratios.shape == (2, 3, 2)
    assert memory.valid_ratios[1, 0].tolist() == pytest.approx([12 / 16, 10 / 12])  # (w, h) of image 1


def test_encoder_proposals_and_query_selection():
    model = smoke_model("dino")
    _, _, memory = _stages(model)
    enc = model.encoder_outputs(memory)
    assert enc.logits.shape == (2, 252, C) and enc.box_logits.shape == (2, 252, 4)
    assert not enc.valid[memory.mask].any()  # padding is never a proposal
    queries = model.select_queries(memory)
    assert queries.content.shape == (2, 20, 32) and queries.boxes.shape == (2, 20, 4)
    assert not queries.boxes.requires_grad and queries.enc_boxes.requires_grad  # detached references
    assert queries.enc_logits.shape == (2, 20, C)
    assert ((queries.boxes > 0) & (queries.boxes < 1)).all()  # valid proposals only


def test_decoder_gives_every_layer_and_splits_query_groups():
    model = smoke_model("dino")
    _, _, memory = _stages(model)
    queries = model.select_queries(memory)
    out = model.decode_queries(memory, queries)
    assert out.hidden.shape == (2, 2, 20, 32)  # (layers, B, N, D)
    assert out.logits.shape == (2, 2, 20, C) and out.boxes.shape == (2, 2, 20, 4)
    assert len(out.references) == 2 and torch.equal(out.references[0], queries.boxes)
    first, second = out.split([5, 15])
    assert first.logits.shape == (2, 2, 5, C) and second.boxes.shape == (2, 2, 15, 4)
    assert torch.equal(second.references[1], out.references[1][:, 5:])


def test_look_forward_twice_lets_the_next_layer_train_the_previous_box():
    model = smoke_model("dino")
    _, _, memory = _stages(model)
    out = model.decode_queries(memory, model.select_queries(memory))
    assert out.references[1].requires_grad  # the undetached refinement of layer 0
    plain = smoke_model("dino", look_forward_twice=False)
    _, _, memory = _stages(plain)
    assert not plain.decode_queries(memory, plain.select_queries(memory)).references[1].requires_grad


def test_supervised_losses_are_finite_and_reach_every_parameter():
    model = smoke_model("dino").train()
    losses = model.supervised_losses(*two_images())
    names = {f"loss_{k}{s}" for k in ("cls", "bbox", "giou") for s in ("", "_d0", "_enc", "_dn", "_dn_d0")}
    assert set(losses) == names
    assert all(v.dim() == 0 and math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_a_batch_without_targets_keeps_the_same_losses_and_graph():
    model = smoke_model("dino").train()
    images, _, _ = two_images()
    empty = [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2
    losses = model.supervised_losses(images, *empty)
    assert len(losses) == 15 and float(losses["loss_bbox"].detach()) == 0.0
    sum(losses.values()).backward()
    assert model.label_enc.weight.grad is not None


def test_predict_gives_detections_in_image_pixels():
    model = smoke_model("dino").eval()
    images, _, _ = two_images()
    dets = model.predict(images, with_candidates=True)
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    for d, (h, w) in zip(dets, [(96, 112), (80, 96)]):
        assert d.boxes.shape == (20, 4) and d.class_probs.shape == (20, C + 1)
        assert (d.boxes[:, 0::2] <= w).all() and (d.boxes[:, 1::2] <= h).all() and (d.boxes >= 0).all()
        assert (d.scores[:-1] >= d.scores[1:]).all()  # top-k order
        assert d.labels.max() < C and d.extra["queries"].max() < 20
        assert d.cluster.tolist() == list(range(20))  # no NMS: every candidate is its own detection


def test_postprocess_golden_top_k_and_pixels():
    # logits (Q=2, C=3) with the maximum at flattened index 4 -> query 1, label 1; its box (0.5, 0.5, 0.2, 0.4)
    # on an image of (h=50, w=100) -> x 40..60, y 15..35
    model = smoke_model("dino")
    logits = torch.tensor([[[0.0, -1.0, -2.0], [-3.0, 2.0, -4.0]]])
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.4]]])
    det = model.postprocess(logits, boxes, [(50, 100)])[0]
    assert det.labels[0] == 1 and det.extra["queries"][0] == 1
    assert det.boxes[0].tolist() == pytest.approx([40.0, 15.0, 60.0, 35.0])
    s = torch.sigmoid(torch.tensor(2.0))
    assert det.class_probs[0].tolist() == pytest.approx([1 - float(s), float(torch.sigmoid(torch.tensor(-3.0))),
                                                         float(s), float(torch.sigmoid(torch.tensor(-4.0)))])


def test_inference_nms_is_a_setting_the_method_may_change():
    model = smoke_model("dino").eval()
    images, _, _ = two_images()
    model.inference.nms_iou = 0.01  # almost everything overlaps something: NMS removes detections
    dets = model.predict(images, with_candidates=True)
    assert len(dets[0].boxes) < 20 and len(dets[0].candidate_boxes) == 20
    assert (dets[0].cluster < len(dets[0].boxes)).all()


def test_a_tiny_overfit_on_one_image_lowers_the_loss():
    totals = overfit_losses(smoke_model("dino", seed=1), steps=40)
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5, totals


def test_parameter_groups_carry_the_learning_rate_multipliers():
    model = smoke_model("dino", lr_backbone_mult=0.1, lr_sampling_offsets_mult=0.5)
    groups = {g["name"]: g for g in model.parameter_groups(1e-3)}
    assert [g["lr"] for g in groups.values()] == pytest.approx([1e-3, 1e-4, 5e-4])
    assert all(p is q for p, q in zip(groups["backbone"]["params"], model.backbone.parameters()))
    n_offsets = sum(1 for n, _ in model.named_parameters() if "sampling_offsets" in n)
    assert len(groups["sampling_offsets"]["params"]) == n_offsets
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_build_optimizer_uses_the_groups_and_adamw():
    config = smoke_config("dino")
    model = build_detector(config, C)
    opt = build_optimizer(config, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["base", "backbone", "sampling_offsets"]
    assert opt.param_groups[1]["lr"] == pytest.approx(config.lr * 0.1)


@pytest.mark.parametrize("options, message", [
    ({"no_such_option": 1}, r"no option\(s\) \['no_such_option'\]"),
    ({"num_queries": "many"}, "num_queries='many' is not of type int"),
    ({"dropout": 1.5}, "dropout=1.5 must be <= 0.99"),
    ({"backbone": "vgg"}, "backbone='vgg' is not a choice"),
    ({"d_model": 30, "num_heads": 4}, "not a multiple of num_heads"),
    ({"dn_label_noise": -0.1}, "dn_label_noise=-0.1 must be >= 0"),
    ({"nms_iou": 2.0}, "nms_iou=2.0 must be <= 1"),
])
def test_bad_options_are_input_errors_through_build_detector(options, message):
    config = train_config("smoke", detector="dino", detector_options=options)
    with pytest.raises(InputError, match=message):
        build_detector(config, C)


def test_presets_drop_the_faster_rcnn_options_and_sign_the_run():
    config = train_config("mini", method="supervised", **detr_train_overrides("dino", "mini"))
    assert config.detector == "dino" and config.detector_options == DINO_PRESETS["mini"]
    assert (config.optimizer, config.lr, config.grad_clip) == ("adamw", 1e-4, 0.1)
    signature = detector_signature(config)
    assert signature["num_feature_levels"] == 3 and signature["trainable_layers"] == 5
    faster = train_config("mini")  # Faster R-CNN keeps its preset's options
    assert faster.detector_options["representation_size"] == 256
    with pytest.raises(InputError, match="no DETR presets"):
        detr_train_overrides("faster_rcnn", "mini")


def test_the_presets_command_writes_a_config_file(capsys, tmp_path):
    presets_main(["dino", "mini"])
    written = yaml.safe_load(capsys.readouterr().out)
    scale = written.pop("scale")
    config = train_config(scale, **written)
    assert config.detector == "dino" and config.lr_steps == (4600,) and config.detector_options["d_model"] == 128


def test_mini_model_shapes_without_training():
    # the mini reduction builds (trunk from scratch here) and runs one 256 px image
    model = smoke_model("dino", **{**DINO_PRESETS["mini"], "pretrained": False}).eval()
    image, _, _ = object_image()
    dets = model.predict([torch.nn.functional.interpolate(image[None].float(), size=256)[0]])
    assert dets[0].boxes.shape == (100, 4)


def test_bf16_autocast_on_cpu_keeps_sampling_losses_and_boxes_in_float32():
    model = smoke_model("dino").train()
    seen = []
    hook = lambda module, args, out: seen.append(out.dtype)  # noqa: E731
    model.decoder.layers[0].cross_attn.output_proj.register_forward_hook(hook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.supervised_losses(*two_images())
    assert seen and seen[0] == torch.bfloat16  # the projections run in bf16
    assert all(v.dtype == torch.float32 and math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dets = model.predict(two_images()[0])
    assert dets[0].boxes.dtype == torch.float32 and dets[0].scores.dtype == torch.float32


@pytest.mark.gpu
def test_bf16_autocast_on_cuda_trains_and_predicts():
    model = smoke_model("dino").cuda().train()
    images, boxes, labels = two_images()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model.supervised_losses(images, [b.cuda() for b in boxes], [lab.cuda() for lab in labels])
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        dets = model.predict(images)
    assert dets[0].boxes.dtype == torch.float32 and dets[0].boxes.device.type == "cuda"
