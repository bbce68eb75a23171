"""What the stateful python models share: which sequence a request belongs to, limits from the config,
and the slot-pool metrics.

Pure Python and numpy (no triton_python_backend_utils): importable and testable outside a stub.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from mambaserve.build import spec
from mambaserve.build.backends.common import MAX_ABS_SAMPLE, parameter

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


def config_dict(args: dict) -> dict:
    return json.loads(args["model_config"])


def idle_timeout_s(args: dict, default: float) -> float:
    """max_sequence_idle_microseconds of the model's sequence batcher, else the `idle_seconds` parameter."""
    batching = config_dict(args).get("sequence_batching") or {}
    micros = int(batching.get("max_sequence_idle_microseconds") or 0)
    if micros > 0:
        return micros / 1e6
    return float(parameter(args, "idle_seconds", str(default)))


def int_parameter(args: dict, key: str, default: int, minimum: int = 1) -> int:
    raw = parameter(args, key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"config parameter {key}={raw!r} must be an integer") from None
    if value < minimum:
        raise ValueError(f"config parameter {key}={value} must be >= {minimum}")
    return value


def validate_chunk(audio: np.ndarray | None, *, max_samples: int, sample_rate: int = spec.SAMPLE_RATE) -> np.ndarray:
    """AUDIO of one streaming request -> 1-D float32 samples; an empty chunk is allowed (e.g. at END)."""
    name = spec.AUDIO.name
    if audio is None:
        raise ValueError(f"input '{name}' is missing")
    if audio.dtype != np.float32:
        raise ValueError(f"input '{name}' must be FP32, got {audio.dtype}")
    if audio.ndim != 2 or audio.shape[0] != 1:
        raise ValueError(
            f"input '{name}' must have shape [1, samples] (one stream per request), got {list(audio.shape)}"
        )
    if audio.shape[1] > max_samples:
        raise ValueError(
            f"input '{name}' chunk is {audio.shape[1] / sample_rate:.2f} s long; the limit per request is "
            f"{max_samples / sample_rate:g} s ({max_samples} samples at {sample_rate} Hz)"
        )
    samples = audio[0]
    if samples.size:
        finite = np.isfinite(samples)
        if not finite.all():
            raise ValueError(f"input '{name}' contains NaN or Inf (first at sample {int(np.argmin(finite))})")
        peak = float(np.abs(samples).max())
        if peak > MAX_ABS_SAMPLE:
            raise ValueError(
                f"input '{name}' must be float audio in [-1, 1]; its peak is {peak:g} (int16-scaled samples? divide by 32768)"
            )
    return samples


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


class PoolMetrics:
    """Keeps a model's slot gauges and reaped/rejected counters in step with its SlotPool.

    Pass ``pool_metrics.update`` as the pool's ``on_change``: it runs after every start/end/reap, the
    reaper thread's included, so the gauge drops back when idle sequences are reaped with no traffic.
    """

    def __init__(self, metrics, model: str):
        self.metrics = metrics
        self.model = model
        self._reaped = 0
        self._rejected = 0
        self._lock = threading.Lock()

    def update(self, pool) -> None:
        with self._lock:  # the reaper thread and execute() both report
            self._update(pool)

    def _update(self, pool) -> None:
        self.metrics.slots(self.model, pool.in_use, pool.capacity)
        if pool.reaped_total > self._reaped:
            self.metrics.reaped(self.model, pool.reaped_total - self._reaped)
            self._reaped = pool.reaped_total
        if pool.rejected_total > self._rejected:
            self.metrics.sequence_rejected(self.model, "pool_full", pool.rejected_total - self._rejected)
            self._rejected = pool.rejected_total


MAX_NEW_TOKENS = 1024
"""Most tokens one decoder_session request may ask for (MAX_TOKENS)."""
MAX_BEAM_SIZE = 16


def _scalar(values: dict, name: str):
    a = values.get(name)
    if a is None:
        return None
    a = np.asarray(a)
    if a.size != 1:
        raise ValueError(f"input '{name}' must hold one value per request, got shape {list(a.shape)}")
    v = a.reshape(-1)[0]
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v


def parse_sampling(values: dict, defaults, *, vocab_size: int):
    """The decoder_session settings inputs of one request (name -> array or None) -> a Sampling
    (streaming_engine.Sampling) that overrides ``defaults`` with what the request set.

    Raises ValueError naming the input and its limit.
    """
    from dataclasses import replace

    from mambaserve.build.backends.streaming_engine import METHODS

    method = _scalar(values, spec.DECODING_METHOD.name)
    method = str(method).strip().lower() if method is not None else defaults.method
    if method not in METHODS:
        raise ValueError(f"input '{spec.DECODING_METHOD.name}' must be one of {', '.join(METHODS)}, got {method!r}")
    kwargs: dict = {"method": method}
    max_tokens = _scalar(values, spec.MAX_TOKENS.name)
    if max_tokens is not None:
        if not 0 <= int(max_tokens) <= MAX_NEW_TOKENS:
            raise ValueError(f"input '{spec.MAX_TOKENS.name}' must be in [0, {MAX_NEW_TOKENS}], got {int(max_tokens)}")
        kwargs["max_tokens"] = int(max_tokens)
    min_tokens = _scalar(values, spec.MIN_TOKENS.name)
    if min_tokens is not None:
        limit = kwargs.get("max_tokens", MAX_NEW_TOKENS)
        if not 0 <= int(min_tokens) <= limit:
            raise ValueError(f"input '{spec.MIN_TOKENS.name}' must be in [0, {limit}] (MAX_TOKENS), got {int(min_tokens)}")
        kwargs["min_tokens"] = int(min_tokens)
    temperature = _scalar(values, spec.TEMPERATURE.name)
    if temperature is not None:
        t = float(temperature)
        if not (np.isfinite(t) and 0 < t <= 100):
            raise ValueError(f"input '{spec.TEMPERATURE.name}' must be in (0, 100], got {t}")
        kwargs["temperature"] = t
    top_k = _scalar(values, spec.TOP_K.name)
    if top_k is not None:
        if not 0 <= int(top_k) <= vocab_size:
            raise ValueError(f"input '{spec.TOP_K.name}' must be in [0, {vocab_size}] (0 = no limit), got {int(top_k)}")
        kwargs["top_k"] = int(top_k)
    seed = _scalar(values, spec.SEED.name)
    if seed is not None:
        if int(seed) < 0:
            raise ValueError(f"input '{spec.SEED.name}' must be >= 0, got {int(seed)}")
        kwargs["seed"] = int(seed)
    beam = _scalar(values, spec.BEAM_SIZE.name)
    if beam is not None:
        if not 1 <= int(beam) <= MAX_BEAM_SIZE:
            raise ValueError(f"input '{spec.BEAM_SIZE.name}' must be in [1, {MAX_BEAM_SIZE}], got {int(beam)}")
        kwargs["beam_size"] = int(beam)
    return replace(defaults, **kwargs)
