"""Run the planned runs into a results store: skip what is done, resume what was interrupted, start a
semi-supervised run from its supervised twin's burn-in snapshot when that exists (the result is
bit-identical to a run doing its own burn-in; ``tests/engine/test_trainer.py`` checks it)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ssodlib.engine.run_folder import CHECKPOINT_NAME, CONFIG_NAME, FINAL_NAME
from ssodlib.config import config_dict
from ssodlib.engine.trainer import Trainer
from ssodlib.experiments.plan import RunSpec, with_runtime
from ssodlib.experiments.provenance import code_commit, machine
from ssodlib.experiments.shipped import refuse_shipped
from ssodlib.experiments.store import ResultsStore
from ssodlib.io import InputError, read_json, write_json


def run_plan(specs: list[RunSpec], *, run_index: int | None = None, results_dir: str | os.PathLike | None = None,
             data_root: str | None = None, device: str | None = None, processes: int = 1,
             progress: bool = True, jobs: int = 1) -> list[dict[str, Any]]:
    """Run every missing run in turn (``run_index=None``), only run ``run_index`` (an array task), or
    none (``-1``); ``jobs > 1`` runs that many side by side, the cores split between them
    (:func:`run_side_by_side`). Returns the records of the runs it was asked for."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InputError(f"jobs={jobs!r} is not a positive number of runs. Fix: 1 (one run at a time) or more.")
    store = ResultsStore(results_dir)
    refuse_shipped(store.root)
    if run_index is None:
        chosen = specs
    elif run_index == -1:
        chosen = []
    elif 0 <= run_index < len(specs):
        chosen = [specs[run_index]]
    else:
        raise InputError(f"RUN_INDEX {run_index} is out of range: this plan has {len(specs)} runs "
                         f"(0..{len(specs) - 1}). Fix: a run's index from the plan's lines, None for every missing "
                         "run, or -1 for none.")
    if not all(store.is_complete(s.key) for s in chosen):
        store.check_writable()
    if jobs > 1 and processes == 1 and len(chosen) > 1:
        return run_side_by_side(chosen, store=store, data_root=data_root, device=device, jobs=jobs)
    return [run_one(s, store=store, data_root=data_root, device=device, processes=processes, progress=progress)
            for s in chosen]


def run_one(spec: RunSpec, *, store: ResultsStore, data_root: str | None = None, device: str | None = None,
            processes: int = 1, progress: bool = True) -> dict[str, Any]:
    """Train one run unless its record exists; write the record atomically when it has finished."""
    done = store.get(spec.key)
    if done is not None:
        return done
    check_sources(spec, store)
    out = store.run_dir(spec.key)
    config = _runtime_config(spec, store=store, out=out, data_root=data_root, device=device)
    tic, commit = time.perf_counter(), code_commit()  # the code the run starts with, not whatever is checked out later
    if processes > 1:
        final = _launch_ranks(config, out=out, processes=processes)
    else:
        final = Trainer(config, out_dir=out, resume=True, progress=progress).run()
    return _put_record(spec, config, final, store=store, out=out, seconds=time.perf_counter() - tic,
                       processes=processes, commit=commit)


def _put_record(spec: RunSpec, config, final: dict[str, Any], *, store: ResultsStore, out: Path, seconds: float,
                processes: int, commit: str | None) -> dict[str, Any]:
    record = {"paper": spec.paper, "item": spec.item, "row": spec.row, "column": spec.column, "fold": spec.fold,
              "config": config_dict(spec.config), "final": final, "run_dir": str(out.relative_to(store.root)),
              "wall_seconds": seconds, "processes": processes, "host": platform.node(),
              "torch": torch.__version__, "device": config.device,
              # the intra-op threads the run had (its config's, else what OMP_NUM_THREADS or the cores gave)
              "threads": config.threads or torch.get_num_threads(),
              "commit": commit, "machine": machine(config.device),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "started_from": config.init_from and str(config.init_from)}
    store.put(spec.key, record)
    return store.get(spec.key)  # as a later call returns it: with its key, tuples as lists


# -- runs side by side ----------------------------------------------------------------------------------
SIDE_BY_SIDE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # spinning OpenMP threads would steal the other runs' cores
POLL_SECONDS = 1.0


@dataclass
class _Job:
    spec: RunSpec
    config: Any
    out: Path
    process: subprocess.Popen
    started: float
    commit: str | None


