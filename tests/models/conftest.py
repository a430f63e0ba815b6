"""The model tests run single-threaded: their tensors are small, and two intra-op threads slow down
many times over when other processes share the two cores."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
