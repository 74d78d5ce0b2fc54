"""A local stand-in for ElevenLabs text-to-speech that returns real audio.

``POST /v1/text-to-speech/{voice_id}`` and ``.../stream`` answer with audio PyAV made: a
beep pattern whose length follows the text (``seconds_per_char``, clamped to
``[min_seconds, max_seconds]``), so a test can check the duration of what it got. The
pitch pattern depends on the text, so different texts give different bytes.

Formats: ``opus_48000_{32,64,96,128,192}`` -> OGG/Opus 48 kHz mono (``audio/ogg``);
``mp3_*`` -> MP3 (``audio/mpeg``, also the default when ``output_format`` is omitted, as
the real API does); ``pcm_*`` -> raw s16le; ``wav_*`` -> WAV. ``ulaw_8000``/``alaw_8000``
and anything else -> 400 ``unsupported_output_format`` (the fake's own refusal).

The real SDK sends ``xi-api-key`` and query ``output_format``; note that its streaming
calls (``convert`` and ``stream`` both stream) do *not* retry 429/5xx, only plain requests do.
"""

from __future__ import annotations

import asyncio
import secrets
import zlib
from functools import lru_cache
from typing import Any

from aiohttp import web

from tests.fakes import audio_samples
from tests.fakes.http_fake import HttpFake, RecordedRequest, Streamed, chunked, json_response

MODELS = frozenset(
    {
        "eleven_flash_v2_5",
        "eleven_turbo_v2_5",
        "eleven_multilingual_v2",
        "eleven_flash_v2",
        "eleven_turbo_v2",
        "eleven_monolingual_v1",
        "eleven_multilingual_v1",
        "eleven_v3",
    }
)
DEFAULT_MODEL = "eleven_multilingual_v2"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
NOT_AUDIO = b"<html><body>This is not audio, whatever the content type says.</body></html>\n" * 4


class UnsupportedFormat(ValueError):
    """An ``output_format`` the fake cannot (or the API does not) produce."""


@lru_cache(maxsize=64)
def render(output_format: str, seconds: float, seed: int) -> tuple[bytes, str]:
    """Audio bytes and content type for ``output_format``; cached, the encoding is the slow part."""
    kind, _, rest = output_format.partition("_")
    parts = rest.split("_")
    try:
        if kind == "opus" and parts[0] == "48000" and parts[1] in {"32", "64", "96", "128", "192"}:
            return audio_samples.beeps_ogg(seconds, bit_rate=int(parts[1]) * 1000, seed=seed), "audio/ogg"
        if kind == "mp3" and len(parts) == 2:
            rate, kbps = int(parts[0]), int(parts[1])
            pcm = audio_samples.beeps_pcm(seconds, rate=rate, seed=seed)
            data = audio_samples.encode_pcm(
                pcm, rate=rate, container="mp3", codec="libmp3lame", bit_rate=kbps * 1000
            )
            return data, "audio/mpeg"
        if kind in ("pcm", "wav") and len(parts) == 1:
            rate = int(parts[0])
            pcm = audio_samples.beeps_pcm(seconds, rate=rate, seed=seed)
            if kind == "pcm":
                return pcm, "application/octet-stream"
            return audio_samples.wav_from_pcm(pcm, rate), "audio/wav"
    except (ValueError, IndexError):
        pass
    raise UnsupportedFormat(output_format)


class FakeElevenLabs(HttpFake):
    """ElevenLabs TTS: ``POST /v1/text-to-speech/{voice_id}[/stream]``.

    Endpoint name for ``latency``: ``"tts"`` (before the first byte). ``chunk_size`` and
    ``chunk_delay`` shape the ``/stream`` body. ``voices`` (a set of ids) makes unknown
    voices 404; None accepts any id. ``bad_audio=True`` answers non-audio bytes labelled
    ``audio/ogg``. ``api_key=None`` accepts any key.
    """

    ENDPOINTS = ("tts",)

    def __init__(
        self,
        api_key: str | None = "el_test_fake_key",
        *,
        seconds_per_char: float = 0.06,
        min_seconds: float = 0.5,
        max_seconds: float = 30.0,
        chunk_size: int = 4096,
        chunk_delay: float = 0.0,
        bad_audio: bool = False,
        voices: set[str] | None = None,
        max_chars: int = 10_000,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.seconds_per_char = seconds_per_char
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        self.bad_audio = bad_audio
        self.voices = voices
        self.max_chars = max_chars
        self.route("POST", "/v1/text-to-speech/{voice_id}", self._tts, endpoint="tts")
        self.route("POST", "/v1/text-to-speech/{voice_id}/stream", self._tts, endpoint="tts")

    def expected_duration(self, text: str) -> float:
        """Seconds of audio the fake makes for ``text``."""
        seconds = len(text) * self.seconds_per_char
        return round(min(self.max_seconds, max(self.min_seconds, seconds)), 3)

    @property
    def tts_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/v1/text-to-speech/")

    # ------------------------------------------------------------------ errors

    def error_body(self, status: int, message: str) -> dict:
        statuses = {
            400: "invalid_request",
            401: "invalid_api_key",
            404: "not_found",
            429: "too_many_concurrent_requests",
            500: "internal_server_error",
            503: "service_unavailable",
        }
        return {"detail": {"status": statuses.get(status, "error"), "message": message}}

    def _detail(self, status: int, detail_status: str, message: str) -> web.Response:
        return json_response({"detail": {"status": detail_status, "message": message}}, status)

    @staticmethod
    def _missing(field: str, value: Any) -> web.Response:
        """FastAPI's 422 validation shape, as ElevenLabs answers a missing or invalid field."""
        return json_response(
            {"detail": [{"type": "missing", "loc": ["body", field], "msg": "Field required", "input": value}]}, 422
        )

    # ------------------------------------------------------------------ handler

    async def _tts(self, request: web.Request, recorded: RecordedRequest) -> web.Response | Streamed:
        if self.api_key is not None and recorded.headers.get("xi-api-key") != self.api_key:
            return self._detail(401, "invalid_api_key", "Invalid API key")
        voice_id = request.match_info["voice_id"]
        if self.voices is not None and voice_id not in self.voices:
            return self._detail(404, "voice_not_found", f"A voice with voice_id {voice_id} does not exist.")
        body = recorded.json
        if not isinstance(body, dict):
            return self._missing("text", None)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return self._missing("text", body)
        model_id = body.get("model_id") or DEFAULT_MODEL
        if model_id not in MODELS:
            return self._detail(400, "model_not_found", f"A model with model ID {model_id} does not exist.")
        if len(text) > self.max_chars:
            return self._detail(
                400, "max_character_limit_exceeded", f"Text is {len(text)} characters, the limit is {self.max_chars}."
            )
        output_format = recorded.query.get("output_format") or DEFAULT_OUTPUT_FORMAT
        headers = {
            "request-id": secrets.token_hex(10),
            "history-item-id": secrets.token_hex(10),
            "character-cost": str(len(text)),
        }
        if self.bad_audio:
            data, content_type = NOT_AUDIO, "audio/ogg"
        else:
            try:
                data, content_type = await asyncio.to_thread(
                    render, output_format, self.expected_duration(text), zlib.crc32(text.encode()) % 1000
                )
            except UnsupportedFormat:
                return self._detail(
                    400, "unsupported_output_format", f"output_format {output_format} is not supported by the fake"
                )
        if request.path.endswith("/stream"):
            chunks = chunked(data, self.chunk_size)
            return Streamed(chunks, headers=headers, content_type=content_type, delay=self.chunk_delay)
        return web.Response(body=data, headers={**headers, "Content-Type": content_type})
