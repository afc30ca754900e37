"""Connecting to NATS the same way in every process: servers, credentials, TLS, reconnects."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import nats
from nats.aio.client import Client

from shared.config import CommonSettings
from shared.errors import ConfigError

log = logging.getLogger("copytrade.bus")


def servers(url: str) -> list[str]:
    """COPYTRADE_NATS_URL: one URL or a comma-separated list (the nodes of a cluster)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ConfigError("COPYTRADE_NATS_URL is empty")
    return found


def nats_password(settings: CommonSettings) -> str | None:
    """The password from the settings, or from the file named like the user (a Secret mount)."""
    if settings.nats_password or not (settings.nats_password_dir and settings.nats_user):
        return settings.nats_password
    path = Path(settings.nats_password_dir) / settings.nats_user
    try:
        return path.read_text().strip()
    except OSError:
        raise ConfigError(f"NATS password file for user {settings.nats_user} is missing") from None


def tls_context(settings: CommonSettings) -> ssl.SSLContext | None:
    if settings.nats_tls_ca is None:
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


async def connect(settings: CommonSettings, name: str) -> Client:
    """Connect with credentials when set; reconnect forever (services outlive NATS restarts)."""

    async def on_disconnect() -> None:
        log.warning("event=nats_disconnected service=%s", name)

    async def on_reconnect() -> None:
        log.info("event=nats_reconnected service=%s", name)

    async def on_error(exc: Exception) -> None:
        log.warning("event=nats_error service=%s error=%s", name, type(exc).__name__)

    return await nats.connect(
        servers(settings.nats_url),
        name=name,
        user=settings.nats_user,
        password=nats_password(settings),
        tls=tls_context(settings),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
