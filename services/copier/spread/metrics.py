"""The spread path's metrics, per replica."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

WORK_OUTCOMES = ("published", "done", "retried", "rejected", "pull_failed")


class WorkMetrics:
    """Per replica: the work items it published and ran, the shards it owns, the live replicas."""

    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.items = Counter(
            "copytrade_work_items_total",
            "Work items (one shard of a signal) by outcome",
            ["group", "outcome"],
            registry=registry,
        )
        self.shards_owned = Gauge(
            "copytrade_work_shards_owned", "Work shards this replica pulls", ["group"], registry=registry
        ).labels(group)
        self.replicas = Gauge(
            "copytrade_copier_replicas",
            "Live replicas of the group, as this replica sees them",
            ["group"],
            registry=registry,
        ).labels(group)
        self._outcomes = {o: self.items.labels(group, o) for o in WORK_OUTCOMES}

    def count(self, outcome: str, n: int = 1) -> None:
        self._outcomes[outcome].inc(n)
