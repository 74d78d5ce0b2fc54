"""ElevenLabs text-to-speech, asking for ``opus_48000_64``: the bytes are a voice note as they are.

Telegram and Discord take that OGG/Opus unchanged, so nothing is transcoded. The key is
passed explicitly (the SDK would otherwise read ``ELEVENLABS_API_KEY`` at import time).
"""

from __future__ import annotations

import httpx
from elevenlabs.client import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError

from bot.audio import is_ogg_opus, ogg_opus_duration
from bot.config import Settings
from bot.errors import ConfigError, ProviderError
from bot.messages import VoiceNote
from bot.providers.base import TextToSpeech
from bot.providers.http import provider_http_client
from bot.retry import CircuitBreaker, call_with_retries, parse_retry_after

#: Read the audio in pieces this big. The SDK's default, 1 kB, made a 55 kB voice note 55
#: reads through httpx and its transport: ~0.1 ms of CPU more per call (bench/bench_units.py).
AUDIO_READ_BYTES = 1 << 20


def classify_elevenlabs_error(exc: BaseException) -> ProviderError | None:
    if isinstance(exc, ApiError):
        status = exc.status_code or 0
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        retry_after = parse_retry_after(headers.get("retry-after"))
        retryable = status == 429 or status >= 500
        return ProviderError("elevenlabs", f"{status}", retryable=retryable, retry_after=retry_after, status=status)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("elevenlabs", "timed out", retryable=True)
    if isinstance(exc, httpx.TransportError):
        return ProviderError("elevenlabs", f"connection failed: {type(exc).__name__}", retryable=True)
    return None


class ElevenLabsTTS(TextToSpeech):
    name = "elevenlabs"

    def __init__(self, settings: Settings, breaker: CircuitBreaker | None = None) -> None:
        key = Settings.secret(settings.elevenlabs_api_key)
        if not key:
            raise ConfigError("ELEVENLABS_API_KEY is not set; it is needed for the ElevenLabs voice.")
        self._settings = settings
        self._http = provider_http_client(settings)
        kwargs = {"base_url": settings.elevenlabs_base_url} if settings.elevenlabs_base_url else {}
        # The SDK passes its own timeout (240 s by default) with every request, overriding the
        # client's: give it ours, or a hanging request holds the turn for four minutes.
        self._client = AsyncElevenLabs(
            api_key=key, httpx_client=self._http, timeout=settings.provider_timeout, **kwargs
        )
        self._breaker = breaker or CircuitBreaker("voice")

    async def synthesize(self, text: str, voice: str | None = None) -> VoiceNote:
        voice_id = voice or self._settings.elevenlabs_voice_id

        async def call() -> bytes:
            chunks = []
            async for chunk in self._client.text_to_speech.convert(
                voice_id,
                text=text,
                model_id=self._settings.elevenlabs_model_id,
                output_format=self._settings.elevenlabs_output_format,
                request_options={"max_retries": 0, "chunk_size": AUDIO_READ_BYTES},
            ):
                chunks.append(chunk)
            return b"".join(chunks)

        data = await call_with_retries(
            call, classify=classify_elevenlabs_error,
            attempts=self._settings.provider_retries + 1, breaker=self._breaker,
        )
        if not is_ogg_opus(data):
            raise ProviderError("elevenlabs", f"returned {len(data)} bytes that are not OGG/Opus")
        return VoiceNote(data=data, duration=ogg_opus_duration(data))

    async def aclose(self) -> None:
        await self._http.aclose()
