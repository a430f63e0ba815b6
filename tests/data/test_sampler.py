"""MixedBatchSampler: ratio, epoch coverage, reshuffling, seeding, resuming and sharding."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch.distributed as dist

from ssodlib.data.sampler import MixedBatchSampler, ShardedStream


def _sampler(**kwargs) -> MixedBatchSampler:
    args = dict(num_labeled=10, num_unlabeled=40, labeled_per_batch=1, unlabeled_per_batch=4, seed=0,
                rank=0, world_size=1)
    args.update(kwargs)
    return MixedBatchSampler(**args)


def _take(sampler: MixedBatchSampler, n: int) -> list[list[int]]:
    return list(islice(iter(sampler), n))


def test_batch_layout():
    for batch in _take(_sampler(), 50):
        assert len(batch) == 5
        assert 0 <= batch[0] < 10
        assert all(10 <= i < 50 for i in batch[1:])


def test_epoch_covers_each_index_once():
    batches = _take(_sampler(), 20)
    first, second = batches[:10], batches[10:]
    for epoch in (first, second):
        assert sorted(b[0] for b in epoch) == list(range(10))
        assert sorted(i for b in epoch for i in b[1:]) == list(range(10, 50))


def test_infinite_and_reshuffled():
    batches = _take(_sampler(), 1000)
    assert len(batches) == 1000
    assert all(len(b) == 5 for b in batches)
    labeled = [b[0] for b in batches]
    epochs = [labeled[i:i + 10] for i in range(0, 1000, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert len({tuple(e) for e in epochs}) > 90  # fresh permutation per epoch
    unlabeled = [tuple(i for b in batches[k:k + 10] for i in b[1:]) for k in (0, 10)]
    assert unlabeled[0] != unlabeled[1]


def test_seeded():
    assert _take(_sampler(seed=3), 30) == _take(_sampler(seed=3), 30)
    assert _take(_sampler(seed=3), 30) != _take(_sampler(seed=4), 30)
    # labeled and unlabeled streams are not the same permutation
    s = _sampler(num_unlabeled=10, unlabeled_per_batch=1)
    batches = _take(s, 10)
    assert [b[0] for b in batches] != [b[1] - 10 for b in batches]


@pytest.mark.parametrize("k", [0, 1, 7, 10, 23, 137])
def test_resume(k):
    full = _take(_sampler(seed=5), k + 25)
    resumed = _take(_sampler(seed=5, start_batch=k), 25)
    assert resumed == full[k:]
    assert _sampler(seed=5).batch(k) == full[k]


def test_sharding_disjoint_up_to_padding():
    ranks = [_sampler(unlabeled_per_batch=2, seed=1, rank=r, world_size=3) for r in range(3)]
    # labeled: ceil(10 / 3) = 4 per rank per epoch, padded by 4 * 3 - 10 = 2 wrap-around duplicates
    labeled = [[b[0] for b in _take(s, 4)] for s in ranks]
    # unlabeled: ceil(40 / 3) = 14 per rank = 7 batches of 2, padded by 14 * 3 - 40 = 2
    unlabeled = [[i for b in _take(s, 7) for i in b[1:]] for s in ranks]
    for per_rank, lo, n, size in ((labeled, 0, 4, 10), (unlabeled, 10, 14, 40)):
        assert all(len(p) == n and len(set(p)) == n for p in per_rank)  # no repeat within a rank
        counts = Counter(i for p in per_rank for i in p)
        assert set(counts) == set(range(lo, lo + size))
        assert sorted(counts.values()) == [1] * (size - 2) + [2, 2]
        for dup in (i for i, c in counts.items() if c == 2):
            assert sum(dup in p for p in per_rank) == 2  # duplicates come from two different ranks
    # the next epoch again covers everything
    labeled2 = Counter(b[0] for s in ranks for b in _take(_sampler(unlabeled_per_batch=2, seed=1, rank=s.rank,
                                                                    world_size=3, start_batch=4), 4))
    assert set(labeled2) == set(range(10))


def test_sharding_exact_division_has_no_duplicates():
    ranks = [_sampler(num_labeled=12, seed=2, rank=r, world_size=4) for r in range(4)]
    labeled = [b[0] for s in ranks for b in _take(s, 3)]
    assert sorted(labeled) == list(range(12))


def test_one_source_only():
    batches = _take(_sampler(num_labeled=0, labeled_per_batch=0, unlabeled_per_batch=4), 10)
    assert sorted(i for b in batches for i in b) == list(range(0, 40))
    batches = _take(_sampler(num_unlabeled=0, unlabeled_per_batch=0, labeled_per_batch=2), 5)
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_errors():
    with pytest.raises(ValueError):
        _sampler(num_labeled=0)
    with pytest.raises(ValueError):
        _sampler(num_unlabeled=0)
    with pytest.raises(ValueError):
        _sampler(rank=3, world_size=3)
    with pytest.raises(ValueError):
        _sampler(rank=-1, world_size=3)
    with pytest.raises(ValueError):
        _sampler(labeled_per_batch=0, unlabeled_per_batch=0)
    with pytest.raises(ValueError):
        _sampler(labeled_per_batch=-1)
    with pytest.raises(ValueError):
        ShardedStream(size=0, seed=0, rank=0, world_size=1)


def test_defaults_without_distributed():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    s = MixedBatchSampler(num_labeled=10, num_unlabeled=40)
    assert (s.rank, s.world_size) == (0, 1)
    # rank 1 of 2 is accepted when given explicitly
    s = MixedBatchSampler(num_labeled=10, num_unlabeled=40, rank=1, world_size=2)
    assert (s.rank, s.world_size) == (1, 2)


def test_defaults_from_torch_distributed(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        s = MixedBatchSampler(num_labeled=10, num_unlabeled=40, labeled_per_batch=1, unlabeled_per_batch=4)
        assert (s.rank, s.world_size) == (0, 1)
        assert _take(s, 10) == _take(_sampler(), 10)
        # explicit arguments win over the process group
        s = MixedBatchSampler(num_labeled=10, num_unlabeled=40, rank=1, world_size=2)
        assert (s.rank, s.world_size) == (1, 2)
        with pytest.raises(ValueError):
            MixedBatchSampler(num_labeled=10, num_unlabeled=40, rank=1)  # world size 1 from the group
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()
