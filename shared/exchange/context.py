"""What the adapters of one process share: the paper transport, HTTP sessions, market tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared.exchange.paper import Transport


@runtime_checkable
class SharedResource(Protocol):
    """Something adapters of one process share (an HTTP session, a market table)."""

    async def close(self) -> None: ...


@dataclass
class AdapterContext:
    """What adapters of one process share: the paper transport, per-venue shared resources.

    Accounts never close what is shared; the process calls `close()` once, after closing them.
    """

    paper_transport: Transport | None = None
    shared: dict[str, object] = field(default_factory=dict)  # per-venue markets, HTTP sessions
    http_timeout_s: float = 10.0  # one HTTP request to a venue
    rate_limit: bool = True  # ccxt's per-account leaky bucket; off only against loopback emulators
    # Alpaca requests in flight at once per endpoint (its shared session's connections): the
    # copier passes its concurrency, 256 by default
    alpaca_connections: int = 256

    async def close(self) -> None:
        """Close the shared resources (HTTP sessions); the next account opens them again."""
        resources = list(self.shared.values())
        self.shared.clear()
        for resource in resources:
            if isinstance(resource, SharedResource):
                await resource.close()
