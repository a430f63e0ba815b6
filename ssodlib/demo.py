"""The main job of ``make demo``: embedded benchmark -> baselines notebook -> report.

It generates (or reuses) the benchmark, checks that a labeled fold and its unlabeled complement share
one class distribution, draws the data and the two views a mean teacher sees, then executes
``notebooks/baselines.ipynb`` with papermill at the same scale (Supervised and the pseudo-label
mean teacher on one fold), which trains into ``{out}/results`` and renders the tables and figures.

Everything it prints also goes to ``{out}/demo.log``: the data table, the pretrained trunk's epochs
and, while the notebook trains, one progress line per run (iteration, ETA) read from the results
store; the kernel's own output stays in the executed notebook ``{out}/notebooks/baselines-{scale}.ipynb``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, TextIO

import torch

from ssodlib.data.coco import load_coco, read_image
from ssodlib.data.synth import ensure_benchmark
from ssodlib.data.transforms import (
    StrongViewConfig,
    WeakViewConfig,
    clip_boxes,
    teacher_student_views,
    transform_boxes,
)
from ssodlib.engine.run_folder import read_metrics
from ssodlib.experiments.plan import RunSpec, plan, with_runtime
from ssodlib.experiments.store import ResultsStore
from ssodlib.io import InputError, clock, progress_line, repository_folder, write_json
from ssodlib.report.dataset import class_distribution_kl, dataset_stats, plot_dataset, plot_samples


def plot_views(image: torch.Tensor, boxes: torch.Tensor, out_path: Path, *, seed: int = 0) -> Path:
    """Original, teacher (weak) and student (strong, with geometric jitter) views, each with the
    ground-truth boxes mapped through the view's matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    g = torch.Generator().manual_seed(seed)
    short = min(image.shape[1:])
    views = teacher_student_views(image, weak=WeakViewConfig(scales=(short,), flip_prob=1.0),
                                  strong=StrongViewConfig(geometric=True), g=g)
    panels = [("original", image, boxes), ("teacher: weak view", views.weak, transform_boxes(boxes, views.weak_matrix)),
              ("student: strong view", views.strong, transform_boxes(boxes, views.strong_matrix))]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (title, img, bxs) in zip(axes, panels):
        bxs, keep = clip_boxes(bxs, height=img.shape[1], width=img.shape[2])
        ax.imshow(img.permute(1, 2, 0).numpy())
        for x1, y1, x2, y2 in bxs[keep].tolist():
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def notebooks_dir() -> Path:
    """``$SSOD_NOTEBOOKS_DIR``, else the repository's ``notebooks/`` folder."""
    return repository_folder("notebooks", env="SSOD_NOTEBOOKS_DIR")


# the demo's slice of the baselines notebook at each scale: one fold, one labeled fraction
DEMO_COLUMNS = {"smoke": ["10%"], "mini": ["5%"]}
LOG_NAME = "demo.log"
# the kernel's progress bars redraw at most once a minute: each redraw stays in the executed notebook
KERNEL_ENV = {"TQDM_MININTERVAL": "60"}
# the supervised run and the pseudo-label run side by side, one core each: the second starts from the
# first's burn-in snapshot as soon as it exists (on 2 cores one run gains only ~1.3x from a second thread;
# docs/results/performance.md)
DEMO_JOBS = 2


def run_baselines_notebook(*, scale: str, out: Path, data_root: str | os.PathLike | None = None,
                           progress: bool = True) -> Path:
    """Execute the baselines notebook into ``{out}/notebooks`` (never over the source); results in
    ``{out}/results``, tables and figures in ``{out}/results/reports``."""
    import papermill

    source = notebooks_dir() / "baselines.ipynb"
    executed = out / "notebooks" / f"baselines-{scale}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    params = dict(TABLE="all", SCALE=scale, FOLDS=[1], COLUMNS=DEMO_COLUMNS[scale], SEEDS=[0], JOBS=DEMO_JOBS,
                  RESULTS_DIR=str((out / "results").resolve()),
                  DATA_ROOT=str(Path(data_root).resolve()) if data_root else None)
    specs = plan("baselines", params["TABLE"], scale, folds=params["FOLDS"], columns=params["COLUMNS"],
                 seeds=params["SEEDS"])
    if progress:
        _build_trunks(specs, data_root=params["DATA_ROOT"])
    watch = RunWatch(specs, ResultsStore(params["RESULTS_DIR"]))
    with _environment(KERNEL_ENV), watch if progress else contextlib.nullcontext():
        try:
            papermill.execute_notebook(str(source), str(executed), parameters=params, kernel_name="python3",
                                       progress_bar=False, cwd=str(source.parent))
        except papermill.PapermillExecutionError as e:
            known = _kernel_error(e, executed)
            if known is None:
                raise
            raise known from e
    return executed


