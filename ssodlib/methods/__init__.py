"""Training methods, one file each; ``METHODS`` maps a name to its class (no import side effects)."""

from ssodlib.io import InputError
from ssodlib.methods.base import JointLosses, Method, RunInfo, StepContext, TeacherStudentMethod
from ssodlib.methods.crossmatch import CrossMatch
from ssodlib.methods.dtg_ssod import DTGSSOD
from ssodlib.methods.labelmatch import LabelMatch
from ssodlib.methods.oracle import Oracle
from ssodlib.methods.pseudo_label import PseudoLabel
from ssodlib.methods.rethinking_pl import RethinkingPL
from ssodlib.methods.semi_detr import SemiDETR
from ssodlib.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "pseudo_label": PseudoLabel,
    "oracle": Oracle,
    "labelmatch": LabelMatch,
    "rethinking_pl": RethinkingPL,
    "dtg_ssod": DTGSSOD,
    "semi_detr": SemiDETR,
    "crossmatch": CrossMatch,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}. Fix: choose one of {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "JointLosses", "Method", "RunInfo", "StepContext", "TeacherStudentMethod", "get_method"]
