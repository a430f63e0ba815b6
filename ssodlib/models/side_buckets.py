"""Localization as classification: the side buckets of "Rethinking Pseudo Labels for Semi-Supervised
Object Detection" (Li, Wu, Shrivastava and Davis, AAAI 2022, https://arxiv.org/abs/2106.00168), Sec. 2.2.

Each side of a candidate box (RoI) is localised on its own: a line segment perpendicular to the side
is split into ``K`` equal intervals ("bins"), a ``K``-way classifier says which bin holds the target
side, and a regressed offset moves the side from that bin's centre to the target line. The mean over
the four sides of the top bin's probability is the box's localisation quality ``v``, which the paper
multiplies with the classification confidence ``p`` to filter pseudo labels (Sec. 2.3).

Equation -> function map:

* Segments and bins of every side (the paper's "line segment ... split evenly into K intervals"):
  :func:`side_segments`.
* Targets of Eq. 3 (the bin ``y_{s,k}`` holding the ground-truth side) and of Eq. 5 (the offset
  from that bin's centre ``x_k`` to the ground-truth line ``x_g``): :func:`encode_sides`.
* Eq. 3 + Eq. 5 (bin classification plus smooth-L1 refinement on the true bin): :func:`side_losses`.
* Eq. 4 (quality ``v``) and the refined box: :func:`decode_sides` (``v`` alone: :func:`side_quality`).
* The detector head (class logits, ``4K`` bin logits, ``4K`` offsets): :class:`SideBucketPredictor`,
  used by :class:`ssodlib.models.detectors.faster_rcnn.FasterRCNN` when ``box_head='side_classification'``.

No official code exists. Facts from the closest public relative, SABL (Wang et al., ECCV 2020, the
paper's [40]; mmdetection's ``BucketingBBoxCoder`` and ``SABLHead``): offsets are measured in bucket
widths, the localisation confidence is the mean over the four sides of the top bucket's softmax
probability, and the localisation branch is class-agnostic.

Two printed formulas are not usable literally, and this module departs from both on purpose:

* Eq. 3, ``sum_k -y_{s,k} log sigmoid(t_{s,k})`` over the positive bin only, is degenerate: it is
  minimised by sending every logit to ``+inf`` (every bin "contains" the side, ``v -> 1`` for every
  box). :func:`side_losses` uses the softmax cross-entropy over the ``K`` bins of each side, which is
  the "K-way classification" the text describes and for which the positive-only sum is complete.
* Eq. 4 averages ``max_k t_{s,k}`` over *logits*; ``v`` must lie in ``[0, 1]`` because Eq. 6 multiplies
  it with a probability, so :func:`side_quality` averages the top softmax *probabilities*.

Choices of this implementation (the paper is silent):

* Geometry: the segment of a side is centred on the RoI's side, along the perpendicular axis, and is
  ``segment_scale`` times the RoI's extent along that axis long (the width for the left and right
  sides, the height for the top and bottom ones); ``segment_scale = 1`` by default, so the left side's
  segment is ``[x1 - w/2, x1 + w/2]`` with bins ``w/K`` wide. A positive RoI (IoU >= 0.5) has most
  target sides within half its extent (inward never further; outward up to a whole extent for a
  target twice as wide); a target side outside the segment is clamped to the end bin and the offset
  (not clamped) carries the rest, so every target is encoded exactly and decoding inverts encoding.
  Centring the segment on the side, rather than spanning the (rescaled) proposal as SABL's buckets
  do, gives each side all ``K`` bins around where its target is.
* Offsets: one regressed offset per bin (``4K`` outputs), in units of the bin width, measured from the
  bin's centre; only the true bin's offset is trained (Eq. 5's ``y_k``), decoding uses the top bin's.
* Losses are sums over boxes and sides; the detector divides them by the number of sampled RoIs, its
  box-loss convention. Smooth-L1 ``beta = 1/9`` as the detector's box regression (SABL: 0.1).
* Side order everywhere: left, top, right, bottom, i.e. the box coordinates ``x1, y1, x2, y2``.

Options (the detector's ``side_bin_loss`` and ``side_neighbor_rescoring``; defaults as above):

* ``bin_loss="sigmoid"``: one-hot binary cross-entropy over the ``K`` bins of each side, *with* the
  negative terms (SABL's ``CrossEntropyLoss(use_sigmoid=True)`` on buckets), summed over bins; ``v`` is
  then the mean of the top *sigmoid* probabilities, which neighbouring bins do not share, and the bin
  logits' bias starts at ``-log(K - 1)`` (prior ``1/K``) so that the first loss is not ``K log 2`` per
  side. Eq. 3's positive-only sigmoid stays unimplemented (degenerate, above).
* ``neighbor_rescoring=True``: a side's quality is its top bin's probability plus the second bin's when
  the two are adjacent (SABL's ``bucket2bbox``), capped at 1. With an even ``K`` a side that needs no
  move lies on the edge between the two middle bins, so a well-placed side's probability is split
  between two neighbours; this counts it whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIDES = ("left", "top", "right", "bottom")  # the order of dimension 1 of every (N, 4) / (N, 4, K) tensor
MIN_EXTENT = 1e-3  # px; a RoI narrower than this (the RPN drops them) would make bins of zero width


def side_segments(proposals: Tensor, *, num_bins: int, segment_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Where each side's bins lie: ``(N, 4)`` segment starts and ``(N, 4)`` bin widths, in pixels.

    Side ``s`` of box ``i`` has bin ``k`` (``0..K-1``) covering ``[start + k * width, start + (k + 1) * width)``
    on its axis (x for left / right, y for top / bottom); the segment is centred on the side and
    ``segment_scale`` times the box's extent on that axis long. Computed in float32.
    """
    boxes = proposals.float()
    extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=MIN_EXTENT).repeat(1, 2)  # (w, h, w, h)
    length = segment_scale * extent
    return boxes - length / 2, length / num_bins


