"""Training configuration: one plain dataclass, a preset per scale, then explicit overrides.

EMA convention: ``ema_keep_rate`` is the weight the teacher keeps at each update,
``teacher = keep * teacher + (1 - keep) * student``. Unbiased Teacher and CrossMatch use 0.9996,
Semi-DETR 0.999 (mmdetection's ``MeanTeacherHook(momentum=0.001)``), LabelMatch 0.996.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from dataclasses import dataclass, field
from typing import IO, Any, Union, get_args, get_origin, get_type_hints

import yaml

from ssodlib.io import InputError


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    method: str = "pseudo_label"
    scale: str = "mini"
    # data: "synth" (the embedded benchmark of `scale`), "coco" (COCO-standard folds under
    # {data_root}/coco, see README), "coco-additional" (train2017 + unlabeled2017), "voc" (VOC07 trainval +
    # VOC12 trainval, tested on VOC07 test), or explicit COCO-format files (labeled_ann, ...), which win
    dataset: str = "synth"
    data_root: str | None = None
    labeled_ann: str | None = None
    unlabeled_ann: str | None = None
    val_ann: str | None = None
    image_dir: str | None = None
    val_image_dir: str | None = None  # default: image_dir
    percent: float = 5.0
    fold: int = 1
    seed: int = 0
    # detector: the family (ssodlib.models.build.DETECTOR_FAMILIES) and its options, validated against the
    # family's options dataclass when the detector is built (unknown keys are errors, as for method_options);
    # keys left out take the dataclass's defaults
    detector: str = "faster_rcnn"
    detector_options: dict[str, Any] = field(default_factory=dict)
    # views (shorter side in pixels)
    train_scales: tuple[int, ...] = (224, 240, 256, 272, 288)
    test_scale: int = 256
    max_size: int = 480
    geometric_jitter: bool = False
    # Soft Teacher's student view: its own random resize and flip (from train_scales), not the teacher's
    independent_student_view: bool = False
    # the student's photometric augmentations (a subset of STRONG_AUGMENTATIONS; Rethinking PL's Table 6):
    # "color" is colour jitter with random grayscale, "blur" Gaussian blur, "cutout" the erasing passes
    strong_augment: tuple[str, ...] = ("color", "blur", "cutout")
    # schedule
    iterations: int = 2000
    burn_in: int = 500
    labeled_per_batch: int = 1
    unlabeled_per_batch: int = 4
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    grad_clip: float | None = 10.0
    ema_keep_rate: float = 0.999
    unsup_weight: float = 2.0
    unsup_warmup: int = 0  # iterations after burn-in over which the unsupervised weight ramps up
    method_options: dict[str, Any] = field(default_factory=dict)
    # runtime
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: str = "none"  # "none", "bf16", "fp16"
    channels_last: bool = False
    num_workers: int = 0
    threads: int | None = None
    snapshots: tuple[int, ...] = ()  # iterations at which checkpoint-{iteration}.pt is kept as well
    init_from: str | None = None  # a snapshot of a run with the same data, detector and schedule prefix:
    # the run starts at its iteration (LabelMatch's protocol: one supervised burn-in serves every method)
    eval_every: int = 500
    eval_images: int | None = None  # evaluate on the first N validation images (None: all)
    # a teacher-student run evaluates the teacher at every evaluation and the student beside it only
    # at the end ("final": the numbers the papers report, for ~40 % less evaluation) or every time ("every");
    # with a fixed teacher (ema_keep_rate 1, Rethinking PL) "final" scores the learning student instead
    eval_student: str = "final"
    checkpoint_every: int = 250
    log_every: int = 20
    # run keys of finished runs of the same results store (sibling run folders) whose final students are
    # ensembled with this run's student at its final evaluation (ssodlib.models.ensemble), reported as
    # the model "ensemble" beside "student" and "teacher" (Rethinking PL's Table 3)
    ensemble_with: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, what="configuration field")
        check_ranges(self, TRAIN_CONFIG_RULES, what="configuration field")


# -- validation: every field against its declared type, then the ranges and choices below -------------
def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", None) if get_origin(tp) is None else str(tp)


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the declared type ``tp`` (an int is a float; a bool is neither)."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_fields(instance: Any, *, what: str) -> None:
    """Raise :class:`InputError` naming the first field of the dataclass ``instance`` whose value is not of
    its declared type; lists given for tuple fields become tuples first (YAML has no tuples)."""
    hints = get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value, tp = getattr(instance, f.name), hints[f.name]
        if isinstance(value, list) and (get_origin(tp) is tuple or any(get_origin(a) is tuple for a in get_args(tp))):
            value = tuple(value)
            object.__setattr__(instance, f.name, value)
        if not _matches(value, tp):
            raise InputError(f"{what} {f.name}={value!r} is not of type {_type_name(tp)}. "
                             f"Fix: set {f.name} to a value of type {_type_name(tp)}.")
        if isinstance(value, float) and math.isnan(value):
            raise InputError(f"{what} {f.name} is NaN. Fix: set {f.name} to a number.")


@dataclass(frozen=True)
class Rule:
    """What a field's value may be: within ``[low, high]`` (``open_low``: above ``low``), each element of
    a tuple so, or one of ``choices``; ``None`` always passes (it means "not set")."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # choices may also match this regular expression

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, tuple):
            return next((p for p in map(self.problem, value) if p), None)
        if self.choices or self.pattern:
            if value in self.choices or (self.pattern and re.fullmatch(self.pattern, str(value))):
                return None
            return "is not a choice"
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return f"must be {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None


