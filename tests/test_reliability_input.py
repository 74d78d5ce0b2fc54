"""Bad input: the corpus in ``tests/data`` sent to a running Telegram bot (fake Bot API).

Audio that is empty, cut short, random bytes labelled OGG, a WAV sent as a voice note, a note
longer than the limit (refused from its declared duration, never downloaded), silence;
text of 100 000 characters, RTL and bidi controls, emoji sequences, zero-width characters,
NUL and other control characters, HTML and Markdown that would break a ``parse_mode``;
malformed commands. Each gets a clear reply (or, for silence, one and no LLM call), no
traceback or internal name reaches a user, Telegram accepts every message the bot sends, and
the history holds exactly the turns that were answered, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.messages import IncomingMessage
from bot.pipeline import Outcome
from bot.runtime import VoiceBot
from bot.sink import SilentSink
from bot.text import clean_input
from tests.databases import fresh_postgres_url, postgres_unavailable
from tests.fakes.groq import FakeGroq
from tests.fakes.telegram_api import FakeChat, FakeTelegram
from tests.fakes.telegram_plugin import RunningTelegramBot, StartBot

pytestmark = pytest.mark.timeout(90)

DATA = Path(__file__).parent / "data"
TRIED: Counter[str] = Counter()
LEAKS = ("Traceback", "Error:", "Exception", "File \"", ".py", "bot/", "adapters/", "sqlalchemy", "None")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    print(f"\n[reliability] bad inputs tried: {sum(TRIED.values())} {dict(TRIED)}")


def corpus(name: str) -> list[dict[str, Any]]:
    items = json.loads((DATA / name).read_text(encoding="utf-8"))
    for item in items:
        if "repeat" in item:
            item["text"] = item["prefix"] + item["repeat"] * item["times"]
    return items


async def settled(bot: RunningTelegramBot, fake: FakeTelegram, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.pending_updates or await bot.voicebot.store.inbox_pending("telegram"):
        if time.monotonic() > deadline:
            raise TimeoutError("updates still pending")
        await asyncio.sleep(0.02)


def replies_to(fake: FakeTelegram, chat: FakeChat, message_id: int) -> list[str]:
    return [m.text or "" for m in fake.sent_to(chat, "text") if m.reply_to == message_id]


async def answered(fake: FakeTelegram, chat: FakeChat, update: dict[str, Any], timeout: float = 15.0) -> str:
    """The text of the bot's (single, possibly multi-part) answer to ``update``."""
    message_id = update["message"]["message_id"]
    await fake.wait_until(lambda: bool(replies_to(fake, chat, message_id)), timeout=timeout)
    return "\n".join(replies_to(fake, chat, message_id))


def stored_history(bot: RunningTelegramBot, chat: FakeChat) -> Any:
    async def read() -> list[tuple[str, str]]:
        store = bot.voicebot.store
        chat_id = await store.chat_id("telegram", str(chat.id))
        return [(m.role, m.content) for m in await store.recent_messages(chat_id, 10_000)]

    return read()


def assert_no_leaks(texts: list[str]) -> None:
    for text in texts:
        for leak in LEAKS:
            assert leak not in text, (leak, text[:300])


# --- audio --------------------------------------------------------------------------------------


async def test_bad_audio_gets_clear_replies_and_leaves_the_history_clean(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=1000,
                                   max_audio_seconds=300)
    user, chat = telegram_fake.new_private_chat()
    half = (DATA / "truncated_half.ogg").read_bytes()
    wav = (DATA / "voice_note.wav").read_bytes()
    silence = (DATA / "silence.ogg").read_bytes()
    groq_fake.set_transcript(half, "the first half of a sentence")
    groq_fake.set_transcript(wav, "a wav in disguise")
    groq_fake.set_transcript(silence, "")

    def voice(name: str, **kw: Any) -> dict[str, Any]:
        return telegram_fake.send_voice(chat, user, (DATA / name).read_bytes(), **kw)

    cases: list[tuple[str, Any, str]] = [
        ("empty", lambda: voice("empty.ogg", duration=1), "I couldn't read that audio"),
        ("truncated-header", lambda: voice("truncated_header.ogg", duration=2), "I couldn't read that audio"),
        ("truncated-half", lambda: voice("truncated_half.ogg"), "You said: the first half of a sentence"),
        ("random-bytes", lambda: voice("random.ogg", duration=3), "I couldn't read that audio"),
        ("oggs-then-noise", lambda: voice("oggs_then_noise.ogg", duration=3), "I couldn't read that audio"),
        ("wav-as-voice-note", lambda: voice("voice_note.wav"), "You said: a wav in disguise"),
        ("silence", lambda: voice("silence.ogg"), "I couldn't hear any words"),
        ("declared-too-long", lambda: voice("truncated_half.ogg", duration=301), "That voice note is too long (301 s)"),
        ("declared-too-big", lambda: voice("truncated_half.ogg", file_size=30 * 1024 * 1024),
         "That audio file is too large"),
        ("random-bytes-as-mp3-file", lambda: telegram_fake.send_audio(
            chat, user, (DATA / "random.ogg").read_bytes(), file_name="song.mp3", duration=3),
         "I couldn't read that audio"),
        ("wav-as-audio-file", lambda: telegram_fake.send_audio(
            chat, user, wav, file_name="memo.wav", mime_type="audio/wav"), "You said: a wav in disguise"),
    ]
    failures, llm_before = [], 0
    expected_history: list[str] = []
    for name, send, expected in cases:
        TRIED["audio"] += 1
        llm_before = len(groq_fake.chat_requests)
        files_before = len(telegram_fake.requests_to("/getFile"))
        text = await answered(telegram_fake, chat, send())
        if expected not in text:
            failures.append((name, text[:200]))
        if name == "silence" and len(groq_fake.chat_requests) != llm_before:
            failures.append((name, "the LLM was asked about silence"))
        if name.startswith("declared") and len(telegram_fake.requests_to("/getFile")) != files_before:
            failures.append((name, "downloaded before the declared size/duration was checked"))
        if expected.startswith("You said: "):
            expected_history.append(expected.removeprefix("You said: "))
    await settled(bot, telegram_fake)
    assert failures == []
    assert_no_leaks(telegram_fake.texts(chat))

    history = await stored_history(bot, chat)
    assert [content for role, content in history if role == "user"] == expected_history
    assert [role for role, _ in history] == ["user", "assistant"] * len(expected_history)
    final = await answered(telegram_fake, chat, telegram_fake.send_text(chat, user, "all good?"))
    assert f"I have {2 * len(expected_history)} earlier messages" in final


