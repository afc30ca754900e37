"""Asking the sizer: one request per 1,000 followers' figures, an order or a skip for each."""

from __future__ import annotations

import time

import msgspec
from nats.aio.client import Client

from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from shared import bus
from shared.errors import CopytradeError
from shared.messages import Decision, FollowerSnapshot, SizeReply, SizeRequest, TradeSignal

SIZER_CHUNK = 1000
SIZER_TIMEOUT_S = 10.0


class SizerClient:
    def __init__(self, nc: Client, book: FollowerBook, metrics: CopierMetrics) -> None:
        self._nc, self._book, self._metrics = nc, book, metrics
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(SizeReply)

    async def size(
        self, signal: TradeSignal, snapshots: list[FollowerSnapshot]
    ) -> dict[str, Decision]:
        """Each follower's decision, by follower id; raise if the sizer answers with an error."""
        decisions: dict[str, Decision] = {}
        for start in range(0, len(snapshots), SIZER_CHUNK):
            request = SizeRequest(signal=signal, min_notional=self._book.min_notional,
                                  now=time.time(), followers=snapshots[start : start + SIZER_CHUNK])
            with self._metrics.sizer_latency.time():
                reply = await self._nc.request(bus.SIZER_SUBJECT, self._encoder.encode(request),
                                               timeout=SIZER_TIMEOUT_S)
            if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
                raise CopytradeError(f"sizer error: {reply.headers.get('Nats-Service-Error')}")
            decisions.update({d.follower_id: d for d in self._decoder.decode(reply.data).decisions})
        return decisions
