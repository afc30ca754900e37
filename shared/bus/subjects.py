"""Every NATS name copytrade uses: streams, buckets, subjects, durables. Nothing else types one."""

from __future__ import annotations

SIGNALS_STREAM = "SIGNALS"
RESULTS_STREAM = "RESULTS"
WORK_STREAM = "WORK"  # signals spread over a group's replicas: one item per (signal, shard)

CLAIMS_BUCKET = "copytrade-claims"  # (signal, follower) claims, and replay guards
CONTROL_BUCKET = "copytrade-control"  # kill switch, follower state overrides, risk baselines
FILLS_BUCKET = "copytrade-fills"  # the master's fills already published as signals
LEDGER_BUCKET = "copytrade-ledger"  # copied positions and holdings (shared/ledger.py)

SIGNALS_ALL = "copytrade.signals.>"
RESULTS_ALL = "copytrade.results.>"
REJECTS_ALL = "copytrade.rejects.>"
DEADLETTER_ALL = "copytrade.deadletter.>"
WORK_ALL = "copytrade.work.>"

SIZER_SERVICE, SIZER_GROUP, SIZER_ENDPOINT = "copytrade-sizer", "copytrade.sizer", "size"
MASTER_SERVICE, MASTER_GROUP, MASTER_TRADE_ENDPOINT = "copytrade-master", "copytrade.master", "trade"
MASTER_ORDER_ENDPOINTS = ("order", "amend", "cancel")  # resting orders, next to trade
PAPER_SERVICE, PAPER_GROUP, PAPER_ENDPOINT = "copytrade-paper", "copytrade.paper", "call"
SIZER_SUBJECT = f"{SIZER_GROUP}.{SIZER_ENDPOINT}"
MASTER_TRADE_SUBJECT = f"{MASTER_GROUP}.{MASTER_TRADE_ENDPOINT}"
PAPER_SUBJECT = f"{PAPER_GROUP}.{PAPER_ENDPOINT}"

DUPLICATE_WINDOW_S = 300.0
DAY = 86_400.0


def master_group(master_id: str | None) -> str:
    """A master service's endpoints: `copytrade.master` for the only master, else per master."""
    return MASTER_GROUP if master_id is None else f"{MASTER_GROUP}.{master_id}"


def master_trade_subject(master_id: str | None) -> str:
    return f"{master_group(master_id)}.{MASTER_TRADE_ENDPOINT}"


def signal_subject(master_id: str) -> str:
    return f"copytrade.signals.{master_id}"


def result_subject(group: str, follower_id: str) -> str:
    return f"copytrade.results.{group}.{follower_id}"


def results_of(follower_id: str) -> str:
    """Every group's results for one follower (a follower may move between groups)."""
    return f"copytrade.results.*.{follower_id}"


def reject_subject(group: str) -> str:
    return f"copytrade.rejects.{group}"


def deadletter_subject(group: str) -> str:
    return f"copytrade.deadletter.{group}"


def durable_name(group: str) -> str:
    return f"copier-{group}"


def work_subject(group: str, shard: int) -> str:
    return f"copytrade.work.{group}.{shard}"


def work_of(group: str) -> str:
    return f"copytrade.work.{group}.>"


def work_durable(group: str, shard: int) -> str:
    return f"work-{group}-{shard}"


def replicas_subject(group: str) -> str:
    """Core NATS (not stored): the group's replicas announce themselves here every second."""
    return f"copytrade.replicas.{group}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV bucket stores `key` under (for pipelined writes with publish_async)."""
    return f"$KV.{bucket}.{key}"
