"""End-to-end: the real Telegram adapter (PTB Application, our intake) against the fake Bot API
and the Groq / ElevenLabs fakes, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.fakes import audio_samples
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq, content_text, default_reply
from tests.fakes.telegram_api import FakeTelegram, utf16_len
from tests.fakes.telegram_plugin import RunningTelegramBot, StartBot

pytestmark = pytest.mark.timeout(60)


async def settled(bot: RunningTelegramBot, fake: FakeTelegram, timeout: float = 15.0) -> None:
    """Wait until every queued update was fetched, stored and answered (or ignored)."""
    deadline = time.monotonic() + timeout
    while fake.pending_updates or await bot.voicebot.store.inbox_pending("telegram"):
        if time.monotonic() > deadline:
            raise TimeoutError("updates still pending")
        await asyncio.sleep(0.02)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    return content_text(next(m for m in reversed(messages) if m.get("role") == "user").get("content"))


# --- private chats ----------------------------------------------------------------------------


async def test_private_voice_note_gets_text_and_a_voice_note(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs
) -> None:
    # Each stage lasts long enough to show its chat action (ACTION_GRACE is 0.2 s).
    groq_fake.latency["stt"] = 0.4
    elevenlabs_fake.latency["tts"] = 0.4
    telegram_fake.latency["sendVoice"] = 0.4
    await start_telegram_bot()
    user, chat = telegram_fake.new_private_chat("Alice")
    voice = audio_samples.tone_ogg(2.0)
    groq_fake.set_transcript(voice, "What is the weather like?")
    update = telegram_fake.send_voice(chat, user, voice)

    [note] = await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    [text] = telegram_fake.sent_to(chat, "text")  # streamed: one message, edited, never sent twice
    assert text.text.startswith("\N{MICROPHONE} What is the weather like?\n\n")
    assert "You said: What is the weather like?" in text.text
    assert any(e["type"] == "italic" for e in text.entities)  # the transcript line
    assert text.reply_to == note.reply_to == update["message"]["message_id"]

    assert note.file is not None and note.file.data.startswith(b"OggS")
    info = audio_samples.probe(note.file.data)
    assert info.audio_codec == "opus" and info.duration > 0.4
    assert note.duration == max(1, round(info.duration))
    assert telegram_fake.actions_in(chat) == ["typing", "record_voice", "upload_voice"]
    assert "voice.ogg" in (groq_fake.transcription_requests[0].files["file"].filename or "")


async def test_a_quick_answer_shows_no_chat_action(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    """Telegram asks for chat actions only when an answer takes noticeable time: stages that
    end within ACTION_GRACE cost no call, a slow one shows its action while it lasts."""
    await start_telegram_bot(stream_text=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "quick one")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    await asyncio.sleep(0.4)  # past the grace: nothing was left waiting to go out
    assert telegram_fake.actions_in(chat) == []

    groq_fake.latency["chat"] = 0.5
    telegram_fake.send_text(chat, user, "slow one")
    await telegram_fake.wait_for_sent(chat, 2, kind="voice", timeout=20)
    await asyncio.sleep(0.4)
    assert telegram_fake.actions_in(chat) == ["typing"]


async def test_reset_forgets_the_conversation(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    for n, text in enumerate(("first question", "second question"), start=1):
        telegram_fake.send_text(chat, user, text)
        await telegram_fake.wait_for_sent(chat, n)
    assert "I have 2 earlier messages" in telegram_fake.texts(chat)[-1]

    telegram_fake.send_text(chat, user, "/reset")
    await telegram_fake.wait_for_sent(chat, 3)
    assert telegram_fake.texts(chat)[-1].startswith("Done: I forgot this conversation")

    telegram_fake.send_text(chat, user, "third question")
    await telegram_fake.wait_for_sent(chat, 4)
    assert [m["role"] for m in groq_fake.last_messages] == ["system", "user"]
    assert "I have 0 earlier messages" in telegram_fake.texts(chat)[-1]


async def test_command_menu_is_registered(start_telegram_bot: StartBot, telegram_fake: FakeTelegram) -> None:
    bot = await start_telegram_bot()
    assert [c["command"] for c in telegram_fake.commands] == [name for name, _ in bot.voicebot.commands.menu()]


# --- groups -----------------------------------------------------------------------------------


async def test_group_chatter_without_mention_gets_nothing(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot()
    group, user = telegram_fake.group(), telegram_fake.user()
    telegram_fake.send_text(group, user, "just chatting among friends")
    chatter = audio_samples.tone_ogg(1.0, seed=3)
    groq_fake.set_transcript(chatter, "did you see the game yesterday")
    telegram_fake.send_voice(group, user, chatter)
    await settled(bot, telegram_fake)

    assert telegram_fake.sent_to(group) == []
    assert telegram_fake.actions_in(group) == []  # not even "typing" while the note was transcribed
    assert groq_fake.chat_requests == []
    chat_id = await bot.voicebot.store.chat_id("telegram", str(group.id))
    assert await bot.voicebot.store.count_messages(chat_id) == 0


async def test_group_answers_a_mention_a_reply_and_its_spoken_name(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False)
    group, user = telegram_fake.group(), telegram_fake.user()

    mention = telegram_fake.send_text(group, user, "@voicebot_test_bot how tall is Everest?")
    [first] = await telegram_fake.wait_for_sent(group, 1)
    assert first.reply_to == mention["message"]["message_id"]

    reply = telegram_fake.send_text(group, user, "and K2?", reply_to=first)
    answered = await telegram_fake.wait_for_sent(group, 2)
    assert answered[1].reply_to == reply["message"]["message_id"]

    spoken = audio_samples.tone_ogg(1.5, seed=5)
    groq_fake.set_transcript(spoken, "Hey voice bot, what's the capital of Peru?")
    note = telegram_fake.send_voice(group, user, spoken)
    answered = await telegram_fake.wait_for_sent(group, 3)
    assert answered[2].reply_to == note["message"]["message_id"]
    assert "capital of Peru" in answered[2].text


async def test_group_ignores_commands_for_another_bot(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    bot = await start_telegram_bot()
    group, user = telegram_fake.group(), telegram_fake.user()
    telegram_fake.set_admin(group, user)
    telegram_fake.send_text(group, user, "/voice@some_other_bot off")
    await settled(bot, telegram_fake)
    assert telegram_fake.sent_to(group) == []


async def test_group_settings_commands_need_an_admin(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    await start_telegram_bot()
    group, member, admin = telegram_fake.group(), telegram_fake.user("Bob"), telegram_fake.user("Ann")
    telegram_fake.set_admin(group, admin)
    telegram_fake.send_text(group, member, "/voice@voicebot_test_bot off")
    await telegram_fake.wait_for_sent(group, 1)
    telegram_fake.send_text(group, admin, "/voice off")
    await telegram_fake.wait_for_sent(group, 2)
    telegram_fake.send_text(group, member, "/help")  # not a settings command: no admin check
    await telegram_fake.wait_for_sent(group, 3)

    refused, accepted, _ = telegram_fake.texts(group)
    assert refused == "Only group admins can use /voice here."
    assert accepted == "Voice replies off."
    assert len(telegram_fake.requests_to("/getChatMember")) == 2


async def test_forum_topic_replies_stay_in_their_thread(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot()
    forum, user = telegram_fake.group("Forum", forum=True), telegram_fake.user()
    voice = audio_samples.tone_ogg(1.0, seed=9)
    groq_fake.set_transcript(voice, "Voicebot, summarise this topic")
    groq_fake.latency["chat"] = 0.4  # long enough to show "typing"
    telegram_fake.send_voice(forum, user, voice, thread_id=77)
    await telegram_fake.wait_for_sent(forum, kind="voice", timeout=20)

    assert {m.thread_id for m in telegram_fake.sent_to(forum)} == {77}
    assert {a.thread_id for a in telegram_fake.chat_actions if a.chat_id == forum.id} == {77}


# --- replies ----------------------------------------------------------------------------------


LONG_PARAGRAPH = "Paragraph {n} talks about **topic {n}** at some length, sentence after sentence. " * 12


async def test_long_replies_are_split_under_the_limit(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    code = "```python\n" + "\n".join(f"print('line {i} <&>')" for i in range(60)) + "\n```"
    paragraphs = [LONG_PARAGRAPH.format(n=n).strip() for n in range(8)]
    answer = "\n\n".join(paragraphs[:4] + [code] + paragraphs[4:])
    groq_fake.reply_fn = lambda messages: answer
    await start_telegram_bot(llm_max_tokens=5000)
    user, chat = telegram_fake.new_private_chat()
    update = telegram_fake.send_text(chat, user, "tell me everything")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)

    texts = telegram_fake.sent_to(chat, "text")
    assert len(texts) >= 3
    assert all(utf16_len(m.text or "") <= 4096 for m in texts)
    assert texts[0].reply_to == update["message"]["message_id"]
    shown = "\n".join(m.text or "" for m in texts)
    for n in range(8):
        assert f"Paragraph {n} talks about topic {n}" in shown  # bold markers became entities
    assert "print('line 59 <&>')" in shown
    assert any(e["type"] == "pre" and e.get("language") == "python" for m in texts for e in m.entities)


async def test_streamed_reply_is_edited_at_a_steady_pace(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    groq_fake.reply_fn = lambda messages: " ".join(f"word{i}" for i in range(60)) + " and **done**."
    groq_fake.token_delay = 0.05  # about three seconds of tokens
    await start_telegram_bot(voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "count for me")
    await telegram_fake.wait_until(
        lambda: any("done." in (m.text or "") and m.entities for m in telegram_fake.sent_to(chat)), timeout=20
    )

    [message] = telegram_fake.sent_to(chat, "text")
    assert len(message.edits) >= 2
    moments = [message.sent_at, *message.edited_at]
    streamed_gaps = [b - a for a, b in zip(moments[:-2], moments[1:-1], strict=True)]
    assert all(gap >= 0.9 for gap in streamed_gaps), streamed_gaps  # the last edit is the final text
    assert message.text.endswith("and done.") and {"type": "bold", "offset": message.text.index("done"),
                                                    "length": 4} in message.entities


async def test_markup_telegram_refuses_is_sent_as_plain_text(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    groq_fake.reply_fn = lambda messages: "Use **bold** wisely."
    await start_telegram_bot(stream_text=False, voice_replies=False)
    telegram_fake.fail_next("sendMessage", 400, body={
        "ok": False, "error_code": 400, "description": "Bad Request: can't parse entities: Unsupported start tag"})
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "advice?")
    [message] = await telegram_fake.wait_for_sent(chat)
    assert message.text == "Use **bold** wisely." and message.parse_mode is None


# --- reliability ------------------------------------------------------------------------------


async def test_a_429_from_telegram_is_retried(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    await start_telegram_bot(stream_text=False)
    telegram_fake.fail_next("sendMessage", 429)
    telegram_fake.fail_next("sendVoice", 429)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "hello there")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)

    for method in ("/sendMessage", "/sendVoice"):
        first, second = telegram_fake.requests_to(method)
        assert (first.status, second.status) == (429, 200)
        assert second.received_at - first.received_at >= telegram_fake.retry_after
    assert len(telegram_fake.sent_to(chat, "text")) == 1


async def test_a_429_on_a_chat_action_is_not_resent_after_the_wait(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    """A chat action is decoration that the next refresh supersedes: a 429 skips it."""
    groq_fake.latency["chat"] = 1.8  # "typing" goes out after 0.2 s; the next refresh would be at 4 s
    telegram_fake.fail_next("sendChatAction", 429)  # retry after 1 s
    await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "hello there")
    await telegram_fake.wait_for_sent(chat, timeout=20)
    assert [r.status for r in telegram_fake.requests_to("/sendChatAction")] == [429]


async def test_a_chat_action_on_the_wire_when_its_stage_ends_is_let_finish(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    """Abandoning its answer would not unsend it, only cost the connection (a new TLS one)."""
    groq_fake.latency["chat"] = 0.35  # "typing" leaves at 0.2 s and is answered at 0.8 s
    telegram_fake.latency["sendChatAction"] = 0.6
    await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "hello there")
    [reply] = await telegram_fake.wait_for_sent(chat, timeout=20)
    [action] = telegram_fake.requests_to("/sendChatAction")
    assert action.received_at < reply.sent_at  # the stage ended while the action was on the wire
    await asyncio.sleep(0.8)
    [action] = telegram_fake.requests_to("/sendChatAction")  # and no other action followed it
    assert action.status == 200 and not action.abandoned


async def test_a_429_on_a_streamed_edit_is_not_resent_with_stale_text(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    """The streamed message's next edit carries newer text; the refused one is not repeated."""
    groq_fake.token_delay = 0.2  # the answer streams for about 2.5 s: an edit every second
    telegram_fake.fail_next("editMessageText", 429)
    bot = await start_telegram_bot(voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "tell me a long story")
    await telegram_fake.wait_for_sent(chat, timeout=20)
    await settled(bot, telegram_fake)  # the answer is complete: its final edit went out
    edits = telegram_fake.requests_to("/editMessageText")
    refused = [r for r in edits if r.status == 429]
    assert len(refused) == 1 and len(edits) >= 2
    later = [r.params for r in edits if r.status == 200 and r.received_at > refused[0].received_at]
    refused_text = refused[0].params["text"]
    assert later and all(body["text"] != refused_text for body in later)


