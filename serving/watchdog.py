"""Reload python models whose stub process died, so serving recovers without a person.

Why: in Triton 2.51 a python model whose stub is killed (OOM killer, a crash in native code, a
stray `kill -9`) fails every later request with "Stub process '<model>_0_0' is not healthy", while
`/v2/health/ready` and `/v2/models/<model>/ready` keep answering 200; the server neither restarts
the stub nor marks the model unready (upstream issues triton-inference-server/server#7230, #8604).

The watchdog runs next to the server (same host or container: it reads /proc), notices a stub that
is gone or a zombie, and reloads its model through the repository API: unload (readiness turns
false, honestly, while the model is down) then load, then reloads any model that went unavailable
with it (an ensemble). That needs the server in explicit model control mode
(`--model-control-mode=explicit --load-model=*`); in the default mode the API refuses and the
watchdog says what the operator must do (restart tritonserver). The repository API is restricted
(serving/admin_key.py): the watchdog sends the admin key. `make serve` runs it in-process (a thread of
the launcher); beside a server started otherwise (the compose file) it runs as:

    python -m mambaserve.serving.watchdog --http-url 127.0.0.1:8000 [--server-pid PID] [--interval 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mambaserve.serving.admin_key import AdminKeyError, admin_headers, load_admin_key
from mambaserve.serving.stubs import proc_stat, stub_model

NOT_EXPLICIT = "explicit model load / unload is not allowed"
RESTRICTED = "This API is restricted"  # Triton's 403 answer without the right x-admin-key
WRONG_KEY = (
    "the server refuses the admin key: start the watchdog with the server's key "
    "($MAMBASERVE_ADMIN_KEY or $MAMBASERVE_ADMIN_KEY_FILE)"
)
OPERATOR_ACTION = (
    "restart tritonserver (or run it with --model-control-mode=explicit --load-model=* so that "
    "the watchdog can reload the model)"
)


@dataclass
class Event:
    time: float
    model: str
    action: str  # "dead", "unloaded", "loaded", "reload_failed", "operator"
    detail: str = ""


def live_stubs(server_pid: int) -> dict[str, set[int]]:
    """{model: pids of its stub processes that are alive (not zombies)} among the server's children."""
    out: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if not fields or int(fields[1]) != server_pid or fields[0] in ("Z", "X"):
            continue
        model = stub_model(int(entry.name))
        if model:
            out.setdefault(model, set()).add(int(entry.name))
    return out


