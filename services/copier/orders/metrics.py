"""Mirroring's metrics: what each sweep found, and the errors that left a link for later."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

SWEEP_OUTCOMES = (
    "open",
    "filled",
    "orphan",
    "resolved",
    "resumed",
    "busy",
    "purged",
    "failed",
    "finished",
    "no_follower",
    "unchanged",
)


class MirrorMetrics:
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.links = Counter(
            "copytrade_mirror_sweep_links_total",
            "Linked orders the sweep looked at, by outcome",
            ["group", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "copytrade_mirror_errors_total",
            "Mirroring steps that failed and were left for the next event or sweep",
            ["group", "stage"],
            registry=registry,
        )
        self._group = group
        for outcome in SWEEP_OUTCOMES:
            self.links.labels(group, outcome)

    def swept(self, outcome: str) -> None:
        self.links.labels(self._group, outcome).inc()

    def failed(self, stage: str) -> None:
        self.errors.labels(self._group, stage).inc()
