"""Wall time of a mini-scale pseudo_label run, split into training steps, evaluation, checkpoints and
the rest (data loading, logging, start-up), for this tree against another git revision (a ratio).

    python benchmarks/mini_run.py --snapshot runs/sup-mini/checkpoint-2000.pt            # vs HEAD~1
    python benchmarks/mini_run.py --snapshot ... --ref 1a2b3c4 --iterations 500 --threads 2

The run continues the supervised burn-in snapshot (fold 1, 5 %, seed 0: the mini preset's
protocol) for ``--iterations`` semi-supervised iterations (the preset: 3000) with evaluations every
``--eval-every``. Each revision runs in its own process, from a checkout of that revision under a
temporary folder, in turn (``--rounds`` times, A B A B ...), so the figures share the machine's state.
The split is measured by wrapping the trainer's ``_step``, ``evaluate`` and ``_save`` in the child,
which both revisions have. Make the snapshot with
``ssod train --method supervised --scale mini --percent 5 --fold 1 --out runs/sup-mini``
(its ``snapshots`` keep ``checkpoint-2000.pt``), or pass ``--make-snapshot``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ssodlib.engine import trainer as T
spent = {"step": 0.0, "evaluate": 0.0, "save": 0.0}
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
    return wrapper
T.Trainer._step = timed("step", T.Trainer._step)
T.Trainer.evaluate = timed("evaluate", T.Trainer.evaluate)
T.Trainer._save = timed("save", T.Trainer._save)
import importlib, os
# revisions before ssodlib/config.py kept it in the engine; ask by file, since an editable install would
# serve a module the revision lacks from the working tree
config_module = "ssodlib.config" if os.path.exists(os.path.join(sys.argv[1], "ssodlib", "config.py")) else "ssodlib.engine.config"
train_config = importlib.import_module(config_module).train_config
assert T.__file__.startswith(sys.argv[1]), (T.__file__, sys.argv[1])
overrides = json.loads(sys.argv[3])
start = time.perf_counter()
final = T.Trainer(train_config("mini", **overrides), out_dir=sys.argv[2], progress=False).run()
total = time.perf_counter() - start
model = "teacher" if "teacher" in final else "student"
print(json.dumps({"total": total, **spent, "ap": final[model]["ap"], "model": model}))
"""


def checkout(ref: str, where: Path) -> Path:
    """The package of ``ref`` in ``where`` (``git archive``: no work tree of the repository is touched)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "ssodlib"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def run_once(source: Path, out: Path, overrides: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out), json.dumps(overrides)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the run from {source} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snapshot_for(source: Path, snapshot: Path, tmp: Path) -> Path:
    """The burn-in snapshot as ``source``'s code reads it: revisions before detector options (no
    ``ssodlib/config.py``) read the Faster R-CNN knobs as top-level configuration fields."""
    if (source / "ssodlib" / "config.py").is_file():
        return snapshot
    import torch

    ckpt = torch.load(snapshot, map_location="cpu", weights_only=True)
    config = ckpt["config"]
    config.update(config.pop("detector_options", {}))
    config.pop("detector", None)
    legacy = tmp / "legacy-snapshot" / snapshot.name
    legacy.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, legacy)
    return legacy


def split(figures: dict) -> dict:
    rest = figures["total"] - figures["step"] - figures["evaluate"] - figures["save"]
    return {"training steps": figures["step"], "evaluation": figures["evaluate"], "checkpoints": figures["save"],
            "data, logging, start-up": rest, "total": figures["total"]}


def make_snapshot(data_root: str | None, threads: int, out: Path) -> Path:
    overrides = {"method": "supervised", "iterations": 2000, "lr_steps": [4600], "threads": threads,
                 "eval_every": 2000, **({"data_root": data_root} if data_root else {})}
    run_once(REPO, out, overrides, threads)
    return out / "checkpoint-2000.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshot", type=Path, help="checkpoint-2000.pt of the supervised mini run (fold 1, 5 %%)")
    p.add_argument("--make-snapshot", action="store_true", help="train the burn-in first (about 10 minutes)")
    p.add_argument("--ref", default="HEAD~1", help="the git revision to compare with")
    p.add_argument("--iterations", type=int, default=3000, help="semi-supervised iterations after the burn-in")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        snapshot = make_snapshot(args.data_root, args.threads, tmp / "burn-in") if args.make_snapshot else args.snapshot
        if snapshot is None or not Path(snapshot).is_file():
            raise SystemExit(f"{snapshot}: no burn-in snapshot. Fix: pass --snapshot FILE or --make-snapshot.")
        overrides = {"method": "pseudo_label", "init_from": str(Path(snapshot).resolve()), "threads": args.threads,
                     "iterations": 2000 + args.iterations, "eval_every": args.eval_every,
                     "lr_steps": [4600] if 2000 + args.iterations > 4600 else [],
                     **({"data_root": args.data_root} if args.data_root else {})}
        (tmp / "ref").mkdir()
        sources = {"this tree": REPO, args.ref: checkout(args.ref, tmp / "ref")}
        results: dict[str, list[dict]] = {name: [] for name in sources}
        aps: dict[str, list[str]] = {name: [] for name in sources}
        for r in range(args.rounds):
            for k, (name, source) in enumerate(sources.items()):
                own = {**overrides, "init_from": str(snapshot_for(source, Path(snapshot).resolve(), tmp))}
                figures = run_once(source, tmp / f"run-{k}-{r}", own, args.threads)
                results[name].append(split(figures))
                aps[name].append(f"{100 * figures['ap']:.2f} ({figures['model']})")
                print(f"round {r + 1}: {name} {figures['total']:.1f} s, AP {aps[name][-1]}", file=sys.stderr)
    print(f"mini pseudo_label run: {args.iterations} iterations after the burn-in, evaluations every "
          f"{args.eval_every}, {args.threads} threads, {args.rounds} round(s), medians in seconds")
    names = list(sources)
    print("AP50:95 at the end: " + "; ".join(f"{n}: {', '.join(aps[n])}" for n in names))
    print(f"{'part':26s} {names[0]:>12s} {names[1]:>12s} {'ref/this':>8s}")
    for part in results[names[0]][0]:
        a = sorted(x[part] for x in results[names[0]])[len(results[names[0]]) // 2]
        b = sorted(x[part] for x in results[names[1]])[len(results[names[1]]) // 2]
        print(f"{part:26s} {a:12.1f} {b:12.1f} {b / a if a else float('nan'):7.2f}x")


if __name__ == "__main__":
    main()
