"""The interface every method implements, what the engine hands it, and the teacher-student template.

A method is a :class:`Method` subclass registered in ``ssodlib.methods.METHODS``. Methods that train a
student against an EMA teacher's pseudo labels subclass :class:`TeacherStudentMethod`, which does the
burn-in branch and the naming and weighting of unsupervised losses once; they implement
:meth:`TeacherStudentMethod.unsupervised_losses`. How to add one: ``docs/adding-a-method.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ssodlib.config import check_fields
from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.data.transforms import WeakViewConfig
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What a method may know of its run: the seed (for its own random draws), the iteration at which
    the burn-in ends, the test view (one scale, no flip) for extra passes over images, and the run's
    folder (``None`` outside a trainer): in a results store its siblings are the other runs, by key."""

    seed: int
    burn_in: int
    test_view: WeakViewConfig
    run_dir: Path | None = None


@dataclass
class StepContext:
    """``teacher`` is the EMA detector (``None`` for methods without one); ``unsup_weight`` is the
    scheduled weight of unsupervised losses (0 during burn-in); ``stats`` collects pseudo-label
    diagnostics between two log lines."""

    teacher: nn.Module | None
    iteration: int
    burn_in: bool
    unsup_weight: float
    stats: PseudoLabelStats


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    pass


class Method:
    """A training method: turns a batch into weighted losses (``loss_*`` keys, summed by the engine).

    Subclasses set ``name``, ``uses_teacher``, ``uses_unlabeled``, ``detector_family`` (the family of
    ``ssodlib.models.build.DETECTOR_FAMILIES`` whose stages it calls, or a tuple of the families it runs
    on; ``None``: any) and an ``Options`` dataclass whose fields are the method's switches;
    ``TrainConfig.method_options`` overrides them.
    """

    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = False
    uses_unlabeled: ClassVar[bool] = False
    detector_family: ClassVar[str | tuple[str, ...] | None] = "faster_rcnn"
    Options: ClassVar[type] = NoOptions

    def __init__(self, *, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        known = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"method {self.name!r} has no option(s) {unknown}. Fix: choose from {sorted(known)}.")
        self.options = self.Options(**options)
        check_fields(self.options, what=f"method {self.name!r} option")

    def setup(self, *, labeled: CocoDetection, unlabeled: CocoDetection | None, run: RunInfo,
              device: torch.device) -> None:
        """Called by the trainer once per run before the first step (a resumed run calls it before
        :meth:`load_state_dict`): the datasets and what the method may know of the run, for methods
        that need labeled-set statistics or extra passes over unlabeled images. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """State that is not a function of the weights and the iteration (saved in checkpoints so a
        resumed run continues exactly); tensors and plain values only. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. Default: nothing to restore."""

    def ema_keep_rate(self, *, iteration: int, keep_rate: float) -> float:
        """The teacher's keep rate in the EMA update after step ``iteration``, given the configured
        ``keep_rate`` (a method may ramp it, e.g. Semi-DETR's ``min(keep, 1 - 1 / (t + 1))``).
        Default: ``keep_rate``."""
        return keep_rate

    def prepare_evaluation(self, models: list[nn.Module], *, iteration: int) -> None:
        """Called by the trainer before it evaluates ``models`` (student, teacher) after training step
        ``iteration`` (0-based; -1 before any): a method whose inference depends on the step sets it
        here, so an evaluation right after a resume is the same as one in an unbroken run (e.g.
        Semi-DETR's NMS in stage 1). Default: nothing."""

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError


class JointLosses(NamedTuple):
    """One semi-supervised step's losses: the labeled images' supervised terms and the unlabeled
    images' unweighted terms (``loss_*`` keys), from one student pass over both, as the papers' code
    does (one forward, one batch-norm statistic)."""

    supervised: dict[str, Tensor]
    unsupervised: dict[str, Tensor]


class TeacherStudentMethod(Method):
    """An EMA teacher labels the unlabeled images for the student (the trainer copies the student into
    the teacher at the end of the burn-in and updates it by EMA after each step).

    During the burn-in, or on a batch without unlabeled images, the step is supervised; afterwards
    :meth:`unsupervised_losses` gives both parts, and the unsupervised terms are renamed ``*_unsup``
    and weighted by the scheduled ``ctx.unsup_weight``.
    """

    uses_teacher = True
    uses_unlabeled = True

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        if ctx.burn_in or batch.num_unlabeled == 0:
            return student.supervised_losses(batch.images, batch.boxes, batch.labels)
        supervised, unsupervised = self.unsupervised_losses(student, ctx, batch)
        return {**supervised, **{f"{k}_unsup": v * ctx.unsup_weight for k, v in unsupervised.items()}}

    def unsupervised_losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> JointLosses:
        """The step after burn-in; ``ctx.teacher`` is set and ``batch`` holds unlabeled images."""
        raise NotImplementedError
