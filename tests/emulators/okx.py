"""OKX v5 spot REST emulator, answering in OKX's own format (www.okx.com/docs-v5).

Public and private `/api/v5/...`. Private requests carry OK-ACCESS-KEY, OK-ACCESS-PASSPHRASE,
OK-ACCESS-TIMESTAMP (ISO 8601, within 30 s) and OK-ACCESS-SIGN = base64 HMAC-SHA256(secret,
timestamp + METHOD + requestPath[?query] + body). Replies are `{"code": "0", "msg": "", "data":
[...]}`; order endpoints report per-order `sCode`/`sMsg` under `code` "1" (all failed) or "2"
(partly). Spot instruments are `BTC-USD`, `ETH-USD`, trade mode `cash`.

Orders: market and ioc end at once; limit (and post_only) rest until `VenueState`'s controls fill
them; trade/cancel-order cancels and trade/amend-order changes price and size (newSz: the new
total, filled part included) in place; trade/orders-pending lists what rests.

Algo orders: trade/order-algo places a one-way stop (`ordType` conditional: `slTriggerPx` for a
stop-loss, `tpTriggerPx` for a take-profit, `slOrdPx` / `tpOrdPx` its limit or -1 for market,
`algoClOrdId` our client id); a trigger already past the last price is refused (51277-51280).
It waits (state live) apart from the ordinary orders until `VenueState.set_price` reaches it,
then it is effective and its order (`ordId`, with its own `clOrdId`, and `algoId` /
`algoClOrdId` naming the algo) is an ordinary order. GET trade/order-algo finds one by algoId
or algoClOrdId; trade/orders-algo-pending and trade/orders-algo-history list them;
trade/cancel-algos cancels live ones. amend-algos is not emulated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from aiohttp import web

from tests.emulators.server import EmulatorServer
from tests.emulators.state import (
    USER_CANCELED,
    Account,
    Fault,
    Market,
    Order,
    VenueState,
    parse_decimal,
)

Params = dict[str, Any]
Reply = web.StreamResponse
Error = tuple[int, str, str]  # (HTTP status, OKX code, msg)

E_SYSTEM = (500, "50026", "System error. Try again later.")
E_RATE = (429, "50011", "Too Many Requests")
E_NO_KEY = (401, "50103", "Request header OK-ACCESS-KEY cannot be empty.")
E_KEY = (401, "50111", "Invalid OK-ACCESS-KEY.")
E_PASSPHRASE = (401, "50105", "Invalid OK-ACCESS-PASSPHRASE.")
E_TIMESTAMP = (401, "50102", "Timestamp request expired.")
E_SIGN = (401, "50113", "Invalid Sign.")
E_INSTRUMENT = (200, "51001", "Instrument ID does not exist.")
E_NO_ORDER = (200, "51603", "Order does not exist")
REQUEST_FAULTS = {Fault.HTTP_500: E_SYSTEM, Fault.RATE_LIMIT: E_RATE, Fault.INVALID_KEY: E_KEY}
NO_INSTRUMENT = ("51001", "Instrument ID does not exist.")
E_PX = ("51000", "Parameter px error")  # no px, or one off the instrument's tickSz
MIN_NOT_MET = ("51020", "Your order should meet or exceed the minimum order amount.")
ORDER_FAULTS = {Fault.INSUFFICIENT_FUNDS: "insufficient_funds", Fault.MIN_NOT_MET: "min_not_met"}
CL_ORD_ID = re.compile(r"[A-Za-z0-9]{1,32}")
CHAINS = {"BTC": "BTC-Bitcoin", "ETH": "ETH-ERC20", "USDT": "USDT-TRC20"}


def _s(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def _target(r: Params) -> str:
    """tgtCcy as sent, else OKX's default: a spot market buy is sized in quote."""
    return str(r.get("tgtCcy") or ("quote_ccy" if r.get("side") == "buy" else "base_ccy"))


RESTING = ("limit", "post_only")  # ordTypes that rest on the book
E_CANCEL = ("51400", "Order cancellation failed as the order has been filled, canceled or does not exist.")
E_AMEND = ("51503", "Order modification failed as the order has been filled, canceled or does not exist.")
E_NEW_SZ = ("51512", "Failed to amend: the new size must be greater than the filled size.")
ALGO_TYPES = ("conditional",)  # the algo orders emulated: one-way stop-loss or take-profit
# (trigger "stop_loss" | "take_profit", side) -> the refusal of a trigger the last price has passed
PASSED = {
    ("take_profit", "buy"): ("51277", "TP trigger price cannot be higher than the last price"),
    ("stop_loss", "buy"): ("51278", "SL trigger price cannot be lower than the last price"),
    ("take_profit", "sell"): ("51279", "TP trigger price cannot be lower than the last price"),
    ("stop_loss", "sell"): ("51280", "SL trigger price cannot be higher than the last price"),
}


