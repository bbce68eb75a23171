"""The admin key that guards tritonserver's model-control, shared-memory, logging and trace APIs.

Why: with explicit model control an unrestricted `POST /v2/repository/models/X/load` can upload and run
any Python file, registering system shared memory can crash 2.51, and the logging/trace settings let a
client rewrite what the server records. Triton 2.51 can demand a header on those APIs
(`--http-restricted-api` / `--grpc-restricted-protocol`); the launcher always does, with this key.

Where the key comes from, first match wins:

1. `MAMBASERVE_ADMIN_KEY` (the key itself, e.g. from a container's env file or secret);
2. the file named by `MAMBASERVE_ADMIN_KEY_FILE`, else `$XDG_CONFIG_HOME/mambaserve/admin_key`
   (`~/.config/mambaserve/admin_key`); created with a random key (`secrets.token_urlsafe`, mode 0600)
   when it does not exist yet.

Clients send it as the `x-admin-key` HTTP header (`admin_headers(key)`); over gRPC, 2.51 expects the
metadata key `triton-grpc-protocol-x-admin-key` (`grpc_admin_headers(key)`, e.g. tritonclient's
`headers=`). The key is on tritonserver's command line: local users who can read /proc/PID/cmdline
can read it (mount /proc with hidepid=2 on shared hosts); it never appears in the server's log.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

ENV_KEY = "MAMBASERVE_ADMIN_KEY"
ENV_FILE = "MAMBASERVE_ADMIN_KEY_FILE"
HEADER = "x-admin-key"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"
"""What tritonserver 2.51 checks on gRPC for `--grpc-restricted-protocol=...:x-admin-key=KEY`."""
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
"""Category names as tritonserver 2.51 spells them (its --help: health, metadata, inference,
shared-memory, model-config, model-repository, statistics, trace, logging)."""

_VALID = re.compile(r"[A-Za-z0-9._~-]{16,256}")
"""A header value Triton's flag parser cannot mis-split (no ':', ',', '=' or spaces), long enough to guess."""


class AdminKeyError(RuntimeError):
    """The admin key is missing, unreadable or not a usable header value."""


def default_key_file() -> Path:
    """`MAMBASERVE_ADMIN_KEY_FILE`, else `$XDG_CONFIG_HOME/mambaserve/admin_key` (~/.config/...)."""
    if os.environ.get(ENV_FILE):
        return Path(os.environ[ENV_FILE]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "mambaserve" / "admin_key"


def _check(key: str, source: str) -> str:
    key = key.strip()
    if not _VALID.fullmatch(key):
        raise AdminKeyError(
            f"the admin key from {source} is not usable: it must be 16-256 characters of "
            "A-Z a-z 0-9 . _ ~ - (generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return key


def _create(path: Path) -> None:
    """Write a new random key to `path` (0600), atomically: a concurrent creator's key wins if it was first."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".admin_key-", dir=path.parent)  # mode 0600
    except OSError as e:
        raise AdminKeyError(
            f"cannot create the admin key file {path} ({e}): set ${ENV_KEY}, or ${ENV_FILE} to a writable path"
        ) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # fails if another process created it meanwhile: use theirs
    finally:
        os.unlink(tmp)


def load_admin_key(create: bool = True) -> str:
    """The admin key (see the module docstring for where it comes from); `create`: make the file if absent."""
    if os.environ.get(ENV_KEY):
        return _check(os.environ[ENV_KEY], f"${ENV_KEY}")
    path = default_key_file()
    if not path.exists():
        if not create:
            raise AdminKeyError(
                f"no admin key: set ${ENV_KEY}, or ${ENV_FILE} to a file holding it (looked for {path})"
            )
        _create(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise AdminKeyError(f"cannot read the admin key file {path}: {e}") from None
    if path.stat().st_mode & 0o077:
        print(
            f"[mambaserve] warning: the admin key file {path} is readable by other users (chmod 600 it)",
            file=sys.stderr,
        )
    return _check(text, str(path))


def restriction_flags(key: str) -> list[str]:
    """tritonserver arguments that demand `x-admin-key: KEY` on the restricted APIs, HTTP and gRPC."""
    key = _check(key, "the caller")
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{HEADER}={key}",
    ]


def admin_headers(key: str) -> dict[str, str]:
    """The HTTP header that unlocks the restricted APIs."""
    return {HEADER: key}


def grpc_admin_headers(key: str) -> dict[str, str]:
    """The gRPC metadata that unlocks the restricted protocols (tritonclient.grpc: `headers=`)."""
    return {GRPC_HEADER: key}


def main(argv: list[str] | None = None) -> int:
    """Print the admin key (for `curl -H "x-admin-key: $(...)"` and deploy/serve.sh); exit 1 if unusable."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mambaserve.serving.admin_key", description=main.__doc__)
    parser.add_argument(
        "--no-create", action="store_true", help="fail instead of creating the key file when there is no key"
    )
    args = parser.parse_args(argv)
    try:
        print(load_admin_key(create=not args.no_create))
    except AdminKeyError as e:
        print(f"[mambaserve] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
