"""The main job of ``make demo``: embedded benchmark -> baselines notebook -> report.

It generates (or reuses) the benchmark, checks that a labeled fold and its unlabeled complement share
one class distribution, draws the data and the two views a mean teacher sees, then executes
``notebooks/baselines.ipynb`` with papermill at the same scale (Supervised and the pseudo-label
mean teacher on one fold), which trains into ``{out}/results`` and renders the tables and figures.
"""

from __future__ import annotations

import os
from pathlib import Path

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
from ssodlib.io import repository_folder, write_json
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


def run_baselines_notebook(*, scale: str, out: Path, data_root: str | os.PathLike | None = None,
                           progress: bool = True) -> Path:
    """Execute the baselines notebook into ``{out}/notebooks`` (never over the source); results in
    ``{out}/results``, tables and figures in ``{out}/results/reports``."""
    import papermill

    source = notebooks_dir() / "baselines.ipynb"
    executed = out / "notebooks" / f"baselines-{scale}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    params = dict(TABLE="all", SCALE=scale, FOLDS=[1], COLUMNS=DEMO_COLUMNS[scale],
                  RESULTS_DIR=str((out / "results").resolve()),
                  DATA_ROOT=str(Path(data_root).resolve()) if data_root else None)
    papermill.execute_notebook(str(source), str(executed), parameters=params, kernel_name="python3",
                               progress_bar=progress, cwd=str(source.parent))
    return executed


def run_demo(*, scale: str, out: Path, data_root: str | os.PathLike | None = None, progress: bool = True,
             fold: int = 1, percent: float = 5.0, with_baselines: bool = True) -> dict:
    paths = ensure_benchmark(scale, data_root=data_root, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
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
        print(f"executed notebook: {executed}\ntables and figures: {reports}")
    return summary


def _table(stats: dict, kl: float, *, fold: int, percent: float) -> str:
    rows = [f"{'set':<10}{'images':>8}{'boxes':>8}{'boxes/img':>10}{'head/tail':>10}{'small':>7}{'medium':>7}{'large':>7}"]
    for name, s in stats.items():
        a = s.area_fractions
        rows.append(f"{name:<10}{s.num_images:>8}{s.num_boxes:>8}{s.boxes_per_image_mean:>10.2f}"
                    f"{s.head_to_tail_ratio:>10.1f}{a['small']:>7.2f}{a['medium']:>7.2f}{a['large']:>7.2f}")
    rows.append(f"class-distribution KL(labeled || unlabeled), fold {fold} at {percent:g}%: {kl:.4f}")
    return "\n".join(rows)


__all__ = ["notebooks_dir", "plot_views", "run_baselines_notebook", "run_demo"]
