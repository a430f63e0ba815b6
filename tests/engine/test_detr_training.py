"""The supervised method trains each DETR family end to end through the trainer at smoke scale: finite
losses, the families' optimiser parameter groups, an evaluation, a checkpoint that resumes, and the
pretrained tiny trunk arriving through ``build_detector``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssodlib.config import train_config
from ssodlib.engine.trainer import Trainer
from ssodlib.models.backbones import TinyBackbone
from ssodlib.models.build import build_detector, pretrained_trunk
from ssodlib.models.detr_presets import detr_train_overrides

FAMILIES = ["dino", "deformable_detr"]


def _config(family: str, smoke_benchmark, **overrides):
    return train_config("smoke", method="supervised", data_root=str(smoke_benchmark.root.parent), iterations=4,
                        eval_every=4, checkpoint_every=2, log_every=2, **{**detr_train_overrides(family, "smoke"),
                                                                          **overrides})


@pytest.mark.parametrize("family", FAMILIES)
def test_supervised_smoke_training_with_an_evaluation(family, smoke_benchmark, tmp_path, one_thread):
    trainer = Trainer(_config(family, smoke_benchmark), out_dir=tmp_path, progress=False)
    final = trainer.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4]
    assert all(math.isfinite(r["loss"]) and "loss_giou_d0" in r for r in train)
    assert 0.0 <= final["student"]["ap"] <= 1.0
    assert [g["name"] for g in trainer.state.optimizer.param_groups][:2] == ["base", "backbone"]
    assert isinstance(trainer.state.optimizer, torch.optim.AdamW)
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "final.json").is_file()


def test_a_resumed_dino_run_continues_from_its_checkpoint(smoke_benchmark, tmp_path, one_thread):
    config = _config("dino", smoke_benchmark)
    Trainer(config, out_dir=tmp_path, progress=False).run(stop_at=2)
    trainer = Trainer(config, out_dir=tmp_path, resume=True, progress=False)
    trainer.run()
    assert trainer.state.iteration == 4


def test_the_pretrained_tiny_trunk_arrives_through_build_detector(smoke_benchmark, tmp_path, monkeypatch, one_thread):
    overrides = detr_train_overrides("dino", "smoke")
    overrides["detector_options"]["pretrained"] = True
    config = train_config("smoke", data_root=str(smoke_benchmark.root.parent), **overrides)
    trunk = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in TinyBackbone().state_dict().items() if not k.startswith("fpn.")}
    torch.save(trunk, tmp_path / "trunk.pt")
    asked = []
    monkeypatch.setattr("ssodlib.models.build.ensure_pretrained_backbone",
                        lambda scale, **kw: asked.append(scale) or tmp_path / "trunk.pt")
    weights = pretrained_trunk(config)  # the trainer's call: the family asks for the tiny trunk's file
    assert asked == ["smoke"] and weights == str(tmp_path / "trunk.pt")
    model = build_detector(config, 3, trunk_weights=weights)
    assert torch.equal(model.backbone.body.stem[0].weight, trunk["stem.0.weight"])
    assert torch.equal(model.backbone.body.stages[3][3].weight, trunk["stages.3.3.weight"])
    scratch = build_detector(config, 3, trunk_weights=weights, from_checkpoint=True)  # weights come later
    assert not torch.equal(scratch.backbone.body.stem[0].weight, trunk["stem.0.weight"])
