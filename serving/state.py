"""The one owner of per-stream and per-session state in the stateful python models.

The python backend cannot keep per-sequence state for us (Triton drops a python model's implicit
OUTPUT_STATE) and Triton sends nothing when it times a sequence out, so every stateful model
(``streaming_encoder``, ``streaming_decoder``, ``decoder_session``) owns a fixed number of state rows
and must take them back itself. :class:`StatePool` does that for all of them, the same way:

- which sequence a request belongs to (:func:`sequence_of`: correlation ID and START/END, from
  Triton or from the request parameters of HTTP generate);
- correlation ID -> slot (:class:`SlotPool`): ``START`` takes a free slot (or restarts the sequence's
  own); a full pool refuses *that* sequence with :class:`PoolFullError` and nobody else notices; any
  other request must name a live sequence, else :class:`UnknownSequenceError` says whether it was
  never started, already ended, or reaped after being idle; ``END`` frees the slot;
- the state bound to each slot (the engines' tensor rows and any per-slot Python values,
  :class:`PerSlot`): reset when a sequence starts in a slot, released when the slot is freed;
- the idle reaper (a thread freeing slots idle longer than the sequence batcher's
  ``max_sequence_idle_microseconds``, or the ``idle_seconds`` parameter), which never frees a slot
  leased by a running ``execute()``, so it cannot pull state from under a batch however slow;
- the slot metrics (in use, capacity, reaped, refused sequences), kept in step on every change,
  the reaper's included.

Pure Python (no torch, no triton_python_backend_utils): importable and testable outside a stub.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from collections.abc import Sequence as Seq
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from mambaserve.serving.backends.common import int_parameter, parameter
from mambaserve.serving.metrics import SEQUENCE_REJECTION_REASONS

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
            raise UnknownSequenceError(
                f"{self.what} {key!r} already ended; start a new one with the START flag"
            )
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
            stale = [
                k for k, e in self._live.items() if e.leases == 0 and now - e.last_used > self.idle_timeout_s
            ]
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


# ---------------------------------------------------------------------------------------------
# Which sequence a request belongs to
# ---------------------------------------------------------------------------------------------
FLAG_SEQUENCE_START = 1  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
FLAG_SEQUENCE_END = 2  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_END


@dataclass(frozen=True)
class Sequence:
    """The sequence a request belongs to and its flags."""

    key: Hashable
    start: bool
    end: bool


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def sequence_of(request, what: str = "sequence") -> Sequence:
    """Correlation ID and START/END of a request.

    Sequence-batched models get them from Triton (gRPC ``sequence_id``/``sequence_start``/``sequence_end``,
    HTTP ``parameters``). A model without a sequence batcher (the decoupled session model, so that HTTP
    ``generate_stream`` can reach it) also reads the request parameters ``sequence_id``,
    ``sequence_start`` and ``sequence_end`` itself: HTTP generate passes them through that way.
    """
    key = request.correlation_id()
    flags = int(request.flags())
    start, end = bool(flags & FLAG_SEQUENCE_START), bool(flags & FLAG_SEQUENCE_END)
    if key in (0, "", None):
        try:
            params = json.loads(request.parameters() or "{}")
        except ValueError:
            params = {}
        key = params.get("sequence_id", 0)
        start = start or _flag(params.get("sequence_start", False))
        end = end or _flag(params.get("sequence_end", False))
    if key in (0, "", None):
        raise ValueError(
            f"this request names no {what}: set a non-zero correlation ID (gRPC/HTTP infer `sequence_id`, "
            f"or the request parameter `sequence_id` with HTTP generate)"
        )
    return Sequence(key, start, end)


def distinct_rounds(slots: list[int]) -> list[list[int]]:
    """Positions grouped so that no slot repeats within a group, order kept per slot (the batcher
    never puts two requests of one sequence in a batch; this keeps us exact even if it did)."""
    rounds: list[list[int]] = []
    seen: list[set[int]] = []
    last_round: dict[int, int] = {}
    for pos, slot in enumerate(slots):
        r = last_round.get(slot, -1) + 1
        while r < len(rounds) and slot in seen[r]:
            r += 1
        if r == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[r].append(pos)
        seen[r].add(slot)
        last_round[slot] = r
    return rounds


def idle_timeout_s(args: dict, default: float) -> float:
    """max_sequence_idle_microseconds of the model's sequence batcher, else the `idle_seconds` parameter."""
    batching = json.loads(args["model_config"]).get("sequence_batching") or {}
    micros = int(batching.get("max_sequence_idle_microseconds") or 0)
    if micros > 0:
        return micros / 1e6
    return float(parameter(args, "idle_seconds", str(default)))


