"""Resting orders on the ccxt venues (Kraken, Coinbase, Binance, OKX): good-till-canceled limit
orders, stop-loss and take-profit triggers, cancel, amend and the list of open orders.

Functions of the account's ccxt client and venue record; `CcxtAccount` delegates to them and
translates what ccxt raises (`vendor_calls`). Orders are found again by our client order id with
the venue's own lookup (`CcxtAccount`'s `Lookup`, passed in as `find`), so a cancel or an amend
works on what the venue says now, never on what copytrade last knew.

What each venue does natively is data, in `RESTING`: a kind the venue has no order for is
refused before anything is sent (`NotNative`), never emulated. Sent through ccxt's unified API:
a good-till-canceled limit is `create_order(symbol, "limit", side, amount, price)`; a stop-loss
or take-profit passes `stopLossPrice` / `takeProfitPrice`, with type "market" or "limit" for what
the trigger places (Kraken `ordertype` stop-loss[-limit] / take-profit[-limit]; Binance
STOP_LOSS[_LIMIT] / TAKE_PROFIT[_LIMIT]; Coinbase `stop_limit_stop_limit_gtc`, STOP_DOWN or
STOP_UP by side; OKX a conditional algo order, below); `edit_order` amends (Kraken AmendOrder,
Coinbase orders/edit and OKX amend-order in place; Binance order/cancelReplace, a new order).

OKX keeps its stop-loss and take-profit orders apart, as algo orders (`Triggers`): placed at
trade/order-algo (ccxt: `stopLossPrice` / `takeProfitPrice` -> ordType conditional) under our
client order id as `algoClOrdId`, found by it (`fetch_order` with `trigger`), listed with
trade/orders-algo-pending, cancelled with trade/cancel-algos. Once triggered, the order the algo
placed (its own ordId and clOrdId) carries the fill: it is read through the algo order, whose id
stays the order's id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt

from shared.errors import InvalidOrder
from shared.exchange.port import (
    RESTING_KINDS,
    NotNative,
    OpenOrder,
    OrderAck,
    OrderCapabilities,
    OrderCommand,
    RestingKind,
    Trigger,
    amended_client_id,
    order_status,
    resting_kind,
)
from shared.exchange.venues import CcxtVenue

# the venue's own lookup of an order by client order id (ccxt order dict, or None)
Find = Callable[[Any, str, str], Awaitable[dict[str, Any] | None]]
KindOf = Callable[[dict[str, Any]], RestingKind | None]

_ENDED = ("canceled", "expired", "rejected")  # ccxt's unified statuses of an order that ended
# ccxt create_order param carrying each trigger's price (unified across venues)
_TRIGGER_PARAM = {"stop_loss": "stopLossPrice", "take_profit": "takeProfitPrice"}


def _info(order: dict[str, Any]) -> dict[str, Any]:
    info = order.get("info")
    return info if isinstance(info, dict) else {}


def _kraken_kind(order: dict[str, Any]) -> RestingKind | None:
    """From descr.ordertype: limit, stop-loss, stop-loss-limit, take-profit, take-profit-limit."""
    descr = _info(order).get("descr") or {}
    kind = str(descr.get("ordertype", "")).replace("-", "_")
    return kind if kind in RESTING_KINDS else None


def _binance_kind(order: dict[str, Any]) -> RestingKind | None:
    """From type: LIMIT (not IOC), STOP_LOSS[_LIMIT], TAKE_PROFIT[_LIMIT]."""
    info = _info(order)
    kind = str(info.get("type", "")).lower()
    if kind == "limit" and info.get("timeInForce") != "GTC":
        return None
    return kind if kind in RESTING_KINDS else None


def _coinbase_kind(order: dict[str, Any]) -> RestingKind | None:
    """From order_configuration: limit_limit_gtc, or stop_limit_stop_limit_gtc whose
    stop_direction tells a stop-loss (a sell stopping down, a buy stopping up) from a
    take-profit."""
    config = _info(order).get("order_configuration") or {}
    if "limit_limit_gtc" in config:
        return "limit"
    stop = config.get("stop_limit_stop_limit_gtc")
    if not isinstance(stop, dict):
        return None
    down = stop.get("stop_direction") == "STOP_DIRECTION_STOP_DOWN"
    return "stop_loss_limit" if down == (order.get("side") == "sell") else "take_profit_limit"


_OKX_ALGO_TYPES = ("conditional",)  # the algo orders copytrade places: one-way stops
_TRIGGERED: dict[tuple[bool, bool], RestingKind] = {  # (stop-loss, limit) -> kind
    (True, False): "stop_loss",
    (True, True): "stop_loss_limit",
    (False, False): "take_profit",
    (False, True): "take_profit_limit",
}


def _okx_kind(order: dict[str, Any]) -> RestingKind | None:
    """From ordType: limit or post_only rest; ioc and market do not; a conditional algo order is
    a stop-loss (slTriggerPx) or take-profit (tpTriggerPx), at market where its order price is
    -1. An order an algo order placed (algoId set) is listed as that algo order."""
    info = _info(order)
    if info.get("ordType") in _OKX_ALGO_TYPES:
        stop = bool(info.get("slTriggerPx"))
        limit = info.get("slOrdPx" if stop else "tpOrdPx") not in (None, "", "-1")
        return _TRIGGERED[(stop, limit)]
    if info.get("algoId"):
        return None
    return "limit" if info.get("ordType") in ("limit", "post_only") else None


def _okx_trigger_params(client_order_id: str) -> dict[str, Any]:
    """Raw: ccxt sends a client order id as clOrdId, which OKX gives the order the algo order
    places, and a spot conditional order's tdMode as "cross"; a spot cash account's is cash."""
    return {"algoClOrdId": client_order_id, "tdMode": "cash"}


async def _okx_find_algo(ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
    try:
        algo = await ex.fetch_order(None, symbol, {"trigger": True, "clientOrderId": client_order_id})
    except ccxt.OrderNotFound:
        return None
    return await _okx_as_order(ex, dict(algo), symbol)


async def _okx_as_order(ex: Any, algo: dict[str, Any], symbol: str) -> dict[str, Any]:
    """An algo order as ccxt would parse our order: its client id, trigger and limit price (ccxt
    reads neither from a conditional order); once triggered, the fill and status of the order
    it placed."""
    info = _info(algo)
    stop = bool(info.get("slTriggerPx"))
    limit = info.get("slOrdPx" if stop else "tpOrdPx")
    order = algo | {
        "clientOrderId": info.get("algoClOrdId") or None,
        "triggerPrice": info.get("slTriggerPx" if stop else "tpTriggerPx"),
        "price": None if limit in (None, "", "-1") else limit,
    }
    placed = _okx_placed(algo)
    if placed is None:
        return order
    child = await ex.fetch_order(placed, symbol)
    return order | {k: child.get(k) for k in ("filled", "average", "cost", "status")}


def _okx_placed(algo: dict[str, Any]) -> str | None:
    """The ordId of the order a triggered algo order placed; None before it triggered."""
    info = _info(algo)
    return info.get("ordId") or next(iter(info.get("ordIdList") or []), None)


async def _okx_open_algos(
    ex: Any, symbol: str | None, ordinary: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The algo orders waiting, and those triggered whose order still rests (`ordinary`)."""
    waiting = await ex.fetch_open_orders(symbol, params={"ordType": ",".join(_OKX_ALGO_TYPES)})
    found = [await _okx_as_order(ex, dict(a), str(a["symbol"])) for a in waiting]
    for order in ordinary:
        algo_id = _info(order).get("algoId")
        if algo_id:
            algo = await ex.fetch_order(algo_id, order["symbol"], {"trigger": True})
            found.append(await _okx_as_order(ex, dict(algo), str(order["symbol"])))
    return found


