"""The master service's metrics, on the registry it is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# filled: order filled, signal published; failed: the venue refused the order; refused: no order
# (kill switch, bad request, another master's); unknown: the order may exist, a retry looks it up;
# replayed: a retried request id answered with its first outcome
TRADE_OUTCOMES = ("filled", "failed", "refused", "unknown", "replayed")
ORDER_EVENTS = ("new", "amend", "cancel")
ORDER_ACTIONS = ("order", "amend", "cancel")
# done: the venue did it; refused: nothing changed; unknown: it may have (a retry finds out)
ORDER_OUTCOMES = ("done", "refused", "unknown", "replayed")


class MasterMetrics:
    def __init__(self, registry: CollectorRegistry, master_id: str) -> None:
        self.orders = Counter(
            "copytrade_master_orders_total",
            "Master trade requests by outcome",
            ["outcome"],
            registry=registry,
        )
        self.published = Counter(
            "copytrade_signals_published_total", "Signals published", ["master"], registry=registry
        ).labels(master_id)
        self.retries = Counter(
            "copytrade_signal_publish_retries_total",
            "Signal publishes retried after a NATS error",
            registry=registry,
        )
        # after a publish: records that could not be written (a retry still finds the order)
        self.bookkeeping_failures = Counter(
            "copytrade_master_bookkeeping_failures_total",
            "Records written after a signal was published that failed (logged, not reported)",
            ["record"],
            registry=registry,
        )
        self.control_errors = Counter(
            "copytrade_master_control_watch_errors_total",
            "Times the master's watch of the control bucket (kill switch) broke and restarted",
            registry=registry,
        )
        self.order_events = Counter(
            "copytrade_master_order_events_total",
            "Master order events published (a resting order placed, amended, cancelled)",
            ["event"],
            registry=registry,
        )
        self.order_requests = Counter(
            "copytrade_master_order_requests_total",
            "Master order, amend and cancel requests by outcome",
            ["action", "outcome"],
            registry=registry,
        )
        self.order_poll_interval = Gauge(
            "copytrade_master_order_poll_interval_seconds",
            "How long the open-orders watcher waits between polls now (adaptive)",
            registry=registry,
        )
        # fills taken from the venue's private stream (services.master.streamed)
        self.stream_fills_trusted = Gauge(
            "copytrade_master_stream_fills_trusted",
            "1 while fills are published from the venue's stream without a REST read (its fill "
            "ids were found in the trade history)",
            registry=registry,
        )
        self.stream_fill_ids_differ = Gauge(
            "copytrade_master_stream_fill_ids_differ",
            "1 once the stream's fill ids were seen to differ from the trade history's (fills "
            "are then published from REST reads only)",
            registry=registry,
        )
        self.fills_held_back = Counter(
            "copytrade_master_fills_held_back_total",
            "Trades of the master's history not published because the stream may have published "
            "them under another id",
            registry=registry,
        )
        for outcome in TRADE_OUTCOMES:
            self.orders.labels(outcome)
        for event in ORDER_EVENTS:
            self.order_events.labels(event)
        for action in ORDER_ACTIONS:
            for outcome in ORDER_OUTCOMES:
                self.order_requests.labels(action, outcome)
        for record in ("published", "outcome"):
            self.bookkeeping_failures.labels(record)
