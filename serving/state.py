"""The one owner of per-stream and per-session state in the stateful python models.

The python backend cannot keep per-sequence state for us (Triton drops a python model's implicit
OUTPUT_STATE) and Triton sends nothing when it times a sequence out, so every stateful model
(``streaming_encoder``, ``streaming_decoder``, ``decoder_session``) owns a fixed number of state rows
and must take them back itself. :class:`StatePool` does that for all of them, the same way:

- which sequence a request belongs to (:func:`sequence_of`: correlation ID and START/END, from
  Triton or from the request parameters of HTTP generate);
- correlation ID -> slot (:class:`SlotPool`): ``START`` takes a free slot; ``START`` on a live
  correlation ID is refused (:class:`LiveSequenceError`: a second client must never mix into a live
  sequence); a full pool refuses *that* sequence with :class:`PoolFullError`, and a client over its
  own cap (``per_owner``) with :class:`OwnerCapError`, and nobody else notices; any other request must
  name a live sequence, else :class:`UnknownSequenceError` says whether it was never started, already
  ended, or reaped after being idle; ``END`` frees the slot;
- owners and keys: a sequence may be started with a secret key (``secrets.token_urlsafe``,
  returned to the client that started it: sessions) that every later request must carry
  (:class:`WrongKeyError`, the sequence untouched), and with its client's id (forwarded by the
  front proxy as the ``x-client-id`` header, see :func:`client_of`), which the per-client cap counts;
  a keyless sequence (a stream) started by an identified client is bound to it: a request of another
  client id is refused (:class:`WrongClientError`, the sequence untouched);
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

import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from collections.abc import Sequence as Seq
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from mambaserve.contract import spec
from mambaserve.serving.backends.common import (
    ALREADY_EXISTS,
    CapacityError,
    RequestError,
    int_parameter,
    parameter,
)
from mambaserve.serving.metrics import SEQUENCE_REJECTION_REASONS

_FORGET_AFTER = 4096
"""How many ended/reaped correlation IDs are remembered, to tell 'reaped' from 'never started'."""


class SequenceError(RequestError):
    """A request refused because of its sequence (not its data). ``reason`` labels the metric,
    ``code`` the status (``common.error_code``)."""

    reason = "sequence"


class PoolFullError(SequenceError, CapacityError):
    reason = "pool_full"


class OwnerCapError(SequenceError, CapacityError):
    """The client already holds its cap of live sequences (the others still get slots)."""

    reason = "client_cap"


class UnknownSequenceError(SequenceError):
    reason = "unknown_sequence"


class LiveSequenceError(SequenceError):
    """START on a correlation ID that is live: refused, the live sequence untouched."""

    reason = "live_sequence"
    code = ALREADY_EXISTS


class WrongKeyError(SequenceError):
    """A request without the key its sequence was started with: refused, the sequence untouched."""

    reason = "wrong_key"


class WrongClientError(SequenceError):
    """A request from another client than the one that started its keyless sequence (a stream):
    refused, the sequence untouched."""

    reason = "wrong_client"


KEY_BYTES = 24
"""Entropy of a sequence key (``secrets.token_urlsafe``: 32 characters)."""


@dataclass
class _Entry:
    slot: int
    last_used: float
    leases: int = 0
    owner: str = ""
    secret: str = ""


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
        per_owner: int | None = None,
        cap_unidentified: bool = True,
    ):
        if capacity < 1:
            raise ValueError(f"slot pool capacity must be >= 1, got {capacity}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle timeout must be > 0 seconds, got {idle_timeout_s}")
        self.capacity = int(capacity)
        self.idle_timeout_s = float(idle_timeout_s)
        self.what = what
        self.per_owner = per_owner
        """Most live sequences one owner (client id; "" for unidentified clients) may hold; None: no cap."""
        self.cap_unidentified = cap_unidentified
        """False: unidentified clients ("") are not capped (streams: behind the front every request has an
        id; without it tritonserver listens on loopback only)."""
        self._owned: dict[str, int] = {}
        self._clock = clock
        self._on_free = on_free
        self._on_change = on_change
        self._lock = threading.RLock()
        self._live: dict[Hashable, _Entry] = {}
        self._free = list(range(self.capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._gone: OrderedDict[Hashable, str] = OrderedDict()  # key -> "ended" | "reaped"
        self.reaped_total = 0
        self.rejected_total = 0
        self.owner_rejected_total = 0
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
    def start(self, key: Hashable, *, owner: str = "", secret: str = "") -> int:
        """The slot for a sequence that starts now. A live ``key`` is refused (LiveSequenceError), so
        is a full pool (PoolFullError) and an owner at its cap (OwnerCapError)."""
        error: SequenceError | None = None
        with self._lock:
            if key in self._live:
                error = LiveSequenceError(
                    f"cannot start {self.what} {key!r}: a {self.what} with this correlation ID is live "
                    f"(START on a live ID is refused so that two clients never mix); use another ID, or "
                    f"end the live one first (an abandoned one is closed after {self.idle_timeout_s:g} s idle)"
                )
            elif not self._free:
                self.rejected_total += 1
                error = PoolFullError(
                    f"cannot start {self.what} {key!r}: all {self.capacity} {self.what} slots are in use "
                    f"(the limit of concurrent {self.what}s); retry when one ends, or raise the limit"
                )
            elif (
                self.per_owner is not None
                and (owner or self.cap_unidentified)
                and self._owned.get(owner, 0) >= self.per_owner
            ):
                self.owner_rejected_total += 1
                who = f"client {owner!r}" if owner else "unidentified clients (no x-client-id)"
                error = OwnerCapError(
                    f"cannot start {self.what} {key!r}: {who} already hold(s) {self.per_owner} live "
                    f"{self.what}s, the limit per client; end some (or let them idle out after "
                    f"{self.idle_timeout_s:g} s) and retry"
                )
            else:
                entry = self._live[key] = _Entry(self._free.pop(), self._clock(), owner=owner, secret=secret)
                self._owned[owner] = self._owned.get(owner, 0) + 1
                self._gone.pop(key, None)
                slot = entry.slot
        self._changed()
        if error is not None:
            raise error
        return slot

    def get(self, key: Hashable, secret: str | None = None, owner: str | None = None) -> int:
        """The slot of a live sequence; UnknownSequenceError naming why there is none, WrongKeyError
        (the sequence untouched: not even its idle clock) when it was started with another key, and
        WrongClientError when a keyless sequence started by an identified client gets a request from
        another (``owner`` None: not checked)."""
        with self._lock:
            entry = self._live.get(key)
            if entry is not None:
                if owner is not None and not entry.secret and entry.owner and owner != entry.owner:
                    raise WrongClientError(
                        f"{self.what} {key!r} belongs to the client that started it: this request comes "
                        f"from another client (x-client-id); use your own correlation ID"
                    )
                if entry.secret and not hmac.compare_digest(entry.secret, secret or ""):
                    raise WrongKeyError(
                        f"{self.what} {key!r} belongs to the client that started it: this request "
                        + (
                            "carries a wrong key (input KEY)"
                            if secret
                            else "carries no key (input KEY: the SESSION_KEY its START answered)"
                        )
                    )
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
            left = self._owned.get(entry.owner, 0) - 1
            if left > 0:
                self._owned[entry.owner] = left
            else:
                self._owned.pop(entry.owner, None)
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


CLIENT_ID_PARAMETER = spec.CLIENT_ID_HEADER
"""The request parameter naming the client (compared case-insensitively; ``spec.CLIENT_ID_HEADER``):
tritonserver forwards the front proxy's ``x-client-id`` header with
``--grpc-header-forward-pattern=^x-client-id$`` (and ``--http-header-forward-pattern``; HTTP infer
only: 2.51 forwards nothing to HTTP generate, so those requests count as unidentified). The proxy must
set it from the client's address or credentials, overwriting what the client sent; a parameter of
the same name the client sets itself comes first and loses (see :func:`client_of`)."""


@dataclass(frozen=True)
class Sequence:
    """The sequence a request belongs to, its flags and its client ("" when unidentified)."""

    key: Hashable
    start: bool
    end: bool
    client: str = ""


def _parameters(request) -> list[tuple[str, object]]:
    """The request parameters as (name, value) pairs, in order and duplicates kept: tritonserver
    appends a forwarded header after the parameters the client set, even under the same name."""
    try:
        pairs = json.loads(request.parameters() or "{}", object_pairs_hook=lambda p: p)
    except (ValueError, TypeError):
        return []
    return pairs if isinstance(pairs, list) else []


def client_of(params) -> str:
    """The client id among a request's parameters (pairs or a dict): the LAST ``x-client-id`` (any
    case), which is the forwarded header's when the front proxy set one; else ""."""
    pairs = params.items() if isinstance(params, dict) else params
    found = ""
    for name, value in pairs:
        if isinstance(name, str) and name.lower() == CLIENT_ID_PARAMETER:
            found = str(value)[:256]
    return found


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
    pairs = _parameters(request)
    params = dict(pairs)
    # The client id is trusted only from gRPC/HTTP infer requests (they carry Triton's correlation ID):
    # tritonserver 2.51 forwards no header to HTTP generate, whose parameters the client alone writes.
    client = client_of(pairs) if key not in (0, "", None) else ""
    if key in (0, "", None):
        key = params.get("sequence_id", 0)
        start = start or _flag(params.get("sequence_start", False))
        end = end or _flag(params.get("sequence_end", False))
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise RequestError(f"the {what} ID must be an integer or a string, got {type(key).__name__}")
    if key in (0, "", None):
        raise RequestError(
            f"this request names no {what}: set a non-zero correlation ID (gRPC/HTTP infer `sequence_id`, "
            f"or the request parameter `sequence_id` with HTTP generate)"
        )
    return Sequence(key, start, end, client)


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
        self._owner_rejected = 0
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
            if pool.owner_rejected_total > self._owner_rejected:
                self.metrics.sequence_rejected(
                    self.model, "client_cap", pool.owner_rejected_total - self._owner_rejected
                )
                self._owner_rejected = pool.owner_rejected_total


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

    and per request ``seq = self.states.sequence(request)``, ``slot, key = self.states.admit(seq, secret)``,
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
        per_owner_parameter: str | None = None,
        default_per_owner: int | None = None,
        cap_unidentified: bool = True,
        keys: bool = False,
    ) -> None:
        self.model = model
        self.what = what
        self.metrics = metrics
        self.capacity = int_parameter(args, capacity_parameter, default_capacity)
        self.per_owner = (
            int_parameter(args, per_owner_parameter, default_per_owner or self.capacity)
            if per_owner_parameter
            else None
        )
        self.keys = keys
        """True: START creates a secret key that the sequence's later requests must carry."""
        self._states: list[SlotState] = []
        self._slot_metrics = _SlotMetrics(metrics, model)
        metrics.declare(model, slots=True)
        self.slots = SlotPool(
            self.capacity,
            idle_timeout_s(args, default_idle_s),
            what=what,
            on_free=self._release,
            on_change=self._slot_metrics.update,
            per_owner=self.per_owner,
            cap_unidentified=cap_unidentified,
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

    def admit(self, seq: Sequence, secret: str | None = None) -> tuple[int, str]:
        """The slot of a request's sequence and its key: START claims a slot (its state reset) and,
        with ``keys``, a new secret key; any other request needs a live sequence and, if it was started
        with a key, that key (``secret``). Raises :class:`SequenceError` (pass it to :meth:`refused`)."""
        if not seq.start:
            return self.slots.get(seq.key, secret, owner=seq.client), ""
        key = secrets.token_urlsafe(KEY_BYTES) if self.keys else ""
        slot = self.slots.start(seq.key, owner=seq.client, secret=key)
        for state in self._states:
            state.reset(slot)
        return slot, key

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
