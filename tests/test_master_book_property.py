"""The master's book of its figures never signs a fill with a wrong base held (hypothesis,
services.master.streamed.Book): whatever the order of fills, their delays on the stream, the
reads of the balances and where in its round trip the venue took each read, and the venue's
clock ahead of ours by up to the settle time or behind it, the base held the book gives for a
fill is either exactly what the account held before that fill or nothing (then the fill is read
by REST). Time is simulated: the book's clocks and the read's answer are driven by the test."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.master.streamed import Book
from shared.exchange.port import Fill

BTC = "BTC/USD"
SETTLE_S = 0.5
START = 1_000.0


@dataclass(frozen=True)
class Trade:
    gap_s: float  # after the previous trade (venue time)
    delay_s: float  # on the stream
    amount: Decimal  # signed: a sell is negative


@dataclass(frozen=True)
class Read:
    at_s: float  # sent, from the start
    rtt_s: float
    taken: float  # where in the round trip the venue took it (0: sent, 1: answered)


trades = st.lists(
    st.builds(
        Trade,
        gap_s=st.floats(0.0, 2.0),
        delay_s=st.floats(0.0, 1.0),
        amount=st.decimals("-0.5", "0.5", places=3).filter(lambda d: d != 0),
    ),
    max_size=12,
)
reads = st.lists(
    st.builds(Read, at_s=st.floats(0.0, 15.0), rtt_s=st.floats(0.0, 0.5), taken=st.floats(0.0, 1.0)),
    max_size=6,
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _fill(index: int, trade: Trade, at: float) -> Fill:
    return Fill(
        order_id=f"O{index}",
        symbol=BTC,
        side="buy" if trade.amount > 0 else "sell",
        amount=abs(trade.amount),
        price=Decimal(40000),
        at=at,
        trade_id=f"T{index}",
    )


Answer = tuple[Decimal | None, Decimal]  # what the book gave for a fill, what was held before it


@dataclass(frozen=True)
class Timeline:
    times: list[float]  # each trade's venue time (ours: the clocks agree but for the skew)
    arrivals: list[float]  # when each trade comes on the stream
    reads: list[tuple[float, Read]]  # when each read is sent: one at a time, as the watcher does

    @classmethod
    def of(cls, trades: list[Trade], reads: list[Read]) -> Timeline:
        times = [START + sum(tr.gap_s for tr in trades[: i + 1]) for i in range(len(trades))]
        arrivals: list[float] = []
        for when, trade in zip(times, trades, strict=True):  # the stream keeps the venue's order
            arrivals.append(max([*arrivals[-1:], when + trade.delay_s]))
        spaced: list[tuple[float, Read]] = []
        for r in sorted(reads, key=lambda r: r.at_s):
            free = spaced[-1][0] + spaced[-1][1].rtt_s + 1e-6 if spaced else START
            spaced.append((max(free, START + r.at_s), r))
        return cls(times, arrivals, spaced)

    def events(self) -> list[tuple[float, int, int]]:
        """(our time, kind, index), in order: kind 0 a read sent, 1 answered, 2 a fill comes."""
        events = [(sent, 0, j) for j, (sent, _) in enumerate(self.reads)]
        events += [(sent + r.rtt_s, 1, j) for j, (sent, r) in enumerate(self.reads)]
        events += [(arrival, 2, i) for i, arrival in enumerate(self.arrivals)]
        return sorted(events)


async def _run(trades: list[Trade], reads: list[Read], skew_s: float, start: Decimal) -> list[Answer]:
    """Play the timeline; for each fill, the book's answer and the truth."""
    line = Timeline.of(trades, reads)

    def held_at(instant: float) -> Decimal:
        return start + sum(
            (tr.amount for w, tr in zip(line.times, trades, strict=True) if w <= instant), Decimal(0)
        )

    clock = Clock()
    answers: list[asyncio.Future[tuple[Decimal, dict[str, Decimal]]]] = []

    async def read(symbols: list[str]) -> tuple[Decimal, dict[str, Decimal]]:
        answers.append(asyncio.get_running_loop().create_future())
        return await answers[-1]

    book = Book(read, max_age_s=1e9, settle_s=SETTLE_S, wall=clock, mono=clock)
    book.apply(_fill(-1, Trade(0, 0, Decimal(1)), START - 100))  # the symbol is known: read it
    given: list[Answer] = []
    reading: asyncio.Task[bool] | None = None
    for when, kind, index in line.events():
        clock.now = when
        if kind == 0:
            reading = asyncio.create_task(book.refresh())
            await asyncio.sleep(0)  # it asks
        elif kind == 1 and reading is not None:
            sent, r = line.reads[index]
            answers[-1].set_result((Decimal(1), {BTC: held_at(sent + r.taken * r.rtt_s)}))
            await reading
        elif kind == 2:
            before = book.apply(_fill(index, trades[index], line.times[index] + skew_s))
            given.append((before, start + sum((tr.amount for tr in trades[:index]), Decimal(0))))
    return given


@settings(max_examples=300, deadline=None)
@given(trades=trades, reads=reads, skew_s=st.floats(-1.0, SETTLE_S), start=st.decimals("0", "3", places=3))
def test_book_gives_the_exact_base_held_before_a_fill_or_nothing(
    trades: list[Trade], reads: list[Read], skew_s: float, start: Decimal
) -> None:
    answers = asyncio.run(_run(trades, reads, skew_s, start))

    assert all(before is None or before == truth for before, truth in answers)


def test_book_with_a_clean_read_gives_the_base_held_before_each_fill() -> None:
    """The property above also holds for a book that never answers: here it must answer."""
    trades = [Trade(5.0, 0.01, Decimal("0.2")), Trade(1.0, 0.01, Decimal("-0.1"))]
    reads = [Read(at_s=1.0, rtt_s=0.1, taken=0.5)]

    answers = asyncio.run(_run(trades, reads, 0.0, Decimal(2)))

    assert answers == [(Decimal(2), Decimal(2)), (Decimal("2.2"), Decimal("2.2"))]
