"""Configuration: the followers/master YAML file, service settings from the environment, and
credentials from a secrets directory or the environment. Everything fails loudly, naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec
import yaml
from msgspec import Meta, Struct

from shared.errors import ConfigError
from shared.messages import AccountId, FollowerState, RiskSpec, SizingSpec, Symbol, check_money

ExchangeName = Literal["paper", "kraken", "coinbase", "binance", "okx", "alpaca"]
ENV_PREFIX = "COPYTRADE_"
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


class FollowerConfig(AccountConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    group: AccountId | None = None  # copier group; defaults to the exchange name
    enabled: bool = True  # false is the same as state: paused
    state: FollowerState = "active"
    sizing: SizingSpec = SizingSpec()
    risk: RiskSpec = RiskSpec()
    symbols: dict[Symbol, Symbol] = {}  # master symbol -> this follower's venue symbol


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


class CopytradeConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole config file (the Kubernetes ConfigMap)."""

    version: Literal[1] = 1
    min_notional: Decimal = Decimal("1.00")
    master: MasterConfig
    signals: SignalsConfig  # required: say which master keys to trust (or opt out explicitly)
    followers: list[FollowerConfig] = []

    def __post_init__(self) -> None:
        check_money("min_notional", self.min_notional)
        ids = [f.id for f in self.followers]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"follower ids must be unique, repeated: {', '.join(duplicates)}")

    def followers_of(self, group: str) -> list[FollowerConfig]:
        return [f for f in self.followers if (f.group or f.exchange) == group]


def parse_config(text: str, source: str = "config") -> CopytradeConfig:
    """Parse and validate config YAML; raise ConfigError naming the file and field."""
    try:
        data = yaml.safe_load(text)
        return msgspec.convert(data, CopytradeConfig, strict=True)
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> CopytradeConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, str(path))


# ---- service settings from the environment ---------------------------------------------------


class Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Process settings, from COPYTRADE_* environment variables (a typo is an error)."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_password_dir: str | None = None  # a file named like the user holds its password
    nats_tls_ca: str | None = None  # CA bundle: connect with TLS and verify the server
    nats_tls_cert: str | None = None  # client certificate and key, for mutual TLS
    nats_tls_key: str | None = None
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 9100
    config: str = "/etc/copytrade/config/copytrade.yaml"
    secrets_dir: str = "/etc/copytrade/secrets"
    group: str = "paper"  # copier: the follower exchange group served
    instance: str = ""  # replica name in claims and logs; defaults to the host name
    paper_venue: Literal["nats", "embedded"] = "nats"
    paper_latency_ms: Annotated[float, Meta(ge=0)] = 0.0  # paper exchange: simulated latency
    paper_seed_cash: Decimal | None = None  # paper exchange: open unknown accounts with this cash
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 256
    ack_wait_s: Annotated[float, Meta(gt=0)] = 30.0
    max_deliver: Annotated[int, Meta(ge=1)] = 10
    order_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    snapshot_ttl_s: Annotated[float, Meta(ge=0)] = 5.0
    log_level: str = "INFO"
    stream_replicas: Annotated[int, Meta(ge=1, le=5)] = 1  # JetStream replicas (3 in a NATS cluster)
    reload_interval_s: Annotated[float, Meta(gt=0)] = 1.0  # how often mounted config/secrets are checked
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 20.0  # SIGTERM: time to finish the signal in hand
    fill_watch_interval_s: Annotated[float, Meta(gt=0)] = 2.0  # master: polling for outside fills
    exchange_rate_limit: bool = True  # ccxt's per-account leaky bucket; off only for emulators
    reconcile_interval_s: Annotated[float, Meta(ge=0)] = 60.0  # 0: no reconciliation
    reconcile_threshold: Decimal = Decimal("0.10")  # drift ratio that is reported (and alerted)
    reconcile_heal: bool = False  # place correcting orders for drift (off by default)
    # scale-out: a group with more followers than this spreads each signal over its replicas
    spread_threshold: Annotated[int, Meta(ge=0)] = 200
    shards: Annotated[int, Meta(ge=1, le=4096)] = 32  # work shards per group: same on every replica
    replica_heartbeat_s: Annotated[float, Meta(gt=0)] = 1.0  # a replica silent 3x this is gone


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    source = os.environ if env is None else env
    values: dict[str, object] = {
        k[len(ENV_PREFIX):].lower(): v for k, v in source.items() if k.startswith(ENV_PREFIX)
    }
    values.update(overrides)
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"environment ({ENV_PREFIX}*): {exc}") from None


