"""BucketBatchSampler: coverage, limits, similar lengths, DDP shards, exact resume."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch
from mambaserve.training.bucketing import BucketBatchSampler


def _durations(n: int = 1000, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.8, 12.0), 3) for _ in range(n)]


def test_every_item_exactly_once_per_epoch_and_limits_hold() -> None:
    durs = _durations()
    sampler = BucketBatchSampler(durs, max_batch_seconds=60.0, max_batch_items=16, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(durs))), f"epoch {epoch}"
        assert len(batches) == len(sampler.epoch_batches(epoch))
        for b in batches:
            assert 1 <= len(b) <= 16
            assert len(b) * max(durs[i] for i in b) <= 60.0 + 1e-9  # padded seconds
    # Different epochs shuffle differently; the same epoch is reproducible.
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)
    assert BucketBatchSampler(durs, max_batch_seconds=60.0, max_batch_items=16, seed=1).epoch_batches(2) == (
        sampler.epoch_batches(2)
    )


def test_batches_group_similar_durations() -> None:
    durs = _durations()
    sampler = BucketBatchSampler(durs, max_batch_seconds=80.0, num_buckets=10, seed=0)
    batches = list(sampler)
    padded = sum(len(b) * max(durs[i] for i in b) for b in batches)
    assert sum(durs) / padded > 0.85, "bucketing should keep padding small"
    # Versus random batches of the same sizes: far more padding.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(durs))
    sizes = [len(b) for b in batches]
    random_batches = np.split(perm, np.cumsum(sizes)[:-1])
    random_padded = sum(len(b) * max(durs[i] for i in b) for b in random_batches)
    assert padded < 0.8 * random_padded
    spreads = [max(durs[i] for i in b) - min(durs[i] for i in b) for b in batches if len(b) > 1]
    assert np.median(spreads) < 1.5  # buckets are ~1.1 s wide here


def test_items_only_limit_and_overlong_items(caplog: pytest.LogCaptureFixture) -> None:
    durs = [1.0] * 10 + [100.0]
    with caplog.at_level(logging.WARNING):
        sampler = BucketBatchSampler(durs, max_batch_seconds=30.0, shuffle=False)
    assert "1 items are longer than max_batch_seconds" in caplog.text
    batches = list(sampler)
    assert [10] in batches  # the 100 s item alone
    assert sorted(i for b in batches for i in b) == list(range(11))
    only_items = list(
        BucketBatchSampler(durs, max_batch_seconds=None, max_batch_items=4, num_buckets=1, shuffle=False)
    )
    assert [len(b) for b in only_items] == [4, 4, 3]


def test_ddp_shards_disjoint_and_equal_length() -> None:
    durs = _durations(997, seed=3)
    world = 4
    for epoch in (0, 5):
        shards = []
        for rank in range(world):
            s = BucketBatchSampler(durs, max_batch_seconds=50.0, seed=7, num_replicas=world, rank=rank)
            s.set_epoch(epoch)
            shards.append(list(s))
        lengths = {len(sh) for sh in shards}
        assert len(lengths) == 1, lengths
        sets = [{i for b in sh for i in b} for sh in shards]
        for a in range(world):
            for b in range(a + 1, world):
                assert not sets[a] & sets[b]
        # Together the ranks cover the global batch list except its < world leftover batches.
        global_batches = BucketBatchSampler(durs, max_batch_seconds=50.0, seed=7).global_batches(epoch)
        per_rank = len(global_batches) // world
        assert len(shards[0]) == per_rank
        kept = global_batches[: per_rank * world]
        assert set().union(*sets) == {i for b in kept for i in b}
        assert len(global_batches) - len(kept) < world


def test_resume_mid_epoch_yields_exactly_the_remaining_batches() -> None:
    durs = _durations(500, seed=5)
    kwargs = {"max_batch_seconds": 45.0, "seed": 11}
    reference = BucketBatchSampler(durs, **kwargs)
    full_epoch0, full_epoch1 = list(reference), list(reference)
    assert full_epoch0 != full_epoch1

    run = BucketBatchSampler(durs, **kwargs)
    it = iter(run)
    consumed = [next(it) for _ in range(7)]
    state = run.state_dict()
    assert state["epoch"] == 0 and state["position"] == 7
    assert consumed == full_epoch0[:7]

    resumed = BucketBatchSampler(durs, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the DistributedSampler habit must not rewind a resumed epoch
    assert list(resumed) == full_epoch0[7:]
    assert list(resumed) == full_epoch1  # and it carries on into the next epoch
    assert resumed.state_dict()["epoch"] == 2

    # A state taken right after the last batch of an epoch resumes at the next epoch.
    end = BucketBatchSampler(durs, **kwargs)
    end.load_state_dict({"epoch": 0, "position": len(full_epoch0)})
    assert list(end) == full_epoch1

    # The state survives torch.save / load (what a checkpoint does) and drives a DataLoader.
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    again = BucketBatchSampler(durs, **kwargs)
    again.load_state_dict(torch.load(buf))
    loader = torch.utils.data.DataLoader(list(range(len(durs))), batch_sampler=again, collate_fn=list)
    assert list(loader) == full_epoch0[7:]


def test_resume_checks_settings_and_rejects_bad_arguments() -> None:
    durs = _durations(50)
    state = BucketBatchSampler(durs, max_batch_seconds=30.0, seed=1).state_dict()
    with pytest.raises(ValueError, match="saved seed=1"):
        BucketBatchSampler(durs, max_batch_seconds=30.0, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="saved num_items=50"):
        BucketBatchSampler(durs[:40], max_batch_seconds=30.0, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks 'position'"):
        BucketBatchSampler(durs, max_batch_seconds=30.0).load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="max_batch_seconds and/or max_batch_items"):
        BucketBatchSampler(durs, max_batch_seconds=None)
    with pytest.raises(ValueError, match="rank < num_replicas"):
        BucketBatchSampler(durs, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        BucketBatchSampler([1.0, float("nan")])
