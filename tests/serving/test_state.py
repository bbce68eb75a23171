"""The slot pool behind every stateful model: admission, errors that say why, leases, the reaper; and
the request-side helpers (settings of decoder_session, rounds of distinct slots)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from mambaserve.contract import spec
from mambaserve.serving.backends.common import (
    ALREADY_EXISTS,
    INTERNAL,
    INVALID_ARG,
    MAX_NEW_TOKENS,
    UNAVAILABLE,
    error_code,
    parse_sampling,
    validate_chunk,
)
from mambaserve.serving.state import (
    LiveSequenceError,
    OwnerCapError,
    PoolFullError,
    SlotPool,
    UnknownSequenceError,
    WrongClientError,
    WrongKeyError,
    client_of,
    distinct_rounds,
)
from mambaserve.serving.streaming_engine import Sampling


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_pool_refuses_only_the_new_sequence():
    freed = []
    pool = SlotPool(2, 10.0, on_free=freed.append)
    a, b = pool.start(101), pool.start("call-7")
    assert {a, b} == {0, 1} and pool.in_use == 2
    with pytest.raises(PoolFullError, match="all 2 sequence slots are in use"):
        pool.start(102)
    assert pool.rejected_total == 1
    assert pool.get(101) == a and pool.get("call-7") == b  # the others notice nothing
    with pytest.raises(LiveSequenceError, match=r"cannot start sequence 101: .* is live"):
        pool.start(101)  # START again on a live sequence: refused, never a restart nor a mix
    assert pool.get(101) == a and pool.in_use == 2
    pool.end(101)
    assert freed == [a] and pool.start(102) == a


def test_keys_owners_and_caps():
    """A keyed sequence answers only its key (the sequence untouched otherwise); each owner holds at
    most ``per_owner`` live sequences while others still start theirs."""
    clock = Clock()
    pool = SlotPool(8, 5.0, clock=clock, per_owner=2)
    slot = pool.start(1, owner="10.0.0.1", secret="k1")
    clock.now = 4.0
    for wrong in (None, "", "k2"):
        with pytest.raises(WrongKeyError, match="belongs to the client that started it"):
            pool.get(1, wrong)
    assert pool.reap() == []
    clock.now = 5.5  # a refused request does not keep the sequence alive: it idles out from t=0
    assert pool.get(1, "k1") == slot  # the owner's request does (and it was not reaped: checked first)
    pool.start(2, owner="10.0.0.1")
    with pytest.raises(OwnerCapError, match=r"client '10\.0\.0\.1' already hold.* 2 live sequences"):
        pool.start(3, owner="10.0.0.1")
    assert pool.start(3, owner="10.0.0.2") >= 0 and pool.owner_rejected_total == 1
    pool.end(2)
    assert pool.start(4, owner="10.0.0.1") >= 0  # ending one frees its owner's share
    assert client_of({"X-Client-Id": "a", "other": 1}) == "a" and client_of({}) == ""
    # the header tritonserver forwards comes after a parameter the client set under the same name
    assert client_of([("x-client-id", "spoof"), ("x-client-id", "10.0.0.9")]) == "10.0.0.9"


def test_keyless_sequences_are_bound_to_the_client_that_started_them():
    clock = Clock()
    pool = SlotPool(4, 5.0, clock=clock)
    slot = pool.start(1, owner="10.0.0.1")
    clock.now = 4.0
    for other in ("10.0.0.2", ""):
        with pytest.raises(WrongClientError, match="belongs to the client that started it"):
            pool.get(1, owner=other)
    clock.now = 5.5  # refused requests did not keep it alive; the owner's does
    assert pool.get(1, owner="10.0.0.1") == slot
    anonymous = pool.start(2)  # started by an unidentified client: nothing to bind to
    assert pool.get(2, owner="10.0.0.9") == anonymous and pool.get(2) == anonymous
    keyed = pool.start(3, owner="10.0.0.1", secret="k")  # sessions: the key is the binding
    assert pool.get(3, "k", owner="") == keyed
    streams = SlotPool(4, 5.0, per_owner=1, cap_unidentified=False)
    streams.start(1), streams.start(2)  # unidentified: not capped
    streams.start(3, owner="a")
    with pytest.raises(OwnerCapError):
        streams.start(4, owner="a")
    assert error_code(WrongClientError("x")) == INVALID_ARG


def test_errors_carry_their_status_code():
    assert error_code(ValueError("bad input")) == INVALID_ARG
    assert error_code(UnknownSequenceError("x")) == INVALID_ARG
    assert error_code(WrongKeyError("x")) == INVALID_ARG
    assert error_code(PoolFullError("x")) == UNAVAILABLE
    assert error_code(OwnerCapError("x")) == UNAVAILABLE
    assert error_code(LiveSequenceError("x")) == ALREADY_EXISTS
    assert error_code(RuntimeError("ours")) == INTERNAL


def test_unknown_sequence_errors_say_why():
    clock = Clock()
    pool = SlotPool(4, 5.0, clock=clock)
    with pytest.raises(
        UnknownSequenceError, match="unknown sequence 7: its first request must carry the START flag"
    ):
        pool.get(7)
    pool.start(7)
    pool.end(7)
    with pytest.raises(UnknownSequenceError, match="sequence 7 already ended"):
        pool.get(7)
    pool.start(8)
    clock.now = 5.5
    assert pool.reap() == [8]
    with pytest.raises(UnknownSequenceError, match=r"closed after 5 s without a request \(idle timeout\)"):
        pool.get(8)
    assert pool.reaped_total == 1 and pool.in_use == 0


def test_reaper_frees_idle_slots_but_never_leased_ones():
    clock = Clock()
    changes = []
    pool = SlotPool(3, 2.0, clock=clock, on_change=lambda p: changes.append(p.in_use))
    for key in (1, 2, 3):
        pool.start(key)
    clock.now = 1.5
    pool.get(2)  # a request keeps sequence 2 alive
    with pool.lease([3]):  # a batch is using sequence 3, however long it takes
        clock.now = 10.0
        assert sorted(pool.reap()) == [1, 2]
    assert pool.in_use == 1 and pool.slot_of(3) is not None
    assert pool.reap() == []  # the lease ended at t=10: sequence 3 was just used
    clock.now = 12.5
    assert pool.reap() == [3]
    assert changes[-1] == 0


def test_reaper_thread_runs_on_its_own():
    pool = SlotPool(2, 0.2)
    seen = threading.Event()
    pool._on_change = lambda p: seen.set() if p.in_use == 0 and p.reaped_total else None
    pool.start(5)
    pool.start_reaper(interval_s=0.05)
    try:
        assert seen.wait(10), "the reaper thread never freed the idle slot"
    finally:
        pool.stop_reaper()
    assert pool.reaped_total == 1


def test_concurrent_starts_never_share_a_slot():
    pool = SlotPool(64, 60.0)
    got: dict[int, int] = {}
    lock = threading.Lock()

    def worker(base: int) -> None:
        for k in range(8):
            slot = pool.start(base + k)
            with lock:
                got[base + k] = slot

    threads = [threading.Thread(target=worker, args=(100 * i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 64 and sorted(got.values()) == list(range(64))


def test_bad_pool_arguments():
    with pytest.raises(ValueError, match="capacity"):
        SlotPool(0, 1.0)
    with pytest.raises(ValueError, match="idle timeout"):
        SlotPool(1, 0)


def test_distinct_rounds_keep_order_per_slot():
    rounds = distinct_rounds([4, 1, 4, 2, 1, 4])
    assert rounds == [[0, 1, 3], [2, 4], [5]]
    assert distinct_rounds([3, 2, 1]) == [[0, 1, 2]]


def _values(**kw) -> dict:
    return {k: np.array([[v]], dtype=object if isinstance(v, bytes) else None) for k, v in kw.items()}


def test_session_settings_override_the_defaults_and_name_their_limits():
    defaults = Sampling(method="greedy", beam_size=4, length_penalty=0.5)
    s = parse_sampling(
        _values(DECODING_METHOD=b"sample", TEMPERATURE=0.7, TOP_K=20, SEED=9, MAX_TOKENS=12, MIN_TOKENS=3),
        defaults,
        vocab_size=256,
    )
    assert (s.method, s.temperature, s.top_k, s.seed, s.max_tokens, s.min_tokens) == (
        "sample",
        0.7,
        20,
        9,
        12,
        3,
    )
    assert s.length_penalty == 0.5  # untouched defaults stay
    assert parse_sampling({}, defaults, vocab_size=256) == defaults
    bad = {
        "DECODING_METHOD": (b"nucleus", "must be one of greedy, beam, sample"),
        "MAX_TOKENS": (MAX_NEW_TOKENS + 1, f"must be in \\[0, {MAX_NEW_TOKENS}\\]"),
        "TEMPERATURE": (0.0, "must be in \\(0, 100\\]"),
        "TOP_K": (257, "must be in \\[0, 256\\]"),
        "SEED": (-1, "must be >= 0"),
        "BEAM_SIZE": (0, "must be in \\[1, 16\\]"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=f"input '{name}' {message}"):
            parse_sampling(_values(**{name: value}), defaults, vocab_size=256)
    with pytest.raises(ValueError, match="input 'MIN_TOKENS' must be in \\[0, 5\\]"):
        parse_sampling(_values(MAX_TOKENS=5, MIN_TOKENS=6), defaults, vocab_size=256)


def test_stream_chunks_are_checked_with_the_limit_named():
    ok = validate_chunk(np.zeros((1, 0), np.float32), max_samples=100)
    assert ok.shape == (0,)  # an empty chunk (e.g. a bare END) is fine
    cases = [
        (np.zeros((1, 10), np.float64), "must be FP32"),
        (np.zeros((2, 10), np.float32), r"shape \[1, samples\]"),
        (np.zeros((1, 101), np.float32), "the limit per request is"),
        (np.array([[0.0, np.nan]], np.float32), "NaN or Inf"),
        (np.array([[0.0, 3000.0]], np.float32), "int16-scaled"),
    ]
    for audio, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_chunk(audio, max_samples=100)
    with pytest.raises(ValueError, match=f"'{spec.AUDIO.name}' is missing"):
        validate_chunk(None, max_samples=100)


def test_reaper_interval_defaults_to_a_fraction_of_the_timeout():
    pool = SlotPool(1, 0.4)
    pool.start(1)
    start = time.monotonic()
    pool.start_reaper()
    try:
        while pool.in_use and time.monotonic() - start < 10:
            time.sleep(0.02)
    finally:
        pool.stop_reaper()
    assert pool.in_use == 0
