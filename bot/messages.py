"""The core's message types: what adapters push in and what they get back.

Adapters translate a platform event into an :class:`IncomingMessage` and deliver a
:class:`Reply` with their platform's rules. Nothing here knows a platform.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


class ChatKind(enum.StrEnum):
    PRIVATE = "private"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class Audio:
    """Audio bytes as they came from the platform.

    ``format`` is the container name a speech-to-text service understands
    (``ogg`` for Telegram/Discord voice notes, ``wav``, ``mp3``, ``m4a``, ``webm``...).
    ``declared_seconds`` and ``declared_bytes`` are what the platform claimed before
    download, if anything, so over-long or oversized files can be refused without fetching
    them (the adapter then passes empty ``data``).

    An adapter may leave ``data`` empty and give ``fetch`` instead: the core then downloads
    only after those checks pass, and only once per message id (a redelivered update is not
    downloaded again).
    """

    data: bytes = b""
    format: str = "ogg"
    declared_seconds: float | None = None
    declared_bytes: int | None = None
    fetch: Callable[[], Awaitable[bytes]] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One user message, platform-free.

    ``chat_id`` and ``user_id`` are strings so every platform's ids fit; the pair
    (``platform``, ``chat_id``) keys a chat's history and ``message_id`` is unique
    within that chat, which is how a redelivered update is answered once.
    """

    platform: str
    chat_id: str
    user_id: str
    message_id: str
    text: str | None = None
    audio: Audio | None = None
    kind: ChatKind = ChatKind.PRIVATE
    mentioned: bool = False
    replied_to_bot: bool = False
    thread_id: str | None = None
    user_name: str | None = None
    # The adapter already decided the bot must answer (e.g. Discord's own channel).
    always_answer: bool = False
    # The sender may change this group's settings (group admin / Manage Server).
    sender_is_admin: bool = False

    @property
    def is_group(self) -> bool:
        return self.kind is ChatKind.GROUP

    @property
    def chat_key(self) -> tuple[str, str]:
        return (self.platform, self.chat_id)


@dataclass(frozen=True, slots=True)
class VoiceNote:
    """A spoken reply: OGG/Opus bytes a platform accepts as a voice note as they are."""

    data: bytes
    duration: float
    mime_type: str = "audio/ogg"


@dataclass(frozen=True, slots=True)
class Video:
    data: bytes
    mime_type: str = "video/mp4"


class ReplyKind(enum.StrEnum):
    ANSWER = "answer"  # a normal answer from the LLM
    NOTICE = "notice"  # a clear message about a problem (bad audio, rate limit, refusal...)


@dataclass(slots=True)
class Reply:
    """What the core hands back for one turn.

    ``text`` is always set. ``voice`` is missing when voice is off or synthesis failed
    (the text still goes out). The avatar clip never holds up text and voice: it is
    delivered later through :meth:`ReplySink.deliver_video`.
    """

    text: str
    kind: ReplyKind = ReplyKind.ANSWER
    transcript: str | None = None
    language: str | None = None
    voice: VoiceNote | None = None
    show_transcript: bool = False
    reply_to_message_id: str | None = None
    thread_id: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "voice unavailable", for logs/UI


class Stage(enum.StrEnum):
    """What the bot is busy with, so an adapter can show a chat action."""

    TRANSCRIBING = "transcribing"
    THINKING = "thinking"
    SPEAKING = "speaking"
    UPLOADING_VOICE = "uploading_voice"
    RENDERING_VIDEO = "rendering_video"
