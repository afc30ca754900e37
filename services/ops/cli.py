"""copytrade: copy trading over NATS JetStream. Runs the services and the operator tools.

Every operator command reads its NATS connection from the environment (below), like the
services; commands about followers also read the config file. `copytrade COMMAND --help` lists
a command's arguments and the environment it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import textwrap
import uuid
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import msgspec
import nats

from services.master.requests import OrderCall, endpoint_of, order_subject
from services.ops import control, orders, positions, status, subscriptions
from services.ops.errors import FAILED, OK, UNKNOWN, USAGE, CliError, describe, one_line
from services.ops.trade import master_trade
from shared import bus
from shared.config import (
    ENV_PREFIX,
    CopytradeConfig,
    OperatorSettings,
    SecretSource,
    check_credentials,
    config_warnings,
    load_config,
    load_settings,
)
from shared.errors import ConfigError
from shared.messages import Symbol, TradeRequest, check_money
from shared.signing import new_signing_key

SERVICES = ("master", "copier", "sizer", "paper-exchange")
NATS_ENV = (
    "nats_url",
    "nats_user",
    "nats_password",
    "nats_password_dir",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
)
ENV_HELP = {  # OperatorSettings field -> what it is (its variable is COPYTRADE_<FIELD>)
    "nats_url": "NATS server URL, or a comma-separated list",
    "nats_user": "NATS user",
    "nats_password": "its password",
    "nats_password_dir": "or: a directory with a file named like the user holding its password",
    "nats_tls_ca": "CA bundle: connect with TLS and verify the server",
    "nats_tls_cert": "client certificate, for mutual TLS",
    "nats_tls_key": "its private key",
    "config": "the config file, unless --config is given",
    "secrets_dir": "credentials, one file per value",
}
EXIT_STATUS = textwrap.fill(
    f"exit status: {OK} filled; {FAILED} refused, nothing placed; {USAGE} bad arguments, config, "
    f"environment, or NATS unreachable; {UNKNOWN} outcome unknown: run the same command with the "
    "printed --request-id, which returns the first outcome and never places a second order",
    88,
)


# ---- argument types: a bad value is one line, never a traceback -----------------------------


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
        check_money("amount", value)
    except (InvalidOperation, ValueError):
        raise argparse.ArgumentTypeError(f"must be a positive number (in range), got {text!r}") from None
    return value


REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # as TradeRequest.request_id


def _symbol(text: str) -> str:
    try:
        return msgspec.convert(text, Symbol)
    except msgspec.ValidationError:
        raise argparse.ArgumentTypeError(
            f"must be the master's symbol, BASE/QUOTE in capitals like BTC/USD, got {text!r}"
        ) from None


def _request_id(text: str) -> str:
    if not REQUEST_ID.match(text):
        raise argparse.ArgumentTypeError(f"must be 8 to 64 of A-Z a-z 0-9 _ -, got {text!r}")
    return text


def _limit(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 10000, got {text!r}")
    return int(text)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def environment(*fields: str, more: str = "") -> str:
    """An epilog naming the COPYTRADE_* variables a command reads, with their defaults."""
    defaults = OperatorSettings()
    width = max(len(ENV_PREFIX + name) for name in fields) + 2
    lines = ["environment:"]
    for name in fields:
        default = getattr(defaults, name)
        shown = f" (default {default})" if default else ""
        lines.append(f"  {(ENV_PREFIX + name.upper()):<{width}}{ENV_HELP[name]}{shown}")
    return "\n".join([*lines, *([more] if more else [])])


# ---- commands --------------------------------------------------------------------------------


def _settings_and_config(args: argparse.Namespace) -> tuple[OperatorSettings, CopytradeConfig]:
    settings = load_settings(OperatorSettings)
    path = args.config or settings.config
    try:
        return settings, load_config(path)
    except ConfigError as exc:
        raise CliError(f"{exc} (set {ENV_PREFIX}CONFIG or --config)") from None


def _who() -> str:
    return os.environ.get("USER", "operator")


async def _state(args: argparse.Namespace) -> str:
    settings, config = _settings_and_config(args)
    control.check_follower(config, args.follower)
    return await control.change_state(settings, args.command, args.follower, _who())


async def _kill(args: argparse.Namespace) -> str:
    return await control.kill(load_settings(OperatorSettings), args.switch == "on")


async def _status(args: argparse.Namespace) -> str:
    return await status.status(*_settings_and_config(args))


async def _history(args: argparse.Namespace) -> str:
    settings, config = _settings_and_config(args)
    control.check_follower(config, args.follower)
    return status.format_history(await status.history(settings, args.follower, args.limit))


async def _positions(args: argparse.Namespace) -> str:
    settings, config = _settings_and_config(args)
    shown: frozenset[str] | None = None  # the masters whose copied positions are listed
    if args.follower is not None:
        control.check_follower(config, args.follower)
        follower = next(f for f in config.followers if f.id == args.follower)
        shown = frozenset(s.master for s in config.subscriptions_of(follower))
    if args.master is not None:
        control.check_master(config, args.master)
        shown = frozenset([args.master])
    found = await positions.positions(settings, positions.Scope(args.follower, args.master, shown))
    return positions.as_json(found) if args.json else positions.as_table(found)


async def _unsubscribe(args: argparse.Namespace) -> str:
    settings, config = _settings_and_config(args)
    return await subscriptions.unsubscribe(
        settings, config, args.follower, args.master, action=args.action, who=_who()
    )


async def _subscribe(args: argparse.Namespace) -> str:
    settings, config = _settings_and_config(args)
    return await subscriptions.resubscribe(settings, config, args.follower, args.master)


async def _adopt(args: argparse.Namespace) -> str:
    settings, config = _settings_and_config(args)
    return await subscriptions.adopt(
        settings,
        config,
        args.follower,
        args.master,
        args.symbol,
        amount=args.amount,
        request_id=args.request_id or uuid.uuid4().hex,
    )


def _printing(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, str]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(asyncio.run(command(args)))
        return OK

    return run


TRADE_OPTIONS = {  # a TradeRequest field -> its option, and what it must be
    "symbol": "--symbol must be BASE/QUOTE in capitals, like BTC/USD",
    "request_id": "--request-id must be 8 to 64 of A-Z a-z 0-9 _ -",
    "master_id": "--master must be an account id (A-Z a-z 0-9 _ -)",
}


def _trade_request(args: argparse.Namespace) -> TradeRequest:
    size_type = "quote" if args.quote is not None else "base"
    data = {
        "symbol": args.symbol,
        "side": args.side,
        "size_type": size_type,
        "size": args.quote if args.quote is not None else args.base,
        "request_id": args.request_id or uuid.uuid4().hex,
        "master_id": args.master,
    }
    try:
        return msgspec.convert(data, TradeRequest)
    except msgspec.ValidationError as exc:
        found = re.search(r"\$\.(\w+)", str(exc))
        field = found.group(1) if found else ""
        if field in TRADE_OPTIONS:
            raise CliError(f"{TRADE_OPTIONS[field]}, got {data[field]!r}") from None
        raise CliError(f"invalid trade: {exc}") from None


def _subject_master(args: argparse.Namespace) -> str | None:
    """Whose endpoints to ask: None for the only master; --master must name a configured one."""
    if args.master is None:
        return None
    _, config = _settings_and_config(args)
    try:
        master = config.master_named(args.master)
    except ConfigError as exc:
        raise CliError(one_line(str(exc))) from None
    return None if config.single_master else master.id


def _trade(args: argparse.Namespace) -> int:
    request = _trade_request(args)
    settings = load_settings(OperatorSettings)
    subject = bus.master_trade_subject(_subject_master(args))
    return asyncio.run(master_trade(settings, request, float(args.timeout), subject))


def _order_command(build: Callable[[argparse.Namespace], OrderCall]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        call = build(args)
        settings = load_settings(OperatorSettings)
        subject = order_subject(_subject_master(args), endpoint_of(call))
        return asyncio.run(orders.send(settings, call, float(args.timeout), subject))

    return run


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"invalid: {one_line(str(exc))}", file=sys.stderr)
        return FAILED
    problems = check_credentials(config, SecretSource(args.secrets_dir))
    try:  # the services' settings: what the config's limits are measured against
        warnings = config_warnings(config, load_settings(OperatorSettings))
    except ConfigError as exc:
        problems, warnings = [*problems, one_line(str(exc))], []
    for problem in problems:
        print(f"invalid: {problem}", file=sys.stderr)
    for warning in warnings:  # loads and runs, but not as meant: the exit status stays
        print(f"warning: {warning}", file=sys.stderr)
    if not problems:
        masters = ", ".join(f"{m.id} on {m.exchange}" for m in config.masters)
        print(f"ok: master {masters}, {len(config.followers)} followers")
    return FAILED if problems else OK


def _keys_new(_: argparse.Namespace) -> int:
    seed, public = new_signing_key()
    print(f"MASTER_SIGNING_KEY (secret, master only): {seed}\nsignals.public_keys entry: {public}")
    return OK


def _run_service(name: str) -> int:
    from services.copier.__main__ import main as copier
    from services.master.__main__ import main as master
    from services.paper.__main__ import main as paper
    from services.sizer.__main__ import main as sizer

    {"master": master, "copier": copier, "sizer": sizer, "paper-exchange": paper}[name]()
    return OK


# ---- the parser ------------------------------------------------------------------------------


def _help_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command group given no command: its help, and the usage-error status."""

    def show(_: argparse.Namespace) -> int:
        parser.print_help()
        return USAGE

    return show