def run_side_by_side(specs: list[RunSpec], *, store: ResultsStore, data_root: str | None = None,
                     device: str | None = None, jobs: int = 2, threads: int | None = None) -> list[dict[str, Any]]:
    """Run ``specs`` as ``jobs`` processes at a time (``ssod train``), each with ``threads`` intra-op
    threads (default: the cores split evenly) and OpenMP threads that sleep instead of spinning when
    idle, so that N runs on N cores take about the time of one. A semi-supervised run whose supervised
    twin is still to run or running waits for the twin's burn-in snapshot, then starts from it. A
    failing run stops the others at their next iteration (checkpointed; they resume next time)."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    pending = [s for s in specs if store.get(s.key) is None]
    running: list[_Job] = []
    try:
        while pending or running:
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                _finish(job, store)
            while len(running) < jobs and (spec := _next_ready(pending, running, store)) is not None:
                pending.remove(spec)
                running.append(_start(spec, store=store, data_root=data_root, device=device, threads=threads))
            time.sleep(POLL_SECONDS if running else 0)
    except BaseException:
        for job in running:  # SIGTERM: the trainer checkpoints and stops (resumable)
            job.process.terminate()
        for job in running:
            job.process.wait()
        raise
    return [store.get(s.key) for s in specs]


def _next_ready(pending: list[RunSpec], running: list[_Job], store: ResultsStore) -> RunSpec | None:
    """The first pending run that need not wait: its extra teachers' burn-in snapshots exist and the
    runs it ensembles with have finished (or are neither pending nor running: then the run fails with
    the fix), and it has no burn-in twin, the twin's snapshot exists, or the twin is neither pending
    nor running (then the run does its own burn-in)."""
    waiting_for = {s.key for s in pending} | {j.spec.key for j in running}
    for spec in pending:
        snapshot = f"checkpoint-{spec.config.burn_in}.pt"
        if any(k in waiting_for and not (store.run_dir(k) / snapshot).is_file() for k in spec.ensemble_teachers):
            continue
        if any(k in waiting_for for k in spec.ensemble_with):  # a record appears when the run has finished
            continue
        twin = spec.burn_in_from
        if twin is None or twin not in waiting_for:
            return spec
        if (store.run_dir(twin) / f"checkpoint-{spec.config.burn_in}.pt").is_file():
            return spec
    return None


def check_sources(spec: RunSpec, store: ResultsStore) -> None:
    """Before training: the burn-in snapshots of the run's extra teachers and the records of the runs it
    ensembles with exist (else the run would fail at its first semi-supervised step or at its end)."""
    snapshot = f"checkpoint-{spec.config.burn_in}.pt"
    missing = [str(store.run_dir(k) / snapshot) for k in spec.ensemble_teachers
               if not (store.run_dir(k) / snapshot).is_file()]
    missing += [str(store.record_path(k)) for k in spec.ensemble_with if not store.is_complete(k)]
    if missing:
        raise InputError(f"run {spec.key} ({spec.describe()}) needs {missing} (its ensemble's teachers' burn-in "
                         "snapshots, its ensemble's finished runs). Fix: run the whole table (ssod experiments run "
                         "orders those runs first), or those runs' indices before this one.")


def _start(spec: RunSpec, *, store: ResultsStore, data_root: str | None, device: str | None, threads: int) -> _Job:
    check_sources(spec, store)
    out = store.run_dir(spec.key)
    out.mkdir(parents=True, exist_ok=True)
    config = with_runtime(_runtime_config(spec, store=store, out=out, data_root=data_root, device=device),
                          threads=threads)
    cfg_file = write_json(out / "launch-config.json", config_dict(config), indent=2)
    env = {**os.environ, **SIDE_BY_SIDE_ENV, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    with open(out / "train.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "ssodlib", "--quiet", "train", "--config", str(cfg_file),
                                    "--out", str(out), "--resume"], stdout=log, stderr=subprocess.STDOUT, env=env)
    return _Job(spec, config, out, process, time.perf_counter(), code_commit())


def _finish(job: _Job, store: ResultsStore) -> None:
    if job.process.returncode != 0:
        raise RuntimeError(f"run {job.spec.key} ({job.spec.describe()}) failed with exit status "
                           f"{job.process.returncode}; its log: {job.out / 'train.log'}. Fix: read the log's last "
                           "lines; the other runs were stopped at a checkpoint and resume on the next call.")
    final = _read_final(job.out)
    _put_record(job.spec, job.config, final, store=store, out=job.out, seconds=time.perf_counter() - job.started,
                processes=1, commit=job.commit)


def _runtime_config(spec: RunSpec, *, store: ResultsStore, out: Path, data_root: str | None, device: str | None):
    """Where to read data, which device, and whether to start from the burn-in snapshot of the run
    ``spec.burn_in_from`` (only for a fresh run folder: a started run resumes its own checkpoint, and
    keeps the snapshot it began from, if any, as its ``init_from``)."""
    c = spec.config
    runtime: dict[str, Any] = {"data_root": data_root if data_root is not None else c.data_root,
                               "device": device or c.device, "snapshots": tuple(sorted({*c.snapshots, c.burn_in}))}
    snapshot = store.run_dir(spec.burn_in_from) / f"checkpoint-{c.burn_in}.pt" if spec.burn_in_from else None
    if (out / CHECKPOINT_NAME).is_file():
        runtime["init_from"] = _began_from(out)
    elif snapshot is not None and snapshot.is_file():
        runtime["init_from"] = str(snapshot)
    return with_runtime(c, **runtime)


def _began_from(out: Path) -> str | None:
    """The snapshot a started run began from, as its config.json recorded it: the resumed run's record
    keeps that provenance (``started_from``), and a resume changes no field of the run's configuration."""
    began = out / CONFIG_NAME
    return read_json(began, what="run configuration").get("init_from") if began.is_file() else None


def _launch_ranks(config, *, out: Path, processes: int) -> dict[str, Any]:
    """``processes`` ranks of ``ssod train``: through srun inside a SLURM allocation, torchrun otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = write_json(out / "launch-config.json", config_dict(config), indent=2)
    train = ["-m", "ssodlib", "--quiet", "train", "--config", str(cfg_file), "--out", str(out), "--resume"]
    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        cmd = ["srun", f"--ntasks={processes}", "--kill-on-bad-exit=1", sys.executable, *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *train]
    subprocess.run(cmd, check=True)
    return _read_final(out)


def _read_final(out: Path) -> dict[str, Any]:
    """The final metrics a run in another process wrote, as ``Trainer.run`` returns them."""
    final = read_json(out / FINAL_NAME, what="final metrics of the launched run")
    return {k: v for k, v in final.items() if k != "iteration"}
