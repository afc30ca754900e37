"""The sizer service: batched sizing over NATS request/reply, replicas share a queue group."""

from __future__ import annotations

import logging
import time

import msgspec
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.sizer.sizing import size_all
from shared import bus
from shared.messages import SizedOrder, SizeReply, SizeRequest

log = logging.getLogger("copytrade.sizer")


class SizerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "copytrade_sizer_requests_total", "Sizing requests handled", ["outcome"], registry=registry
        )
        self.decisions = Counter(
            "copytrade_sizer_decisions_total", "Sizing decisions made", ["decision"], registry=registry
        )
        self.handle_seconds = Histogram(
            "copytrade_sizer_handle_seconds",
            "Time to size one batch",
            registry=registry,
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
        )
        for outcome in ("ok", "error"):
            self.requests.labels(outcome)
        for decision in ("order", "skip"):
            self.decisions.labels(decision)


class Sizer:
    """Answers `SizeRequest`s on `bus.SIZER_SUBJECT`."""

    def __init__(self, metrics: SizerMetrics) -> None:
        self._metrics = metrics
        self._decoder = msgspec.json.Decoder(SizeRequest)
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    async def start(self, nc: Client) -> Service:
        service = await add_service(
            nc,
            name=bus.SIZER_SERVICE,
            version="1.0.0",
            description="Sizes follower orders for a trade signal",
        )
        group = service.add_group(name=bus.SIZER_GROUP)
        await group.add_endpoint(name=bus.SIZER_ENDPOINT, handler=self.handle)
        return service

    async def handle(self, request: Request) -> None:
        started = time.perf_counter()
        try:
            size_request = self._decoder.decode(request.data)
        except msgspec.DecodeError as exc:  # not JSON, or JSON of the wrong shape
            self._metrics.requests.labels("error").inc()
            log.warning("event=size_request_rejected error=%s", exc)
            await request.respond_error("400", f"invalid size request: {exc}")
            return
        decisions = size_all(
            size_request.signal, size_request.followers, size_request.min_notional, size_request.now
        )
        await request.respond(self._encoder.encode(SizeReply(decisions=decisions)))
        orders = sum(isinstance(d, SizedOrder) for d in decisions)
        self._metrics.decisions.labels("order").inc(orders)
        self._metrics.decisions.labels("skip").inc(len(decisions) - orders)
        self._metrics.requests.labels("ok").inc()
        self._metrics.handle_seconds.observe(time.perf_counter() - started)
