"""The results store: one record per finished run, written atomically, checked against its file name."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile

import pytest

from ssodlib.experiments.store import ResultsStore, default_results_dir
from ssodlib.io import InputError


def test_put_get_is_complete_and_keys_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.keys() == [] and store.get("a-1") is None and not store.is_complete("a-1")
    path = store.put("b-2", {"final": {"student": {"ap": 0.25}}, "fold": 2})
    store.put("a-1", {"final": {}, "fold": 1})
    assert path == tmp_path / "records" / "b-2.json"
    assert store.keys() == ["a-1", "b-2"]
    assert store.is_complete("a-1") and store.is_complete("b-2") and not store.is_complete("c-3")
    assert store.get("b-2") == {"final": {"student": {"ap": 0.25}}, "fold": 2, "key": "b-2"}
    assert store.run_dir("b-2") == tmp_path / "runs" / "b-2"
    store.put("b-2", {"fold": 5})  # a rewrite replaces the record
    assert store.get("b-2") == {"fold": 5, "key": "b-2"}


def test_the_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SSOD_RESULTS_DIR", str(tmp_path / "r"))
    assert default_results_dir() == tmp_path / "r" and ResultsStore().root == tmp_path / "r"


def test_a_record_under_another_key_names_the_file(tmp_path):
    store = ResultsStore(tmp_path)
    store.put("a-1", {"fold": 1})
    wrong = store.record_path("x-9")
    os.replace(store.record_path("a-1"), wrong)  # e.g. a file copied under the wrong name
    with pytest.raises(InputError) as e:
        store.get("x-9")
    assert str(wrong) in str(e.value) and "'a-1'" in str(e.value)


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.put("a-1", {"fold": 1})
    store.put("a-1", {"fold": 2})
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["a-1.json"]

    def killed(src, dst):  # the process dies between writing the new file and moving it into place
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.put("a-1", {"fold": 3})
    with pytest.raises(KeyboardInterrupt):
        store.put("b-2", {"fold": 3})
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["a-1.json"]  # no temp file, no half record
    assert json.loads(store.record_path("a-1").read_text()) == {"fold": 2, "key": "a-1"}
    assert store.keys() == ["a-1"] and not store.is_complete("b-2")


def test_a_results_folder_under_a_regular_file_is_an_input_error_naming_it(tmp_path):
    (tmp_path / "somefile").write_text("")
    store = ResultsStore(tmp_path / "somefile" / "results")
    with pytest.raises(InputError, match=r"Not a directory .*Fix: .*somefile is a regular file") as e:
        store.check_writable()
    assert str(e.value).startswith(str(store.root / "runs"))


def test_an_unwritable_results_folder_is_an_input_error_naming_it(tmp_path, monkeypatch):
    def denied(*args, dir=None, **kwargs):  # what a read-only folder answers (root is never denied)
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    with pytest.raises(InputError, match="Permission denied .*Fix: choose a folder you can write to") as e:
        ResultsStore(tmp_path).check_writable()
    assert str(e.value).startswith(str(tmp_path / "runs"))


def test_records_are_readable_by_the_group_and_others_with_umask_022(tmp_path):
    before = os.umask(0o022)
    try:
        path = ResultsStore(tmp_path).put("a-1", {"fold": 1})
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
