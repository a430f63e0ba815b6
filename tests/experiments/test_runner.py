"""The runner on real smoke training: every run once, one run of an array, resume, and the shared burn-in."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass

import pytest
import torch

from ssodlib.engine.checkpoint import load_checkpoint
from ssodlib.config import config_dict
from ssodlib.engine.trainer import Trainer
from ssodlib.experiments import ResultsStore, plan, run_plan
from ssodlib.experiments.plan import with_runtime
from ssodlib.experiments.runner import _runtime_config
from ssodlib.io import InputError

TINY = """
paper: tiny
items:
  - id: t1
    rows:
      - {name: Sup, method: supervised}
      - {name: PL, method: pseudo_label, burn_in_from: Sup}
    columns:
      - {name: "10%", set: {percent: 10}}
    scales:
      smoke:
        folds: [1]
        set: {iterations: 4, burn_in: 2, eval_every: 100, checkpoint_every: 100, log_every: 1, threads: 1}
"""


@pytest.fixture(scope="module")
def papers(tmp_path_factory):
    root = tmp_path_factory.mktemp("papers")
    (root / "tiny").mkdir()
    (root / "tiny" / "experiments.yaml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSOD_PAPERS_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def specs(papers):
    specs = plan("tiny", "t1", "smoke")
    assert [s.row for s in specs] == ["Sup", "PL"]
    return specs


@pytest.fixture(scope="module")
def data_root(smoke_benchmark) -> str:
    return str(smoke_benchmark.root.parent)


def _record_steps(mp: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Wraps ``Trainer._step``: returns the list that gets (run folder name, iteration) of every step."""
    seen: list[tuple[str, int]] = []
    original = Trainer._step

    def step(self, state, *args):
        seen.append((self.out_dir.name, state.iteration))
        return original(self, state, *args)

    mp.setattr(Trainer, "_step", step)
    return seen


@dataclass
class Done:
    store: ResultsStore
    records: list[dict]
    seen: list[tuple[str, int]]