def _state(o: Order) -> str:
    """live / partially_filled while it rests; filled; canceled (an IOC that found no
    liquidity, or canceled at the account's request)."""
    if o.is_open:
        return "partially_filled" if o.amount else "live"
    return "canceled" if o.status == USER_CANCELED else o.status


def _invalid(r: Params, client_id: str) -> tuple[str, str] | None:
    """OKX's per-order (sCode, sMsg) for a malformed order, if any."""
    ioc = r.get("ordType") in ("ioc", *RESTING)  # priced
    checks = (
        (r.get("side") not in ("buy", "sell"), ("51000", "Parameter side error")),
        (r.get("ordType") not in ("market", "ioc", *RESTING), ("51000", "Parameter ordType error")),
        (r.get("tdMode") != "cash", ("51000", "Parameter tdMode error")),
        (bool(client_id) and not CL_ORD_ID.fullmatch(client_id), ("51000", "Parameter clOrdId error")),
        (ioc and parse_decimal(r.get("px")) is None, E_PX),
        (parse_decimal(r.get("sz")) is None, ("51000", "Parameter sz error")),
    )
    return next((err for bad, err in checks if bad), None)


def _algo_invalid(r: Params) -> tuple[str, str] | None:
    """OKX's (sCode, sMsg) for a malformed conditional algo order, if any."""
    sl, tp = r.get("slTriggerPx"), r.get("tpTriggerPx")
    trigger, limit = (sl, r.get("slOrdPx")) if sl else (tp, r.get("tpOrdPx"))
    checks = (
        (r.get("side") not in ("buy", "sell"), ("51000", "Parameter side error")),
        (r.get("ordType") not in ALGO_TYPES, ("51000", "Parameter ordType error")),
        (r.get("tdMode") != "cash", ("51000", "Parameter tdMode error")),
        (not CL_ORD_ID.fullmatch(str(r.get("algoClOrdId") or "x")), ("51000", "Parameter algoClOrdId error")),
        (bool(sl) == bool(tp), ("51000", "Parameter slTriggerPx or tpTriggerPx error")),
        (parse_decimal(trigger) is None, ("51000", "Parameter triggerPx error")),
        (str(limit) != "-1" and parse_decimal(limit) is None, E_PX),
        (parse_decimal(r.get("sz")) is None, ("51000", "Parameter sz error")),
    )
    return next((err for bad, err in checks if bad), None)


def _trigger_of(r: Params) -> tuple[str, Decimal]:
    """A valid conditional order's trigger ("stop_loss" | "take_profit") and its price."""
    sl = r.get("slTriggerPx")
    at = parse_decimal(sl or r.get("tpTriggerPx"))
    assert at is not None
    return ("stop_loss" if sl else "take_profit"), at


def _symbol(r: Params) -> str:
    """The unified symbol of a request's (valid) instId."""
    return str(r["instId"]).replace("-", "/")


def _refusal(kind: str, market: Market, side: str) -> tuple[str, str]:
    ccy = market.quote if side == "buy" else market.base
    return {
        "insufficient_funds": ("51008", f"Order failed. Insufficient {ccy} balance in account."),
        "min_not_met": MIN_NOT_MET,
        "unknown_symbol": NO_INSTRUMENT,
        "invalid_price": E_PX,
    }[kind]


def _data(data: list[Any], code: str = "0", msg: str = "") -> Reply:
    return web.json_response({"code": code, "msg": msg, "data": data})


def _error(err: Error) -> Reply:
    status, code, msg = err
    return web.json_response({"code": code, "msg": msg, "data": []}, status=status)


