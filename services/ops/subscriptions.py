"""A follower's subscription to a master, from the operator's side: end it
(`copytrade unsubscribe`), or make coins it already holds part of what it copied from that master
(`copytrade adopt`). Both are safe to run again."""

from __future__ import annotations

import sys
import time
from decimal import Decimal
from typing import Literal, TypeVar

import msgspec
import nats
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from services.ops.connection import connected
from services.ops.control import check_follower, check_master
from services.ops.errors import FAILED, UNKNOWN, CliError, describe
from services.ops.positions import age, latest
from shared import bus
from shared.config import CommonSettings, CopytradeConfig, SubscriptionConfig
from shared.control import Unsubscribed, control_bucket, set_unsubscribed, unsubscribed_key
from shared.ledger import Entry, Ledger, LedgerConflict, PositionReport, holding_key, report_key

Action = Literal["keep", "close"]
T = TypeVar("T")
_unsubscribed = msgspec.json.Decoder(Unsubscribed)
_entries = msgspec.json.Decoder(Entry)
_reports = msgspec.json.Decoder(PositionReport)


def check_subscription(config: CopytradeConfig, follower_id: str, master_id: str) -> SubscriptionConfig:
    """The follower's subscription to the master; an unknown id or a master it does not copy is
    an error (nothing changed)."""
    check_follower(config, follower_id)
    check_master(config, master_id)
    follower = next(f for f in config.followers if f.id == follower_id)
    subscriptions = config.subscriptions_of(follower)
    for subscription in subscriptions:
        if subscription.master == master_id:
            return subscription
    copied = ", ".join(s.master for s in subscriptions) or "no master"
    raise CliError(f"{follower_id} does not subscribe to {master_id} (it copies {copied}): nothing changed")


# ---- unsubscribe -----------------------------------------------------------------------------


async def unsubscribe(
    settings: CommonSettings,
    config: CopytradeConfig,
    follower_id: str,
    master_id: str,
    *,
    action: Action | None,
    who: str,
) -> str:
    """Write the operator's unsubscribe once; the same command again changes nothing."""
    subscription = check_subscription(config, follower_id, master_id)
    async with connected(settings) as nc:
        js = nc.jetstream()
        kv = await control_bucket(js, settings.stream_replicas)
        before = await _unsubscribed_now(kv, follower_id, master_id)
        if before is None or before.action != action:
            await set_unsubscribed(kv, follower_id, master_id, action, reason=f"unsubscribe by {who}")
        held = await _copied_holding(js, follower_id, master_id)
    done = action or subscription.on_unsubscribe
    what = (_UNSUBSCRIBE_EFFECT[done] if held else _NOTHING_HELD).format(
        f=follower_id, m=master_id, held=held
    )
    if before is not None and before.action == action:
        return f"already unsubscribed ({age(time.time() - before.at)} ago): nothing changed. {what}"
    how = "" if action is not None else f" (its subscription's on_unsubscribe: {done})"
    return f"{follower_id} unsubscribed from {master_id}{how}: {what}"


async def resubscribe(
    settings: CommonSettings, config: CopytradeConfig, follower_id: str, master_id: str
) -> str:
    """Undo an operator's unsubscribe: the config's subscription applies again (its
    on_subscribe included). Safe to run again."""
    subscription = check_subscription(config, follower_id, master_id)
    async with connected(settings) as nc:
        kv = await control_bucket(nc.jetstream(), settings.stream_replicas)
        if await _unsubscribed_now(kv, follower_id, master_id) is None:
            return f"{follower_id} already copies {master_id}: nothing changed"
        await kv.delete(unsubscribed_key(follower_id, master_id))
    return (
        f"{follower_id} copies {master_id} again (on_subscribe: "
        f"{subscription.on_subscribe}), within seconds on every copier"
    )


_UNSUBSCRIBE_EFFECT = {
    "close": "every copier stops copying {m} for {f} and sells what {f} copied from {m} "
    "({held}) once; coins {f} holds of its own are not sold",
    "keep": "every copier stops copying {m} for {f}; what {f} copied from {m} ({held}) stays "
    "and is no longer sold by {m}'s exits",
}
_NOTHING_HELD = "every copier stops copying {m} for {f}; {f} holds nothing copied from {m}"


async def _unsubscribed_now(kv: KeyValue, follower_id: str, master_id: str) -> Unsubscribed | None:
    try:
        got = await kv.get(unsubscribed_key(follower_id, master_id))
    except KeyNotFoundError:
        return None
    return _decoded(_unsubscribed, got.value)  # unreadable: written again


