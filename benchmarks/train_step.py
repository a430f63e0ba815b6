"""Step time and peak memory of one training step of every registered method, against the supervised
step of the same detector family (and against a baseline method, ``--baseline``, default pseudo_label).

    python benchmarks/train_step.py                       # CPU: ResNet-18 FPN, 256 px, 1 + 4 images
    python benchmarks/train_step.py --device cuda --backbone resnet50 --size 800 --amp bf16
    python benchmarks/train_step.py --matched --pretrained   # the detector settings of mmdetection's SoftTeacher
    python benchmarks/train_step.py --methods crossmatch     # CrossMatch against supervised and pseudo_label
    python benchmarks/train_step.py --methods semi_detr --families deformable_detr

Setting (CPU default): 10 classes, 1 labeled + 4 unlabeled images of ``--size`` pixels per step, 6
random boxes each, the strong views copies of the weak ones (``teacher_to_student`` the identity, the
withheld ground truth the same boxes in both views), as the smoke loader's batches are; the supervised
step trains on the same 5 images with their labels; the pseudo_label step runs the teacher on the 4 weak
views and the student on all 5 images; every other method (``ssodlib.methods.METHODS``) does its own
step on that batch, past the burn-in (iteration 0, 1, ...: Semi-DETR in its stage 1), with the
teacher's thresholds low so that an untrained teacher yields pseudo boxes as a trained one does
(``METHOD_OPTIONS``: LabelMatch with fixed thresholds, since ACT's periodic estimate is not a step;
DTG-SSOD's cluster thresholds at about the top 1 % of the untrained teacher's candidates, since at 0
every candidate would be a cluster; CrossMatch's OHEM at its full K from the first step, as after its
ramp).

Detector families: a method runs on the first family of ``--families`` (default
``faster_rcnn,dino``) that its ``detector_family`` names, else on the first one it names; the
supervised step is measured on every family used, and each method's ratios are to the supervised step
(and the baseline's step) of its own family, named in the output. Its ``required_detector_options``
(e.g. Rethinking PL's side-classification box head, Semi-DETR's cross-view query head) and the
benchmark's ``DETECTOR_OPTIONS`` (Rethinking PL: detection score threshold 0) are merged into that
family's detector options and shown in its row.

* ``faster_rcnn``: ``--backbone`` FPN as ``detector_config`` sets it (``--matched`` / ``--pretrained``), SGD
  (lr 1e-3, momentum 0.9), no gradient clipping.
* ``dino`` / ``deformable_detr``: ``detr_train_overrides(family, "mini")`` (the tiny trunk from scratch,
  as pretrained weights do not change the step) with that preset's optimiser, AdamW (lr 1e-4, weight
  decay 1e-4, the backbone and sampling-offset multipliers), and its gradient clipping (norm 0.1) inside
  the step.
* ``gfl``: ``GFL_PRESETS["mini"]`` (tiny trunk from scratch), SGD as Faster R-CNN.

The teacher is a frozen copy of the student. Each (method, family) runs in its own process so peak
memory is its own. Prints seconds per step (median after warm-up), peak memory, pseudo boxes per
unlabeled image at the last step (``pl/img``, where the method logs them) and the ratios.
``--methods a,b`` picks some (default: every registered one); the supervised and baseline steps of
the families used are added.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_FAMILIES = "faster_rcnn,dino"


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


# low thresholds so that the untrained teacher yields pseudo boxes, as a trained one does
METHOD_OPTIONS = {
    "pseudo_label": {"score_thresh": 0.0},
    "oracle": {"score_thresh": 0.0},
    "labelmatch": {"act": False, "fixed_threshold": 0.3, "fixed_uncertain_threshold": 0.0},
    # delta of the hard labels; OHEM keeps its K per level from the first step (the ramp is over)
    "crossmatch": {"score_thresh": 0.0, "ohem_ramp_iters": 0},
    # the clusters' score thresholds (RPN objectness, R-CNN class probability, GFL's sigmoid score): about the
    # top 1 % of the untrained teacher's candidates (~20 R-CNN, ~50 RPN, ~50 GFL clusters per image at
    # 128 px); at 0 every candidate would be a cluster (thousands per image), far from a trained teacher
    "dtg_ssod": {"rpn_tau": 0.55, "rcnn_tau": 0.15, "gfl_tau": 0.015},
    # tau (the base of Eq. 6's tau_m), unclipped so that tau_m stays low after the first statistics
    "rethinking_pl": {"tau": 0.0, "tau_clip": None},
    # the teacher's score floor and the main losses' tau_s (the per-image mean + std filter stays on)
    "semi_detr": {"tau_s": 0.0, "pseudo_score_floor": 0.0},
}

# detector options of a method's step besides its required ones: the side head's untrained p * v is
# ~0.01, under the detector's score threshold 0.05, so Rethinking PL's teacher would detect nothing
DETECTOR_OPTIONS = {
    "rethinking_pl": {"score_thresh": 0.0},
}


def method_families(name: str) -> tuple[str, ...] | None:
    """The families a registered method runs on (``None``: any)."""
    from ssodlib.methods import get_method

    family = get_method(name).detector_family
    return (family,) if isinstance(family, str) else family


def runs_on(name: str, family: str) -> bool:
    families = method_families(name)
    return families is None or family in families


def family_for(name: str, preferred: list[str]) -> str:
    """The first of ``preferred`` the method runs on, else its own first family."""
    for family in preferred:
        if runs_on(name, family):
            return family
    return method_families(name)[0]


def required_options(name: str) -> dict:
    """The method's ``required_detector_options`` and the benchmark's ``DETECTOR_OPTIONS`` for it."""
    from ssodlib.methods import get_method

    return {**(getattr(get_method(name), "required_detector_options", {}) or {}), **DETECTOR_OPTIONS.get(name, {})}


def detector_config(args: argparse.Namespace, family: str, required: dict):
    """The ``TrainConfig`` of ``family``'s detector and optimiser (see the module docstring)."""
    from ssodlib.config import TrainConfig
    from ssodlib.models.detectors.gfl import GFL_PRESETS
    from ssodlib.models.detr_presets import DETR_SCALES, detr_train_overrides

    sgd = dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=0.0, grad_clip=None)
    if family == "faster_rcnn":
        options = dict(backbone=args.backbone, fpn_channels=args.fpn_channels,
                       representation_size=args.representation_size, anchor_sizes=(16, 32, 64, 128, 256),
                       rpn_pre_nms_top_n=(1000, 500), rpn_post_nms_top_n=(500, 300), roi_batch_size=256)
        if args.matched:  # mmdetection's SoftTeacher defaults, to compare with it as a peer
            options.update(fpn_channels=256, representation_size=1024, roi_batch_size=512)
            if args.pretrained:  # ImageNet weights, stem and first stage frozen
                options.update(pretrained=True, trainable_layers=3)
        train = sgd
    elif family in DETR_SCALES:
        overrides = detr_train_overrides(family, "mini")
        options = {**overrides["detector_options"], "pretrained": False}
        train = {k: overrides[k] for k in ("optimizer", "lr", "weight_decay", "grad_clip")}
    elif family == "gfl":
        options, train = {**GFL_PRESETS["mini"], "pretrained": False}, sgd
    else:
        raise SystemExit(f"no benchmark setting for detector family {family!r}")
    return TrainConfig(detector=family, detector_options={**options, **required}, **train)


