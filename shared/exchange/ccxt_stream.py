"""A ccxt venue's private stream as the master's wake-up (`port.Streaming`): Kraken's WebSocket
v2 `executions` channel, through ccxt.pro's Kraken client.

Each event of the channel is an `Activity`: a `Fill` for an execution (exec_type trade; a bare
"fill" if one of its fields is missing), "order" for any change of an order that may rest
(pending_new, new, amended, canceled, filled, and its fills too), nothing more for an order that
never rests (market, IOC, FOK). ccxt.pro's own order and trade caches are bypassed: they merge an
order's updates by id and route a whole message by its first item, where the master needs each
change as it comes (it reads orders by REST; fills it may take from here:
services.master.streamed).

Nonces: a signed Kraken call carries a nonce that must grow per API key. The stream's token is
asked through the account's own REST client (its nonce, its rate limiter) and put in the
subscribe message; the pro client holds no credentials and never calls ccxt.pro's
`authenticate`, so it signs nothing and cannot collide with the account's nonces. A token is
asked per connection (Kraken: a token opens a subscription within 15 minutes of being issued;
the subscription then lasts as long as the connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import aiohttp
import ccxt.pro as ccxtpro

from shared.errors import AuthError, CopytradeError, TemporaryError
from shared.exchange.port import Activity, Fill
from shared.exchange.venues import CcxtVenue, PrivateStream

log = logging.getLogger("copytrade.exchange.stream")
# ccxt logs what it sends at DEBUG (a subscribe carries the token): never below INFO here
_VENDOR_LOG = logging.getLogger("copytrade.exchange.stream.vendor")
_VENDOR_LOG.setLevel(logging.INFO)
BACKOFF_S = 0.25  # the wait before a reconnect, doubled per attempt that failed
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a connection that lived this long was no failure: the backoff starts over
SUBSCRIBE_TIMEOUT_S = 10.0
WS_SCHEMES = {"http": "ws", "https": "wss"}

Token = Callable[[], Awaitable[str]]
Translate = Callable[[Exception], CopytradeError]  # ccxt's exception -> ours (ccxt_adapter.translate)


NEVER_RESTS = {"IOC", "FOK"}  # Kraken's time_in_force of an order that never rests


def _activities(item: object) -> list[Activity]:
    """What one execution report says: a fill, and "order" if a resting order changed. Reports
    of an order that never rests (a market order, IOC or FOK: its pending_new, new, filled)
    wake nobody but for its fills: the master's open-orders watcher would read for nothing."""
    if not isinstance(item, dict):
        return ["order"]
    rests = item.get("order_type") != "market" and item.get("time_in_force") not in NEVER_RESTS
    if item.get("exec_type") != "trade":
        return ["order"] if rests else []
    fill = _fill(item)
    if fill is None:
        return ["fill", "order"]
    return [fill, "order"] if rests else [fill]


def _fill(item: dict[str, Any]) -> Fill | None:
    """An execution as a `Fill` (its trade id Kraken's `exec_id`, the id of the trade in the
    REST trade history, as ccxt's unified trade id has it for both); None when a field is
    missing or malformed: the fill is then read by REST, woken by a bare "fill"."""
    try:
        side, exec_id, order_id = item["side"], item["exec_id"], item["order_id"]
        amount, price = Decimal(str(item["last_qty"])), Decimal(str(item["last_price"]))
        at = datetime.fromisoformat(str(item["timestamp"])).timestamp()
        symbol, client_order_id = item["symbol"], item.get("cl_ord_id")
    except (KeyError, ArithmeticError, ValueError, TypeError):
        return None
    texts = (exec_id, order_id, symbol)
    if side not in ("buy", "sell") or not all(isinstance(t, str) and t for t in texts):
        return None
    if not (amount.is_finite() and amount > 0 and price.is_finite() and price > 0):
        return None
    return Fill(
        order_id=order_id,
        symbol=symbol,
        side=side,
        amount=amount,
        price=price,
        at=at,
        client_order_id=client_order_id if isinstance(client_order_id, str) else None,
        trade_id=exec_id,
    )


class KrakenExecutions(ccxtpro.kraken):  # type: ignore[misc]
    """ccxt.pro's Kraken client, reporting each `executions` update (and the end of a
    connection: None) on `reports`, tagged with the connection it came on."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.reports: asyncio.Queue[tuple[object, Activity | None]] = asyncio.Queue()

    def handle_message(self, client: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("channel") == "executions":
            if message.get("type") == "update":  # a snapshot is what is, not a change
                for item in message.get("data") or []:
                    for activity in _activities(item):
                        self.reports.put_nowait((client, activity))
            return
        if isinstance(message, dict) and message.get("method") == "subscribe" and message.get("success"):
            client.resolve(message, str(message.get("req_id")))  # ccxt resolves no v2 ack
            return
        super().handle_message(client, message)  # pongs; a refusal rejects its req_id

    def on_error(self, client: Any, error: Any) -> None:
        super().on_error(client, error)
        self.reports.put_nowait((client, None))

    def on_close(self, client: Any, error: Any) -> None:
        super().on_close(client, error)
        self.reports.put_nowait((client, None))

    def subscribe_message(self, token: str) -> dict[str, Any]:
        """The executions subscription: no snapshot (the master reads what is by REST)."""
        params = {"channel": "executions", "token": token, "snap_orders": False, "snap_trades": False}
        return {"method": "subscribe", "params": params, "req_id": self.request_id()}


PROTOCOLS: dict[str, type[KrakenExecutions]] = {"kraken_v2_executions": KrakenExecutions}


def stream_url(spec: PrivateStream, base_url: str | None) -> str | None:
    """The stream's address under an account's base_url (an emulator); None: the venue's own."""
    if not base_url:
        return None
    parsed = urlparse(base_url)
    return parsed._replace(scheme=WS_SCHEMES.get(parsed.scheme, parsed.scheme), path=spec.path).geturl()


