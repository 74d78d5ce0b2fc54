"""The Telegram adapter's pieces on their own: Markdown -> HTML, chunking, rate limiting, reading
a message. The fake's HTML parser stands in for Telegram's to judge the markup."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from telegram import Message, Update, User
from telegram.error import RetryAfter

from adapters.telegram_bot import attachment_of, command_for_another_bot, mentions_bot, to_incoming
from adapters.telegram_format import markdown_to_html, preview, reply_chunks, shows_as, utf16_len, well_formed
from adapters.telegram_ratelimiter import NO_RETRIES, ChatRateLimiter
from bot.messages import ChatKind
from tests.fakes.telegram_api import FakeTelegram, parse_html

# --- Markdown -> Telegram HTML ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("**bold** and *italic* and ~~gone~~", "<b>bold</b> and <i>italic</i> and <s>gone</s>"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("use `x<y>` here", "use <code>x&lt;y&gt;</code> here"),
        ("```py\nif a < b:\n    pass\n```", '<pre><code class="language-py">if a &lt; b:\n    pass</code></pre>'),
        ("see [docs](https://ex.com/?a=1&b=2)", 'see <a href="https://ex.com/?a=1&amp;b=2">docs</a>'),
        ("# Title\n* one\n- two", "<b>Title</b>\n\N{BULLET} one\n\N{BULLET} two"),
        ("snake_case and __init__ and 2 * 3 * 4", "snake_case and __init__ and 2 * 3 * 4"),
        ("**bold with `code`**", "<b>bold with <code>code</code></b>"),
        ("<b>not ours</b>", "&lt;b&gt;not ours&lt;/b&gt;"),
    ],
)
def test_markdown_becomes_telegram_html(markdown: str, html: str) -> None:
    assert markdown_to_html(markdown) == html
    parse_html(html)  # Telegram would accept it


TRICKY = [
    "*a **b* c**", "**a *b** c*", "***", "** **", "*", "`", "```", "``` ```", "[x](javascript:alert(1))",
    "[a](https://x.y) **[b](https://z.w)** *[c](https://q.r)*", "\x00**x**\x00", "~~a **b~~ c**",
    "emoji 😀 **bold 😀** `code 😀`", "unclosed ```python\nprint('<')", "& &amp; &lt; &#60;", "> quote\n>> deeper",
    "1. **a\n2. b**", "*it*alic* and **b**old**",
]


@pytest.mark.parametrize("markdown", TRICKY)
def test_conversion_never_produces_markup_telegram_refuses(markdown: str) -> None:
    converted = markdown_to_html(markdown)
    if converted is not None:
        visible, _ = parse_html(converted)
        assert utf16_len(visible) <= utf16_len(markdown)


def test_well_formed_catches_crossed_and_open_tags() -> None:
    assert well_formed("<b>a <i>b</i></b>")
    assert not well_formed("<b>a <i>b</b></i>")
    assert not well_formed("<b>open")


def test_reply_chunks_respect_the_limit_and_keep_code_blocks_whole() -> None:
    code = "```js\n" + "\n".join(f"let v{i} = '{'😀' * 3}';" for i in range(400)) + "\n```"
    text = "Intro paragraph.\n\n" + code + "\n\nOutro."
    chunks = reply_chunks(text, transcript="what did I say " * 200)
    assert len(chunks) >= 3
    for i, chunk in enumerate(chunks):
        assert chunk.html is not None
        visible, entities = parse_html(chunk.html)
        assert utf16_len(visible) <= 4096 and utf16_len(chunk.plain) <= 4096
        assert visible.startswith("\N{MICROPHONE}") == (i == 0)
        assert any(e["type"] == "pre" for e in entities)  # every piece of the block renders as code
    assert chunks[0].plain.count("what did I say") < 200  # a long transcript is shortened


def test_reply_chunks_of_nothing_is_nothing() -> None:
    assert reply_chunks("   ") == []


@pytest.mark.parametrize("answer, shows", [
    ("Is 2 < 3 & 4 > 3? Yes.", True),  # HTML only escapes: it looks the same as plain text
    ("It is **very** late.", False),  # bold: an entity the plain message lacks
    ("- one\n- two", False),  # bullets: other characters
])
def test_a_chunk_shows_as_plain_text_only_without_formatting(answer: str, shows: bool) -> None:
    [chunk] = reply_chunks(answer)
    assert shows_as(chunk, preview(answer)) is shows
    [with_transcript] = reply_chunks(answer, transcript="what is late?")
    assert not shows_as(with_transcript, preview(answer))


def test_preview_is_one_message() -> None:
    shown = preview("word " * 3000)
    assert utf16_len(shown) <= 4096 and shown.endswith("\N{HORIZONTAL ELLIPSIS}")


# --- rate limiting ----------------------------------------------------------------------------


class FlakyCall:
    """An API call that answers 429 ``failures`` times, then succeeds."""

    def __init__(self, failures: int, retry_after: int = 1) -> None:
        self.failures, self.retry_after = failures, retry_after
        self.calls: list[float] = []

    async def __call__(self) -> dict[str, Any]:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise RetryAfter(self.retry_after)
        return {"ok": True}


async def test_rate_limiter_retries_after_what_telegram_asked() -> None:
    limiter = ChatRateLimiter(max_retries=2)
    call = FlakyCall(failures=1)
    assert await limiter.process_request(call, (), {}, "sendMessage", {"chat_id": 5}, None) == {"ok": True}
    assert call.calls[1] - call.calls[0] >= 1.0


async def test_rate_limiter_gives_up_at_once_when_asked_for_no_retries() -> None:
    limiter = ChatRateLimiter(max_retries=3)
    with pytest.raises(RetryAfter):
        await limiter.process_request(FlakyCall(failures=1), (), {}, "editMessageText", {"chat_id": 5}, NO_RETRIES)


async def test_a_429_pauses_only_its_own_chat() -> None:
    limiter = ChatRateLimiter(max_retries=1)
    slow = asyncio.create_task(limiter.process_request(FlakyCall(1, 2), (), {}, "sendMessage", {"chat_id": 1}, None))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await limiter.process_request(FlakyCall(0), (), {}, "sendMessage", {"chat_id": 2}, None)
    assert time.monotonic() - started < 0.5
    await slow


async def test_group_budget_is_spent_by_new_messages_only() -> None:
    limiter = ChatRateLimiter(group_per_minute=2)
    for _ in range(10):  # chat actions and edits do not touch the budget
        await limiter.process_request(FlakyCall(0), (), {}, "sendChatAction", {"chat_id": -100}, None)
    for _ in range(2):
        await limiter.process_request(FlakyCall(0), (), {}, "sendMessage", {"chat_id": -100}, None)
    third = asyncio.create_task(limiter.process_request(FlakyCall(0), (), {}, "sendMessage", {"chat_id": -100}, None))
    await asyncio.sleep(0.2)
    assert not third.done()  # the third message in a minute waits
    third.cancel()


# --- reading a message ------------------------------------------------------------------------

ME = User(7000000001, "Voicebot", is_bot=True, username="voicebot_test_bot")


def message_from(update: dict[str, Any]) -> Message:
    parsed = Update.de_json(update, None)
    assert parsed is not None and parsed.message is not None
    return parsed.message


def test_mentions_by_username_text_mention_and_command() -> None:
    fake = FakeTelegram()
    group, user = fake.group(), fake.user()
    assert mentions_bot(message_from(fake.send_text(group, user, "hi @VoiceBot_Test_Bot!")), ME)
    assert mentions_bot(message_from(fake.send_text(group, user, "/stats@voicebot_test_bot")), ME)
    text_mention = [{"type": "text_mention", "offset": 0, "length": 3, "user": {"id": ME.id, "is_bot": True,
                                                                                "first_name": "Voicebot"}}]
    assert mentions_bot(message_from(fake.send_text(group, user, "bot, hi", entities=text_mention)), ME)
    assert not mentions_bot(message_from(fake.send_text(group, user, "hi @someone_else")), ME)
    assert command_for_another_bot(message_from(fake.send_text(group, user, "/reset@other_bot")), ME)
    assert not command_for_another_bot(message_from(fake.send_text(group, user, "/reset")), ME)


def test_a_message_in_a_topic_opened_by_the_bot_is_not_a_reply_to_it() -> None:
    fake = FakeTelegram()
    forum, user = fake.group(forum=True), fake.user()
    opener = fake.push_message(forum, fake.bot_user, {"forum_topic_created": {"name": "t", "icon_color": 1}})
    root = opener["message"]["message_id"]
    in_topic = message_from(fake.send_text(forum, user, "hello", thread_id=root, reply_to=root))
    incoming = to_incoming(in_topic, ME)
    assert not incoming.replied_to_bot and incoming.thread_id == str(root)
    assert incoming.kind is ChatKind.GROUP and incoming.chat_id == str(forum.id)


def test_voice_attachment_declares_duration_and_size() -> None:
    fake = FakeTelegram()
    chat_user = fake.user()
    message = message_from(fake.send_voice(fake.private_chat(chat_user), chat_user, b"OggS...", duration=7,
                                           file_size=1234))
    attachment = attachment_of(message)
    assert attachment is not None
    assert (attachment.format, attachment.declared_seconds, attachment.declared_bytes) == ("ogg", 7.0, 1234)
    incoming = to_incoming(message, ME)
    assert incoming.kind is ChatKind.PRIVATE and not incoming.mentioned and incoming.user_id == str(chat_user.id)


@pytest.mark.parametrize("one_piece_limit", [8 * 1024 * 1024, 1024], ids=["one piece", "streamed"])
async def test_an_upload_arrives_whole_sent_in_one_piece_or_streamed(
    telegram_fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch, one_piece_limit: int
) -> None:
    """Voice notes go out encoded in one piece; bigger uploads stream. Telegram gets the same."""
    from telegram import Bot

    from adapters import telegram_http

    monkeypatch.setattr(telegram_http, "ONE_PIECE_UPLOAD_BYTES", one_piece_limit)
    _, chat = telegram_fake.new_private_chat()
    voice = b"OggS" + bytes(range(256)) * 200
    bot = Bot(telegram_fake.token, base_url=telegram_fake.api_base_url, base_file_url=telegram_fake.file_base_url,
              request=telegram_http.AiohttpRequest())
    async with bot:
        sent = await bot.send_voice(chat.id, voice, duration=3, caption="hi")
    assert sent.voice is not None and sent.caption == "hi"
    [stored] = telegram_fake.sent_to(chat, "voice")
    assert stored.file is not None and stored.file.data == voice


async def test_calls_without_a_file_go_as_json_and_uploads_as_multipart(telegram_fake: FakeTelegram) -> None:
    """The Bot API takes JSON for every call but an upload; the fake reads it as Telegram does."""
    from telegram import Bot, ReplyParameters

    from adapters.telegram_http import AiohttpRequest

    user, chat = telegram_fake.new_private_chat()
    asked = telegram_fake.send_text(chat, user, "hi")["message"]
    bot = Bot(telegram_fake.token, base_url=telegram_fake.api_base_url, base_file_url=telegram_fake.file_base_url,
              request=AiohttpRequest())
    async with bot:
        text = await bot.send_message(chat.id, "<b>Ünïcode</b> answer", parse_mode="HTML",
                                      reply_parameters=ReplyParameters(asked["message_id"]))
        await bot.send_voice(chat.id, b"OggS" + bytes(300), duration=1)
    call, upload = telegram_fake.requests_to("/sendMessage")[-1], telegram_fake.requests_to("/sendVoice")[-1]
    assert call.headers["content-type"] == "application/json"
    assert call.json == {"chat_id": chat.id, "text": "<b>Ünïcode</b> answer", "parse_mode": "HTML",
                         "reply_parameters": {"message_id": asked["message_id"]}}
    assert text.text == "Ünïcode answer" and text.reply_to_message is not None
    assert text.reply_to_message.message_id == asked["message_id"]
    assert upload.headers["content-type"].startswith("multipart/form-data") and upload.json is None
    assert upload.form["chat_id"] == str(chat.id) and "voice" in upload.files
