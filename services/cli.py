"""`copytrade`: runs the services and the operator tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from services import ops
from shared.config import SecretSource, check_credentials, load_config, load_settings
from shared.errors import ConfigError
from shared.messages import SizeType, TradeReply, TradeRequest
from shared.signing import new_signing_key


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None


def _run_service(name: str) -> None:
    from services.copier.__main__ import main as copier
    from services.master.__main__ import main as master
    from services.paper.__main__ import main as paper
    from services.sizer.__main__ import main as sizer

    {"master": master, "copier": copier, "sizer": sizer, "paper-exchange": paper}[name]()


async def _trade(args: argparse.Namespace) -> int:
    import nats

    settings = load_settings()
    size_type: SizeType = "quote" if args.quote is not None else "base"
    size = args.quote if args.quote is not None else args.base
    request = TradeRequest(symbol=args.symbol, side=args.side, size=size, size_type=size_type)
    nc = await nats.connect(settings.nats_url, user=settings.nats_user,
                            password=settings.nats_password)
    try:
        msg = await nc.request("copytrade.master.trade",
                               msgspec.json.Encoder(decimal_format="string").encode(request), timeout=30)
    finally:
        await nc.close()
    reply = msgspec.json.decode(msg.data, type=TradeReply)
    print(f"signal {reply.signal_id} published" if reply.ok else f"master trade failed: {reply.error}")
    return 0 if reply.ok else 1


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    problems = check_credentials(config, SecretSource(args.secrets_dir))
    for problem in problems:
        print(f"invalid: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: master {config.master.id} on {config.master.exchange}, "
              f"{len(config.followers)} followers")
    return 1 if problems else 0


def _who() -> str:
    return os.environ.get("USER", "operator")


async def _state(args: argparse.Namespace) -> str:
    return await ops.change_state(load_settings(), args.command, args.follower, _who())


async def _kill(args: argparse.Namespace) -> str:
    return await ops.kill(load_settings(), args.switch == "on")


async def _status(_: argparse.Namespace) -> str:
    settings = load_settings()
    return await ops.status(settings, load_config(settings.config))


async def _history(args: argparse.Namespace) -> str:
    return ops.format_history(await ops.history(load_settings(), args.follower, args.limit))


OPERATIONS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, str]]] = {
    **dict.fromkeys(ops.STATE_COMMANDS, _state), "kill": _kill, "status": _status,
    "history": _history,
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="copytrade", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    master = sub.add_parser("master", help="run the master service, or `master trade`")
    master_sub = master.add_subparsers(dest="action")
    trade = master_sub.add_parser("trade", help="place a master trade through the service")
    trade.add_argument("--symbol", required=True)
    trade.add_argument("--side", choices=["buy", "sell"], required=True)
    size = trade.add_mutually_exclusive_group(required=True)
    size.add_argument("--quote", type=_decimal, help="size in quote currency (USD)")
    size.add_argument("--base", type=_decimal, help="size in base asset")
    for name in ("copier", "sizer", "paper-exchange"):
        sub.add_parser(name, help=f"run the {name} service")
    for command, what in (("pause", "copy nothing for a follower"),
                          ("resume", "return a follower to its configured state"),
                          ("close-only", "copy only exits for a follower"),
                          ("dry-run", "record decisions for a follower, place no orders")):
        sub.add_parser(command, help=what).add_argument("follower")
    kill = sub.add_parser("kill", help="global kill switch: stop all new orders within a second")
    kill.add_argument("switch", choices=["on", "off"])
    sub.add_parser("status", help="followers, their states and last outcomes; the kill switch")
    hist = sub.add_parser("history", help="a follower's recent copy outcomes")
    hist.add_argument("--follower", required=True)
    hist.add_argument("--limit", type=int, default=20)
    keys = sub.add_parser("keys", help="signal signing keys")
    keys.add_subparsers(dest="action", required=True).add_parser(
        "new", help="print a new Ed25519 pair: the seed for MASTER_SIGNING_KEY, the public key "
                    "for signals.public_keys")
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="action", required=True)
    check = config_sub.add_parser("check", help="validate a config file and its credentials")
    check.add_argument("file")
    check.add_argument("--secrets-dir", default=None)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "config":
        sys.exit(_config_check(args))
    if args.command in OPERATIONS:
        print(asyncio.run(OPERATIONS[args.command](args)))
        return
    if args.command == "keys":
        seed, public = new_signing_key()
        print(f"MASTER_SIGNING_KEY (secret, master only): {seed}\nsignals.public_keys entry: {public}")
        return
    if args.command == "master" and args.action == "trade":
        sys.exit(asyncio.run(_trade(args)))
    _run_service(args.command)


if __name__ == "__main__":
    main()
