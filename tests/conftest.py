"""Shared fixtures. The smoke benchmark is generated once per test session (about a second)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def smoke_benchmark(tmp_path_factory):
    """The embedded benchmark at smoke scale (seed 0), read-only for tests."""
    from ssodlib.data.synth import generate, synth_config

    return generate(synth_config("smoke"), root=tmp_path_factory.mktemp("data") / "synth-smoke", seed=0,
                    workers=1, progress=False)


@pytest.fixture
def one_thread():
    """One intra-op thread: small tensors gain nothing from two, and two slow down many times over
    when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run only where CUDA is present; elsewhere they are reported as skipped, with why."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