async def _okx_cancel_algo(ex: Any, algo: dict[str, Any], symbol: str) -> None:
    """Cancel a waiting algo order (cancel-algos), or the order a triggered one placed."""
    placed = _okx_placed(algo)
    if placed is None:
        await ex.cancel_order(algo["id"], symbol, {"trigger": True})
    else:
        await ex.cancel_order(placed, symbol)


@dataclass(frozen=True)
class Triggers:
    """Trigger orders a venue keeps apart from its other orders, under ids and endpoints of
    their own (OKX's algo orders): how ccxt places, finds, lists and cancels them."""

    params: Callable[[str], dict[str, Any]]  # create_order params naming our client order id
    find: Find  # by our client order id, in any state
    # the open ones of a symbol (or all), given the venue's open ordinary orders
    listed: Callable[[Any, str | None, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]
    owns: Callable[[dict[str, Any]], bool]  # a found order is one of them
    cancel: Callable[[Any, dict[str, Any], str], Awaitable[None]]  # one found open


OKX_ALGO = Triggers(
    params=_okx_trigger_params,
    find=_okx_find_algo,
    listed=_okx_open_algos,
    owns=lambda order: _info(order).get("ordType") in _OKX_ALGO_TYPES,
    cancel=_okx_cancel_algo,
)


@dataclass(frozen=True)
class Resting:
    """How one venue takes resting orders through ccxt 4.5."""

    capabilities: OrderCapabilities
    kind_of: KindOf  # a resting order's kind, from ccxt's order and the venue's raw reply
    open_orders_need_symbol: bool = False  # fetch_open_orders without a symbol is refused
    # edit_order needs both price and size (the order's current one where unchanged)
    edit_needs_both: bool = False
    refused_because: str = "the venue has no such order"  # NotNative's reason, for the skip
    # the venue's lookup scans only its latest orders (Coinbase: no filter by client order id):
    # a resting order, perhaps older than that page, is looked for among the open orders first
    open_first: bool = False
    triggers: Triggers | None = None  # trigger orders kept apart (OKX's algo orders)


_ALL = frozenset(RESTING_KINDS)

RESTING: Mapping[str, Resting] = {
    "kraken": Resting(
        OrderCapabilities(
            native=_ALL,
            amend="in_place",
            amend_keeps_client_id=True,
            notes=("AmendOrder keeps txid, cl_ord_id, fills and (where possible) queue priority",),
        ),
        _kraken_kind,
    ),
    "coinbase": Resting(
        OrderCapabilities(
            native=frozenset({"limit", "stop_loss_limit", "take_profit_limit"}),
            amend="in_place",
            amend_keeps_client_id=True,
            notes=(
                "Advanced Trade has no stop-market order: stop_limit_stop_limit_gtc only",
                "orders/edit changes a limit_limit_gtc order's price and size in place",
            ),
        ),
        _coinbase_kind,
        edit_needs_both=True,
        open_first=True,
        refused_because="Advanced Trade's stops are stop-limit orders only",
    ),
    "binance": Resting(
        OrderCapabilities(
            native=_ALL,
            amend="replace",
            amend_keeps_client_id=False,
            notes=(
                "edit_order is order/cancelReplace (STOP_ON_FAILURE): a new order for what is "
                "left, under a derived client order id",
            ),
        ),
        _binance_kind,
        open_orders_need_symbol=True,
    ),
    "okx": Resting(
        OrderCapabilities(
            native=_ALL,
            amend="in_place",
            amend_keeps_client_id=True,
            notes=(
                "amend-order keeps ordId and clOrdId",
                "stop-loss and take-profit are conditional algo orders (order-algo) under our "
                "client order id as algoClOrdId; triggered, the order they place carries the fill",
            ),
        ),
        _okx_kind,
        triggers=OKX_ALGO,
    ),
}


def resting(venue: CcxtVenue) -> Resting:
    found = RESTING.get(venue.name)
    if found is None:
        raise NotNative(f"{venue.name}: resting orders are not wired for this venue")
    return found


def with_triggers(venue: CcxtVenue, find: Find) -> Find:
    """The venue's lookup, then its trigger orders' own where it keeps them apart (OKX)."""
    quirks = RESTING.get(venue.name)
    triggers = None if quirks is None else quirks.triggers
    if triggers is None:
        return find

    async def then_triggers(ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
        found = await find(ex, client_order_id, symbol)
        return found if found is not None else await triggers.find(ex, client_order_id, symbol)

    return then_triggers


def _finder(venue: CcxtVenue, find: Find) -> Find:
    """The venue's lookup (`with_triggers`), after the open orders where its lookup sees only
    the latest page."""
    find = with_triggers(venue, find)
    if not resting(venue).open_first:
        return find

    async def open_first(ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
        for order in await ex.fetch_open_orders(symbol):
            if order.get("clientOrderId") == client_order_id:
                return dict(order)
        return await find(ex, client_order_id, symbol)

    return open_first


def refuse_unless_native(venue: CcxtVenue, order: OrderCommand) -> RestingKind:
    """The order's resting kind if the venue places it natively; NotNative otherwise."""
    kind = resting_kind(order)
    if kind is None:
        raise InvalidOrder(f"{venue.name}: not a resting order")
    quirks = resting(venue)
    if kind not in quirks.capabilities.native:
        raise NotNative(f"{venue.name}: no native {kind} order ({quirks.refused_because})")
    return kind


def ack_of(order: dict[str, Any], client_order_id: str) -> OrderAck:
    """Our ack of a ccxt order, with the base size asked for and what filled of it so far."""
    filled = _dec(order.get("filled"))
    average = order.get("average")
    if average is None and filled > 0 and order.get("cost") is not None:
        average = _dec(order["cost"]) / filled
    status = order.get("status")
    return OrderAck(
        exchange_order_id=str(order["id"]),
        client_order_id=client_order_id,
        status=order_status(done=status == "closed", ended=status in _ENDED, filled=filled),
        filled_base=filled if filled > 0 else None,
        avg_price=_dec(average) if average is not None and filled > 0 else None,
        ordered_base=None if order.get("amount") is None else _dec(order["amount"]),
    )


def open_order_of(order: dict[str, Any], kind_of: KindOf) -> OpenOrder | None:
    kind = kind_of(order)
    if kind is None or order.get("status") != "open":
        return None
    trigger = next(
        (order[k] for k in ("triggerPrice", "stopLossPrice", "takeProfitPrice") if order.get(k)), None
    )
    limit = kind == "limit" or kind.endswith("_limit")
    return OpenOrder(
        client_order_id=order.get("clientOrderId") or None,
        exchange_order_id=str(order["id"]),
        symbol=str(order["symbol"]),
        kind=kind,
        side=order["side"],
        size=_dec(order["amount"]),
        filled=_dec(order.get("filled")),
        price=_dec(order["price"]) if limit and order.get("price") else None,
        trigger_price=None if trigger is None else _dec(trigger),
    )


async def place(
    ex: Any, venue: CcxtVenue, order: OrderCommand, amount: float, params: dict[str, Any], *, find: Find
) -> OrderAck:
    """Place a resting order (`refuse_unless_native` first); the ack as the venue then shows
    it (a limit crossing the price may have filled). `params` carry the client order id."""
    kind = refuse_unless_native(venue, order)
    price = None if order.limit_price is None else float(order.limit_price)
    if order.trigger is not None:
        params = _trigger_params(venue, order, order.trigger, params)
    kind_type = "limit" if price is not None else "market"
    try:
        placed = dict(await ex.create_order(order.symbol, kind_type, order.side, amount, price, params))
    except ccxt.DuplicateOrderId:  # placed before: report that order
        placed = {}
    try:
        found = await _finder(venue, find)(ex, order.client_order_id, order.symbol)
    except ccxt.BaseError:
        if not placed:
            raise
        found = None  # placed all the same: reported as the venue's reply has it (submitted)
    if found is None and not placed:
        raise InvalidOrder(f"{venue.name}: {kind} order {order.client_order_id} not found")
    return ack_of(found or placed, order.client_order_id)


def _trigger_params(
    venue: CcxtVenue, order: OrderCommand, trigger: Trigger, params: dict[str, Any]
) -> dict[str, Any]:
    """create_order params of a trigger order: its trigger price, and where the venue keeps
    trigger orders apart, the client order id as those take it."""
    params = params | {_TRIGGER_PARAM[trigger]: float(order.trigger_price or 0)}
    triggers = resting(venue).triggers
    if triggers is None:
        return params
    params = {k: v for k, v in params.items() if k != venue.client_id_param}
    return params | triggers.params(order.client_order_id)


async def cancel(ex: Any, venue: CcxtVenue, client_order_id: str, symbol: str, find: Find) -> OrderAck | None:
    """Cancel the order if it is open; the order as it ended, or None if the venue knows none."""
    find = _finder(venue, find)
    found = await find(ex, client_order_id, symbol)
    if found is None:
        return None
    refused: Exception | None = None
    triggers = resting(venue).triggers
    if found.get("status") == "open":
        try:
            if triggers is not None and triggers.owns(found):
                await triggers.cancel(ex, found, symbol)
            else:
                await ex.cancel_order(found["id"], symbol)
        except (ccxt.OrderNotFound, ccxt.InvalidOrder, ccxt.BadRequest) as exc:
            refused = exc  # perhaps it ended meanwhile: the venue's answer below decides
        found = await find(ex, client_order_id, symbol) or found
    if refused is not None and found.get("status") == "open":
        raise refused
    return ack_of(found, client_order_id)


async def amend(
    ex: Any,
    venue: CcxtVenue,
    client_order_id: str,
    symbol: str,
    *,
    price: Decimal | None,
    size: Decimal | None,
    find: Find,
) -> OrderAck:
    """Amend an open resting limit order's price and/or size (its new total): in place, or
    where the venue replaces, as a new order for what is left under a derived client id."""
    quirks = resting(venue)
    mode = quirks.capabilities.amend
    if mode == "none":
        raise NotNative(f"{venue.name}: orders cannot be amended: cancel and place")
    find = _finder(venue, find)
    found = await find(ex, client_order_id, symbol)
    if found is None or found.get("status") != "open":
        raise InvalidOrder(f"{venue.name}: no open order {client_order_id} to amend")
    if quirks.kind_of(found) != "limit":
        raise NotNative(f"{venue.name}: only resting limit orders are amended: cancel and place")
    new_price = _dec(found["price"]) if price is None else price
    new_size = _dec(found["amount"]) if size is None else size
    if mode == "in_place":
        amount = float(new_size) if size is not None or quirks.edit_needs_both else None
        edit_price = float(new_price) if price is not None or quirks.edit_needs_both else None
        await ex.edit_order(found["id"], symbol, "limit", found["side"], amount, edit_price)
        after = await find(ex, client_order_id, symbol) or found
        _check_amended(venue, after, new_price, new_size)
        return ack_of(after, client_order_id)
    return await _replace(
        ex, venue, found, client_order_id, symbol, price=new_price, size=new_size, find=find
    )


def _check_amended(venue: CcxtVenue, order: dict[str, Any], price: Decimal, size: Decimal) -> None:
    """An edit the venue answered without applying (Coinbase answers a refused edit with HTTP 200
    and success false, which ccxt passes on as an order) is an error, unless the order ended."""
    applied = _dec(order.get("price")) == price and _dec(order.get("amount")) == size
    if order.get("status") == "open" and not applied:
        raise InvalidOrder(f"{venue.name}: amend of {order.get('id')} not applied")


async def _replace(
    ex: Any,
    venue: CcxtVenue,
    found: dict[str, Any],
    client_order_id: str,
    symbol: str,
    *,
    price: Decimal,
    size: Decimal,
    find: Find,
) -> OrderAck:
    new_id = amended_client_id(client_order_id, price, size)
    replacement = await find(ex, new_id, symbol)  # a retried amend: replaced already
    if replacement is None:
        left = size - _dec(found.get("filled"))
        if left <= 0:
            raise InvalidOrder(f"{venue.name}: size {size} is not above what filled")
        await ex.edit_order(
            found["id"],
            symbol,
            "limit",
            found["side"],
            float(left),
            float(price),
            {venue.client_id_param: new_id},
        )
        replacement = await find(ex, new_id, symbol)
    if replacement is None:
        raise InvalidOrder(f"{venue.name}: replacement {new_id} not found")
    return ack_of(replacement, new_id)


async def open_orders(ex: Any, venue: CcxtVenue, symbol: str | None) -> list[OpenOrder]:
    quirks = resting(venue)
    symbols: list[str | None] = [symbol]
    if symbol is None and quirks.open_orders_need_symbol:
        symbols = [
            s for s, m in ex.markets.items() if m.get("spot") and m.get("quote") == venue.quote_currency
        ]
    found: list[OpenOrder] = []
    for one in symbols:
        orders = [dict(o) for o in await ex.fetch_open_orders(one)]
        if quirks.triggers is not None:
            orders += await quirks.triggers.listed(ex, one, orders)
        for order in orders:
            parsed = open_order_of(order, quirks.kind_of)
            if parsed is not None:
                found.append(parsed)
    return found


def _dec(value: object) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))
