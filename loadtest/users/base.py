"""What every mambaserve locust user shares: settings from the command line, clips, and the one way a
request is reported to locust (`TritonUser.fire`).

gRPC under locust: locust runs users as gevent greenlets, and grpcio blocks the whole process unless
`grpc.experimental.gevent.init_gevent()` ran before the first channel was made (without it
throughput fell 50x and streams hit DEADLINE_EXCEEDED). Importing this module does that.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field

from locust import User, constant, constant_throughput
from mambaserve.loadtest.clips import Clip

_GEVENT_GRPC = False
_USER_IDS = itertools.count()


def init_gevent_grpc() -> None:
    """Make grpcio cooperate with gevent (idempotent); call before any channel exists."""
    global _GEVENT_GRPC
    if not _GEVENT_GRPC:
        import grpc.experimental.gevent

        grpc.experimental.gevent.init_gevent()
        _GEVENT_GRPC = True


init_gevent_grpc()


def close_now(user, attr: str = "_client") -> None:
    """Close a user's tritonclient while gevent still runs, and drop it.

    tritonclient's __del__ closes the connection again; left to interpreter shutdown (gevent hub
    gone) a gevent-patched grpc channel close blocks forever and the locust process never exits.
    """
    client = getattr(user, attr, None)
    if client is not None:
        setattr(user, attr, None)
        client.close()
        del client  # the last reference: __del__'s second close() runs now, not at exit


class WrongAnswer(AssertionError):
    """A transcript differed from the single-request reference of the same clip (--expect)."""


@dataclass
class Settings:
    """Filled once per locust process from the command line (see loadtest/locustfile.py)."""

    http_url: str = "127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    timeout: float = 60.0
    clips: list[Clip] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # clip id -> transcript, when checking answers
    seed: int = 0


SETTINGS = Settings()


def set_rate(per_user: float) -> None:
    """Closed loop (next request as soon as the last answered) or a fixed rate per user."""
    TritonUser.wait_time = constant_throughput(per_user) if per_user > 0 else constant(0)


class TritonUser(User):
    """Base class: `key` names the user in `--mix`; `request_type` groups its requests in the results.

    A user holds one product client in ``self._client`` (opened in ``on_start``, closed in ``on_stop``
    while gevent still runs) and reports every request through :meth:`fire`, which the locustfile's
    exact record and locust's own statistics both listen to.
    """

    abstract = True
    key = ""
    request_type = ""
    request_name = "asr"
    wait_time = constant(0)

    def __init__(self, environment):
        super().__init__(environment)
        self._rng = random.Random(SETTINGS.seed * 100_003 + next(_USER_IDS))
        self._client = None

    def on_stop(self) -> None:
        close_now(self)

    def pick(self) -> Clip:
        return self._rng.choice(SETTINGS.clips)

    def fire(
        self,
        name: str,
        response_time_ms: float,
        exception: BaseException | None = None,
        length: int = 0,
        **context,
    ) -> None:
        """Report one request to locust: ``context`` carries ``audio_seconds`` (RTFx) and what else helps."""
        self.environment.events.request.fire(
            request_type=self.request_type,
            name=name,
            response_time=response_time_ms,
            response_length=length,
            exception=exception,
            context=context,
        )

    def fire_since(
        self, name: str, started: float, exception: BaseException | None = None, length: int = 0, **context
    ) -> None:
        """:meth:`fire` for a request that began at ``started`` (``time.perf_counter()``)."""
        self.fire(name, (time.perf_counter() - started) * 1000.0, exception, length, **context)

    def call(self, clip: Clip) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def timed(self, clip: Clip) -> None:
        """One `call(clip)` request, reported to locust (failures and wrong answers included)."""
        start = time.perf_counter()
        exc: BaseException | None = None
        text = ""
        try:
            text = self.call(clip)
            want = SETTINGS.expected.get(clip.id)
            if want is not None and text != want:
                raise WrongAnswer(f"clip {clip.id}: got {text!r}, single-request reference {want!r}")
        except Exception as e:  # reported as a failure, the user goes on
            exc = e
        self.fire_since(self.request_name, start, exc, len(text), audio_seconds=clip.seconds, clip=clip.id)
