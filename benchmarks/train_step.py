"""Step time and peak memory of one training step of every registered method, against the supervised step.

    python benchmarks/train_step.py                       # CPU: ResNet-18 FPN, 256 px, 1 + 4 images
    python benchmarks/train_step.py --device cuda --backbone resnet50 --size 800 --amp bf16
    python benchmarks/train_step.py --matched --pretrained   # the detector settings of mmdetection's SoftTeacher

Setting (CPU default): 10 classes, 1 labeled + 4 unlabeled images per step; the supervised step
trains on the same 5 images with their labels; the pseudo_label step runs the teacher on the 4 weak
views and the student on all 5 images; every other method (``ssodlib.methods.METHODS``) does its own
step on that batch, with the teacher's threshold at 0 so that an untrained teacher yields pseudo boxes
(``METHOD_OPTIONS``: LabelMatch with fixed thresholds, since ACT's periodic estimate is not a step).
Each method runs in its own process so peak memory is its own. Prints seconds per step (median after
warm-up), peak memory and each method's ratio to the supervised step. ``--methods a,b`` picks some.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _images(n: int, size: int, g):
    import torch

    return [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]


def _targets(n: int, size: int, classes: int, g):
    import torch

    boxes, labels = [], []
    for _ in range(n):
        xy = torch.rand(6, 2, generator=g) * size * 0.7
        wh = 8 + torch.rand(6, 2, generator=g) * size * 0.3
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=size)], 1))
        labels.append(torch.randint(0, classes, (6,), generator=g))
    return boxes, labels


# a low threshold so that the untrained teacher yields pseudo boxes, as a trained one does
METHOD_OPTIONS = {
    "pseudo_label": {"score_thresh": 0.0},
    "oracle": {"score_thresh": 0.0},
    "labelmatch": {"act": False, "fixed_threshold": 0.3, "fixed_uncertain_threshold": 0.0},
}


def measure(args: argparse.Namespace) -> dict:
    import torch

    from ssodlib.data.batch import Batch
    from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
    from ssodlib.methods import StepContext, get_method
    from ssodlib.config import TrainConfig
    from ssodlib.models.build import build_detector

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    options = dict(backbone=args.backbone, fpn_channels=args.fpn_channels,
                   representation_size=args.representation_size, anchor_sizes=(16, 32, 64, 128, 256),
                   rpn_pre_nms_top_n=(1000, 500), rpn_post_nms_top_n=(500, 300), roi_batch_size=256)
    if args.matched:  # mmdetection's SoftTeacher defaults, to compare with it as a peer
        options.update(fpn_channels=256, representation_size=1024, roi_batch_size=512)
        if args.pretrained:  # ImageNet weights, stem and first stage frozen
            options.update(pretrained=True, trainable_layers=3)
    config = TrainConfig(detector="faster_rcnn", detector_options=options)
    student = build_detector(config, args.classes).to(device)
    teacher = build_detector(config, args.classes).to(device).eval()
    teacher.load_state_dict(student.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    lab, unl = _images(1, args.size, g), _images(4, args.size, g)
    boxes, labels = _targets(5, args.size, args.classes, g)
    eye = torch.eye(3)
    if args.mode == "supervised":
        batch = Batch(images=lab + unl, boxes=boxes, labels=labels)
    else:
        batch = Batch(images=lab, boxes=boxes[:1], labels=labels[:1], weak=unl, strong=[u.clone() for u in unl],
                      teacher_to_student=[eye] * 4, gt_weak_boxes=boxes[1:], gt_weak_labels=labels[1:],
                      gt_strong_boxes=boxes[1:], gt_strong_labels=labels[1:])
    method = get_method(args.mode)(options=METHOD_OPTIONS.get(args.mode, {}))
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    times = []
    for i in range(args.warmup + args.steps):
        ctx = StepContext(teacher=teacher, iteration=i, burn_in=False, unsup_weight=2.0,
                          stats=PseudoLabelStats(num_classes=args.classes))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = method.losses(student, ctx, batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"mode": args.mode, "sec_per_step": statistics.median(times), "peak_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--fpn-channels", type=int, default=128)
    p.add_argument("--representation-size", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--matched", action="store_true",
                   help="the peer setting: FPN 256, a 1024-wide box head, 512 RoIs per image (mmdetection's defaults)")
    p.add_argument("--pretrained", action="store_true", help="with --matched: ImageNet weights, frozen stem")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every registered one)")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    from ssodlib.methods import METHODS

    names = args.methods.split(",") if args.methods else list(METHODS)
    names = ["supervised"] + [n for n in names if n != "supervised"]
    results = {}
    for mode in names:
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
    s = results["supervised"]
    print(f"{args.backbone} FPN{' (matched setting)' if args.matched else ''}, {args.size} px, {args.classes} classes, 1 labeled + 4 unlabeled, "
          f"{args.device}, {args.threads} threads, amp {args.amp}")
    for r in results.values():
        print(f"  {r['mode']:<13} {r['sec_per_step']:.3f} s/step   peak {r['peak_mib']:.0f} MiB   "
              f"time {r['sec_per_step'] / s['sec_per_step']:.2f}x, peak memory {r['peak_mib'] / s['peak_mib']:.2f}x "
              "of supervised")


if __name__ == "__main__":
    main()