def _command(sub: Any, name: str, what: str, epilog: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=what,
        description=textwrap.fill(what, 88),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help=f"the config file (default: ${ENV_PREFIX}CONFIG)")


def _add_services(sub: Any) -> None:
    every = environment(
        *NATS_ENV,
        "config",
        "secrets_dir",
        more="  and every other COPYTRADE_* setting (README: configuration)",
    )
    run = _command(sub, "run", "run a service (what a Kubernetes pod runs)", every)
    run.add_argument("service", choices=SERVICES, help="the service to run")
    run.set_defaults(run=lambda args: _run_service(args.service))
    for name in SERVICES[1:]:  # the manifests run these as `copytrade <service>`
        _command(sub, name, f"run the {name} service (same as `run {name}`)", every).set_defaults(
            run=lambda args, name=name: _run_service(name)
        )


def _add_master(sub: Any) -> None:
    master = _command(sub, "master", "the master: run it, or place a master trade")
    master.set_defaults(run=_help_of(master))
    actions = master.add_subparsers(
        dest="action", metavar="{run,trade,order,amend,cancel}", parser_class=Parser
    )
    _command(
        actions,
        "run",
        "run the master service (same as `copytrade run master`)",
        environment(
            *NATS_ENV,
            "config",
            "secrets_dir",
            more="  and every other COPYTRADE_* setting (README: configuration)",
        ),
    ).set_defaults(run=lambda args: _run_service("master"))
    trade = _command(
        actions,
        "trade",
        "place a master trade through the master service; its signal is "
        "published once the order fills. Safe to send again with the same --request-id.",
        environment(*NATS_ENV, "config") + "\n\n" + EXIT_STATUS,
    )
    trade.add_argument("--symbol", required=True, help="canonical BASE/QUOTE, e.g. BTC/USD")
    trade.add_argument("--side", choices=["buy", "sell"], required=True, help="buy or sell")
    size = trade.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--quote", type=_amount, metavar="AMOUNT", help="size in quote currency, e.g. 500 (USD)"
    )
    size.add_argument(
        "--base", type=_amount, metavar="AMOUNT", help="size in the base asset, e.g. 0.01 (BTC)"
    )
    trade.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key (8-64 of A-Z a-z 0-9 _ -); default: a new one, "
        "printed first. Send a trade again with the same id: never twice",
    )
    trade.add_argument(
        "--master",
        metavar="ID",
        help="the master to trade on; must be the config's master "
        f"(reads ${ENV_PREFIX}CONFIG); default: the running master",
    )
    trade.add_argument(
        "--timeout",
        type=_amount,
        default=Decimal(60),
        metavar="SECONDS",
        help="how long to wait for the master's reply (default 60)",
    )
    _with_config(trade)
    trade.set_defaults(run=_trade)
    _add_master_orders(actions)


