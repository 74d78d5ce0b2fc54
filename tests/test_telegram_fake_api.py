"""The fake Bot API answers PTB's own client the way Telegram does (so the end-to-end tests mean
something): update confirmation by offset, parse errors, limits, files, 429."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from telegram import Bot
from telegram.error import BadRequest, Conflict, RetryAfter

from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.timeout(30)


@pytest_asyncio.fixture
async def ptb(telegram_fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(telegram_fake.token, base_url=telegram_fake.api_base_url,
                   base_file_url=telegram_fake.file_base_url) as bot:
        yield bot


async def test_updates_stay_until_an_offset_confirms_them(telegram_fake: FakeTelegram, ptb: Bot) -> None:
    user = telegram_fake.user()
    first = telegram_fake.send_text(telegram_fake.private_chat(user), user, "one")
    assert [u.update_id for u in await ptb.get_updates()] == [first["update_id"]]
    assert [u.update_id for u in await ptb.get_updates()] == [first["update_id"]]  # not confirmed yet
    assert await ptb.get_updates(offset=first["update_id"] + 1) == ()
    assert telegram_fake.pending_updates == []


async def test_long_poll_returns_when_an_update_arrives(telegram_fake: FakeTelegram, ptb: Bot) -> None:
    user = telegram_fake.user()
    chat = telegram_fake.private_chat(user)
    poll = asyncio.create_task(ptb.get_updates(timeout=5))
    await asyncio.sleep(0.2)
    telegram_fake.send_text(chat, user, "wake up")
    updates = await asyncio.wait_for(poll, 2)
    assert updates[0].message is not None and updates[0].message.text == "wake up"


async def test_polling_while_a_webhook_is_set_is_a_conflict(telegram_fake: FakeTelegram, ptb: Bot) -> None:
    await ptb.set_webhook("https://example.invalid/hook", secret_token="abc")
    with pytest.raises(Conflict):
        await ptb.get_updates()
    await ptb.delete_webhook()
    assert await ptb.get_updates() == ()


async def test_text_is_parsed_and_limited_like_telegram(telegram_fake: FakeTelegram, ptb: Bot) -> None:
    chat = telegram_fake.private_chat(telegram_fake.user())
    sent = await ptb.send_message(chat.id, "<b>bold</b> &amp; <i>it</i>", parse_mode="HTML")
    assert sent.text == "bold & it" and [e.type for e in sent.entities] == ["bold", "italic"]
    for bad in ("<b>open", "<b>x</i>", "a < b", "<div>x</div>"):
        with pytest.raises(BadRequest, match="parse entities"):
            await ptb.send_message(chat.id, bad, parse_mode="HTML")
    with pytest.raises(BadRequest, match="reserved"):
        await ptb.send_message(chat.id, "Done.", parse_mode="MarkdownV2")
    with pytest.raises(BadRequest, match="too long"):
        await ptb.send_message(chat.id, "\N{GRINNING FACE}" * 2049)  # 4098 UTF-16 units
    with pytest.raises(BadRequest, match="not modified"):
        await ptb.edit_message_text("<b>bold</b> &amp; <i>it</i>", chat_id=chat.id, message_id=sent.message_id,
                                    parse_mode="HTML")
    await ptb.edit_message_text("<b>bold</b> & more", chat_id=chat.id, message_id=sent.message_id)


async def test_files_download_and_the_20_mb_limit(telegram_fake: FakeTelegram, ptb: Bot) -> None:
    user = telegram_fake.user()
    chat = telegram_fake.private_chat(user)
    small = telegram_fake.send_voice(chat, user, b"OggS-small", duration=1)["message"]["voice"]
    big = telegram_fake.send_voice(chat, user, b"OggS-big", duration=1, file_size=21 * 1024 * 1024)
    file = await ptb.get_file(small["file_id"])
    assert file.file_path is not None and file.file_path.endswith(".oga")
    assert bytes(await file.download_as_bytearray()) == b"OggS-small"
    with pytest.raises(BadRequest, match="too big"):
        await ptb.get_file(big["message"]["voice"]["file_id"])


async def test_a_429_tells_how_long_to_wait(telegram_fake: FakeTelegram, ptb: Bot) -> None:
    chat = telegram_fake.private_chat(telegram_fake.user())
    telegram_fake.retry_after = 7
    telegram_fake.fail_next("sendMessage", 429)
    with pytest.raises(RetryAfter) as caught:
        await ptb.send_message(chat.id, "hi")
    assert caught.value._retry_after == dt.timedelta(seconds=7)
