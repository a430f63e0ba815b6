"""Atomic writes: the permissions of an ordinary write, and file-system errors as input errors naming
the path; an input error shown in a notebook cell; progress lines."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

from ssodlib.io import InputError, atomic_write, clock, path_error, progress_line, write_json, write_text


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_written_with_umask_022_is_readable_by_everyone(tmp_path, umask_022):
    assert _mode(write_json(tmp_path / "record.json", {"a": 1})) == 0o644
    assert _mode(atomic_write(tmp_path / "sub" / "weights.bin", lambda tmp: tmp.write_bytes(b"x"))) == 0o644


def test_a_stricter_umask_is_respected(tmp_path):
    before = os.umask(0o077)
    try:
        assert _mode(write_text(tmp_path / "private.txt", "x")) == 0o600
    finally:
        os.umask(before)


def test_rewriting_a_file_keeps_its_mode_as_an_ordinary_write_does(tmp_path, umask_022):
    path = write_text(tmp_path / "shared.txt", "old")
    path.chmod(0o664)
    write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o664


def test_writing_under_a_regular_file_names_that_file(tmp_path):
    (tmp_path / "somefile").write_text("not a folder")
    with pytest.raises(InputError) as e:
        write_json(tmp_path / "somefile" / "run" / "final.json", {})
    message = str(e.value)
    assert message.startswith(str(tmp_path / "somefile" / "run" / "final.json"))
    assert f"Fix: {tmp_path / 'somefile'} is a regular file, not a folder" in message


def test_writing_into_an_unwritable_folder_names_the_file_and_the_fix(tmp_path, monkeypatch):
    def denied(*args, dir=None, **kwargs):  # what a folder without write permission answers (root is never denied)
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(InputError, match="Permission denied .*Fix: choose a folder you can write to") as e:
        write_text(tmp_path / "records" / "a.json", "{}")
    assert str(e.value).startswith(str(tmp_path / "records" / "a.json"))


def test_a_full_disk_while_writing_names_the_file_and_leaves_no_temporary(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InputError, match="No space left on device .*Fix: free disk space"):
        atomic_write(tmp_path / "checkpoint.pt", full)
    assert list(tmp_path.iterdir()) == []


def test_path_error_without_a_path_uses_the_one_the_error_carries():
    e = path_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "nosuch.yaml"))
    assert str(e) == "nosuch.yaml: No such file or directory (FileNotFoundError). Fix: check the path."


def test_an_input_error_in_a_notebook_cell_shows_its_message_before_the_traceback():
    try:
        raise InputError("x.json: not valid JSON. Fix: regenerate it.")
    except InputError as e:
        lines = e._render_traceback_()  # what IPython, and so papermill's error, shows
    assert lines[0] == "InputError: x.json: not valid JSON. Fix: regenerate it."
    assert any("Traceback (most recent call last)" in line for line in lines[1:])


def test_progress_lines_and_durations():
    assert progress_line("run 1/2, iterations", 1200, 5000, eta_seconds=725) == (
        "run 1/2, iterations: 1200/5000 (24 %), ETA 12m05s")
    assert progress_line("epochs", 0, 8, eta_seconds=None).endswith("ETA unknown")
    assert [clock(s) for s in (0, 45.4, 60, 3599, 7380)] == ["0s", "45s", "1m00s", "59m59s", "2h03m"]

