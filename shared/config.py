"""Configuration: the followers/master YAML file, service settings from the environment, and
credentials from a secrets directory or the environment. Everything fails loudly, naming the field.
"""

from __future__ import annotations

import base64
import binascii
import gc
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec
import yaml
from msgspec import Meta, Struct
from yaml import events

from shared.errors import ConfigError
from shared.exchange.registry import venue
from shared.messages import AccountId, FollowerState, RiskSpec, SizingSpec, Symbol, check_money
from shared.signing import SignalSigner

ExchangeName = Literal["paper", "kraken", "coinbase", "binance", "okx", "alpaca"]
ENV_PREFIX = "COPYTRADE_"
SIGNING_KEY_NAME = "MASTER_SIGNING_KEY"  # the master's Ed25519 seed, a secret
T = TypeVar("T")


class AccountConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An exchange account: where it is and which credentials name it uses."""

    id: AccountId
    exchange: ExchangeName
    credentials: Annotated[str, Meta(pattern=r"^[A-Z0-9_]+$")] | None = None
    base_url: str | None = None  # endpoint override: sandboxes, proxies, tests
    paper: bool = True  # Alpaca: paper or live account

    @property
    def credentials_name(self) -> str:
        return self.credentials or self.id.upper()


class MasterFilledFirst(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The master's order filled and the follower's linked order has not, `wait_s` later: chase
    (cancel the rest, then an immediate-or-cancel order for it within the slippage guard) or
    cancel (cancel the rest and record it)."""

    wait_s: Annotated[float, Meta(ge=0, le=86_400)] = 30.0
    then: Literal["chase", "cancel"] = "cancel"


class OrdersConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a master's resting orders reach this follower. fills: only fills are copied (market or
    immediate-or-cancel orders); orders: each resting order is mirrored as a linked resting order
    at the follower (same price on its venue's tick), amended and cancelled with it."""

    mode: Literal["fills", "orders"] = "fills"
    stop_loss: bool = True  # mirror stop-loss orders (native at the venue, else a recorded skip)
    take_profit: bool = True  # mirror take-profit orders (likewise)
    master_filled_first: MasterFilledFirst = MasterFilledFirst()
    # the follower's linked order filled and the master cancelled: keep it (the ledger holds it,
    # the master's next exit closes it) or unwind it (sold back, through the policy)
    follower_filled_first: Literal["keep", "unwind"] = "keep"


class SubscriptionConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A follower copies this master, sized like this."""

    master: AccountId
    sizing: SizingSpec | None = None  # None: the follower's own sizing
    # copy_open: on subscribing, buy the master's copied position × the follower's ratio once
    on_subscribe: Literal["none", "copy_open"] = "none"
    # close: when the subscription is removed, sell the copied holding (own coins untouched)
    on_unsubscribe: Literal["keep", "close"] = "keep"
    orders: OrdersConfig = OrdersConfig()  # mode fills (the default): resting orders not mirrored


class FollowerConfig(AccountConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    group: AccountId | None = None  # copier group; defaults to the exchange name
    enabled: bool = True  # false is the same as state: paused
    state: FollowerState = "active"
    sizing: SizingSpec = SizingSpec()
    risk: RiskSpec = RiskSpec()
    symbols: dict[Symbol, Symbol] = {}  # master symbol -> this follower's venue symbol
    # which masters it copies; None: the only master, with the follower's own sizing
    subscriptions: list[SubscriptionConfig] | None = None
    # a master silent past master_silence_s: hold (nothing), close_only, or flatten its holdings
    on_master_silence: Literal["hold", "close_only", "flatten"] = "hold"


class MasterConfig(AccountConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class SignalsConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How copiers judge a signal before executing it."""

    require_signature: bool = True
    public_keys: list[str] = []  # base64 Ed25519 master keys; two during a key rotation
    max_age_s: Annotated[float, Meta(gt=0, le=86_400)] = 60.0  # never execute a copy later than this

    def __post_init__(self) -> None:
        if self.require_signature and not self.public_keys:
            raise ValueError("signals.public_keys is required (or require_signature: false)")
        for i, key in enumerate(self.public_keys):
            if _ed25519_public_key(key) is None:
                raise ValueError(
                    f"public_keys[{i}] is not an Ed25519 public key: "
                    "expected 32 bytes in base64, as `copytrade keys new` prints"
                )


def _ed25519_public_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


class CopytradeConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole config file (the Kubernetes ConfigMap)."""

    version: Literal[1] = 1
    min_notional: Decimal = Decimal("1.00")
    master: MasterConfig | None = None  # one master (today's names), or
    masters: list[MasterConfig] = []  # several, each with <EXCHANGE>_MASTER_<ID>_API_KEY
    signals: SignalsConfig  # required: say which master keys to trust (or opt out explicitly)
    followers: list[FollowerConfig] = []
    master_silence_s: Annotated[float, Meta(gt=0)] = 300.0  # a master unseen this long is silent

    def __post_init__(self) -> None:
        check_money("min_notional", self.min_notional)
        if (self.master is None) == (not self.masters):
            raise ValueError("give either `master` (one) or `masters` (a list), not both or neither")
        if self.master is not None:
            msgspec.structs.force_setattr(self, "masters", [self.master])
        elif len(self.masters) == 1:
            msgspec.structs.force_setattr(self, "master", self.masters[0])
        repeated = sorted(i for i, n in Counter(m.id for m in self.masters).items() if n > 1)
        if repeated:
            raise ValueError(f"master ids must be unique, repeated: {', '.join(repeated)}")
        duplicates = sorted(i for i, n in Counter(f.id for f in self.followers).items() if n > 1)
        if duplicates:
            raise ValueError(f"follower ids must be unique, repeated: {', '.join(duplicates)}")
        for i, follower in enumerate(self.followers):
            self._check_follower(i, follower)

    def _check_follower(self, i: int, follower: FollowerConfig) -> None:
        masters = {m.id for m in self.masters}
        if follower.id in masters:
            raise ValueError(f"followers[{i}].id `{follower.id}` is a master's id")
        if follower.subscriptions is None and len(masters) > 1:
            raise ValueError(
                f"followers[{i}].subscriptions: required with several masters "
                f"(say which of {', '.join(sorted(masters))} {follower.id} copies)"
            )
        subscribed = [s.master for s in follower.subscriptions or ()]
        for j, master in enumerate(subscribed):
            if master not in masters:
                raise ValueError(
                    f"followers[{i}].subscriptions[{j}].master `{master}` is not a "
                    f"configured master ({', '.join(sorted(masters))})"
                )
        if len(set(subscribed)) != len(subscribed):
            raise ValueError(f"followers[{i}].subscriptions: a master is listed twice")
        for where, sizing in [
            ("sizing", follower.sizing),
            *(
                (f"subscriptions[{j}].sizing", s.sizing)
                for j, s in enumerate(follower.subscriptions or ())
                if s.sizing is not None
            ),
        ]:
            cap = sizing.max_order_notional
            if cap is not None and cap < self.min_notional:
                raise ValueError(
                    f"followers[{i}].{where}.max_order_notional {cap} is below "
                    f"min_notional {self.min_notional}: every order of "
                    f"{follower.id} would be skipped"
                )

    @property
    def single_master(self) -> bool:
        """One master: its credentials keep the original guide's names."""
        return len(self.masters) == 1

    def master_named(self, master_id: str | None) -> MasterConfig:
        """The master called `master_id`; None: the only master (an error with several)."""
        if master_id is None:
            if self.master is None:
                raise ConfigError(
                    "several masters are configured: name one (COPYTRADE_MASTER, "
                    f"--master): {', '.join(m.id for m in self.masters)}"
                )
            return self.master
        for master in self.masters:
            if master.id == master_id:
                return master
        raise ConfigError(f"no master `{master_id}`: configured are {', '.join(m.id for m in self.masters)}")

    def subscriptions_of(self, follower: FollowerConfig) -> list[SubscriptionConfig]:
        """Whom the follower copies: its subscriptions, else the only master."""
        if follower.subscriptions is not None:
            return follower.subscriptions
        return [SubscriptionConfig(master=self.masters[0].id)]

    def followers_of(self, group: str) -> list[FollowerConfig]:
        return [f for f in self.followers if (f.group or f.exchange) == group]


# ---- YAML: safe, a repeated key refused, fast on 200,000 followers ---------------------------

# libyaml's parser when installed: the pure-Python one is several times slower
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null", "timestamp")}
_NO_KEY: Any = object()
_OPENING = (events.MappingStartEvent, events.SequenceStartEvent)
_CLOSING = (events.MappingEndEvent, events.SequenceEndEvent)
_NODES = (events.ScalarEvent, *_OPENING)  # the events that may carry an anchor or a tag


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice: plain YAML would keep the last value without a word."""


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc]
    """Safe YAML loading that refuses a key given twice in one mapping, naming it and its lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = first.setdefault((key.tag, key.value), key.start_mark.line + 1)
                if line != key.start_mark.line + 1:
                    raise DuplicateKeyError(
                        f"duplicate key `{key.value}` at line "
                        f"{key.start_mark.line + 1} (first at line {line})"
                    )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


class _Fallback(Exception):
    """The document is more than plain data: leave it to the full loader."""


class _PlainDataLoader(_SafeLoader):  # type: ignore[misc]
    """Builds plain data straight from the parser's events, with the safe loader's own resolver
    and constructors: no node tree, several times faster than safe_load on a large file.
    Anchors, aliases, tags, merge keys, complex or repeated keys, several documents: _Fallback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._plain: dict[str, object] = {}  # plain scalar text -> its value (keys repeat a lot)

    def document(self) -> Any:  # noqa: C901, PLR0912 - one inlined loop per YAML event: measured faster
        """The single document's data. One loop, no calls: it runs once per YAML event."""
        get = self.get_event
        get()  # stream start
        if type(get()) is events.StreamEndEvent:
            return None
        stack: list[list[Any]] = []  # per open collection: [container, key awaiting its value]
        root, plain = None, self._plain
        while (kind := type(event := get())) is not events.DocumentEndEvent:
            if kind in _NODES and (event.anchor is not None or event.tag is not None):
                raise _Fallback
            if kind is events.ScalarEvent:
                value = event.value  # quoted: a string; plain: resolved like safe_load does
                if event.implicit[0]:
                    value = plain[value] if value in plain else self._resolve_plain(value)
            elif kind in _OPENING:
                stack.append([{} if kind is events.MappingStartEvent else [], _NO_KEY])
                continue
            elif kind in _CLOSING:
                value = stack.pop()[0]
            else:
                raise _Fallback  # an alias
            if not stack:
                root = value
                continue
            frame = stack[-1]
            if type(frame[0]) is list:
                frame[0].append(value)
            elif frame[1] is not _NO_KEY:
                frame[0][frame[1]] = value
                frame[1] = _NO_KEY
            elif type(value) in (dict, list) or value in frame[0]:  # complex or repeated key
                raise _Fallback
            else:
                frame[1] = value
        if type(get()) is not events.StreamEndEvent:
            raise _Fallback
        return root

    def _resolve_plain(self, text: str) -> object:
        tag = self.resolve(yaml.ScalarNode, text, (True, False))
        if tag != _STR and tag not in _PLAIN_TAGS:
            raise _Fallback  # e.g. a merge key
        value = text if tag == _STR else self.yaml_constructors[tag](self, yaml.ScalarNode(tag, text))
        self._plain[text] = value
        return value


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing a large file makes millions of acyclic objects: the cycle collector would scan
    them again and again (3x the parse time at 200,000 followers)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_yaml(text: str) -> Any:
    """yaml.safe_load's result, but a key repeated in a mapping is a DuplicateKeyError; plain
    data (no anchors or tags) is built from the parser's events, several times faster."""
    loader = _PlainDataLoader(text)
    try:
        return loader.document()
    except _Fallback:
        pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=_UniqueKeyLoader)


