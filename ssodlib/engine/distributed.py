"""torch.distributed set-up from torchrun's or SLURM's environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or srun
    (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID); a single process otherwise. NCCL on CUDA, gloo on CPU."""
    # SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: a batch script of a multi-task allocation is one process
    world = _env_int("WORLD_SIZE", "SLURM_STEP_NUM_TASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = dist_backend(device_type)
        if device_type == "cuda":
            torch.cuda.set_device(local_cuda_index(local, torch.cuda.device_count()))
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def dist_backend(device_type: str) -> str:
    """NCCL on CUDA, gloo on CPU; ``SSOD_DIST_BACKEND=gloo`` forces gloo on CUDA too (NCCL refuses two
    ranks on one GPU, so a one-GPU machine checks the multi-rank paths with gloo's CUDA collectives)."""
    forced = os.environ.get("SSOD_DIST_BACKEND", "").strip().lower()
    if forced and forced not in ("nccl", "gloo"):
        raise ValueError(f"SSOD_DIST_BACKEND={forced!r}: choose nccl or gloo (or unset it)")
    if forced == "nccl" and device_type != "cuda":
        raise ValueError("SSOD_DIST_BACKEND=nccl needs --device cuda (NCCL has no CPU collectives); unset it")
    return forced or ("nccl" if device_type == "cuda" else "gloo")


def local_cuda_index(local_rank: int, device_count: int) -> int:
    """The CUDA device of a process: its local rank among the devices it sees. SLURM may give each task
    one visible GPU (``CUDA_VISIBLE_DEVICES``), so the local rank can exceed the visible count: modulo."""
    return local_rank % max(device_count, 1)


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in module.state_dict().values():
            dist.broadcast(t, 0)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
