"""Alpaca's trading stream (`wss://paper-api.alpaca.markets/stream`) on the emulator's app, at
GET /stream, as alpaca-py's `TradingStream(url_override=...)` speaks it.

The client sends JSON text: `{"action": "authenticate", "data": {"key_id", "secret_key"}}`, then
`{"action": "listen", "data": {"streams": ["trade_updates"]}}`. Replies go out as JSON in binary
frames, as Alpaca's paper endpoint sends them: `{"stream": "authorization", "data": {"action":
"authenticate", "status": "authorized"}}` (a wrong key: "unauthorized", and the socket closes),
`{"stream": "listening", "data": {"streams": [...]}}` (a listen before authorizing is answered
"unauthorized" on the authorization stream), then one `{"stream": "trade_updates", "data":
{"event", "execution_id", "timestamp", "order", ...}}` per change of the account's orders: new,
fill / partial_fill (with price, qty and position_qty), canceled, replaced. `drop()` closes every
socket from the venue's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from tests.emulators.state import OPEN, USER_CANCELED, Account, Order, VenueState

Json = dict[str, Any]
STREAMS = frozenset({"trade_updates"})
_ENDED = ("canceled", USER_CANCELED)


@dataclass(frozen=True)
class _Seen:
    """What a connection last told of an order."""

    status: str
    amount: Decimal


def events(order: Order, before: _Seen | None) -> list[str]:
    """Alpaca's trade_updates events for the change from `before` (None: a new order) to now."""
    found = ["new"] if before is None else []
    before = before or _Seen(OPEN, Decimal(0))
    if order.amount > before.amount:
        found.append("fill" if order.status == "filled" else "partial_fill")
    if order.status != before.status and order.status in _ENDED:
        found.append("replaced" if order.replaced_by else "canceled")
    return found


def _send(ws: web.WebSocketResponse, stream: str, data: Json) -> Any:
    return ws.send_bytes(json.dumps({"stream": stream, "data": data}).encode())


class TradeUpdates:
    """The stream endpoint: `render` is the REST order format (`AlpacaEmulator._order_json`)."""

    def __init__(self, state: VenueState, render: Callable[[Order], Json]) -> None:
        self._state, self._render = state, render
        self.sockets: set[web.WebSocketResponse] = set()
        self.connections = 0  # sockets ever authorized

    async def drop(self) -> None:
        """Close every socket from the venue's side (a restart, a network cut)."""
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server restarting")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            account = await self._authorized(ws)
            if account is not None:
                self.connections += 1
                await self._serve(ws, account)
        finally:
            self.sockets.discard(ws)
        return ws

    async def _authorized(self, ws: web.WebSocketResponse) -> Account | None:
        """The account the first authenticate message names, or None (refused, or gone)."""
        async for message in ws:
            body = _decode(message)
            if body.get("action") == "listen":
                await _send(ws, "authorization", {"action": "listen", "status": "unauthorized"})
                continue
            if body.get("action") != "authenticate":
                continue
            data = body.get("data") or {}
            account = self._state.accounts.get(str(data.get("key_id", "")))
            if account is None or account.secret != data.get("secret_key"):
                await _send(ws, "authorization", {"action": "authenticate", "status": "unauthorized"})
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
                return None
            await _send(ws, "authorization", {"action": "authenticate", "status": "authorized"})
            return account
        return None

    async def _serve(self, ws: web.WebSocketResponse, account: Account) -> None:
        """Answer listens; while trade_updates is listened to, push the account's changes."""
        queue: asyncio.Queue[Json] = asyncio.Queue()
        seen = {id(o): _Seen(o.status, o.amount) for o in account.orders}

        def heard(order: Order) -> None:
            for event in events(order, seen.get(id(order))):
                queue.put_nowait(self._update(account, order, event, seen.get(id(order))))
            seen[id(order)] = _Seen(order.status, order.amount)

        pusher = asyncio.create_task(self._push(ws, queue))
        try:
            async for message in ws:
                streams = sorted(STREAMS & set((_decode(message).get("data") or {}).get("streams", [])))
                with contextlib.suppress(ValueError):
                    account.listeners.remove(heard)
                if streams:
                    account.listeners.append(heard)
                await _send(ws, "listening", {"streams": streams})
        finally:
            with contextlib.suppress(ValueError):
                account.listeners.remove(heard)
            pusher.cancel()
            await asyncio.wait({pusher})

    @staticmethod
    async def _push(ws: web.WebSocketResponse, queue: asyncio.Queue[Json]) -> None:
        while not ws.closed:
            update = await queue.get()
            with contextlib.suppress(ConnectionResetError):  # the client went: the reader ends
                await _send(ws, "trade_updates", update)

    def _update(self, account: Account, order: Order, event: str, before: _Seen | None) -> Json:
        """One trade_updates message, the order as it is now; a fill tells what this event
        filled, at the order's latest price, and the position after it."""
        update: Json = {
            "event": event,
            "execution_id": str(uuid.uuid4()),
            "timestamp": _iso(time.time()),
            "order": self._render(order),
        }
        if event in ("fill", "partial_fill"):
            market = self._state.markets[order.symbol]
            last = order.parts[-1].price if order.parts else order.price
            filled = order.amount - (before.amount if before else Decimal(0))
            update |= {
                "price": _num(last),
                "qty": _num(filled),
                "position_qty": _num(account.balances.get(market.base, Decimal(0))),
            }
        return update


def _decode(message: Any) -> Json:
    """A client's JSON message (text or binary); anything else is an empty one."""
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return {}
    with contextlib.suppress(ValueError):
        body = json.loads(message.data)
        return body if isinstance(body, dict) else {}
    return {}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")
