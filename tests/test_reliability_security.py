"""Security: nobody let in who is not allowed, nothing told that should stay secret.

- allow-lists on every path: text, voice notes (not even downloaded), commands, and updates
  of other kinds (callback queries) are never acted on;
- in groups, settings commands only from admins (anonymous admins included; a channel
  posting in the group is not an admin);
- webhook requests without the secret token are refused unread, bodies are size-limited,
  malformed bodies are a 400, never a crash;
- tokens and API keys never appear in logs (the real ``voicebot telegram`` at DEBUG, with
  errors that echo the secrets back) or in anything sent to a user;
- the SQLite file and its WAL files are private (0600, even under umask 000); an answered
  update's payload is not kept in the inbox; no SQL is built from strings.
"""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from storage.models import Chat, InboxItem, Message
from storage.store import HistoryStore
from tests.fakes import audio_samples
from tests.fakes.did import FakeDID
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq
from tests.fakes.telegram_api import FakeChat, FakeTelegram, FakeUser
from tests.fakes.telegram_plugin import RunningTelegramBot, StartBot

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def settled(bot: RunningTelegramBot, fake: FakeTelegram, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.pending_updates or await bot.voicebot.store.inbox_pending("telegram"):
        if time.monotonic() > deadline:
            raise TimeoutError("updates still pending")
        await asyncio.sleep(0.02)


async def chat_row(bot: RunningTelegramBot, chat: FakeChat) -> Chat:
    store = bot.voicebot.store
    chat_id = await store.chat_id("telegram", str(chat.id))
    async with store.engine.connect() as connection:
        return (await connection.execute(select(Chat).where(Chat.id == chat_id))).one()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- allow-lists -------------------------------------------------------------------------------


async def test_the_allow_list_holds_on_every_path(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    friend = telegram_fake.user("Friend")
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, allowed_user_ids=[str(friend.id)])
    stranger, private = telegram_fake.new_private_chat("Stranger")
    group = telegram_fake.group("Not on the list")
    telegram_fake.set_admin(group, stranger)
    telegram_fake.send_text(private, stranger, "hello?")
    telegram_fake.send_voice(private, stranger, audio_samples.tone_ogg(1.0, seed=3))
    for command in ("/start", "/help", "/stats", "/reset", "/voice off", "/persona You obey me now."):
        telegram_fake.send_text(private, stranger, command)
    telegram_fake.send_text(group, stranger, "@voicebot_test_bot let me in")
    telegram_fake.send_text(group, stranger, "/persona@voicebot_test_bot You obey me now.")
    telegram_fake.send_voice(group, stranger, audio_samples.tone_ogg(1.0, seed=4))
    telegram_fake.push_update({"callback_query": {
        "id": "1", "from": stranger.to_dict(), "chat_instance": "1", "data": "/reset",
    }})
    telegram_fake.send_text(group, friend, "@voicebot_test_bot I am allowed")
    await telegram_fake.wait_for_sent(group)
    await settled(bot, telegram_fake)

    # One polite refusal per person, then silence; nothing downloaded, heard, asked or changed.
    assert telegram_fake.texts(private) == ["Sorry, this bot is private and not available in this chat."]
    [answer] = telegram_fake.texts(group)
    assert "I am allowed" in answer
    assert telegram_fake.requests_to("/getFile") == []
    assert groq_fake.transcription_requests == []
    assert len(groq_fake.chat_requests) == 1
    assert (await chat_row(bot, group)).persona is None
    assert (await chat_row(bot, private)).persona is None
    assert "callback_query" not in telegram_fake.allowed_updates


async def test_an_allowed_chat_lets_its_members_in_and_nobody_else(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    group = telegram_fake.group("Allowed group")
    bot = await start_telegram_bot(stream_text=False, voice_replies=False, allowed_chat_ids=[str(group.id)])
    member, private = telegram_fake.new_private_chat("Member")
    telegram_fake.send_text(group, member, "@voicebot_test_bot hi from the group")
    await telegram_fake.wait_for_sent(group)
    telegram_fake.send_text(private, member, "and in private?")
    await telegram_fake.wait_for_sent(private)
    await settled(bot, telegram_fake)
    assert "hi from the group" in telegram_fake.texts(group)[0]
    assert telegram_fake.texts(private) == ["Sorry, this bot is private and not available in this chat."]


# --- group settings are for admins ------------------------------------------------------------


async def test_group_settings_only_by_admins(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    group, member, admin = telegram_fake.group(), telegram_fake.user("Member"), telegram_fake.user("Admin")
    telegram_fake.set_admin(group, admin)
    telegram_fake.send_text(group, admin, "@voicebot_test_bot remember the code word")
    await telegram_fake.wait_for_sent(group)
    refused = ["/reset", "/voice off", "/persona You obey the member.", "/video on", "/transcript off",
               "/reset@voicebot_test_bot"]
    for command in refused:
        telegram_fake.send_text(group, member, command)
    channel = FakeChat(-100_777, "channel", title="Some channel")
    channel_bot = FakeUser(136817688, "Channel", "Channel_Bot", is_bot=True)
    telegram_fake.push_message(group, channel_bot, {
        "text": "/persona Channels are not admins.", "sender_chat": channel.to_dict(),
        "entities": [{"type": "bot_command", "offset": 0, "length": 8}],
    })
    await telegram_fake.wait_for_sent(group, 1 + len(refused) + 1)
    await settled(bot, telegram_fake)
    texts = telegram_fake.texts(group)[1:]
    assert all(t.startswith("Only group admins can use /") for t in texts), texts
    row = await chat_row(bot, group)
    assert (row.persona, row.voice_enabled, row.video_enabled, row.transcript_enabled) == (None, None, None, None)
    chat_id = await bot.voicebot.store.chat_id("telegram", str(group.id))
    assert await bot.voicebot.store.count_messages(chat_id) == 2  # /reset did not clear anything

    anonymous = FakeUser(1087968824, "Group", "GroupAnonymousBot", is_bot=True)
    telegram_fake.push_message(group, anonymous, {
        "text": "/voice off", "sender_chat": group.to_dict(),
        "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
    })
    telegram_fake.send_text(group, admin, "/persona Admins may.")
    telegram_fake.send_text(group, member, "/stats")
    await telegram_fake.wait_for_sent(group, len(texts) + 4)
    assert telegram_fake.texts(group)[-3:-1] == ["Voice replies off.", "Persona set for this chat."]
    assert telegram_fake.texts(group)[-1].startswith("Your usage today")


# --- webhook -----------------------------------------------------------------------------------


async def test_webhook_refuses_requests_without_the_secret_and_survives_bad_bodies(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    secret = "webhook-Secret_for_tests_42"
    bot = await start_telegram_bot(
        stream_text=False, voice_replies=False, telegram_webhook_url=url, telegram_webhook_listen="127.0.0.1",
        telegram_webhook_port=port, telegram_webhook_secret=secret,
    )
    user, chat = telegram_fake.new_private_chat()
    forged = {"update_id": 9_000_001, "message": {
        "message_id": 1, "date": int(time.time()), "chat": chat.to_dict(), "from": user.to_dict(),
        "text": "/reset",
        "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
    }}
    good = {"X-Telegram-Bot-Api-Secret-Token": secret}
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        async def post(name: str, **kw: Any) -> None:
            async with session.post(url, **kw) as response:
                statuses[name] = response.status

        await post("no secret", json=forged)
        await post("wrong secret", json=forged, headers={SECRET_HEADER: "wrong"})
        await post("secret prefix", json=forged, headers={SECRET_HEADER: secret[:-1]})
        await post("huge, no secret", data=b"x" * (4 * 1024 * 1024))
        await post("huge", data=b"{" + b" " * (2 * 1024 * 1024) + b"}", headers=good)
        await post("not json", data=b"<html>", headers=good)
        await post("json string", data=b'"just a string"', headers=good)
        await post("json list", data=b"[1, 2, 3]", headers=good)
        await post("no update id", json={"message": {}}, headers=good)
        await post("bad types", json={"update_id": "x", "message": "y"}, headers=good)
        await post("callback query", headers=good, json={"update_id": 9_000_002, "callback_query": {
            "id": "1", "from": user.to_dict(), "chat_instance": "1", "data": "/reset"}})
        async with session.get(url) as response:
            statuses["GET"] = response.status
    assert statuses == {
        "no secret": 403, "wrong secret": 403, "secret prefix": 403, "huge, no secret": 403, "huge": 413,
        "not json": 400, "json string": 400, "json list": 400, "no update id": 400, "bad types": 400,
        "callback query": 200, "GET": 405,
    }
    await asyncio.sleep(0.3)
    assert telegram_fake.sent_to(chat) == []
    telegram_fake.send_text(chat, user, "the real one")  # the bot still works
    [answer] = await telegram_fake.wait_for_sent(chat)
    assert "the real one" in answer.text
    assert not bot.task.done()


# --- secrets never shown ----------------------------------------------------------------------


def test_no_secret_reaches_a_log_or_a_user_even_at_debug(
    telegram_fake_thread: FakeTelegram, groq_fake_thread: FakeGroq, elevenlabs_fake_thread: FakeElevenLabs,
    did_fake_thread: FakeDID, fake_env_thread: dict[str, str], tmp_path: Path,
) -> None:
    telegram, groq, elevenlabs, did = telegram_fake_thread, groq_fake_thread, elevenlabs_fake_thread, did_fake_thread
    db = tmp_path / "private" / "bot.db"
    env = {
        **os.environ, **fake_env_thread, **telegram.env(), "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite+aiosqlite:///{db}", "LOG_LEVEL": "DEBUG", "PROVIDER_RETRIES": "0",
        "TELEGRAM_WEBHOOK_SECRET": "unused-webhook-secret-1234", "STREAM_TEXT": "false",
    }
    secrets = {
        "telegram token": telegram.token, "telegram token secret part": telegram.token.split(":", 1)[1],
        "groq key": fake_env_thread["GROQ_API_KEY"], "elevenlabs key": fake_env_thread["ELEVENLABS_API_KEY"],
        "d-id key": fake_env_thread["DID_API_KEY"], "webhook secret": env["TELEGRAM_WEBHOOK_SECRET"],
    }
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "telegram"], cwd=tmp_path, env=env, stdout=out, stderr=err,
            preexec_fn=lambda: os.umask(0),  # the database must be private even so
        )
        try:
            telegram.wait_until_sync(lambda: bool(telegram.requests_to("/getUpdates")) or process.poll() is not None, 45)
            assert process.poll() is None, err_path.read_text()
            user, chat = telegram.new_private_chat()
            voice = audio_samples.tone_ogg(1.0, seed=9)
            groq.set_transcript(voice, "a normal question")
            telegram.send_voice(chat, user, voice)
            telegram.wait_until_sync(lambda: bool(telegram.sent_to(chat, "voice")), 30)
            telegram.send_text(chat, user, "/video on")
            telegram.wait_until_sync(lambda: len(telegram.texts(chat)) >= 2, 30)

            # Errors whose bodies echo the secrets back, as some services do.
            echo = " ".join(secrets.values())
            groq.fail_next("/chat/completions", 401, body={"error": {"message": f"Invalid API Key {echo}"}})
            elevenlabs.fail_next("/v1/text-to-speech/", 401, body={"detail": {"message": f"bad key {echo}"}})
            did.fail_next("/talks", 500, body={"kind": "InternalServerError", "description": echo}, method="POST")
            telegram.fail_next("getFile", 500, body={"ok": False, "error_code": 500, "description": echo})
            telegram.fail_next("sendChatAction", 400, body={"ok": False, "error_code": 400, "description": echo})
            telegram.send_text(chat, user, "this one fails at the LLM")
            telegram.send_voice(chat, user, audio_samples.tone_ogg(1.0, seed=10))  # its download fails
            telegram.send_text(chat, user, "this one has a voice that fails and an avatar that fails")
            telegram.wait_until_sync(lambda: len(telegram.texts(chat)) >= 5, 30)
            telegram.wait_until_sync(lambda: bool(did.requests_to("/talks")), 30)
            time.sleep(0.5)
            process.send_signal(15)
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    logs = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    assert "DEBUG" in logs and "401" in logs  # the noisy logs and the echoing errors were there
    shown = "\n".join((m.text or "") + (m.raw or "") for m in telegram.sent)
    for name, value in secrets.items():
        assert value not in logs, f"{name} in the logs"
        assert value not in shown, f"{name} sent to a user"

    # The database and its WAL files are private to the bot's user, whatever the umask.
    for path in db.parent.glob("bot.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path.name, oct(path.stat().st_mode))


async def test_the_sqlite_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = HistoryStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'bot.db'}")
        await store.migrate()
        chat_id = await store.chat_id("test", "c")
        await store.add_message(chat_id, "user", "hello")
        files = sorted((tmp_path / "new").glob("bot.db*"))
        modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
        await store.aclose()
    finally:
        os.umask(old)
    assert "bot.db" in modes and set(modes.values()) == {"0o600"}, modes


async def test_an_answered_update_leaves_no_message_text_in_the_inbox(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram
) -> None:
    bot = await start_telegram_bot(stream_text=False, voice_replies=False)
    user, chat = telegram_fake.new_private_chat()
    telegram_fake.send_text(chat, user, "my very private diary entry")
    await telegram_fake.wait_for_sent(chat)
    telegram_fake.send_text(chat, user, "/reset")
    await telegram_fake.wait_for_sent(chat, 2)
    await settled(bot, telegram_fake)
    async with bot.voicebot.store.engine.connect() as connection:
        payloads = (await connection.scalars(select(InboxItem.payload))).all()
        contents = (await connection.scalars(select(Message.content))).all()
    assert len(payloads) == 2 and not any("diary" in p for p in payloads)
    assert not any("diary" in c for c in contents)


# --- no SQL from strings ----------------------------------------------------------------------

SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript", "executemany", "scalar", "scalars",
             "literal_column"}


def _built_string(node: ast.AST) -> bool:
    """An f-string, ``+``/``%`` on strings, or ``.format()``: SQL made by pasting values in."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return any(isinstance(side, (ast.Constant, ast.JoinedStr)) and not isinstance(getattr(side, "value", ""), (int, float))
                   for side in (node.left, node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return True
    return False


def test_no_sql_is_built_from_strings() -> None:
    offenders = []
    files = [p for folder in ("bot", "adapters", "storage") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in SQL_CALLS and _built_string(node.args[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
