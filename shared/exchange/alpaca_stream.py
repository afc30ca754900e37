"""Alpaca's private `trade_updates` stream, the account's `activity()` (`port.Streaming`).

aiohttp's WebSocket client, not alpaca-py's `TradingStream`: that one retries a refused key
forever (its "failed to authenticate" is caught by its own broad except and only logged), tells
no one of a reconnect (after which something may have been missed), and sees a stop only
between its 5 s read timeouts. The updates are still read with alpaca-py's model (`TradeUpdate`).

The protocol: send `authenticate` with the key pair, expect `authorization` "authorized"; send
`listen` to trade_updates, expect `listening` with it; then every `trade_updates` message is one
order event (new, fill, partial_fill, canceled, replaced, expired, ...). Alpaca's paper endpoint
sends JSON in binary frames, the live one in text frames: both are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from alpaca.trading.enums import TradeEvent
from alpaca.trading.models import TradeUpdate
from pydantic import ValidationError

from shared.errors import AuthError, ExchangeError
from shared.exchange.port import Activity

log = logging.getLogger("copytrade.exchange.alpaca.stream")
LIVE_URL = "wss://api.alpaca.markets/stream"
PAPER_URL = "wss://paper-api.alpaca.markets/stream"
STREAM = "trade_updates"
REPLY_TIMEOUT_S = 10.0  # for the authorization and listening replies
HEARTBEAT_S = 20.0  # a ping every 20 s: a silent dead connection is found within 30 s
_FILLS = frozenset({"fill", "partial_fill"})
_LISTEN = json.dumps({"action": "listen", "data": {"streams": [STREAM]}})


def stream_url(base_url: str | None, *, paper: bool) -> str:
    """The stream's URL: Alpaca's own, or `/stream` on the `base_url` host (an emulator)."""
    if not base_url:
        return PAPER_URL if paper else LIVE_URL
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/stream", "", ""))


@dataclass(frozen=True)
class Backoff:
    """The pause before reconnecting after `failures` connections in a row ended or failed."""

    first_s: float = 0.1
    max_s: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.first_s * 2.0 ** max(0, failures - 1))


class _Dropped(Exception):
    """The connection closed, or a reply did not come."""


class AlpacaStream:
    """One account's trade_updates stream; each `activity()` iteration holds its own socket."""

    def __init__(
        self, *, url: str, key: str, secret: str, account_id: str, backoff: Backoff | None = None
    ) -> None:
        self.url, self.account_id = url, account_id
        self._auth = json.dumps({"action": "authenticate", "data": {"key_id": key, "secret_key": secret}})
        self._backoff = backoff or Backoff()
        self._closing = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._sockets: set[aiohttp.ClientWebSocketResponse] = set()
        self.reconnects = 0  # subscriptions made again after one was lost
        self._subscribed = 0  # iterations whose subscription is confirmed and open now

    @property
    def subscribed(self) -> bool:
        return self._subscribed > 0

    async def activity(self) -> AsyncIterator[Activity]:
        """`port.Streaming.activity`: ends when `close()` is called."""
        subscribed, failures = False, 0
        while not self._closing.is_set():
            try:
                async with self._connected() as ws:
                    await self._subscribe(ws)
                    failures = 0
                    self._subscribed += 1
                    try:
                        if subscribed:  # something may have happened while it was down
                            self.reconnects += 1
                            yield "fill"
                            yield "order"
                        subscribed = True
                        while True:
                            yield await _next_update(ws)
                    finally:
                        self._subscribed -= 1
            except (aiohttp.ClientError, TimeoutError, _Dropped) as exc:
                if self._closing.is_set():
                    return
                log.warning(
                    "event=alpaca_stream_dropped account=%s error=%s", self.account_id, type(exc).__name__
                )
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._backoff.delay(failures))

    async def close(self) -> None:
        """End every iteration and close the sockets."""
        self._closing.set()
        for ws in list(self._sockets):
            await ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            ws = await self._session.ws_connect(self.url, heartbeat=HEARTBEAT_S, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise AuthError(
                    f"alpaca: trading stream refused account {self.account_id} (HTTP {exc.status})"
                ) from None
            raise
        self._sockets.add(ws)
        try:
            yield ws
        finally:
            self._sockets.discard(ws)
            await ws.close()

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Authenticate, then listen to trade_updates; AuthError if the key pair is refused."""
        await ws.send_str(self._auth)
        reply = await _reply(ws, "authorization")
        if reply.get("status") != "authorized":
            raise AuthError(f"alpaca: trading stream refused the API key of account {self.account_id}")
        await ws.send_str(_LISTEN)
        reply = await _reply(ws, "listening")
        if STREAM not in (reply.get("streams") or []):
            raise ExchangeError(f"alpaca: account {self.account_id} may not listen to {STREAM}")
        log.info("event=alpaca_stream_subscribed account=%s", self.account_id)


async def _reply(ws: aiohttp.ClientWebSocketResponse, stream: str) -> dict[str, Any]:
    """The data of the next message on `stream`, others skipped."""
    while True:
        message = await ws.receive(timeout=REPLY_TIMEOUT_S)
        body = _decode(message)
        if body.get("stream") == stream:
            data = body.get("data")
            return data if isinstance(data, dict) else {}


async def _next_update(ws: aiohttp.ClientWebSocketResponse) -> Activity:
    """What the next trade_updates message reports; _Dropped when the socket closes."""
    while True:
        body = _decode(await ws.receive())
        if body.get("stream") == STREAM:
            return activity_of(body.get("data"))


def _decode(message: aiohttp.WSMessage) -> dict[str, Any]:
    """A message's JSON object (text or binary frame); _Dropped when the socket closed."""
    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise _Dropped("closed")
    if message.type is aiohttp.WSMsgType.ERROR:
        raise _Dropped(type(message.data).__name__)
    if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return {}
    try:
        body = json.loads(message.data)
    except ValueError:
        log.warning("event=alpaca_stream_unreadable")
        return {}
    return body if isinstance(body, dict) else {}


def activity_of(data: object) -> Activity:
    """ "fill" for a fill or partial fill, else "order". An update alpaca-py's model cannot read
    still wakes the watchers, by its raw event name."""
    try:
        event: object = TradeUpdate.model_validate(data).event
    except ValidationError:
        log.warning("event=alpaca_trade_update_unparsed")
        event = data.get("event") if isinstance(data, dict) else None
    name = event.value if isinstance(event, TradeEvent) else event
    return "fill" if name in _FILLS else "order"
