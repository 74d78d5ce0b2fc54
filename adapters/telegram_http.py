"""How the Telegram adapter talks HTTP: python-telegram-bot's ``BaseRequest`` on aiohttp.

PTB's own ``HTTPXRequest`` costs about 1.5 ms of CPU and 4 ms of wall time per Bot API call on
the 2-core benchmark machine (httpx -> httpcore -> anyio cancel scopes and h11), and its
connection pool re-checks every idle connection (a socket poll each) twice per request, so the
cost grows with the number of connections. A voice-note turn makes eight Bot API calls, five
of them one after the other (fetch the update, get the file, download it, final text, voice
note), and that was a third of the bot's CPU per turn. The same calls on aiohttp (a
dependency already, for the webhook) cost 0.5 ms of CPU and 1.6 ms of wall time
(bench/bench_turn.py and docs/benchmarks.md have the figures).

Behaviour follows ``HTTPXRequest``: the same default timeouts and pool size, the proxy from
``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` (minus ``NO_PROXY``) used, certificates checked
against certifi's bundle, timeouts raised as ``TimedOut`` and connection failures as
``NetworkError``. Two differences: aiohttp has no separate write timeout, so a request's
whole time is bounded by the sum of its timeouts; and a call without a file goes as a JSON
body (which the Bot API takes for everything but uploads) instead of a form. (aiohttp's own
``trust_env`` would look the proxy and ``.netrc`` up in a worker thread on every request: two
thread hops a call.)
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from bot.multipart import encode_form

__all__ = ["AiohttpRequest"]

#: Uploads up to this size are encoded into one piece before they are sent.
ONE_PIECE_UPLOAD_BYTES = 8 * 1024 * 1024

_JSON = {"Content-Type": "application/json"}


def _ssl_context() -> ssl.SSLContext:
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx, a dependency, brings certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class AiohttpRequest(BaseRequest):
    """A ``BaseRequest`` on one ``aiohttp.ClientSession``, created by :meth:`initialize`."""

    __slots__ = ("_connect", "_media_write", "_pool", "_pool_size", "_proxies", "_read", "_session", "_write")

    def __init__(
        self,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read, self._write, self._connect, self._pool = read_timeout, write_timeout, connect_timeout, pool_timeout
        self._media_write = media_write_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=_ssl_context())
            self._session = aiohttp.ClientSession(connector=connector)
            self._proxies.clear()

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _proxy(self, url: str) -> str | None:
        """The environment's proxy for ``url``'s scheme and host, looked up once per host."""
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
        key = (scheme, host)
        if key not in self._proxies:
            proxies = urllib.request.getproxies_environment()
            proxy = proxies.get(scheme) or proxies.get("all")
            self._proxies[key] = None if proxy is None or urllib.request.proxy_bypass_environment(host) else proxy
        return self._proxies[key]

    def _timeout(self, files: bool, read: Any, write: Any, connect: Any, pool: Any) -> aiohttp.ClientTimeout:
        def chosen(value: Any, default: float | None) -> float | None:
            return default if isinstance(value, DefaultValue) else value

        read = chosen(read, self._read)
        write = chosen(write, self._media_write if files else self._write)
        connect = chosen(connect, self._connect)
        pool = chosen(pool, self._pool)
        parts = (read, write, connect, pool)
        total = None if any(part is None for part in parts) else sum(parts)  # type: ignore[arg-type]
        waiting = None if connect is None or pool is None else connect + pool
        return aiohttp.ClientTimeout(total=total, connect=waiting, sock_connect=connect, sock_read=read)

    @staticmethod
    def _body(request_data: RequestData | None) -> tuple[Any, dict[str, str]]:
        """The request body and the headers it needs.

        An upload up to :data:`ONE_PIECE_UPLOAD_BYTES` (a voice note) is encoded into one piece
        (:func:`bot.multipart.encode_form`): aiohttp writes its multipart form to the socket
        part by part, and one write cost ~0.08 ms less CPU per 55 kB voice note (0.42-0.54
        against 0.50-0.65 ms, four alternating rounds of 300 calls); building the bytes
        ourselves instead of through ``FormData`` saves another ~0.07 ms. A bigger upload (a
        video clip) streams, so it is not held twice in memory.
        """
        if request_data is None:
            return None, {}
        files = request_data.multipart_data
        if not files:
            parameters = request_data.parameters
            if not parameters:
                return None, {}
            # The Bot API takes JSON for everything but uploads. A form-urlencoded body, as PTB
            # sends it, is built by aiohttp's FormData and urlencode: 50 against 5 us a call.
            return json.dumps(parameters, separators=(",", ":")).encode(), _JSON
        fields = request_data.json_parameters
        contents = [content for _, content, _ in files.values()]
        in_memory = all(isinstance(content, bytes | bytearray) for content in contents)
        if in_memory and sum(map(len, contents)) <= ONE_PIECE_UPLOAD_BYTES:
            body, content_type = encode_form(fields, files)
            return body, {"Content-Type": content_type}
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, value)
        for name, (filename, content, mimetype) in files.items():
            form.add_field(name, content, filename=filename, content_type=mimetype)
        return form, {}

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = bool(request_data is not None and request_data.multipart_data)
        timeout = self._timeout(files, read_timeout, write_timeout, connect_timeout, pool_timeout)
        body, headers = self._body(request_data)
        try:
            async with self._session.request(
                method, url, data=body, headers={"User-Agent": self.USER_AGENT, **headers},
                timeout=timeout, proxy=self._proxy(url),
            ) as response:
                return response.status, await response.read()
        except TimeoutError as error:  # asyncio.TimeoutError is TimeoutError on Python 3.11
            raise TimedOut from error
        except (aiohttp.ClientError, OSError) as error:
            raise NetworkError(f"aiohttp.{type(error).__name__}: {error}") from error
