"""Data: COCO-format datasets, folds, the embedded benchmark, views and batch sampling.

Names are imported lazily so that light modules (the benchmark generator, whose worker processes
import it) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CocoAnnotations": "coco", "CocoDetection": "coco", "load_coco": "coco", "parse_coco": "coco",
    "read_image": "coco", "MixedBatchSampler": "sampler", "split_coco": "splits", "split_file_names": "splits",
    "write_coco_splits": "splits", "SynthConfig": "synth", "SynthPaths": "synth", "ensure_benchmark": "synth",
    "generate": "synth", "synth_config": "synth", "StrongViewConfig": "transforms",
    "TeacherStudentViews": "transforms", "WeakViewConfig": "transforms", "strong_view": "transforms",
    "teacher_student_views": "transforms", "transform_boxes": "transforms", "weak_view": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ssodlib.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ssodlib.data.{_EXPORTS[name]}"), name)
