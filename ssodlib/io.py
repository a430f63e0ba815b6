"""Atomic file writes and JSON reading whose errors name the file and the fix; progress lines of long jobs."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """Bad user input: the message names the file and says how to fix it."""

    def _render_traceback_(self) -> list[str]:
        """How IPython (a notebook cell, papermill's error) shows it: the one-line message first, since it
        says what to fix, then the usual traceback for whoever needs it."""
        return [f"{type(self).__name__}: {self}", "", *"".join(traceback.format_exception(self)).splitlines()]


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise path_error(e, path) from e
    tmp_path = Path(tmp)
    try:
        try:
            os.fchmod(fd, _ordinary_mode(path))  # mkstemp makes 0600: unreadable in a shared results folder
        finally:
            os.close(fd)
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        raise path_error(e, path) from e
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def _ordinary_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the existing file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


# what to do about a file-system error, by errno
_OS_FIXES = {
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "free disk space or choose another folder",
    errno.EISDIR: "the path is a folder: name a file",
    errno.ENOENT: "check the path",
}


def path_error(e: OSError, path: str | os.PathLike | None = None) -> InputError:
    """``e`` as an :class:`InputError` naming the path (``path``, else the one the error carries)."""
    where = path if path is not None else (e.filename or "(no path)")
    fix = _OS_FIXES.get(e.errno, "check the path and its permissions")
    if e.errno == errno.ENOTDIR:
        fix = f"{_file_above(Path(where))} is a regular file, not a folder: remove it or choose another path"
    return InputError(f"{where}: {e.strerror or e} ({type(e).__name__}). Fix: {fix}.")


def _file_above(path: Path) -> Path:
    """The regular file that a path runs through as if it were a folder (``path`` when none is found)."""
    return next((p for p in reversed(path.parents) if p.is_file()), path)


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


def progress_line(what: str, done: int, total: int, *, eta_seconds: float | None) -> str:
    """``what: done/total (p %), ETA 2m10s``: one line that reads the same in a terminal, a log file
    and a notebook's output, where a progress bar's redraws pile up as hundreds of outputs."""
    eta = "unknown" if eta_seconds is None else clock(eta_seconds)
    return f"{what}: {done}/{total} ({100 * done / max(total, 1):.0f} %), ETA {eta}"


def clock(seconds: float) -> str:
    """``45s``, ``12m05s`` or ``2h03m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
