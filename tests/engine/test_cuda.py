"""The trainer on CUDA: a mean-teacher run with bf16 autocast ends with finite losses and an
evaluation (``gpu`` marker: skipped, with its reason, where there is no CUDA)."""

import math

import pytest

from ssodlib.config import train_config
from ssodlib.engine.checkpoint import load_checkpoint
from ssodlib.engine.run_folder import read_metrics
from ssodlib.engine.trainer import Trainer

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda_config(smoke_benchmark):
    return train_config("smoke", method="pseudo_label", data_root=str(smoke_benchmark.root.parent), device="cuda",
                        amp="bf16", iterations=6, burn_in=2, checkpoint_every=2, eval_every=6, log_every=1)


def test_a_bf16_mean_teacher_run_on_cuda_is_finite_and_evaluated(cuda_config, tmp_path):
    final = Trainer(cuda_config, out_dir=tmp_path / "run", progress=False).run()
    assert set(final) == {"student", "teacher"} and 0.0 <= final["teacher"]["ap"] <= 1.0
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert all(v.device.type == "cpu" for v in ckpt["student"].values())  # loaded onto the CPU by default
