"""Groq: Whisper speech-to-text, and Llama through ``langchain-groq``.

Both talk to ``GROQ_BASE_URL`` (the groq SDK's default when unset), posted with aiohttp
(:class:`GroqHTTP`) and failing with the groq SDK's own errors. No retries at that level:
:func:`bot.retry.call_with_retries` retries 429/5xx/timeouts honouring ``retry-after`` and
feeds one circuit breaker per provider.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import groq
import httpx
from groq import NotGiven, Omit
from langchain_core.language_models import BaseChatModel

from bot.config import Settings
from bot.errors import BadAudioError, ConfigError, ProviderError
from bot.messages import Audio
from bot.multipart import encode_form
from bot.providers.base import SpeechToText, Transcript
from bot.retry import CircuitBreaker, call_with_retries, parse_retry_after

# File names Groq accepts; Telegram's ".oga" is OGG but is rejected by name.
_UPLOAD_EXTENSIONS = {"oga": "ogg", "opus": "ogg", "ogg": "ogg", "mp3": "mp3", "wav": "wav",
                      "flac": "flac", "m4a": "m4a", "mp4": "mp4", "webm": "webm", "mpeg": "mpeg"}

# Whisper reports languages by name; keep the ISO code for the ones users mostly speak.
_LANGUAGE_CODES = {"english": "en", "german": "de", "french": "fr", "spanish": "es",
                   "italian": "it", "portuguese": "pt", "russian": "ru", "ukrainian": "uk",
                   "dutch": "nl", "polish": "pl", "turkish": "tr", "japanese": "ja",
                   "chinese": "zh", "korean": "ko", "arabic": "ar", "hindi": "hi"}


def language_code(language: str | None) -> str | None:
    if not language:
        return None
    lowered = language.strip().lower()
    return _LANGUAGE_CODES.get(lowered, lowered)


def classify_groq_error(exc: BaseException) -> ProviderError | None:
    """Map a groq SDK exception to a ProviderError saying whether a retry may help."""
    if isinstance(exc, groq.APITimeoutError):
        return ProviderError("groq", "timed out", retryable=True,
                             user_message="The speech/AI service is slow right now. Please try again.")
    if isinstance(exc, groq.APIConnectionError):
        return ProviderError("groq", "connection failed", retryable=True,
                             user_message="I can't reach the AI service right now. Please try again soon.")
    if isinstance(exc, groq.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        detail = _error_message(exc)
        if status == 429:
            return ProviderError("groq", f"429 {detail}", retryable=True, retry_after=retry_after, status=status,
                                 user_message="The AI service is busy (rate limited). Please try again in a minute.")
        if status >= 500:
            return ProviderError("groq", f"{status} {detail}", retryable=True, retry_after=retry_after,
                                 status=status, user_message="The AI service is having trouble. Please try again soon.")
        if status in (401, 403):
            return ProviderError("groq", f"{status} {detail}", status=status,
                                 user_message="The AI service rejected the bot's credentials; the admin must check GROQ_API_KEY.")
        return ProviderError("groq", f"{status} {detail}", status=status)
    if isinstance(exc, groq.APIError) and not isinstance(exc, groq.APIResponseValidationError):
        # An error event in the middle of a streamed answer (Groq sends one when the model fails).
        return ProviderError("groq", f"error while streaming: {str(exc.message)[:300]}", retryable=True,
                             user_message="The AI service is having trouble. Please try again soon.")
    # A streamed answer is read after the SDK returned: httpx's own errors surface unwrapped.
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("groq", "timed out while streaming", retryable=True,
                             user_message="The speech/AI service is slow right now. Please try again.")
    if isinstance(exc, httpx.TransportError):
        return ProviderError("groq", f"connection cut: {type(exc).__name__}", retryable=True,
                             user_message="I can't reach the AI service right now. Please try again soon.")
    if isinstance(exc, (groq.APIResponseValidationError, json.JSONDecodeError, MalformedAnswer)) or _no_chunks(exc):
        # The SDK lets a 200 whose body is not JSON (a proxy's HTML page) through raw; as a
        # stream it yields nothing, and LangChain then reports that no chunks came.
        return ProviderError("groq", "malformed response", retryable=True,
                             user_message="The AI service answered with garbage. Please try again.")
    return None


class MalformedAnswer(ValueError):
    """A 200 whose body is not a chat completion (a proxy's page, an event stream unasked for)."""


def _no_chunks(exc: BaseException) -> bool:
    return isinstance(exc, ValueError) and "No generation chunks" in str(exc)


def _error_message(exc: groq.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("code") or "")[:300]
    return str(exc.message)[:300]


def _api_key(settings: Settings) -> str:
    key = Settings.secret(settings.groq_api_key)
    if not key:
        raise ConfigError("GROQ_API_KEY is not set; it is needed for the Groq speech-to-text and LLM providers.")
    return key


class GroqHTTP:
    """Requests to Groq posted with aiohttp, failing with the groq SDK's own errors.

    The SDK's request path (its options model, header merging, httpx's request and response
    objects) cost about as much CPU as the rest of a provider call (bench/bench_units.py:
    0.9 against 0.4 ms for a Whisper upload, 1.2 against 0.2 for a chat answer). The errors a
    caller sees are the SDK's: a status error is made by ``groq.AsyncGroq`` from the answer
    (``RateLimitError`` with its ``retry-after``, ``AuthenticationError``...), a timeout or a
    failed connection raises ``APITimeoutError`` or ``APIConnectionError``, and a body cut
    halfway raises httpx's ``ReadTimeout`` or ``RemoteProtocolError`` as the SDK's would, so
    :func:`classify_groq_error` knows them all. ``PROVIDER_TIMEOUT`` is per connect and per
    read, as httpx counts it; at most ``PROVIDER_MAX_CONNECTIONS`` requests are in flight.
    """

    def __init__(self, settings: Settings) -> None:
        key = _api_key(settings)
        self._client = groq.AsyncGroq(api_key=key, base_url=settings.groq_base_url, max_retries=0)
        self._base = str(self._client.base_url).rstrip("/") + "/openai/v1"
        self._auth = {"Authorization": f"Bearer {key}"}
        seconds = settings.provider_timeout
        self._timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=seconds)
        self._max_connections = settings.provider_max_connections
        self._session: aiohttp.ClientSession | None = None
        # The request each path's errors name: httpx parses its URL (~25 us), once per path.
        self._named: dict[str, httpx.Request] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[aiohttp.ClientResponse, httpx.Request]:
        """POST ``body`` to ``path`` (under ``/openai/v1``); the answer, 2xx, with its body
        unread, and the request as the SDK's errors name it."""
        url = self._base + path
        request = self._named.get(path)
        if request is None:
            request = self._named[path] = httpx.Request("POST", url)
        try:
            response = await self._open().post(url, data=body, headers={**self._auth, **headers})
        except TimeoutError as error:
            raise groq.APITimeoutError(request=request) from error
        except aiohttp.ClientError as error:
            raise groq.APIConnectionError(request=request) from error
        if response.status >= 400:
            try:
                content = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                content = b""
            finally:
                response.release()
            answer = httpx.Response(response.status, headers=list(response.headers.items()), content=content,
                                    request=request)
            raise self._client._make_status_error_from_response(answer)
        return response, request

    @staticmethod
    async def json_object(response: aiohttp.ClientResponse, request: httpx.Request, what: str) -> dict[str, Any]:
        """The answer's body as a JSON object; :class:`MalformedAnswer` if it is not one."""
        try:
            content = await response.read()
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _transport_error(error, request) from error
        finally:
            response.release()
        try:
            answer = json.loads(content)
        except ValueError as error:
            raise MalformedAnswer(f"{len(content)} bytes that are not JSON where {what} belongs") from error
        if not isinstance(answer, dict):
            raise MalformedAnswer(f"a {type(answer).__name__} where {what} belongs")
        return answer

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._client.close()  # its own httpx client, which sends nothing


class GroqWhisperSTT(SpeechToText):
    """Whisper on Groq. Uploads OGG as ``voice.ogg`` (never ``.oga``) and keeps the language."""

    name = "groq"

    def __init__(self, settings: Settings, breaker: CircuitBreaker | None = None) -> None:
        self._settings = settings
        self._groq = GroqHTTP(settings)
        self._breaker = breaker or CircuitBreaker("speech-to-text")

    async def transcribe(self, audio: Audio) -> Transcript:
        extension = _UPLOAD_EXTENSIONS.get(audio.format.lower().lstrip("."), "ogg")
        fields = {"model": self._settings.stt_model, "response_format": "verbose_json", "temperature": "0.0"}
        if self._settings.stt_language:
            fields["language"] = self._settings.stt_language

        upload = {"file": (f"voice.{extension}", audio.data, "application/octet-stream")}
        body, content_type = encode_form(fields, upload)

        async def call() -> dict[str, Any]:
            response, request = await self._groq.post(
                "/audio/transcriptions", body, {"Content-Type": content_type, "Accept": "application/json"})
            return await GroqHTTP.json_object(response, request, "a transcription")

        try:
            result = await call_with_retries(
                call, classify=classify_groq_error,
                attempts=self._settings.provider_retries + 1, breaker=self._breaker,
            )
        except ProviderError as error:
            if error.status == 400:  # Groq could not decode the file
                raise BadAudioError(str(error)) from error
            raise
        text = result.get("text")
        duration = result.get("duration")
        language = result.get("language")
        return Transcript(
            text=text.strip() if isinstance(text, str) else "",
            language=language_code(language if isinstance(language, str) else None),
            duration=float(duration) if isinstance(duration, int | float) else None,
        )

    async def aclose(self) -> None:
        await self._groq.aclose()


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = object()


class ServerSentEvents:
    """Groq's streamed chat answer as plain dicts, one per server-sent event.

    The same events, errors and end as the groq SDK's ``AsyncStream``: ``[DONE]`` ends it, an
    event carrying ``error`` raises ``groq.APIError``, a named event comes as ``{"data",
    "event"}``. The body is read to its end even after ``[DONE]``, so the connection goes
    back to the pool.

    Tokens that are already here together come as one chunk: consecutive events of one read
    that carry nothing but text (:func:`_merge_text_chunks`). Each chunk costs LangChain a
    message object, a generation and a callback, more than its read; a bot that keeps up gets
    one token per read as before, and one that falls behind (a fast model, a busy process)
    catches up with fewer objects instead of lagging further.
    """

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request  # what groq's errors name

    async def __aiter__(self) -> AsyncIterator[object]:
        pending = b""
        finished = False
        try:
            async for data in self._response.content.iter_any():
                if finished:
                    continue
                *events, pending = _EVENT_END.split(pending + data)
                items: list[object] = []
                failed: Exception | None = None
                try:
                    for event in events:
                        item = self._parse(event)
                        if item is _DONE:
                            finished = True
                            break
                        if item is not None:
                            items.append(item)
                except Exception as error:  # noqa: BLE001 - raised after the tokens before it
                    failed = error
                for item in _merge_text_chunks(items):
                    yield item
                if failed is not None:
                    raise failed
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _transport_error(error, self._request) from error
        finally:
            self._response.release()
        if not finished and pending.strip():
            item = self._parse(pending)
            if item is not None and item is not _DONE:
                yield item

    def _parse(self, event: bytes) -> object:
        name: str | None = None
        lines = []
        for line in event.splitlines():
            if not line or line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                lines.append(value)
            elif field == b"event":
                name = value.decode()
        if not lines:
            return None
        payload = b"\n".join(lines)
        if payload.startswith(b"[DONE]"):
            return _DONE
        data = json.loads(payload)
        if isinstance(data, dict) and data.get("error") and name in (None, "error"):
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else None
            if not message or not isinstance(message, str):
                message = "An error occurred during streaming"
            raise groq.APIError(message=message, request=self._request, body=error)
        return data if name is None else {"data": data, "event": name}


#: Fields of a chunk that only carries text (besides ``choices``), as Groq sends them.
_TEXT_CHUNK_FIELDS = frozenset({"id", "object", "created", "model", "system_fingerprint", "service_tier", "x_groq",
                                "choices", "usage"})
_TEXT_CHOICE_FIELDS = frozenset({"index", "delta", "finish_reason", "logprobs"})


def _text_delta(chunk: object) -> dict[str, Any] | None:
    """The delta of a chunk that carries nothing but text (and maybe the role): one choice, no
    finish reason, no logprobs, no usage, no tool calls; None for any other chunk."""
    if not isinstance(chunk, dict) or not chunk.keys() <= _TEXT_CHUNK_FIELDS or chunk.get("usage"):
        return None
    extra = chunk.get("x_groq")
    if extra is not None and (not isinstance(extra, dict) or extra.keys() - {"id"}):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if choice.keys() - _TEXT_CHOICE_FIELDS or choice.get("index", 0) != 0:
        return None
    if choice.get("finish_reason") or choice.get("logprobs"):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict) or delta.keys() - {"role", "content"}:
        return None
    return delta if isinstance(delta.get("content", ""), str) else None


def _merge_text_chunks(chunks: list[object]) -> list[object]:
    """``chunks`` with each run of text-only chunks made one: the first's fields, the texts
    joined; a chunk of any other kind (the last, with its finish reason and usage) stays as it
    is, between the runs."""
    if len(chunks) < 2:
        return chunks
    merged: list[object] = []
    run: dict[str, Any] | None = None  # the delta of merged[-1] while it is a run of text
    copied = False  # merged[-1] is our copy, not the parsed chunk
    for chunk in chunks:
        delta = _text_delta(chunk)
        if delta is None:
            merged.append(chunk)
            run = None
        elif run is not None and delta.get("role") in (None, run.get("role")):
            if not copied:
                first = merged[-1]
                assert isinstance(first, dict)
                run = dict(run)
                merged[-1] = {**first, "choices": [{**first["choices"][0], "delta": run}]}
                copied = True
            run["content"] = run.get("content", "") + delta.get("content", "")
        else:
            merged.append(chunk)
            run, copied = delta, False
    return merged


def _transport_error(error: BaseException, request: httpx.Request) -> httpx.TransportError:
    """An aiohttp failure while an answer is read, named as httpx names it (what
    :func:`classify_groq_error` knows for a cut stream)."""
    if isinstance(error, TimeoutError):
        return httpx.ReadTimeout(str(error) or "timed out", request=request)
    return httpx.RemoteProtocolError(str(error) or type(error).__name__, request=request)


class DirectCompletions:
    """Groq's chat completions for ChatGroq, posted with aiohttp.

    ChatGroq calls ``create(messages=..., model=..., stream=..., **params)`` on its
    ``async_client`` and takes plain dicts back (it would ``model_dump()`` the SDK's objects
    straight back into them). The body goes out as ChatGroq gave it, through
    :class:`GroqHTTP`, with the SDK's errors.
    """

    def __init__(self, http: GroqHTTP) -> None:
        self._http = http

    async def create(self, *, messages: list[dict[str, Any]], model: str, stream: bool | None = False,
                     extra_headers: dict[str, str] | None = None, extra_body: dict[str, Any] | None = None,
                     **params: Any) -> Any:
        """One chat completion: a dict, or with ``stream`` an async iterable of chunk dicts.
        Parameters left unset (None) are left out, as the SDK leaves out what it was not given."""
        body = {"messages": messages, "model": model, "stream": bool(stream)}
        body.update((k, v) for k, v in params.items() if v is not None and not isinstance(v, (NotGiven, Omit)))
        body.update(extra_body or {})
        headers = {"Content-Type": "application/json", "Accept": "application/json", **(extra_headers or {})}
        encoded = json.dumps(body, separators=(",", ":")).encode()
        response, request = await self._http.post("/chat/completions", encoded, headers)
        if stream:
            return ServerSentEvents(response, request)
        return await GroqHTTP.json_object(response, request, "a chat completion")

    async def aclose(self) -> None:
        await self._http.aclose()


def build_groq_chat_model(settings: Settings) -> tuple[BaseChatModel, DirectCompletions]:
    """ChatGroq for ``LLM_MODEL`` (Groq retires ids; default ``llama-3.1-8b-instant``), and
    its client, which the caller closes."""
    from langchain_groq import ChatGroq

    completions = DirectCompletions(GroqHTTP(settings))
    model = ChatGroq(
        async_client=completions,
        model=settings.llm_model,
        api_key=_api_key(settings),
        base_url=settings.groq_base_url,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
        max_retries=0,
        timeout=settings.provider_timeout,
    )
    return model, completions
