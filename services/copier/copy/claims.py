"""Claims: before a follower's order, (signal, follower) is claimed in the JetStream KV bucket
with the sized order and its client order id, so a redelivery recovers instead of re-placing.

Writes survive a leader change or a reconnect (bounded retries, `bus.retry`, each attempt
waiting at most `bus.WRITE_TIMEOUT_S` for its ack); a retried create that finds its own earlier
write takes it as made."""

from __future__ import annotations

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import bus
from shared.bus import nats_fixes
from shared.errors import CopytradeError
from shared.messages import Claim

WRONG_LAST_SEQUENCE = 10071  # JetStream: the subject already has a message (the claim exists)


class ClaimBusy(CopytradeError):
    """Another live attempt may be placing this follower's order: retry the message later."""


class Claims:
    def __init__(self, js: JetStreamContext, kv: KeyValue, *, timeout_s: float) -> None:
        nats_fixes.require()  # without it a create that conflicts never resolves
        # a claim's ack lost with a node is not waited for the whole order timeout: sent again
        self._js, self._kv, self._timeout_s = js, kv, min(timeout_s, bus.WRITE_TIMEOUT_S)
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(Claim)

    async def create(self, key: str, data: bytes) -> bool:
        """Create the claim iff absent (KV create semantics); False when someone else holds it."""
        return await self._create(key, data) is not None

    async def claim(self, key: str, claim: Claim) -> int | None:
        """Create the claim iff absent: its revision; None when someone else holds it."""
        return await self._create(key, self._encoder.encode(claim))

    async def _create(self, key: str, data: bytes) -> int | None:
        """Sent with publish_async rather than KeyValue.create: the same expected-sequence check,
        without a request/reply round of its own, is a measured ~15% of the copier's CPU per order.
        """
        attempts = 0

        async def once() -> int | None:
            nonlocal attempts
            attempts += 1
            return await self._create_once(key, data)

        made = await bus.retry(f"claim {key}", once, attempt_s=self._timeout_s)
        if made is not None or attempts == 1:
            return made
        entry = await self._read(key)  # an earlier attempt may have been stored
        return entry.revision if entry is not None and entry.value == data else None

    async def get(self, key: str) -> tuple[Claim, int] | None:
        """The claim and its revision, or None."""
        entry = await self._read(key)
        if entry is None or entry.value is None or entry.revision is None:
            return None
        return self._decoder.decode(entry.value), entry.revision

    async def value(self, key: str) -> bytes | None:
        """What is stored under `key` (a claim, or a replay guard), or None."""
        entry = await self._read(key)
        return None if entry is None else entry.value

    async def take_over(self, key: str, claim: Claim, revision: int) -> int:
        """Replace a stale claim with ours (its new revision); raise if another attempt changed
        it meanwhile."""
        data = self._encoder.encode(claim)
        return await bus.retry(f"take over {key}", lambda: self._kv.update(key, data, last=revision))

    async def end(self, key: str, claim: Claim, revision: int) -> bool:
        """Mark our claim ended (its attempt placed no order) unless another attempt took it
        over since `revision`: False then, and that attempt's outcome is the one that counts."""
        ended = self._encoder.encode(msgspec.structs.replace(claim, ended=True))
        try:
            await bus.retry(f"end claim {key}", lambda: self._kv.update(key, ended, last=revision))
        except KeyWrongLastSequenceError:
            return await self.value(key) == ended  # a retry after our own write was stored
        return True

    async def _create_once(self, key: str, data: bytes) -> int | None:
        """One attempt; `create`'s retry bounds how long it waits for the ack."""
        ack = await self._js.publish_async(
            bus.kv_subject(bus.CLAIMS_BUCKET, key), data, headers={"Nats-Expected-Last-Subject-Sequence": "0"}
        )
        try:
            stored = await ack
        except BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(stored.seq)

    async def _read(self, key: str) -> KeyValue.Entry | None:
        try:
            return await bus.retry(f"read claim {key}", lambda: self._kv.get(key))
        except KeyNotFoundError:
            return None
