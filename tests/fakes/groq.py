"""A local stand-in for Groq's OpenAI-compatible API: Whisper transcriptions and chat.

It speaks the wire protocol the real ``groq`` SDK and ``langchain-groq`` use, so tests run
those libraries unchanged against ``http://127.0.0.1:<port>`` (pass ``base_url`` without
``/openai/v1``: the SDK appends it). What the fake answers is chosen by the test:
transcripts are registered per audio clip (sha256 of the uploaded bytes) and the chat reply
comes from ``reply_fn(messages)``, deterministic by default.

Facts copied from the real service (see the report in tests/fakes and WIRE-NOTES.md):
- the upload's *file name extension* is checked, not its Content-Type: ``voice.oga`` -> 400;
- transcript text starts with a space (" Hello"), as Whisper's does;
- ``verbose_json`` reports ``language`` as a capitalised English name ("English"), not a code;
- ``response_format=text`` answers ``text/plain``, so the SDK returns a bare ``str``;
- a streamed chat ends with a chunk carrying ``finish_reason`` and ``x_groq.usage`` (plus a
  top-level ``usage``), then ``data: [DONE]``; langchain-groq reads ``x_groq.usage``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import audio_samples
from tests.fakes.audio_samples import looks_like_audio
from tests.fakes.http_fake import HttpFake, RecordedRequest, Streamed, json_response, sse

API = "/openai/v1"
ACCEPTED_EXTENSIONS = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "opus", "wav", "webm")
DECOMMISSIONED_MODELS = frozenset({"llama3-8b-8192", "llama3-70b-8192", "mixtral-8x7b-32768", "gemma-7b-it"})

ReplyFn = Callable[[list[dict[str, Any]]], "str | Awaitable[str]"]

# Whisper's language table (openai/whisper tokenizer.py): ISO code -> English name.
WHISPER_LANGUAGES: dict[str, str] = dict(
    pair.split(":")
    for pair in (
        "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french ja:japanese pt:portuguese "
        "tr:turkish pl:polish ca:catalan nl:dutch ar:arabic sv:swedish it:italian id:indonesian hi:hindi "
        "fi:finnish vi:vietnamese he:hebrew uk:ukrainian el:greek ms:malay cs:czech ro:romanian da:danish "
        "hu:hungarian ta:tamil no:norwegian th:thai ur:urdu hr:croatian bg:bulgarian lt:lithuanian la:latin "
        "mi:maori ml:malayalam cy:welsh sk:slovak te:telugu fa:persian lv:latvian bn:bengali sr:serbian "
        "az:azerbaijani sl:slovenian kn:kannada et:estonian mk:macedonian br:breton eu:basque is:icelandic "
        "hy:armenian ne:nepali mn:mongolian bs:bosnian kk:kazakh sq:albanian sw:swahili gl:galician mr:marathi "
        "pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba so:somali af:afrikaans oc:occitan ka:georgian "
        "be:belarusian tg:tajik sd:sindhi gu:gujarati am:amharic yi:yiddish lo:lao uz:uzbek fo:faroese "
        "ht:haitian_creole ps:pashto tk:turkmen nn:nynorsk mt:maltese sa:sanskrit lb:luxembourgish my:myanmar "
        "bo:tibetan tl:tagalog mg:malagasy as:assamese tt:tatar haw:hawaiian ln:lingala ha:hausa ba:bashkir "
        "jw:javanese su:sundanese yue:cantonese"
    ).split()
)

def language_name(code_or_name: str) -> str:
    """``"en"`` -> ``"English"``: how Groq's verbose_json names a language (a name, capitalised)."""
    name = WHISPER_LANGUAGES.get(code_or_name.lower(), code_or_name)
    return name.replace("_", " ").title()


def default_reply(messages: list[dict[str, Any]]) -> str:
    """``You said: <last user text>. I have <n> earlier messages.`` (n excludes system ones)."""
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    earlier = [m for m in messages[:-1] if m.get("role") != "system"]
    return f"You said: {content_text(last_user.get('content'))}. I have {len(earlier)} earlier messages."


def content_text(content: Any) -> str:
    """A message's text whether ``content`` is a string or a list of parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def estimate_tokens(text: str) -> int:
    """A deterministic token count: one per 4 characters, at least one for non-empty text."""
    return max(1, len(text) // 4) if text else 0


@dataclass(frozen=True, slots=True)
class RegisteredTranscript:
    text: str
    language: str = "en"


class FakeGroq(HttpFake):
    """Groq's ``/openai/v1/audio/transcriptions`` and ``/openai/v1/chat/completions``.

    Endpoint names for ``latency``: ``"stt"`` and ``"chat"`` (for a streamed chat the
    latency comes before the first byte; ``token_delay`` is added between chunks).
    ``api_key=None`` accepts any bearer token.
    """

    ENDPOINTS = ("stt", "chat")

    def __init__(
        self,
        api_key: str | None = "gsk_test_fake_groq_key",
        *,
        default_transcript: str = "Hello from the fake Groq.",
        default_language: str = "en",
        reply_fn: ReplyFn | None = None,
        token_delay: float = 0.0,
        retry_after: float = 1.0,
        max_upload_bytes: int = 25 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.default_transcript = default_transcript
        self.default_language = default_language
        self.reply_fn: ReplyFn = reply_fn or default_reply
        self.token_delay = token_delay
        #: Seconds sent in ``retry-after`` with a 429 (the real service sends whole seconds).
        self.retry_after = retry_after
        self.max_upload_bytes = max_upload_bytes
        #: Prepended to transcript text, as Whisper does; set to "" to turn off.
        self.leading_space = " "
        self.transcripts: dict[str, RegisteredTranscript] = {}
        self.route("POST", f"{API}/audio/transcriptions", self._transcribe, endpoint="stt")
        self.route("POST", f"{API}/chat/completions", self._chat, endpoint="chat")

    # ------------------------------------------------------------------ test controls

    def set_transcript(self, audio: bytes, text: str, language: str = "en") -> str:
        """Answer ``text`` (spoken in ``language``, an ISO code) when exactly ``audio`` is uploaded.

        Returns the sha256 hex digest used as the key.
        """
        key = hashlib.sha256(audio).hexdigest()
        self.transcripts[key] = RegisteredTranscript(text, language)
        return key

    @property
    def transcription_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/audio/transcriptions")

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/chat/completions")

    @property
    def last_messages(self) -> list[dict[str, Any]]:
        """The ``messages`` of the last chat request (system prompt and history included)."""
        bodies = [r.json for r in self.chat_requests if isinstance(r.json, dict)]
        return list(bodies[-1].get("messages", [])) if bodies else []

    # ------------------------------------------------------------------ errors

    def error_body(self, status: int, message: str) -> dict:
        kinds = {
            400: ("invalid_request_error", None),
            401: ("invalid_request_error", "invalid_api_key"),
            404: ("invalid_request_error", "unknown_url"),
            413: ("invalid_request_error", "request_too_large"),
            429: ("requests", "rate_limit_exceeded"),
            498: ("service_unavailable", "flex_tier_capacity_exceeded"),
            500: ("internal_server_error", None),
            502: ("bad_gateway", None),
            503: ("service_unavailable", None),
        }
        error_type, code = kinds.get(status, ("api_error", None))
        if status == 429 and message.startswith("injected"):
            message = (
                "Rate limit reached for model `llama-3.1-8b-instant` in organization `org_fake` service tier "
                f"`on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in "
                f"{self.retry_after:g}s."
            )
        error: dict[str, Any] = {"message": message, "type": error_type}
        if code:
            error["code"] = code
        return {"error": error}

    def error_headers(self, status: int) -> dict[str, str]:
        headers = {"x-request-id": _request_id()}
        if status == 429:
            headers["retry-after"] = f"{self.retry_after:g}"
            headers.update(_ratelimit_headers(remaining_requests=0))
        return headers

    def _invalid(self, message: str, code: str | None = None, status: int = 400) -> web.Response:
        body = self.error_body(status, message)
        if code:
            body["error"]["code"] = code
        return json_response(body, status, self.error_headers(status))

    def _check_auth(self, recorded: RecordedRequest) -> web.Response | None:
        if self.api_key is None or recorded.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return self.error(401, "Invalid API Key")

    # ------------------------------------------------------------------ transcriptions

    async def _transcribe(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        if not recorded.headers.get("content-type", "").startswith("multipart/form-data"):
            return self._invalid("request Content-Type isn't multipart/form-data")
        form = recorded.form
        model = form.get("model", "")
        if not model:
            return self._invalid("'model' : property 'model' is missing")
        if model in DECOMMISSIONED_MODELS:
            return self._decommissioned(model)
        upload = recorded.files.get("file")
        if upload is None:
            return self._invalid("either file or url must be provided")
        if len(upload.data) > self.max_upload_bytes:
            return self._invalid("Request Entity Too Large", "request_too_large", status=413)
        name = upload.filename or ""
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if extension not in ACCEPTED_EXTENSIONS:
            return self._invalid(
                f"file must be one of the following types: [{' '.join(ACCEPTED_EXTENSIONS)}]",
                "unsupported_audio_format",
            )
        response_format = form.get("response_format", "json")
        if response_format not in ("json", "text", "verbose_json"):
            return self._invalid(f"response_format `{response_format}` must be one of json, text, verbose_json")
        language = form.get("language") or None
        if language is not None and language.lower() not in WHISPER_LANGUAGES:
            return self._invalid(f"language `{language}` is not a valid ISO-639-1 code")
        temperature = form.get("temperature")
        if temperature is not None and not _in_range(temperature, 0.0, 1.0):
            return self._invalid("'temperature' : number must be between 0 and 1")
        duration = await self._audio_duration(upload.data)
        if duration is None:
            return self._invalid("could not process file - is it a valid media file?", "invalid_file")

        registered = self.transcripts.get(hashlib.sha256(upload.data).hexdigest())
        text = registered.text if registered else self.default_transcript
        spoken = registered.language if registered else self.default_language
        text = self.leading_space + text if text else text
        headers = {"x-request-id": _request_id(), **_ratelimit_headers()}
        if response_format == "text":
            return web.Response(text=text, content_type="text/plain", charset="UTF-8", headers=headers)
        payload: dict[str, Any] = {"text": text, "x_groq": {"id": _request_id()}}
        if response_format == "verbose_json":
            granularities = {v for k, v in recorded.form_items if k.startswith("timestamp_granularities")}
            payload = {
                "task": "transcribe",
                "language": language_name(language or spoken),
                "duration": round(duration, 6),
                "text": text,
                "segments": _segments(text, duration) if granularities != {"word"} else None,
                **({"words": _words(text, duration)} if "word" in granularities else {}),
                "x_groq": {"id": _request_id()},
            }
        return json_response(payload, headers=headers)

    async def _audio_duration(self, data: bytes) -> float | None:
        """Seconds of audio, or None if Groq would refuse the bytes as media."""
        if not data or not looks_like_audio(data):
            return None
        try:
            return await asyncio.to_thread(audio_samples.audio_duration, data)
        except Exception:  # noqa: BLE001 - any decode failure is "not a valid media file"
            return None

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: web.Request, recorded: RecordedRequest) -> web.Response | Streamed:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        body = recorded.json
        if not isinstance(body, dict):
            return self._invalid("We could not parse the JSON body of your request.")
        model = body.get("model")
        if not model:
            return self._invalid("'model' : property 'model' is missing")
        if model in DECOMMISSIONED_MODELS:
            return self._decommissioned(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._invalid("'messages' : minimum number of items is 1")
        if body.get("n") not in (None, 1):
            return self._invalid("'n' : number must be at most 1")

        reply = self.reply_fn(messages)
        if inspect.isawaitable(reply):
            reply = await reply
        pieces, finish_reason = _limit(str(reply), body)
        completion_id = f"chatcmpl-{secrets.token_hex(16)}"
        created = int(time.time())
        usage = _usage(messages, pieces)
        headers = {"x-request-id": _request_id(), **_ratelimit_headers()}
        common = {"id": completion_id, "created": created, "model": model, "system_fingerprint": "fp_fake0groq"}
        if not body.get("stream"):
            return json_response(
                {
                    **common,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(pieces)},
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                    "usage_breakdown": None,
                    "x_groq": {"id": _request_id()},
                    "service_tier": body.get("service_tier") or "on_demand",
                },
                headers=headers,
            )
        request_id = _request_id()
        chunk = {**common, "object": "chat.completion.chunk"}

        def delta(d: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}

        events: list[dict[str, Any]] = [
            {**chunk, "choices": [delta({"role": "assistant", "content": ""})], "x_groq": {"id": request_id}}
        ]
        events += [{**chunk, "choices": [delta({"content": piece})]} for piece in pieces]
        events.append(
            {
                **chunk,
                "choices": [delta({}, finish_reason)],
                "x_groq": {"id": request_id, "usage": usage},
                "usage": usage,
            }
        )
        return Streamed(sse(events), headers=headers, content_type="text/event-stream", delay=self.token_delay)

    def _decommissioned(self, model: str) -> web.Response:
        return self._invalid(
            f"The model `{model}` has been decommissioned and is no longer supported. Please refer to "
            "https://console.groq.com/docs/deprecations for a recommendation on which model to use instead.",
            "model_decommissioned",
        )


# ---------------------------------------------------------------------- helpers


def _request_id() -> str:
    return "req_" + secrets.token_hex(13)


def _ratelimit_headers(remaining_requests: int = 14_399) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-remaining-tokens": "5990" if remaining_requests else "0",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-reset-tokens": "100ms",
    }


def _in_range(value: str, low: float, high: float) -> bool:
    try:
        return low <= float(value) <= high
    except ValueError:
        return False


def _limit(reply: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """The reply as word pieces (" word"), cut at a stop sequence or ``max_tokens`` pieces."""
    finish_reason = "stop"
    stops = body.get("stop")
    for stop in [stops] if isinstance(stops, str) else stops or []:
        if stop and stop in reply:
            reply = reply[: reply.index(stop)]
    pieces = re.findall(r"\s*\S+", reply) or ([reply] if reply else [])
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, finish_reason = pieces[:limit], "length"
    return pieces, finish_reason


def _usage(messages: list[dict[str, Any]], pieces: list[str]) -> dict[str, Any]:
    prompt = sum(estimate_tokens(content_text(m.get("content"))) + 4 for m in messages)
    completion = len(pieces)
    return {
        "queue_time": 0.01,
        "prompt_tokens": prompt,
        "prompt_time": 0.001,
        "completion_tokens": completion,
        "completion_time": 0.002 * completion,
        "total_tokens": prompt + completion,
        "total_time": 0.001 + 0.002 * completion,
    }


def _segments(text: str, duration: float) -> list[dict[str, Any]]:
    """Whisper-style segments: one per sentence, spread over the audio by text length."""
    sentences = re.findall(r"[^.!?]+[.!?]*", text)
    total = sum(len(s) for s in sentences) or 1
    segments, start = [], 0.0
    for i, sentence in enumerate(sentences):
        end = round(duration if i == len(sentences) - 1 else start + duration * len(sentence) / total, 2)
        segments.append(
            {
                "id": i,
                "seek": 0,
                "start": round(start, 2),
                "end": end,
                "text": sentence,
                "tokens": list(range(50364, 50364 + estimate_tokens(sentence))),
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.1,
                "no_speech_prob": 0.01,
            }
        )
        start = end
    return segments


def _words(text: str, duration: float) -> list[dict[str, Any]]:
    words = text.split()
    step = duration / len(words) if words else 0.0
    return [{"word": w, "start": round(i * step, 2), "end": round((i + 1) * step, 2)} for i, w in enumerate(words)]