@pytest.fixture(scope="module")
def done(specs, data_root, tmp_path_factory) -> Done:
    """The whole plan run once into a store (supervised first, then pseudo-label from its burn-in)."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        seen = _record_steps(mp)
        records = run_plan(specs, results_dir=root, data_root=data_root, device="cpu", progress=False)
    return Done(ResultsStore(root), records, seen)


def _checkpoint(store: ResultsStore, key: str) -> dict:
    return load_checkpoint(store.run_dir(key) / "checkpoint.pt")


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_plan_runs_every_run_and_writes_its_record(specs, done):
    sup, pl = specs
    store = done.store
    assert store.keys() == sorted([sup.key, pl.key])
    assert [r["key"] for r in done.records] == [sup.key, pl.key]
    for spec, record in zip(specs, done.records):
        assert store.get(spec.key) == record
        assert (record["paper"], record["item"], record["row"], record["column"], record["fold"]) == (
            "tiny", "t1", spec.row, "10%", 1)
        # the planned run, without runtime settings (as JSON: tuples are lists)
        assert record["config"] == json.loads(json.dumps(config_dict(spec.config)))
        assert record["config"]["data_root"] is None and record["config"]["snapshots"] == []
        assert record["run_dir"] == f"runs/{spec.key}" and record["device"] == "cpu"
        assert 0.0 <= record["final"]["student"]["ap"] <= 1.0
        final_json = json.loads((store.run_dir(spec.key) / "final.json").read_text())
        assert final_json["iteration"] == 4 and final_json["student"] == record["final"]["student"]
        assert _checkpoint(store, spec.key)["iteration"] == 4
    assert "teacher" in done.records[1]["final"] and "teacher" not in done.records[0]["final"]
    # every run keeps its burn-in snapshot; the pseudo-label run started from the supervised one's
    assert load_checkpoint(store.run_dir(sup.key) / "checkpoint-2.pt")["iteration"] == 2
    assert done.records[0]["started_from"] is None
    assert done.records[1]["started_from"] == str(store.run_dir(sup.key) / "checkpoint-2.pt")
    assert done.seen == [(sup.key, 0), (sup.key, 1), (sup.key, 2), (sup.key, 3), (pl.key, 2), (pl.key, 3)]
    # provenance: the code's commit, the machine, when it finished
    from datetime import datetime

    from ssodlib.experiments.provenance import code_commit

    for record in done.records:
        assert record["commit"] == code_commit() and record["commit"]  # a commit id (+dirty when edited)
        assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"] and record["machine"]["torch"]
        assert datetime.fromisoformat(record["finished"]).tzinfo is not None


def test_a_record_names_the_commit_the_run_started_with(specs, data_root, tmp_path, monkeypatch):
    """A checkout that moves on while a run trains does not change the commit its record names."""
    import ssodlib.experiments.runner as runner

    commits = iter(["started-here", "checked-out-later"])
    monkeypatch.setattr(runner, "code_commit", lambda: next(commits))
    record = run_plan(specs[:1], results_dir=tmp_path, data_root=data_root, device="cpu", progress=False)[0]
    assert record["commit"] == "started-here"


def test_a_second_call_trains_nothing(specs, done, data_root, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Trainer, "__init__", no_training)
    monkeypatch.setattr(Trainer, "run", no_training)
    again = run_plan(specs, results_dir=done.store.root, data_root=data_root, device="cpu", progress=False)
    assert again == done.records
    assert run_plan(specs, run_index=1, results_dir=done.store.root, progress=False) == [done.records[1]]


def test_run_index_minus_one_runs_none_and_out_of_range_is_an_input_error(specs, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("nothing should train"))
    assert run_plan(specs, run_index=-1, results_dir=tmp_path, progress=False) == []
    assert not (tmp_path / "records").exists()
    for index in (2, -2):
        with pytest.raises(InputError, match=f"RUN_INDEX {index} is out of range: this plan has 2 runs"):
            run_plan(specs, run_index=index, results_dir=tmp_path, progress=False)


def test_one_run_of_the_array_without_its_source_matches_the_run_from_the_shared_burn_in(
        papers, specs, done, data_root, tmp_path, monkeypatch):
    sup, pl = specs
    # data_root given as a plan override (not a run_plan argument) is kept; the keys do not change
    with_root = plan("tiny", "t1", "smoke", overrides={"data_root": data_root})
    assert [s.key for s in with_root] == [sup.key, pl.key]
    seen = _record_steps(monkeypatch)
    records = run_plan(with_root, run_index=1, results_dir=tmp_path, device="cpu", progress=False)
    store = ResultsStore(tmp_path)
    assert store.keys() == [pl.key] and [r["key"] for r in records] == [pl.key]
    assert records[0]["started_from"] is None and seen == [(pl.key, i) for i in range(4)]  # its own burn-in
    assert json.loads((store.run_dir(pl.key) / "config.json").read_text())["data_root"] == data_root
    own, shared = _checkpoint(store, pl.key), _checkpoint(done.store, pl.key)
    _same_state(own["student"], shared["student"])
    _same_state(own["teacher"], shared["teacher"])
    assert records[0]["final"] == done.records[1]["final"]


def test_a_run_folder_with_a_checkpoint_but_no_record_resumes(specs, done, data_root, tmp_path, monkeypatch):
    sup = specs[0]
    store = ResultsStore(tmp_path)
    config = with_runtime(sup.config, data_root=data_root, device="cpu")
    Trainer(config, out_dir=store.run_dir(sup.key), progress=False).run(stop_at=2)  # a job killed at iteration 2
    assert _checkpoint(store, sup.key)["iteration"] == 2 and not store.is_complete(sup.key)
    seen = _record_steps(monkeypatch)
    (record,) = run_plan(specs, run_index=0, results_dir=tmp_path, data_root=data_root, device="cpu",
                         progress=False)
    assert seen == [(sup.key, 2), (sup.key, 3)]
    assert store.is_complete(sup.key) and record["started_from"] is None
    _same_state(_checkpoint(store, sup.key)["student"], _checkpoint(done.store, sup.key)["student"])


def test_the_burn_in_snapshot_is_used_only_for_a_fresh_run_folder(specs, tmp_path):
    sup, pl = specs
    store = ResultsStore(tmp_path)
    out = store.run_dir(pl.key)
    runtime = lambda: _runtime_config(pl, store=store, out=out, data_root="/data", device="cpu")
    assert runtime().init_from is None  # the source has not reached its burn-in
    assert runtime().snapshots == (2,) and runtime().data_root == "/data"
    snapshot = store.run_dir(sup.key) / "checkpoint-2.pt"
    snapshot.parent.mkdir(parents=True)
    snapshot.touch()
    assert runtime().init_from == str(snapshot)
    assert _runtime_config(sup, store=store, out=store.run_dir(sup.key), data_root=None,
                           device="cpu").init_from is None  # a run without a declared source
    out.mkdir(parents=True)
    (out / "checkpoint.pt").touch()
    assert runtime().init_from is None  # a started run resumes its own checkpoint


def test_a_run_killed_after_starting_from_the_burn_in_snapshot_keeps_it_as_started_from(
        specs, done, data_root, tmp_path):
    sup, pl = specs
    store = ResultsStore(tmp_path)
    shutil.copytree(done.store.run_dir(sup.key), store.run_dir(sup.key))  # the source's folder, no record
    snapshot = store.run_dir(sup.key) / "checkpoint-2.pt"
    out = store.run_dir(pl.key)
    config = _runtime_config(pl, store=store, out=out, data_root=data_root, device="cpu")
    assert config.init_from == str(snapshot)
    Trainer(config, out_dir=out, progress=False).run(stop_at=3)  # the job is killed at iteration 3
    (record,) = run_plan(specs, run_index=1, results_dir=tmp_path, data_root=data_root, device="cpu",
                         progress=False)
    assert record["started_from"] == str(snapshot)
    assert json.loads((out / "config.json").read_text())["init_from"] == str(snapshot)
    assert record["final"] == done.records[1]["final"]


def test_a_started_run_keeps_the_snapshot_its_config_json_records(specs, tmp_path):
    pl = specs[1]
    store = ResultsStore(tmp_path)
    out = store.run_dir(pl.key)
    out.mkdir(parents=True)
    (out / "checkpoint.pt").touch()
    (out / "config.json").write_text(json.dumps({"init_from": "/r/runs/sup/checkpoint-2.pt"}))
    config = _runtime_config(pl, store=store, out=out, data_root=None, device="cpu")
    assert config.init_from == "/r/runs/sup/checkpoint-2.pt"


def test_a_results_folder_under_a_regular_file_fails_before_any_training(specs, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("nothing should train"))
    (tmp_path / "somefile").write_text("")
    with pytest.raises(InputError, match="somefile is a regular file, not a folder"):
        run_plan(specs, results_dir=tmp_path / "somefile" / "results", progress=False)


def test_two_jobs_side_by_side_give_the_runs_of_one_at_a_time(specs, done, data_root, tmp_path):
    """--jobs 2: each run in its own process, one thread each; the pseudo-label run waits for the
    supervised twin's burn-in snapshot and starts from it, and every weight matches the sequential runs."""
    records = run_plan(specs, results_dir=tmp_path, data_root=data_root, device="cpu", progress=False, jobs=2)
    store = ResultsStore(tmp_path)
    sup, pl = specs
    assert [r["key"] for r in records] == [sup.key, pl.key]
    assert records[1]["started_from"] == str(store.run_dir(sup.key) / "checkpoint-2.pt")
    for spec in specs:
        _same_state(_checkpoint(store, spec.key)["student"], _checkpoint(done.store, spec.key)["student"])
        assert store.get(spec.key)["final"] == done.store.get(spec.key)["final"]
        assert json.loads((store.run_dir(spec.key) / "config.json").read_text())["threads"] == 1
    assert run_plan(specs, results_dir=tmp_path, data_root=data_root, jobs=2) == records  # all done: nothing runs


def test_a_failing_side_by_side_run_names_its_log(specs, data_root, tmp_path):
    broken = [dataclasses.replace(specs[0], config=dataclasses.replace(specs[0].config, labeled_ann="/no/such.json",
                                                                        val_ann="/no/val.json", image_dir="/no"))]
    with pytest.raises(RuntimeError, match=r"failed with exit status 2; its log: .*train.log"):
        run_plan(broken + [specs[1]], results_dir=tmp_path, data_root=data_root, device="cpu", jobs=2)
    log = (ResultsStore(tmp_path).run_dir(broken[0].key) / "train.log").read_text()
    assert "ssod: error:" in log and "/no/such.json" in log


def test_jobs_must_be_a_positive_number(specs, tmp_path):
    with pytest.raises(InputError, match="jobs=0 is not a positive number of runs"):
        run_plan(specs, results_dir=tmp_path, jobs=0)
