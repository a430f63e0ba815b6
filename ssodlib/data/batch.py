"""What a training step receives: the images of one batch in their views, with every view's matrix."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import Tensor


@dataclass
class Batch:
    """One training batch. Labeled: ``images`` (weak views) with ``boxes`` / ``labels``. Unlabeled:
    ``weak`` / ``strong`` images, ``teacher_to_student`` ``(3, 3)`` matrices, and the withheld ground
    truth mapped into the weak (``gt_weak_*``) and strong (``gt_strong_*``) views."""

    images: list[Tensor] = field(default_factory=list)
    boxes: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    weak: list[Tensor] = field(default_factory=list)
    strong: list[Tensor] = field(default_factory=list)
    teacher_to_student: list[Tensor] = field(default_factory=list)
    gt_weak_boxes: list[Tensor] = field(default_factory=list)
    gt_weak_labels: list[Tensor] = field(default_factory=list)
    gt_strong_boxes: list[Tensor] = field(default_factory=list)
    gt_strong_labels: list[Tensor] = field(default_factory=list)

    @property
    def num_unlabeled(self) -> int:
        return len(self.weak)

    def pin_memory(self) -> "Batch":
        """Every tensor in page-locked memory (the DataLoader calls this with ``pin_memory=True``), so
        copies to the GPU can overlap computation."""
        return Batch(**{f.name: [t.pin_memory() for t in getattr(self, f.name)] for f in fields(self)})