def find_server_pid() -> int:
    """The one `tritonserver` process on this host/container."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv0 = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"/tritonserver") or argv0 == b"tritonserver":
                found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one tritonserver process, found {found}: pass --server-pid")
    return found[0]


@dataclass
class Watchdog:
    http_url: str
    server_pid: int
    interval: float = 1.0
    reload_timeout: float = 300.0
    log: object = print
    events: list[Event] = field(default_factory=list)
    admin_key: str | None = None  # sent as x-admin-key: the repository API is restricted
    retry_interval: float = 10.0  # seconds between tries to load a model whose reload failed

    def __post_init__(self) -> None:
        self._known: dict[str, set[int]] = {}
        # models this watchdog took down and could not load again -> when to try next (in order:
        # the dead model first, then what went down with it)
        self._down: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- HTTP ------------------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: dict | None = None, timeout: float = 10.0
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if self.admin_key:
            headers.update(admin_headers(self.admin_key))
        req = urllib.request.Request(
            f"http://{self.http_url}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def model_states(self) -> dict[str, str]:
        status, body = self._call("POST", "/v2/repository/index", {})
        if status != 200:
            raise RuntimeError(f"repository index failed ({status}): {body}")
        return {m["name"]: m.get("state", "") for m in json.loads(body)}

    # -- detection and recovery --------------------------------------------------------------------
    def _event(self, model: str, action: str, detail: str = "") -> None:
        self.events.append(Event(time.time(), model, action, detail))
        self.log(f"[watchdog] {model}: {action}{': ' + detail if detail else ''}")

    def dead_models(self) -> list[str]:
        """Models with fewer live stubs than when last seen healthy (ready models only).

        A stub that died before the watchdog first looked cannot be told from one never started:
        start the watchdog with the server.
        """
        now = live_stubs(self.server_pid)
        states = self.model_states()
        dead = []
        for model, pids in self._known.items():
            live = now.get(model, set())
            # a known stub is gone and none new replaced it (a reload by an operator starts new stubs
            # before the old ones exit: that is not a death)
            if states.get(model) == "READY" and not pids <= live and live <= pids:
                dead.append(model)
        # remember the current stubs of ready models (new pids after a reload or a new version)
        self._known = {m: p for m, p in now.items() if states.get(m) == "READY" and m not in dead}
        return dead

    def _load(self, model: str) -> tuple[int, str]:
        return self._call("POST", f"/v2/repository/models/{model}/load", {}, timeout=self.reload_timeout)

    def recover(self, model: str) -> bool:
        """Unload + load `model`, then load what went unavailable with it; False if impossible.

        A load that fails (out of memory, a file being replaced) is retried every `retry_interval`
        seconds by later checks, with what went down with it; readiness stays false meanwhile.
        """
        before = self.model_states()
        status, body = self._call(
            "POST", f"/v2/repository/models/{model}/unload", {}, timeout=self.reload_timeout
        )
        if status != 200:
            if NOT_EXPLICIT in body:
                self._event(model, "operator", OPERATOR_ACTION)
            elif status == 403 or RESTRICTED in body:
                self._event(model, "operator", WRONG_KEY)
            else:
                self._event(model, "reload_failed", f"unload: {body}")
            return False
        self._event(model, "unloaded", "readiness is false until it is loaded again")
        status, body = self._load(model)
        if status != 200:
            self._event(model, "reload_failed", f"load: {body} (retried every {self.retry_interval:g} s)")
            self._down[model] = time.monotonic() + self.retry_interval
        else:
            self._event(model, "loaded")
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            after = self.model_states()
            for other, state in before.items():
                if other != model and state == "READY" and after.get(other) != "READY":
                    if status != 200:  # loading it needs `model` first: retried with it
                        self._down[other] = self._down[model]
                    elif self._load(other)[0] == 200:
                        self._event(other, "loaded")
                    else:
                        self._event(other, "reload_failed", "retried")
                        self._down[other] = time.monotonic() + self.retry_interval
        return status == 200

    def retry_down(self) -> None:
        """Load again, in order, the models whose reload failed earlier and whose retry time has come."""
        for model, when in list(self._down.items()):
            if time.monotonic() < when:
                continue
            status, body = self._load(model)
            if status == 200:
                del self._down[model]
                self._event(model, "loaded", "after a failed reload")
            else:
                self._down[model] = time.monotonic() + self.retry_interval
                self._event(model, "reload_failed", f"load: {body}")
                break  # what follows it needs it

    def check_once(self) -> list[str]:
        dead = self.dead_models()
        for model in dead:
            self._event(model, "dead", "stub process gone: every request to it would fail")
            self.recover(model)
        retried = bool(self._down)
        self.retry_down()
        if dead or retried:
            self.dead_models()  # learn the new stubs
        return dead

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Check every `interval` seconds until stop(); the first check learns the healthy stubs."""
        while True:
            if proc_stat(self.server_pid) is None:
                self.log("[watchdog] tritonserver exited")
                return
            try:
                self.check_once()
            except Exception as e:  # busy, restarting, odd answer: live on
                self.log(f"[watchdog] check failed: {type(e).__name__}: {e}")
            if self._stop.wait(self.interval):
                return

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self.run, name="mambaserve-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.reload_timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.serving.watchdog", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="tritonserver HTTP host:port")
    parser.add_argument(
        "--server-pid", type=int, default=None, help="default: the one tritonserver process here"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    parser.add_argument(
        "--wait", type=float, default=600.0, help="seconds to wait for the server to be ready"
    )
    args = parser.parse_args(argv)
    try:  # the server's key: never create one here (it would not be the server's)
        key = load_admin_key(create=False)
    except AdminKeyError as e:
        print(f"[watchdog] error: {e}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.wait
    dog = None
    while dog is None:
        try:
            dog = Watchdog(
                args.http_url,
                args.server_pid or find_server_pid(),
                args.interval,
                log=lambda s: print(s, flush=True),
                admin_key=key,
            )
            status, _ = dog._call("GET", "/v2/health/ready")
            if status != 200:
                raise RuntimeError("server not ready")
        except (OSError, RuntimeError) as e:
            dog = None
            if time.monotonic() > deadline:
                print(f"[watchdog] error: {e}", file=sys.stderr)
                return 1
            time.sleep(1.0)
    print(f"[watchdog] watching tritonserver pid {dog.server_pid} at {args.http_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        dog.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
