"""The HTTP client the provider SDKs (Groq, ElevenLabs, D-ID) send their requests through.

The SDKs take an ``httpx.AsyncClient``. Its default transport, httpcore, costs 2-4.5 ms of
CPU per provider call here (its pool re-checks every idle connection around each request),
more than the rest of a turn's Python put together (docs/benchmarks.md). ``httpx-aiohttp``
keeps httpx's API, which the SDKs and our error classification rely on, and sends the
requests over aiohttp, the client the Telegram adapter already uses.

One correction on top: httpx-aiohttp 0.2.0 reports every aiohttp connection error as
``httpx.ConnectTimeout``, so a refused connection or a server hanging up read as "slow"
instead of "can't reach". :class:`ProviderTransport` raises what httpcore raised for them:
``ConnectError`` and ``RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from bot.config import Settings


def _corrected(error: httpx.TransportError, request: httpx.Request | None) -> httpx.TransportError:
    cause = error.__cause__
    if not isinstance(error, httpx.ConnectTimeout) or not isinstance(cause, aiohttp.ClientConnectionError):
        return error
    if isinstance(cause, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return error  # a real timeout
    kind = httpx.ConnectError if isinstance(cause, aiohttp.ClientConnectorError) else httpx.RemoteProtocolError
    return kind(str(cause) or type(cause).__name__, request=request)


class _CorrectedStream(httpx.AsyncByteStream):
    """A response body whose read errors are corrected like the request's."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as error:
            raise _corrected(error, self._request) from error.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


class ProviderTransport(AiohttpTransport):
    """httpx-aiohttp's transport with connection errors named as httpcore names them."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as error:
            raise _corrected(error, request) from error.__cause__
        response.stream = _CorrectedStream(response.stream, request)  # type: ignore[arg-type]
        return response


def provider_http_client(settings: Settings, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` over aiohttp: ``PROVIDER_TIMEOUT`` seconds per request, at most
    ``PROVIDER_MAX_CONNECTIONS`` requests in flight."""
    limits = httpx.Limits(max_connections=settings.provider_max_connections, max_keepalive_connections=64)
    return httpx.AsyncClient(
        timeout=settings.provider_timeout, limits=limits, transport=ProviderTransport(limits=limits), **kwargs
    )
