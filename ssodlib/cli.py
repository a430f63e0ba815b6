"""The ``ssod`` command line: ``ssod data ...``, ``ssod evaluate``, ``ssod demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ssodlib.io import InputError, path_error, read_json, write_json, write_text

EXIT_STATUSES = """exit status:
  0  done
  2  bad input or a file-system error (one 'ssod: error:' line naming the file and the fix)
  3  stopped on request (signal or stop file) after writing a checkpoint: --resume continues
  4  training diverged (a loss became NaN or infinite)"""


def _cmd_synth(args: argparse.Namespace) -> None:
    from ssodlib.data.synth import default_data_root, generate, synth_config

    overrides = {k: v for k, v in (("num_train", args.num_train), ("num_val", args.num_val)) if v is not None}
    root = args.out or default_data_root() / f"synth-{args.scale}"
    paths = generate(synth_config(args.scale, **overrides), root=root, seed=args.seed, workers=args.workers,
                     progress=not args.quiet, force=args.force)
    print(f"embedded benchmark ({args.scale}, seed {args.seed}) at {paths.root}")


def _cmd_split(args: argparse.Namespace) -> None:
    from ssodlib.data.splits import write_coco_splits

    written = write_coco_splits(args.ann_file, out_dir=args.out_dir, folds=args.folds, percents=args.percents)
    print(f"wrote {len(written)} files to {args.out_dir}")


def _cmd_voc(args: argparse.Namespace) -> None:
    from ssodlib.data.voc import voc_to_coco

    for spec in args.sets:
        year, _, image_set = spec.partition(":")
        if not year or not image_set:
            raise InputError(f"--sets entry {spec!r} is not YEAR:IMAGE_SET. Fix: e.g. 2007:trainval.")
        data = voc_to_coco(Path(args.devkit), year=year, image_set=image_set)
        out = write_json(Path(args.out_dir) / f"voc{year[2:]}_{image_set}.json", data)
        print(f"{out}: {len(data['images'])} images, {len(data['annotations'])} boxes")


def _cmd_coco20(args: argparse.Namespace) -> None:
    from ssodlib.data.voc import coco_to_voc_classes

    data = coco_to_voc_classes(read_json(args.ann_file, what="COCO annotation file"), source=str(args.ann_file))
    write_json(args.out, data)
    print(f"{args.out}: {len(data['images'])} images of the 20 VOC classes")


def _cmd_merge(args: argparse.Namespace) -> None:
    from ssodlib.data.voc import merge_coco

    parts = []
    for spec in args.parts:
        path, _, prefix = spec.partition("=")
        parts.append((read_json(path, what="COCO annotation file"), prefix))
    data = merge_coco(parts, sources=[spec.partition("=")[0] for spec in args.parts])
    write_json(args.out, data)
    print(f"{args.out}: {len(data['images'])} images, {len(data['annotations'])} boxes from {len(parts)} files")


def _cmd_image_list(args: argparse.Namespace) -> None:
    from ssodlib.data.voc import from_image_info, image_list_to_coco

    if args.images:
        data = image_list_to_coco(Path(args.images), relative_to=Path(args.relative_to) if args.relative_to else None)
    else:
        data = from_image_info(Path(args.image_info))
    write_json(args.out, data)
    print(f"{args.out}: {len(data['images'])} unlabeled images")


def _cmd_report(args: argparse.Namespace) -> None:
    from ssodlib.report.dataset import load_stats, plot_dataset, plot_samples

    ann, stats = load_stats(args.ann_file)
    plot_dataset(stats, args.out)
    write_json(Path(args.out) / "stats.json", stats.to_dict(), indent=2)
    if args.image_dir:
        plot_samples(ann, args.image_dir, Path(args.out) / "samples.png")
    print(f"report of {args.ann_file} in {args.out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ssodlib.evaluation import evaluate_coco

    detections = read_json(args.detections, what="detections file")
    metrics = evaluate_coco(args.gt, detections).to_dict()
    if args.out:
        write_json(args.out, metrics, indent=2)
    print("  ".join(f"{k}={metrics[k]:.4f}" for k in ("ap", "ap50", "ap75") if metrics[k] is not None))


def _cmd_train(args: argparse.Namespace) -> None:
    from ssodlib.config import parse_overrides, train_config
    from ssodlib.engine.trainer import train

    overrides = _read_config(args.config) if args.config else {}
    args.scale = overrides.pop("scale", args.scale)
    overrides.update(parse_overrides(args.set or []))
    for key in ("method", "percent", "fold", "seed", "data_root", "device", "amp"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = str(value) if key == "data_root" else value
    config = train_config(args.scale, **overrides)
    out = args.out or Path("runs") / f"{config.method}-{config.scale}-{config.percent:g}pct-fold{config.fold}"
    final = train(config, out_dir=out, resume=args.resume, progress=not args.quiet)
    for model, m in final.items():
        print(f"{model}: AP {100 * m['ap']:.2f}  AP50 {100 * m['ap50']:.2f}  AP75 {100 * m['ap75']:.2f}")
    print(f"run folder: {out}")


def _read_config(path: Path) -> dict:
    """The TrainConfig fields of a YAML / JSON file (``--config``)."""
    if not path.is_file():
        raise InputError(f"{path}: configuration file not found. Fix: check the path given to --config.")
    try:
        overrides = yaml.safe_load(path.read_bytes()) or {}  # bytes: PyYAML reports bad encodings itself
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())  # one line: PyYAML spreads its message over several
        raise InputError(f"{path}: not valid YAML ({problem}). Fix: write KEY: VALUE lines.") from e
    if not isinstance(overrides, dict):
        raise InputError(f"{path}: not a mapping of TrainConfig fields. Fix: write KEY: VALUE lines.")
    return overrides


def _cmd_eval(args: argparse.Namespace) -> None:
    from ssodlib.evaluation.detector_eval import evaluate_detector
    from ssodlib.experiments.inspection import load_run_detector

    model, config, files = load_run_detector(args.checkpoint, model=args.model)
    ann_file = args.ann_file or files.val_ann
    image_dir = args.image_dir or files.val_images
    metrics = evaluate_detector(model, ann_file=ann_file, image_dir=image_dir, test_scale=config.test_scale,
                                max_size=config.max_size, progress=not args.quiet,
                                pascal_voc=config.dataset == "voc").to_dict()
    if args.errors is not None:
        metrics["errors"] = _box_errors(model, config, files, score_thresh=args.errors, num_images=args.error_images)
    if args.quality:
        metrics["quality"] = _quality(model, config, files, num_images=args.error_images)
    if args.out:
        write_json(args.out, metrics, indent=2)
    print(f"{args.model}: AP {100 * metrics['ap']:.2f}  AP50 {100 * metrics['ap50']:.2f}  AP75 {100 * metrics['ap75']:.2f}")
    if args.quality:
        quality = dict(metrics["quality"])
        print(f"localisation quality v on {quality.pop('images_from')}: "
              + "  ".join(f"{k} {v:.3f}" for k, v in quality.items()))
    if args.errors is not None:
        errors = dict(metrics["errors"])
        source = errors.pop("images_from")
        print(f"boxes >= {args.errors:g} on {source}: " + "  ".join(f"{k} {v:.3f}" for k, v in errors.items()))


def _box_errors(model, config, files, *, score_thresh: float, num_images: int) -> dict[str, float | str]:
    """The breakdown on unlabeled training images, or on validation images for a run without them
    (``images_from`` says which, with the annotation file)."""
    from ssodlib.experiments.inspection import detect_images, error_breakdown

    dataset, indices, source = _inspection_sample(files, num_images)
    images = detect_images(model, dataset, indices, test_scale=config.test_scale, max_size=config.max_size)
    return {"images_from": source, **error_breakdown(images, score_thresh=score_thresh)}


def _quality(model, config, files, *, num_images: int) -> dict[str, float | str]:
    """The side head's quality v against the pseudo-label thresholds, on unlabeled training images."""
    from ssodlib.experiments.inspection import quality_summary

    dataset, indices, source = _inspection_sample(files, num_images)
    summary = quality_summary(model, dataset, indices, test_scale=config.test_scale, max_size=config.max_size)
    return {"images_from": source, **summary}


