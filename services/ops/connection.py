"""The CLI's NATS connection: the services' credentials and TLS, but fail fast: a short
connect timeout and no reconnect loop, so an unreachable server is one line within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client

from services.ops.errors import CliError, describe
from shared import bus
from shared.config import CommonSettings

CONNECT_TIMEOUT_S = 2.0  # one attempt at one server
CONNECT_DEADLINE_S = 4.5  # the whole connect, whatever the server list
NATS_HINT = "check COPYTRADE_NATS_URL, COPYTRADE_NATS_USER/_PASSWORD, COPYTRADE_NATS_TLS_* (copytrade --help)"


def shown_url(url: str) -> str:
    """The server list as it can be printed: no user or password in it."""
    return ",".join(re.sub(r"^([A-Za-z]+://)?[^/@]*@", r"\1", part) for part in bus.servers(url))


@contextlib.asynccontextmanager
async def connected(settings: CommonSettings) -> AsyncIterator[Client]:
    servers = bus.servers(settings.nats_url)
    password = bus.nats_password(settings)
    try:
        tls = bus.tls_context(settings)
    except OSError as exc:  # a missing or unreadable CA, certificate or key
        raise CliError(f"NATS TLS files (COPYTRADE_NATS_TLS_*): {describe(exc)}") from None
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:  # the last one explains a failed connect
        errors.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers,
                name="copytrade-cli",
                user=settings.nats_user,
                password=password,
                tls=tls,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                connect_timeout=CONNECT_TIMEOUT_S,
                error_cb=on_error,
            ),
            CONNECT_DEADLINE_S,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        cause = errors[-1] if errors else exc
        raise CliError(
            f"cannot connect to NATS at {shown_url(settings.nats_url)}: {describe(cause)}; {NATS_HINT}"
        ) from None
    try:
        yield nc
    finally:
        await nc.close()
