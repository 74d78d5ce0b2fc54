"""Groq: Whisper speech-to-text through the ``groq`` SDK, Llama through ``langchain-groq``.

Both talk to ``GROQ_BASE_URL`` (the SDK's own default when unset). SDK-level retries are off:
:func:`bot.retry.call_with_retries` retries 429/5xx/timeouts honouring ``retry-after`` and
feeds one circuit breaker per provider.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import groq
import httpx
from groq import NOT_GIVEN, AsyncStream, NotGiven, Omit
from groq._base_client import make_request_options
from groq.resources.chat.completions import AsyncCompletions
from langchain_core.language_models import BaseChatModel

from bot.config import Settings
from bot.errors import BadAudioError, ConfigError, ProviderError
from bot.messages import Audio
from bot.providers.base import SpeechToText, Transcript
from bot.providers.http import provider_http_client
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


class GroqWhisperSTT(SpeechToText):
    """Whisper on Groq. Uploads OGG as ``voice.ogg`` (never ``.oga``) and keeps the language."""

    name = "groq"

    def __init__(self, settings: Settings, breaker: CircuitBreaker | None = None) -> None:
        self._settings = settings
        self._http = provider_http_client(settings)
        self._client = groq.AsyncGroq(
            api_key=_api_key(settings),
            base_url=settings.groq_base_url,
            max_retries=0,
            timeout=settings.provider_timeout,
            http_client=self._http,
        )
        self._breaker = breaker or CircuitBreaker("speech-to-text")

    async def transcribe(self, audio: Audio) -> Transcript:
        extension = _UPLOAD_EXTENSIONS.get(audio.format.lower().lstrip("."), "ogg")
        options: dict[str, Any] = {"temperature": 0.0}
        if self._settings.stt_language:
            options["language"] = self._settings.stt_language

        async def call() -> Any:
            return await self._client.audio.transcriptions.create(
                file=(f"voice.{extension}", audio.data),
                model=self._settings.stt_model,
                response_format="verbose_json",
                **options,
            )

        try:
            result = await call_with_retries(
                call, classify=classify_groq_error,
                attempts=self._settings.provider_retries + 1, breaker=self._breaker,
            )
        except ProviderError as error:
            if error.status == 400:  # Groq could not decode the file
                raise BadAudioError(str(error)) from error
            raise
        text = (getattr(result, "text", "") or "").strip()
        duration = getattr(result, "duration", None)
        return Transcript(
            text=text,
            language=language_code(getattr(result, "language", None)),
            duration=float(duration) if duration is not None else None,
        )

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = object()


class PlainEventStream(AsyncStream[object]):
    """Groq's streamed chat answer as plain dicts, one per server-sent event.

    Same events, errors and end as the SDK's ``AsyncStream`` (``[DONE]`` ends it, an event
    carrying ``error`` raises ``groq.APIError``, a named event comes as ``{"data", "event"}``),
    parsed with less work per event: the SDK's decoder and its ``Mapping`` checks were a fifth
    of the bot's CPU per streamed answer, with a token per event (bench/bench_turn.py, py-spy).
    """

    async def __stream__(self) -> AsyncIterator[object]:
        pending = b""
        finished = False
        async for data in self.response.aiter_bytes():
            if finished:
                continue  # read to the end, so the connection is released
            *events, pending = _EVENT_END.split(pending + data)
            for event in events:
                item = self._parse(event)
                if item is _DONE:
                    finished = True
                    break
                if item is not None:
                    yield item
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
            raise groq.APIError(message=message, request=self.response.request, body=error)
        return data if name is None else {"data": data, "event": name}


class PlainJSONCompletions(AsyncCompletions):
    """Groq's chat completions, posting the request body as it is.

    The SDK deep-transforms every request against its TypedDict schema (aliases, dates),
    which for a chat history is a no-op that costs 5-12 ms of CPU per call (measured with
    41 messages): more than everything else in a turn. ChatGroq hands us JSON-ready dicts,
    so the body is sent unchanged; everything else (auth, retries, streaming) is the SDK's.

    The answer comes back as plain dicts too (``cast_to=object``): ChatGroq accepts dicts and
    would ``model_dump()`` the SDK's pydantic objects straight back into them, and building
    those objects cost ~0.3 ms of CPU per streamed chunk, about half of streaming a reply
    (bench/bench_turn.py, profiled with py-spy).
    """

    async def create(  # type: ignore[override]
        self,
        *,
        messages: list[dict[str, Any]],
        model: str,
        stream: bool | None = False,
        extra_headers: Any = None,
        extra_query: Any = None,
        extra_body: Any = None,
        timeout: Any = NOT_GIVEN,
        **params: Any,
    ) -> Any:
        body = {"messages": messages, "model": model, "stream": bool(stream)}
        body.update((k, v) for k, v in params.items() if not isinstance(v, (NotGiven, Omit)))
        answer = await self._post(
            "/openai/v1/chat/completions",
            body=body,
            options=make_request_options(
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body, timeout=timeout
            ),
            cast_to=object,
            stream=bool(stream),
            stream_cls=PlainEventStream,
        )
        if not stream and not isinstance(answer, dict):  # the SDK hands a non-JSON body back as text
            raise MalformedAnswer(f"a {type(answer).__name__} body where a chat completion belongs")
        return answer


def build_groq_chat_model(settings: Settings, http_client: httpx.AsyncClient) -> BaseChatModel:
    """ChatGroq for ``LLM_MODEL`` (Groq retires ids; default ``llama-3.1-8b-instant``).

    ``http_client`` is ours to close (ChatGroq never closes the one it would make itself).
    """
    from langchain_groq import ChatGroq

    client = groq.AsyncGroq(
        api_key=_api_key(settings),
        base_url=settings.groq_base_url,
        max_retries=0,
        timeout=settings.provider_timeout,
        http_client=http_client,
    )
    return ChatGroq(
        async_client=PlainJSONCompletions(client),
        http_async_client=http_client,
        model=settings.llm_model,
        api_key=_api_key(settings),
        base_url=settings.groq_base_url,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
        max_retries=0,
        timeout=settings.provider_timeout,
    )
