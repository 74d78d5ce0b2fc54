"""The HTTP client the provider SDKs (ElevenLabs, D-ID) send their requests through.

(Groq's requests go over aiohttp directly: ``bot.providers.groq_cloud.GroqHTTP``.)

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


#: Request bodies up to this size are read into one piece before they are sent.
BUFFERED_BODY_BYTES = 8 * 1024 * 1024


class ProviderTransport(AiohttpTransport):
    """httpx-aiohttp's transport with connection errors named as httpcore names them.

    A multipart upload (the voice note D-ID animates) is an httpx stream of small pieces,
    which aiohttp writes to the socket one by one (17 writes for one note); read into one
    piece first, it goes out in one, and the call costs ~0.15 ms less CPU (measured when
    Whisper's uploads went this way: 0.80-0.87 against 0.94-1.11 ms for a 13 kB note, four
    alternating rounds of 400 calls).
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= BUFFERED_BODY_BYTES:
            await request.aread()  # a no-op for a body that is one piece already (JSON)
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
