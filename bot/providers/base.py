"""The small interfaces every provider implements.

Speech-to-text, text-to-speech and avatar rendering each have one abstract class here and
one file per vendor beside it. The LLM is a LangChain chat model (``BaseChatModel``), so
any LangChain model works and the pipeline streams it with ``astream``.
Providers raise :class:`bot.errors.ProviderError` for anything that went wrong.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from bot.messages import Audio, Video, VoiceNote


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    language: str | None = None
    duration: float | None = None  # seconds of audio heard, for usage accounting


class SpeechToText(abc.ABC):
    """Turns audio into text."""

    name: str = "stt"

    @abc.abstractmethod
    async def transcribe(self, audio: Audio) -> Transcript: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or models."""


class TextToSpeech(abc.ABC):
    """Turns text into an OGG/Opus voice note."""

    name: str = "tts"

    @abc.abstractmethod
    async def synthesize(self, text: str, voice: str | None = None) -> VoiceNote:
        """Speak ``text`` with ``voice`` (a provider voice id; None = default)."""

    async def aclose(self) -> None:  # noqa: B027
        """Release connections or models."""


class AvatarRenderer(abc.ABC):
    """Turns a reply (text and its voice note) into a talking-avatar clip."""

    name: str = "avatar"

    @abc.abstractmethod
    async def render(self, text: str, voice: VoiceNote | None) -> Video: ...

    async def aclose(self) -> None:  # noqa: B027
        """Release connections."""
