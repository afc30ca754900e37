"""Copying one signal for a set of followers: their figures, one sizer request per 1,000,
then per follower claim -> place -> record, concurrently under this replica's limit.

The same code runs a whole group's signal (the direct path) and one shard's work item (the
spread path): only the set of followers and the message it runs under differ.

Exactly-once effect: before an order, (signal, follower) is claimed in JetStream KV with the
sized order and its deterministic client order id; a redelivered message recovers each claimed
follower by looking its order up at the venue instead of placing it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import msgspec
from nats.aio.client import Client
from nats.js.api import PubAck
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from services.copier.followers import Follower, FollowerBook, Lineage
from services.copier.metrics import CopierMetrics
from services.copier.reconcile import Reconciler
from services.copier.risk import EquityGuard
from shared import bus
from shared.config import Settings
from shared.control import Control
from shared.errors import CopytradeError, ExchangeError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import OrderAck, OrderCommand, OrderStatus
from shared.messages import (
    Claim,
    CopyResult,
    Decision,
    FollowerSnapshot,
    FollowerState,
    Outcome,
    SizedOrder,
    SizeReply,
    SizeRequest,
    Skip,
    TradeSignal,
    client_order_id_for,
)

log = logging.getLogger("copytrade.copier")
SIZER_CHUNK = 1000
# expired: the venue ended the order having filled nothing (a limit order out of the money)
_OUTCOMES: dict[OrderStatus, Outcome] = {"filled": "filled", "submitted": "submitted",
                                         "expired": "skipped"}
WRONG_LAST_SEQUENCE = 10071  # JetStream: the subject already has a message (the claim exists)


class ClaimBusy(Exception):
    """Another live attempt may be placing this follower's order: retry the message later."""


