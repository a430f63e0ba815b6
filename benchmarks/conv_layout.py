"""The mini detector's training step with its convolutions in channels-last memory layout against the
default (contiguous NCHW) layout, on CPU: oneDNN reorders NCHW tensors into its blocked layouts on every
call, which channels-last could spare.

    python benchmarks/conv_layout.py                 # 1 thread, 4 images of 256 px, 5 interleaved rounds
    python benchmarks/conv_layout.py --threads 2 --rounds 9

Setting: the mini preset's Faster R-CNN (tiny trunk, FPN 64, untrained weights: a step's cost does not
depend on them), 4 random images with 6 random boxes each, ``supervised_losses`` forward and backward,
SGD step excluded. The two layouts alternate within each round so that a loaded machine slows both alike;
the printed figure is the median seconds per step of each and their ratio (NCHW / channels-last).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssodlib.config import train_config
from ssodlib.models.build import build_detector


def _batch(n: int, size: int, g: torch.Generator):
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    xy = torch.rand(n, 6, 2, generator=g) * (size - 40)
    wh = 8 + torch.rand(n, 6, 2, generator=g) * 32
    boxes = [torch.cat([xy[i], xy[i] + wh[i]], dim=1) for i in range(n)]
    labels = [torch.randint(0, 10, (6,), generator=g) for _ in range(n)]
    return images, boxes, labels


def _time(detector, batch, *, layout: torch.memory_format, steps: int) -> float:
    detector.to(memory_format=layout)
    images = [im.contiguous(memory_format=torch.contiguous_format) for im in batch[0]]
    start = time.perf_counter()
    for _ in range(steps):
        losses = detector.supervised_losses(images, batch[1], batch[2])
        sum(losses.values()).backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per layout and round")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    detector = build_detector(train_config("mini", detector_options=dict(pretrained=False)), 10).train()
    batch = _batch(4, args.size, torch.Generator().manual_seed(0))
    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for name, layout in layouts.items():  # warm-up: oneDNN's primitive caches
        _time(detector, batch, layout=layout, steps=2)
    for _ in range(args.rounds):
        for name, layout in layouts.items():
            times[name].append(_time(detector, batch, layout=layout, steps=args.steps))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:<14} {m:.4f} s/step  (rounds: {', '.join(f'{t:.3f}' for t in times[name])})")
    print(f"nchw / channels_last: {medians['nchw'] / medians['channels_last']:.3f}x")


if __name__ == "__main__":
    main()
