"""Asking the sizer: one request per 1,000 followers' figures, an order or a skip for each."""

from __future__ import annotations

import time

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from shared import bus
from shared.errors import CopytradeError
from shared.messages import Decision, FollowerSnapshot, SizeReply, SizeRequest, TradeSignal

SIZER_CHUNK = 1000
SIZER_ATTEMPT_S = 2.0  # per attempt: a sizer on a lost node is given up on, another answers
SIZER_WITHIN_S = 6.0  # then the signal is handed back (retried later, dead-lettered at the end)


class SizerClient:
    def __init__(self, nc: Client, book: FollowerBook, metrics: CopierMetrics) -> None:
        self._nc, self._book, self._metrics = nc, book, metrics
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(SizeReply)

    async def size(self, signal: TradeSignal, snapshots: list[FollowerSnapshot]) -> dict[str, Decision]:
        """Each follower's decision, by follower id; raise if the sizer answers with an error."""
        decisions: dict[str, Decision] = {}
        for start in range(0, len(snapshots), SIZER_CHUNK):
            request = SizeRequest(
                signal=signal,
                min_notional=self._book.min_notional,
                now=time.time(),
                followers=snapshots[start : start + SIZER_CHUNK],
            )
            with self._metrics.sizer_latency.time():
                reply = await self._ask(self._encoder.encode(request))
            if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
                raise CopytradeError(f"sizer error: {reply.headers.get('Nats-Service-Error')}")
            decisions.update({d.follower_id: d for d in self._decoder.decode(reply.data).decisions})
        return decisions

    async def _ask(self, data: bytes) -> Msg:
        """One request, retried: sizing is pure, so asking again is always safe."""

        async def once() -> Msg:
            return await self._nc.request(bus.SIZER_SUBJECT, data, timeout=SIZER_ATTEMPT_S)

        return await bus.retry("size", once, within_s=SIZER_WITHIN_S)