# ---------------------------------------------------------------------------------------------
# The owner
# ---------------------------------------------------------------------------------------------
class SlotState(Protocol):
    """Something that keeps rows per slot: reset when a sequence starts there, released when freed."""

    def reset(self, slot: int) -> None: ...

    def release(self, slot: int) -> None: ...


class PerSlot(list):
    """One Python value per slot (``default()`` again when a sequence starts and when the slot is freed)."""

    def __init__(self, capacity: int, default: Callable[[], Any]) -> None:
        super().__init__(default() for _ in range(capacity))
        self._default = default

    def reset(self, slot: int) -> None:
        self[slot] = self._default()

    release = reset


class _SlotMetrics:
    """Keeps a model's slot gauges and reaped/refused counters in step with its SlotPool (``on_change``:
    it runs after every start/end/reap, the reaper thread's included, so the gauge drops back when idle
    sequences are reaped with no traffic)."""

    def __init__(self, metrics, model: str):
        self.metrics = metrics
        self.model = model
        self._reaped = 0
        self._rejected = 0
        self._lock = threading.Lock()

    def update(self, pool: SlotPool) -> None:
        with self._lock:  # the reaper thread and execute() both report
            self.metrics.slots(self.model, pool.in_use, pool.capacity)
            if pool.reaped_total > self._reaped:
                self.metrics.reaped(self.model, pool.reaped_total - self._reaped)
                self._reaped = pool.reaped_total
            if pool.rejected_total > self._rejected:
                self.metrics.sequence_rejected(self.model, "pool_full", pool.rejected_total - self._rejected)
                self._rejected = pool.rejected_total


class StatePool:
    """Per-sequence (or per-session) state of one stateful model instance: slots, the state bound to
    them, the reaper and the slot metrics.

    In ``initialize()``::

        self.states = StatePool(args, model=name, metrics=self.metrics, what="sequence",
                                capacity_parameter="max_sequences", default_capacity=spec.STREAM_SLOTS,
                                default_idle_s=spec.STREAM_IDLE_SECONDS)
        self.engine = EncoderStreams(model, self.states.capacity, device)
        self.states.bind(self.engine)        # reset at START, released when the slot is freed
        ...warm up on slot 0...
        self.states.serve()                  # metrics from zero, reaper running

    and per request ``seq = self.states.sequence(request)``, ``slot = self.states.admit(seq)``,
    ``with self.states.lease(keys): ...``, ``self.states.end(key)``; a :class:`SequenceError` goes to
    ``self.states.refused(error)`` (its metric) and back to the client.
    """

    def __init__(
        self,
        args: dict,
        *,
        model: str,
        metrics,
        what: str,
        capacity_parameter: str,
        default_capacity: int,
        default_idle_s: float,
    ) -> None:
        self.model = model
        self.what = what
        self.metrics = metrics
        self.capacity = int_parameter(args, capacity_parameter, default_capacity)
        self._states: list[SlotState] = []
        self._slot_metrics = _SlotMetrics(metrics, model)
        metrics.declare(model, slots=True)
        self.slots = SlotPool(
            self.capacity,
            idle_timeout_s(args, default_idle_s),
            what=what,
            on_free=self._release,
            on_change=self._slot_metrics.update,
        )

    def bind(self, *states: SlotState) -> None:
        """State kept per slot: ``reset(slot)`` when a sequence starts there, ``release(slot)`` when freed."""
        self._states.extend(states)

    def serve(self) -> None:
        """Report the slots from zero and start the idle reaper (the end of ``initialize()``)."""
        self._slot_metrics.update(self.slots)
        self.slots.start_reaper()

    def close(self) -> None:
        """Stop the reaper (``finalize()``)."""
        self.slots.stop_reaper()

    # -- per request -------------------------------------------------------------------------------
    def sequence(self, request) -> Sequence:
        return sequence_of(request, self.what)

    def admit(self, seq: Sequence) -> int:
        """The slot of a request's sequence: START claims one (its state reset), any other request needs
        a live sequence. Raises :class:`SequenceError` (pass it to :meth:`refused`)."""
        if not seq.start:
            return self.slots.get(seq.key)
        slot = self.slots.start(seq.key)
        for state in self._states:
            state.reset(slot)
        return slot

    def refused(self, error: SequenceError) -> None:
        """Count a refused request under its reason (a full pool is counted as a refused *sequence*)."""
        if error.reason not in SEQUENCE_REJECTION_REASONS:
            self.metrics.rejected(self.model, error.reason)

    def lease(self, keys: Seq[Hashable]):
        """Keep the reaper away from these sequences while a batch uses their slots."""
        return self.slots.lease(list(keys))

    def end(self, key: Hashable) -> None:
        """END (or a failure): free the sequence's slot and release its state."""
        self.slots.end(key)

    rounds = staticmethod(distinct_rounds)

    def _release(self, slot: int) -> None:
        for state in self._states:
            state.release(slot)