def _inspection_sample(files, num_images: int):
    """``num_images`` unlabeled training images spread evenly (validation images for a run without
    them): the data set, the indices and which images they are, with the annotation file."""
    from ssodlib.experiments.inspection import inspection_images, spread_indices

    dataset, ann_file = inspection_images(files, unlabeled=True)
    kind = "unlabeled images" if ann_file == files.unlabeled_ann else "validation images"
    return dataset, spread_indices(len(dataset), num_images), f"{kind} ({ann_file})"


def _cmd_compare(args: argparse.Namespace) -> None:
    import pandas as pd

    from ssodlib.report import figures
    from ssodlib.report.runs import eval_curves, per_class_ap, pseudo_label_summary

    curves = eval_curves(args.runs, model=args.model, metric=args.metric)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(f"{args.metric} (%) of the {args.model} (the student where a run has no teacher); "
              f"lead = run - {curves.columns[0]}")
        print(curves.to_string(float_format="{:.2f}".format))
        if args.per_class:
            print(f"\nAP (%) per class at each run's last evaluation, {args.model} as above")
            print(per_class_ap(args.runs, model=args.model).to_string(float_format="{:.2f}".format))
        labels = pseudo_label_summary(args.runs)
        if not labels.empty:
            print("\npseudo labels, averaged over training")
            print(labels.to_string(index=False))
    if args.csv:
        write_text(args.csv, curves.round(4).reset_index().to_csv(index=False))
    if args.plot:
        figures.eval_curves(curves, metric=args.metric, path=args.plot)
        print(f"plot: {args.plot}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from ssodlib.demo import run_demo

    run_demo(scale=args.scale, out=Path(args.out), data_root=args.data_root, progress=not args.quiet)


def _experiment_args(args: argparse.Namespace) -> dict:
    from ssodlib.config import parse_overrides

    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    columns = args.columns.split(",") if args.columns else None
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    return dict(folds=folds, columns=columns, overrides=parse_overrides(args.set or []), seeds=seeds)


def _cmd_experiments_list(args: argparse.Namespace) -> None:
    from ssodlib.experiments import plan
    from ssodlib.experiments.store import ResultsStore

    specs = plan(args.paper, args.table, args.scale, **_experiment_args(args))
    if args.count:
        print(len(specs))
        return
    store = ResultsStore(args.results_dir)
    for i, s in enumerate(specs):
        print(f"{i}\t{'done' if store.is_complete(s.key) else 'todo'}\t{s.describe()}")


def _cmd_experiments_run(args: argparse.Namespace) -> None:
    from ssodlib.experiments import plan, run_plan

    specs = plan(args.paper, args.table, args.scale, **_experiment_args(args))
    records = run_plan(specs, run_index=args.index, results_dir=args.results_dir, data_root=args.data_root,
                       device=args.device, processes=args.processes, progress=not args.quiet, jobs=args.jobs)
    print(f"{len(records)} run(s) complete in {args.results_dir or 'the default results folder'}")


def _cmd_experiments_report(args: argparse.Namespace) -> None:
    from ssodlib.experiments.plan import plan_items
    from ssodlib.report.experiments import render

    items = plan_items(args.paper, args.table, args.scale, **_experiment_args(args))
    report = render(items, paper=args.paper, scale=args.scale, results_dir=args.results_dir, out_dir=args.out,
                    shipped=not args.no_shipped)
    for name, frame in report.tables.items():
        print(f"== {name}\n{frame.to_string(index=False)}\n")
    print(f"report files in {report.out_dir}")


def _cmd_experiments_export(args: argparse.Namespace) -> None:
    from ssodlib.experiments import plan
    from ssodlib.experiments.shipped import export, shipped_dir
    from ssodlib.experiments.store import ResultsStore

    specs = plan(args.paper, args.table, args.scale, **_experiment_args(args))
    to = args.to or shipped_dir(args.paper, args.scale)
    command = f"ssod experiments export --paper {args.paper} --table {args.table} --scale {args.scale}"
    done = export(specs, store=ResultsStore(args.results_dir), to=to, command=command)
    print(f"{len(done['exported'])} record(s) exported to {to}; {len(done['missing'])} planned run(s) not finished")


def _cmd_experiments_page(args: argparse.Namespace) -> None:
    from ssodlib.report.page import write_page

    path = write_page(args.paper, scales=args.scales.split(","))
    print(f"wrote {path}")


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """Which runs: a paper's table at a scale, optionally fewer folds or columns, with overrides."""
    p.add_argument("--paper", required=True, help="a folder of papers/, e.g. baselines (a notebook's own paper)")
    p.add_argument("--table", default="all", help="a table or figure id, or all")
    p.add_argument("--scale", choices=("smoke", "mini", "paper"), default="mini")
    p.add_argument("--folds", default=None, help="comma-separated folds (default: the declared ones)")
    p.add_argument("--columns", default=None, help="comma-separated columns (default: the declared ones)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the declared ones)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a TrainConfig field of every run")
    p.add_argument("--results-dir", "--store", dest="results_dir", type=Path, default=None,
                   help="a results store (default: $SSOD_RESULTS_DIR or ./results), or a shipped one such as "
                        "papers/PAPER/results/mini (report only)")


def _add_experiment_parsers(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("experiments", help="the runs of a paper's tables and figures").add_subparsers(
        dest="experiments_command", required=True)
    for name, func, helptext in (("list", _cmd_experiments_list, "list the planned runs and whether they are done"),
                                 ("run", _cmd_experiments_run, "run missing runs (all, or one with --index)"),
                                 ("report", _cmd_experiments_report, "tables and figures from the results store"),
                                 ("export", _cmd_experiments_export,
                                  "copy finished records into papers/PAPER/results/SCALE (shipped)")):
        p = exp.add_parser(name, help=helptext)
        _add_plan_arguments(p)
        p.set_defaults(func=func)
        if name == "list":
            p.add_argument("--count", action="store_true", help="print only the number of runs")
        if name == "run":
            p.add_argument("--index", type=int, default=None, help="only this run (an array task's index)")
            p.add_argument("--data-root", default=None)
            p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
            p.add_argument("--processes", type=int, default=1, help="ranks per run (srun or torchrun)")
            p.add_argument("--jobs", type=int, default=1,
                           help="runs side by side, the cores split between them (each a process)")
        if name == "report":
            p.add_argument("--out", type=Path, default=None, help="default: RESULTS/reports/PAPER/SCALE")
            p.add_argument("--no-shipped", action="store_true",
                           help="leave out the shipped records of papers/PAPER/results/SCALE (default: under yours)")
        if name == "export":
            p.add_argument("--to", type=Path, default=None, help="default: papers/PAPER/results/SCALE")
    p = exp.add_parser("page", help="generate the measured part of papers/PAPER/README.md from its shipped records")
    p.add_argument("--paper", required=True)
    p.add_argument("--scales", default="mini", help="comma-separated scales with shipped records")
    p.set_defaults(func=_cmd_experiments_page)


def _cmd_slurm_submit(args: argparse.Namespace) -> None:
    from ssodlib.experiments.slurm import submit
    from ssodlib.experiments.store import default_results_dir

    results = args.results_dir or default_results_dir()
    runs = [int(i) for i in args.runs.split(",")] if args.runs else None
    job = submit(notebook=args.notebook, paper=args.paper, table=args.table, scale=args.scale, results_dir=results,
                 data_root=args.data_root, device=args.device, max_concurrent=args.max_concurrent,
                 partition=args.partition, time_limit=args.time, gpus_per_task=args.gpus_per_task,
                 processes=args.processes, signal_seconds=args.signal_seconds, extra_sbatch_args=args.sbatch_arg or (),
                 run_indices=runs, report=not args.no_report, **_experiment_args(args))
    print(f"array job {job.array_job_id} ({job.num_tasks} task(s)), report job {job.report_job_id or '-'}; "
          f"logs in {Path(results) / 'slurm'}, executed notebooks in {Path(results) / 'notebooks'}")


def _add_slurm_parsers(sub: argparse._SubParsersAction) -> None:
    slurm = sub.add_parser("slurm", help="run a notebook's experiments on a SLURM cluster").add_subparsers(
        dest="slurm_command", required=True)
    p = slurm.add_parser("submit", help="one job-array task per run, then the report job (see slurm/README.md)")
    p.add_argument("notebook", type=Path, help="e.g. notebooks/baselines.ipynb")
    _add_plan_arguments(p)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--runs", default=None, help="comma-separated run indices to submit (default: every run)")
    p.add_argument("--max-concurrent", type=int, default=4, help="array tasks running at once")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default=None, help="time limit per task, e.g. 2-00:00:00")
    p.add_argument("--gpus-per-task", type=int, default=0)
    p.add_argument("--processes", type=int, default=1, help="ranks (GPUs) per run, started with srun")
    p.add_argument("--signal-seconds", type=int, default=120, help="checkpoint and requeue this long before the limit")
    p.add_argument("--no-report", action="store_true", help="submit the runs only")
    p.add_argument("--sbatch-arg", action="append", metavar="=ARG",
                   help="extra sbatch option for every job, written with '=': --sbatch-arg=--qos=low")
    p.set_defaults(func=_cmd_slurm_submit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssod", description=__doc__, epilog=EXIT_STATUSES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make and convert data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="generate the embedded benchmark")
    p.add_argument("--scale", choices=("smoke", "mini"), default="mini")
    p.add_argument("--out", type=Path, help="folder (default: $SSOD_DATA_ROOT or ./data, then synth-SCALE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--num-val", type=int, default=None)
    p.add_argument("--force", action="store_true", help="regenerate even if an identical benchmark exists")
    p.set_defaults(func=_cmd_synth)

    p = data.add_parser("split-coco", help="COCO-partial folds (STAC / LabelMatch / mmdetection)")
    p.add_argument("ann_file", type=Path, help="e.g. annotations/instances_train2017.json")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--percents", type=float, nargs="+", default=[0.5, 1, 2, 5, 10])
    p.set_defaults(func=_cmd_split)

    p = data.add_parser("voc-to-coco", help="Pascal VOC XML to COCO JSON")
    p.add_argument("--devkit", type=Path, required=True, help="the VOCdevkit folder holding VOC2007/ and VOC2012/")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--sets", nargs="+", default=["2007:trainval", "2012:trainval", "2007:test"])
    p.set_defaults(func=_cmd_voc)

    p = data.add_parser("coco20cls", help="COCO images of the 20 VOC classes, as VOC categories")
    p.add_argument("ann_file", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_coco20)

    p = data.add_parser("merge", help="COCO files of the same classes as one (e.g. VOC12 trainval + COCO20cls)")
    p.add_argument("parts", nargs="+", metavar="FILE[=PREFIX]",
                   help="annotation files; PREFIX is put before each image's file_name (e.g. ../coco/train2017/)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_merge)

    p = data.add_parser("image-list", help="unlabeled image list (e.g. unlabeled2017) as COCO JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images")
    src.add_argument("--image-info", type=Path, help="COCO image_info_*.json")
    p.add_argument("--relative-to", type=Path, help="make file_name relative to this folder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_image_list)

    p = data.add_parser("report", help="statistics and figures of a COCO-format data set")
    p.add_argument("ann_file", type=Path)
    p.add_argument("--image-dir", type=Path, help="also draw sample images with their boxes")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("evaluate", help="COCO box AP of a detections JSON against ground truth")
    p.add_argument("--gt", type=Path, required=True)
    p.add_argument("--detections", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train a method (semi-supervised or supervised)")
    p.add_argument("--method", default=None, help="supervised, pseudo_label, ... (default: the scale's)")
    p.add_argument("--scale", choices=("smoke", "mini", "paper"), default="mini")
    p.add_argument("--percent", type=float, default=None, help="labeled percent of the fold")
    p.add_argument("--fold", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any TrainConfig field")
    p.add_argument("--out", type=Path, default=None, help="run folder (checkpoint, metrics.jsonl, final.json)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--config", type=Path, default=None, help="a YAML / JSON file of TrainConfig fields (then --set)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="COCO AP of a checkpoint on the validation set")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", choices=("teacher", "student"), default="teacher")
    p.add_argument("--ann-file", type=Path, default=None, help="default: the run's validation set")
    p.add_argument("--image-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--errors", type=float, default=None, metavar="SCORE",
                   help="also break down the boxes scoring >= SCORE on unlabeled training images (pseudo labels "
                        "at that threshold) into true positives, duplicates, wrong class, localization, background")
    p.add_argument("--quality", action="store_true",
                   help="also the side head's localisation quality v of the detections on unlabeled training images "
                        "against the pseudo-label thresholds (p >= t and p * v >= t per image; Rethinking PL)")
    p.add_argument("--error-images", type=int, default=150, help="unlabeled images for --errors and --quality, "
                                                                "spread evenly")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("compare", help="runs side by side: the metric at each evaluated iteration, each run's "
                                      "lead over the first, pseudo-label diagnostics")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders; the first is the baseline")
    p.add_argument("--model", choices=("teacher", "student"), default="teacher")
    p.add_argument("--metric", default="ap", help="ap, ap50, ap75, ap_small, ap_medium, ap_large")
    p.add_argument("--per-class", action="store_true", help="also each class's AP at each run's last evaluation")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--plot", type=Path, default=None, help="also draw the curves into this PNG")
    p.set_defaults(func=_cmd_compare)

    _add_experiment_parsers(sub)
    _add_slurm_parsers(sub)

    p = sub.add_parser("demo", help="the main job on the embedded benchmark")
    p.add_argument("--scale", choices=("smoke", "mini"), default="mini")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--data-root", type=Path, default=None)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ssodlib.engine.stop import Preempted, TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        return _error(e, 2)
    except OSError as e:  # a path the command could not read or write: name it, no traceback
        return _error(path_error(e), 2)
    except Preempted as e:
        print(f"ssod: {e}", file=sys.stderr)
        return 3
    except TrainingDiverged as e:
        return _error(e, 4)
    return 0


def _error(e: Exception, status: int) -> int:
    print(f"ssod: error: {e}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
