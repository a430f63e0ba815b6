"""Exponential moving average of the student into the teacher (keep-rate convention)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, *, keep_rate: float) -> None:
    """``teacher = keep_rate * teacher + (1 - keep_rate) * student`` for parameters and float
    buffers; integer buffers (e.g. BatchNorm's counters) are copied."""
    if not 0.0 <= keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in [0, 1], got {keep_rate}")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, t in t_state.items():
        s = s_state[name].detach()
        if t.dtype.is_floating_point:
            t.mul_(keep_rate).add_(s.to(t.dtype), alpha=1.0 - keep_rate)
        else:
            t.copy_(s)


@torch.no_grad()
def copy_weights(teacher: nn.Module, student: nn.Module) -> None:
    """``teacher := student`` (the end of burn-in)."""
    teacher.load_state_dict(student.state_dict())
