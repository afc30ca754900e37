"""`copytrade master trade` is safe to send again: one request id is one master order and one
signal, whatever failed on the way back; the kill switch refuses master trades."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import msgspec
import nats.errors

from services.master.service import MasterService
from services.master.trades import TradeRecord
from shared import bus
from shared.exchange.paper import InjectFault
from shared.messages import TradeReply, TradeRequest
from tests.harness import System, eventually, make_config
from tests.test_cli import run_cli

CONFIG = make_config([])


def request(request_id: str, quote: str = "500") -> TradeRequest:
    return TradeRequest(
        symbol="BTC/USD", side="buy", size=Decimal(quote), size_type="quote", request_id=request_id
    )


async def _master(system: System) -> MasterService:
    await system.fund("master", 10_000)
    return await system.start_master(CONFIG)


async def _signals(system: System) -> int:
    return (await system.js.stream_info(bus.SIGNALS_STREAM)).state.messages


def _cli_trade(system: System, request_id: str) -> tuple[int, str, str]:
    done = run_cli(
        "master",
        "trade",
        "--symbol",
        "BTC/USD",
        "--side",
        "buy",
        "--quote",
        "500",
        "--request-id",
        request_id,
        COPYTRADE_NATS_URL=system.server.url,
    )
    return done.returncode, done.stdout, done.stderr


async def test_retried_trade_with_same_request_id_places_one_master_order(system: System) -> None:
    await _master(system)

    first = await asyncio.to_thread(_cli_trade, system, "op-trade-0001")
    again = await asyncio.to_thread(_cli_trade, system, "op-trade-0001")

    signal_ids = [re.findall(r"signal ([0-9a-f]{32}) published", out) for _, out, _ in (first, again)]
    assert (first[0], again[0]) == (0, 0)
    assert signal_ids[0] == signal_ids[1]
    assert len(signal_ids[0]) == 1
    assert "answered again" in again[1]
    assert len(await system.orders("master")) == 1
    assert await _signals(system) == 1


async def test_retry_after_lost_outcome_record_finds_the_order_not_a_second(system: System) -> None:
    master = await _master(system)
    first = await master.trade(request("lost-record-1"))
    await _reopen(system, "lost-record-1")  # as if the outcome's write failed after the publish

    again = await master.trade(request("lost-record-1"))

    assert (first.outcome, again.outcome) == ("filled", "filled")
    assert again.signal_id == first.signal_id
    assert not again.replayed
    assert len(await system.orders("master")) == 1
    assert await _signals(system) == 1


async def _reopen(system: System, request_id: str) -> None:
    kv = await system.js.key_value(bus.FILLS_BUCKET)
    record = msgspec.json.decode((await kv.get(f"trade.{request_id}")).value or b"", type=TradeRecord)
    await kv.put(
        f"trade.{request_id}",
        msgspec.json.Encoder(decimal_format="string").encode(msgspec.structs.replace(record, reply=None)),
    )


async def test_retry_after_unknown_outcome_places_the_order_once(system: System) -> None:
    master = await _master(system)
    for _ in range(4):  # every placing attempt of the first request fails at the venue
        await system.paper(InjectFault("master", "temporary"))

    first = await master.trade(request("venue-hiccup-1"))
    again = await master.trade(request("venue-hiccup-1"))
    third = await master.trade(request("venue-hiccup-1"))

    assert (first.outcome, again.outcome, third.outcome) == ("unknown", "filled", "filled")
    assert third.replayed
    assert third.signal_id == again.signal_id
    assert len(await system.orders("master")) == 1


async def test_concurrent_requests_with_same_id_on_two_masters_place_one_order(
    system: System,
) -> None:
    one, other = await _master(system), await system.start_master(CONFIG)

    replies = await asyncio.gather(one.trade(request("twice-at-once")), other.trade(request("twice-at-once")))
    settled = await one.trade(request("twice-at-once"))

    assert len(await system.orders("master")) == 1
    assert {r.outcome for r in replies} <= {"filled", "unknown"}
    assert {r.signal_id for r in replies if r.ok} == {settled.signal_id}
    assert settled.outcome == "filled"
    assert await _signals(system) == 1


async def test_same_request_id_for_another_trade_is_refused(system: System) -> None:
    master = await _master(system)
    await master.trade(request("reused-id-01", quote="500"))

    other = await master.trade(request("reused-id-01", quote="100"))

    assert other.outcome == "refused"
    assert "another trade" in other.error
    assert len(await system.orders("master")) == 1


async def test_kill_switch_on_refuses_master_trade(system: System) -> None:
    master = await _master(system)

    killed = await asyncio.to_thread(run_cli, "kill", "on", COPYTRADE_NATS_URL=system.server.url)
    await eventually(lambda: master.killed)
    refused = await asyncio.to_thread(_cli_trade, system, "while-killed-1")
    orders_while_killed = len(await system.orders("master"))
    await asyncio.to_thread(run_cli, "kill", "off", COPYTRADE_NATS_URL=system.server.url)
    await eventually(lambda: not master.killed)
    after = await asyncio.to_thread(_cli_trade, system, "while-killed-1")

    assert killed.returncode == 0
    assert refused[0] == 1
    assert "kill switch" in refused[2]
    assert orders_while_killed == 0
    assert after[0] == 0
    assert len(await system.orders("master")) == 1


async def test_unreadable_trade_request_gets_a_clear_refusal(system: System) -> None:
    await _master(system)

    replies: list[bytes] = []

    # nats-server 2.15.1 may still answer "no responders" for a few milliseconds after the
    # subscribing connection's flush returned (4 in 100 fresh starts here; never once the
    # requester had made two round trips first): asked again while it does
    async def answered() -> bool:
        try:
            msg = await system.nc.request(bus.MASTER_TRADE_SUBJECT, b'{"type":"trade","symb', timeout=10)
        except nats.errors.NoRespondersError:
            return False
        replies.append(msg.data)
        return True

    await eventually(answered, timeout=10)
    reply = msgspec.json.decode(replies[0], type=TradeReply)

    assert (reply.ok, reply.outcome) == (False, "refused")
    assert reply.error.startswith("invalid trade request")
    assert await system.orders("master") == []
