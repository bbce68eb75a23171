"""Read a tritonserver's Prometheus endpoint (``:8002/metrics``): Triton's ``nv_*`` series and
mambaserve's own (``mambaserve.serving.metrics``), parsed by ``prometheus_client``'s text parser.

    samples = scrape("127.0.0.1:8002")
    samples.value("nv_inference_request_success", model="asr")     # summed over the other labels
    samples.get("mambaserve_requests_rejected_total", model="decoder", reason="prompt")  # 0.0 if absent

A query names a series as the server writes it, and some labels; a sample matches when it has those
label values, whatever its other labels (a version label added by a new server, say), and the
matching samples are summed. ``value`` raises KeyError when nothing matches -- a renamed label or
series is an error, not a quiet zero. (The parser follows OpenMetrics and calls every counter sample
``<family>_total``; Triton's counters have no such suffix on the wire, so a counter answers to both.)
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str  # as the parser names it: a counter's ends in _total, a summary has _count and _sum
    labels: dict[str, str]
    value: float
    aliases: frozenset[str] = frozenset()  # the name on the wire, where it differs (counters)

    def named(self, name: str) -> bool:
        return name == self.name or name in self.aliases


class Samples:
    """Every sample of one scrape."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def select(self, name: str, **labels: str) -> list[Sample]:
        """The samples called ``name`` whose labels include ``labels``."""
        return [
            s for s in self.samples if s.named(name) and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the matching samples; KeyError naming what was there when none matches."""
        found = self.select(name, **labels)
        if not found:
            near = sorted({str(s.labels) for s in self.samples if s.named(name)})[:10]
            raise KeyError(
                f"no sample {name}{labels or ''} in the scrape (series of that name: {near or 'none'})"
            )
        return sum(s.value for s in found)

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        """Like :meth:`value`, ``default`` when nothing matches (a series not created yet)."""
        found = self.select(name, **labels)
        return sum(s.value for s in found) if found else default

    def names(self) -> set[str]:
        return {n for s in self.samples for n in (s.name, *s.aliases)}


def parse(text: str) -> Samples:
    """Prometheus text exposition format -> :class:`Samples`."""
    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            counter = family.type == "counter" and s.name == f"{family.name}_total"
            aliases = frozenset({family.name}) if counter else frozenset()
            samples.append(Sample(s.name, dict(s.labels), float(s.value), aliases))
    return Samples(samples)


def scrape(metrics_url: str, timeout: float = 10.0) -> Samples:
    """GET ``http://HOST:PORT/metrics`` (``metrics_url`` is ``host:port``, as TritonServer.metrics_url)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=timeout) as resp:
        return parse(resp.read().decode())
