"""Published numbers: ``papers/<paper>/reference.yaml`` (schema in ``papers/README.md``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from ssodlib.experiments.plan import papers_dir, read_yaml
from ssodlib.io import InputError


@lru_cache(maxsize=None)
def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: no such file. Fix: add the paper's published numbers there.")
    return read_yaml(path, what="published numbers")


def load_reference(paper: str) -> dict[str, Any]:
    return _load(papers_dir() / paper / "reference.yaml")


def reference_item(paper: str, item: str) -> dict[str, Any]:
    data = load_reference(paper)
    for it in data["items"]:
        if it["id"] == item:
            return it
    raise InputError(f"{papers_dir() / paper / 'reference.yaml'}: no item {item!r}. Fix: choose one of "
                     f"{[i['id'] for i in data['items']]}.")


def published(paper: str, item: str, row: str, column: str) -> float | None:
    """The published value of ``row`` / ``column`` in ``paper``'s ``item`` (None where the cell is empty)."""
    it = reference_item(paper, item)
    for r in it.get("rows", []):
        if r["name"] == row:
            return r.get("values", {}).get(column)
    raise InputError(f"{papers_dir() / paper / 'reference.yaml'}: item {item!r} has no row {row!r}. Fix: use one of "
                     f"{[r['name'] for r in it.get('rows', [])]}.")


def rows_with_role(role: str) -> list[tuple[str, str, str]]:
    """``(paper, item, row)`` of every published row marked with ``role`` (e.g. supervised)."""
    out = []
    for path in sorted(papers_dir().glob("*/reference.yaml")):
        data = _load(path)
        for it in data["items"]:
            out += [(data["paper"], it["id"], r["name"]) for r in it.get("rows", []) if r.get("role") == role]
    return out


def published_detector(paper: str, item: str, row: str) -> str | None:
    """The detector family a published row was measured with, where ``reference.yaml`` names one (the
    row's ``detector``, else its item's); ``None``: a CNN detector (two-stage or one-stage). Semi-DETR's
    DETR rows carry it so that they are never set beside the Faster R-CNN baselines."""
    it = reference_item(paper, item)
    for r in it.get("rows", []):
        if r["name"] == row:
            return r.get("detector", it.get("detector"))
    raise InputError(f"{papers_dir() / paper / 'reference.yaml'}: item {item!r} has no row {row!r}. Fix: use one of "
                     f"{[r['name'] for r in it.get('rows', [])]}.")
