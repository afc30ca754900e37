"""The master service: trades on the master account and publishes a signal only after the
master order is confirmed filled, with Nats-Msg-Id = signal_id (a republish is a no-op)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from decimal import Decimal

import msgspec
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from prometheus_client import CollectorRegistry, Counter

from services.master.watcher import mark_published
from shared import bus
from shared.config import MasterConfig
from shared.errors import CopytradeError, ExchangeError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import ExchangeAccount, OrderAck, OrderCommand
from shared.messages import TradeReply, TradeRequest, TradeSignal, signal_id_for
from shared.signing import SignalSigner

log = logging.getLogger("copytrade.master")


class MasterMetrics:
    def __init__(self, registry: CollectorRegistry, master_id: str) -> None:
        self.orders = Counter("copytrade_master_orders_total", "Master orders by outcome",
                              ["outcome"], registry=registry)
        self.published = Counter("copytrade_signals_published_total", "Signals published",
                                 ["master"], registry=registry).labels(master_id)
        self.retries = Counter("copytrade_signal_publish_retries_total",
                               "Signal publishes retried after a NATS error", registry=registry)
        for outcome in ("filled", "failed"):
            self.orders.labels(outcome)


class MasterService:
    def __init__(
        self, *, js: JetStreamContext, account: ExchangeAccount, config: MasterConfig,
        metrics: MasterMetrics, signer: SignalSigner | None, published: KeyValue | None = None,
        order_timeout_s: float = 10.0, fill_wait_s: float = 30.0,
    ) -> None:
        self._published = published  # signal ids already published (shared with the watcher)
        self._signer = signer
        self._js, self._account, self._config, self._metrics = js, account, config, metrics
        self._order_timeout_s, self._fill_wait_s = order_timeout_s, fill_wait_s
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(TradeRequest)
        self._lock = asyncio.Lock()  # one master order at a time: equity/position stay exact

    async def start(self, nc: Client) -> Service:
        service = await add_service(nc, name="copytrade-master", version="1.0.0",
                                    description="Places master trades and publishes signals")
        await service.add_group(name="copytrade.master").add_endpoint(
            name="trade", handler=self._handle)
        return service

    async def _handle(self, request: Request) -> None:
        try:
            trade = self._decoder.decode(request.data)
        except msgspec.ValidationError as exc:
            await request.respond(self._encoder.encode(TradeReply(ok=False, error=str(exc))))
            return
        reply = await self.trade(trade)
        await request.respond(self._encoder.encode(reply))

    async def trade(self, trade: TradeRequest) -> TradeReply:
        """Place the master order; on a confirmed fill publish its signal. Never raises."""
        async with self._lock:
            try:
                signal = await self._place_and_confirm(trade)
            except (CopytradeError, TimeoutError) as exc:
                self._metrics.orders.labels("failed").inc()
                log.warning("event=master_order_failed symbol=%s error=%s", trade.symbol,
                            type(exc).__name__)
                return TradeReply(ok=False, error=f"{type(exc).__name__}: {exc}")
            self._metrics.orders.labels("filled").inc()
            if self._signer is not None:
                signal = self._signer.sign(signal)
            await self.publish(signal)
            return TradeReply(ok=True, signal_id=signal.signal_id, order_id=signal.order_id,
                              signal=signal)

    async def _place_and_confirm(self, trade: TradeRequest) -> TradeSignal:
        snapshot = await self._account.snapshot()
        position_before = await self._account.position(trade.symbol)
        command = OrderCommand(
            client_order_id=uuid.uuid4().hex, symbol=trade.symbol, side=trade.side,
            size=trade.size, size_type=trade.size_type, reference_price=Decimal(0))
        ack = await place_idempotently(self._account, command, timeout_s=self._order_timeout_s)
        ack = await self._wait_filled(ack, trade.symbol)
        assert ack.filled_base is not None and ack.avg_price is not None
        return self.signal_for(ack, trade.symbol, trade.side, trade.size, trade.size_type,
                               snapshot.equity, position_before)

    def signal_for(
        self, ack: OrderAck, symbol: str, side: str, size: Decimal, size_type: str,
        equity: Decimal, position_before: Decimal,
    ) -> TradeSignal:
        return msgspec.convert({
            "signal_id": signal_id_for(self._config.exchange, ack.exchange_order_id),
            "master_id": self._config.id, "exchange": self._config.exchange,
            "symbol": symbol, "side": side, "price": ack.avg_price, "size": size,
            "size_type": size_type, "filled_base": ack.filled_base,
            "order_id": ack.exchange_order_id, "master_equity": equity,
            "master_position_before": position_before, "executed_at": time.time(),
        }, TradeSignal, from_attributes=True)

    async def _wait_filled(self, ack: OrderAck, symbol: str) -> OrderAck:
        """A signal is published only for a filled master order: poll until it is."""
        deadline = time.monotonic() + self._fill_wait_s
        delay = 0.05
        while ack.status != "filled" or ack.filled_base is None:
            if time.monotonic() > deadline:
                raise ExchangeError(f"master order {ack.exchange_order_id} not filled in time")
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
            found = await self._account.find_order(ack.client_order_id, symbol)
            ack = found or ack
        return ack

    async def publish(self, signal: TradeSignal) -> None:
        """Publish with the signal id as message id; NATS hiccups are retried with the same id."""
        if self._signer is not None and not signal.signature:
            signal = self._signer.sign(signal)
        data = self._encoder.encode(signal)
        subject = bus.signal_subject(self._config.id)

        async def attempt() -> object:
            try:
                return await self._js.publish(subject, data,
                                              headers={"Nats-Msg-Id": signal.signal_id})
            except Exception:
                self._metrics.retries.inc()
                raise

        ack = await bus.retry_forever("publish_signal", attempt)
        if self._published is not None:
            await mark_published(self._published, signal.signal_id)
        self._metrics.published.inc()
        log.info("event=signal_published signal_id=%s symbol=%s side=%s duplicate=%s",
                 signal.signal_id, signal.symbol, signal.side, getattr(ack, "duplicate", False))