def measure(args: argparse.Namespace) -> dict:
    import torch

    from ssodlib.data.batch import Batch
    from ssodlib.engine.trainer import build_optimizer
    from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
    from ssodlib.methods import StepContext, get_method
    from ssodlib.models.build import build_detector

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = detector_config(args, args.family, required_options(args.mode))
    student = build_detector(config, args.classes).to(device).train()
    teacher = build_detector(config, args.classes).to(device).eval()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    opt = build_optimizer(config, student)
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
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    pl = ctx.stats.summary()["pl_per_image"]
    return {"mode": args.mode, "family": args.family, "sec_per_step": statistics.median(times), "peak_mib": peak,
            "pl_per_image": None if math.isnan(pl) else pl, "optimizer": config.optimizer,
            "required": required_options(args.mode)}


def plan(names: list[str], preferred: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """The (method, family) pairs to measure: the supervised step of every family used first, then the
    baseline's on each family where another method runs and the baseline can, then the methods."""
    runs = [(n, family_for(n, preferred)) for n in names if n != "supervised"]
    families = list(dict.fromkeys(f for _, f in runs)) or preferred[:1]
    extra = [(baseline, f) for f in families
             if baseline and baseline != "supervised" and (baseline, f) not in runs and runs_on(baseline, f)
             and any(n != baseline and rf == f for n, rf in runs)]
    return [("supervised", f) for f in families] + extra + runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet18", help="Faster R-CNN's backbone")
    p.add_argument("--fpn-channels", type=int, default=128)
    p.add_argument("--representation-size", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--matched", action="store_true",
                   help="Faster R-CNN in the peer setting: FPN 256, a 1024-wide box head, 512 RoIs per image "
                        "(mmdetection's defaults)")
    p.add_argument("--pretrained", action="store_true", help="with --matched: ImageNet weights, frozen stem")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every registered one)")
    p.add_argument("--families", default=DEFAULT_FAMILIES,
                   help="detector families in order of preference: a method runs on the first it supports "
                        f"(default {DEFAULT_FAMILIES})")
    p.add_argument("--baseline", default="pseudo_label",
                   help="a method whose step every method of its family is also compared with ('none': off)")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    from ssodlib.io import InputError
    from ssodlib.methods import METHODS, get_method
    from ssodlib.models.build import DETECTOR_FAMILIES

    names = [n.strip() for n in args.methods.split(",") if n.strip()] if args.methods else list(METHODS)
    preferred = [f.strip() for f in args.families.split(",") if f.strip()]
    baseline = None if args.baseline in ("", "none") else args.baseline
    try:  # an unknown name fails here, listing the registered ones
        for n in names + ([baseline] if baseline else []):
            get_method(n)
    except InputError as e:
        raise SystemExit(str(e)) from None
    unknown = sorted(set(preferred) - set(DETECTOR_FAMILIES))
    if unknown or not preferred:
        raise SystemExit(f"unknown detector families {unknown}; choose from {sorted(DETECTOR_FAMILIES)}")

    results, failed = {}, {}
    for mode, family in plan(names, preferred, baseline):
        cmd = [sys.executable, __file__, "--mode", mode, "--family", family, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode or not lines:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            failed[(mode, family)] = err
            print(f"{mode} on {family} failed: {err}", file=sys.stderr)
            continue
        results[(mode, family)] = json.loads(lines[-1])

    print(f"{args.size} px, {args.classes} classes, 1 labeled + 4 unlabeled, {args.device}, {args.threads} threads, "
          f"amp {args.amp}, median of {args.steps} steps after {args.warmup}")
    setting = {"faster_rcnn": f"{args.backbone} FPN{' (matched setting)' if args.matched else ''}, SGD",
               "dino": "mini preset, AdamW, clip 0.1", "deformable_detr": "mini preset, AdamW, clip 0.1",
               "gfl": "mini preset, SGD"}
    base_name = baseline or "-"
    used = list(dict.fromkeys(f for _, f in list(results) + list(failed)))
    families = sorted(used, key=lambda f: preferred.index(f) if f in preferred else len(preferred))
    for family in families:
        s, b = results.get(("supervised", family)), results.get((baseline, family)) if baseline else None
        print(f"{family} ({setting.get(family, '')}); ratios to {family}'s supervised"
              + (f" and {base_name}" if b else "") + " step")
        print(f"  {'method':<14}{'s/step':>8}{'peak MiB':>10}{'pl/img':>8}{'time/sup':>10}{'mem/sup':>9}"
              + (f"{'time/' + base_name:>20}" if b else ""))
        for (mode, fam), r in results.items():
            if fam != family:
                continue
            pl = "-" if r["pl_per_image"] is None else f"{r['pl_per_image']:.1f}"
            row = f"  {mode:<14}{r['sec_per_step']:>8.3f}{r['peak_mib']:>10.0f}{pl:>8}"
            row += (f"{r['sec_per_step'] / s['sec_per_step']:>9.2f}x{r['peak_mib'] / s['peak_mib']:>8.2f}x"
                    if s else f"{'-':>10}{'-':>9}")
            if b:
                row += f"{r['sec_per_step'] / b['sec_per_step']:>19.2f}x"
            if r["required"]:
                row += "   [" + ", ".join(f"{k}={v}" for k, v in r["required"].items()) + "]"
            print(row)
        for (mode, fam), err in failed.items():
            if fam == family:
                print(f"  {mode:<14}FAILED: {err}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
