"""Platform faults: the Telegram Bot API misbehaving under a running bot (in-process, fake API).

429 with ``retry_after`` (short ones retried in place, long ones handed back to the queue
and delivered once the chat's pause is over, other chats unaffected), 5xx, a long poll that
breaks or answers garbage, file downloads that fail in every way, chat actions and edits that
fail. What must hold: every message answered once (nothing lost, nothing twice, the LLM asked
once per message), a clear reply when a voice note cannot be fetched, and no chat action left
running after a turn is over.

Discord faults are covered at the end of the file when the Discord adapter is present.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.telegram_intake import Backoff
from adapters.telegram_ratelimiter import ChatRateLimiter
from tests.fakes import audio_samples
from tests.fakes.did import FakeDID
from tests.fakes.groq import FakeGroq
from tests.fakes.http_fake import counting_faults
from tests.fakes.telegram_api import FakeChat, FakeTelegram
from tests.fakes.telegram_plugin import RunningTelegramBot, StartBot

pytestmark = pytest.mark.timeout(60)

@pytest.fixture(scope="module", autouse=True)
def _count_faults() -> Iterator[None]:
    with counting_faults("platform"):
        yield


async def settled(bot: RunningTelegramBot, fake: FakeTelegram, timeout: float = 15.0) -> None:
    """Every update fetched, stored and handled (answered, or given up until restart)."""
    deadline = time.monotonic() + timeout
    while fake.pending_updates or await bot.voicebot.store.inbox_pending("telegram"):
        if time.monotonic() > deadline:
            raise TimeoutError("updates still pending")
        await asyncio.sleep(0.02)


def answers_to(fake: FakeTelegram, chat: FakeChat) -> Counter[int]:
    """How many text messages answer each of the chat's message ids."""
    return Counter(m.reply_to for m in fake.sent_to(chat, "text") if m.reply_to)


def no_internals(texts: list[str]) -> None:
    for text in texts:
        for leak in ("Traceback", "Error:", "Exception", ".py", "bot/"):
            assert leak not in text, text


# --- 429 Too Many Requests ------------------------------------------------------------------------


async def test_a_short_retry_after_pauses_only_that_chat(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False)
    telegram_fake.retry_after = 2
    a, chat_a = telegram_fake.new_private_chat("Ann")
    b, chat_b = telegram_fake.new_private_chat("Bob")
    telegram_fake.fail_next("sendMessage", 429)
    first = telegram_fake.send_text(chat_a, a, "hello from a")
    await telegram_fake.wait_until(lambda: bool(telegram_fake.requests_to("/sendMessage")))
    refused_at = time.time()
    telegram_fake.send_text(chat_b, b, "hello from b")
    [answer_b] = await telegram_fake.wait_for_sent(chat_b)
    [answer_a] = await telegram_fake.wait_for_sent(chat_a, timeout=15)
    assert answer_b.sent_at < refused_at + 1.5  # chat B did not wait out chat A's pause
    assert answer_a.sent_at >= refused_at + 2  # chat A waited as long as Telegram asked
    assert answer_a.reply_to == first["message"]["message_id"]
    assert len(groq_fake.chat_requests) == 2


