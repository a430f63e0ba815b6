"""Process-group helpers: which CUDA device a process takes."""

from ssodlib.engine.distributed import local_cuda_index


def test_a_task_that_sees_one_gpu_takes_it_whatever_its_local_rank():
    # SLURM with --gpus-per-task=1 sets CUDA_VISIBLE_DEVICES to one device per task: local ranks 0..3 all see "0"
    assert [local_cuda_index(r, 1) for r in range(4)] == [0, 0, 0, 0]
    assert [local_cuda_index(r, 4) for r in range(4)] == [0, 1, 2, 3]  # torchrun on a 4-GPU node
    assert [local_cuda_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    assert local_cuda_index(3, 0) == 0  # no device visible: the caller's CUDA error is the message


def test_the_backend_is_nccl_on_cuda_gloo_on_cpu_unless_gloo_is_forced(monkeypatch):
    import pytest

    from ssodlib.engine.distributed import dist_backend

    monkeypatch.delenv("SSOD_DIST_BACKEND", raising=False)
    assert (dist_backend("cuda"), dist_backend("cpu")) == ("nccl", "gloo")
    monkeypatch.setenv("SSOD_DIST_BACKEND", "gloo")  # a one-GPU machine's 2-rank check
    assert (dist_backend("cuda"), dist_backend("cpu")) == ("gloo", "gloo")
    monkeypatch.setenv("SSOD_DIST_BACKEND", "nccl")
    assert dist_backend("cuda") == "nccl"
    with pytest.raises(ValueError, match="needs --device cuda"):
        dist_backend("cpu")
    monkeypatch.setenv("SSOD_DIST_BACKEND", "mpi")
    with pytest.raises(ValueError, match="choose nccl or gloo"):
        dist_backend("cuda")