_EXPECTED = "expected a mapping with master, signals and followers"
# msgspec names a pattern by its regex; say what it means instead
_PATTERN_NAMES = {
    f"`str` matching regex '{get_args(Symbol)[1].pattern}'": "a symbol like BTC/USD (BASE/QUOTE, upper case)",
    f"`str` matching regex '{get_args(AccountId)[1].pattern}'": "an id of 1-64 letters, digits, _ or -",
}


def _readable(error: msgspec.ValidationError) -> str:
    text = str(error)
    for pattern, meaning in _PATTERN_NAMES.items():
        text = text.replace(pattern, meaning)
    return text


def _utf8(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None


def parse_config(text: str | bytes, source: str = "config") -> CopytradeConfig:
    """Parse and validate config YAML; raise ConfigError naming the file and field."""
    try:
        with _gc_paused():
            data = load_yaml(_utf8(text, source) if isinstance(text, bytes) else text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty: {_EXPECTED}")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {_EXPECTED}, got {type(data).__name__} {str(data)[:40]!r}")
    try:
        with _gc_paused():
            return msgspec.convert(data, CopytradeConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(exc)}") from None


def load_config(path: str | Path) -> CopytradeConfig:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(raw, str(path))


# ---- service settings from the environment ---------------------------------------------------


class CommonSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every process reads from COPYTRADE_* environment variables (a typo is an error):
    NATS, health port, the mounted config and secrets. Each service adds its own below."""

    nats_url: str = "nats://127.0.0.1:4222"  # one URL or a comma-separated list (a cluster)
    nats_user: str | None = None
    nats_password: str | None = None
    nats_password_dir: str | None = None  # a file named like the user holds its password
    nats_tls_ca: str | None = None  # CA bundle: connect with TLS and verify the server
    nats_tls_cert: str | None = None  # client certificate and key, for mutual TLS
    nats_tls_key: str | None = None
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 9100
    config: str = "/etc/copytrade/config/copytrade.yaml"
    secrets_dir: str = "/etc/copytrade/secrets"
    instance: str = ""  # replica name in claims and logs; defaults to the host name
    log_level: str = "INFO"
    stream_replicas: Annotated[int, Meta(ge=1, le=5)] = 1  # JetStream replicas (3 in a NATS cluster)


class PaperSettings(CommonSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The paper exchange service (and a copier that embeds it)."""

    paper_latency_ms: Annotated[float, Meta(ge=0)] = 0.0  # paper exchange: simulated latency
    paper_seed_cash: Decimal | None = None  # paper exchange: open unknown accounts with this cash


class SizerSettings(CommonSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The sizer needs nothing beyond the common settings."""


class MasterSettings(CommonSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    master: str = ""  # which of the configured masters this process serves ("": the only one)
    order_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    fill_watch_interval_s: Annotated[float, Meta(gt=0)] = 2.0  # polling for outside fills
    # a fill taken from the venue's private stream is signed with the master's equity and base
    # held as read at most this long ago (read again in the background at half of it; older,
    # the fill is read by REST first: services.master.streamed)
    master_figures_max_age_s: Annotated[float, Meta(gt=0)] = 60.0


class CopierSettings(PaperSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    group: str = "paper"  # the follower group served
    paper_venue: Literal["nats", "embedded"] = "nats"
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 256
    ack_wait_s: Annotated[float, Meta(gt=0)] = 30.0
    max_deliver: Annotated[int, Meta(ge=1)] = 10
    order_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    # followers' figures (equity, cash, positions) are kept from their own fills and refreshed in
    # the background every figures_refresh_s (0: never); figures older than snapshot_ttl_s are
    # read again before sizing, on the copy path (never sized on stale data silently)
    snapshot_ttl_s: Annotated[float, Meta(ge=0)] = 120.0
    figures_refresh_s: Annotated[float, Meta(ge=0)] = 30.0
    reload_interval_s: Annotated[float, Meta(gt=0)] = 1.0  # how often mounted config/secrets are checked
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 20.0  # SIGTERM: time to finish the signal in hand
    exchange_rate_limit: bool = True  # ccxt's per-account leaky bucket; off only for emulators
    reconcile_interval_s: Annotated[float, Meta(ge=0)] = 60.0  # 0: no reconciliation
    reconcile_threshold: Decimal = Decimal("0.10")  # drift ratio that is reported (and alerted)
    reconcile_heal: bool = False  # place correcting orders for drift (off by default)
    # scale-out: a group with more followers than this spreads each signal over its replicas
    spread_threshold: Annotated[int, Meta(ge=0)] = 200
    shards: Annotated[int, Meta(ge=1, le=4096)] = 32  # work shards per group: same on every replica
    replica_heartbeat_s: Annotated[float, Meta(gt=0)] = 1.0  # a replica silent 3x this is gone


class OperatorSettings(CopierSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The CLI: it runs in an operator's shell or inside any service's pod, so it knows every
    service's variables (and `config check` measures the config against the copier's)."""

    master: str = ""
    fill_watch_interval_s: Annotated[float, Meta(gt=0)] = 2.0
    master_figures_max_age_s: Annotated[float, Meta(gt=0)] = 60.0


S = TypeVar("S", bound=CommonSettings)


def load_settings(kind: type[S], env: Mapping[str, str] | None = None, **overrides: object) -> S:
    """A process's settings from its COPYTRADE_* variables: strict about names (a variable this
    process does not know is an error), lenient only in reading text as numbers and booleans,
    which is what an environment holds."""
    source = os.environ if env is None else env
    values: dict[str, object] = {
        k[len(ENV_PREFIX) :].lower(): v for k, v in source.items() if k.startswith(ENV_PREFIX)
    }
    values.update(overrides)
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"environment ({ENV_PREFIX}*): {exc}") from None


def config_warnings(config: CopytradeConfig, settings: CopierSettings) -> list[str]:
    """What loads but will not behave as meant: a signal-age limit shorter than the copier's ack
    wait, so that a signal redelivered after a failed attempt is always too old to copy."""
    wait = settings.ack_wait_s
    because = (
        f"is shorter than the copier's ack wait ({ENV_PREFIX}ACK_WAIT_S={wait:g}s): "
        "a redelivered signal would always be too old"
    )
    limits = [("signals.max_age_s", config.signals.max_age_s)]
    limits += [
        (f"followers[{i}].risk.max_signal_age_s ({f.id})", f.risk.max_signal_age_s)
        for i, f in enumerate(config.followers)
        if f.risk.max_signal_age_s is not None
    ]
    return [f"{name} {age:g}s {because}" for name, age in limits if age is not None and age < wait]


# ---- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """API credentials; repr never shows a value."""

    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)

    def values(self) -> tuple[str, ...]:
        return tuple(v for v in (self.api_key, self.secret, self.passphrase) if v)


