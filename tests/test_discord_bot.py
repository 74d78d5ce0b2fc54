"""End to end: the real discord.py client (our Discord bot) against the fake Discord, Groq and ElevenLabs."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable

import pytest

from bot.audio import ogg_opus_duration
from bot.config import Settings
from tests.fakes import audio_samples
from tests.fakes.discord_api import VOICE_MESSAGE_FLAG, FakeDiscord
from tests.fakes.discord_plugin import RunningDiscordBot, start_discord_bot, stop_discord_bot
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq

pytestmark = pytest.mark.timeout(60)

QUIET_SECONDS = 0.8  # how long "the bot said nothing" is watched for


def texts(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["content"]]


def voice_messages(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["flags"] & VOICE_MESSAGE_FLAG]


def assert_voice_message(fake: FakeDiscord, message: dict) -> None:
    """Flags 8192, no text, one voice-message.ogg whose duration and waveform match its audio."""
    assert message["flags"] == VOICE_MESSAGE_FLAG and message["content"] == ""
    (attachment,) = message["attachments"]
    (upload,) = fake.uploads[message["id"]]
    assert attachment["filename"] == "voice-message.ogg" and upload.content_type == "audio/ogg"
    assert upload.data.startswith(b"OggS")
    assert abs(attachment["duration_secs"] - ogg_opus_duration(upload.data)) < 0.1
    samples = base64.b64decode(attachment["waveform"], validate=True)
    assert 0 < len(samples) <= 256 and any(samples)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def quiet(fake: FakeDiscord, expected: int) -> None:
    """The bot posted ``expected`` messages and nothing more for a while."""
    await asyncio.sleep(QUIET_SECONDS)
    assert len(fake.bot_messages()) == expected, texts(fake.bot_messages())


async def test_dm_text_gets_text_and_voice_message(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    sent = await fake.send(fake.user_message(dm, fake.alice, "hello there"))
    text, voice = await fake.wait_for_bot_messages(2, dm)
    assert text["content"] == "You said: hello there. I have 0 earlier messages."
    assert text["message_reference"]["message_id"] == int(sent["id"])  # a reply to the user's message
    assert_voice_message(fake, voice)
    assert dm.id in fake.typing
    await quiet(fake, 2)  # its own echoed messages are never answered


async def test_voice_message_in_is_transcribed_and_answered(
    discord_bot: RunningDiscordBot, groq_fake: FakeGroq
) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    ogg = audio_samples.tone_ogg(1.5, seed=3)
    groq_fake.set_transcript(ogg, "What is the weather like")
    await fake.send(fake.voice_message(dm, fake.alice, ogg, duration=1.5))
    text, voice = await fake.wait_for_bot_messages(2, dm)
    assert "> What is the weather like" in text["content"]  # the transcript, quoted
    assert text["content"].endswith("You said: What is the weather like. I have 0 earlier messages.")
    (upload,) = [r.files["file"] for r in groq_fake.transcription_requests]
    assert upload.data == ogg and upload.filename.endswith(".ogg")
    assert_voice_message(fake, voice)


async def test_server_channel_needs_a_mention_or_a_reply(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    await fake.send(fake.user_message(fake.general, fake.bob, "just chatting with friends"))
    await quiet(fake, 0)

    await fake.send(fake.user_message(fake.general, fake.bob, "what time is it?", mention_bot=True))
    first, _ = await fake.wait_for_bot_messages(2, fake.general)
    assert first["content"].startswith("You said: Bob: what time is it?")  # without the mention

    await fake.send(fake.user_message(fake.general, fake.bob, "and tomorrow?", reply_to=first))
    answers = await fake.wait_for_bot_messages(4, fake.general)
    assert answers[2]["content"].startswith("You said: Bob: and tomorrow?")

    await fake.send(fake.user_message(fake.thread, fake.alice, "a thread hello", mention_bot_role=True))
    in_thread = await fake.wait_for_bot_messages(2, fake.thread)
    assert in_thread[0]["content"].startswith("You said: Alice: a thread hello")
    await quiet(fake, 6)


async def test_other_bots_are_ignored(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    await fake.send(fake.user_message(fake.general, fake.other_bot, "hi voicebot", mention_bot=True))
    await quiet(fake, 0)


async def test_a_message_id_is_answered_once(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.bob)
    message = fake.user_message(dm, fake.bob, "only once please")
    await fake.send(message)
    await fake.wait_for_bot_messages(2, dm)
    await fake.dispatch("MESSAGE_CREATE", message)  # redelivered
    await quiet(fake, 2)


async def test_long_reply_is_split_under_2000_without_breaking_code(
    discord_bot: RunningDiscordBot, groq_fake: FakeGroq
) -> None:
    fake = discord_bot.fake
    code = "\n".join(f"print('line {i:03d} abcdefghijklmnopqrstuvwxyz')" for i in range(90))
    answer = "Here is the script:\n\n```python\n" + code + "\n```\n\n" + "All done. " * 60
    groq_fake.reply_fn = lambda messages: answer
    dm = fake.dm_channel(fake.alice)
    await fake.send(fake.user_message(dm, fake.alice, "write me a script"))
    await until(lambda: voice_messages(fake.bot_messages(dm)))  # the voice message comes last
    chunks = texts(fake.bot_messages(dm))
    assert len(chunks) >= 3 and all(len(c) <= 2000 for c in chunks)
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk  # each chunk renders on its own
    joined = "\n".join(chunks)
    assert all(f"line {i:03d}" in joined for i in range(90))


async def test_slash_command_is_answered_through_the_interaction(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    synced = {c["name"] for c in fake.commands}
    assert synced >= {"reset", "voice", "persona", "video", "transcript", "stats", "channel", "join", "leave"}

    turned_off = await fake.invoke("voice", {"setting": "off"}, channel=fake.general, user=fake.alice)
    await asyncio.wait_for(turned_off.answered.wait(), 10)
    assert turned_off.callbacks[0]["type"] == 5  # deferred at once, answered by a follow-up
    assert turned_off.texts == ["Voice replies off."] and not turned_off.ephemeral

    refused = await fake.invoke("voice", {"setting": "on"}, channel=fake.general, user=fake.bob)
    await asyncio.wait_for(refused.answered.wait(), 10)
    assert refused.texts == ["Only group admins can use /voice here."] and refused.ephemeral

    stats = await fake.invoke("stats", channel=fake.general, user=fake.bob)
    await asyncio.wait_for(stats.answered.wait(), 10)
    assert stats.texts[0].startswith("Your usage") and stats.ephemeral

    await fake.send(fake.user_message(fake.general, fake.bob, "speak?", mention_bot=True))
    (answer,) = await fake.wait_for_bot_messages(1, fake.general)
    await quiet(fake, 1)  # voice is off in this channel: text only
    assert answer["content"].startswith("You said: Bob: speak?")


async def test_channel_here_makes_the_bot_answer_everything(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    denied = await fake.invoke("channel", {"mode": "here"}, channel=fake.bots_channel, user=fake.bob)
    await asyncio.wait_for(denied.answered.wait(), 10)
    assert "Manage Server" in denied.texts[0] and denied.ephemeral

    here = await fake.invoke("channel", {"mode": "here"}, channel=fake.bots_channel, user=fake.alice)
    await asyncio.wait_for(here.answered.wait(), 10)
    await fake.send(fake.user_message(fake.bots_channel, fake.bob, "no mention needed here"))
    answer, _ = await fake.wait_for_bot_messages(2, fake.bots_channel)
    assert answer["content"].startswith("You said: Bob: no mention needed here")

    off = await fake.invoke("channel", {"mode": "off"}, channel=fake.bots_channel, user=fake.alice)
    await asyncio.wait_for(off.answered.wait(), 10)
    await fake.send(fake.user_message(fake.bots_channel, fake.bob, "now I am ignored"))
    await quiet(fake, 2)


async def test_a_429_is_retried(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    path = f"/channels/{dm.id}/messages"
    fake.rate_limit_next(path, retry_after=0.3, method="POST")
    await fake.send(fake.user_message(dm, fake.alice, "are you there?"))
    text, _ = await fake.wait_for_bot_messages(2, dm)
    assert text["content"].startswith("You said: are you there?")
    posts = fake.requests_to(path, method="POST")
    assert [r.status for r in posts[:2]] == [429, 200]
    assert posts[1].received_at - posts[0].received_at >= 0.25


async def test_a_corrupt_attachment_gets_a_clear_message_and_the_bot_goes_on(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    await fake.send(fake.voice_message(dm, fake.alice, b"this is not audio at all" * 20, duration=2.0))
    (notice,) = await fake.wait_for_bot_messages(1, dm)
    assert "couldn't read that audio" in notice["content"]
    await fake.send(fake.user_message(dm, fake.alice, "and now text"))
    answers = await fake.wait_for_bot_messages(3, dm)
    assert answers[1]["content"].startswith("You said: and now text")


async def test_audio_over_the_size_limit_is_not_downloaded(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    big = fake.add_attachment(b"OggS" + bytes(100), "song.ogg", "audio/ogg", size=50 * 1024 * 1024)
    await fake.send(fake.user_message(dm, fake.alice, attachments=[big]))
    (notice,) = await fake.wait_for_bot_messages(1, dm)
    assert "too large" in notice["content"]
    assert not fake.requests_to("/attachments/")


async def test_channel_refusing_voice_messages_gets_an_audio_file(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    fake.general.refuses_voice_messages = True
    await fake.send(fake.user_message(fake.general, fake.alice, "say it", mention_bot=True))
    text, audio = await fake.wait_for_bot_messages(2, fake.general)
    assert text["content"].startswith("You said: Alice: say it")
    posts = fake.requests_to(f"/channels/{fake.general.id}/messages", method="POST")
    assert [r.status for r in posts] == [200, 403, 200]  # text, refused voice message, audio file
    assert audio["flags"] == 0 and audio["attachments"][0]["filename"] == "reply.ogg"
    assert fake.uploads[audio["id"]][0].data.startswith(b"OggS")


async def test_channels_run_concurrently_and_each_in_order(
    discord_bot: RunningDiscordBot, groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs
) -> None:
    fake = discord_bot.fake
    release = asyncio.Event()

    async def reply(messages: list[dict]) -> str:
        said = messages[-1]["content"]
        if "slow" in said:
            await release.wait()
        return f"answer to {said}"

    groq_fake.reply_fn = reply
    elevenlabs_fake.latency["tts"] = 0.0
    slow_dm, other_dm = fake.dm_channel(fake.alice), fake.dm_channel(fake.bob)
    ogg = audio_samples.tone_ogg(1.0, seed=7)
    groq_fake.set_transcript(ogg, "second, a voice message")
    await fake.send(fake.user_message(slow_dm, fake.alice, "first, slow one"))
    await fake.send(fake.voice_message(slow_dm, fake.alice, ogg, duration=1.0))
    await fake.send(fake.user_message(slow_dm, fake.alice, "third, text"))
    await fake.send(fake.user_message(other_dm, fake.bob, "meanwhile elsewhere"))
    (elsewhere, _) = await fake.wait_for_bot_messages(2, other_dm)  # not held up by the slow channel
    assert elsewhere["content"] == "answer to meanwhile elsewhere"
    assert not fake.bot_messages(slow_dm)
    release.set()
    answers = texts(await fake.wait_for_bot_messages(6, slow_dm))
    assert [re.sub(r"^(> .*\n)+\n", "", a) for a in answers] == [
        "answer to first, slow one", "answer to second, a voice message", "answer to third, text",
    ]


async def test_a_voice_message_naming_the_bot_is_answered_in_a_server(
    discord_bot: RunningDiscordBot, groq_fake: FakeGroq
) -> None:
    fake = discord_bot.fake
    chatter, called = audio_samples.tone_ogg(1.0, seed=11), audio_samples.tone_ogg(1.0, seed=12)
    groq_fake.set_transcript(chatter, "see you all tomorrow")
    groq_fake.set_transcript(called, "hey voice bot, tell me a joke")
    await fake.send(fake.voice_message(fake.general, fake.bob, chatter, duration=1.0))
    await quiet(fake, 0)  # transcribed, not addressed: silence, not even "typing..."
    assert fake.general.id not in fake.typing
    await fake.send(fake.voice_message(fake.general, fake.bob, called, duration=1.0))
    text, voice = await fake.wait_for_bot_messages(2, fake.general)
    assert "hey voice bot, tell me a joke" in text["content"]
    assert_voice_message(fake, voice)


async def test_an_audio_file_is_transcribed_as_what_it_is(discord_bot: RunningDiscordBot, groq_fake: FakeGroq) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    mp3 = audio_samples.mp3_bytes(1.0)
    groq_fake.set_transcript(mp3, "from an mp3 file")
    attachment = fake.add_attachment(mp3, "memo.mp3", "audio/mpeg")
    await fake.send(fake.user_message(dm, fake.alice, attachments=[attachment]))
    text, _ = await fake.wait_for_bot_messages(2, dm)
    assert "from an mp3 file" in text["content"]
    (upload,) = [r.files["file"] for r in groq_fake.transcription_requests]
    assert upload.filename.endswith(".mp3") and upload.data == mp3


async def test_avatar_clip_follows_as_an_mp4(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    video_on = await fake.invoke("video", {"setting": "on"}, channel=dm, user=fake.alice)
    await asyncio.wait_for(video_on.answered.wait(), 10)
    assert video_on.texts == ["Avatar videos on."]
    sent = await fake.send(fake.user_message(dm, fake.alice, "show yourself"))
    _, _, clip = await fake.wait_for_bot_messages(3, dm, timeout=30)
    (attachment,) = clip["attachments"]
    assert attachment["filename"] == "avatar.mp4" and attachment["content_type"] == "video/mp4"
    assert clip["message_reference"]["message_id"] == int(sent["id"])
    assert audio_samples.probe(fake.uploads[clip["id"]][0].data).video_codec


async def test_servers_outside_allowed_guild_ids_are_ignored(
    discord_fake: FakeDiscord, discord_env: dict[str, str], discord_endpoints: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {**discord_env, "ALLOWED_GUILD_IDS": "42"}.items():
        monkeypatch.setenv(name, value)
    running = await start_discord_bot(discord_fake, Settings())
    try:
        fake = discord_fake
        await fake.send(fake.user_message(fake.general, fake.alice, "hello?", mention_bot=True))
        await quiet(fake, 0)
        refused = await fake.invoke("stats", channel=fake.general, user=fake.alice)
        await asyncio.wait_for(refused.answered.wait(), 10)
        assert refused.texts == ["This bot is not available in this server."]
        dm = fake.dm_channel(fake.alice)
        await fake.send(fake.user_message(dm, fake.alice, "but DMs work"))
        await fake.wait_for_bot_messages(2, dm)
    finally:
        await stop_discord_bot(running)


async def test_a_refused_user_hears_it_once_then_silence(
    discord_fake: FakeDiscord, discord_env: dict[str, str], discord_endpoints: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = discord_fake
    for name, value in {**discord_env, "ALLOWED_USER_IDS": str(fake.alice.id)}.items():
        monkeypatch.setenv(name, value)
    running = await start_discord_bot(fake, Settings())
    try:
        first = await fake.invoke("stats", channel=fake.general, user=fake.bob)
        await asyncio.wait_for(first.answered.wait(), 10)
        assert first.texts == ["Sorry, this bot is private and not available in this chat."]
        second = await fake.invoke("stats", channel=fake.general, user=fake.bob)
        await asyncio.wait_for(second.answered.wait(), 10)
        assert second.deleted and not second.texts  # no "thinking..." left hanging
    finally:
        await stop_discord_bot(running)


async def test_a_failed_download_is_explained(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    gone = fake.voice_message(dm, fake.alice, audio_samples.tone_ogg(1.0), duration=1.0)
    gone["attachments"][0]["url"] += ".expired"  # the CDN answers 404
    await fake.send(gone)
    (notice,) = await fake.wait_for_bot_messages(1, dm)
    assert "couldn't download that audio" in notice["content"]
