"""Alpaca's Trading API on aiohttp: the requests alpaca-py's `RESTClient` sends, without a thread.

What goes out is what `alpaca.common.rest.RESTClient._request` sends: base URL + "/v2" + path,
the `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` headers and alpaca-py's user agent, redirects not
followed; GET and DELETE carry their data as query parameters, the other methods as a JSON body.
A reply from 400 on raises `ReplyError` with the status and the body (alpaca-py's `APIError`);
an empty body is None, any other is its JSON, raw. No retries: alpaca-py's re-POSTs an order
after a 504 even when the first was accepted; `shared.exchange.placing` retries, after a lookup.

One session per process and endpoint (`AlpacaHttp`), shared by every account on it: one
connection pool, one TLS context, the timeout on every request.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import certifi
import msgspec
from alpaca.common.enums import BaseURL
from alpaca.common.utils import get_default_user_agent

API_VERSION = "v2"
USER_AGENT = get_default_user_agent()
QUERY_METHODS = frozenset({"GET", "DELETE"})  # the rest send their data as a JSON body
KEEPALIVE_S = 60.0
DNS_CACHE_S = 300  # the endpoint's address, resolved once for the connections a fan-out opens


class ReplyError(Exception):
    """Alpaca answered with an error status: the status and the body, as sent."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def endpoint(base_url: str | None, paper: bool) -> str:
    """The base URL alpaca-py's `TradingClient` uses: the override, else paper or live."""
    return base_url or (BaseURL.TRADING_PAPER if paper else BaseURL.TRADING_LIVE).value


def auth_headers(api_key: str, secret: str) -> dict[str, str]:
    """An account's headers on every request (alpaca-py's key-pair authentication)."""
    return {"APCA-API-KEY-ID": api_key, "APCA-API-SECRET-KEY": secret, "User-Agent": USER_AGENT}


class AlpacaHttp:
    """One endpoint's HTTP session, shared by the process's accounts on it (`close()` once,
    through `AdapterContext.close()`); `connections` caps the requests in flight."""

    def __init__(self, base_url: str, timeout_s: float, connections: int) -> None:
        self.root = f"{base_url}/{API_VERSION}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._ssl = ssl.create_default_context(cafile=certifi.where())
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Opened on first use, inside the running loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl,
                limit=self._connections,
                ttl_dns_cache=DNS_CACHE_S,
                keepalive_timeout=KEEPALIVE_S,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def request(
        self, method: str, path: str, data: Mapping[str, Any] | None, headers: Mapping[str, str]
    ) -> Any:
        """One request; its JSON reply, raw (None for an empty body). Raises `ReplyError` for
        an error status, aiohttp's errors and `TimeoutError` as they come."""
        method = method.upper()
        query = data if method in QUERY_METHODS else None
        async with self.session.request(
            method,
            self.root + path,
            params=None if query is None else _params(query),
            json=None if method in QUERY_METHODS else data,
            headers=headers,
            allow_redirects=False,
        ) as reply:
            body = await reply.read()
        if reply.status >= 400:
            raise ReplyError(reply.status, body.decode(errors="replace"))
        if not body:
            return None
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise ReplyError(reply.status, body.decode(errors="replace")) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _params(data: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters as `requests` encodes a dict: None left out, the rest as str()."""
    return {key: str(value) for key, value in data.items() if value is not None}