def encode_sides(proposals: Tensor, gt_boxes: Tensor, *, num_bins: int,
                 segment_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Bin and offset targets of ``(N, 4)`` proposals for their ``(N, 4)`` matched target boxes.

    Returns ``(N, 4)`` int64 bins in ``0..K-1`` (the bin holding each target side, the end bin when the
    side is outside the segment; a side on the edge between two bins belongs to the one starting there)
    and ``(N, 4)`` float32 offsets ``(x_g - centre(bin)) / bin_width`` (in ``[-0.5, 0.5)`` inside the
    segment, larger after clamping), so that ``centre + offset * width`` is the target exactly.
    """
    start, width = side_segments(proposals, num_bins=num_bins, segment_scale=segment_scale)
    position = (gt_boxes.float() - start) / width  # in bins from the segment's start
    bins = position.floor().clamp(0, num_bins - 1).long()
    return bins, position - (bins + 0.5)


BIN_LOSSES = ("softmax", "sigmoid")


def _bin_probabilities(bin_logits: Tensor, bin_loss: str) -> Tensor:
    if bin_loss == "softmax":
        return F.softmax(bin_logits.float(), dim=-1)
    if bin_loss == "sigmoid":
        return torch.sigmoid(bin_logits.float())
    raise ValueError(f"unknown bin loss {bin_loss!r}; choose one of {BIN_LOSSES}")


def side_quality(bin_logits: Tensor, *, bin_loss: str = "softmax", neighbor_rescoring: bool = False) -> Tensor:
    """Eq. 4 on probabilities: ``v = 1/4 sum_s max_k prob(t_s)_k`` of ``(N, 4, K)`` logits, ``(N,)``.

    ``prob`` is the softmax over a side's bins (``bin_loss="softmax"``: ``v`` in ``[1/K, 1]``) or each
    bin's sigmoid (``"sigmoid"``: ``v`` in ``(0, 1)``). ``neighbor_rescoring`` adds the second bin's
    probability when it is adjacent to the top one (SABL), capped at 1."""
    probs = _bin_probabilities(bin_logits, bin_loss)
    if not neighbor_rescoring or probs.shape[-1] < 2:
        return probs.amax(dim=-1).mean(dim=-1)
    top, index = probs.topk(2, dim=-1)
    adjacent = (index[..., 0] - index[..., 1]).abs() == 1
    side = (top[..., 0] + top[..., 1] * adjacent.to(top)).clamp(max=1.0)
    return side.mean(dim=-1)


def decode_sides(proposals: Tensor, bin_logits: Tensor, offsets: Tensor, *, segment_scale: float = 1.0,
                 bin_loss: str = "softmax", neighbor_rescoring: bool = False) -> tuple[Tensor, Tensor]:
    """Refined boxes and their localisation quality from the side head's outputs.

    Args:
        proposals: ``(N, 4)`` RoIs the outputs were computed on.
        bin_logits: ``(N, 4, K)`` bin logits per side (the layout of :func:`side_segments`).
        offsets: ``(N, 4, K)`` regressed offset of every bin, in bin widths from the bin's centre.
    Returns:
        ``(N, 4)`` float32 boxes whose side ``s`` is the centre of its top bin ``k*`` plus
        ``offsets[:, s, k*]`` bin widths, and ``(N,)`` quality ``v`` (:func:`side_quality` with
        ``bin_loss`` and ``neighbor_rescoring``; the top bin is the same under either loss). Boxes are
        neither clipped nor ordered: callers clip, and drop degenerate ones as for the regression head.
    """
    logits = bin_logits.float()
    top = logits.argmax(dim=-1, keepdim=True)  # (N, 4, 1)
    start, width = side_segments(proposals, num_bins=logits.shape[-1], segment_scale=segment_scale)
    offset = offsets.float().gather(-1, top).squeeze(-1)
    boxes = start + (top.squeeze(-1) + 0.5 + offset) * width
    return boxes, side_quality(logits, bin_loss=bin_loss, neighbor_rescoring=neighbor_rescoring)


def side_losses(bin_logits: Tensor, offsets: Tensor, target_bins: Tensor, target_offsets: Tensor, *,
                beta: float = 1 / 9, weights: Tensor | None = None,
                bin_loss: str = "softmax") -> tuple[Tensor, Tensor]:
    """Eq. 3 (as a softmax cross-entropy, or with ``bin_loss="sigmoid"`` a one-hot binary cross-entropy
    summed over the ``K`` bins, see the module docstring) and Eq. 5's refinement, summed.

    Args:
        bin_logits: ``(N, 4, K)`` bin logits of ``N`` positive RoIs.
        offsets: ``(N, 4, K)`` regressed offsets (only the true bin's is read).
        target_bins: ``(N, 4)`` int64 true bins, ``target_offsets``: ``(N, 4)`` (:func:`encode_sides`).
        weights: optional ``(N,)`` per-RoI multipliers of both terms (e.g. Eq. 6's ``alpha_m``).
    Returns:
        ``(loss_bins, loss_offsets)``: the sums over RoIs and sides of ``-log softmax(t_s)[y_s]`` (or
        ``sum_k BCE(sigmoid(t_{s,k}), [k == y_s])``) and of ``SmoothL1_beta(o_{s, y_s} - target_s)``;
        the caller normalises (the detector: by the number of sampled RoIs).
    """
    n, sides, k = bin_logits.shape
    if bin_loss == "softmax":
        ce = F.cross_entropy(bin_logits.float().reshape(n * sides, k), target_bins.reshape(-1),
                             reduction="none").reshape(n, sides)
    elif bin_loss == "sigmoid":
        one_hot = F.one_hot(target_bins, k).float()
        ce = F.binary_cross_entropy_with_logits(bin_logits.float(), one_hot, reduction="none").sum(dim=-1)
    else:
        raise ValueError(f"unknown bin loss {bin_loss!r}; choose one of {BIN_LOSSES}")
    predicted = offsets.float().gather(-1, target_bins[..., None]).squeeze(-1)
    reg = F.smooth_l1_loss(predicted, target_offsets.float(), beta=beta, reduction="none")
    if weights is not None:
        w = weights.detach().float()[:, None]
        ce, reg = ce * w, reg * w
    return ce.sum(), reg.sum()


class SideBucketPredictor(nn.Module):
    """The RoI predictor of the side-classification head: ``C + 1`` class logits and a class-agnostic
    side output per RoI (as SABL: one box per RoI whatever the class; class-specific bins would need
    ``(C + 1) * 8K`` outputs).

    ``forward`` returns ``(R, C + 1)`` class logits and ``(R, 8K)`` side outputs: the ``4K`` bin logits,
    then the ``4K`` offsets, each side-major (``reshape(R, 2, 4, K)``: ``[:, 0]`` logits, ``[:, 1]``
    offsets, sides left, top, right, bottom). They travel in ``RoIOutput.box_deltas``, so everything
    that slices RoIs by row (``RoIOutput.select``, masks) works for either head.
    """

    def __init__(self, *, in_channels: int, num_classes: int, num_bins: int, bin_loss: str = "softmax") -> None:
        super().__init__()
        self.num_bins = num_bins
        # PyTorch's default Linear initialisation, as torchvision's FastRCNNPredictor that this replaces
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bin_logits = nn.Linear(in_channels, 4 * num_bins)
        self.bin_offsets = nn.Linear(in_channels, 4 * num_bins)
        if bin_loss == "sigmoid":  # prior 1/K per bin: the first BCE is ~2 nats per side, not K log 2
            nn.init.constant_(self.bin_logits.bias, -math.log(max(num_bins - 1, 1)))
        elif bin_loss != "softmax":
            raise ValueError(f"unknown bin loss {bin_loss!r}; choose one of {BIN_LOSSES}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), torch.cat([self.bin_logits(x), self.bin_offsets(x)], dim=1)


def split_side_outputs(side_outputs: Tensor, *, num_bins: int) -> tuple[Tensor, Tensor]:
    """``(R, 8K)`` outputs of :class:`SideBucketPredictor` -> ``(R, 4, K)`` bin logits and ``(R, 4, K)`` offsets."""
    logits, offsets = side_outputs.reshape(len(side_outputs), 2, 4, num_bins).unbind(1)
    return logits, offsets


__all__ = ["BIN_LOSSES", "MIN_EXTENT", "SIDES", "SideBucketPredictor", "decode_sides", "encode_sides", "side_losses",
           "side_quality", "side_segments", "split_side_outputs"]
