"""Abuse: a flooding user is rate-limited without slowing anyone else; daily budgets hold.

One user sends 1 000 messages at once to a running Telegram bot: they get the answers their
rate allows and one "too fast" notice, the LLM is asked only that often, and another chat
is answered promptly in the middle of the flood. Voice notes over the limit are refused
before they are downloaded or transcribed (those cost money). Daily budgets (listening
seconds, LLM tokens, characters spoken) stop what they budget, each with a clear message,
and ``/stats`` shows where a user stands.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, select

from storage.models import InboxItem
from tests.fakes import audio_samples
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.telegram_plugin import RunningTelegramBot, StartBot

pytestmark = pytest.mark.timeout(120)

FLOOD = 1000


async def unanswered(bot: RunningTelegramBot) -> int:
    """Updates stored and not yet handled (counted, not loaded: the flood leaves many)."""
    async with bot.voicebot.store.engine.connect() as connection:
        return int(await connection.scalar(
            select(func.count()).select_from(InboxItem).where(InboxItem.done.is_(False))) or 0)


async def settled(bot: RunningTelegramBot, fake: FakeTelegram, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.pending_updates or await unanswered(bot):
        if time.monotonic() > deadline:
            raise TimeoutError("updates still pending")
        await asyncio.sleep(0.1)


async def test_a_flood_of_1000_messages_is_rate_limited_without_delaying_other_chats(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=5,
                                   rate_limit_window=60)
    flooder, flood_chat = telegram_fake.new_private_chat("Flooder")
    calm, calm_chat = telegram_fake.new_private_chat("Calm")
    for i in range(FLOOD):
        telegram_fake.send_text(flood_chat, flooder, f"spam {i}")
    await telegram_fake.wait_until(lambda: len(telegram_fake.sent_to(flood_chat)) >= 1, timeout=20)

    asked_at = time.monotonic()
    telegram_fake.send_text(calm_chat, calm, "just one question")
    [answer] = await telegram_fake.wait_for_sent(calm_chat, timeout=20)
    waited = time.monotonic() - asked_at
    assert "You said: just one question" in answer.text
    flood_left = await unanswered(bot)
    assert waited < 2.0, f"the calm chat waited {waited:.1f} s behind the flood"

    await settled(bot, telegram_fake)
    texts = telegram_fake.texts(flood_chat)
    assert sum("You said: spam" in t for t in texts) == 5
    assert sum("too fast" in t for t in texts) == 1
    assert len(texts) == 6  # the rest was dropped silently
    assert len(groq_fake.chat_requests) == 6  # five for the flooder, one for the calm chat
    chat_id = await bot.voicebot.store.chat_id("telegram", str(flood_chat.id))
    assert await bot.voicebot.store.count_messages(chat_id) == 10  # nothing of the flood is in history
    print(f"\n[reliability] flood: {FLOOD} messages, {flood_left} still queued when the calm chat "
          f"was answered in {waited:.2f} s")


async def test_a_voice_note_flood_is_refused_before_download_and_transcription(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=3,
                                   rate_limit_window=60)
    user, chat = telegram_fake.new_private_chat()
    clip = audio_samples.tone_ogg(1.0, seed=5)
    for _ in range(30):
        telegram_fake.send_voice(chat, user, clip)
    await settled(bot, telegram_fake)
    assert len(groq_fake.transcription_requests) == 3
    assert len(telegram_fake.requests_to("/getFile")) == 3
    texts = telegram_fake.texts(chat)
    assert sum("You said:" in t for t in texts) == 3 and sum("too fast" in t for t in texts) == 1


async def test_a_group_flood_of_chatter_is_cheap(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    """Group chatter that does not address the bot costs no LLM call and no rate budget."""
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, rate_limit_messages=3)
    group, user = telegram_fake.group(), telegram_fake.user()
    for i in range(100):
        telegram_fake.send_text(group, user, f"chatter {i}")
    telegram_fake.send_text(group, user, "@voicebot_test_bot now a real question")
    await telegram_fake.wait_for_sent(group, timeout=30)
    await settled(bot, telegram_fake)
    assert len(groq_fake.chat_requests) == 1
    assert "@voicebot_test_bot now a real question" in telegram_fake.texts(group)[0]


# --- daily budgets ---------------------------------------------------------------------------


async def test_the_listening_budget_refuses_voice_notes_before_transcribing_but_not_text(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False, daily_audio_seconds=2)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_voice(chat, user, audio_samples.tone_ogg(2.5, seed=1))
    await telegram_fake.wait_for_sent(chat, 1)
    telegram_fake.send_voice(chat, user, audio_samples.tone_ogg(1.0, seed=2))
    await telegram_fake.wait_for_sent(chat, 2)
    telegram_fake.send_text(chat, user, "typing instead")
    await telegram_fake.wait_for_sent(chat, 3)
    telegram_fake.send_text(chat, user, "/stats")
    await telegram_fake.wait_for_sent(chat, 4)
    first, refused, typed, stats = telegram_fake.texts(chat)
    assert "You said:" in first
    assert "today's listening allowance" in refused and "/stats" in refused
    assert "You said: typing instead" in typed
    assert "audio heard: 2 s / 2 s" in stats or "audio heard: 3 s / 3 s" in stats, stats
    assert len(groq_fake.transcription_requests) == 1  # the refused note was never transcribed


async def test_the_token_budget_stops_answers_and_stats_still_work(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False, daily_tokens=40)
    user, chat = telegram_fake.new_private_chat()
    other, other_chat = telegram_fake.new_private_chat("Other")
    for n, text in enumerate(["first question", "second question", "/stats"], start=1):
        telegram_fake.send_text(chat, user, text)
        await telegram_fake.wait_for_sent(chat, n)
    telegram_fake.send_text(other_chat, other, "my own budget")
    await telegram_fake.wait_for_sent(other_chat)
    first, refused, stats = telegram_fake.texts(chat)
    assert "You said: first question" in first
    assert "today's conversation allowance" in refused
    assert "turns: 1 / 1" in stats and "tokens: " in stats
    assert "You said: my own budget" in telegram_fake.texts(other_chat)[0]  # budgets are per user
    assert len(groq_fake.chat_requests) == 2


async def test_the_voice_budget_silences_replies_but_keeps_answering_in_text(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq,
    elevenlabs_fake: FakeElevenLabs,
) -> None:
    await start_telegram_bot(stream_text=False, daily_tts_chars=30)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "say something")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    telegram_fake.send_text(chat, user, "and again")
    await telegram_fake.wait_for_sent(chat, 3, timeout=20)  # text, voice, text
    telegram_fake.send_text(chat, user, "/stats")
    await telegram_fake.wait_for_sent(chat, 4)
    texts = telegram_fake.texts(chat)
    assert "You said: and again" in texts[1]
    assert len(telegram_fake.sent_to(chat, "voice")) == 1 and len(elevenlabs_fake.tts_requests) == 1
    assert "characters spoken: " in texts[2]