# ---- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """API credentials; repr never shows a value."""

    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)

    def values(self) -> tuple[str, ...]:
        return tuple(v for v in (self.api_key, self.secret, self.passphrase) if v)


def _env_names(account: AccountConfig, role: Literal["USER", "MASTER"]) -> dict[str, list[str]]:
    """Where each credential may be found, first match wins (the original guide's names)."""
    stem = f"{account.exchange.upper()}_{role}"
    stem = f"{stem}_{account.credentials_name}" if role == "USER" else stem
    names = {part: [f"{stem}_{suffix}"] for part, suffix in
             (("api_key", "API_KEY"), ("secret", "API_SECRET"), ("passphrase", "PASSPHRASE"))}
    if role == "MASTER":  # the guide's plain master names, e.g. COINBASE_API_KEY
        for part, suffix in (("api_key", "API_KEY"), ("secret", "API_SECRET")):
            names[part].append(f"{account.exchange.upper()}_{suffix}")
    return names


class SecretSource:
    """Reads secret values from a directory of files (Kubernetes Secret mount), then the env."""

    def __init__(self, secrets_dir: str | Path | None, env: Mapping[str, str] | None = None):
        self._dir = Path(secrets_dir) if secrets_dir else None
        self._env = os.environ if env is None else env

    def get(self, name: str) -> str | None:
        if self._dir is not None:
            path = self._dir / name
            if path.is_file():
                return path.read_text().strip() or None
        return self._env.get(name) or None

    def names(self) -> set[str]:
        found = {k for k in self._env if "_API_KEY" in k}
        if self._dir is not None and self._dir.is_dir():
            found |= {p.name for p in self._dir.iterdir() if "_API_KEY" in p.name}
        return found

    def credentials(
        self, account: AccountConfig, role: Literal["USER", "MASTER"]
    ) -> Credentials | None:
        """The account's credentials; None for paper; ConfigError when incomplete."""
        if account.exchange == "paper":
            return None
        found = {part: next((v for n in names if (v := self.get(n))), None)
                 for part, names in _env_names(account, role).items()}
        missing = [_env_names(account, role)[p][0] for p in ("api_key", "secret") if not found[p]]
        if missing:
            raise ConfigError(f"{role.lower()} {account.id}: missing credentials {', '.join(missing)}")
        return Credentials(found["api_key"] or "", found["secret"] or "", found["passphrase"])

    def alpaca_paper(self, account: AccountConfig) -> bool:
        """ALPACA_USER_<NAME>_PAPER overrides the config flag when set."""
        value = self.get(f"ALPACA_USER_{account.credentials_name}_PAPER")
        return account.paper if value is None else value.strip().lower() in {"1", "true", "yes"}


def check_credentials(config: CopytradeConfig, secrets: SecretSource) -> list[str]:
    """Problems between config and credentials: entries without keys, keys without entries."""
    problems: list[str] = []
    for account, role in [(config.master, "MASTER"), *((f, "USER") for f in config.followers)]:
        try:
            secrets.credentials(account, role)  # type: ignore[arg-type]
        except ConfigError as exc:
            problems.append(str(exc))
    known = {f"{f.exchange.upper()}_USER_{f.credentials_name}_API_KEY" for f in config.followers}
    for name in sorted(secrets.names()):
        if "_USER_" in name and name not in known:
            problems.append(f"credentials {name} set but no follower in config uses them")
    return problems
