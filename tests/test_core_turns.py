"""Whole turns through the core with the real SDKs against the local Groq/ElevenLabs/D-ID fakes."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Callable

import av
import pytest

from bot.context import estimate_tokens
from bot.messages import Audio, ChatKind, IncomingMessage, ReplyKind
from bot.pipeline import Outcome
from bot.sink import SilentSink
from tests.fakes.audio_samples import silence_ogg, tone_ogg
from tests.fakes.did import FakeDID
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq

_ids = iter(range(1, 1_000_000))


def msg(text: str | None = None, *, audio: bytes | None = None, chat: str = "c1", **kw: object) -> IncomingMessage:
    values: dict[str, object] = dict(
        platform="test", chat_id=chat, user_id="u1", message_id=str(next(_ids)), text=text,
        audio=Audio(audio) if audio is not None else None, user_name="Ann",
    )
    values.update(kw)
    return IncomingMessage(**values)  # type: ignore[arg-type]


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples / 48_000


async def test_text_turn_answers_with_text_and_an_ogg_voice_note(
    make_bot: Callable, groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot()
    sink = SilentSink()
    assert await bot.handle(msg("hello there"), sink) is Outcome.ANSWERED
    reply = sink.replies[0]
    assert reply.kind is ReplyKind.ANSWER
    assert reply.text == "You said: hello there. I have 0 earlier messages."
    assert reply.voice is not None and reply.voice.data[:4] == b"OggS"
    assert reply.voice.duration == pytest.approx(decoded_seconds(reply.voice.data), abs=0.05)
    assert reply.voice.duration > 1.0
    system = groq_fake.last_messages[0]
    assert system["role"] == "system" and "Voicebot" in system["content"]
    body = groq_fake.chat_requests[-1].json
    assert body["model"] == "llama-3.1-8b-instant"
    assert body["stream"] is False  # nobody watches this sink's text grow: one completion
    # What ChatGroq asks for, without the parameters it leaves unset (no JSON nulls).
    assert set(body) == {"messages", "model", "stream", "n", "temperature", "max_tokens", "service_tier"}
    assert (body["temperature"], body["max_tokens"]) == (bot.settings.llm_temperature, bot.settings.llm_max_tokens)
    tts = elevenlabs_fake.requests_to("/v1/text-to-speech/")[-1]
    assert tts.query["output_format"] == "opus_48000_64"
    assert tts.json["model_id"] == "eleven_flash_v2_5" and tts.json["text"] == reply.text



async def test_a_sink_that_shows_text_as_it_grows_gets_the_tokens_as_they_arrive(
    make_bot: Callable, groq_fake: FakeGroq
) -> None:
    bot = await make_bot(voice_replies=False)
    sinks, tokens = [], []
    for chat, delay in (("paced", 0.01), ("at-once", 0.0)):  # a token per read; the whole answer in one
        groq_fake.token_delay = delay
        sink = SilentSink(streams_text=True)
        assert await bot.handle(msg("stream it", chat=chat), sink) is Outcome.ANSWERED
        assert groq_fake.chat_requests[-1].json["stream"] is True
        answer = sink.replies[0].text
        assert answer == "You said: stream it. I have 0 earlier messages."
        assert sink.deltas[-1].strip() == answer
        assert all(later.startswith(earlier) for earlier, later in zip(sink.deltas, sink.deltas[1:]))
        sinks.append(sink)
        tokens.append((await bot.store.usage("test", "u1")).tokens - sum(tokens))
    paced, at_once = sinks
    assert len(paced.deltas) > 3
    # Tokens that arrived together come as one piece; the usage in the last chunk still counts.
    assert len(at_once.deltas) < len(paced.deltas)
    assert tokens[0] == tokens[1] > 2 * estimate_tokens(paced.replies[0].text)

async def test_voice_turn_uploads_ogg_named_ogg_and_keeps_the_language(
    make_bot: Callable, groq_fake: FakeGroq
) -> None:
    bot = await make_bot()
    audio = tone_ogg(2.0, seed=1)
    groq_fake.set_transcript(audio, "Wie spät ist es?", language="de")
    sink = SilentSink()
    await bot.handle(msg(audio=audio), sink)
    reply = sink.replies[0]
    assert reply.transcript == "Wie spät ist es?" and reply.language == "de"
    assert reply.text.startswith("You said: Wie spät ist es?")
    upload = groq_fake.transcription_requests[-1]
    assert upload.files["file"].filename == "voice.ogg"
    assert upload.form["model"] == "whisper-large-v3-turbo"
    assert upload.form["response_format"] == "verbose_json"  # the only format that names the language
    assert upload.files["file"].data == audio  # no transcoding on the way in


async def test_history_carries_across_turns_and_a_restart(make_bot: Callable, groq_fake: FakeGroq) -> None:
    first = await make_bot()
    sink = SilentSink()
    await first.handle(msg("one"), sink)
    await first.handle(msg("two"), sink)
    assert sink.replies[-1].text.endswith("I have 2 earlier messages.")
    await first.aclose()
    second = await make_bot()  # a new bot on the same database file
    await second.handle(msg("three"), sink)
    assert sink.replies[-1].text.endswith("I have 4 earlier messages.")
    contents = [m["content"] for m in groq_fake.last_messages]
    assert contents[1:] == ["one", sink.replies[0].text, "two", sink.replies[1].text, "three"]
    # Another chat has its own history.
    await second.handle(msg("elsewhere", chat="c2"), sink)
    assert sink.replies[-1].text.endswith("I have 0 earlier messages.")


async def test_long_history_is_trimmed_to_the_token_budget(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(context_tokens=400, voice_replies=False)
    sink = SilentSink()
    for i in range(30):
        await bot.handle(msg(f"message number {i} " + "padding " * 10), sink)
    sent = groq_fake.last_messages
    assert sent[0]["role"] == "system" and sent[1]["role"] == "user"
    assert sent[-1]["content"].startswith("message number 29")
    assert 3 <= len(sent) < 20
    assert sum(len(m["content"]) // 4 + 4 for m in sent) <= 400


async def test_a_redelivered_message_is_answered_once(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    sink = SilentSink()
    message = msg("only once")
    assert await bot.handle(message, sink) is Outcome.ANSWERED
    assert await bot.handle(message, sink) is Outcome.DUPLICATE
    assert len(sink.replies) == 1 and len(groq_fake.chat_requests) == 1


async def test_concurrent_duplicates_are_answered_once(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    groq_fake.latency["chat"] = 0.2
    sink = SilentSink()
    message = msg("twice at once")
    outcomes = await asyncio.gather(bot.handle(message, sink), bot.handle(message, sink))
    assert sorted(outcomes) == sorted([Outcome.ANSWERED, Outcome.DUPLICATE])
    assert len(sink.replies) == 1


# --- errors a user can hit -------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage" * 50, b"OggS" + b"\x00" * 20])
async def test_unreadable_audio_gets_a_clear_reply(make_bot: Callable, groq_fake: FakeGroq, data: bytes) -> None:
    bot = await make_bot()
    sink = SilentSink()
    assert await bot.handle(msg(audio=data), sink) is Outcome.NOTICE
    assert "couldn't read that audio" in sink.replies[0].text
    assert groq_fake.chat_requests == []
    assert await bot.handle(msg("still there?"), sink) is Outcome.ANSWERED


async def test_too_long_audio_is_refused_before_any_provider_call(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(max_audio_seconds=3)
    sink = SilentSink()
    assert await bot.handle(msg(audio=tone_ogg(4.0)), sink) is Outcome.NOTICE
    declared = IncomingMessage("test", "c1", "u1", "big", audio=Audio(b"OggS", declared_seconds=600))
    assert await bot.handle(declared, sink) is Outcome.NOTICE
    assert all("too long" in r.text for r in sink.replies)
    assert groq_fake.transcription_requests == []


async def test_silence_gets_a_clear_reply_and_no_llm_call(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    audio = silence_ogg(1.5)
    groq_fake.set_transcript(audio, "")
    sink = SilentSink()
    assert await bot.handle(msg(audio=audio), sink) is Outcome.NOTICE
    assert "couldn't hear any words" in sink.replies[0].text
    assert groq_fake.chat_requests == []


async def test_groq_429_is_retried_after_retry_after(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    groq_fake.retry_after = 0.2
    groq_fake.fail_next("/chat/completions", 429)
    sink = SilentSink()
    assert await bot.handle(msg("busy?"), sink) is Outcome.ANSWERED
    assert [r.status for r in groq_fake.chat_requests] == [429, 200]


async def test_llm_down_gives_a_polite_reply_keeps_the_message_and_the_bot(
    make_bot: Callable, groq_fake: FakeGroq
) -> None:
    bot = await make_bot(provider_retries=1)
    groq_fake.fail_next("/chat/completions", 503, times=2)
    sink = SilentSink()
    assert await bot.handle(msg("are you there?"), sink) is Outcome.NOTICE
    assert "trouble" in sink.replies[0].text
    assert len(groq_fake.chat_requests) == 2  # bounded: one try and one retry
    assert await bot.handle(msg("and now?"), sink) is Outcome.ANSWERED
    # What the user said while the LLM was down is still in the history.
    assert [m["content"] for m in groq_fake.last_messages[1:]] == ["are you there?", "and now?"]


async def test_stt_timeout_gives_a_polite_reply(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(provider_timeout=0.5, provider_retries=0)
    groq_fake.hang_next("/audio/transcriptions", seconds=3)
    sink = SilentSink()
    assert await bot.handle(msg(audio=tone_ogg(1.0)), sink) is Outcome.NOTICE
    assert "slow" in sink.replies[0].text


async def test_tts_failure_still_sends_the_text(make_bot: Callable, elevenlabs_fake: FakeElevenLabs) -> None:
    bot = await make_bot(provider_retries=1)
    elevenlabs_fake.fail_next("/v1/text-to-speech/", 500, times=2)
    sink = SilentSink()
    assert await bot.handle(msg("speak"), sink) is Outcome.ANSWERED
    assert sink.replies[0].voice is None and sink.replies[0].text.startswith("You said: speak")
    assert "voice unavailable" in sink.replies[0].notes


async def test_tts_returning_non_audio_still_sends_the_text(
    make_bot: Callable, elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot()
    elevenlabs_fake.bad_audio = True
    sink = SilentSink()
    assert await bot.handle(msg("speak"), sink) is Outcome.ANSWERED
    assert sink.replies[0].voice is None


async def test_avatar_clip_follows_text_and_voice(make_bot: Callable, did_fake: FakeDID) -> None:
    bot = await make_bot(avatar_provider="auto")
    chat_id = await bot.store.chat_id("test", "c1")
    await bot.store.update_chat_settings(chat_id, video_enabled=True)
    sink = SilentSink()
    assert await bot.handle(msg("show yourself"), sink) is Outcome.ANSWERED
    assert sink.replies[0].voice is not None
    await bot.pipeline.drain(timeout=10)
    assert len(sink.videos) == 1 and sink.videos[0].data[4:8] == b"ftyp"
    talk = did_fake.requests_to("/talks", method="POST")[-1].json
    assert talk["script"]["type"] == "audio" and talk["script"]["audio_url"].startswith("s3://")


async def test_avatar_failure_does_not_touch_text_and_voice(make_bot: Callable, did_fake: FakeDID) -> None:
    bot = await make_bot(avatar_provider="auto", provider_retries=0)
    chat_id = await bot.store.chat_id("test", "c1")
    await bot.store.update_chat_settings(chat_id, video_enabled=True)
    did_fake.fail_next("/talks", 500, method="POST")
    sink = SilentSink()
    assert await bot.handle(msg("show yourself"), sink) is Outcome.ANSWERED
    await bot.pipeline.drain(timeout=10)
    assert sink.replies[0].voice is not None and sink.videos == []


# --- groups ----------------------------------------------------------------------------------


async def test_group_messages_need_a_trigger(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    sink = SilentSink()
    group = {"kind": ChatKind.GROUP, "chat": "g1"}
    assert await bot.handle(msg("just chatting", **group), sink) is Outcome.IGNORED
    assert groq_fake.chat_requests == []
    assert await bot.handle(msg("@bot hi", mentioned=True, **group), sink) is Outcome.ANSWERED
    assert await bot.handle(msg("thanks", replied_to_bot=True, **group), sink) is Outcome.ANSWERED
    # Chatter is not stored: the LLM saw only the two addressed turns and their answers.
    assert [m["content"] for m in groq_fake.last_messages if m["role"] == "user"] == ["Ann: @bot hi", "Ann: thanks"]


async def test_group_voice_note_naming_the_bot_triggers_it(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    named, unnamed = tone_ogg(1.5, seed=2), tone_ogg(1.5, seed=3)
    groq_fake.set_transcript(named, "Hey voice bot, what's two plus two?")
    groq_fake.set_transcript(unnamed, "did anyone see the game")
    sink = SilentSink()
    group = {"kind": ChatKind.GROUP, "chat": "g2"}
    assert await bot.handle(msg(audio=unnamed, **group), sink) is Outcome.IGNORED
    assert await bot.handle(msg(audio=named, **group), sink) is Outcome.ANSWERED
    assert sink.replies[0].transcript == "Hey voice bot, what's two plus two?"
    assert len(groq_fake.chat_requests) == 1


async def test_group_chatter_with_bad_audio_stays_silent(make_bot: Callable) -> None:
    bot = await make_bot()
    sink = SilentSink()
    assert await bot.handle(msg(audio=b"not audio", kind=ChatKind.GROUP, chat="g3"), sink) is Outcome.IGNORED
    assert sink.replies == []


# --- commands and settings -------------------------------------------------------------------


async def test_voice_and_persona_commands_change_the_next_turn(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    sink = SilentSink()
    assert await bot.handle(msg("/voice off"), sink) is Outcome.NOTICE
    await bot.handle(msg("quiet please"), sink)
    assert sink.replies[-1].voice is None
    await bot.handle(msg("/voice english-female"), sink)
    await bot.handle(msg("/persona You are a pirate."), sink)
    await bot.handle(msg("ahoy"), sink)
    assert sink.replies[-1].voice is not None
    assert groq_fake.last_messages[0]["content"] == "You are a pirate."
    await bot.handle(msg("/persona"), sink)
    assert "You are a pirate." in sink.replies[-1].text
    await bot.handle(msg("/persona reset"), sink)
    await bot.handle(msg("and now"), sink)
    assert "Voicebot" in groq_fake.last_messages[0]["content"]


async def test_reset_forgets_the_conversation(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot()
    sink = SilentSink()
    await bot.handle(msg("remember the number 7"), sink)
    await bot.handle(msg("/reset"), sink)
    assert "forgot" in sink.replies[-1].text
    await bot.handle(msg("what number?"), sink)
    assert sink.replies[-1].text.endswith("I have 0 earlier messages.")


async def test_group_settings_need_an_admin(make_bot: Callable) -> None:
    bot = await make_bot()
    sink = SilentSink()
    group = {"kind": ChatKind.GROUP, "chat": "g4"}
    await bot.handle(msg("/voice off", **group), sink)
    assert "Only group admins" in sink.replies[-1].text
    await bot.handle(msg("/voice off", sender_is_admin=True, **group), sink)
    assert sink.replies[-1].text == "Voice replies off."


async def test_stats_report_usage(make_bot: Callable) -> None:
    bot = await make_bot()
    sink = SilentSink()
    await bot.handle(msg(audio=tone_ogg(2.0, seed=4)), sink)
    await bot.handle(msg("/stats"), sink)
    stats = sink.replies[-1].text
    assert "turns: 1 / 1" in stats and "audio heard: 2 s" in stats


async def test_unknown_command_is_explained(make_bot: Callable) -> None:
    bot = await make_bot()
    sink = SilentSink()
    await bot.handle(msg("/frobnicate now"), sink)
    assert "I don't know /frobnicate" in sink.replies[-1].text


async def test_allow_list_refuses_politely_once(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(allowed_user_ids=["friend"])
    sink = SilentSink()
    assert await bot.handle(msg("let me in", user_id="stranger"), sink) is Outcome.NOTICE
    assert await bot.handle(msg("please", user_id="stranger"), sink) is Outcome.IGNORED
    assert await bot.handle(msg("/reset", user_id="stranger"), sink) is Outcome.IGNORED
    assert len(sink.replies) == 1 and "private" in sink.replies[0].text
    assert await bot.handle(msg("hi", user_id="friend"), sink) is Outcome.ANSWERED
    assert len(groq_fake.chat_requests) == 1


async def test_rate_limit_answers_once_then_drops(make_bot: Callable) -> None:
    bot = await make_bot(rate_limit_messages=2, rate_limit_window=60)
    sink = SilentSink()
    outcomes = [await bot.handle(msg(f"m{i}"), sink) for i in range(5)]
    assert outcomes == [Outcome.ANSWERED, Outcome.ANSWERED, Outcome.NOTICE, Outcome.IGNORED, Outcome.IGNORED]
    assert "too fast" in sink.replies[-1].text
    assert await bot.handle(msg("other user", user_id="u2"), sink) is Outcome.ANSWERED


# --- order and concurrency -------------------------------------------------------------------


async def test_one_chat_in_order_other_chats_not_blocked(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(voice_replies=False)
    groq_fake.latency["chat"] = 1.5
    finished: list[str] = []

    async def run(message: IncomingMessage) -> None:
        sink = SilentSink()
        await bot.handle(message, sink)
        finished.append(sink.replies[0].text.split(".")[0])

    slow_first = asyncio.create_task(run(msg("a1", chat="A")))
    await asyncio.sleep(0.05)
    a2 = asyncio.create_task(run(msg("a2", chat="A")))
    await asyncio.sleep(0.05)
    groq_fake.latency["chat"] = 0.0
    b1 = asyncio.create_task(run(msg("b1", chat="B")))
    await asyncio.gather(slow_first, a2, b1)
    assert finished.index("You said: b1") < finished.index("You said: a1")  # B did not wait for A
    assert finished.index("You said: a1") < finished.index("You said: a2")  # A stayed in order


async def test_daily_budget_stops_answers_with_a_clear_message(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(daily_tokens=30)
    sink = SilentSink()
    assert await bot.handle(msg("first question"), sink) is Outcome.ANSWERED
    assert await bot.handle(msg("second question"), sink) is Outcome.NOTICE
    assert "today's conversation allowance" in sink.replies[-1].text
    assert len(groq_fake.chat_requests) == 1
    assert await bot.handle(msg("/stats"), sink) is Outcome.NOTICE  # commands still work


async def test_audio_is_downloaded_only_after_checks_and_once(make_bot: Callable, groq_fake: FakeGroq) -> None:
    bot = await make_bot(max_audio_seconds=60)
    downloads: list[int] = []
    audio = tone_ogg(1.0, seed=5)

    async def fetch() -> bytes:
        downloads.append(1)
        return audio

    sink = SilentSink()
    lazy = dataclasses.replace(msg(audio=None), audio=Audio(fetch=fetch, declared_seconds=1.0))
    assert await bot.handle(lazy, sink) is Outcome.ANSWERED
    assert await bot.handle(lazy, sink) is Outcome.DUPLICATE
    too_long = dataclasses.replace(lazy, message_id="long", audio=Audio(fetch=fetch, declared_seconds=61))
    assert await bot.handle(too_long, sink) is Outcome.NOTICE
    assert downloads == [1]


async def test_failed_download_gets_a_clear_reply(make_bot: Callable) -> None:
    async def broken() -> bytes:
        raise ConnectionError("file server went away")

    bot = await make_bot()
    sink = SilentSink()
    message = dataclasses.replace(msg(audio=None), audio=Audio(fetch=broken))
    assert await bot.handle(message, sink) is Outcome.NOTICE
    assert "couldn't download" in sink.replies[-1].text
