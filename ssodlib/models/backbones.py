"""Backbones with FPN: ResNet-50 / ResNet-18 from torchvision and a tiny CNN for smoke tests.

Paper scale follows the standard recipe: ImageNet weights through torchvision's weights API,
frozen BatchNorm, stem and first stage frozen. The tiny backbone (mini and smoke scale: no weights can
be downloaded everywhere) uses GroupNorm, which works at a few images per batch; at mini scale its trunk
starts from the benchmark's own pretrained weights (ssodlib.models.pretrain), at smoke from scratch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ssodlib.io import InputError

FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P6 ('0', '1', '2', '3', 'pool')


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(min(32, channels // 4), channels)


def resnet_fpn(name: str, *, pretrained: bool, fpn_channels: int, trainable_layers: int) -> nn.Module:
    """ResNet + FPN. ``pretrained`` loads torchvision's ImageNet weights (cached by torch.hub)."""
    factories = {"resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1), "resnet18": (resnet18, ResNet18_Weights.IMAGENET1K_V1)}
    factory, weights = factories[name]
    norm = FrozenBatchNorm2d if pretrained else _group_norm
    body = factory(weights=weights if pretrained else None, norm_layer=norm)
    backbone = _resnet_fpn_extractor(body, trainable_layers if pretrained else 5, extra_blocks=LastLevelMaxPool())
    if fpn_channels != backbone.out_channels:
        in_channels = [64, 128, 256, 512] if name == "resnet18" else [256, 512, 1024, 2048]
        backbone.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = fpn_channels
    return backbone


class TinyBackbone(nn.Module):
    """Four stride-2 stages of two 3x3 convolutions (GroupNorm) + FPN: seconds-scale tests."""

    def __init__(self, *, widths: tuple[int, ...] = (16, 32, 64, 128), fpn_channels: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1, bias=False), _group_norm(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _group_norm(cout), nn.ReLU(inplace=True))

        self.widths = widths
        self.stem = block(3, widths[0])  # stride 2
        chans = (widths[0],) + widths
        self.stages = nn.ModuleList(block(chans[i], chans[i + 1]) for i in range(4))  # strides 4..32
        self.fpn = FeaturePyramidNetwork(list(widths), fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def freeze_trunk(self, trainable_layers: int) -> None:
        """Keep the last ``trainable_layers`` of (stem, stage 1..4) trainable, as torchvision does
        for ResNets (3: stem and first stage frozen); the FPN always trains."""
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
        for block in [self.stem, *self.stages][:5 - trainable_layers]:
            block.requires_grad_(False)

    def trunk(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """The four stage outputs (strides 4..32) before the FPN."""
        x = self.stem(x)
        feats = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(i)] = x
        return feats

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.trunk(x))


# trainable layers of (stem, stage 1..4) with pretrained weights: torchvision's default for ImageNet
# ResNets; the tiny trunk trains whole, since freezing its stem and first stage lowered supervised AP at
# mini scale, 5 % (fold 1, iteration 4000 of 4000 with the LR step at 3600: 16.6 against 20.0)
STANDARD_TRAINABLE_LAYERS = {"resnet50": 3, "resnet18": 3, "tiny": 5}


def resolve_trainable_layers(backbone: str, trainable_layers: int | None) -> int:
    """``trainable_layers``, or the backbone's standard (:data:`STANDARD_TRAINABLE_LAYERS`) for ``None``."""
    return STANDARD_TRAINABLE_LAYERS.get(backbone, 3) if trainable_layers is None else trainable_layers


BACKBONES = ("resnet50", "resnet18", "tiny")


def build_backbone(name: str, *, pretrained: bool = False, fpn_channels: int = 256, trainable_layers: int | None = None,
                   weights: str | os.PathLike | None = None) -> nn.Module:
    """``resnet50`` / ``resnet18`` / ``tiny``; the module maps images to FPN levels '0'..'3', 'pool'.

    ``weights``: a state-dict file loaded into the backbone after it is built; keys it lacks must
    belong to the FPN. The tiny backbone's pretrained weights are such a file (made by
    :func:`ssodlib.models.pretrain.ensure_pretrained_backbone`), so ``pretrained`` needs ``weights``.
    ``trainable_layers`` (pretrained only): how many of (stem, stage 1..4) train, counted from the top;
    ``None`` takes :data:`STANDARD_TRAINABLE_LAYERS`.
    """
    trainable_layers = resolve_trainable_layers(name, trainable_layers)
    if name == "tiny":
        if pretrained and weights is None:
            raise ValueError("the tiny backbone's pretrained weights are a file: pass weights= (made by "
                             "ssodlib.models.pretrain.ensure_pretrained_backbone) or pretrained=False")
        backbone: nn.Module = TinyBackbone(fpn_channels=fpn_channels)
    elif name in BACKBONES:
        backbone = resnet_fpn(name, pretrained=pretrained, fpn_channels=fpn_channels, trainable_layers=trainable_layers)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose resnet50, resnet18 or tiny")
    if weights is not None:
        load_backbone_weights(backbone, weights)
    if name == "tiny" and pretrained:
        backbone.freeze_trunk(trainable_layers)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a state-dict file into ``backbone``; every key must match except missing FPN keys."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: backbone weights not found. Fix: pass an existing state-dict file, or delete "
                         "the pretrained/ folder of the embedded benchmark so that it is rebuilt.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise InputError(f"{path}: not a readable state-dict ({exc}). Fix: delete it so that it is rebuilt.") from exc
    fix = "Fix: use weights made for this backbone."
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ
        raise InputError(f"{path}: does not fit the backbone ({exc}). {fix}") from exc
    stray = unexpected + [k for k in missing if not k.startswith("fpn.")]
    if stray:
        raise InputError(f"{path}: does not fit the backbone (keys {stray[:3]}...). {fix}")


__all__ = ["FPN_STRIDES", "STANDARD_TRAINABLE_LAYERS", "TinyBackbone", "build_backbone", "load_backbone_weights",
           "resolve_trainable_layers"]
