"""Voice channels: the Opus source the player is given, /join, speaking replies, leaving an empty channel."""

from __future__ import annotations

import asyncio
import io
from fractions import Fraction

import av
import discord
import pytest

from adapters.discord_voice import OggOpusSource, opus_packets, opus_source, packet_ms, voice_support_missing
from tests.fakes import audio_samples
from tests.fakes.discord_plugin import RecordingVoiceClient, RunningDiscordBot

pytestmark = pytest.mark.timeout(60)


def ogg_with_frames(frame_ms: int, seconds: float = 1.0) -> bytes:
    """OGG/Opus whose packets each hold ``frame_ms`` of audio (libopus ``frame_duration``)."""
    pcm = audio_samples.tone_pcm(seconds)
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        stream.options = {"frame_duration": str(frame_ms)}
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.rate, frame.pts, frame.time_base = 48_000, 0, Fraction(1, 48_000)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def test_packet_durations_come_from_the_toc_byte() -> None:
    assert packet_ms(bytes([31 << 3])) == 20.0  # CELT fullband 20 ms, one frame
    assert packet_ms(bytes([(31 << 3) | 1])) == 40.0  # two frames
    assert packet_ms(bytes([(3 << 3) | 3, 3])) == 180.0  # SILK 60 ms, three frames (code 3)
    assert packet_ms(bytes([1 << 3])) == 20.0  # SILK narrowband 20 ms
    assert packet_ms(b"") == 0.0


def test_a_20ms_reply_is_played_packet_for_packet_without_reencoding() -> None:
    ogg = audio_samples.beeps_ogg(1.0, bit_rate=64_000)
    source = opus_source(ogg)
    assert isinstance(source, OggOpusSource) and source.is_opus()
    played = list(iter(source.read, b""))
    assert played == opus_packets(ogg)  # one packet per 20 ms read, headers left out
    assert abs(len(played) * 0.02 - 1.0) <= 0.04
    assert not any(p.startswith((b"OpusHead", b"OpusTags")) for p in played)


def test_other_frame_sizes_are_reencoded_to_20ms() -> None:
    ogg = ogg_with_frames(60)
    assert {packet_ms(p) for p in opus_packets(ogg)} == {60.0}
    packets = list(iter(opus_source(ogg).read, b""))
    assert {packet_ms(p) for p in packets} == {20.0}
    assert abs(len(packets) * 0.02 - 1.0) < 0.1


def test_not_ogg_opus_is_refused() -> None:
    with pytest.raises(ValueError):
        opus_source(b"RIFF....WAVEfmt ")
    with pytest.raises(ValueError):
        opus_source(audio_samples.mp3_bytes(0.5))


async def test_join_speak_and_leave_when_the_channel_empties(discord_bot: RunningDiscordBot) -> None:
    fake, client = discord_bot.fake, discord_bot.client
    not_in_voice = await fake.invoke("join", channel=fake.general, user=fake.alice)
    await asyncio.wait_for(not_in_voice.answered.wait(), 10)
    assert not_in_voice.texts == ["Join a voice channel first, then use /join."]

    await fake.join_voice(fake.alice, fake.voice_channel)
    joined = await fake.invoke("join", channel=fake.general, user=fake.alice)
    await asyncio.wait_for(joined.answered.wait(), 10)
    assert joined.texts[0].startswith("Joined")
    (voice,) = RecordingVoiceClient.instances
    assert voice.is_connected() and client.get_guild(fake.guild.id).voice_client is voice
    op4 = [p["d"] for s in fake.sessions for p in s.received if p["op"] == 4]
    assert str(op4[-1]["channel_id"]) == str(fake.voice_channel.id) and op4[-1]["self_deaf"] is True

    await fake.send(fake.user_message(fake.general, fake.alice, "say something", mention_bot=True))
    _, spoken = await fake.wait_for_bot_messages(2, fake.general)
    await asyncio.sleep(0.2)
    (source,) = voice.played  # the reply's own Opus packets, as they are
    assert list(iter(source.read, b"")) == opus_packets(fake.uploads[spoken["id"]][0].data)

    await fake.send(fake.user_message(fake.bots_channel, fake.alice, "not spoken", mention_bot=True))
    await fake.wait_for_bot_messages(2, fake.bots_channel)
    await asyncio.sleep(0.2)
    assert len(voice.played) == 1  # another text channel: text and voice message only

    await fake.join_voice(fake.alice, None)  # the last person leaves
    for _ in range(100):
        if client.get_guild(fake.guild.id).voice_client is None:
            break
        await asyncio.sleep(0.02)
    assert client.get_guild(fake.guild.id).voice_client is None and not voice.is_connected()
    op4 = [p["d"] for s in fake.sessions for p in s.received if p["op"] == 4]
    assert op4[-1]["channel_id"] is None


async def test_leave_command(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    await fake.join_voice(fake.bob, fake.voice_channel)
    joined = await fake.invoke("join", channel=fake.general, user=fake.bob)
    await asyncio.wait_for(joined.answered.wait(), 10)
    left = await fake.invoke("leave", channel=fake.general, user=fake.bob)
    await asyncio.wait_for(left.answered.wait(), 10)
    assert left.texts == ["Left the voice channel."]
    assert discord_bot.client.get_guild(fake.guild.id).voice_client is None


async def test_join_without_voice_extras_says_what_to_install(
    discord_bot: RunningDiscordBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = discord_bot.fake
    monkeypatch.setattr(discord.voice_client, "has_nacl", False)
    monkeypatch.setattr(discord_bot.client.voice, "voice_client_class", discord.VoiceClient)
    await fake.join_voice(fake.alice, fake.voice_channel)
    joined = await fake.invoke("join", channel=fake.general, user=fake.alice)
    await asyncio.wait_for(joined.answered.wait(), 10)
    assert "PyNaCl" in joined.texts[0] and "discord.py[voice]" in joined.texts[0]


def test_voice_support_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.voice_client, "has_nacl", True)
    monkeypatch.setattr(discord.voice_state, "has_dave", False)
    assert "davey" in (voice_support_missing() or "")
    monkeypatch.setattr(discord.voice_state, "has_dave", True)
    assert voice_support_missing() is None
