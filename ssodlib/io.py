"""Atomic file writes and JSON reading whose errors name the file and the fix."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """Bad user input: the message names the file and says how to fix it."""


REPOSITORY = Path(__file__).resolve().parents[1]


def repository_folder(name: str, *, env: str) -> Path:
    """``$env`` when set, else the folder ``name`` of the repository (papers/, notebooks/, results/)."""
    value = os.environ.get(env)
    return Path(value) if value else REPOSITORY / name


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A reader sees either the old file or the complete new one, never a half-written file,
    even when the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparing against a stored manifest."""
    return json.loads(json.dumps(obj))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON atomically (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(obj, indent=indent, separators=separators)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing file or a syntax error raises :class:`InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found. Fix: check the path (and DATA_ROOT / --data-root).")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
            "Fix: regenerate or re-download the file; it may be truncated."
        ) from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e}). Fix: point to the {what}.") from e
