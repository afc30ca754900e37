"""Kraken's private WebSocket (v2) for the Kraken emulator: the `executions` channel.

A client asks the REST endpoint GetWebSocketsToken for a token, opens `ws://.../v2` and sends
`{"method": "subscribe", "params": {"channel": "executions", "token": ...}, "req_id": n}`. The
socket answers with the subscribe ack (`"success": true`, or `false` with Kraken's error for a
token it does not know), then a snapshot (open orders unless `snap_orders` is false, the last 50
trades if `snap_trades`), then one `update` per event on the account's orders, as Kraken's
`exec_type`: pending_new and new (an order accepted), trade (one fill), filled, amended, status
(a trigger reached), canceled. `{"method": "ping"}` is answered with a pong. The account is the
token's; an account hears only of its own orders (`Account.listeners` of the venue state).

Test controls: `refuse(api_key)` (the socket refuses that account's tokens, as Kraken refuses an
expired or revoked one), `drop()` (the venue closes every socket, as a Kraken restart does) and
`foreign_exec_ids()` (a fill's exec_id is no longer its REST trade id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from tests.emulators.state import OPEN, USER_CANCELED, Account, Order, VenueState

TOKEN_TTL_S = 900  # a token opens a subscription within 15 minutes of being issued
INVALID_SESSION = "ESession:Invalid session"
ENDED = {"filled": "filled", "canceled": "canceled", USER_CANCELED: "canceled"}


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _number(value: Decimal | None) -> float:
    return 0.0 if value is None else float(value)


def _fills(order: Order) -> list[Order]:
    """An order's trades: a resting order's parts, any other order itself if it filled."""
    if order.parts is not None:
        return order.parts
    return [order] if order.amount else []


@dataclass(frozen=True)
class _Seen:
    """What the stream last reported of an order, to tell what changed since."""

    status: str
    fills: int
    ordered: Decimal | None
    limit: Decimal | None
    triggered: bool

    @classmethod
    def of(cls, order: Order) -> _Seen:
        return cls(order.status, len(_fills(order)), order.ordered, order.limit_price, order.triggered)


@dataclass
class _Event:
    """One item of an update, rendered when told except the ids: a venue emulator renames an
    order (its id format) right after the state told of it, so they are read at send time."""

    item: dict[str, Any]
    order: Order
    fill: Order | None = None

    def render(self, foreign_ids: bool = False) -> dict[str, Any]:
        item = self.item | {"order_id": self.order.order_id}
        if self.fill is not None:
            trade_id = int(hashlib.sha256(self.fill.trade_id.encode()).hexdigest()[:8], 16)
            exec_id = f"E{trade_id:08X}" if foreign_ids else self.fill.trade_id
            item |= {"exec_id": exec_id, "trade_id": trade_id}
        return item


@dataclass(eq=False)
class _Socket:
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    account: Account | None = None
    sequence: int = 0
    foreign_ids: Callable[[], bool] = lambda: False  # KrakenStreams.foreign_exec_ids

    def send(self, message: dict[str, Any]) -> None:
        self.outbox.put_nowait(message)

    def send_events(self, events: list[_Event]) -> None:
        # a placeholder rendered by the writer, after the teller's synchronous code
        for event in events:
            self.outbox.put_nowait({"_event": event})

    async def write(self) -> None:
        while True:
            message = await self.outbox.get()
            if (event := message.get("_event")) is not None:
                self.sequence += 1
                message = {
                    "channel": "executions",
                    "type": "update",
                    "data": [event.render(self.foreign_ids())],
                    "sequence": self.sequence,
                }
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(json.dumps(message))


class KrakenStreams:
    """The tokens and subscribed sockets of one Kraken emulator."""

    def __init__(self, state: VenueState) -> None:
        self.state = state
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (api key, issued at)
        self._refused: set[str] = set()  # api keys whose tokens the socket refuses
        self._sockets: set[_Socket] = set()
        self._seen: dict[int, _Seen] = {}  # id(order) -> what was last reported
        self._listening: set[str] = set()  # api keys whose account this listens to
        self.subscriptions = 0  # subscriptions accepted so far
        self._foreign_ids = False

    # --- test controls ----------------------------------------------------------------------

    def refuse(self, api_key: str) -> None:
        """The socket refuses every token of this account from now on."""
        self._refused.add(api_key)

    def foreign_exec_ids(self) -> None:
        """From now on a fill's `exec_id` is not its trade id in the REST trade history (as a
        venue whose stream numbers executions its own way would send)."""
        self._foreign_ids = True

    async def drop(self) -> None:
        """Close every socket, as the venue does on a restart."""
        await asyncio.gather(*(s.ws.close(code=1001, message=b"restart") for s in list(self._sockets)))

    def tokens(self, api_key: str) -> list[str]:
        """The tokens issued to this account so far."""
        return [token for token, (key, _) in self._tokens.items() if key == api_key]

    def subscribed(self, api_key: str) -> int:
        """Sockets subscribed to this account's executions now."""
        return sum(1 for s in self._sockets if s.account is not None and s.account.api_key == api_key)

    # --- REST: GetWebSocketsToken -----------------------------------------------------------

    def issue(self, account: Account) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (account.api_key, time.monotonic())
        return {"token": token, "expires": TOKEN_TTL_S}

    # --- the socket -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        socket = _Socket(ws, foreign_ids=lambda: self._foreign_ids)
        self._sockets.add(socket)
        writer = asyncio.create_task(socket.write())
        socket.send(
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {"api_version": "v2", "connection_id": id(ws), "system": "online", "version": "2.0.10"}
                ],
            }
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._receive(socket, msg.data)
        finally:
            self._sockets.discard(socket)
            writer.cancel()
        return ws

    def _receive(self, socket: _Socket, text: str) -> None:
        try:
            request = json.loads(text)
        except ValueError:
            socket.send({"error": "EGeneral:Invalid arguments", "success": False})
            return
        method, req_id = request.get("method"), request.get("req_id")
        times = {"time_in": _rfc3339(time.time()), "time_out": _rfc3339(time.time())}
        if method == "ping":
            socket.send({"method": "pong", "req_id": req_id} | times)
        elif method == "subscribe":
            self._subscribe(socket, request.get("params") or {}, req_id, times)
        else:
            socket.send(
                {"error": "EGeneral:Invalid arguments", "method": method, "req_id": req_id, "success": False}
            )

    def _subscribe(
        self, socket: _Socket, params: dict[str, Any], req_id: object, times: dict[str, str]
    ) -> None:
        reply = {"method": "subscribe", "req_id": req_id} | times
        if params.get("channel") != "executions":
            socket.send(reply | {"error": "EGeneral:Invalid arguments:channel", "success": False})
            return
        account = self._account_of(str(params.get("token", "")))
        if account is None:
            socket.send(reply | {"error": INVALID_SESSION, "success": False})
            return
        self._listen(account)
        socket.account = account
        self.subscriptions += 1
        result = {"channel": "executions", "maxratecount": 180, "snapshot": True, "warnings": []}
        socket.send(reply | {"result": result, "success": True})
        snapshot = self._snapshot(
            account, orders=params.get("snap_orders", True), trades=params.get("snap_trades", False)
        )
        if snapshot is not None:
            socket.send(snapshot)

    def _account_of(self, token: str) -> Account | None:
        api_key, issued = self._tokens.get(token, ("", 0.0))
        if api_key in self._refused or time.monotonic() - issued > TOKEN_TTL_S:
            return None
        return self.state.accounts.get(api_key)

    def _snapshot(self, account: Account, *, orders: bool, trades: bool) -> dict[str, Any] | None:
        if not (orders or trades):
            return None
        data = [
            _order_item(o, "new") | {"order_id": o.order_id} for o in account.orders if orders and o.is_open
        ]
        recent = account.trades()[-50:] if trades else []
        data += [_Event(_trade_item(t, t), t, t).render(self._foreign_ids) for t in recent]
        return {"channel": "executions", "type": "snapshot", "data": data, "sequence": 1}

    # --- the state's changes ------------------------------------------------------------------

    def _listen(self, account: Account) -> None:
        if account.api_key in self._listening:
            return
        self._listening.add(account.api_key)
        for order in account.orders:  # what happened before is the snapshot's, not an update
            self._seen[id(order)] = _Seen.of(order)
        account.listeners.append(lambda order: self._changed(account, order))

    def _changed(self, account: Account, order: Order) -> None:
        events = _events(order, self._seen.get(id(order)))
        self._seen[id(order)] = _Seen.of(order)
        for socket in self._sockets:
            if socket.account is account:
                socket.send_events(events)

    async def close(self, _app: web.Application | None = None) -> None:
        """Close every socket (the server's shutdown)."""
        await self.drop()