def _build_trunks(specs: list[RunSpec], *, data_root: str | None) -> None:
    """Build the pretrained trunk the runs need here, where its progress lines reach the terminal;
    the notebook's runs then find it cached."""
    from ssodlib.models.build import pretrained_trunk

    for spec in specs:
        pretrained_trunk(with_runtime(spec.config, data_root=data_root), progress=True)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment the notebook kernel inherits (a user's own setting wins)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _kernel_error(e: Any, executed: Path) -> Exception | None:
    """The kernel's InputError or TrainingDiverged as the same error here, naming the executed notebook,
    so that ``ssod demo`` ends with one ``ssod: error:`` line and that error's exit status."""
    from ssodlib.engine.trainer import TrainingDiverged

    kind = {"InputError": InputError, "TrainingDiverged": TrainingDiverged}.get(e.ename)
    return kind(f"{executed}, cell In [{e.exec_count}]: {e.evalue}") if kind else None


class RunWatch:
    """While the notebook trains, every ``every`` seconds a line for each run whose state changed, from
    what the results store shows: starting, its iteration with an ETA, finished."""

    def __init__(self, specs: list[RunSpec], store: ResultsStore, *, every: float = 30.0) -> None:
        self.specs, self.store, self.every = specs, store, every
        self._said: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RunWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the runs that finished since the last look

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def poll(self) -> list[str]:
        """Print and return the lines that changed since the last poll."""
        new = []
        for index, spec in enumerate(self.specs):
            line = self.line(index, spec)
            if line is not None and self._said.get(spec.key) != line:
                self._said[spec.key] = line
                print(line, flush=True)
                new.append(line)
        return new

    def line(self, index: int, spec: RunSpec) -> str | None:
        """The run's state, or None before it started (or while its log is mid-write)."""
        name = f"demo run {index + 1}/{len(self.specs)} ({spec.row}, {spec.column}, fold {spec.fold})"
        record = self.store.get(spec.key)
        if record is not None:
            return f"{name}: finished in {clock(record.get('wall_seconds', 0))}"
        try:
            train = [r for r in read_metrics(self.store.run_dir(spec.key)) if r.get("kind") == "train"]
        except ValueError:  # a line being appended right now: read it next time
            return None
        if not train:
            return f"{name}: starting" if self.store.run_dir(spec.key).is_dir() else None
        recent = [r["sec_per_iter"] for r in train[-10:]]
        done, total = train[-1]["iteration"], spec.config.iterations
        eta = (total - done) * sum(recent) / len(recent)
        return progress_line(f"{name}, iterations", done, total, eta_seconds=eta)


class _Tee:
    """A stream writing to two: the terminal and the demo's log."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno: the terminal's
        return getattr(self.streams[0], name)


@contextlib.contextmanager
def _logged(path: Path) -> Iterator[None]:
    """What the demo prints (its watcher thread's lines included) goes to ``path`` as well."""
    with open(path, "a") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        print(f"== ssod demo at {time.strftime('%Y-%m-%d %H:%M:%S')}; this log: {path}", flush=True)
        yield


def run_demo(*, scale: str, out: Path, data_root: str | os.PathLike | None = None, progress: bool = True,
             fold: int = 1, percent: float = 5.0, with_baselines: bool = True) -> dict:
    """The data figures and summary, then (``with_baselines``) the baselines notebook; everything
    printed is logged in ``{out}/demo.log``."""
    out.mkdir(parents=True, exist_ok=True)
    with _logged(out / LOG_NAME):
        return _run_demo(scale=scale, out=out, data_root=data_root, progress=progress, fold=fold, percent=percent,
                         with_baselines=with_baselines)


def _run_demo(*, scale: str, out: Path, data_root: str | os.PathLike | None, progress: bool, fold: int,
              percent: float, with_baselines: bool) -> dict:
    paths = ensure_benchmark(scale, data_root=data_root, progress=progress)
    train = load_coco(paths.annotations("train"))
    val = load_coco(paths.annotations("val"))
    labeled = load_coco(paths.fold(fold=fold, percent=percent), categories=train.cat_ids)
    unlabeled = load_coco(paths.fold(fold=fold, percent=percent, unlabeled=True), categories=train.cat_ids)
    stats = {name: dataset_stats(a) for name, a in
             (("train", train), ("val", val), ("labeled", labeled), ("unlabeled", unlabeled))}
    kl = class_distribution_kl(labeled.class_counts().astype(float), unlabeled.class_counts().astype(float))
    plot_dataset(stats["labeled"], out, compare=stats["unlabeled"])
    plot_samples(train, paths.image_dir, out / "samples.png")
    plot_views(read_image(paths.image_dir / train.images[0]["file_name"]), torch.from_numpy(train.boxes[0]),
               out / "views.png")
    summary = {
        "benchmark": str(paths.root),
        "scale": scale,
        "fold": fold,
        "percent": percent,
        "kl_labeled_vs_unlabeled_classes": kl,
        "stats": {k: s.to_dict() for k, s in stats.items()},
    }
    write_json(out / "summary.json", summary, indent=2)
    print(_table(stats, kl, fold=fold, percent=percent))
    print(f"data figures and summary.json in {out}")
    if with_baselines:
        data_root = data_root if data_root is not None else paths.root.parent
        executed = run_baselines_notebook(scale=scale, out=out, data_root=data_root, progress=progress)
        reports = out / "results" / "reports" / "baselines" / scale
        print((reports / "table1.csv").read_text())
        print(f"executed notebook: {executed}\ntables and figures: {reports}\nthis log: {out / LOG_NAME}")
    return summary


def _table(stats: dict, kl: float, *, fold: int, percent: float) -> str:
    rows = [f"{'set':<10}{'images':>8}{'boxes':>8}{'boxes/img':>10}{'head/tail':>10}{'small':>7}{'medium':>7}{'large':>7}"]
    for name, s in stats.items():
        a = s.area_fractions
        rows.append(f"{name:<10}{s.num_images:>8}{s.num_boxes:>8}{s.boxes_per_image_mean:>10.2f}"
                    f"{s.head_to_tail_ratio:>10.1f}{a['small']:>7.2f}{a['medium']:>7.2f}{a['large']:>7.2f}")
    rows.append(f"class-distribution KL(labeled || unlabeled), fold {fold} at {percent:g}%: {kl:.4f}")
    return "\n".join(rows)


__all__ = ["LOG_NAME", "RunWatch", "notebooks_dir", "plot_views", "run_baselines_notebook", "run_demo"]
