"""Hostile bytes on the signal subject: none is executed, every one is recorded as rejected.

In-process, hypothesis feeds 10,000 payloads through the copier's own decode-and-verify path
(`msgspec.json.Decoder(TradeSignal)` then `SignalVerifier.problem`): garbled bytes, wrong types,
out-of-range money, unknown fields, wrong tags, missing fields, lying signal ids, and unsigned,
forged or tampered signals. End to end, a fixed-seed sample of them goes to a running copier
over a real nats-server, followed by one genuine signal.

A payload that merely re-spells a genuinely signed signal (`45000` for `"45000"`, no `type`
key) says what the master signed: it is not hostile and is not drawn.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, reject, seed, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from shared import bus
from shared.messages import (
    MALFORMED as DECODE_ERRORS,
)
from shared.messages import (
    FollowerSnapshot,
    MarketRules,
    SignalRejected,
    SizeReply,
    SizeRequest,
    TradeSignal,
    client_order_id_for,
    signal_id_for,
)
from shared.signing import SignalSigner, SignalVerifier
from tests.chaos.conftest import (
    CHAOS_PUBLIC_KEY,
    CHAOS_SEED,
    ENCODER,
    MASTER,
    SIGNER,
    Figures,
    chaos_config,
    count_orders,
    expected_orders,
    paper_orders,
    publish_until_stored,
    results_recorded,
    signed_signal,
)
from tests.harness import CopierHandle, System, eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

DECODER = msgspec.json.Decoder(TradeSignal)
VERIFIER = SignalVerifier([CHAOS_PUBLIC_KEY])
ACCEPTED, RESPELLED = "accepted", "respelled"
# An exception escaping the copier's judgement (two such bugs were found here and fixed) is
# counted apart, and no kind expects it.
DECODER_RAISED, VERIFIER_RAISED = "decoder_raised", "verifier_raised"
RAISED = {DECODER_RAISED, VERIFIER_RAISED}
REFUSALS = {"malformed", "unsigned", "bad_signature"}  # the copier's reason codes before execution
FIELDS = ("type", *TradeSignal.__struct_fields__)
MONEY_FIELDS = ("price", "size", "filled_base", "master_equity", "master_position_before")
OTHER_SIGNERS = [SignalSigner(base64.b64encode(bytes([i]) * 32).decode()) for i in (1, 2, 3)]
MASTER_KEY = SigningKey(base64.b64decode(CHAOS_SEED))
SAMPLE_SEED = 20_240_601


@dataclass(frozen=True)
class Hostile:
    kind: str
    data: bytes
    genuine: TradeSignal | None = None  # the signed signal it was made from, if any


def judge(hostile: Hostile) -> str:
    """The copier's judgement before any order (Copier.process, then Copier._judge): a reason
    code, ACCEPTED, or *_RAISED when an exception escapes what the copier catches."""
    try:
        signal = DECODER.decode(hostile.data)
    except DECODE_ERRORS:  # exactly what Copier.process catches
        return "malformed"
    except Exception:  # noqa: BLE001 -- recorded as a verdict, any class; see test_invalid_utf8_in_a_string_is_refused_as_malformed
        return DECODER_RAISED
    if signal == hostile.genuine:
        return RESPELLED
    try:
        problem = VERIFIER.problem(signal)
    except Exception:  # noqa: BLE001 -- recorded as a verdict, any class; see test_signature_of_wrong_length_is_refused_not_raised
        return VERIFIER_RAISED
    return problem or ACCEPTED


# ---- genuine signals and their JSON documents ----------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_.:\-]{1,24}", fullmatch=True)
money = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("100000000"), places=8)
timestamps = st.floats(min_value=0, max_value=4_102_444_800)
symbols = st.sampled_from(("BTC/USD", "ETH/USD", "SOL/USDT", "XBT/EUR"))


@st.composite
def genuine_signals(draw: st.DrawFn) -> TradeSignal:
    exchange = draw(st.sampled_from(("paper", "kraken", "coinbase", "binance", "okx")))
    order_id = draw(ids)
    return SIGNER.sign(
        TradeSignal(
            signal_id=signal_id_for(exchange, order_id),
            master_id=draw(ids),
            exchange=exchange,
            symbol=draw(symbols),
            side=draw(st.sampled_from(("buy", "sell"))),
            price=draw(money),
            size=draw(money),
            size_type=draw(st.sampled_from(("quote", "base"))),
            filled_base=draw(money),
            order_id=order_id,
            master_equity=draw(money),
            master_position_before=draw(money | st.just(Decimal(0))),
            executed_at=draw(timestamps),
        )
    )


def to_doc(signal: TradeSignal) -> dict[str, Any]:
    return msgspec.to_builtins(signal)  # type: ignore[no-any-return]


def encode(doc: object) -> bytes:
    return msgspec.json.encode(doc)


def raw(token: str) -> msgspec.Raw:
    """A literal JSON token, e.g. 1e999, that no JSON encoder would write."""
    return msgspec.Raw(token.encode())


def sign_doc(doc: dict[str, Any], key: SigningKey = MASTER_KEY) -> str:
    """Sign a document as the master signs a signal: its canonical bytes with no signature."""
    return base64.b64encode(key.sign(encode({**doc, "signature": ""})).signature).decode()


# ---- hostile values ------------------------------------------------------------------------------

json_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
HUGE = ("1e999", "-1e999", "1E+400", "1" + "0" * 400, "-" + "9" * 400, "1E+14", "10000000000000.01")
NON_FINITE = ("NaN", "nan", "-NaN", "sNaN", "-sNaN", "Infinity", "-Infinity", "inf", "-inf", "INF")
NEGATIVE = ("-1", "-0.00000001", "-45000", "-1e-8")
ZERO = ("0", "-0", "0.0", "0E-8", "0.00000000", "0e5")
OUT_OF_RANGE: list[tuple[str, object]] = [
    *(("huge", v) for v in HUGE),
    *(("huge", raw(v)) for v in HUGE),
    *(("non_finite", v) for v in NON_FINITE),
    *(("negative", v) for v in NEGATIVE),
    *(("negative", raw(v)) for v in NEGATIVE),
    *(("zero", v) for v in ZERO),
    *(("zero", raw(v)) for v in ZERO[:3]),
]
INVALID_TOKENS = (
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "+1",
    "01",
    ".5",
    "1.",
    "0x10",
    "1e",
    "--1",
    "1_000",
    "undefined",
    "'1'",
    "True",
    "None",
)
ODD_STRINGS = (
    "",
    " ",
    "1,000",
    "0x10",
    "½",
    "e1",
    "١٢٣",
    "\x00",
    "BTC/USD\n",
    "BTC/USD ",
    "*",
    ">",
    "copytrade.signals.>",
    "btc/usd",
    "../../etc/passwd",
    "\u202eDSU/CTB",
    "A" * 65,
    "signal",
    "buy",
    "quote",
    "x" * 5000,
)
wrong_values = st.one_of(
    st.sampled_from([v for _, v in OUT_OF_RANGE]),
    st.sampled_from(INVALID_TOKENS).map(raw),
    st.integers(min_value=2**64).map(lambda n: raw(str(n))),
    st.integers(max_value=-(2**63) - 1).map(lambda n: raw(str(n))),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=300),
    json_junk,
)


# ---- hostile payloads by kind ----------------------------------------------------------------------


def from_genuine(
    kind: str, mutate: Callable[[st.DrawFn, TradeSignal], bytes | dict[str, Any]]
) -> st.SearchStrategy[Hostile]:
    """Payloads made by mutating a genuinely signed signal (its JSON document or its bytes)."""

    @st.composite
    def build(draw: st.DrawFn) -> Hostile:
        genuine = draw(genuine_signals())
        made = mutate(draw, genuine)
        return Hostile(kind, made if isinstance(made, bytes) else encode(made), genuine)

    return build()


def _truncated(draw: st.DrawFn, genuine: TradeSignal) -> bytes:
    data = ENCODER.encode(genuine)
    return data[: draw(st.integers(0, len(data) - 1))]


def _byte_flipped(draw: st.DrawFn, genuine: TradeSignal) -> bytes:
    data = bytearray(ENCODER.encode(genuine))
    at = draw(st.integers(0, len(data) - 1))
    data[at] = draw(st.integers(0, 255).filter(lambda b: b != data[at]))
    return bytes(data)


def _trailing_garbage(draw: st.DrawFn, genuine: TradeSignal) -> bytes:
    tail = draw(st.sampled_from((b"x", b"}", b",", b"\x00", b"{}", b"\xff")) | st.binary(min_size=1))
    data = ENCODER.encode(genuine) + tail
    return data if tail.strip() else data + b"!"  # trailing whitespace alone is still valid JSON


def _non_utf8(draw: st.DrawFn, genuine: TradeSignal) -> bytes:
    field = draw(st.sampled_from(("master_id", "symbol", "order_id", "signature")))
    doc = to_doc(genuine)
    token = encode(doc[field])
    return encode(doc).replace(
        token, b'"' + draw(st.sampled_from((b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"))) + b'"', 1
    )


def _deep(draw: st.DrawFn, genuine: TradeSignal) -> bytes:
    depth = draw(st.integers(1_000, 100_000))
    where = draw(st.sampled_from((*MONEY_FIELDS, "zz_unknown")))
    nested = b"[" * depth + b"]" * depth
    data = ENCODER.encode(genuine)
    return data[:-1] + b',"' + where.encode() + b'":' + nested + b"}"


def _wrong_value(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    doc[draw(st.sampled_from(FIELDS))] = draw(wrong_values)
    return doc


def _out_of_range(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    drawn = st.one_of(
        st.sampled_from(OUT_OF_RANGE),
        st.decimals(max_value=Decimal("-0.00000001"), allow_nan=False).map(lambda d: ("negative", str(d))),
        st.integers(min_value=10**13 + 1).map(lambda n: ("huge", raw(str(n)))),
    )
    kind, value = draw(drawn)
    fields = MONEY_FIELDS[:-1] if kind == "zero" else MONEY_FIELDS  # a zero position is valid
    doc[draw(st.sampled_from(fields))] = value
    return doc


def _unknown_field(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    items = list(to_doc(genuine).items())
    name = draw(st.text(min_size=1, max_size=30).filter(lambda n: n not in FIELDS))
    items.insert(draw(st.integers(0, len(items))), (name, draw(json_junk | wrong_values)))
    return dict(items)


WRONG_TAGS = (
    "result",
    "rejected",
    "deadletter",
    "order",
    "skip",
    "size_request",
    "trade",
    "trade_reply",
    "Signal",
    "SIGNAL",
    " signal",
    "signal ",
    "signal\x00",
    "",
)


def _wrong_tag(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    doc["type"] = draw(
        st.sampled_from(WRONG_TAGS)
        | st.text().filter(lambda t: t != "signal")
        | json_junk.filter(lambda v: v != "signal")
    )
    return doc


def _missing_fields(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    for name in draw(st.sets(st.sampled_from(FIELDS), min_size=1)):
        doc.pop(name)
    return doc


def _lying_signal_id(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    """A signal id that is not the one its exchange and order id yield, signed with the master's
    real key: only the schema's own check stands in the way."""
    doc = to_doc(genuine)
    lie = draw(st.sampled_from(("signal_id", "order_id", "exchange")))
    if lie == "signal_id":
        doc["signal_id"] = draw(
            st.from_regex(r"[0-9a-f]{32}", fullmatch=True).filter(lambda s: s != genuine.signal_id)
        )
    else:
        doc[lie] = draw(ids.filter(lambda v: v != doc[lie]))
    doc["signature"] = sign_doc(doc)
    return doc


