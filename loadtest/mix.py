"""`--mix http_asr=3,grpc_asr=1`: the weights of the locust user kinds (kept free of locust imports:
importing locust monkey-patches the whole process with gevent)."""

from __future__ import annotations

from collections.abc import Iterable


def parse_mix(text: str, keys: Iterable[str]) -> dict[str, float]:
    """'http_asr=3,grpc_asr=1' -> weights; unknown keys and bad numbers are errors naming them."""
    known = set(keys)
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, weight = part.partition("=")
        if key not in known:
            raise ValueError(f"--mix: unknown user '{key}' (known: {', '.join(sorted(known))})")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"--mix: weight of '{key}' must be a number, got {weight!r}") from None
        if value < 0:
            raise ValueError(f"--mix: weight of '{key}' must be >= 0, got {value}")
        mix[key] = value
    if not any(mix.values()):
        raise ValueError(f"--mix {text!r}: at least one user needs a weight > 0")
    return mix
