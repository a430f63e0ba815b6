"""Training methods, one file each; ``METHODS`` maps a name to its class (no import side effects)."""

from ssodlib.methods.base import Method, StepContext
from ssodlib.methods.labelmatch import LabelMatch
from ssodlib.methods.pseudo_label import PseudoLabel
from ssodlib.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "pseudo_label": PseudoLabel,
    "labelmatch": LabelMatch,
}


def get_method(name: str) -> type[Method]:
    from ssodlib.io import InputError

    if name not in METHODS:
        raise InputError(f"unknown method {name!r}. Fix: choose one of {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "Method", "StepContext", "get_method"]
