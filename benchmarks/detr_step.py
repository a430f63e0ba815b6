"""Supervised step time of the mini DETR families (DINO, Deformable DETR; arXiv 2203.03605, 2010.04159)
against the Faster R-CNN mini step.

    python benchmarks/detr_step.py                 # CPU, 2 threads, 2 images of 256 px, 5 steps after 2
    python benchmarks/detr_step.py --steps 3 --threads 1
    python benchmarks/detr_step.py --device cuda --amp bf16

Each detector is built by ``build_detector`` from ``train_config("mini", ...)`` (DETRs: with
``detr_train_overrides(family, "mini")``; the tiny trunk from scratch, as pretrained weights do not change
the step) and trained with its mini optimiser on the same ``labeled_per_batch`` images of ``--size``
pixels with 6 random boxes each, in its own process so peak memory is its own. Prints the median seconds
per step (forward, backward, clipping, optimiser step), peak memory and each DETR's ratio to Faster R-CNN.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

DETECTORS = ("faster_rcnn", "dino", "deformable_detr")


def _batch(n: int, size: int, classes: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]
    boxes, labels = [], []
    for _ in range(n):
        xy = torch.rand(6, 2, generator=g) * size * 0.7
        wh = 8 + torch.rand(6, 2, generator=g) * size * 0.3
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=size)], 1))
        labels.append(torch.randint(0, classes, (6,), generator=g))
    return images, boxes, labels


def _config(detector: str):
    from ssodlib.config import train_config
    from ssodlib.models.detr_presets import detr_train_overrides

    overrides = {} if detector == "faster_rcnn" else detr_train_overrides(detector, "mini")
    options = {**overrides.pop("detector_options", {}), "pretrained": False}
    return train_config("mini", method="supervised", detector_options=options, **overrides)


def measure(args: argparse.Namespace) -> dict:
    import torch

    from ssodlib.engine.trainer import build_optimizer
    from ssodlib.models.build import build_detector

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = _config(args.detector)
    model = build_detector(config, args.classes).to(device).train()
    opt = build_optimizer(config, model)
    images, boxes, labels = _batch(config.labeled_per_batch, args.size, args.classes)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model.supervised_losses(images, boxes, labels)
        opt.zero_grad()
        sum(losses.values()).backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"detector": args.detector, "images": config.labeled_per_batch, "sec_per_step": statistics.median(times),
            "peak_mib": peak, "optimizer": config.optimizer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--classes", type=int, default=13)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--detector", choices=DETECTORS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.detector:
        print(json.dumps(measure(args)))
        return
    results = {}
    for detector in DETECTORS:
        cmd = [sys.executable, __file__, "--detector", detector] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[detector] = json.loads(out)
    base = results["faster_rcnn"]
    print(f"mini presets, {base['images']} images of {args.size} px, {args.classes} classes, {args.device}, "
          f"{args.threads} threads, amp {args.amp}, median of {args.steps} steps")
    for r in results.values():
        print(f"  {r['detector']:<16} {r['sec_per_step']:.3f} s/step  peak {r['peak_mib']:.0f} MiB  "
              f"({r['optimizer']}; x{r['sec_per_step'] / base['sec_per_step']:.2f} of faster_rcnn)")


if __name__ == "__main__":
    main()