class _Recording:
    """One signal's outcome records in flight to the results stream, and their tally."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[PubAck]] = []
        self.tally: Counter[str] = Counter()

    async def stored(self, timeout_s: float) -> None:
        """Wait until the results stream has stored every record (raise if one failed)."""
        if self.acks:
            await asyncio.wait_for(asyncio.gather(*self.acks), timeout_s)


class CopyExecutor:
    """Copies signals for followers of one group; one per replica, shared by both paths so the
    replica's concurrency limit bounds all of its orders."""

    def __init__(
        self, *, nc: Client, js: JetStreamContext, claims: KeyValue, book: FollowerBook,
        metrics: CopierMetrics, settings: Settings, instance: str, control: Control,
        reconciler: Reconciler | None = None,
    ) -> None:
        self._reconciler = reconciler
        self._nc, self._js, self._claims, self._book = nc, js, claims, book
        self._control = control
        self._guard = EquityGuard(control.kv)
        self._metrics, self._settings, self._instance = metrics, settings, instance
        self._exchange = book.exchange
        self._claim_decoder = msgspec.json.Decoder(Claim)
        self._reply_decoder = msgspec.json.Decoder(SizeReply)
        self._result_decoder = msgspec.json.Decoder(CopyResult)
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._observed: dict[str, float] = {}  # symbol -> newest signal shown to the reconciler

    async def execute(
        self, signal: TradeSignal, followers: list[Follower], received_at: float, *,
        redelivered: bool, lineage: Lineage, shard: int | None = None,
    ) -> None:
        """Copy `signal` for `followers`; return once every outcome is stored, raise if one
        could not be (the message is then retried, and claims make the retry safe)."""
        for follower in followers:
            follower.resume(lineage)
        decisions = await self._size(signal, followers)
        recording = _Recording()
        results = await asyncio.gather(*(
            self._copy_one(signal, f, decisions[f.id], received_at, redelivered, recording)
            for f in followers), return_exceptions=True)
        await recording.stored(timeout_s=30)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        self._observe(signal)
        where = "" if shard is None else f" shard={shard}"
        log.info("event=signal_copied signal_id=%s%s followers=%d %s seconds=%.3f",
                 signal.signal_id, where, len(followers),
                 " ".join(f"{k}={v}" for k, v in sorted(recording.tally.items())),
                 time.time() - received_at)

    def _observe(self, signal: TradeSignal) -> None:
        """Show the reconciler the master's newest position (shards may finish out of order)."""
        if self._reconciler is None or signal.executed_at < self._observed.get(signal.symbol, 0):
            return
        self._observed[signal.symbol] = signal.executed_at
        self._reconciler.observe(signal)

    # ---- sizing --------------------------------------------------------------------------------

    async def _size(self, signal: TradeSignal, followers: list[Follower]) -> dict[str, Decision]:
        snapshots = await asyncio.gather(*(self._snapshot(signal, f) for f in followers))
        decisions: dict[str, Decision] = {s.follower_id: s for s in snapshots
                                          if isinstance(s, Skip)}
        ready = [s for s in snapshots if not isinstance(s, Skip)]
        for start in range(0, len(ready), SIZER_CHUNK):
            request = SizeRequest(signal=signal, min_notional=self._book.min_notional,
                                  now=time.time(), followers=ready[start:start + SIZER_CHUNK])
            with self._metrics.sizer_latency.time():
                reply = await self._nc.request(bus.SIZER_SUBJECT, self._encoder.encode(request),
                                               timeout=10)
            if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
                raise CopytradeError(f"sizer error: {reply.headers.get('Nats-Service-Error')}")
            decisions.update({d.follower_id: d for d in self._reply_decoder.decode(reply.data).decisions})
        return decisions

    async def _snapshot(self, signal: TradeSignal, follower: Follower) -> FollowerSnapshot | Skip:
        """The follower's figures, or a skip when its venue cannot be read (isolated)."""
        state = self._control.state_of(follower.id, follower.configured_state())
        if state == "paused":  # nothing to read or size
            return Skip(follower_id=follower.id, reason_code="paused", reason="Follower is paused")
        try:
            async with self._limit:
                rules = await self._book.rules(follower, signal.symbol)
                snapshot = await follower.snapshot(
                    signal, rules, self._settings.snapshot_ttl_s, state=state,
                    max_signal_age_s=self._book.signals.max_age_s)
        except ExchangeError as exc:
            return Skip(follower_id=follower.id, reason_code=exc.reason_code,
                        reason=f"Could not read account: {type(exc).__name__}")
        tripped = await self._trip_equity_limits(follower, snapshot)
        if tripped == "paused":
            return Skip(follower_id=follower.id, reason_code="paused", reason="Follower is paused")
        return snapshot if tripped is None else msgspec.structs.replace(snapshot, state=tripped)

    async def _trip_equity_limits(
        self, follower: Follower, snapshot: FollowerSnapshot
    ) -> FollowerState | None:
        """Apply the follower's daily-loss / drawdown limits; the state they now require."""
        trip = await self._guard.check(follower, snapshot.equity)
        if trip is None:
            return None
        state, reason = trip
        if await self._control.restrict(follower.id, state, reason):
            self._metrics.risk_trips.labels(self._exchange, follower.id, reason.split(":")[0]).inc()
            log.warning("event=risk_limit_tripped follower=%s state=%s reason=%r",
                        follower.id, state, reason)
        return self._control.state_of(follower.id, follower.configured_state())

    # ---- one follower ----------------------------------------------------------------------------

    async def _copy_one(
        self, signal: TradeSignal, follower: Follower, decision: Decision, received_at: float,
        redelivered: bool, recording: _Recording,
    ) -> None:
        async with self._limit:  # claim only when about to place: a crash strands few claims
            await self._copy_one_now(signal, follower, decision, received_at, redelivered,
                                     recording)

    async def _copy_one_now(
        self, signal: TradeSignal, follower: Follower, decision: Decision, received_at: float,
        redelivered: bool, recording: _Recording,
    ) -> None:
        key = f"{signal.signal_id}.{follower.id}"
        if redelivered:
            entry = await self._get_claim(key)
            if entry is not None:
                await self._recover(signal, follower, key, entry, received_at, recording)
                return
        decision = self._gate(follower, decision)
        if isinstance(decision, Skip):
            await self._record(follower, self._skipped(signal, follower, decision, received_at),
                               recording)
            return
        if self._control.state_of(follower.id, follower.configured_state()) == "dry_run":
            result = self._dry_run(signal, follower, decision, received_at)
            await self._record(follower, result, recording)
            return
        cid = client_order_id_for(signal.signal_id, follower.id)
        claim = Claim(owner=self._instance, at=time.time(), order=decision, client_order_id=cid)
        if not await self.claim(key, self._encoder.encode(claim)):
            entry = await self._get_claim(key)
            assert entry is not None
            await self._recover(signal, follower, key, entry, received_at, recording)
            return
        await self._execute(signal, follower, claim, received_at, recording)

    def _gate(self, follower: Follower, decision: Decision) -> Decision:
        """The kill switch overrides every order decision, checked as late as possible."""
        if isinstance(decision, SizedOrder) and self._control.killed:
            return Skip(follower_id=follower.id, reason_code="kill_switch",
                        reason="Kill switch is on: no new orders")
        return decision

    async def _execute(
        self, signal: TradeSignal, follower: Follower, claim: Claim, received_at: float,
        recording: _Recording, *, recovered: bool = False,
    ) -> None:
        order = claim.order
        command = OrderCommand(
            client_order_id=claim.client_order_id, symbol=follower.venue_symbol(signal.symbol),
            side=order.side, size=order.size, size_type=order.size_type,
            reference_price=signal.price, limit_price=order.limit_price)
        if self._control.killed:  # switched on while this copy waited its turn
            skip = self._gate(follower, order)
            assert isinstance(skip, Skip)
            await self._record(follower, self._skipped(signal, follower, skip, received_at), recording)
            return
        sent_at = time.time()
        self._metrics.internal_latency.observe(sent_at - received_at)
        self._metrics.in_flight.inc()
        try:
            ack = await place_idempotently(follower.account, command,
                                           timeout_s=self._settings.order_timeout_s)
            follower.apply_fill(command.symbol, order.side, ack)
            self._metrics.copy_latency.observe((ack.accepted_at or time.time()) - signal.executed_at)
            result = self._placed(signal, follower, order, ack, received_at, sent_at, recovered)
        except ExchangeError as exc:
            result = self._failed(signal, follower, order, claim.client_order_id, exc,
                                  received_at, sent_at)
        finally:
            self._metrics.in_flight.dec()
        await self._record(follower, result, recording)

    async def _recover(
        self, signal: TradeSignal, follower: Follower, key: str, entry: tuple[Claim, int],
        received_at: float, recording: _Recording,
    ) -> None:
        """A claim exists: its outcome is recorded, or its order is found, or it is taken over."""
        claim, revision = entry
        follower.forget_figures()  # another attempt may have traded the account: read it again
        if await self._recorded(follower, signal.signal_id):
            recording.tally["already_recorded"] += 1
            return
        symbol = follower.venue_symbol(signal.symbol)
        found = await follower.account.find_order(claim.client_order_id, symbol)
        if found is not None:
            result = self._placed(signal, follower, claim.order, found, received_at, None, True)
            await self._record(follower, result, recording)
            return
        if time.time() - claim.at < self._settings.order_timeout_s * 2:
            raise ClaimBusy(f"{key} claimed {time.time() - claim.at:.1f}s ago by {claim.owner}")
        taken = msgspec.structs.replace(claim, owner=self._instance, at=time.time())
        await self._claims.update(key, self._encoder.encode(taken), last=revision)
        log.info("event=claim_taken_over signal_id=%s follower=%s client_order_id=%s",
                 signal.signal_id, follower.id, claim.client_order_id)
        await self._execute(signal, follower, taken, received_at, recording, recovered=True)

    async def _recorded(self, follower: Follower, signal_id: str) -> bool:
        """Whether this follower's latest recorded outcome is for this signal."""
        try:
            msg = await self._js.get_last_msg(bus.RESULTS_STREAM,
                                              bus.result_subject(self._exchange, follower.id))
        except NotFoundError:
            return False
        return msg.data is not None and self._result_decoder.decode(msg.data).signal_id == signal_id

    async def claim(self, key: str, data: bytes) -> bool:
        """Create the claim iff absent (KV create semantics); False when it exists.

        Sent with publish_async rather than KeyValue.create: the same expected-sequence check,
        without a request/reply round of its own, is a measured ~15% of the copier's CPU per order.
        """
        ack = await self._js.publish_async(f"$KV.{bus.CLAIMS_BUCKET}.{key}", data,
                                           headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        try:
            await asyncio.wait_for(ack, self._settings.order_timeout_s)
        except BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def _get_claim(self, key: str) -> tuple[Claim, int] | None:
        try:
            entry = await self._claims.get(key)
        except KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        return self._claim_decoder.decode(entry.value), entry.revision

    # ---- recording -------------------------------------------------------------------------------

    async def _record(self, follower: Follower, result: CopyResult, recording: _Recording) -> None:
        """Send the outcome to the results stream (deduplicated); `recording.stored` awaits it."""
        ack = await self._js.publish_async(
            bus.result_subject(self._exchange, follower.id), self._encoder.encode(result),
            headers={"Nats-Msg-Id": f"{result.signal_id}:{result.follower_id}"})
        recording.acks.append(ack)
        recording.tally[result.outcome] += 1
        self._metrics.outcome(follower.id, result.outcome, result.reason_code)
        level = logging.DEBUG if result.outcome in ("filled", "submitted") else logging.INFO
        log.log(level, "event=copy_%s signal_id=%s follower=%s client_order_id=%s reason=%r",
                result.outcome, result.signal_id, follower.id, result.client_order_id,
                result.reason)

    # ---- result builders -------------------------------------------------------------------------

    def _base(self, signal: TradeSignal, follower: Follower, received_at: float) -> dict[str, object]:
        return {"signal_id": signal.signal_id, "follower_id": follower.id,
                "exchange": self._exchange, "symbol": follower.venue_symbol(signal.symbol),
                "side": signal.side, "signal_executed_at": signal.executed_at,
                "received_at": received_at}

    def _skipped(self, signal: TradeSignal, follower: Follower, skip: Skip,
                 received_at: float) -> CopyResult:
        return CopyResult(outcome="skipped", reason_code=skip.reason_code, reason=skip.reason,
                          **self._base(signal, follower, received_at))  # type: ignore[arg-type]

    def _placed(self, signal: TradeSignal, follower: Follower, order: SizedOrder, ack: OrderAck,
                received_at: float, sent_at: float | None, recovered: bool) -> CopyResult:
        code, reason = _unfilled(order) if ack.status == "expired" else ("none", "")
        return CopyResult(
            outcome=_OUTCOMES[ack.status], reason_code=code, reason=reason, size=order.size,
            size_type=order.size_type, notional=order.notional,
            client_order_id=ack.client_order_id, exchange_order_id=ack.exchange_order_id,
            filled_base=ack.filled_base, avg_price=ack.avg_price, recovered=recovered,
            order_sent_at=sent_at, acked_at=ack.accepted_at or time.time(),
            **self._base(signal, follower, received_at))  # type: ignore[arg-type]

    def _dry_run(self, signal: TradeSignal, follower: Follower, order: SizedOrder,
                 received_at: float) -> CopyResult:
        return CopyResult(
            outcome="dry_run", reason_code="dry_run", reason="Dry run: decision recorded, no order",
            size=order.size, size_type=order.size_type, notional=order.notional,
            client_order_id=client_order_id_for(signal.signal_id, follower.id),
            **self._base(signal, follower, received_at))  # type: ignore[arg-type]

    def _failed(self, signal: TradeSignal, follower: Follower, order: SizedOrder, cid: str,
                exc: ExchangeError, received_at: float, sent_at: float) -> CopyResult:
        return CopyResult(
            outcome="failed", reason_code=exc.reason_code, reason=f"{type(exc).__name__}: {exc}",
            size=order.size, size_type=order.size_type, notional=order.notional,
            client_order_id=cid, order_sent_at=sent_at,
            **self._base(signal, follower, received_at))  # type: ignore[arg-type]


def _unfilled(order: SizedOrder) -> tuple[str, str]:
    if order.limit_price is not None:
        return ("limit_not_filled", f"Limit order at {order.limit_price} not filled: the price "
                                    "moved beyond the slippage tolerance")
    return "not_filled", "The venue ended the order without filling it"