class CcxtStream:
    """One account's private stream: `activity()` is `Streaming.activity`."""

    def __init__(
        self,
        *,
        venue: CcxtVenue,
        spec: PrivateStream,
        account_id: str,
        base_url: str | None,
        token: Token,
        session: Callable[[], aiohttp.ClientSession],
        translate: Translate,
    ) -> None:
        self._venue, self._spec, self._account_id = venue, spec, account_id
        self._base_url, self._token, self._session = base_url, token, session
        self._translate = translate
        self._clients: set[KrakenExecutions] = set()
        self._closed = False
        self._subscribed = 0  # iterations whose subscription is confirmed and open now

    def _client(self) -> tuple[KrakenExecutions, str]:
        ex = PROTOCOLS[self._spec.protocol](
            {
                "session": self._session(),
                "enableRateLimit": False,
                "timeout_on_exit": 0,
                "logger": _VENDOR_LOG,
            }
        )
        url = stream_url(self._spec, self._base_url)
        if url is not None:
            ex.urls["api"]["ws"][self._spec.url_key] = url
        return ex, ex.urls["api"]["ws"][self._spec.url_key]

    @property
    def subscribed(self) -> bool:
        return self._subscribed > 0

    async def activity(self) -> AsyncIterator[Activity]:
        ex, url = self._client()
        self._clients.add(ex)
        attempt, dropped = 0, False
        try:
            while not self._closed:
                if attempt:
                    await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)))
                started = time.monotonic()
                connection = await self._subscribe(ex, url)
                if connection is None:
                    attempt += 1
                    continue
                self._subscribed += 1
                try:
                    if dropped:  # something may have happened while it was down
                        yield "fill"
                        yield "order"
                    async for item in _reports(ex, connection):
                        yield item
                finally:
                    self._subscribed -= 1
                if self._closed:
                    break
                dropped = True
                attempt = 1 if time.monotonic() - started >= STABLE_S else attempt + 1
                log.warning("event=stream_dropped venue=%s account=%s", self._venue.name, self._account_id)
        finally:
            self._clients.discard(ex)
            await ex.close()

    async def _subscribe(self, ex: KrakenExecutions, url: str) -> object | None:
        """Subscribe on a new connection: the connection, or None after a passing failure.
        `AuthError` when the venue refuses the account's credentials or its token."""
        try:
            message = ex.subscribe_message(await self._token())
            await asyncio.wait_for(
                ex.watch(url, str(message["req_id"]), message, "executions"), SUBSCRIBE_TIMEOUT_S
            )
        except Exception as exc:  # noqa: BLE001 - the vendor edge: ccxt's errors become ours, logged
            await _discard(ex, url)
            error = self._error(exc)
            if isinstance(error, AuthError):
                raise error from None
            log.warning(
                "event=stream_subscribe_failed venue=%s account=%s error=%s",
                self._venue.name,
                self._account_id,
                error,
            )
            return None
        log.info("event=stream_subscribed venue=%s account=%s", self._venue.name, self._account_id)
        connection: object = ex.client(url)
        return connection

    def _error(self, exc: Exception) -> CopytradeError:
        if isinstance(exc, CopytradeError):
            return exc
        if isinstance(exc, TimeoutError):
            return TemporaryError(f"{self._venue.name}: no subscribe ack in {SUBSCRIBE_TIMEOUT_S:.0f} s")
        return self._translate(exc)

    async def close(self) -> None:
        self._closed = True
        for ex in list(self._clients):
            ex.reports.put_nowait((ex, None))  # wakes an iteration waiting for a report
            await ex.close()


async def _discard(ex: KrakenExecutions, url: str) -> None:
    """Forget a connection whose subscription failed: the next attempt opens its own."""
    client = (ex.clients or {}).pop(url, None)
    if client is not None:
        await client.close()


async def _reports(ex: KrakenExecutions, connection: object) -> AsyncIterator[Activity]:
    """The connection's activity until it ends (or the stream is closed: a report from `ex`)."""
    while True:
        source, activity = await ex.reports.get()
        if source is ex or (source is connection and activity is None):
            return
        if source is connection and activity is not None:
            yield activity