# --- text ---------------------------------------------------------------------------------------


async def test_hostile_text_is_answered_or_refused_clearly_and_never_breaks_parse_mode(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=1000)
    user, chat = telegram_fake.new_private_chat()
    items = corpus("texts.json") + [
        {"name": "100k-chars", "text": "lorem ipsum " * 8334, "expect": "too long"},
    ]
    failures = []
    answered_texts: list[str] = []
    for item in items:
        TRIED["text"] += 1
        update = telegram_fake.send_text(chat, user, item["text"], entities=[])
        reply = await answered(telegram_fake, chat, update)
        if item["expect"] == "too long":
            if not reply.startswith(f"That message is too long ({len(item['text'])} characters)"):
                failures.append((item["name"], reply[:200]))
            continue
        if "You said: " not in reply:
            failures.append((item["name"], reply[:200]))
        elif "literal" in item and item["literal"] not in reply:
            failures.append((item["name"], "shown differently: " + reply[:200]))
        answered_texts.append(item["text"])
    await settled(bot, telegram_fake)
    assert failures == []
    # Telegram accepted every message as sent (the fake enforces parse_mode and the 4096 limit).
    refused = [r for r in telegram_fake.requests_to("/sendMessage") if r.status != 200]
    assert refused == [], [(r.status, r.params.get("text", "")[:80]) for r in refused]
    assert_no_leaks([t for t in telegram_fake.texts(chat) if "You said:" not in t])

    history = await stored_history(bot, chat)
    users = [content for role, content in history if role == "user"]
    assert len(users) == len(answered_texts)
    for stored, sent in zip(users, answered_texts, strict=True):
        assert stored == clean_input(sent).strip(), (stored[:80], sent[:80])
    final = await answered(telegram_fake, chat, telegram_fake.send_text(chat, user, "still sane?"))
    assert f"I have {2 * len(answered_texts)} earlier messages" in final


# --- commands -----------------------------------------------------------------------------------


async def test_malformed_commands_get_a_clear_answer(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=1000)
    user, chat = telegram_fake.new_private_chat()
    failures = []
    for item in corpus("commands.json"):
        TRIED["command"] += 1
        update = telegram_fake.send_text(chat, user, item["text"])
        if item["expect"] == "<none>":
            await settled(bot, telegram_fake)
            if replies_to(telegram_fake, chat, update["message"]["message_id"]):
                failures.append((item["text"][:40], "answered a command for another bot"))
            continue
        reply = await answered(telegram_fake, chat, update)
        expected = "You said: " if item["expect"] == "<llm>" else item["expect"]
        if expected not in reply:
            failures.append((item["text"][:40], reply[:200]))
    await settled(bot, telegram_fake)
    assert failures == []
    assert_no_leaks([t for t in telegram_fake.texts(chat) if "You said:" not in t])


async def test_a_group_full_of_bad_input_stays_quiet_unless_addressed(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=1000)
    group, user = telegram_fake.group(), telegram_fake.user()
    for name in ("empty.ogg", "random.ogg", "truncated_header.ogg", "oggs_then_noise.ogg"):
        TRIED["group-audio"] += 1
        telegram_fake.send_voice(group, user, (DATA / name).read_bytes(), duration=2)
    for item in corpus("texts.json")[:6]:
        TRIED["group-text"] += 1
        telegram_fake.send_text(group, user, item["text"], entities=[])
    await settled(bot, telegram_fake)
    assert telegram_fake.sent_to(group) == [] and groq_fake.chat_requests == []
    chat_id = await bot.voicebot.store.chat_id("telegram", str(group.id))
    assert await bot.voicebot.store.count_messages(chat_id) == 0


# --- the core on PostgreSQL, where text has stricter rules than in SQLite ----------------------------


async def test_control_characters_are_stored_on_postgresql(
    fake_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, groq_fake: FakeGroq
) -> None:
    if (why := await postgres_unavailable()) is not None:
        pytest.skip(why)
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    async with fresh_postgres_url() as url:
        bot = await VoiceBot.create(Settings(database_url=url, voice_replies=False, avatar_provider="none"))
        try:
            sink = SilentSink()
            for n, text in enumerate(["nul\x00inside", "bell\x07 and esc\x1b", "lone \ud800 surrogate", "fine"]):
                TRIED["postgres-text"] += 1
                message = IncomingMessage("test", "pg", "u1", str(n), text=text)
                assert await bot.handle(message, sink) is Outcome.ANSWERED, sink.replies[-1].text
            chat_id = await bot.store.chat_id("test", "pg")
            users = [m.content for m in await bot.store.recent_messages(chat_id) if m.role == "user"]
            assert users == ["nulinside", "bell\x07 and esc\x1b", "lone \ufffd surrogate", "fine"]
        finally:
            await bot.aclose()