async def test_a_retry_after_longer_than_worth_holding_a_turn_for_is_delivered_later_once(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: waits over one second are "long" (the default is 120 s), and the bot hands
    # the answer back to the queue after 0.3 s instead of 5 s.
    defaults = list(ChatRateLimiter.__init__.__defaults__ or ())
    defaults[-1] = 1.0
    monkeypatch.setattr(ChatRateLimiter.__init__, "__defaults__", tuple(defaults))
    monkeypatch.setattr("adapters.telegram_bot.RETRY_DELAYS", (0.3, 0.3, 0.3))
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    telegram_fake.retry_after = 3
    user, chat = telegram_fake.new_private_chat()
    other, other_chat = telegram_fake.new_private_chat("Other")
    telegram_fake.fail_next("sendMessage", 429)
    telegram_fake.send_text(chat, user, "patience")
    await telegram_fake.wait_until(lambda: bool(telegram_fake.requests_to("/sendMessage")))
    refused_at = time.time()
    telegram_fake.send_text(other_chat, other, "meanwhile")
    [other_answer] = await telegram_fake.wait_for_sent(other_chat)
    [answer] = await telegram_fake.wait_for_sent(chat, timeout=15)
    await settled(bot, telegram_fake)
    assert other_answer.sent_at < refused_at + 1.5
    assert answer.sent_at >= refused_at + 3 and "You said: patience" in answer.text
    assert len(groq_fake.chat_requests) == 2  # the stored answer was delivered, not asked again
    assert [r.status for r in telegram_fake.requests_to("/sendMessage") if r.params.get("chat_id") == str(chat.id)] == [429, 200]


async def test_429_on_streamed_edits_and_chat_actions_never_cost_the_answer(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    groq_fake.reply_fn = lambda messages: " ".join(f"word{i}" for i in range(30)) + " done."
    groq_fake.token_delay = 0.04
    await start_telegram_bot(voice_replies=False)
    telegram_fake.fail_next("editMessageText", 429, times=2)
    telegram_fake.fail_next("sendChatAction", 429, times=3)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "stream please")
    await telegram_fake.wait_until(lambda: any((m.text or "").endswith("done.") for m in telegram_fake.sent_to(chat)),
                                   timeout=20)
    [message] = telegram_fake.sent_to(chat, "text")
    assert message.text.endswith("word29 done.")


# --- 5xx and network errors on sending -----------------------------------------------------------


async def test_a_5xx_on_the_voice_note_keeps_the_text_and_answers_once(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False)
    telegram_fake.fail_next("sendVoice", 502)
    telegram_fake.fail_next("sendChatAction", 500, times=5)
    user, chat = telegram_fake.new_private_chat()
    update = telegram_fake.send_text(chat, user, "talk to me")
    await telegram_fake.wait_for_sent(chat)
    await settled(bot, telegram_fake)
    assert answers_to(telegram_fake, chat) == Counter({update["message"]["message_id"]: 1})
    assert len(groq_fake.chat_requests) == 1
    telegram_fake.send_text(chat, user, "still there?")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)


async def test_a_failed_final_edit_beside_the_voice_note_sends_the_text_anew_once(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    """The streamed message's last edit goes out beside the voice note; if Telegram refuses
    it, the whole answer follows as a new message, and nothing is sent twice."""
    groq_fake.token_delay = 0.02
    bot = await start_telegram_bot()
    telegram_fake.fail_next("editMessageText", 500, times=100)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "edit me if you can")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    await settled(bot, telegram_fake)
    assert len(telegram_fake.sent_to(chat, "voice")) == 1
    texts = telegram_fake.texts(chat)
    assert len(texts) == 2  # the streamed start, then the whole answer
    assert "You said: edit me if you can" in texts[-1] and texts[0] != texts[-1]
    assert len(groq_fake.chat_requests) == 1
    assert telegram_fake.requests_to("/editMessageText")  # it was tried


