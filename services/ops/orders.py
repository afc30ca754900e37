"""`copytrade master order | amend | cancel`: resting orders on the master account, through the
master service, each safe to send again.

The request id is printed before anything is sent. Whatever goes wrong on the way back, the
change may have been made: the operator is told to run the same command with `--request-id`,
which answers the first outcome and never places, amends or cancels twice.
"""

from __future__ import annotations

import argparse
import re
import textwrap
import uuid
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.msg import Msg
from nats.micro.request import ERROR_HEADER

from services.master.requests import (
    AmendRequest,
    CancelRequest,
    OrderCall,
    OrderReply,
    OrderRequest,
    endpoint_of,
)
from services.ops.connection import connected
from services.ops.errors import FAILED, OK, UNKNOWN, USAGE, CliError, describe, one_line
from shared.config import CommonSettings

C = TypeVar("C", OrderRequest, AmendRequest, CancelRequest)

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(OrderReply)
EXIT_STATUS = textwrap.fill(
    f"exit status: {OK} done; {FAILED} refused, nothing changed; {USAGE} bad arguments, config, "
    f"environment, or NATS unreachable; {UNKNOWN} outcome unknown: run the same command with the "
    "printed --request-id, which returns the first outcome and never does it twice",
    88,
)
OPTIONS = {  # a request field -> its option, and what it must be
    "symbol": "--symbol must be BASE/QUOTE in capitals, like BTC/USD",
    "request_id": "--request-id must be 8 to 64 of A-Z a-z 0-9 _ -",
    "master_id": "--master must be an account id (A-Z a-z 0-9 _ -)",
    "order_id": "ORDER_ID must be 1 to 64 of A-Z a-z 0-9 _ . : -",
}


def order_request(args: argparse.Namespace) -> OrderRequest:
    """`master order`: --limit P alone rests a limit order; --stop P or --take-profit P is a
    trigger order, a limit order at --limit P once triggered (else a market order)."""
    triggers = {"stop_loss": args.stop, "take_profit": args.take_profit}
    trigger = next((name for name, price in triggers.items() if price is not None), None)
    if trigger is None and args.limit is None:
        raise CliError(
            "give --limit P, --stop P or --take-profit P (see copytrade master order --help)", USAGE
        )
    return _convert(
        OrderRequest,
        {
            "symbol": args.symbol,
            "side": args.side,
            "size": args.base,
            "limit_price": args.limit,
            "trigger": trigger,
            "trigger_price": None if trigger is None else triggers[trigger],
            "request_id": _request_id(args),
            "master_id": args.master,
        },
    )


def amend_request(args: argparse.Namespace) -> AmendRequest:
    if args.price is None and args.base is None:
        raise CliError("give --price P, --base X or both: what the amendment changes", USAGE)
    return _convert(
        AmendRequest,
        {
            "order_id": args.order_id,
            "price": args.price,
            "size": args.base,
            "request_id": _request_id(args),
            "master_id": args.master,
        },
    )


def cancel_request(args: argparse.Namespace) -> CancelRequest:
    return _convert(
        CancelRequest, {"order_id": args.order_id, "request_id": _request_id(args), "master_id": args.master}
    )


def _request_id(args: argparse.Namespace) -> str:
    return str(args.request_id or uuid.uuid4().hex)


def _convert(kind: type[C], data: dict[str, Any]) -> C:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        found = re.search(r"\$\.(\w+)", str(exc))
        field = found.group(1) if found else ""
        if field in OPTIONS:
            raise CliError(f"{OPTIONS[field]}, got {data[field]!r}") from None
        raise CliError(f"invalid request: {exc}") from None


async def send(settings: CommonSettings, call: OrderCall, timeout_s: float, subject: str) -> int:
    """Send one request to the master service and show its outcome."""
    async with connected(settings) as nc:
        print(
            f"request {call.request_id}: {_what(call)} (to send it again: --request-id {call.request_id})",
            flush=True,
        )
        try:
            msg = await nc.request(subject, _encoder.encode(call), timeout=timeout_s)
        except nats.errors.NoRespondersError:
            raise CliError("no master service answers on NATS: nothing was changed", FAILED) from None
        except TimeoutError:
            raise _unknown(call, f"no reply within {timeout_s:g}s") from None
    return _show(_reply(msg, call), call)


def _what(call: OrderCall) -> str:
    match call:
        case OrderRequest():
            at = [f"limit {call.limit_price}"] if call.limit_price is not None else []
            if call.trigger is not None:
                at.insert(0, f"{call.trigger.replace('_', '-')} at {call.trigger_price}")
            return f"{call.side} {call.size} {call.symbol}, {' then '.join(at)}"
        case AmendRequest():
            changes = [
                f"{name} {value}"
                for name, value in (("price", call.price), ("size", call.size))
                if value is not None
            ]
            return f"amend order {call.order_id}: {', '.join(changes)}"
        case CancelRequest():
            return f"cancel order {call.order_id}"


def _reply(msg: Msg, call: OrderCall) -> OrderReply:
    service_error = (msg.headers or {}).get(ERROR_HEADER)
    if service_error:
        raise _unknown(call, f"the master service failed: {one_line(service_error)[:200]}")
    try:
        return _decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        raise _unknown(call, f"its reply could not be read ({describe(exc)})") from None


def _show(reply: OrderReply, call: OrderCall) -> int:
    if reply.outcome == "done" and reply.ok:
        print(_done(reply))
        return OK
    if reply.outcome == "refused":
        raise CliError(f"master {endpoint_of(call)} refused: {one_line(reply.error)}", FAILED)
    raise CliError(f"{one_line(reply.error)} (--request-id {call.request_id})", UNKNOWN)


def _done(reply: OrderReply) -> str:
    order = f"master order {reply.order_id} (client order id {reply.client_order_id})"
    shown = {
        "open": f"resting: {order}",
        "filled": f"filled: {order}; its fills are signalled one by one",
        "canceled": f"canceled: {order}",
    }.get(reply.status, order)
    if reply.signal is not None:
        shown += (
            f"; order event {reply.signal.event} v{reply.signal.version}, signal "
            f"{reply.signal.signal_id} published"
        )
    elif reply.status in ("open", "canceled"):
        shown += "; its order event is published by the open-orders watcher"
    again = " (answered again: this request id was done before)" if reply.replayed else ""
    return shown + again


def _unknown(call: OrderCall, why: str) -> CliError:
    return CliError(
        f"outcome unknown: {why}; it may be done. Run the same command with "
        f"--request-id {call.request_id}: it returns the first outcome and never "
        "does it twice",
        UNKNOWN,
    )