class OkxEmulator(EmulatorServer):
    """OKX emulator. Accounts: `state.add_account(key, secret, balances, passphrase=...)`."""

    def __init__(self, state: VenueState | None = None) -> None:
        self._asked: dict[str, tuple[str, str, str]] = {}  # ordId -> (tgtCcy, sz, tag) sent
        self._algos: dict[str, Order] = {}  # algoId -> the order (its ordId: what it places)
        self._algo_asked: dict[str, Params] = {}  # algoId -> the order-algo request
        self._algo_of: dict[str, str] = {}  # ordId -> algoId, for an algo order's order
        super().__init__(state)

    def routes(self, router: web.UrlDispatcher) -> None:
        public: dict[tuple[str, str], Callable[[Params], Awaitable[Any]]] = {
            ("GET", "public/time"): self._time,
            ("GET", "public/instruments"): self._instruments,
            ("GET", "market/ticker"): self._ticker,
            ("GET", "market/tickers"): self._tickers,
        }
        private: dict[tuple[str, str], Callable[[Account, Any], Awaitable[Any]]] = {
            ("GET", "asset/currencies"): self._currencies,
            ("GET", "account/balance"): self._balance,
            ("POST", "trade/order"): partial(self._place, batch=False),
            ("POST", "trade/batch-orders"): partial(self._place, batch=True),
            ("GET", "trade/order"): self._order,
            ("GET", "trade/orders-pending"): self._pending,
            ("GET", "trade/orders-history"): self._history,
            ("GET", "trade/fills"): self._fills,
            ("GET", "trade/fills-history"): self._fills,
            ("POST", "trade/cancel-order"): self._cancel,
            ("POST", "trade/amend-order"): self._amend,
            ("POST", "trade/order-algo"): self._place_algo,
            ("GET", "trade/order-algo"): self._algo,
            ("GET", "trade/orders-algo-pending"): partial(self._algo_list, pending=True),
            ("GET", "trade/orders-algo-history"): partial(self._algo_list, pending=False),
            ("POST", "trade/cancel-algos"): self._cancel_algos,
        }
        for (method, path), fn in public.items():
            router.add_route(method, f"/api/v5/{path}", partial(self._handle, fn, False))
        for (method, path), private_fn in private.items():
            router.add_route(method, f"/api/v5/{path}", partial(self._handle, private_fn, True))

    # --- plumbing -------------------------------------------------------------------------

    async def _handle(self, fn: Callable[..., Awaitable[Any]], private: bool, request: web.Request) -> Reply:
        self.state.requests += 1
        body = await request.text()
        params = json.loads(body) if body else dict(request.query)
        if not private:
            result = await fn(params)
        else:
            account = self.state.accounts.get(request.headers.get("OK-ACCESS-KEY", ""))
            error = self._check_auth(account, request, body)
            result = error if error else await fn(account, params)
        await self.state.delay()
        if isinstance(result, tuple):
            return _error(result)
        return result if isinstance(result, web.StreamResponse) else _data(result)

    @staticmethod
    def _check_auth(account: Account | None, request: web.Request, body: str) -> Error | None:
        headers = request.headers
        if not headers.get("OK-ACCESS-KEY"):
            return E_NO_KEY
        if account is None:
            return E_KEY
        if headers.get("OK-ACCESS-PASSPHRASE") != account.passphrase:
            return E_PASSPHRASE
        stamp = headers.get("OK-ACCESS-TIMESTAMP", "")
        try:
            if abs(datetime.fromisoformat(stamp).timestamp() - time.time()) > 30:
                return E_TIMESTAMP
        except ValueError:
            return (401, "50112", "Invalid OK-ACCESS-TIMESTAMP.")
        prehash = stamp + request.method + request.raw_path + body
        expected = base64.b64encode(
            hmac.new(account.secret.encode(), prehash.encode(), hashlib.sha256).digest()
        ).decode()
        return None if hmac.compare_digest(expected, headers.get("OK-ACCESS-SIGN", "")) else E_SIGN

    def _market(self, inst_id: str | None) -> Market | None:
        return next((m for m in self.state.markets.values() if f"{m.base}-{m.quote}" == inst_id), None)

    # --- public ---------------------------------------------------------------------------

    async def _time(self, _p: Params) -> list[Any]:
        return [{"ts": _ms(time.time())}]

    async def _instruments(self, p: Params) -> Any:
        if p.get("instType") != "SPOT":
            return []  # no derivatives here
        markets = [m for m in self.state.markets.values() if p.get("instId") in (None, f"{m.base}-{m.quote}")]
        return [
            {
                "instType": "SPOT",
                "instId": f"{m.base}-{m.quote}",
                "uly": "",
                "instFamily": "",
                "baseCcy": m.base,
                "quoteCcy": m.quote,
                "settleCcy": "",
                "ctVal": "",
                "ctMult": "",
                "ctValCcy": "",
                "optType": "",
                "stk": "",
                "listTime": "1606468572000",
                "expTime": "",
                "lever": "",
                "tickSz": _s(m.price_step),
                "lotSz": _s(m.amount_step),
                "minSz": _s(m.min_amount),
                "ctType": "",
                "alias": "",
                "state": "live",
                "ruleType": "normal",
                "maxLmtSz": "9999999999",
                "maxMktSz": "1000000",
                "maxLmtAmt": "20000000",
                "maxMktAmt": "1000000",
                "maxTwapSz": "9999999999",
                "maxIcebergSz": "9999999999",
                "maxTriggerSz": "9999999999",
                "maxStopSz": "1000000",
                "tradeQuoteCcyList": [m.quote],
            }
            for m in markets
        ]

    def _ticker_json(self, m: Market) -> dict[str, Any]:
        last, now = _s(self.state.prices[m.symbol]), _ms(time.time())
        return {
            "instType": "SPOT",
            "instId": f"{m.base}-{m.quote}",
            "last": last,
            "lastSz": "0.001",
            "askPx": last,
            "askSz": "1",
            "bidPx": last,
            "bidSz": "1",
            "open24h": last,
            "high24h": last,
            "low24h": last,
            "volCcy24h": "0",
            "vol24h": "0",
            "sodUtc0": last,
            "sodUtc8": last,
            "ts": now,
        }

    async def _ticker(self, p: Params) -> Any:
        market = self._market(p.get("instId"))
        return E_INSTRUMENT if market is None else [self._ticker_json(market)]

    async def _tickers(self, p: Params) -> Any:
        if p.get("instType") != "SPOT":
            return []
        return [self._ticker_json(m) for m in self.state.markets.values()]

    # --- private --------------------------------------------------------------------------

    async def _currencies(self, _account: Account, _p: Params) -> list[Any]:
        codes = dict.fromkeys(c for m in self.state.markets.values() for c in (m.base, m.quote))
        return [
            {
                "ccy": c,
                "name": c,
                "chain": CHAINS.get(c, ""),
                "canDep": True,
                "canWd": True,
                "canInternal": True,
                "minDep": "0.0001",
                "minWd": "0.0001",
                "maxWd": "10000",
                "wdTickSz": "8",
                "minFee": "0",
                "maxFee": "0",
                "mainNet": True,
                "needTag": False,
                "logoLink": "",
            }
            for c in codes
        ]

    async def _balance(self, account: Account, p: Params) -> list[Any]:
        now = _ms(time.time())
        wanted = p.get("ccy", "").split(",") if p.get("ccy") else None
        details = [
            {
                "ccy": c,
                "eq": _s(v),
                "cashBal": _s(v),
                "availBal": _s(v),
                "availEq": _s(v),
                "frozenBal": "0",
                "ordFrozen": "0",
                "uTime": now,
            }
            for c, v in account.balances.items()
            if wanted is None or c in wanted
        ]
        usd = {
            m.base: self.state.prices[m.symbol] for m in self.state.markets.values() if m.quote == "USD"
        } | {"USD": Decimal(1)}
        total = sum((v * usd.get(c, Decimal(0)) for c, v in account.balances.items()), Decimal(0))
        return [
            {
                "totalEq": _s(total),
                "isoEq": "0",
                "adjEq": "",
                "ordFroz": "",
                "imr": "",
                "mmr": "",
                "mgnRatio": "",
                "notionalUsd": "",
                "upl": "",
                "uTime": now,
                "details": details,
            }
        ]

    async def _place(self, account: Account, body: Any, batch: bool) -> Any:
        fault = self.state.take_fault(account, *Fault)
        if fault in REQUEST_FAULTS:
            return REQUEST_FAULTS[fault]
        requests = body if batch else [body]
        if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
            return (400, "50000", "Body cannot be empty.")
        results = [self._place_one(account, r, ORDER_FAULTS.get(fault)) for r in requests]  # type: ignore[arg-type]
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            await self._hold()
        failed = sum(r["sCode"] != "0" for r in results)
        if failed == 0:
            return _data(results)
        if failed == len(results):
            return _data(results, "1", "All operations failed" if batch else "Operation failed.")
        return _data(results, "2", "Bulk operation partially succeeded.")

    def _place_one(self, account: Account, r: Params, refusal: str | None) -> dict[str, Any]:
        client_id, tag = str(r.get("clOrdId", "")), str(r.get("tag", ""))
        reply = {"clOrdId": client_id, "ordId": "", "tag": tag, "ts": _ms(time.time())}
        market = self._market(r.get("instId"))
        failure = _invalid(r, client_id) if market is not None else NO_INSTRUMENT
        if failure:
            return reply | {"sCode": failure[0], "sMsg": failure[1]}
        assert market is not None
        try:
            if refusal:
                raise ValueError(refusal)
            order = self._fill(account, market, r, client_id or None)
        except ValueError as exc:
            code, msg = _refusal(str(exc), market, str(r.get("side")))
            return reply | {"sCode": code, "sMsg": msg}
        order.rename(str(600_000_000_000_000_000 + self.state.next_id()))
        order.trade_id = str(self.state.next_id())
        self._asked[order.order_id] = (_target(r), str(r.get("sz")), tag)
        return reply | {"ordId": order.order_id, "sCode": "0", "sMsg": "Order placed"}

    def _fill(self, account: Account, market: Market, r: Params, client_id: str | None) -> Order:
        side, size = str(r["side"]), Decimal(str(r["sz"]))
        if r["ordType"] in RESTING:
            return self.state.place_resting(
                account,
                market.symbol,
                side,
                size,
                limit_price=Decimal(str(r["px"])),
                client_order_id=client_id,
            )
        if r["ordType"] == "ioc":
            return self.state.fill_limit_ioc(
                account, market.symbol, side, size, Decimal(str(r["px"])), client_order_id=client_id
            )
        tgt = _target(r)
        return self.state.fill(
            account,
            market.symbol,
            side,
            client_order_id=client_id,
            amount=size if tgt == "base_ccy" else None,
            cost=size if tgt == "quote_ccy" else None,
        )

    def _order_json(self, o: Order) -> dict[str, Any]:
        m = self.state.markets[o.symbol]
        tgt, size, tag = self._asked.get(o.order_id, ("base_ccy", _s(o.amount), ""))
        if o.parts is not None:  # a resting order: its size as amended; its last fill
            size = _s(o.size)
        last = o.parts[-1] if o.parts else o
        ms = _ms(o.created)
        algo_id = self._algo_of.get(o.order_id, "")

        def filled(value: str) -> str:  # fill fields stay empty while nothing filled
            return value if o.amount else ""

        return {
            "instType": "SPOT",
            "instId": f"{m.base}-{m.quote}",
            "tgtCcy": tgt,
            "ccy": "",
            "ordId": o.order_id,
            "clOrdId": self._cl_ord_id(o),
            "tag": tag,
            "px": "" if o.limit_price is None else _s(o.limit_price),
            "pxUsd": "",
            "pxVol": "",
            "pxType": "",
            "sz": size,
            "pnl": "0",
            "ordType": "market" if o.limit_price is None else "ioc" if o.kind == "limit_ioc" else "limit",
            "side": o.side,
            "posSide": "net",
            "tdMode": "cash",
            "accFillSz": _s(o.amount),
            "fillPx": filled(_s(last.price)),
            "tradeId": filled(last.trade_id),
            "fillSz": _s(last.amount),
            "fillTime": filled(_ms(last.created)),
            "avgPx": filled(_s(o.price)),
            "state": _state(o),
            "lever": "",
            "attachAlgoClOrdId": "",
            "tpTriggerPx": "",
            "tpTriggerPxType": "",
            "tpOrdPx": "",
            "slTriggerPx": "",
            "slTriggerPxType": "",
            "slOrdPx": "",
            "attachAlgoOrds": [],
            "stpId": "",
            "stpMode": "cancel_maker",
            "feeCcy": m.base if o.side == "buy" else m.quote,
            "fee": "0",
            "rebateCcy": m.quote,
            "rebate": "0",
            "source": "",
            "category": "normal",
            "reduceOnly": "false",
            "isTpLimit": "false",
            "cancelSource": "",
            "cancelSourceReason": "",
            "quickMgnType": "",
            "algoClOrdId": o.client_order_id or "" if algo_id else "",
            "algoId": algo_id,
            "tradeQuoteCcy": m.quote,
            "uTime": _ms(o.updated or o.created),
            "cTime": ms,
        }

    async def _order(self, account: Account, p: Params) -> Any:
        if self._market(p.get("instId")) is None:
            return E_INSTRUMENT
        order = next(
            (
                o
                for o in account.orders
                if self._matches(o, p)
                and o.order_id == p.get("ordId", o.order_id)
                and self._cl_ord_id(o) == p.get("clOrdId", self._cl_ord_id(o))
            ),
            None,
        )
        return E_NO_ORDER if order is None else [self._order_json(order)]

    async def _pending(self, account: Account, p: Params) -> list[Any]:
        return [self._order_json(o) for o in self._window(account, p) if o.is_open]

    async def _history(self, account: Account, p: Params) -> list[Any]:
        return [self._order_json(o) for o in self._window(account, p) if not o.is_open]

    def _named(self, account: Account, r: Params) -> Order | None:
        """The order of instId named by ordId or clOrdId."""
        return next(
            (
                o
                for o in account.orders
                if self._matches(o, r)
                and (
                    o.order_id == r.get("ordId")
                    or (r.get("clOrdId") and self._cl_ord_id(o) == r.get("clOrdId"))
                )
            ),
            None,
        )

    def _result(self, r: Params, order: Order | None, failure: tuple[str, str] | None) -> Any:
        reply = {
            "clOrdId": r.get("clOrdId", ""),
            "ordId": r.get("ordId", ""),
            "reqId": r.get("reqId", ""),
            "ts": _ms(time.time()),
        }
        if order is not None:
            reply |= {"clOrdId": self._cl_ord_id(order), "ordId": order.order_id}
        if failure is not None:
            return _data([reply | {"sCode": failure[0], "sMsg": failure[1]}], "1", "Operation failed.")
        return [reply | {"sCode": "0", "sMsg": ""}]

    async def _cancel(self, account: Account, r: Params) -> Any:
        if self._market(r.get("instId")) is None:
            return E_INSTRUMENT
        order = self._named(account, r)
        cancelled = order is not None and self.state.cancel(order)
        return self._result(r, order, None if cancelled else E_CANCEL)

    async def _amend(self, account: Account, r: Params) -> Any:
        """newSz (the new total, filled part included) and/or newPx, in place."""
        if self._market(r.get("instId")) is None:
            return E_INSTRUMENT
        order = self._named(account, r)
        size, price = parse_decimal(r.get("newSz")), parse_decimal(r.get("newPx"))
        if order is None or not order.is_open:
            return self._result(r, order, E_AMEND)
        if (
            (size is None and price is None)
            or ("newSz" in r and size is None)
            or ("newPx" in r and price is None)
        ):
            return self._result(r, order, ("51000", "Parameter newSz or newPx error"))
        try:
            self.state.amend(account, order, price=price, size=size)
        except ValueError as exc:
            market = self.state.markets[order.symbol]
            failure = {"invalid_size": E_NEW_SZ, "not_open": E_AMEND}.get(str(exc)) or _refusal(
                str(exc), market, order.side
            )
            return self._result(r, order, failure)
        return self._result(r, order, None)

    # --- algo orders ------------------------------------------------------------------------

    async def _place_algo(self, account: Account, r: Any) -> Any:
        fault = self.state.take_fault(account, *Fault)
        if fault in REQUEST_FAULTS:
            return REQUEST_FAULTS[fault]
        if not isinstance(r, dict):
            return (400, "50000", "Body cannot be empty.")
        reply = {"algoId": "", "tag": str(r.get("tag", ""))}
        reply |= {"clOrdId": str(r.get("clOrdId", "")), "algoClOrdId": str(r.get("algoClOrdId", ""))}
        failure = self._algo_refusal(r, None if fault is None else ORDER_FAULTS.get(fault))
        if failure is None:
            try:
                reply |= {"algoId": self._new_algo(account, r), "sCode": "0", "sMsg": "Order placed"}
            except ValueError as exc:
                failure = _refusal(str(exc), self.state.markets[_symbol(r)], str(r["side"]))
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            await self._hold()
        if failure is not None:
            return _data([reply | {"sCode": failure[0], "sMsg": failure[1]}], "1", "Operation failed.")
        return [reply]

    def _algo_refusal(self, r: Params, refusal: str | None) -> tuple[str, str] | None:
        """Why OKX refuses the conditional order before placing it, if it does: malformed, a
        trigger the last price has passed already, an injected fault."""
        market = self._market(r.get("instId"))
        if market is None:
            return NO_INSTRUMENT
        failure = _algo_invalid(r)
        if failure is None:
            trigger, at = _trigger_of(r)
            side, last = str(r["side"]), self.state.prices[market.symbol]
            falling = (trigger == "stop_loss") == (side == "sell")  # fires as the price falls
            if (last <= at) if falling else (last >= at):
                failure = PASSED[(trigger, side)]
        if failure is None and refusal:
            failure = _refusal(refusal, market, str(r["side"]))
        return failure

    def _new_algo(self, account: Account, r: Params) -> str:
        """Place the (valid) conditional order as a waiting trigger order: its algoId, or raise
        ValueError (as `VenueState.place_resting`) for the venue's refusal."""
        market = self.state.markets[_symbol(r)]
        trigger, at = _trigger_of(r)
        limit = r.get("slOrdPx") if trigger == "stop_loss" else r.get("tpOrdPx")
        limit_price = None if str(limit) == "-1" else parse_decimal(limit)
        size = Decimal(str(r["sz"]))
        if _target(r) == "quote_ccy" and r["side"] == "buy" and limit_price is None:
            size = (size / at).quantize(market.amount_step)  # a market buy sized in quote
        order = self.state.place_resting(
            account,
            market.symbol,
            str(r["side"]),
            size,
            limit_price=limit_price,
            trigger=trigger,
            trigger_price=at,
            client_order_id=str(r.get("algoClOrdId") or "") or None,
        )
        order.rename(str(600_000_000_000_000_000 + self.state.next_id()))
        algo_id = str(700_000_000_000_000_000 + self.state.next_id())
        self._algos[algo_id], self._algo_asked[algo_id] = order, r
        self._algo_of[order.order_id] = algo_id
        self._asked[order.order_id] = (_target(r), str(r["sz"]), str(r.get("tag", "")))
        return algo_id

    def _algo_json(self, algo_id: str, o: Order) -> dict[str, Any]:
        m, r = self.state.markets[o.symbol], self._algo_asked[algo_id]
        sl = o.trigger == "stop_loss"
        order_px = "-1" if o.limit_price is None else _s(o.limit_price)
        trigger_px = _s(o.trigger_price or Decimal(0))
        state = "live" if o.waiting else "effective" if o.triggered else "canceled"
        triggered = o.triggered

        def when(value: str) -> str:  # fields OKX fills in once the algo order triggered
            return value if triggered else ""

        return {
            "instType": "SPOT",
            "instId": f"{m.base}-{m.quote}",
            "ccy": "",
            "ordId": when(o.order_id),
            "ordIdList": [o.order_id] if triggered else [],
            "algoId": algo_id,
            "clOrdId": when(str(r.get("clOrdId") or "")),
            "algoClOrdId": o.client_order_id or "",
            "sz": str(r["sz"]),
            "closeFraction": "",
            "ordType": "conditional",
            "side": o.side,
            "posSide": "net",
            "tdMode": "cash",
            "tgtCcy": str(r.get("tgtCcy") or ""),
            "state": state,
            "lever": "",
            "tpTriggerPx": "" if sl else trigger_px,
            "tpTriggerPxType": "" if sl else "last",
            "tpOrdPx": "" if sl else order_px,
            "slTriggerPx": trigger_px if sl else "",
            "slTriggerPxType": "last" if sl else "",
            "slOrdPx": order_px if sl else "",
            "triggerPx": "",
            "triggerPxType": "",
            "ordPx": "",
            "actualSz": when(_s(o.size)),
            "actualPx": when(order_px),
            "actualSide": when("sl" if sl else "tp"),
            "triggerTime": when(_ms(o.updated)),
            "pxVar": "",
            "pxSpread": "",
            "szLimit": "",
            "pxLimit": "",
            "tag": str(r.get("tag") or ""),
            "notionalUsd": _s(o.size * self.state.prices[o.symbol]),
            "reduceOnly": "false",
            "quickMgnType": "",
            "last": _s(self.state.prices[o.symbol]),
            "failCode": "",
            "algoClOrdIdList": [],
            "cTime": _ms(o.created),
            "uTime": _ms(o.updated or o.created),
        }

    def _algos_of(self, account: Account, p: Params) -> list[tuple[str, Order]]:
        """The account's algo orders of instId (and algoId / algoClOrdId where asked), newest
        first."""
        return [
            (algo_id, o)
            for algo_id, o in reversed(self._algos.items())
            if o in account.orders
            and p.get("instId")
            in (None, f"{self.state.markets[o.symbol].base}-{self.state.markets[o.symbol].quote}")
            and p.get("algoId", algo_id) == algo_id
            and p.get("algoClOrdId", o.client_order_id) == o.client_order_id
        ]

    async def _algo(self, account: Account, p: Params) -> Any:
        """GET trade/order-algo: one algo order by algoId or algoClOrdId, in any state."""
        if not (p.get("algoId") or p.get("algoClOrdId")):
            return (200, "51000", "Parameter algoId or algoClOrdId error")
        found = self._algos_of(account, p)
        return E_NO_ORDER if not found else [self._algo_json(*found[0])]

    async def _algo_list(self, account: Account, p: Params, pending: bool) -> Any:
        """orders-algo-pending (live) or -history (effective, canceled; by state or algoId)."""
        kinds = str(p.get("ordType") or "").split(",")
        if kinds == [""]:
            return (200, "50014", "Parameter ordType can not be empty.")
        if not pending and not (p.get("state") or p.get("algoId")):
            return (200, "50014", "Parameter state or algoId can not be empty.")
        listed = [self._algo_json(a, o) for a, o in self._algos_of(account, p) if "conditional" in kinds]
        wanted = {"live"} if pending else {p.get("state")} if p.get("state") else {"effective", "canceled"}
        return [j for j in listed if j["state"] in wanted][: int(p.get("limit") or 100)]

    async def _cancel_algos(self, account: Account, body: Any) -> Any:
        """A list of {instId, algoId | algoClOrdId}: each live one canceled."""
        if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
            return (400, "50000", "Body cannot be empty.")
        results = []
        for r in body:
            named = {k: r[k] for k in ("instId", "algoId", "algoClOrdId") if r.get(k)}
            found = self._algos_of(account, named) if len(named) > 1 else []
            algo_id, order = found[0] if found else (str(r.get("algoId", "")), None)
            cancelled = order is not None and order.waiting and self.state.cancel(order)
            code, msg = ("0", "") if cancelled else E_CANCEL
            results.append(
                {"algoId": algo_id, "algoClOrdId": str(r.get("algoClOrdId", "")), "sCode": code, "sMsg": msg}
            )
        failed = sum(r["sCode"] != "0" for r in results)
        if failed == 0:
            return results
        return _data(results, "1" if failed == len(results) else "2", "Operation failed.")

    async def _fills(self, account: Account, p: Params) -> list[Any]:
        fills = []
        for o in self._window(account, p, account.trades()):
            m = self.state.markets[o.symbol]
            fills.append(
                {
                    "instType": "SPOT",
                    "instId": f"{m.base}-{m.quote}",
                    "tradeId": o.trade_id,
                    "ordId": o.order_id,
                    "clOrdId": self._cl_ord_id(o),
                    "billId": o.trade_id,
                    "subType": "1" if o.side == "buy" else "2",
                    "tag": self._asked.get(o.order_id, ("", "", ""))[2],
                    "fillPx": _s(o.price),
                    "fillSz": _s(o.amount),
                    "fillIdxPx": "",
                    "fillPnl": "0",
                    "side": o.side,
                    "posSide": "net",
                    "execType": "T",
                    "feeCcy": m.base if o.side == "buy" else m.quote,
                    "fee": "0",
                    "feeRate": "-0.001",
                    "ts": _ms(o.created),
                    "fillTime": _ms(o.created),
                    "tradeQuoteCcy": m.quote,
                }
            )
        return fills

    def _matches(self, o: Order, p: Params) -> bool:
        """Of instId and instType as asked; an algo order's order only once it is triggered."""
        m = self.state.markets[o.symbol]
        algo_id = self._algo_of.get(o.order_id)  # a part of an order shares its ordId
        placed = algo_id is None or self._algos[algo_id].triggered
        return (
            placed
            and p.get("instId") in (None, f"{m.base}-{m.quote}")
            and p.get("instType") in (None, "SPOT")
        )

    def _cl_ord_id(self, o: Order) -> str:
        """An ordinary order's clOrdId; an algo order's order has the clOrdId sent with the algo."""
        algo_id = self._algo_of.get(o.order_id)
        if algo_id is not None:
            return str(self._algo_asked[algo_id].get("clOrdId") or "")
        return o.client_order_id or ""

    def _window(
        self,
        account: Account,
        p: Params,
        orders: list[Order] | None = None,
    ) -> list[Order]:
        """instType/instId/ordId filters, begin/end in ms, newest first, limit (default 100)."""
        begin, end = int(p.get("begin") or 0), int(p.get("end") or 2**62)
        orders = [
            o
            for o in reversed(account.orders if orders is None else orders)
            if self._matches(o, p)
            and p.get("ordId", o.order_id) == o.order_id
            and begin <= int(_ms(o.created)) <= end
        ]
        return orders[: int(p.get("limit") or 100)]
