"""The interface every method implements, and what the engine hands it at each step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ssodlib.data.coco import CocoDetection
from ssodlib.engine.config import TrainConfig
from ssodlib.engine.data import Batch
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError


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

    Subclasses set ``name``, ``uses_teacher``, ``uses_unlabeled`` and an ``Options`` dataclass whose
    fields are the method's switches; ``TrainConfig.method_options`` overrides them.
    """

    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = False
    uses_unlabeled: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions

    def __init__(self, *, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        known = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"method {self.name!r} has no option(s) {unknown}. Fix: choose from {sorted(known)}.")
        self.options = self.Options(**options)

    def setup(self, *, labeled: CocoDetection, unlabeled: CocoDetection | None, config: TrainConfig,
              device: torch.device) -> None:
        """Called by the trainer once per run before the first step (a resumed run calls it before
        :meth:`load_state_dict`): the datasets and the run's configuration, for methods that need
        labeled-set statistics or extra passes over unlabeled images. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """State that is not a function of the weights and the iteration (saved in checkpoints so a
        resumed run continues exactly); tensors and plain values only. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. Default: nothing to restore."""

    def losses(self, student: nn.Module, ctx: StepContext, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError
