"""The common base of the local stand-in HTTP services (Groq, ElevenLabs, D-ID).

A fake is an aiohttp app bound to 127.0.0.1 on a random port. It records every request,
can be told to misbehave for the next matching requests (an HTTP error, a hang, a dropped
connection, a body cut short, a non-JSON body) and can add a fixed latency per endpoint
for benchmarks. It runs on the test's event loop (``await start()``) or on a loop of its
own in a daemon thread (``start_in_thread()``) for sync code and subprocess tests.

Subclasses add routes with :meth:`HttpFake.route`; a handler gets the request and its
:class:`RecordedRequest` and returns a ``web.Response`` or a :class:`Streamed` body, so the
base can apply faults the same way to every endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Self
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict

FaultKind = Literal["status", "slow", "hang", "drop", "truncate"]
Handler = Callable[[web.Request, "RecordedRequest"], Awaitable["web.Response | Streamed"]]

#: How long a hang lasts by default: longer than any client timeout a test should use.
DEFAULT_HANG_SECONDS = 3600.0


class FilePart(NamedTuple):
    """One uploaded file of a multipart body."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(slots=True)
class RecordedRequest:
    """What a fake received, kept for assertions.

    ``headers`` has lower-case names. ``form`` holds the non-file fields of a multipart or
    urlencoded body, ``files`` the file parts by field name, ``json`` the parsed JSON body
    (None if the body was not JSON), ``form_items`` every form field in order, repeats
    included. ``status`` is the status the fake answered with (None
    while in flight, or when the connection was dropped); ``fault`` names the injected fault;
    ``abandoned`` says the client had closed the connection before the answer was ready.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)
    form_items: list[tuple[str, str]] = field(default_factory=list)
    endpoint: str = ""
    received_at: float = 0.0
    status: int | None = None
    fault: FaultKind | None = None
    abandoned: bool = False

    @property
    def params(self) -> dict[str, str]:
        """The parameters however they came (query, form fields, the members of a JSON object),
        each as a form carries it: strings as they are, anything else JSON-encoded."""
        params = {**self.query, **self.form}
        if isinstance(self.json, dict):
            params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in self.json.items()})
        return params


@dataclass(slots=True)
class Fault:
    """A scripted misbehaviour for the next ``times`` requests whose path contains ``path_contains``."""

    path_contains: str
    kind: FaultKind
    status: int = 500
    body: bytes | dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    delay: float = 0.0
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return self.path_contains in path and (self.method is None or self.method.upper() == method)


@dataclass(slots=True)
class Streamed:
    """A response body sent in chunks (SSE, chunked audio), ``delay`` seconds apart."""

    chunks: list[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    delay: float = 0.0


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` exactly (no charset suffix)."""
    return web.Response(
        body=json.dumps(payload).encode(), status=status, headers=headers, content_type="application/json"
    )


def parse_multipart(
    body: bytes, content_type: str
) -> tuple[dict[str, str], dict[str, FilePart], list[tuple[str, str]]]:
    """Split a ``multipart/form-data`` body into text fields, file parts and all (name, value) pairs.

    Byte-exact for files; a repeated field (``timestamp_granularities[]``) keeps its last
    value in the dict and every value in the list.
    """
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("multipart body without a boundary")
    form: dict[str, str] = {}
    files: dict[str, FilePart] = {}
    items: list[tuple[str, str]] = []
    delimiter = b"\r\n--" + boundary.encode()
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        part = email.message.Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                part[name.strip()] = value.strip()
        field_name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        if not isinstance(field_name, str):
            continue
        if filename is not None:
            files[field_name] = FilePart(str(filename), part.get("content-type"), data)
        else:
            form[field_name] = data.decode("utf-8", "replace")
            items.append((field_name, form[field_name]))
    return form, files, items


class HttpFake:
    """Base class: lifecycle, request recording, fault injection and latency.

    ``latency`` maps an endpoint name (each subclass documents its names) to seconds added
    before that endpoint answers. Faults are consumed first come first served among those
    whose ``path_contains`` is in the request path (the query string is not matched).
    """

    #: Endpoint names this fake uses as ``latency`` keys; set by subclasses.
    ENDPOINTS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.latency: dict[str, float] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._app = web.Application(client_max_size=64 * 1024 * 1024)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash); only valid once started."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve on the running event loop."""
        if self._runner is not None:
            return self
        self._closing = asyncio.Event()
        if not self._app.frozen:
            self.route("*", "/{tail:.*}", self._unknown_route, endpoint="unknown")
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._port = runner.addresses[0][1]
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop serving; wakes any hanging or slow handler so shutdown stays quick."""
        if self._runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    def start_in_thread(self, timeout: float = 10.0) -> Self:
        """Serve from a daemon thread with its own event loop; returns once it listens."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                errors.append(exc)
            ready.set()
            if not errors:
                loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())  # to_thread workers
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}-loop", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"{type(self).__name__} did not start within {timeout}s")
        if errors:
            raise errors[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a fake started with :meth:`start_in_thread` and join its thread."""
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._thread_loop = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        path_contains: str,
        status: int,
        *,
        body: bytes | dict | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
        method: str | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` after ``delay`` seconds.

        ``body=None`` sends the service's own error body for that status (and its usual
        headers, e.g. Groq's ``retry-after`` on 429); a dict is sent as JSON; bytes as they
        are (pass ``headers={"content-type": ...}`` to label them, e.g. non-JSON "JSON").
        """
        return self._add(
            Fault(path_contains, "status", status, body, dict(headers or {}), times, delay, method)
        )

    def bad_body_next(
        self,
        path_contains: str,
        *,
        body: bytes = b"<html><body>502 Bad Gateway</body></html>",
        status: int = 200,
        content_type: str = "application/json",
        times: int = 1,
        method: str | None = None,
    ) -> Fault:
        """Answer with a body that does not parse as its content type says (default: HTML as JSON)."""
        return self.fail_next(
            path_contains, status, body=body, headers={"content-type": content_type}, times=times, method=method
        )

    def slow_next(self, path_contains: str, seconds: float, *, times: int = 1, method: str | None = None) -> Fault:
        """Answer normally, but only after ``seconds`` (a slow success)."""
        return self._add(Fault(path_contains, "slow", times=times, delay=seconds, method=method))

    def hang_next(
        self, path_contains: str, *, seconds: float = DEFAULT_HANG_SECONDS, times: int = 1, method: str | None = None
    ) -> Fault:
        """Never answer: wait ``seconds`` (or until the client gives up or the fake stops), then drop.

        Use it to exercise client timeouts; the request is recorded with ``status=None``.
        """
        return self._add(Fault(path_contains, "hang", times=times, delay=seconds, method=method))

    def drop_next(
        self, path_contains: str, *, times: int = 1, delay: float = 0.0, method: str | None = None
    ) -> Fault:
        """Close the connection without any response (the client sees a disconnect)."""
        return self._add(Fault(path_contains, "drop", times=times, delay=delay, method=method))

    def truncate_next(self, path_contains: str, *, times: int = 1, method: str | None = None) -> Fault:
        """Send the real response's status and headers but only half its body, then close.

        For a fixed-size body the Content-Length still announces the whole body; for a
        streamed one (SSE, audio stream) half the chunks go out and the stream just stops.
        """
        return self._add(Fault(path_contains, "truncate", times=times, method=method))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _add(self, fault: Fault) -> Fault:
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ recording helpers

    def requests_to(self, path_contains: str = "", method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path contains ``path_contains`` (and of ``method``, if given)."""
        return [
            r
            for r in list(self.requests)
            if path_contains in r.path and (method is None or r.method == method.upper())
        ]

    async def wait_for_requests(
        self, count: int, path_contains: str = "", timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until ``count`` matching requests were received; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while len(found := self.requests_to(path_contains)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} requests to {path_contains!r} after {timeout}s")
            await asyncio.sleep(0.01)
        return found

    def reset(self) -> None:
        """Forget recorded requests and pending faults (configuration stays)."""
        self.requests.clear()
        self.clear_faults()

    # ------------------------------------------------------------------ service hooks

    def error_body(self, status: int, message: str) -> dict:
        """The service's JSON error body for ``status``; subclasses give their real shape."""
        return {"error": {"message": message, "status": status}}

    def error_headers(self, status: int) -> dict[str, str]:
        """Headers the service sends with an error of ``status`` (e.g. retry-after)."""
        return {}

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        headers = {**self.error_headers(status), **(headers or {})}
        return json_response(self.error_body(status, message), status, headers)

    async def _unknown_route(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        """Any path the fake does not serve: a 404 in the service's error shape."""
        return self.error(404, f"Unknown request URL: {request.method} {request.path}")

    # ------------------------------------------------------------------ routing

    def route(self, method: str, path: str, handler: Handler, *, endpoint: str) -> None:
        """Serve ``handler`` at ``path`` with recording, latency and faults around it."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            recorded = await self._record(request, endpoint)
            response = await self._serve(request, recorded, handler, endpoint)
            if response is None:  # connection dropped on purpose: nothing was sent
                return _closed_response()
            recorded.status = response.status
            recorded.abandoned = request.transport is None or request.transport.is_closing()
            return response

        self._app.router.add_route(method, path, wrapped)

    async def _record(self, request: web.Request, endpoint: str) -> RecordedRequest:
        body = await request.read()
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            endpoint=endpoint,
            received_at=time.time(),
        )
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            with contextlib.suppress(ValueError):
                recorded.form, recorded.files, recorded.form_items = parse_multipart(body, content_type)
        elif content_type.startswith("application/x-www-form-urlencoded"):
            recorded.form_items = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            recorded.form = dict(recorded.form_items)
        elif body:
            with contextlib.suppress(ValueError):
                recorded.json = json.loads(body)
        self.requests.append(recorded)
        return recorded

    async def _serve(
        self, request: web.Request, recorded: RecordedRequest, handler: Handler, endpoint: str
    ) -> web.StreamResponse | None:
        if (latency := self.latency.get(endpoint, 0.0)) > 0:
            await self._sleep(latency)
        fault = self._take_fault(request.method, request.path)
        if fault is not None:
            recorded.fault = fault.kind
            if fault.kind in ("slow", "status", "drop") and fault.delay > 0:
                await self._sleep(fault.delay)
            if fault.kind == "status":
                return self._fault_response(fault)
            if fault.kind == "hang":
                await self._sleep(fault.delay)
                return self._drop(request)
            if fault.kind == "drop":
                return self._drop(request)
        reply = await handler(request, recorded)
        truncate = fault is not None and fault.kind == "truncate"
        if isinstance(reply, Streamed):
            return await self._send_streamed(request, recorded, reply, truncate)
        if truncate:
            return await self._send_truncated(request, recorded, reply)
        return reply

    def _fault_response(self, fault: Fault) -> web.Response:
        headers = CIMultiDict(self.error_headers(fault.status) if fault.body is None else {})
        headers.update(fault.headers)
        if isinstance(fault.body, bytes):
            headers.setdefault("Content-Type", "application/octet-stream")
            return web.Response(body=fault.body, status=fault.status, headers=headers)
        body = fault.body if fault.body is not None else self.error_body(fault.status, f"injected fault {fault.status}")
        headers.setdefault("Content-Type", "application/json")
        return web.Response(body=json.dumps(body).encode(), status=fault.status, headers=headers)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early when the fake is stopping."""
        if self._closing is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()
        return None

    async def _send_streamed(
        self, request: web.Request, recorded: RecordedRequest, reply: Streamed, truncate: bool
    ) -> web.StreamResponse | None:
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        response.enable_chunked_encoding()
        recorded.status = reply.status
        await response.prepare(request)
        chunks = reply.chunks[: max(1, len(reply.chunks) // 2)] if truncate else reply.chunks
        for i, chunk in enumerate(chunks):
            if i and reply.delay > 0:
                await self._sleep(reply.delay)
            await response.write(chunk)
        if truncate:
            self._drop(request)
            return response
        await response.write_eof()
        return response

    async def _send_truncated(
        self, request: web.Request, recorded: RecordedRequest, reply: web.Response
    ) -> web.StreamResponse | None:
        body = reply.body if isinstance(reply.body, bytes) else b""
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_length = len(body)
        recorded.status = reply.status
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        self._drop(request)
        return response


def _closed_response() -> web.Response:
    """What a wrapped handler returns after it closed the transport itself.

    aiohttp needs a response object; the transport is already closed so none is sent.
    """
    return web.Response(status=499)


def chunked(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into ``size``-byte pieces (at least one piece)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def sse(events: Iterable[Any]) -> list[bytes]:
    """Server-sent-event lines ``data: <json>\\n\\n`` for each event, then ``data: [DONE]``."""
    out = [f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode() for event in events]
    out.append(b"data: [DONE]\n\n")
    return out


@contextlib.contextmanager
def counting_faults(label: str) -> Iterator[Counter[str]]:
    """Count every fault any fake serves while inside, per fake class; print the total after
    (the reliability suites' figures, shown with ``pytest -s``)."""
    served: Counter[str] = Counter()
    original = HttpFake._take_fault

    def counting(self: HttpFake, method: str, path: str) -> Fault | None:
        fault = original(self, method, path)
        if fault is not None:
            served[type(self).__name__] += 1
        return fault

    HttpFake._take_fault = counting  # type: ignore[method-assign]
    try:
        yield served
    finally:
        HttpFake._take_fault = original  # type: ignore[method-assign]
        print(f"\n[reliability] {label} faults injected: {sum(served.values())} {dict(served)}")