def check_ranges(instance: Any, rules: dict[str, Rule], *, what: str) -> None:
    """Raise :class:`InputError` for the first field of ``instance`` outside its rule."""
    for name, rule in rules.items():
        value = getattr(instance, name)
        problem = rule.problem(value)
        if problem and rule.choices:
            raise InputError(f"{what} {name}={value!r} {problem}. Fix: choose one of {list(rule.choices)}.")
        if problem:
            raise InputError(f"{what} {name}={value!r} {problem}. Fix: set {name} to a value that "
                             f"{problem.replace('must be', 'is')}.")


POSITIVE, NON_NEGATIVE = Rule(low=0, open_low=True), Rule(low=0)
TRAIN_CONFIG_RULES: dict[str, Rule] = {
    "percent": Rule(low=0, high=100, open_low=True), "fold": Rule(low=1), "iterations": POSITIVE,
    "burn_in": NON_NEGATIVE, "labeled_per_batch": Rule(low=1), "unlabeled_per_batch": NON_NEGATIVE,
    "train_scales": POSITIVE, "test_scale": POSITIVE, "max_size": POSITIVE,
    "optimizer": Rule(choices=("sgd", "adamw")), "lr": NON_NEGATIVE, "momentum": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE, "warmup_iters": NON_NEGATIVE, "lr_steps": NON_NEGATIVE, "lr_gamma": POSITIVE,
    "grad_clip": POSITIVE, "ema_keep_rate": Rule(low=0, high=1), "unsup_weight": NON_NEGATIVE,
    "unsup_warmup": NON_NEGATIVE, "device": Rule(choices=("auto", "cpu", "cuda"), pattern=r"cuda:\d+"),
    "amp": Rule(choices=("none", "bf16", "fp16")), "num_workers": NON_NEGATIVE, "threads": Rule(low=1),
    "snapshots": NON_NEGATIVE, "eval_every": POSITIVE, "eval_images": Rule(low=1),
    "eval_student": Rule(choices=("final", "every")), "checkpoint_every": POSITIVE,
    "log_every": POSITIVE, "strong_augment": Rule(choices=("color", "blur", "cutout")),
}