def _env_names(
    account: AccountConfig, role: Literal["USER", "MASTER"], plain_names: bool = True
) -> dict[str, list[str]]:
    """Where each credential may be found, first match wins (the original guide's names). A
    follower's and one of several masters' names carry the account's name
    (`KRAKEN_USER_TANIA_API_KEY`, `KRAKEN_MASTER_ALPHA_API_KEY`); the only master's do not."""
    stem = f"{account.exchange.upper()}_{role}"
    stem = f"{stem}_{account.credentials_name}" if role == "USER" or not plain_names else stem
    names = {
        part: [f"{stem}_{suffix}"]
        for part, suffix in (("api_key", "API_KEY"), ("secret", "API_SECRET"), ("passphrase", "PASSPHRASE"))
    }
    if role == "MASTER" and plain_names:  # the guide's plain master names, e.g. COINBASE_API_KEY
        for part, suffix in (("api_key", "API_KEY"), ("secret", "API_SECRET")):
            names[part].append(f"{account.exchange.upper()}_{suffix}")
    return names


class SecretSource:
    """Reads secret values from a directory of files (Kubernetes Secret mount), then the env."""

    def __init__(self, secrets_dir: str | Path | None, env: Mapping[str, str] | None = None):
        self._dir = Path(secrets_dir) if secrets_dir else None
        self._env = os.environ if env is None else env
        self._listing: frozenset[str] | None = None  # listed(): the only files worth opening

    def get(self, name: str) -> str | None:
        if self._dir is not None and (self._listing is None or name in self._listing):
            try:
                with open(os.path.join(self._dir, name)) as file:
                    return file.read().strip() or None
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass
        return self._env.get(name) or None

    def listed(self) -> SecretSource:
        """This source with its directory listed once, so that checking many accounts opens only
        files that exist. A snapshot: files added later are not seen."""
        snapshot = SecretSource(self._dir, self._env)
        is_dir = self._dir is not None and self._dir.is_dir()
        snapshot._listing = frozenset(os.listdir(self._dir) if is_dir else ())
        return snapshot

    def names(self) -> set[str]:
        found = {k for k in self._env if "_API_KEY" in k}
        if self._dir is not None and self._dir.is_dir():
            found |= {p.name for p in self._dir.iterdir() if "_API_KEY" in p.name}
        return found

    def credentials(
        self, account: AccountConfig, role: Literal["USER", "MASTER"], *, plain_names: bool = True
    ) -> Credentials | None:
        """The account's credentials; None for a venue without keys (paper); ConfigError when
        incomplete. plain_names: the only master's names (see `_env_names`)."""
        if not venue(account.exchange).needs_credentials:
            return None
        names = _env_names(account, role, plain_names)
        found = {
            part: next((v for n in candidates if (v := self.get(n))), None)
            for part, candidates in names.items()
        }
        missing = [names[p][0] for p in ("api_key", "secret") if not found[p]]
        if missing:
            raise ConfigError(f"{role.lower()} {account.id}: missing credentials {', '.join(missing)}")
        return Credentials(found["api_key"] or "", found["secret"] or "", found["passphrase"])

    def alpaca_paper(self, account: AccountConfig) -> bool:
        """ALPACA_USER_<NAME>_PAPER overrides the config flag when set."""
        value = self.get(f"ALPACA_USER_{account.credentials_name}_PAPER")
        return account.paper if value is None else value.strip().lower() in {"1", "true", "yes"}


