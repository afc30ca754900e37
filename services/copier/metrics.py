"""The copier's Prometheus metrics, labelled by copier `group` (not the venue: a group may be any
set of followers). `follower` appears only where a per-follower series is the point."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = ("active", "paused", "close_only", "dry_run")


class CopierMetrics:
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.group = group
        self.signals_received = Counter(
            "copytrade_signals_received_total", "Signals taken from the stream", ["group"], registry=registry
        ).labels(group)
        self.signals_rejected = Counter(
            "copytrade_signals_rejected_total",
            "Signals refused and never executed",
            ["group", "reason"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "copytrade_signals_dead_lettered_total",
            "Signals given up after max deliveries",
            ["group"],
            registry=registry,
        ).labels(group)
        self.outcomes = Counter(
            "copytrade_copy_outcomes_total",
            "Copy outcomes per follower and master",
            ["group", "follower", "outcome", "reason", "master"],
            registry=registry,
        )
        self.copy_latency = Histogram(
            "copytrade_copy_latency_seconds",
            "Master fill to follower order acknowledged",
            ["group"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(group)
        self.internal_latency = Histogram(
            "copytrade_internal_latency_seconds",
            "Signal received to follower order sent",
            ["group"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(group)
        self.sizer_latency = Histogram(
            "copytrade_sizer_request_seconds",
            "Sizer request round trip",
            ["group"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(group)
        self.in_flight = Gauge(
            "copytrade_orders_in_flight",
            "Follower orders sent and not yet answered",
            ["group"],
            registry=registry,
        ).labels(group)
        self.followers = Gauge(
            "copytrade_followers", "Configured followers by state", ["group", "state"], registry=registry
        )
        self.pending = Gauge(
            "copytrade_consumer_pending_signals",
            "Signals not yet processed by this group",
            ["group"],
            registry=registry,
        ).labels(group)
        self.risk_trips = Counter(
            "copytrade_risk_trips_total",
            "Followers moved to close-only/paused by an equity limit",
            ["group", "follower", "rule"],
            registry=registry,
        )
        self.drift = Gauge(
            "copytrade_position_drift_ratio",
            "Follower position vs what copying should have produced: |actual-expected|/expected",
            ["group", "follower", "symbol"],
            registry=registry,
        )
        self.signal_retries = Counter(
            "copytrade_signal_retries_total",
            "Signals or work items handed back after an error",
            ["group"],
            registry=registry,
        ).labels(group)
        self.figure_refresh_failures = Counter(
            "copytrade_figure_refresh_failures_total",
            "Background reads of followers' figures that failed",
            ["group"],
            registry=registry,
        ).labels(group)
        self.master_silent = Gauge(
            "copytrade_master_silent",
            "1 while a master's venue has not been read for master_silence_s (its service or venue is down)",
            ["master"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "copytrade_reconcile_errors_total",
            "Reconciliation reads or rounds that failed",
            ["group"],
            registry=registry,
        ).labels(group)
        self.heals = Counter(
            "copytrade_heals_total",
            "Heal orders by outcome (placed, failed, or the refusal)",
            ["group", "outcome"],
            registry=registry,
        )
        self.reloads = Counter(
            "copytrade_config_reloads_total", "Config reloads by outcome", ["outcome"], registry=registry
        )
        self.reload_ok = Gauge(
            "copytrade_config_last_reload_success", "1 when the last config load succeeded", registry=registry
        )
        self.reload_ok.set(1)
        for outcome in ("applied", "rejected"):
            self.reloads.labels(outcome)
        self.signals_rejected.labels(group, "malformed")
        # (follower, outcome, reason, master) -> its series in `outcomes`
        self._outcome_children: dict[tuple[str, str, str, str], Counter] = {}

    def outcome(self, follower: str, outcome: str, reason: str, master: str = "") -> None:
        key = (follower, outcome, reason, master)
        child = self._outcome_children.get(key)
        if child is None:  # `labels` takes a lock and builds the key on every call
            child = self._outcome_children[key] = self.outcomes.labels(self.group, *key)
        child.inc()

    def set_followers(self, counts: dict[str, int]) -> None:
        for state in STATES:
            self.followers.labels(self.group, state).set(counts.get(state, 0))

    def forget_follower(self, follower: str) -> None:
        """Drop a removed follower's series so dashboards stop showing it."""
        self._outcome_children = {k: c for k, c in self._outcome_children.items() if k[0] != follower}
        for metric in (self.outcomes, self.risk_trips, self.drift):
            for labels in list(metric._metrics):  # prometheus_client has no label query API
                if labels[1] == follower:
                    metric.remove(*labels)
