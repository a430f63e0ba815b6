"""Data-pipeline throughput at mini size: generator speed, and decode + weak + strong views.

    python benchmarks/data_pipeline.py [--images 600] [--threads 2]

Prints images/s of each stage and its ratio to decoding alone (the floor any loader pays).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ssodlib.data.synth import _generate_split, synth_config
from ssodlib.io import write_json

# torch is imported inside main(): the generator's worker processes re-import this module, and the
# benchmark must measure the generator as `ssod data synth` runs it, not torch's import time.


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    import torch

    from ssodlib.data.coco import CocoDetection
    from ssodlib.data.transforms import StrongViewConfig, WeakViewConfig, teacher_student_views, weak_view

    torch.set_num_threads(args.threads)
    cfg = synth_config("mini")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            data = _generate_split(cfg, 0, "train", args.images, root / f"w{workers}", workers, False)
            timings[workers] = args.images / (time.perf_counter() - start)
        write_json(root / "train.json", data)
        ds = CocoDetection(ann_file=root / "train.json", image_dir=root / "w1" / "images")
        g = torch.Generator().manual_seed(0)
        weak = WeakViewConfig(scales=(224, 240, 256, 272, 288), max_size=480)
        stages = {
            "decode": lambda i: ds[i],
            "decode + weak view": lambda i: weak_view(ds[i][0], weak, g),
            "decode + weak + strong (photometric)": lambda i: teacher_student_views(
                ds[i][0], weak=weak, strong=StrongViewConfig(), g=g),
            "decode + weak + strong (+ geometric)": lambda i: teacher_student_views(
                ds[i][0], weak=weak, strong=StrongViewConfig(geometric=True), g=g),
        }
        rates = {name: rate(fn, len(ds)) for name, fn in stages.items()}
    print(f"mini-size images (~256 px), {args.images} images, torch threads {args.threads}")
    for workers, r in timings.items():
        print(f"  generator, {workers} process(es): {r:8.1f} images/s  (ratio to 1 process: {r / timings[1]:.2f})")
    base = rates["decode"]
    for name, r in rates.items():
        print(f"  {name:<40}{r:8.1f} images/s  (ratio to decode: {r / base:.2f})")


if __name__ == "__main__":
    main()
