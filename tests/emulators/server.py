"""A loopback aiohttp server that hosts one venue emulator on a free port."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from tests.emulators.state import VenueState

BACKLOG = 4096


class EmulatorServer:
    """Base for venue emulators: subclasses add their routes in `routes()`."""

    def __init__(self, state: VenueState | None = None) -> None:
        self.state = state or VenueState()
        self.app = web.Application()
        self.routes(self.app.router)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # set on stop: releases replies held by _hold
        self.url = ""

    def routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def start(self) -> str:
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        # a venue takes a thousand followers' connections at once; aiohttp's default backlog
        # (128) drops SYNs beyond it and the clients retry a second later
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=BACKLOG)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hold(self) -> None:
        """TIMEOUT_AFTER_ACCEPT: sit on the reply until the client gave up (or the server stops)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self.state.timeout_hold_s)

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
