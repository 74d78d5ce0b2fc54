"""Speaking replies in a Discord voice channel: ``/join``, ``/leave``, leaving an empty channel.

The reply is already OGG/Opus, which is what Discord's voice connection carries, so
:class:`OggOpusSource` hands the Opus packets to discord.py's player as they are: no ffmpeg, no
re-encode. discord.py paces one packet per 20 ms, so a stream made of other frame sizes is
re-encoded once, in-process with PyAV, into 20 ms frames. Connecting needs discord.py's voice
extras (PyNaCl for transport encryption, davey for DAVE end-to-end encryption).

Listening in voice channels is not done: see docs/discord.md (DAVE).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import deque
from typing import Any

import discord
import discord.voice_client
import discord.voice_state
from discord.oggparse import OggError, OggStream

from bot.audio import decode_pcm, encode_ogg_opus

log = logging.getLogger(__name__)

FRAME_MS = 20.0
CONNECT_TIMEOUT = 20.0
_SILK_MS = (10.0, 20.0, 40.0, 60.0)
_HYBRID_MS = (10.0, 20.0)
_CELT_MS = (2.5, 5.0, 10.0, 20.0)


def packet_ms(packet: bytes) -> float:
    """Duration of one Opus packet from its TOC byte (RFC 6716, section 3.1)."""
    if not packet:
        return 0.0
    config, code = packet[0] >> 3, packet[0] & 0x03
    if config < 12:
        frame = _SILK_MS[config % 4]
    elif config < 16:
        frame = _HYBRID_MS[config % 2]
    else:
        frame = _CELT_MS[config % 4]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * count


def opus_packets(data: bytes) -> list[bytes]:
    """The Opus audio packets of an OGG/Opus stream, headers (OpusHead, OpusTags) left out."""
    try:
        packets = list(OggStream(io.BytesIO(data)).iter_packets())
    except OggError as error:
        raise ValueError(f"not an OGG stream: {error}") from error
    if not packets or not packets[0].startswith(b"OpusHead"):
        raise ValueError("not OGG/Opus")
    return [p for p in packets if p and not p.startswith((b"OpusHead", b"OpusTags"))]


class OggOpusSource(discord.AudioSource):
    """Opus packets handed to discord.py as they are (``is_opus``), one per 20 ms read."""

    def __init__(self, packets: list[bytes]) -> None:
        self.packets = packets
        self._next = 0

    def read(self) -> bytes:
        if self._next >= len(self.packets):
            return b""
        packet = self.packets[self._next]
        self._next += 1
        return packet

    def is_opus(self) -> bool:
        return True


def opus_source(data: bytes) -> OggOpusSource:
    """A player source for an OGG/Opus reply; re-encodes only when frames are not 20 ms. CPU work."""
    packets = opus_packets(data)
    if all(packet_ms(p) == FRAME_MS for p in packets):
        return OggOpusSource(packets)
    log.info("voice reply has non-20 ms Opus frames: re-encoding it for the voice channel")
    pcm = decode_pcm(data, rate=48_000)
    return OggOpusSource(opus_packets(encode_ogg_opus(pcm.tobytes(), 48_000)))


def voice_support_missing() -> str | None:
    """Why discord.py cannot connect to voice here, or None when it can."""
    missing = [name for name, present in (("PyNaCl", discord.voice_client.has_nacl),
                                          ("davey", discord.voice_state.has_dave)) if not present]
    if not missing:
        return None
    return (f"Voice channels need {' and '.join(missing)} (install discord.py's voice extras: "
            "pip install 'discord.py[voice]').")


class VoiceChannels:
    """The bot's voice connections, one per server, and what each plays next.

    ``voice_client_class`` is what ``VoiceChannel.connect`` builds (discord.py's VoiceClient;
    tests give a recording one). A server's replies are played one after another.
    """

    def __init__(self, client: discord.Client, voice_client_class: type[discord.VoiceProtocol]) -> None:
        self.client = client
        self.voice_client_class = voice_client_class
        self._text_channels: dict[int, int] = {}  # guild id -> text channel /join was used in
        self._queues: dict[int, deque[discord.AudioSource]] = {}

    def _voice_client(self, guild: discord.Guild) -> Any:
        return guild.voice_client  # a VoiceClient, or the configured VoiceProtocol

    async def join(self, member: discord.Member, text_channel_id: int) -> str:
        """Connect to (or move to) ``member``'s voice channel; returns what to tell them."""
        target = member.voice.channel if member.voice is not None else None
        if target is None:
            return "Join a voice channel first, then use /join."
        if self.voice_client_class is discord.VoiceClient and (missing := voice_support_missing()):
            return missing
        guild = member.guild
        current = self._voice_client(guild)
        try:
            if current is not None and current.channel == target:
                pass
            elif current is not None:
                await current.move_to(target)
            else:
                await target.connect(cls=self.voice_client_class, timeout=CONNECT_TIMEOUT, self_deaf=True)
        except (TimeoutError, discord.ClientException, RuntimeError) as error:
            log.warning("could not join voice channel %s: %s", target.id, error)
            return f"I couldn't join {target.mention}: {error or 'timed out'}."
        self._text_channels[guild.id] = text_channel_id
        return f"Joined {target.mention}. I'll speak my replies from this channel there; /leave to stop."

    async def leave(self, guild: discord.Guild) -> str:
        current = self._voice_client(guild)
        if current is None:
            return "I'm not in a voice channel."
        await self._disconnect(guild)
        return "Left the voice channel."

    async def _disconnect(self, guild: discord.Guild) -> None:
        self._queues.pop(guild.id, None)
        self._text_channels.pop(guild.id, None)
        current = self._voice_client(guild)
        if current is not None:
            await current.disconnect(force=True)

    def speaks_for(self, guild: discord.Guild, channel_id: int, bot_channel: bool) -> bool:
        """Replies in this text channel are spoken: a bot channel, the /join channel, or the voice channel's chat."""
        current = self._voice_client(guild)
        if current is None:
            return False
        return bot_channel or self._text_channels.get(guild.id) == channel_id or current.channel.id == channel_id

    async def speak(self, guild: discord.Guild, data: bytes) -> None:
        """Queue an OGG/Opus reply for ``guild``'s voice channel."""
        try:
            source = await asyncio.to_thread(opus_source, data)
        except ValueError as error:
            log.warning("voice reply not playable in the voice channel: %s", error)
            return
        self._queues.setdefault(guild.id, deque()).append(source)
        self._play_next(guild)

    def _play_next(self, guild: discord.Guild) -> None:
        current = self._voice_client(guild)
        queue = self._queues.get(guild.id)
        if current is None or not queue or current.is_playing() or not current.is_connected():
            return
        loop = asyncio.get_running_loop()

        def finished(error: Exception | None) -> None:  # called on the player's thread
            if error is not None:
                log.warning("voice playback failed in guild %s: %s", guild.id, error)
            loop.call_soon_threadsafe(self._play_next, guild)

        current.play(queue.popleft(), after=finished)

    async def on_voice_state_update(self, member: discord.Member, before: discord.VoiceState,
                                    after: discord.VoiceState) -> None:
        """Leave a voice channel once no person is left in it."""
        current = self._voice_client(member.guild)
        if current is None or current.channel is None:
            return
        if before.channel is None or before.channel.id != current.channel.id:
            return
        if not any(not m.bot for m in current.channel.members):
            log.info("voice channel %s is empty: leaving", current.channel.id)
            await self._disconnect(member.guild)
