"""D-ID talking avatar: create a talk, poll it with backoff until done, download the mp4.

With ``DID_USE_AUDIO`` (default) our synthesized voice is uploaded to ``/audios`` so the
avatar speaks with the same voice as the voice note; otherwise a text script with
``DID_VOICE_ID`` is used. Runs after the text and voice were delivered; it never delays them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bot.config import Settings
from bot.errors import ConfigError, ProviderError
from bot.messages import Video, VoiceNote
from bot.providers.base import AvatarRenderer
from bot.providers.http import provider_http_client
from bot.retry import CircuitBreaker, call_with_retries, parse_retry_after

_FINAL_FAILURES = {"error", "rejected"}


def classify_did_error(exc: BaseException) -> ProviderError | None:
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        return ProviderError("d-id", f"{status} {exc.response.text[:200]}", status=status,
                             retryable=status == 429 or status >= 500, retry_after=retry_after)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("d-id", "timed out", retryable=True)
    if isinstance(exc, httpx.TransportError):
        return ProviderError("d-id", f"connection failed: {type(exc).__name__}", retryable=True)
    if isinstance(exc, ValueError):  # a body that is not the JSON we expect
        return ProviderError("d-id", f"malformed response: {exc}", retryable=True)
    return None


class DIDAvatar(AvatarRenderer):
    name = "d-id"

    def __init__(self, settings: Settings, *, poll_interval: float = 0.5, breaker: CircuitBreaker | None = None) -> None:
        key = Settings.secret(settings.did_api_key)
        if not key:
            raise ConfigError("DID_API_KEY is not set; it is needed for the D-ID avatar.")
        self._settings = settings
        self._poll_interval = poll_interval
        self._http = provider_http_client(
            settings,
            base_url=settings.did_base_url.rstrip("/"),
            headers={"Authorization": f"Basic {key}", "Accept": "application/json"},
        )
        self._breaker = breaker or CircuitBreaker("avatar")

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        async def call() -> Any:
            response = await self._http.request(method, url, **kwargs)
            response.raise_for_status()
            return response.json()

        return await call_with_retries(
            call, classify=classify_did_error,
            attempts=self._settings.provider_retries + 1, breaker=self._breaker,
        )

    async def _script(self, text: str, voice: VoiceNote | None) -> dict[str, Any]:
        if voice is not None and self._settings.did_use_audio:
            uploaded = await self._request(
                "POST", "/audios", files={"audio": ("voice.ogg", voice.data, voice.mime_type)}
            )
            return {"type": "audio", "audio_url": uploaded["url"]}
        return {
            "type": "text",
            "input": text[:900],
            "provider": {"type": "microsoft", "voice_id": self._settings.did_voice_id},
        }

    async def render(self, text: str, voice: VoiceNote | None) -> Video:
        script = await self._script(text, voice)
        created = await self._request(
            "POST", "/talks",
            json={"source_url": self._settings.did_source_url, "script": script, "config": {"stitch": True}},
        )
        talk_id = created["id"]
        deadline = time.monotonic() + self._settings.did_timeout
        delay = self._poll_interval
        while True:
            talk = await self._request("GET", f"/talks/{talk_id}")
            status = talk.get("status")
            if status == "done" and talk.get("result_url"):
                break
            if status in _FINAL_FAILURES:
                raise ProviderError("d-id", f"talk {talk_id} {status}: {talk.get('error') or talk.get('result')}")
            if time.monotonic() + delay > deadline:
                raise ProviderError("d-id", f"talk {talk_id} not done after {self._settings.did_timeout:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        # The result lives on a CDN/S3 URL: fetch it without our credentials.
        async with httpx.AsyncClient(timeout=self._settings.provider_timeout) as plain:
            result = await plain.get(talk["result_url"])
        if result.status_code != 200 or not result.content:
            raise ProviderError("d-id", f"result download failed: {result.status_code}")
        return Video(data=result.content)

    async def aclose(self) -> None:
        await self._http.aclose()
