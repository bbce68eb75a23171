"""locust entry point for mambaserve: `locust -f loadtest/locustfile.py ...` (or mambaserve.loadtest.run).

    locust -f loadtest/locustfile.py --headless -u 16 -r 8 -t 60s --csv runs/locust/asr \\
        --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 --mix http_asr=1,grpc_asr=3 \\
        --manifest data/corpus/test_espeak.jsonl

Options added to locust's own: --http-url, --grpc-url (host:port), --manifest, --clip-limit, --mix
(weights by user key; users left out do not run), --user-rate (requests/s per user; 0 = closed loop,
each user keeps one request in flight), --expect (JSON {clip id: transcript}: a different transcript
is a failure), --timeout. With --csv PREFIX it also writes PREFIX_requests.json: every request's
latency (ms, exact), failures and audio seconds answered per user kind, the errors, and the test's
start/end; mambaserve.loadtest.run summarises that file (locust's own CSV misses the requests
answered while the users stop, and rounds its percentiles).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

# users.base makes grpcio gevent-aware before any channel exists: import it first.
from mambaserve.loadtest.users.base import SETTINGS, TritonUser, set_rate  # isort: skip
from locust import events
from mambaserve.loadtest.clips import default_manifest, load_clips
from mambaserve.loadtest.mix import parse_mix
from mambaserve.loadtest.users.offline import GrpcAsrUser, HttpAsrUser
from mambaserve.loadtest.users.streaming import GrpcSessionUser, GrpcStreamingUser

USERS: tuple[type[TritonUser], ...] = (HttpAsrUser, GrpcAsrUser, GrpcStreamingUser, GrpcSessionUser)
"""Every user kind; new kinds (streaming, sessions) are added here."""
DEFAULT_MIX = "http_asr=1,grpc_asr=1"

_log: dict[str, dict] = defaultdict(lambda: {"ok_ms": [], "failed": 0, "audio_seconds": 0.0})
_errors: dict[str, int] = defaultdict(int)
_span: dict[str, float] = {}


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("mambaserve")
    group.add_argument("--http-url", default="127.0.0.1:8000", help="tritonserver HTTP host:port")
    group.add_argument("--grpc-url", default="127.0.0.1:8001", help="tritonserver gRPC host:port")
    group.add_argument(
        "--manifest", default=str(default_manifest()), help="JSONL manifest of the clips to send"
    )
    group.add_argument("--clip-limit", type=int, default=200, help="at most this many clips (seeded random)")
    group.add_argument("--mix", default=DEFAULT_MIX, help="user weights by key, e.g. http_asr=3,grpc_asr=1")
    group.add_argument("--user-rate", type=float, default=0.0, help="requests/s per user (0: closed loop)")
    group.add_argument(
        "--expect", default="", help="JSON {clip id: transcript}; another transcript is a failure"
    )
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--seed", type=int, default=0)


@events.init.add_listener
def _configure(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:  # library use: the caller fills SETTINGS
        return
    SETTINGS.http_url, SETTINGS.grpc_url = options.http_url, options.grpc_url
    SETTINGS.timeout, SETTINGS.seed = options.timeout, options.seed
    SETTINGS.clips = load_clips(options.manifest, limit=options.clip_limit, seed=options.seed)
    SETTINGS.expected = json.loads(Path(options.expect).read_text()) if options.expect else {}
    set_rate(options.user_rate)
    mix = parse_mix(options.mix, (u.key for u in USERS))
    for user in USERS:
        user.weight = mix.get(user.key, 0)
    environment.user_classes[:] = [u for u in environment.user_classes if u.weight > 0 or u.fixed_count > 0]


@events.test_start.add_listener
def _started(**_kwargs) -> None:
    _span["start"] = time.time()


@events.request.add_listener
def _record(request_type, response_time, exception, context, **_kwargs) -> None:
    """Our own exact record of every request: locust's CSV misses those answered while stopping."""
    entry = _log[request_type]
    _span["last"] = time.time()
    if exception is None:
        entry["ok_ms"].append(round(response_time, 3))
        entry["audio_seconds"] += (context or {}).get("audio_seconds", 0.0)
    else:
        entry["failed"] += 1
        _errors[f"[{request_type}] {type(exception).__name__}: {exception}"[:500]] += 1


@events.test_stop.add_listener
def _stopped(**_kwargs) -> None:
    _span["end"] = time.time()


@events.quitting.add_listener
def _write_log(environment, **_kwargs) -> None:
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        Path(f"{prefix}_requests.json").write_text(
            json.dumps({"by_type": _log, "errors": _errors, **_span}, separators=(",", ":"))
        )
