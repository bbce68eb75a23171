"""Length-bucketed batching with a seconds budget, DDP sharding and exact mid-epoch resume.

Why: padding a 2 s clip to a 15 s one wastes most of a batch's compute, and a fixed batch size
either wastes memory on short clips or overflows on long ones. Items are grouped into duration
buckets (quantiles, fixed for the run); each epoch shuffles within buckets (seeded by seed and
epoch), packs batches whose *padded* size (items × longest item) stays within `max_batch_seconds`
and/or `max_batch_items`, then shuffles the batch order.

DDP: every rank computes the same global batch list and takes every `num_replicas`-th batch,
truncated so that all ranks get the same number of batches (a rank that runs out early would hang
the others in an all-reduce). The at most `num_replicas - 1` batches cut off differ per epoch.

Resume: the sampler counts the batches it has handed out (`position`) in `epoch`;
`state_dict()` / `load_state_dict()` carry them, and the next iteration yields exactly the batches
that remained. With a DataLoader using worker processes, batches are prefetched ahead of training,
so save the count your loop actually consumed: ``state = sampler.state_dict(); state["position"] =
steps_done_this_epoch``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["BucketBatchSampler"]

log = logging.getLogger(__name__)

# Keys that must match for a saved state to describe the same stream of batches.
_CONFIG_KEYS = (
    "seed",
    "num_items",
    "num_replicas",
    "max_batch_seconds",
    "max_batch_items",
    "num_buckets",
    "shuffle",
)


class BucketBatchSampler:
    """Yields lists of item indices; use as a DataLoader `batch_sampler`."""

    def __init__(
        self,
        durations: Sequence[float],
        *,
        max_batch_seconds: float | None = 60.0,
        max_batch_items: int | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or len(self.durations) == 0:
            raise ValueError("BucketBatchSampler: durations must be a non-empty 1-D sequence")
        if not np.all(np.isfinite(self.durations)) or np.any(self.durations < 0):
            raise ValueError("BucketBatchSampler: durations must be finite and >= 0")
        if max_batch_seconds is None and max_batch_items is None:
            raise ValueError("BucketBatchSampler: set max_batch_seconds and/or max_batch_items")
        if max_batch_seconds is not None and not max_batch_seconds > 0:
            raise ValueError(f"BucketBatchSampler: max_batch_seconds must be > 0, got {max_batch_seconds}")
        if max_batch_items is not None and max_batch_items < 1:
            raise ValueError(f"BucketBatchSampler: max_batch_items must be >= 1, got {max_batch_items}")
        if num_buckets < 1:
            raise ValueError(f"BucketBatchSampler: num_buckets must be >= 1, got {num_buckets}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"BucketBatchSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}"
            )
        self.max_batch_seconds = None if max_batch_seconds is None else float(max_batch_seconds)
        self.max_batch_items = max_batch_items
        self.num_buckets = min(num_buckets, len(self.durations))
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0
        # Quantile buckets of (nearly) equal item counts; ties broken by index, so this is deterministic.
        order = np.lexsort((np.arange(len(self.durations)), self.durations))
        self._buckets = [b for b in np.array_split(order, self.num_buckets) if len(b)]
        self._cache: tuple[int, list[list[int]]] | None = None
        if self.max_batch_seconds is not None:
            n_long = int(np.sum(self.durations > self.max_batch_seconds))
            if n_long:
                log.warning(
                    "BucketBatchSampler: %d items are longer than max_batch_seconds=%g and each form a batch alone",
                    n_long,
                    self.max_batch_seconds,
                )

    # ---- batches ---------------------------------------------------------------------------------
    def _pack(self, indices: Sequence[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for i in indices:
            d = float(self.durations[i])
            new_longest = max(longest, d)
            over_seconds = (
                self.max_batch_seconds is not None
                and new_longest * (len(current) + 1) > self.max_batch_seconds
            )
            over_items = self.max_batch_items is not None and len(current) + 1 > self.max_batch_items
            if current and (over_seconds or over_items):
                batches.append(current)
                current, new_longest = [], d
            current.append(int(i))
            longest = new_longest
        if current:
            batches.append(current)
        return batches

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch` across ranks, in order (deterministic for seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        for bucket in self._buckets:
            batches += self._pack(rng.permutation(bucket) if self.shuffle else bucket)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`."""
        if self._cache is None or self._cache[0] != epoch:
            batches = self.global_batches(epoch)
            per_rank = len(batches) // self.num_replicas
            self._cache = (epoch, batches[self.rank : per_rank * self.num_replicas : self.num_replicas])
        return self._cache[1]

    def _normalise(self) -> list[list[int]]:
        batches = self.epoch_batches(self.epoch)
        if self.position >= len(batches):  # the saved state was taken after the epoch's last batch
            self.epoch, self.position = self.epoch + 1, 0
            batches = self.epoch_batches(self.epoch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """Continues where the previous iteration stopped; moves to the next epoch when one is done."""
        batches = self._normalise()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)
        self.epoch, self.position = self.epoch + 1, 0

    def __len__(self) -> int:
        """Batches in the current epoch for this rank (the whole epoch, not what remains)."""
        return len(self._normalise())

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; a no-op if `epoch` is the current one, so that calling
        it after `load_state_dict` (the DistributedSampler habit) keeps the resumed position."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": len(self.durations),
            "num_replicas": self.num_replicas,
            "max_batch_seconds": self.max_batch_seconds,
            "max_batch_items": self.max_batch_items,
            "num_buckets": self.num_buckets,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore epoch and position; other keys, when present, must match this sampler's settings."""
        for key in ("epoch", "position"):
            if key not in state:
                raise ValueError(f"BucketBatchSampler.load_state_dict: state lacks {key!r}")
            if int(state[key]) < 0:
                raise ValueError(f"BucketBatchSampler.load_state_dict: {key} must be >= 0, got {state[key]}")
        mine = self.state_dict()
        for key in _CONFIG_KEYS:
            if key in state and not _same(state[key], mine[key]):
                raise ValueError(
                    f"BucketBatchSampler.load_state_dict: saved {key}={state[key]!r} but this sampler has {mine[key]!r}; "
                    "the batches would differ"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b))
    return a == b