async def test_a_dropped_connection_while_sending_is_retried_without_asking_the_llm_again(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.telegram_bot.RETRY_DELAYS", (0.3, 0.3, 0.3))
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    telegram_fake.drop_next("sendMessage")
    telegram_fake.fail_next("sendMessage", 500)
    user, chat = telegram_fake.new_private_chat()
    update = telegram_fake.send_text(chat, user, "are you getting this?")
    await telegram_fake.wait_for_sent(chat, timeout=15)
    await settled(bot, telegram_fake)
    assert answers_to(telegram_fake, chat) == Counter({update["message"]["message_id"]: 1})
    assert len(groq_fake.chat_requests) == 1


# --- getUpdates: errors, broken long polls, garbage ----------------------------------------------


async def test_get_updates_faults_lose_nothing_and_answer_once(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Backoff.__init__, "__defaults__", (0.1, 30.0))  # 0.1 s after an error, not 1 s
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    sent = []
    faults = [
        lambda: telegram_fake.fail_next("getUpdates", 502),
        lambda: telegram_fake.drop_next("getUpdates"),
        lambda: telegram_fake.hang_next("getUpdates", seconds=0.5),  # a long poll that breaks off
        lambda: telegram_fake.bad_body_next("getUpdates"),  # a proxy's HTML page
        lambda: telegram_fake.fail_next("getUpdates", 409),  # another poller (briefly)
    ]
    for n, inject in enumerate(faults):
        inject()
        sent.append(telegram_fake.send_text(chat, user, f"message {n}"))
        await telegram_fake.wait_for_sent(chat, n + 1, timeout=15)
    await settled(bot, telegram_fake)
    expected = Counter({u["message"]["message_id"]: 1 for u in sent})
    assert answers_to(telegram_fake, chat) == expected
    assert len(groq_fake.chat_requests) == len(sent)
    assert not bot.task.done()


# --- file downloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["getFile-500", "getFile-400", "download-404", "download-drop",
                                   "download-truncated", "download-hang"])
async def test_a_voice_note_that_cannot_be_fetched_gets_a_clear_reply(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq,
    monkeypatch: pytest.MonkeyPatch, fault: str,
) -> None:
    monkeypatch.setattr("adapters.telegram_bot.DOWNLOAD_TIMEOUT", 0.5)
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    match fault:
        case "getFile-500":
            telegram_fake.fail_next("getFile", 500)
        case "getFile-400":
            telegram_fake.fail_next("getFile", 400, body={"ok": False, "error_code": 400,
                                                          "description": "Bad Request: invalid file_id"})
        case "download-404":
            telegram_fake.fail_next("/file/bot", 404, body=b"Not Found")
        case "download-drop":  # the HTTP stack may retry a dropped request once by itself
            telegram_fake.drop_next("/file/bot", times=3)
        case "download-truncated":
            telegram_fake.truncate_next("/file/bot")
        case "download-hang":
            telegram_fake.hang_next("/file/bot", seconds=10)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_voice(chat, user, audio_samples.tone_ogg(1.0, seed=7))
    [complaint] = await telegram_fake.wait_for_sent(chat, timeout=15)
    assert complaint.text.startswith("I couldn't download that audio"), complaint.text
    assert groq_fake.transcription_requests == [] and groq_fake.chat_requests == []
    telegram_fake.clear_faults()
    telegram_fake.send_text(chat, user, "and text?")
    await telegram_fake.wait_for_sent(chat, 2)
    await settled(bot, telegram_fake)
    no_internals(telegram_fake.texts(chat))


# --- chat actions end with the turn ---------------------------------------------------------------


async def test_no_chat_action_lingers_after_a_failed_avatar_clip(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, did_fake: FakeDID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.telegram_reply.ACTION_REFRESH", 0.1)
    did_fake.latency["talks"] = 0.3  # long enough to show "recording a video" a few times
    await start_telegram_bot(stream_text=False, provider_retries=0)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "/video on")
    await telegram_fake.wait_for_sent(chat)
    did_fake.fail_next("/talks", 500, method="POST")
    telegram_fake.send_text(chat, user, "show yourself")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    await did_fake.wait_for_requests(1, "/talks", timeout=10)
    await asyncio.sleep(0.5)  # the failure is logged; the action must stop with it
    shown = len(telegram_fake.actions_in(chat))
    assert "record_video" in telegram_fake.actions_in(chat)  # it was showing
    await asyncio.sleep(0.6)
    assert len(telegram_fake.actions_in(chat)) == shown, telegram_fake.actions_in(chat)[-8:]
    assert telegram_fake.sent_to(chat, "video") == []


