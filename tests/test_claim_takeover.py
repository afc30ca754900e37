"""A copy's claim taken over while its attempt was failing (found by `make chaos`): a replica
took over a claim it judged stale, placed the order and was killed; the attempt that had held
the claim recorded its own failure and acked the signal, so the order the other placed never
reached the follower's ledger. An attempt now marks its claim ended before recording a failure
or a skip, and when the claim was taken over meanwhile it records nothing and the signal is
retried: the retry finds the other attempt's order, or takes the claim over and places it.
A real nats-server and the paper venue, in process."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from services.paper.venue import PaperVenue
from shared import bus
from shared.bus.reading import latest_in
from shared.exchange.paper import Ok, Place, Submit
from shared.messages import Claim
from support.natsserver import NatsServer
from tests.harness import System, make_config, paper_followers, trade


class TakeOverVenue(PaperVenue):
    """The paper venue; before `victim`'s first order is refused (a fault queued for it),
    another attempt takes the copy's claim over, as a replica that judged it stale would."""

    def __init__(self) -> None:
        super().__init__()
        self.victim = ""
        self.system: System | None = None
        self.taken: list[Claim] = []

    async def _place(self, call: Place | Submit) -> Ok:
        if call.account == self.victim and not self.taken and self.system is not None:
            await self._take_over(self.system)
        return await super()._place(call)

    async def _take_over(self, system: System) -> None:
        claims = await system.js.key_value(bus.CLAIMS_BUCKET)
        (value,) = [v for v in await latest_in(claims) if v.key.endswith(f".{self.victim}")]
        claim = msgspec.json.decode(value.data, type=Claim)
        # long ago: the retry may take it over at once (this attempt placed nothing)
        taken = msgspec.structs.replace(claim, owner="replica-b", at=time.time() - 3600)
        await claims.update(value.key, msgspec.json.encode(taken), last=value.revision)
        self.taken.append(taken)


async def test_failure_of_an_attempt_whose_claim_was_taken_over_is_not_the_outcome(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    venue = TakeOverVenue()
    system = System(nats_server, tmp_path)
    system.venue = venue
    async with system:
        venue.system, venue.victim = system, "solo"
        await system.fund("master", 10_000)
        await system.fund_all({"solo": 1_000, "other": 1_000})
        config = make_config(paper_followers({"solo": 1_000, "other": 1_000}))
        await system.start_copier(config)
        master = await system.start_master(config)
        await system.fault("solo", "exchange_error")  # the attempt's order is refused

        reply = await master.trade(trade(quote="500"))
        results = await system.wait_results(reply.signal_id, 2, timeout=30)
        orders = {f: await system.orders(f) for f in ("solo", "other")}

    assert len(venue.taken) == 1
    assert results["solo"].outcome == "filled"  # by the retry, not the refused attempt
    assert results["other"].outcome == "filled"
    assert [len(o) for o in orders.values()] == [1, 1]
