"""Delivering a turn's output on Discord: text under 2000 characters, a real voice message, the
avatar clip, a typing indicator while the bot works.

discord.py 2.7 cannot send a voice message, so :func:`send_voice_message` builds the request
itself on discord.py's HTTP client (its session, auth, and 429 handling): a multipart body with
``payload_json`` (flags 8192, the attachment's ``duration_secs`` and ``waveform``) and the
OGG/Opus bytes as ``files[0]``, no text. Where a channel refuses voice messages (50173, or the
bot lacks Send Voice Messages) the audio goes out as an ordinary attachment instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord.http import Route

from bot.audio import is_ogg_opus, ogg_opus_duration, waveform
from bot.messages import Reply, Stage, Video, VoiceNote
from bot.text import split_for_platform

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
VOICE_MESSAGE_FLAG = 1 << 13
VOICE_MESSAGE_REFUSED = 50173  # "Cannot send voice messages in this channel"
WAVEFORM_POINTS_PER_SECOND = 10  # what Discord's own clients record, at most 256 in all
TYPING_RENEW_SECONDS = 8.0  # a typing indicator shows for about 10 s

#: Plays a reply's voice in a voice channel, when the bot is in one for this channel's server.
Speaker = Callable[[bytes], Awaitable[None]]


def reply_text(reply: Reply) -> str:
    """The text to post: what the bot heard (quoted) when transcripts are on, then the answer."""
    if not (reply.show_transcript and reply.transcript):
        return reply.text
    heard = "\n".join(f"> {line}" for line in reply.transcript.strip().splitlines() if line.strip())
    return f"> 🎙️ *heard:*\n{heard}\n\n{reply.text}"


def waveform_points(duration: float) -> int:
    return max(1, min(256, round(duration * WAVEFORM_POINTS_PER_SECOND)))


async def send_voice_message(
    http: discord.http.HTTPClient, channel_id: int, data: bytes, *, duration: float, samples: str
) -> dict:
    """POST a voice message (flags 8192, one ``voice-message.ogg``, no text); returns the message JSON."""
    payload = {
        "flags": VOICE_MESSAGE_FLAG,
        "attachments": [
            {"id": 0, "filename": "voice-message.ogg", "duration_secs": round(duration, 3), "waveform": samples}
        ],
    }
    form: list[dict[str, Any]] = [
        {"name": "payload_json", "value": json.dumps(payload)},
        {"name": "files[0]", "value": data, "filename": "voice-message.ogg", "content_type": "audio/ogg"},
    ]
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
    return await http.request(route, form=form)


def refuses_voice_messages(error: discord.HTTPException) -> bool:
    """50173, or a 403 (no Send Voice Messages permission): a plain attachment may still go."""
    return error.code == VOICE_MESSAGE_REFUSED or isinstance(error, discord.Forbidden)


async def send_voice(channel: discord.abc.Messageable, http: discord.http.HTTPClient, voice: VoiceNote) -> None:
    """The spoken reply as a voice message, or as an audio attachment where that is refused."""
    channel_id: int = channel.id  # type: ignore[attr-defined]  # every channel we answer in has one
    if is_ogg_opus(voice.data):
        duration = ogg_opus_duration(voice.data) or voice.duration
        try:
            samples = await asyncio.to_thread(waveform, voice.data, waveform_points(duration))
            await send_voice_message(http, channel_id, voice.data, duration=duration, samples=samples)
            return
        except discord.HTTPException as error:
            if not refuses_voice_messages(error):
                raise
            log.info("channel %s refuses voice messages (%s): sending an audio file", channel_id, error.code)
        except ValueError as error:  # undecodable audio: no waveform, send it as a file
            log.warning("no waveform for the voice reply: %s", error)
    extension = "ogg" if is_ogg_opus(voice.data) else voice.mime_type.rsplit("/", 1)[-1]
    await channel.send(file=discord.File(io.BytesIO(voice.data), filename=f"reply.{extension}"))


class TypingIndicator:
    """"Voicebot is typing..." until stopped; renewed every few seconds, failures ignored."""

    def __init__(self, channel: discord.abc.Messageable) -> None:
        self._channel = channel
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(discord.HTTPException, OSError):
                await self._channel.typing()
            await asyncio.sleep(TYPING_RENEW_SECONDS)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class ChannelSink:
    """A :class:`ReplySink` for one Discord message: answers in its channel, replying to it."""

    streams_text = False

    def __init__(self, message: discord.Message, http: discord.http.HTTPClient, speaker: Speaker | None,
                 *, addressed: bool = True) -> None:
        self.message = message
        self.http = http
        self.speaker = speaker
        self.addressed = addressed
        self.typing = TypingIndicator(message.channel)

    async def stage(self, stage: Stage) -> None:
        """Typing while working; for unaddressed chatter only once the core decided to answer."""
        if stage is Stage.RENDERING_VIDEO:  # after delivery: one indicator, not a loop
            with contextlib.suppress(discord.HTTPException, OSError):
                await self.message.channel.typing()
        elif self.addressed or stage is not Stage.TRANSCRIBING:
            self.typing.start()

    async def text_delta(self, text_so_far: str) -> None:
        return None

    async def deliver(self, reply: Reply) -> None:
        """Text first (raises if Discord refused it), then the voice message and the voice channel."""
        self.typing.stop()
        channel = self.message.channel
        first, *rest = split_for_platform(reply_text(reply), MESSAGE_LIMIT) or ["…"]
        await channel.send(first, reference=self.message.to_reference(fail_if_not_exists=False))
        for chunk in rest:
            await channel.send(chunk)
        if reply.voice is None:
            return
        try:
            await send_voice(channel, self.http, reply.voice)
        except (discord.HTTPException, OSError):  # the text is out: keep the turn answered
            log.exception("the voice reply could not be sent to channel %s", channel.id)
        if self.speaker is not None:
            await self.speaker(reply.voice.data)

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        extension = video.mime_type.rsplit("/", 1)[-1] or "mp4"
        await self.message.channel.send(
            file=discord.File(io.BytesIO(video.data), filename=f"avatar.{extension}"),
            reference=self.message.to_reference(fail_if_not_exists=False),
        )

    def close(self) -> None:
        """Stop the typing indicator when the core settled the turn without a reply."""
        self.typing.stop()


class InteractionSink:
    """A :class:`ReplySink` for a slash command: answers through the (deferred) interaction."""

    streams_text = False

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.delivered = False

    async def stage(self, stage: Stage) -> None:
        return None

    async def text_delta(self, text_so_far: str) -> None:
        return None

    async def deliver(self, reply: Reply) -> None:
        await send_to_interaction(self.interaction, reply.text, ephemeral=self.ephemeral)
        self.delivered = True

    async def close(self) -> None:
        """Remove the "thinking..." placeholder when the core chose silence (a user refused before)."""
        if not self.delivered:
            with contextlib.suppress(discord.HTTPException):
                await self.interaction.delete_original_response()

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        return None


async def send_to_interaction(interaction: discord.Interaction, text: str, *, ephemeral: bool) -> None:
    """Answer a slash command: the interaction response if still open, else follow-up messages."""
    for chunk in split_for_platform(text, MESSAGE_LIMIT):
        if interaction.response.is_done():
            await interaction.followup.send(chunk, ephemeral=ephemeral)
        else:
            await interaction.response.send_message(chunk, ephemeral=ephemeral)