async def test_no_chat_action_lingers_after_a_turn_that_failed(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.telegram_reply.ACTION_REFRESH", 0.1)
    groq_fake.latency["chat"] = 0.4
    await start_telegram_bot(stream_text=False, provider_retries=0)
    groq_fake.fail_next("/chat/completions", 503)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "hello?")
    [notice] = await telegram_fake.wait_for_sent(chat)
    assert "trouble" in notice.text
    await asyncio.sleep(0.3)
    shown = len(telegram_fake.actions_in(chat))
    assert "typing" in telegram_fake.actions_in(chat)  # it was showing
    await asyncio.sleep(0.5)
    assert len(telegram_fake.actions_in(chat)) == shown


# --- Discord: 429s and a gateway that drops -------------------------------------------------------
# (the Discord adapter lives in adapters/discord_*.py; its fixtures in tests/fakes/discord_plugin.py)


async def _discord_answers(fake: Any, channel: Any, count: int, timeout: float = 15.0) -> list[str]:
    messages = await fake.wait_for_bot_messages(count, channel, timeout=timeout)
    return [m["content"] for m in messages if m["content"]]


async def test_discord_429_pauses_one_channel_and_not_another(discord_bot: Any) -> None:
    fake = discord_bot.fake
    slow, quick = fake.dm_channel(fake.alice), fake.dm_channel(fake.bob)
    fake.rate_limit_next(f"/channels/{slow.id}/messages", retry_after=1.5, method="POST")
    await fake.send(fake.user_message(slow, fake.alice, "first in line"))
    await fake.wait_for_requests(1, f"/channels/{slow.id}/messages")
    limited_at = time.time()
    await fake.send(fake.user_message(quick, fake.bob, "meanwhile"))
    [quick_text] = (await _discord_answers(fake, quick, 2))[:1]
    quick_at = time.time()
    texts = await _discord_answers(fake, slow, 2)
    assert quick_text.startswith("You said: meanwhile") and quick_at < limited_at + 1.2
    assert texts[0].startswith("You said: first in line")
    posts = fake.requests_to(f"/channels/{slow.id}/messages", method="POST")
    assert [r.status for r in posts[:2]] == [429, 200] and posts[1].received_at - posts[0].received_at >= 1.4
    assert sum(t.startswith("You said: first in line") for t in fake_texts(fake, slow)) == 1


async def test_discord_5xx_on_send_is_retried_and_answered_once(discord_bot: Any, groq_fake: FakeGroq) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    fake.fail_next(f"/channels/{dm.id}/messages", 502, method="POST")
    await fake.send(fake.user_message(dm, fake.alice, "hello through a hiccup"))
    texts = await _discord_answers(fake, dm, 2)
    assert texts[0].startswith("You said: hello through a hiccup")
    await asyncio.sleep(0.5)
    assert sum(t.startswith("You said:") for t in fake_texts(fake, dm)) == 1
    assert len(groq_fake.chat_requests) == 1


async def test_discord_gateway_drop_reconnects_and_replayed_events_are_answered_once(
    discord_bot: Any, groq_fake: FakeGroq
) -> None:
    fake = discord_bot.fake
    dm = fake.dm_channel(fake.alice)
    first = fake.sessions[-1]
    before = len(fake.sessions)
    await first.ws.close(code=4000, message=b"Unknown error")  # discord.py reconnects and resumes
    for _ in range(400):
        if len(fake.sessions) > before and fake.sessions[-1].ready.is_set():
            break
        await asyncio.sleep(0.02)
    again = fake.sessions[-1]
    assert again is not first and again.ready.is_set()
    assert [p["op"] for p in again.received if p["op"] in (2, 6)] == [6]  # resumed, not a new session
    message = fake.user_message(dm, fake.alice, "still with me?")
    await fake.send(message)
    await fake.dispatch("MESSAGE_CREATE", message)  # Discord replays events around a resume
    texts = await _discord_answers(fake, dm, 2)
    assert texts[0].startswith("You said: still with me?")
    await asyncio.sleep(0.6)
    assert sum(t.startswith("You said:") for t in fake_texts(fake, dm)) == 1
    assert len(groq_fake.chat_requests) == 1


def fake_texts(fake: Any, channel: Any) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel) if m["content"]]
