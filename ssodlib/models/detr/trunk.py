"""Backbone levels for the detection transformers (Deformable DETR, arXiv 2010.04159 §4.1; DINO,
arXiv 2203.03605 §4): the trunk's C3-C5 (strides 8, 16, 32) without an FPN, each projected to the model
width by a 1x1 convolution and GroupNorm, plus extra levels made by 3x3 stride-2 convolutions (the
first on C5), as the authors' ``input_proj``.

The trunks are those of :mod:`ssodlib.models.backbones`, built by its ``build_backbone`` (so the
trainable-layer rule and the tiny trunk's pretrained file are the same as Faster R-CNN's) with the FPN
dropped: ResNet-50 / ResNet-18 (``layer2..layer4``) and the tiny backbone (stages '1'..'3', widths
32 / 64 / 128). With ``num_levels < 3`` the last trunk levels are kept.

From the authors' code: the projection layout and Xavier-uniform initialisation of its convolutions.
Ours: GroupNorm with ``gcd(32, d_model)`` groups, so narrow mini-scale models work.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ssodlib.models.backbones import build_backbone

TRUNK_CHANNELS = {"resnet50": (512, 1024, 2048), "resnet18": (128, 256, 512), "tiny": (32, 64, 128)}


class Trunk(nn.Module):
    """A classification trunk's C3-C5 maps: ``forward(x (B, 3, H, W)) -> [(B, C_l, H/s, W/s)]`` for
    strides ``s`` 8, 16, 32."""

    def __init__(self, *, name: str, pretrained: bool, trainable_layers: int | None, weights: str | None) -> None:
        super().__init__()
        net = build_backbone(name, pretrained=pretrained, fpn_channels=256 if name != "tiny" else 32,
                             trainable_layers=trainable_layers, weights=weights)
        self.tiny = name == "tiny"
        if self.tiny:
            del net.fpn
            self.body = net
        else:
            self.body = net.body  # IntermediateLayerGetter over layer1..layer4 -> '0'..'3'
        self.channels = TRUNK_CHANNELS[name]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body.trunk(x) if self.tiny else self.body(x)
        return [feats["1"], feats["2"], feats["3"]]


def _norm(d_model: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, d_model), d_model)


def input_projection(channels: tuple[int, ...], *, d_model: int, num_levels: int) -> nn.ModuleList:
    """One projection per level: 1x1 conv + GN on the last ``min(num_levels, 3)`` trunk maps, then
    3x3 stride-2 conv + GN levels (the first on C5, the next on the level before)."""
    used = channels[max(0, len(channels) - num_levels):]
    projs = [nn.Sequential(nn.Conv2d(c, d_model, 1), _norm(d_model)) for c in used]
    cin = channels[-1]
    for _ in range(num_levels - len(used)):
        projs.append(nn.Sequential(nn.Conv2d(cin, d_model, 3, stride=2, padding=1), _norm(d_model)))
        cin = d_model
    for proj in projs:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.zeros_(proj[0].bias)
    return nn.ModuleList(projs)


def project_levels(maps: list[Tensor], projs: nn.ModuleList) -> list[Tensor]:
    """``(B, d_model, H_l, W_l)`` levels from the trunk ``maps`` (C3-C5) through :func:`input_projection`."""
    n_trunk = min(len(projs), len(maps))
    used = maps[len(maps) - n_trunk:]
    out = [proj(m) for proj, m in zip(projs, used)]
    x = maps[-1]
    for proj in list(projs)[n_trunk:]:
        x = proj(x)
        out.append(x)
    return out


__all__ = ["TRUNK_CHANNELS", "Trunk", "input_projection", "project_levels"]
