"""`copytrade master trade`: one request to the master service, safe to send again.

The request id is printed before anything is sent. Whatever goes wrong on the way back (no
reply in time, a reply that cannot be read), the order may have been placed: the operator is
told to run the same command with `--request-id`, which never places a second order.
"""

from __future__ import annotations

import msgspec
import nats
from nats.aio.msg import Msg
from nats.micro.request import ERROR_HEADER

from services.ops.connection import connected
from services.ops.errors import FAILED, OK, UNKNOWN, CliError, describe, one_line
from shared import bus
from shared.config import CommonSettings
from shared.messages import TradeReply, TradeRequest

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(TradeReply)


async def master_trade(
    settings: CommonSettings,
    request: TradeRequest,
    timeout_s: float,
    subject: str = bus.MASTER_TRADE_SUBJECT,
) -> int:
    async with connected(settings) as nc:
        print(
            f"request {request.request_id}: {request.side} {request.size} {request.size_type} "
            f"{request.symbol} (to send it again: --request-id {request.request_id})",
            flush=True,
        )
        try:
            msg = await nc.request(subject, _encoder.encode(request), timeout=timeout_s)
        except nats.errors.NoRespondersError:
            raise CliError("no master service answers on NATS: nothing was placed", FAILED) from None
        except TimeoutError:
            raise _unknown(request, f"no reply within {timeout_s:g}s") from None
    return _show(_reply(msg, request), request)


def _reply(msg: Msg, request: TradeRequest) -> TradeReply:
    service_error = (msg.headers or {}).get(ERROR_HEADER)
    if service_error:
        raise _unknown(request, f"the master service failed: {one_line(service_error)[:200]}")
    try:
        return _decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        raise _unknown(request, f"its reply could not be read ({describe(exc)})") from None


def _show(reply: TradeReply, request: TradeRequest) -> int:
    if reply.outcome == "filled" and reply.ok:
        again = " (answered again: this request id had filled before)" if reply.replayed else ""
        print(f"filled: master order {reply.order_id}, signal {reply.signal_id} published{again}")
        return OK
    if reply.outcome == "refused":
        raise CliError(f"master trade refused: {one_line(reply.error)}", FAILED)
    raise CliError(f"{one_line(reply.error)} (--request-id {request.request_id})", UNKNOWN)


def _unknown(request: TradeRequest, why: str) -> CliError:
    return CliError(
        f"outcome unknown: {why}; the order may be placed. Run the same command "
        f"with --request-id {request.request_id}: it returns the first outcome and "
        "never places a second order",
        UNKNOWN,
    )
