"""The detector interface the engine and evaluation rely on, and the outputs every family shares.

A detector family (``faster_rcnn.py``, ``deformable_detr.py``, ``dino.py``) is an ``nn.Module`` that implements
:class:`Detector`; :func:`ssodlib.models.build.build_detector` builds one from a run's configuration.
The trainer and evaluation call nothing else; methods reach further into their family's stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from torch import Tensor
from torchvision.models.detection.image_list import ImageList


@dataclass
class ImageBatch:
    """``tensors`` ``(B, 3, H, W)`` normalised and zero-padded; ``image_sizes`` the unpadded ``(h, w)``."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]

    def image_list(self) -> ImageList:
        return ImageList(self.tensors, self.image_sizes)


@dataclass
class Detections:
    """Post-NMS detections of one image: ``boxes`` ``(K, 4)``, ``scores`` ``(K,)``, ``labels`` ``(K,)``
    in ``0..C-1``, ``class_probs`` ``(K, C + 1)`` the softmax of the RoI each came from.

    With candidates: ``candidate_boxes`` ``(Q, 4)`` / ``candidate_scores`` / ``candidate_labels`` are
    every pre-NMS box above the score threshold, and ``cluster[q]`` is the index of the kept detection
    that suppressed (or is) candidate ``q``, -1 when that detection was cut by ``detections_per_img``.

    ``quality`` ``(K,)``: the localisation quality ``v`` in ``[0, 1]`` of each detection, from a box head
    that estimates one (Faster R-CNN's ``box_head='side_classification'``); ``None`` otherwise.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_probs: Tensor
    candidate_boxes: Tensor | None = None
    candidate_scores: Tensor | None = None
    candidate_labels: Tensor | None = None
    cluster: Tensor | None = None
    quality: Tensor | None = None
    extra: dict = field(default_factory=dict)


def normalise_and_pad(images: Sequence[Tensor], *, mean: Tensor, std: Tensor, size_divisible: int) -> ImageBatch:
    """``(3, h, w)`` uint8 (or 0-255 float) images normalised by ``(3, 1, 1)`` ``mean`` / ``std`` and
    zero-padded at the bottom and right to one ``(B, 3, H, W)`` batch, ``H`` and ``W`` multiples of
    ``size_divisible`` (no resizing: the views did that), on ``mean``'s device."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = -(-max(s[0] for s in sizes) // size_divisible) * size_divisible
    w = -(-max(s[1] for s in sizes) // size_divisible) * size_divisible
    batch = mean.new_zeros((len(images), 3, h, w))
    for i, im in enumerate(images):
        im = im.to(mean.device, non_blocking=True).float()
        batch[i, :, : im.shape[-2], : im.shape[-1]] = (im - mean) / std
    return ImageBatch(batch, sizes)


def build_with_trunk(cls: type, options: Any, num_classes: int, *, trunk_weights: str | None,
                     from_checkpoint: bool) -> Any:
    """``cls(options=, num_classes=, trunk_weights=, pretrained=)`` as ``build_detector`` asks: the tiny
    trunk's pretrained weights are a file of ours (``trunk_weights``); from a checkpoint nothing
    pretrained is read."""
    pretrained = options.pretrained
    if options.backbone == "tiny":
        pretrained = trunk_weights is not None
    if from_checkpoint:
        pretrained, trunk_weights = False, None
    return cls(options=options, num_classes=num_classes, trunk_weights=trunk_weights if pretrained else None,
               pretrained=pretrained)


@runtime_checkable
class Detector(Protocol):
    """What the engine (training steps, checkpoints) and evaluation call on a detector of any family."""

    @property
    def num_classes(self) -> int: ...

    def preprocess(self, images: Sequence[Tensor]) -> ImageBatch:
        """Normalise and pad ``(3, h, w)`` images into one batch (no resizing: the views did that)."""
        ...

    def predict(self, images: Sequence[Tensor], *, with_candidates: bool = False) -> list[Detections]:
        """Post-processed detections of each image, in its pixels (no gradient)."""
        ...

    def supervised_losses(self, images: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                          gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """The family's supervised ``loss_*`` terms on labeled images (``(K, 4)`` boxes, ``(K,)`` labels)."""
        ...
