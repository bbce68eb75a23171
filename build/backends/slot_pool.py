"""Correlation ID -> slot of a preallocated state pool, with admission control and an idle reaper.

The python backend cannot keep per-sequence state for us (Triton drops a python model's implicit
OUTPUT_STATE) and Triton sends nothing when it times a sequence out, so every stateful model owns a
fixed number of state rows and must take them back itself:

- ``START`` takes a free slot (or restarts the sequence's own); a full pool refuses *that* sequence
  with :class:`PoolFullError` and nobody else notices;
- any other request must name a live sequence, else :class:`UnknownSequenceError` says whether it
  was never started, already ended, or reaped after being idle;
- ``END`` frees the slot; the reaper thread frees slots idle longer than ``idle_timeout_s`` (the
  sequence batcher's ``max_sequence_idle_microseconds``).

Slots in use by a running ``execute()`` are leased: the reaper never frees a leased slot, so it can
never pull state from under a batch however slow that batch is.

Pure Python (no torch, no triton_python_backend_utils): the state tensors belong to the caller,
which resets a slot's rows at START.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

_FORGET_AFTER = 4096
"""How many ended/reaped correlation IDs are remembered, to tell 'reaped' from 'never started'."""


class SequenceError(ValueError):
    """A request refused because of its sequence (not its data). ``reason`` labels the metric."""

    reason = "sequence"


class PoolFullError(SequenceError):
    reason = "pool_full"


class UnknownSequenceError(SequenceError):
    reason = "unknown_sequence"


@dataclass
class _Entry:
    slot: int
    last_used: float
    leases: int = 0


class SlotPool:
    """``capacity`` slots; keys are correlation IDs (int or str)."""

    def __init__(
        self,
        capacity: int,
        idle_timeout_s: float,
        *,
        what: str = "sequence",
        clock: Callable[[], float] = time.monotonic,
        on_free: Callable[[int], None] | None = None,
        on_change: Callable[[SlotPool], None] | None = None,
    ):
        if capacity < 1:
            raise ValueError(f"slot pool capacity must be >= 1, got {capacity}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle timeout must be > 0 seconds, got {idle_timeout_s}")
        self.capacity = int(capacity)
        self.idle_timeout_s = float(idle_timeout_s)
        self.what = what
        self._clock = clock
        self._on_free = on_free
        self._on_change = on_change
        self._lock = threading.RLock()
        self._live: dict[Hashable, _Entry] = {}
        self._free = list(range(self.capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._gone: OrderedDict[Hashable, str] = OrderedDict()  # key -> "ended" | "reaped"
        self.reaped_total = 0
        self.rejected_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queries ---------------------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._live)

    def slot_of(self, key: Hashable) -> int | None:
        with self._lock:
            entry = self._live.get(key)
            return None if entry is None else entry.slot

    def live(self) -> dict[Hashable, int]:
        with self._lock:
            return {k: e.slot for k, e in self._live.items()}

    # -- sequence life cycle ---------------------------------------------------------------------
    def start(self, key: Hashable) -> int:
        """The slot for a sequence that starts now (its own slot again if it was live)."""
        with self._lock:
            entry = self._live.get(key)
            full = entry is None and not self._free
            if full:
                self.rejected_total += 1
            else:
                if entry is None:
                    entry = self._live[key] = _Entry(self._free.pop(), self._clock())
                    self._gone.pop(key, None)
                entry.last_used = self._clock()
                slot = entry.slot
        self._changed()
        if full:
            raise PoolFullError(
                f"cannot start {self.what} {key!r}: all {self.capacity} {self.what} slots are in use "
                f"(the limit of concurrent {self.what}s); retry when one ends, or raise the limit"
            )
        return slot

    def get(self, key: Hashable) -> int:
        """The slot of a live sequence; UnknownSequenceError naming why there is none."""
        with self._lock:
            entry = self._live.get(key)
            if entry is not None:
                entry.last_used = self._clock()
                return entry.slot
            fate = self._gone.get(key)
        if fate == "reaped":
            raise UnknownSequenceError(
                f"{self.what} {key!r} was closed after {self.idle_timeout_s:g} s without a request "
                f"(idle timeout); start a new one with the START flag"
            )
        if fate == "ended":
            raise UnknownSequenceError(f"{self.what} {key!r} already ended; start a new one with the START flag")
        raise UnknownSequenceError(
            f"unknown {self.what} {key!r}: its first request must carry the START flag"
        )

    def end(self, key: Hashable) -> None:
        self._free_key(key, "ended")

    @contextmanager
    def lease(self, keys: list[Hashable]) -> Iterator[None]:
        """Keep the reaper away from these live sequences while a batch uses their slots."""
        with self._lock:
            entries = [self._live[k] for k in keys if k in self._live]
            for e in entries:
                e.leases += 1
        try:
            yield
        finally:
            with self._lock:
                now = self._clock()
                for e in entries:
                    e.leases -= 1
                    e.last_used = now

    # -- reaping ---------------------------------------------------------------------------------
    def reap(self) -> list[Hashable]:
        """Free every unleased slot idle longer than the timeout; returns the keys freed."""
        now = self._clock()
        with self._lock:
            stale = [k for k, e in self._live.items() if e.leases == 0 and now - e.last_used > self.idle_timeout_s]
            for key in stale:
                self._free_key(key, "reaped", notify=False)
            self.reaped_total += len(stale)
        if stale:
            self._changed()
        return stale

    def start_reaper(self, interval_s: float | None = None) -> None:
        """A daemon thread calling reap() every `interval_s` (default: a quarter of the timeout, <= 1 s)."""
        if self._thread is not None:
            return
        interval = interval_s if interval_s is not None else min(1.0, self.idle_timeout_s / 4)
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                with suppress(Exception):  # a failing callback must not kill the reaper
                    self.reap()

        self._thread = threading.Thread(target=loop, name=f"{self.what}-reaper", daemon=True)
        self._thread.start()

    def stop_reaper(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- internals -------------------------------------------------------------------------------
    def _free_key(self, key: Hashable, fate: str, notify: bool = True) -> None:
        with self._lock:
            entry = self._live.pop(key, None)
            if entry is None:
                return
            self._free.append(entry.slot)
            self._gone[key] = fate
            self._gone.move_to_end(key)
            while len(self._gone) > _FORGET_AFTER:
                self._gone.popitem(last=False)
            if self._on_free is not None:
                self._on_free(entry.slot)
        if notify:
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