def _events(order: Order, seen: _Seen | None) -> list[_Event]:
    """Kraken's events for what happened to `order` since the stream last reported it (`seen`;
    None: first told of it, so it is new)."""
    fills = _fills(order)
    events = (
        [] if seen is not None else [_Event(_order_item(order, k), order) for k in ("pending_new", "new")]
    )
    if seen is not None and (order.ordered, order.limit_price) != (seen.ordered, seen.limit):
        events.append(_Event(_order_item(order, "amended"), order))
    if seen is not None and order.triggered and not seen.triggered:
        events.append(_Event(_order_item(order, "status"), order))
    events += [_Event(_trade_item(order, f), order, f) for f in fills[seen.fills if seen else 0 :]]
    if order.status in ENDED and (seen is None or seen.status != order.status):
        events.append(_Event(_order_item(order, ENDED[order.status]), order))
    return events


def _order_status(order: Order, exec_type: str) -> str:
    if exec_type == "pending_new":
        return "pending_new"
    if order.status == OPEN:
        return "partially_filled" if order.amount else "new"
    return ENDED.get(order.status, "canceled")


def _order_item(order: Order, exec_type: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "exec_type": exec_type,
        "order_status": _order_status(order, exec_type),
        "order_userref": 0,
        "symbol": order.symbol,
        "side": order.side,
        "order_type": order.kind.replace("_", "-") if order.trigger else order.order_type,
        "order_qty": _number(order.size),
        "time_in_force": "GTC" if order.parts is not None else "IOC",
        "cum_qty": _number(order.amount),
        "cum_cost": _number(order.cost),
        "avg_price": _number(order.price),
        "fee_usd_equiv": 0.0,
        "timestamp": _rfc3339(order.updated or order.created),
    }
    if order.limit_price is not None:
        item |= {"limit_price": _number(order.limit_price), "limit_price_type": "static"}
    if order.trigger_price is not None:
        item |= {
            "stop_price": _number(order.trigger_price),
            "triggers": {"price": _number(order.trigger_price)},
        }
    if order.client_order_id is not None:
        item["cl_ord_id"] = order.client_order_id
    if exec_type == "canceled":
        item |= {"cancel_reason": "User requested", "reason": "User requested"}
    return item


def _trade_item(order: Order, fill: Order) -> dict[str, Any]:
    fills = _fills(order)
    done = sum((f.amount for f in fills[: fills.index(fill) + 1]), Decimal(0)) >= order.size
    item: dict[str, Any] = {
        "exec_type": "trade",
        "order_status": "filled" if done else "partially_filled",
        "order_userref": 0,
        "symbol": order.symbol,
        "side": order.side,
        "order_type": order.order_type,
        "last_qty": _number(fill.amount),
        "last_price": _number(fill.price),
        "liquidity_ind": "t" if order.parts is None else "m",
        "cost": _number(fill.cost),
        "fee_usd_equiv": 0.0,
        "fees": [{"asset": "USD", "qty": 0.0}],
        "timestamp": _rfc3339(fill.created),
    }
    if order.client_order_id is not None:
        item["cl_ord_id"] = order.client_order_id
    return item
