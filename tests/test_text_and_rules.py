"""Pure rules of the core: splitting, spoken text, triggers, context trimming, rate limits."""

from __future__ import annotations

import pytest

from bot.commands import parse_command
from bot.context import build_messages, estimate_tokens, trim_history
from bot.errors import RateLimitedError
from bot.gate import AccessList, RateLimiter
from bot.messages import ChatKind, IncomingMessage
from bot.text import split_for_platform, to_spoken_text
from bot.trigger import addresses_bot, names_bot
from storage.store import StoredMessage


def test_split_keeps_short_text_whole() -> None:
    assert split_for_platform("hello there", 4096) == ["hello there"]


def test_split_prefers_paragraphs_and_respects_limit() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(20))
    chunks = split_for_platform(text, 1000)
    assert len(chunks) > 1 and all(len(c) <= 1000 for c in chunks)
    assert all(c.startswith("Paragraph") for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_split_never_leaves_a_code_block_open() -> None:
    code = "```python\n" + "\n".join(f"print({i})  # a line of code" for i in range(200)) + "\n```"
    text = "Here is the code:\n\n" + code + "\n\nThat's all."
    chunks = split_for_platform(text, 2000)
    assert len(chunks) > 2 and all(len(c) <= 2000 for c in chunks)
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk[:80]
    assert chunks[1].startswith("```python\n")
    body = "".join(chunks)
    for i in range(200):
        assert f"print({i})" in body


def test_split_hard_cuts_a_word_longer_than_the_limit() -> None:
    chunks = split_for_platform("x" * 5000, 2000)
    assert [len(c) for c in chunks] == [1996, 1996, 1008]


def test_spoken_text_drops_markup_code_and_urls() -> None:
    spoken = to_spoken_text("**Hi** see [docs](http://x.y) or https://a.b/c\n```py\nx=1\n```\n# Done", 500)
    assert "*" not in spoken and "```" not in spoken and "http" not in spoken and "#" not in spoken
    assert "Hi" in spoken and "docs" in spoken and "Done" in spoken


def test_spoken_text_cuts_at_a_sentence() -> None:
    text = "First sentence here. " * 20
    spoken = to_spoken_text(text, 100)
    assert len(spoken) <= 100 and spoken.endswith(".")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hey voicebot what's the time", True),
        ("Hey Voice Bot, tell me a joke", True),
        ("voice-bot?", True),
        ("I love my voice. Bots are fun", False),
        ("nothing here", False),
    ],
)
def test_names_bot_tolerates_how_speech_is_transcribed(text: str, expected: bool) -> None:
    assert names_bot(text, "Voicebot") is expected


def _message(**kw: object) -> IncomingMessage:
    base = dict(platform="t", chat_id="c", user_id="u", message_id="m", text="hi", kind=ChatKind.GROUP)
    base.update(kw)
    return IncomingMessage(**base)  # type: ignore[arg-type]


def test_group_trigger_rules() -> None:
    assert not addresses_bot(_message(), "hi all", "Voicebot")
    assert addresses_bot(_message(mentioned=True), "hi", "Voicebot")
    assert addresses_bot(_message(replied_to_bot=True), "hi", "Voicebot")
    assert addresses_bot(_message(always_answer=True), "hi", "Voicebot")
    assert addresses_bot(_message(), "voicebot, hi", "Voicebot")
    assert addresses_bot(_message(kind=ChatKind.PRIVATE), "hi", "Voicebot")


def test_trim_keeps_newest_within_budget_and_starts_on_user() -> None:
    history = []
    for i in range(50):
        history.append(StoredMessage("user", f"question {i} " + "x" * 80, 0))
        history.append(StoredMessage("assistant", f"answer {i} " + "y" * 80, 0))
    kept = trim_history(history, budget=300)
    assert kept and kept[0].role == "user"
    assert kept[-1].content.startswith("answer 49")
    assert sum(estimate_tokens(m.content) for m in kept) <= 300
    assert trim_history(history, budget=0) == []


def test_build_messages_has_system_history_and_new_input() -> None:
    history = [StoredMessage("user", "old q", 0, "ann"), StoredMessage("assistant", "old a", 0)]
    messages = build_messages("You are {curly} safe", history, "new q", budget=1000, group=True, user_name="bob")
    assert [m.type for m in messages] == ["system", "human", "ai", "human"]
    assert messages[0].content == "You are {curly} safe"
    assert messages[1].content == "ann: old q" and messages[-1].content == "bob: new q"


def test_a_long_chat_never_overflows_the_budget() -> None:
    history = [StoredMessage("user" if i % 2 == 0 else "assistant", "z" * 400, 0) for i in range(2000)]
    messages = build_messages("system", history, "now", budget=2000)
    assert sum(estimate_tokens(str(m.content)) for m in messages) <= 2000


async def test_rate_limiter_window() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=3, window=10, clock=lambda: now[0])
    for _ in range(3):
        await limiter.check("u")
    with pytest.raises(RateLimitedError) as info:
        await limiter.check("u")
    assert 0 < info.value.wait_seconds <= 10
    await limiter.check("other")  # other users are not affected
    assert limiter.first_refusal("u", 10) and not limiter.first_refusal("u", 10)
    now[0] = 10.5
    await limiter.check("u")


def test_access_list() -> None:
    assert AccessList([], []).allows(_message())
    allow = AccessList(["u"], ["chat-2"])
    assert allow.allows(_message(user_id="u"))
    assert allow.allows(_message(user_id="x", chat_id="chat-2"))
    assert not allow.allows(_message(user_id="x"))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("/voice on", ("voice", "on")),
        ("/Voice@MyBot   english-female ", ("voice", "english-female")),
        ("/reset", ("reset", "")),
        ("/ not a command", None),
        ("hello /reset", None),
        ("/", None),
        ("/re$et", None),
    ],
)
def test_parse_command(text: str, parsed: tuple[str, str] | None) -> None:
    assert parse_command(text) == parsed


def test_a_form_encoded_in_one_piece_parses_back_byte_exact() -> None:
    """What a server's multipart parser (the standard library's here) reads from encode_form."""
    import email
    import email.policy

    from bot.multipart import encode_form

    audio = b"OggS\r\n--\r\n\x00\xff" + bytes(range(256)) * 4
    body, content_type = encode_form(
        {"model": "whisper-large-v3-turbo", "caption": "Grüße, \"quoted\"\r\nline"},
        {"file": ('voice "1".ogg', audio, "audio/ogg")},
    )
    message = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body,
                                       policy=email.policy.HTTP)
    parts = list(message.iter_parts())
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["model", "caption", "file"]
    assert parts[0].get_content() == "whisper-large-v3-turbo"
    assert parts[1].get_payload(decode=True).decode() == "Grüße, \"quoted\"\r\nline"
    assert parts[2].get_filename() == "voice %221%22.ogg" and parts[2].get_content_type() == "audio/ogg"
    assert parts[2].get_payload(decode=True) == audio