def _unsigned(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    if draw(st.booleans()):
        doc["signature"] = ""
    else:
        doc.pop("signature")
    return doc


def _other_key(draw: st.DrawFn, genuine: TradeSignal) -> bytes:
    return ENCODER.encode(draw(st.sampled_from(OTHER_SIGNERS)).sign(genuine))


def _random_signature(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    doc["signature"] = base64.b64encode(draw(st.binary(min_size=64, max_size=64))).decode()
    return doc


def _not_base64(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    text = draw(st.text(max_size=190))
    at = draw(st.integers(0, len(text)))
    doc["signature"] = text[:at] + draw(st.sampled_from("!*-_ .\n\u00e9")) + text[at:]
    return doc


TAMPERABLE: dict[str, st.SearchStrategy[Any]] = {
    "master_id": ids,
    "symbol": symbols,
    "side": st.sampled_from(("buy", "sell")),
    "size_type": st.sampled_from(("quote", "base")),
    "executed_at": timestamps,
    **dict.fromkeys(MONEY_FIELDS, money.map(str)),
}


def _tampered(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    """Signed, then one field changed to another valid value: the signature no longer fits."""
    doc = to_doc(genuine)
    field = draw(st.sampled_from(sorted(TAMPERABLE)))
    doc[field] = draw(TAMPERABLE[field].filter(lambda v: v != doc[field]))
    return doc


def _borrowed_signature(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    doc = to_doc(genuine)
    donor = draw(genuine_signals().filter(lambda s: s.signature != genuine.signature))
    doc["signature"] = donor.signature
    return doc


def _signed_other_spelling(draw: st.DrawFn, genuine: TradeSignal) -> dict[str, Any]:
    """The real key signed other bytes than the canonical ones: money as numbers, fields in
    another order, or the signature field left in."""
    doc = to_doc(genuine)
    how = draw(st.sampled_from(("numbers", "reordered", "with_signature")))
    if how == "numbers":
        spelled = {k: raw(v) if k in MONEY_FIELDS else v for k, v in doc.items()} | {"signature": ""}
    elif how == "reordered":
        spelled = dict(reversed(list((doc | {"signature": ""}).items())))
    else:
        spelled = doc
    doc["signature"] = base64.b64encode(MASTER_KEY.sign(encode(spelled)).signature).decode()
    return doc


random_bytes = st.binary(max_size=2_000).map(lambda b: Hostile("random_bytes", b))
random_text = st.text(max_size=500).map(lambda t: Hostile("random_text", t.encode()))
junk_documents = json_junk.map(lambda v: Hostile("junk_document", encode(v)))

MALFORMED = st.one_of(
    from_genuine("truncated", _truncated),
    from_genuine("byte_flipped", _byte_flipped),
    from_genuine("trailing_garbage", _trailing_garbage),
    from_genuine("non_utf8", _non_utf8),
    from_genuine("deep_nesting", _deep),
    random_bytes,
    random_text,
    junk_documents,
)
WRONG_VALUES = st.one_of(
    from_genuine("wrong_value", _wrong_value), from_genuine("out_of_range", _out_of_range)
)
WRONG_SHAPES = st.one_of(
    from_genuine("unknown_field", _unknown_field),
    from_genuine("wrong_tag", _wrong_tag),
    from_genuine("missing_fields", _missing_fields),
    from_genuine("lying_signal_id", _lying_signal_id),
)
BAD_SIGNATURES = st.one_of(
    from_genuine("unsigned", _unsigned),
    from_genuine("other_key", _other_key),
    from_genuine("random_signature", _random_signature),
    from_genuine("not_base64", _not_base64),
    from_genuine("tampered", _tampered),
    from_genuine("borrowed_signature", _borrowed_signature),
    from_genuine("signed_other_spelling", _signed_other_spelling),
)
EVERY_KIND = st.one_of(MALFORMED, WRONG_VALUES, WRONG_SHAPES, BAD_SIGNATURES)

# What each kind must be refused as (default: malformed). A flipped byte may land anywhere and a
# missing field may be the signature. Nothing may raise past the copier's judgement.
EXPECTED: dict[str, set[str]] = {
    "byte_flipped": REFUSALS,
    "non_utf8": {"malformed"},
    "random_bytes": {"malformed"},
    "wrong_value": REFUSALS,
    "missing_fields": {"malformed", "unsigned"},
    "unsigned": {"unsigned"},
    "other_key": {"bad_signature"},
    "random_signature": {"bad_signature"},
    "not_base64": {"bad_signature"},
    "tampered": {"bad_signature"},
    "borrowed_signature": {"bad_signature"},
    "signed_other_spelling": {"bad_signature"},
}


def judged(payloads: st.SearchStrategy[Hostile], examples: int) -> Counter[tuple[str, str]]:
    """Judge `examples` hostile payloads drawn by hypothesis: (kind, verdict) -> how many."""
    verdicts: Counter[tuple[str, str]] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads)
    def judge_each(hostile: Hostile) -> None:
        verdict = judge(hostile)
        if verdict == RESPELLED:
            reject()
        verdicts[hostile.kind, verdict] += 1
        assert verdict != ACCEPTED, f"{hostile.kind} payload accepted: {hostile.data[:400]!r}"

    judge_each()
    return verdicts


def report(verdicts: Counter[tuple[str, str]], figures: Figures, what: str) -> dict[str, int]:
    """Note the tally in the figures; return the verdicts a kind must never get, by kind."""
    by_verdict = Counter[str]()
    for (_, verdict), n in verdicts.items():
        by_verdict[verdict] += n
    figures.note(
        f"in-process {what}: {verdicts.total()} judged, {by_verdict[ACCEPTED]} accepted, "
        f"{sum(by_verdict[r] for r in REFUSALS)} refused with a reason code, "
        f"{by_verdict[DECODER_RAISED]} decoder raised, {by_verdict[VERIFIER_RAISED]} "
        "verifier raised (known bugs)"
    )
    return {f"{k}->{v}": n for (k, v), n in verdicts.items() if v not in EXPECTED.get(k, {"malformed"})}


# ---- in-process: 10,000 payloads ---------------------------------------------------------------------


def test_garbled_and_truncated_bytes_are_refused(figures: Figures) -> None:
    verdicts = judged(MALFORMED, examples=2_500)

    assert report(verdicts, figures, "garbled bytes") == {}
    assert verdicts.total() == 2_500


def test_wrong_types_and_out_of_range_money_are_refused(figures: Figures) -> None:
    verdicts = judged(WRONG_VALUES, examples=3_000)

    assert report(verdicts, figures, "wrong values") == {}
    assert verdicts.total() == 3_000


def test_unknown_fields_wrong_tags_missing_fields_and_lying_ids_are_refused(figures: Figures) -> None:
    verdicts = judged(WRONG_SHAPES, examples=2_000)

    assert report(verdicts, figures, "wrong shapes") == {}
    assert verdicts.total() == 2_000


def test_unsigned_forged_and_tampered_signals_are_refused(figures: Figures) -> None:
    verdicts = judged(BAD_SIGNATURES, examples=2_500)

    assert report(verdicts, figures, "bad signatures") == {}
    assert verdicts.total() == 2_500


# ---- the two ways an exception escapes the copier's judgement (known bugs) --------------------------

WRONG_LENGTH_SIGNATURES = [base64.b64encode(b"\x07" * n).decode() for n in (1, 32, 63, 65, 120)]
INVALID_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80")


def with_invalid_utf8(order_id: str, junk: bytes, field: str = "master_id") -> bytes:
    doc = to_doc(signed_signal(order_id))
    return encode(doc).replace(encode(doc[field]), b'"' + junk + b'"', 1)


@pytest.mark.parametrize("signature", WRONG_LENGTH_SIGNATURES)
def test_signature_of_wrong_length_is_refused_not_raised(signature: str) -> None:
    forged = msgspec.structs.replace(signed_signal("wrong-length"), signature=signature)

    assert VERIFIER.problem(forged) == "bad_signature"


@pytest.mark.parametrize("junk", INVALID_UTF8)
def test_invalid_utf8_in_a_string_is_refused_as_malformed(junk: bytes) -> None:
    with pytest.raises(DECODE_ERRORS):
        DECODER.decode(with_invalid_utf8("bad-utf8", junk))


# ---- end to end: a fixed-seed sample on the real signal subject --------------------------------------


def hostile_sample(size: int) -> list[Hostile]:
    """`size` hostile payloads of every kind, the same ones on every run (a fixed seed). Those
    that once hit exceptions escaping the copier are now refused like the rest."""
    sample: list[Hostile] = []

    @seed(SAMPLE_SEED)
    @settings(
        max_examples=size,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(EVERY_KIND)
    def draw(hostile: Hostile) -> None:
        if judge(hostile) in RAISED | {RESPELLED}:
            reject()
        sample.append(hostile)

    draw()
    return sample


async def _copier_and_followers(system: System, followers: list[str]) -> CopierHandle:
    for follower in followers:
        await system.fund(follower, 1_000)
    return await system.start_copier(chaos_config(followers))


async def _recorded(system: System, subjects: str) -> int:
    info = await system.js.stream_info(bus.RESULTS_STREAM, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def _all_in(system: System, rejects: int, copies: int) -> bool:
    return (await _recorded(system, "copytrade.rejects.>"), await results_recorded(system.js)) == (
        rejects,
        copies,
    )


async def _copied(system: System) -> bool:
    return await results_recorded(system.js) >= 1


async def _sizer_answers(system: System, signal: TradeSignal) -> SizeReply:
    rules = MarketRules(symbol="BTC/USD", amount_step=Decimal("0.00000001"))
    follower = FollowerSnapshot(
        follower_id="probe", equity=Decimal(1_000), cash=Decimal(1_000), position=Decimal(0), rules=rules
    )
    request = SizeRequest(signal=signal, min_notional=Decimal(1), now=time.time(), followers=[follower])
    reply = await system.nc.request(bus.SIZER_SUBJECT, ENCODER.encode(request), timeout=5)
    return msgspec.json.decode(reply.data, type=SizeReply)


async def test_hostile_payloads_on_the_bus_are_recorded_as_rejected_and_trade_nothing(
    system: System,
    figures: Figures,
) -> None:
    started = time.monotonic()
    sample = hostile_sample(600)
    followers = [f"h{i}" for i in range(5)]
    copier = await _copier_and_followers(system, followers)
    genuine = signed_signal("genuine-after-the-storm")

    for hostile in sample:
        await system.js.publish(bus.signal_subject(MASTER), hostile.data)
    await publish_until_stored(system.js, genuine)
    await eventually(lambda: _all_in(system, len(sample), len(followers)), timeout=120)
    rejected = [r for r in await system.audit() if isinstance(r, SignalRejected)]
    results = await system.results(genuine.signal_id)
    held = await paper_orders(system.venue, followers)
    sized = await _sizer_answers(system, genuine)
    count = count_orders(expected_orders([genuine], followers), held)
    figures.add("hostile payloads on the bus, then 1 genuine", len(sample), count, started)

    assert len(sample) == 600
    assert len(rejected) == len(sample)
    assert Counter((r.size, r.excerpt) for r in rejected) == Counter(
        (len(h.data), repr(h.data[:120])[:500]) for h in sample
    )
    assert Counter(r.reason_code for r in rejected) == Counter(judge(h) for h in sample)
    assert {f: r.outcome for f, r in results.items()} == dict.fromkeys(followers, "filled")
    assert held == {f: [client_order_id_for(genuine.signal_id, f)] for f in followers}
    assert (count.lost, count.duplicated, count.unexpected) == (0, 0, 0)
    assert not copier.task.done()
    assert [d.follower_id for d in sized.decisions] == ["probe"]


BUGGY_PAYLOADS: dict[str, tuple[Callable[[], bytes], str]] = {
    "invalid_utf8": (lambda: with_invalid_utf8("bad-utf8-on-bus", b"\xff"), "malformed"),
    "wrong_length_signature": (
        lambda: ENCODER.encode(
            msgspec.structs.replace(
                signed_signal("wrong-length-on-bus"), signature=WRONG_LENGTH_SIGNATURES[0]
            )
        ),
        "bad_signature",
    ),
}


@pytest.mark.parametrize("kind", sorted(BUGGY_PAYLOADS))
async def test_payload_hitting_an_escaping_exception_is_recorded_as_rejected(
    system: System,
    kind: str,
) -> None:
    make, reason = BUGGY_PAYLOADS[kind]
    await _copier_and_followers(system, ["w0"])
    genuine = signed_signal(f"genuine-after-{kind}")

    await system.js.publish(bus.signal_subject(MASTER), make())
    await publish_until_stored(system.js, genuine)
    await eventually(lambda: _copied(system), timeout=15)  # it was judged before the genuine one
    rejected = [r for r in await system.audit() if isinstance(r, SignalRejected)]

    assert [r.reason_code for r in rejected] == [reason]
