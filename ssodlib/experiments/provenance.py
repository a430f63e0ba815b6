"""Where a result came from: the code's commit and the machine that ran it, recorded with each run."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch

from ssodlib.io import REPOSITORY


def code_commit() -> str | None:
    """The repository's commit, suffixed ``+dirty`` when tracked files differ from it; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "ssodlib"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """What ran the run: host, CPU, cores, the accelerator if one was used, and the library versions."""
    out: dict[str, Any] = {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
                           "python": platform.python_version(), "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