# -- YAML: scientific notation without a dot ("1e-3") is a float, as in Python and JSON ------------------
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(stream: str | bytes | IO[Any]) -> Any:
    """``yaml.safe_load`` (of a string or a file) that also reads ``1e-3``, ``1e6`` and ``1.0e6`` as
    floats (PyYAML's YAML 1.1 rules read them as strings)."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 (_Loader is a SafeLoader)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        detector_options=dict(backbone="tiny", fpn_channels=32, representation_size=64,
                              anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n=(200, 100),
                              rpn_post_nms_top_n=(100, 50), roi_batch_size=64),
        train_scales=(80, 96, 112), test_scale=96, max_size=160, percent=10.0, iterations=8, burn_in=4,
        warmup_iters=2, eval_every=8, checkpoint_every=4, log_every=2, lr=0.01,
    ),
    # Sized so that one run takes at most ~15 minutes on 2 CPU cores and 5 % labels are label-limited, as
    # COCO's are for the papers' ImageNet-initialised ResNet-50: the tiny backbone's trunk pretrained on
    # object crops outside the benchmark's splits, a long supervised burn-in (snapshot at 2000, from which
    # semi-supervised runs start) and an EMA time constant of ~200 iterations. The measurements behind
    # each choice: docs/results/mini-benchmark.md.
    "mini": dict(
        detector_options=dict(backbone="tiny", pretrained=True, fpn_channels=64, representation_size=256,
                              anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n=(1000, 500),
                              rpn_post_nms_top_n=(500, 300), roi_batch_size=128, roi_sampling_ratio=1,
                              cls_loss="focal"),
        iterations=5000, burn_in=2000,
        lr_steps=(4600,),
        labeled_per_batch=2, unlabeled_per_batch=2, lr=0.02, warmup_iters=100, ema_keep_rate=0.995,
        unsup_weight=1.0, snapshots=(2000,), eval_every=500, checkpoint_every=250, log_every=20,
    ),
    "paper": dict(
        dataset="coco",
        detector_options=dict(backbone="resnet50", pretrained=True, fpn_channels=256, representation_size=1024,
                              anchor_sizes=(32, 64, 128, 256, 512), rpn_pre_nms_top_n=(2000, 1000),
                              rpn_post_nms_top_n=(1000, 1000), roi_batch_size=512, cls_loss="focal"),
        train_scales=(640, 672, 704, 736, 768, 800), test_scale=800, max_size=1333,
        percent=1.0, iterations=180000, burn_in=2000, labeled_per_batch=8, unlabeled_per_batch=8, lr=0.01,
        warmup_iters=1000, ema_keep_rate=0.9996, unsup_weight=4.0, amp="bf16",
        eval_every=5000, checkpoint_every=2000, log_every=50, num_workers=4,
    ),
}


# option dicts: an override replaces the preset's value of each key it names, not the whole dict
OPTION_FIELDS = ("detector_options", "method_options")


def train_config(scale: str, **overrides: Any) -> TrainConfig:
    """The preset of ``scale`` with explicit overrides applied (one level, nothing inherited; in
    ``detector_options`` and ``method_options`` one level per key)."""
    if scale not in PRESETS:
        raise InputError(f"unknown scale {scale!r}. Fix: choose one of {sorted(PRESETS)}.")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"unknown configuration key(s) {unknown}. Fix: use fields of TrainConfig (a detector's "
                         "knobs are keys of detector_options, a method's of method_options).")
    preset = PRESETS[scale]
    values = {**preset, **overrides, "scale": scale}
    for name in OPTION_FIELDS:
        given = overrides.get(name)
        if given is not None and not isinstance(given, dict):
            raise InputError(f"{name} must be a mapping of option names to values, got {given!r}. "
                             f"Fix: e.g. --set {name}.KEY=VALUE.")
        inherited = preset.get(name, {})
        family, preset_family = values.get("detector", "faster_rcnn"), preset.get("detector", "faster_rcnn")
        if name == "detector_options" and family != preset_family:
            inherited = {}  # a preset's detector options belong to its detector family
        values[name] = {**inherited, **(given or {})}
    return TrainConfig(**values)  # __post_init__ checks every field and makes YAML lists tuples


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["iterations=100", "lr_steps=[800, 900]", "detector_options.fpn_channels=64"]`` -> dict; values
    are YAML scalars or lists; ``OPTIONS.KEY=VALUE`` sets one key of an option dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise InputError(f"override {item!r} is not KEY=VALUE. Fix: e.g. --set iterations=100.")
        key, value = key.strip(), load_yaml(text)
        name, dot, option = key.partition(".")
        if dot:
            if name not in OPTION_FIELDS or not option:
                raise InputError(f"override {item!r}: only {list(OPTION_FIELDS)} take dotted keys. Fix: e.g. "
                                 "--set detector_options.fpn_channels=64.")
            out.setdefault(name, {})[option] = value
        else:
            out[key] = value
    return out


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# fields a resumed run may change: where and how it runs and reports, and a longer schedule's end
# (the learning-rate steps stay, so the iterations already trained are the same computation)
RESUMABLE_FIELDS = ("data_root", "device", "num_workers", "threads", "eval_every", "eval_images", "eval_student",
                    "checkpoint_every",
                    "log_every", "snapshots", "init_from", "iterations")

# fields two runs must share for one to continue from the other's snapshot (with every detector option)
SHARED_PREFIX_FIELDS = (
    "dataset", "data_root", "labeled_ann", "val_ann", "image_dir", "percent", "fold", "seed", "detector",
    "train_scales", "max_size", "labeled_per_batch", "optimizer", "lr", "momentum", "weight_decay", "warmup_iters",
    "lr_steps", "lr_gamma", "grad_clip", "amp",
)