async def _copied_holding(js: JetStreamContext, follower_id: str, master_id: str) -> str:
    try:
        kv = await js.key_value(bus.LEDGER_BUCKET)
    except NotFoundError:
        return ""
    prefix = holding_key(follower_id, master_id, "")
    held = [
        (key[len(prefix) :].replace("_", "/"), _decoded(_entries, value))
        for key, value in sorted((await latest(kv, prefix + ">")).items())
    ]
    return ", ".join(
        f"{entry.amount:f} {_base(symbol)}"
        for symbol, entry in held
        if entry is not None and entry.amount > 0
    )


def _base(symbol: str) -> str:
    return symbol.partition("/")[0]


def _decoded(decoder: msgspec.json.Decoder[T], value: bytes | None) -> T | None:
    """A value this version cannot read (written by hand, or by a newer version) is None."""
    try:
        return None if not value else decoder.decode(value)
    except msgspec.DecodeError:
        return None


# ---- adopt -----------------------------------------------------------------------------------


async def adopt(
    settings: CommonSettings,
    config: CopytradeConfig,
    follower_id: str,
    master_id: str,
    symbol: str,
    *,
    amount: Decimal,
    request_id: str,
) -> str:
    """Add `amount` to the follower's copied holding once per request id."""
    check_subscription(config, follower_id, master_id)
    key, fill_id = holding_key(follower_id, master_id, symbol), f"adopt:{request_id}"
    print(
        f"request {request_id}: adopt {amount:f} {_base(symbol)} ({symbol}) into "
        f"{follower_id}'s copied holding from {master_id} (to send it again: --request-id "
        f"{request_id})",
        flush=True,
    )
    async with connected(settings) as nc:
        js = nc.jetstream()
        try:
            ledger = Ledger(await bus.bucket(js, bus.LEDGER_BUCKET, settings.stream_replicas))
            entry = await ledger.read(key)
            again = fill_id in entry.applied
            before, after = (
                (entry.amount, entry.amount)
                if again
                else await ledger.apply(key, fill_id, amount, adopt=True)
            )
            report = await _report(js, follower_id, master_id, symbol)
        except LedgerConflict as exc:
            raise CliError(f"{exc}: nothing was adopted; run the same command again", FAILED) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise CliError(
                f"outcome unknown ({describe(exc)}): run the same command with "
                f"--request-id {request_id}; it never adopts twice",
                UNKNOWN,
            ) from None
    for warning in adopt_warnings(after, _base(symbol), report):
        print(f"warning: {warning}", file=sys.stderr)
    if again:
        return (
            f"already adopted by request {request_id}: nothing changed; {follower_id}'s "
            f"copied holding of {symbol} from {master_id} is {after:f}"
        )
    return (
        f"adopted: {follower_id}'s copied holding of {symbol} from {master_id} "
        f"{before:f} -> {after:f}; {master_id}'s exits now sell it in proportion, like "
        "what was copied"
    )


async def _report(
    js: JetStreamContext, follower_id: str, master_id: str, symbol: str
) -> PositionReport | None:
    kv = await js.key_value(bus.LEDGER_BUCKET)
    try:
        got = await kv.get(report_key(follower_id, master_id, symbol))
    except KeyNotFoundError:
        return None
    return _decoded(_reports, got.value)


HEAL = "it is reported as drift, and with COPYTRADE_RECONCILE_HEAL=true reconciliation sells the excess"


def adopt_warnings(holding: Decimal, asset: str, report: PositionReport | None) -> list[str]:
    """What reconciliation will make of the new holding, from what it saw last."""
    if report is None:
        return [
            f"not yet reconciled: if the account holds less than {holding:f} {asset}, "
            "reconciliation clips the copied holding to the real balance",
            "if the copied holding is above its target (the master's copied position x "
            f"the follower's scale), {HEAL}",
        ]
    seen = f"{age(time.time() - report.at)} ago"
    warnings = []
    if holding > report.real:
        warnings.append(
            f"the copied holding {holding:f} {asset} is above the real balance "
            f"{report.real:f} (reconciled {seen}): reconciliation clips it to the "
            "real balance"
        )
    if holding > report.target:
        warnings.append(
            f"the copied holding {holding:f} {asset} is above its target "
            f"{report.target:f} (reconciled {seen}): {HEAL}"
        )
    return warnings
