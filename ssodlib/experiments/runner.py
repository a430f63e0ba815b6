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
from pathlib import Path
from typing import Any

import torch

from ssodlib.engine.run_folder import CHECKPOINT_NAME
from ssodlib.config import config_dict
from ssodlib.engine.trainer import Trainer
from ssodlib.experiments.plan import RunSpec, with_runtime
from ssodlib.experiments.store import ResultsStore
from ssodlib.io import InputError, read_json, write_json


def run_plan(specs: list[RunSpec], *, run_index: int | None = None, results_dir: str | os.PathLike | None = None,
             data_root: str | None = None, device: str | None = None, processes: int = 1,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run every missing run in turn (``run_index=None``), only run ``run_index`` (an array task), or
    none (``-1``). Returns the records of the runs it was asked for."""
    store = ResultsStore(results_dir)
    if run_index is None:
        chosen = specs
    elif run_index == -1:
        chosen = []
    elif 0 <= run_index < len(specs):
        chosen = [specs[run_index]]
    else:
        raise InputError(f"RUN_INDEX {run_index} is out of range: this plan has {len(specs)} runs (0..{len(specs) - 1}).")
    return [run_one(s, store=store, data_root=data_root, device=device, processes=processes, progress=progress)
            for s in chosen]


def run_one(spec: RunSpec, *, store: ResultsStore, data_root: str | None = None, device: str | None = None,
            processes: int = 1, progress: bool = True) -> dict[str, Any]:
    """Train one run unless its record exists; write the record atomically when it has finished."""
    done = store.get(spec.key)
    if done is not None:
        return done
    out = store.run_dir(spec.key)
    config = _runtime_config(spec, store=store, out=out, data_root=data_root, device=device)
    tic = time.perf_counter()
    if processes > 1:
        final = _launch_ranks(config, out=out, processes=processes)
    else:
        final = Trainer(config, out_dir=out, resume=True, progress=progress).run()
    record = {"paper": spec.paper, "item": spec.item, "row": spec.row, "column": spec.column, "fold": spec.fold,
              "config": config_dict(spec.config), "final": final, "run_dir": str(out.relative_to(store.root)),
              "wall_seconds": time.perf_counter() - tic, "processes": processes, "host": platform.node(),
              "torch": torch.__version__, "device": config.device,
              "started_from": config.init_from and str(config.init_from)}
    store.put(spec.key, record)
    return store.get(spec.key)  # as a later call returns it: with its key, tuples as lists


def _runtime_config(spec: RunSpec, *, store: ResultsStore, out: Path, data_root: str | None, device: str | None):
    """Where to read data, which device, and whether to start from the burn-in snapshot of the run
    ``spec.burn_in_from`` (only for a fresh run folder: a started run resumes its own checkpoint)."""
    c = spec.config
    runtime: dict[str, Any] = {"data_root": data_root if data_root is not None else c.data_root,
                               "device": device or c.device, "snapshots": tuple(sorted({*c.snapshots, c.burn_in}))}
    snapshot = store.run_dir(spec.burn_in_from) / f"checkpoint-{c.burn_in}.pt" if spec.burn_in_from else None
    if snapshot is not None and snapshot.is_file() and not (out / CHECKPOINT_NAME).is_file():
        runtime["init_from"] = str(snapshot)
    return with_runtime(c, **runtime)


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
    return read_json(out / "final.json", what="final metrics of the launched run")
