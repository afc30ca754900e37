"""What every room of one copier replica is built from: built once at start-up
(`services.copier.__main__`, the test harness) and handed to the copier, its executor, its
mirroring and its reconciler."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from services.copier.copy.policy import Policy
from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from shared.config import CopierSettings
from shared.control import Control
from shared.ledger import Ledger


@dataclass(frozen=True, kw_only=True)
class CopierContext:
    """One replica of a follower group: its connection, followers, settings and identity, the
    one policy every order path asks, and the buckets it keeps its state in."""

    nc: Client
    js: JetStreamContext
    book: FollowerBook
    metrics: CopierMetrics
    settings: CopierSettings
    instance: str
    control: Control
    policy: Policy
    ledger: Ledger
    claims: KeyValue  # (signal, follower) claimed before an order: exactly-once effect
    fills: KeyValue  # the master's fills bucket: when it last traded (master silence)