@pytest.mark.parametrize("answer, final_edit", [
    ("Paris is the capital of France, and Lyon is the second city.", False),
    ("Paris is the capital of **France**, and Lyon is the second city.", True),
])
async def test_a_streamed_answer_gets_a_final_edit_only_when_it_changes_what_shows(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq,
    elevenlabs_fake: FakeElevenLabs, answer: str, final_edit: bool,
) -> None:
    """The stream shows the whole answer while the voice is synthesized; a plain answer is
    then complete, and only Markdown (bold here) needs the final, formatted edit."""
    groq_fake.reply_fn = lambda messages: answer
    elevenlabs_fake.latency["tts"] = 1.6  # more than the 1 s between streamed edits
    bot = await start_telegram_bot()
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "which cities?")
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    await settled(bot, telegram_fake)

    [message] = telegram_fake.sent_to(chat, "text")
    assert message.text == answer.replace("**", "")
    assert bool(message.entities) is final_edit
    edits = telegram_fake.requests_to("/editMessageText")
    assert all(r.status == 200 for r in edits)  # none refused as "message is not modified"
    formatted = [r for r in edits if r.params.get("parse_mode") == "HTML"]
    assert len(formatted) == int(final_edit)


async def test_chats_run_in_parallel_and_each_chat_in_order(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    async def reply(messages: list[dict[str, Any]]) -> str:
        if "slow" in last_user_text(messages):
            await asyncio.sleep(1.5)
        return default_reply(messages)

    groq_fake.reply_fn = reply
    await start_telegram_bot(stream_text=False, voice_replies=False)
    alice, bob = telegram_fake.user("Alice"), telegram_fake.user("Bob")
    chat_a, chat_b = telegram_fake.private_chat(alice), telegram_fake.private_chat(bob)
    first = telegram_fake.send_text(chat_a, alice, "slow question")
    second = telegram_fake.send_text(chat_a, alice, "quick follow-up")
    telegram_fake.send_text(chat_b, bob, "quick question")

    await telegram_fake.wait_for_sent(chat_a, 2)
    [b_reply] = telegram_fake.sent_to(chat_b)
    a_replies = telegram_fake.sent_to(chat_a)
    assert b_reply.sent_at < a_replies[0].sent_at - 1.0  # chat B did not wait for chat A
    assert [m.reply_to for m in a_replies] == [first["message"]["message_id"], second["message"]["message_id"]]
    assert "slow question" in a_replies[0].text and "quick follow-up" in a_replies[1].text


async def test_a_redelivered_update_is_answered_once(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    async def reply(messages: list[dict[str, Any]]) -> str:
        await asyncio.sleep(0.5)  # the copy arrives while the original is still being answered
        return default_reply(messages)

    groq_fake.reply_fn = reply
    bot = await start_telegram_bot(stream_text=False)
    user, chat = telegram_fake.new_private_chat()
    update = telegram_fake.send_text(chat, user, "only once please")
    telegram_fake.redeliver(update)
    await telegram_fake.wait_for_sent(chat, kind="voice", timeout=20)
    telegram_fake.redeliver(update)
    await settled(bot, telegram_fake)

    assert len(telegram_fake.sent_to(chat, "text")) == 1
    assert len(telegram_fake.sent_to(chat, "voice")) == 1
    assert len(groq_fake.chat_requests) == 1


async def test_an_update_stored_before_a_crash_is_answered_after_restart(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    await bot.shutdown()
    user, chat = telegram_fake.new_private_chat()
    update = telegram_fake.send_text(chat, user, "did you get this?")
    # The crashed process had stored the update but not answered it, and had not confirmed it:
    # it is both in our inbox and still on Telegram's side.
    import json

    from storage.store import HistoryStore

    store = HistoryStore.from_url(bot.voicebot.settings.database_url)
    await store.inbox_put("telegram", [(str(update["update_id"]), json.dumps(update))])
    await store.aclose()

    restarted = await start_telegram_bot(stream_text=False, voice_replies=False)
    await telegram_fake.wait_for_sent(chat)
    await settled(restarted, telegram_fake)
    assert len(telegram_fake.sent_to(chat)) == 1
    assert len(groq_fake.chat_requests) == 1


async def test_shutdown_is_quick_and_an_interrupted_turn_is_answered_after_restart(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    hang = asyncio.Event()

    async def reply(messages: list[dict[str, Any]]) -> str:
        if not hang.is_set():
            await asyncio.sleep(30)
        return default_reply(messages)

    groq_fake.reply_fn = reply
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, provider_timeout=60)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "take your time")
    await groq_fake.wait_for_requests(1, "/chat/completions")
    assert await bot.shutdown() < 5.0
    assert telegram_fake.sent_to(chat) == []

    hang.set()
    await start_telegram_bot(stream_text=False, voice_replies=False)
    [answer] = await telegram_fake.wait_for_sent(chat)
    assert "take your time" in answer.text


async def test_allow_list_refuses_politely_once(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(allowed_user_ids=["42"])
    stranger, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, stranger, "hello?")
    telegram_fake.send_text(chat, stranger, "anyone?")
    await settled(bot, telegram_fake)
    assert telegram_fake.texts(chat) == ["Sorry, this bot is private and not available in this chat."]
    assert groq_fake.chat_requests == []


async def test_a_corrupt_voice_note_gets_a_clear_message_and_the_bot_keeps_working(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_voice(chat, user, b"OggS" + bytes(range(256)) * 8, duration=2)
    await telegram_fake.wait_for_sent(chat, 1)
    telegram_fake.send_text(chat, user, "can you read this instead?")
    await telegram_fake.wait_for_sent(chat, 2)
    complaint, answer = telegram_fake.texts(chat)
    assert complaint.startswith("I couldn't read that audio")
    assert "can you read this instead?" in answer


async def test_a_failed_download_gets_a_clear_message(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    await start_telegram_bot(stream_text=False)
    telegram_fake.fail_next("getFile", 500)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_voice(chat, user, audio_samples.tone_ogg(1.0))
    [message] = await telegram_fake.wait_for_sent(chat)
    assert message.text.startswith("I couldn't download that audio")


async def test_oversized_or_overlong_voice_is_refused_before_download(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    await start_telegram_bot(stream_text=False, max_audio_seconds=120)
    user, chat = telegram_fake.new_private_chat()
    clip = audio_samples.tone_ogg(1.0)
    telegram_fake.send_voice(chat, user, clip, file_size=25 * 1024 * 1024)
    telegram_fake.send_voice(chat, user, clip, duration=600)
    await telegram_fake.wait_for_sent(chat, 2)
    too_big, too_long = telegram_fake.texts(chat)
    assert too_big.startswith("That audio file is too large (26.2 MB)")
    assert too_long.startswith("That voice note is too long (600 s)")
    assert telegram_fake.requests_to("/getFile") == []


async def test_audio_files_and_video_notes_are_transcribed(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    song = audio_samples.mp3_bytes(1.0)
    clip = audio_samples.mp4_clip(1.0)
    groq_fake.set_transcript(song, "this is an audio file")
    groq_fake.set_transcript(clip, "this is a video note")
    telegram_fake.send_audio(chat, user, song)
    telegram_fake.send_video_note(chat, user, clip)
    await telegram_fake.wait_for_sent(chat, 2)
    first, second = telegram_fake.texts(chat)
    assert "You said: this is an audio file" in first and "You said: this is a video note" in second
    names = [r.files["file"].filename for r in groq_fake.transcription_requests]
    assert names == ["voice.mp3", "voice.mp4"]


async def test_chat_action_is_refreshed_while_working_and_stops_after(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("adapters.telegram_reply.ACTION_REFRESH", 0.2)

    async def reply(messages: list[dict[str, Any]]) -> str:
        await asyncio.sleep(1.2)
        return default_reply(messages)

    groq_fake.reply_fn = reply
    await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "think hard")
    await telegram_fake.wait_for_sent(chat)
    typing = telegram_fake.actions_in(chat).count("typing")
    assert typing >= 4
    await asyncio.sleep(0.6)
    assert telegram_fake.actions_in(chat).count("typing") == typing


# --- webhook ----------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_webhook_mode_checks_the_secret_and_answers(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    await start_telegram_bot(
        stream_text=False, voice_replies=False, telegram_webhook_url=url,
        telegram_webhook_listen="127.0.0.1", telegram_webhook_port=port, telegram_webhook_secret="s3cret-Token_1",
    )
    assert telegram_fake.webhook_url == url and telegram_fake.webhook_secret == "s3cret-Token_1"
    user, chat = telegram_fake.new_private_chat()
    update = telegram_fake.send_text(chat, user, "hello over webhook")
    [answer] = await telegram_fake.wait_for_sent(chat)
    assert "hello over webhook" in answer.text
    assert (update["update_id"], 200) in telegram_fake.webhook_posts

    async with aiohttp.ClientSession() as session:
        forged = {**update, "update_id": update["update_id"] + 1000}
        async with session.post(url, json=forged) as response:
            assert response.status == 403
        async with session.post(url, json=forged, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as response:
            assert response.status == 403
        huge = b"x" * (2 * 1024 * 1024)
        async with session.post(url, data=huge, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}) as response:
            assert response.status == 413
    await asyncio.sleep(0.3)
    assert len(telegram_fake.sent_to(chat)) == 1



async def test_an_answer_telegram_did_not_take_is_delivered_on_a_later_try(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("adapters.telegram_bot.RETRY_DELAYS", (0.3,))
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    telegram_fake.fail_next("sendMessage", 502)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "are you there?")
    [answer] = await telegram_fake.wait_for_sent(chat)
    await settled(bot, telegram_fake)
    assert "are you there?" in answer.text
    assert [r.status for r in telegram_fake.requests_to("/sendMessage")] == [502, 200]
    assert len(groq_fake.chat_requests) == 1  # the stored answer was delivered, not asked again


async def test_a_blocked_user_does_not_make_the_bot_retry(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.telegram_bot.RETRY_DELAYS", (0.1,))
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    telegram_fake.fail_next("sendMessage", 403, times=5)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "bye")
    await settled(bot, telegram_fake)
    await asyncio.sleep(0.3)
    assert len(telegram_fake.requests_to("/sendMessage")) == 1


async def test_avatar_clip_follows_when_video_is_on(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    await start_telegram_bot(stream_text=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "/video on")
    await telegram_fake.wait_for_sent(chat)
    question = telegram_fake.send_text(chat, user, "show yourself")
    [clip] = await telegram_fake.wait_for_sent(chat, kind="video", timeout=30)
    assert clip.reply_to == question["message"]["message_id"]
    assert clip.file is not None and audio_samples.probe(clip.file.data).video_codec is not None
    assert "record_video" in telegram_fake.actions_in(chat)


async def test_the_bot_waits_for_an_unreachable_bot_api_and_still_stops_quickly(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    telegram_fake.fail_next("getMe", 502, times=2)
    bot = await start_telegram_bot(stream_text=False)
    assert [r.status for r in telegram_fake.requests_to("/getMe")][-1] == 200
    assert await bot.shutdown() < 3.0