def check_credentials(config: CopytradeConfig, secrets: SecretSource) -> list[str]:
    """Problems between config and credentials, for `config check`: accounts without keys, a
    signing key the copiers would not trust, and keys without accounts (orphan_credentials)."""
    secrets = secrets.listed()
    problems: list[str] = []
    accounts = [*((m, "MASTER") for m in config.masters), *((f, "USER") for f in config.followers)]
    for account, role in accounts:
        try:
            secrets.credentials(account, role, plain_names=config.single_master)  # type: ignore[arg-type]
        except ConfigError as exc:
            problems.append(str(exc))
    signing = signing_key_problem(config, secrets)
    return [*problems, *([signing] if signing else []), *orphan_credentials(config, secrets)]


def signing_key_problem(config: CopytradeConfig, secrets: SecretSource) -> str | None:
    """Why the master's signing key (when set) would sign signals no copier accepts, or None."""
    seed = secrets.get(SIGNING_KEY_NAME)
    if seed is None or not config.signals.public_keys:
        return None
    try:
        public = SignalSigner(seed).public_key_b64
    except ConfigError as exc:
        return f"{SIGNING_KEY_NAME}: {exc}"
    if base64.b64decode(public) in {_ed25519_public_key(k) for k in config.signals.public_keys}:
        return None
    return (
        f"{SIGNING_KEY_NAME} matches no key in signals.public_keys (its public key is {public}):"
        " copiers would reject every signal"
    )


_USER_KEY = re.compile(rf"^({'|'.join(e.upper() for e in get_args(ExchangeName))})_USER_(.+)_API_KEY$")


def orphan_credentials(config: CopytradeConfig, secrets: SecretSource) -> list[str]:
    """Warnings: follower API keys (`<EXCHANGE>_USER_<NAME>_API_KEY`) that no follower uses,
    e.g. a follower removed from the config, or a misspelled `credentials` name."""
    known = {(f.exchange.upper(), f.credentials_name) for f in config.followers}
    return [
        f"credentials {name} set but no follower in config uses them (no "
        f"{m[1].lower()} follower with id or credentials {m[2]})"
        for name in sorted(secrets.names())
        if (m := _USER_KEY.match(name)) and (m[1], m[2]) not in known
    ]
