"""Logging, the health/metrics HTTP endpoint every service serves, and secret redaction."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class RedactSecrets(logging.Filter):
    """Last line of defence: replace any known secret value in a formatted log record."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, values: Iterable[str]) -> None:
        self._secrets |= {v for v in values if len(v) >= 4}

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            if any(s in message for s in self._secrets):
                for secret in self._secrets:
                    message = message.replace(secret, "[REDACTED]")
                record.msg, record.args = message, None
        return True


def setup_logging(level: str = "INFO") -> RedactSecrets:
    """Key=value log lines on stderr; returns the redaction filter to feed secret values."""
    redactor = RedactSecrets()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return redactor


class HealthServer:
    """Serves /metrics, /healthz (the process answers) and /readyz (all checks pass)."""

    def __init__(self, registry: CollectorRegistry, port: int) -> None:
        self._registry = registry
        self._port = port
        self._checks: dict[str, Callable[[], bool]] = {}
        self._runner: web.AppRunner | None = None
        self.port = port

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "0.0.0.0", self._port)
        await site.start()
        server = site._server
        if server is not None and self._port == 0:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        failing = [name for name, check in self._checks.items() if not check()]
        status = 503 if failing else 200
        return web.json_response({"ready": not failing, "failing": failing}, status=status)