def _master_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--request-id, --master, --timeout and --config of a master request."""
    parser.add_argument(
        "--request-id",
        type=_request_id,
        metavar="ID",
        help="idempotency key (8-64 of A-Z a-z 0-9 _ -); default: a new one, "
        f"printed first. Sent again with the same id: {what} once",
    )
    parser.add_argument(
        "--master",
        metavar="ID",
        help="the master; must be the config's master "
        f"(reads ${ENV_PREFIX}CONFIG); default: the running master",
    )
    parser.add_argument(
        "--timeout",
        type=_amount,
        default=Decimal(60),
        metavar="SECONDS",
        help="how long to wait for the master's reply (default 60)",
    )
    _with_config(parser)


def _add_master_orders(actions: Any) -> None:
    epilog = environment(*NATS_ENV, "config") + "\n\n" + orders.EXIT_STATUS
    order = _command(
        actions,
        "order",
        "place a resting order on the master account through the master "
        "service: a limit (--limit), a stop-loss (--stop, with --limit: stop-limit) or a "
        "take-profit (--take-profit, with --limit: take-profit-limit); its order event is "
        "published, its fills are signals. Safe to send again with the same --request-id.",
        epilog,
    )
    order.add_argument("--symbol", required=True, help="canonical BASE/QUOTE, e.g. BTC/USD")
    order.add_argument("--side", choices=["buy", "sell"], required=True, help="buy or sell")
    order.add_argument(
        "--base",
        type=_amount,
        required=True,
        metavar="AMOUNT",
        help="size in the base asset, e.g. 0.01 (BTC)",
    )
    order.add_argument(
        "--limit",
        type=_amount,
        metavar="PRICE",
        help="limit price (alone: a limit order resting until filled)",
    )
    trigger = order.add_mutually_exclusive_group()
    trigger.add_argument("--stop", type=_amount, metavar="PRICE", help="stop-loss trigger price")
    trigger.add_argument("--take-profit", type=_amount, metavar="PRICE", help="take-profit trigger price")
    _master_options(order, "placed")
    order.set_defaults(run=_order_command(orders.order_request))
    amend = _command(
        actions,
        "amend",
        "change a resting limit order's price and/or size "
        "through the master service; its order event is published. Safe to send "
        "again with the same --request-id.",
        epilog,
    )
    amend.add_argument(
        "order_id",
        metavar="ORDER_ID",
        help="the master order, as `master order` printed it (the venue's order id)",
    )
    amend.add_argument("--price", type=_amount, metavar="PRICE", help="the new limit price")
    amend.add_argument(
        "--base", type=_amount, metavar="AMOUNT", help="the new size in the base asset (filled part included)"
    )
    _master_options(amend, "amended")
    amend.set_defaults(run=_order_command(orders.amend_request))
    cancel = _command(
        actions,
        "cancel",
        "cancel a resting order through the master service; "
        "its order event is published. Safe to send again with the same "
        "--request-id.",
        epilog,
    )
    cancel.add_argument("order_id", metavar="ORDER_ID", help="the master order (venue's id)")
    _master_options(cancel, "cancelled")
    cancel.set_defaults(run=_order_command(orders.cancel_request))


def _add_operations(sub: Any) -> None:
    with_config = environment(*NATS_ENV, "config")
    for name, (_, what) in control.STATE_COMMANDS.items():
        state = _command(sub, name, what, with_config)
        state.add_argument("follower", help="a follower id from the config")
        _with_config(state)
        state.set_defaults(run=_printing(_state))
    kill = _command(
        sub,
        "kill",
        "global kill switch: stop all new orders within a second, refuse master trades",
        environment(*NATS_ENV),
    )
    kill.add_argument("switch", choices=["on", "off"], help="on: stop; off: resume")
    kill.set_defaults(run=_printing(_kill))
    stat = _command(
        sub, "status", "followers, their states, last outcomes and drift; the kill switch", with_config
    )
    _with_config(stat)
    stat.set_defaults(run=_printing(_status))
    hist = _command(sub, "history", "a follower's recent copy outcomes", with_config)
    hist.add_argument("--follower", required=True, help="a follower id from the config")
    hist.add_argument("--limit", type=_limit, default=20, help="how many (default 20)")
    _with_config(hist)
    hist.set_defaults(run=_printing(_history))


ADOPT_STATUS = textwrap.fill(
    f"exit status: {OK} adopted (or adopted before by this request id); {FAILED} not adopted, "
    f"run it again; {USAGE} bad arguments, config, environment, or NATS unreachable; {UNKNOWN} "
    "outcome unknown: run the same command with the printed --request-id, which never adopts "
    "twice",
    88,
)


def _add_ledger(sub: Any) -> None:
    with_config = environment(*NATS_ENV, "config")
    where = _command(
        sub,
        "positions",
        "what copying holds: each follower's copied holding per "
        "master and symbol, next to the real balance reconciliation last saw (and "
        "when) and the target; then each master's copied position",
        with_config,
    )
    where.add_argument("--follower", metavar="ID", help="only this follower (and its masters)")
    where.add_argument("--master", metavar="ID", help="only this master")
    where.add_argument("--json", action="store_true", help="one JSON document, for machines")
    _with_config(where)
    where.set_defaults(run=_printing(_positions))
    unsub = _command(
        sub,
        "unsubscribe",
        "end a follower's subscription to a master: copiers "
        "stop copying it, and sell (--close) or keep (--keep) what was copied from "
        "it; default: the subscription's on_unsubscribe. Safe to run again.",
        with_config,
    )
    unsub.add_argument("follower", help="a follower id from the config")
    unsub.add_argument("master", help="a master the follower subscribes to")
    action = unsub.add_mutually_exclusive_group()
    action.add_argument(
        "--close",
        dest="action",
        action="store_const",
        const="close",
        help="sell the copied holding (never the follower's own coins)",
    )
    action.add_argument(
        "--keep",
        dest="action",
        action="store_const",
        const="keep",
        help="keep the copied holding; the master's exits no longer sell it",
    )
    _with_config(unsub)
    unsub.set_defaults(run=_printing(_unsubscribe))
    resub = _command(
        sub,
        "subscribe",
        "undo `unsubscribe`: the config's subscription of the "
        "follower to the master applies again, its on_subscribe included. Safe to "
        "run again.",
        with_config,
    )
    resub.add_argument("follower", help="a follower id from the config")
    resub.add_argument("master", help="a master the follower subscribes to in the config")
    _with_config(resub)
    resub.set_defaults(run=_printing(_subscribe))
    adopt = _command(
        sub,
        "adopt",
        "make coins a follower already holds (bought before the "
        "ledger, or by hand) part of its copied holding from a master, so that the "
        "master's exits sell them too. Safe to send again with the same "
        "--request-id.",
        with_config + "\n\n" + ADOPT_STATUS,
    )
    adopt.add_argument("follower", help="a follower id from the config")
    adopt.add_argument("master", help="a master the follower subscribes to")
    adopt.add_argument("symbol", type=_symbol, help="the master's symbol, e.g. BTC/USD")
    adopt.add_argument("amount", type=_amount, help="how much of the base asset, e.g. 0.5 (BTC)")
    adopt.add_argument(
        "--request-id",
        type=_request_id,
        metavar="ID",
        help="idempotency key (8-64 of A-Z a-z 0-9 _ -); default: a new one, "
        "printed first. Sent again with the same id: adopted once",
    )
    _with_config(adopt)
    adopt.set_defaults(run=_printing(_adopt))


def _add_tools(sub: Any) -> None:
    keys = _command(sub, "keys", "signal signing keys")
    keys.set_defaults(run=_help_of(keys))
    _command(
        keys.add_subparsers(dest="action", metavar="{new}", parser_class=Parser),
        "new",
        "print a new Ed25519 pair: the seed for MASTER_SIGNING_KEY, the public key for signals.public_keys",
    ).set_defaults(run=_keys_new)
    config = _command(sub, "config", "configuration tools")
    config.set_defaults(run=_help_of(config))
    check = _command(
        config.add_subparsers(dest="action", metavar="{check}", parser_class=Parser),
        "check",
        "validate a config file and its credentials",
        "credentials are read from --secrets-dir, then the environment (e.g. KRAKEN_USER_<NAME>_API_KEY)",
    )
    check.add_argument("file", help="the config file")
    check.add_argument("--secrets-dir", default=None, help="the credentials directory")
    check.set_defaults(run=_config_check)


def parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="copytrade",
        description=__doc__,
        epilog=environment(*ENV_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.set_defaults(run=_help_of(root))
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_services(sub)
    _add_master(sub)
    _add_operations(sub)
    _add_ledger(sub)
    _add_tools(sub)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command not in (*SERVICES, "run") and getattr(args, "action", None) != "run":
        # operator commands: library warnings stay out of the one-line answers
        logging.basicConfig(level=logging.ERROR, format="copytrade: %(name)s: %(message)s")
    sys.exit(_run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args.run(args)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except ConfigError as exc:
        return _fail(str(exc), USAGE)
    except (nats.errors.Error, TimeoutError, OSError) as exc:  # NATS failing mid-command
        return _fail(f"NATS: {describe(exc)}", USAGE)
    except KeyboardInterrupt:
        return 130
    return code


def _fail(message: str, code: int) -> int:
    print(f"copytrade: error: {one_line(message)}", file=sys.stderr)
    return code
