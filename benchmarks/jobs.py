"""Runs that share the cores: N independent mini runs one at a time (all cores each) against side by
side (``--jobs N``: the cores split, OpenMP threads that sleep when idle), and side by side with
OpenMP's default spinning wait policy, as ratios of wall time.

    python benchmarks/jobs.py                   # 2 supervised mini runs of 300 iterations, folds 1 and 2
    python benchmarks/jobs.py --iterations 1000 --jobs 2

Each configuration runs the same two runs into a fresh results store through ``run_plan`` (the
code path of ``ssod experiments run``). ``alone`` is one of the runs by itself with the threads a
side-by-side job gets: N runs on N cores finish in about the time of one when the side-by-side
figure is near it (ratio near 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from ssodlib.experiments import plan, run_plan, runner
from ssodlib.experiments.plan import with_runtime


def timed_plan(specs, *, jobs: int, root: Path, data_root: str | None, wait_policy: str | None) -> float:
    saved = dict(runner.SIDE_BY_SIDE_ENV)
    if wait_policy is not None:
        runner.SIDE_BY_SIDE_ENV["OMP_WAIT_POLICY"] = wait_policy
    start = time.perf_counter()
    try:
        run_plan(specs, results_dir=root, data_root=data_root, device="cpu", progress=False, jobs=jobs)
    finally:
        runner.SIDE_BY_SIDE_ENV.clear()
        runner.SIDE_BY_SIDE_ENV.update(saved)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    folds = list(range(1, args.jobs + 1))
    overrides = {"iterations": args.iterations, "eval_every": args.iterations, "eval_images": 100,
                 "checkpoint_every": args.iterations, "lr_steps": [], "snapshots": []}
    specs = plan("baselines", "table1", "mini", folds=folds, columns=["5%"], overrides=overrides)
    specs = [s for s in specs if s.config.method == "supervised"][: args.jobs]
    threads_each = max(1, cores // args.jobs)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seq_specs = [dataclasses.replace(s, config=with_runtime(s.config, threads=cores)) for s in specs]
        figures["one at a time, all cores each"] = timed_plan(seq_specs, jobs=1, root=tmp / "seq",
                                                              data_root=args.data_root, wait_policy=None)
        figures["side by side, passive wait"] = timed_plan(specs, jobs=args.jobs, root=tmp / "passive",
                                                           data_root=args.data_root, wait_policy=None)
        figures["side by side, spinning wait"] = timed_plan(specs, jobs=args.jobs, root=tmp / "active",
                                                            data_root=args.data_root, wait_policy="ACTIVE")
        alone = dataclasses.replace(specs[0], config=with_runtime(specs[0].config, threads=threads_each))
        figures["alone, one job's threads"] = timed_plan([alone], jobs=1, root=tmp / "alone",
                                                         data_root=args.data_root, wait_policy=None)
    base = figures["one at a time, all cores each"]
    print(f"{len(specs)} supervised mini runs of {args.iterations} iterations, {cores} cores, "
          f"{threads_each} thread(s) per side-by-side job")
    for name, seconds in figures.items():
        print(f"  {name:34s} {seconds:8.1f} s   {seconds / base:5.2f}x of one at a time")
    ratio = figures["side by side, passive wait"] / figures["alone, one job's threads"]
    print(f"  side by side (passive) / alone: {ratio:.2f}")


if __name__ == "__main__":
    main()
