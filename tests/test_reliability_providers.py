"""Provider faults: Groq, ElevenLabs and D-ID misbehaving, through the real SDKs and the core.

Every fault is injected at a local fake (429 with ``retry-after``, 5xx, hangs, refused
connections, bodies cut short or not what their content type says, TTS bytes that are not
audio). What must hold: the user gets the best partial answer (text without voice, a clear
apology instead of a traceback), retries are bounded (asserted as request counts), a
provider that stays down is given a rest by its circuit breaker, and the bot keeps working
once the provider is back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.messages import Audio, IncomingMessage
from bot.pipeline import Outcome
from bot.retry import call_with_retries
from bot.runtime import VoiceBot
from bot.sink import SilentSink
from tests.fakes.audio_samples import tone_ogg
from tests.fakes.did import FakeDID
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq
from tests.fakes.http_fake import counting_faults
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.telegram_plugin import StartBot

pytestmark = pytest.mark.timeout(60)

GENERIC = "Sorry, something went wrong. Please try again."
@pytest.fixture(scope="module", autouse=True)
def _count_faults() -> Iterator[None]:
    with counting_faults("provider"):
        yield


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 20 ms instead of 0.5 s, 1 s...: these tests count requests, not seconds
    (a server's retry-after is still honoured as it is)."""
    monkeypatch.setitem(call_with_retries.__kwdefaults__, "base_delay", 0.02)


@pytest.fixture
def bot_defaults() -> dict[str, Any]:
    """Shorter provider timeouts than the core tests: hangs are injected on purpose here."""
    return {"provider_retries": 2, "provider_timeout": 2.0, "rate_limit_messages": 1000, "avatar_provider": "none"}


_ids = iter(range(1, 1_000_000))


def msg(text: str | None = None, *, audio: bytes | None = None, **kw: Any) -> IncomingMessage:
    values: dict[str, Any] = dict(
        platform="test", chat_id="c1", user_id="u1", message_id=str(next(_ids)), text=text,
        audio=Audio(audio) if audio is not None else None, user_name="Ann",
    )
    values.update(kw)
    return IncomingMessage(**values)


async def turn(bot: VoiceBot, message: IncomingMessage, *, streams: bool = False) -> tuple[Outcome, SilentSink, float]:
    """One turn; ``streams``: the sink shows the answer as it grows (the LLM is asked to stream)."""
    sink = SilentSink(streams_text=streams)
    started = time.monotonic()
    outcome = await bot.handle(message, sink)
    return outcome, sink, time.monotonic() - started


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_clear(reply_text: str) -> None:
    """A notice a user can act on: not the catch-all, no exception names or paths."""
    assert reply_text != GENERIC, "an unclassified exception reached the catch-all"
    for leak in ("Traceback", "Error", "Exception", ".py", "http://", "groq:", "elevenlabs:"):
        assert leak not in reply_text, reply_text


# --- 429 and retry-after ------------------------------------------------------------------------


async def test_429_with_retry_after_is_honoured_for_speech_to_text_and_the_llm(
    make_bot: Callable[..., Any], groq_fake: FakeGroq
) -> None:
    bot = await make_bot(voice_replies=False)
    groq_fake.retry_after = 0.4
    groq_fake.fail_next("/audio/transcriptions", 429)
    groq_fake.fail_next("/chat/completions", 429)
    outcome, sink, _ = await turn(bot, msg(audio=tone_ogg(1.0, seed=11)))
    assert outcome is Outcome.ANSWERED
    for requests in (groq_fake.transcription_requests, groq_fake.chat_requests):
        assert [r.status for r in requests] == [429, 200]
        assert requests[1].received_at - requests[0].received_at >= 0.4


async def test_429_from_elevenlabs_is_retried_and_the_voice_note_still_comes(
    make_bot: Callable[..., Any], elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot()
    elevenlabs_fake.fail_next("/v1/text-to-speech/", 429, headers={"retry-after": "0.3"})
    outcome, sink, _ = await turn(bot, msg("say it"))
    assert outcome is Outcome.ANSWERED and sink.replies[0].voice is not None
    assert [r.status for r in elevenlabs_fake.tts_requests] == [429, 200]


async def test_a_retry_after_too_long_to_wait_for_is_answered_at_once(
    make_bot: Callable[..., Any], groq_fake: FakeGroq
) -> None:
    bot = await make_bot()
    groq_fake.retry_after = 600
    groq_fake.fail_next("/chat/completions", 429)
    outcome, sink, took = await turn(bot, msg("anyone?"))
    assert outcome is Outcome.NOTICE and "busy" in sink.replies[0].text
    assert len(groq_fake.chat_requests) == 1 and took < 2.0


# --- 5xx: bounded retries, then a clear apology -------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("where", ["/chat/completions", "/audio/transcriptions"])
async def test_5xx_is_retried_a_bounded_number_of_times_then_apologised_for(
    make_bot: Callable[..., Any], groq_fake: FakeGroq, status: int, where: str
) -> None:
    bot = await make_bot(provider_retries=2, voice_replies=False)
    groq_fake.fail_next(where, status, times=10)
    voice = where.startswith("/audio")
    outcome, sink, _ = await turn(bot, msg(audio=tone_ogg(1.0, seed=status)) if voice else msg("hello?"))
    assert outcome is Outcome.NOTICE
    assert "trouble" in sink.replies[0].text and sink.replies[0].transcript is None
    assert len(groq_fake.requests_to(where)) == 3  # one try and PROVIDER_RETRIES retries
    groq_fake.clear_faults()
    outcome, _, _ = await turn(bot, msg("and now?"))
    assert outcome is Outcome.ANSWERED


async def test_tts_5xx_gives_the_text_without_voice(
    make_bot: Callable[..., Any], elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot(provider_retries=1)
    elevenlabs_fake.fail_next("/v1/text-to-speech/", 503, times=2)
    outcome, sink, _ = await turn(bot, msg("speak up"))
    assert outcome is Outcome.ANSWERED
    assert sink.replies[0].voice is None and sink.replies[0].text.startswith("You said: speak up")
    assert len(elevenlabs_fake.tts_requests) == 2


# --- timeouts and refused connections ----------------------------------------------------------


async def test_hanging_providers_time_out_within_the_configured_budget(
    make_bot: Callable[..., Any], groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot(provider_timeout=0.5, provider_retries=1)
    # One try and one retry, each cut at 0.5 s: well under 3 s.
    groq_fake.hang_next("/audio/transcriptions", seconds=20, times=2)
    outcome, sink, took = await turn(bot, msg(audio=tone_ogg(1.0, seed=31)))
    assert outcome is Outcome.NOTICE and "slow" in sink.replies[0].text and took < 3.0

    groq_fake.hang_next("/chat/completions", seconds=20, times=2)
    outcome, sink, took = await turn(bot, msg("still there?"))
    assert outcome is Outcome.NOTICE and "slow" in sink.replies[0].text and took < 3.0

    elevenlabs_fake.hang_next("/v1/text-to-speech/", seconds=20, times=2)
    outcome, sink, took = await turn(bot, msg("speak"))
    assert outcome is Outcome.ANSWERED and sink.replies[0].voice is None
    assert took < 3.0, f"speech synthesis ignored PROVIDER_TIMEOUT: {took:.1f} s"
    assert len(elevenlabs_fake.tts_requests) == 2


async def test_refused_connections_get_a_clear_reply_or_text_only(make_bot: Callable[..., Any]) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    bot = await make_bot(groq_base_url=dead, provider_retries=1)
    outcome, sink, took = await turn(bot, msg("hello"))
    assert outcome is Outcome.NOTICE and "can't reach" in sink.replies[0].text and took < 3.0

    bot = await make_bot(elevenlabs_base_url=dead, provider_retries=1)
    outcome, sink, _ = await turn(bot, msg("hello again"))
    assert outcome is Outcome.ANSWERED and sink.replies[0].voice is None


async def test_dropped_connections_are_retried(
    make_bot: Callable[..., Any], groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot()
    groq_fake.drop_next("/audio/transcriptions")
    groq_fake.drop_next("/chat/completions")
    elevenlabs_fake.drop_next("/v1/text-to-speech/")
    outcome, sink, _ = await turn(bot, msg(audio=tone_ogg(1.0, seed=41)))
    assert outcome is Outcome.ANSWERED and sink.replies[0].voice is not None
    assert len(groq_fake.transcription_requests) == len(groq_fake.chat_requests) == 2
    assert len(elevenlabs_fake.tts_requests) == 2


# --- bodies cut short or not what they claim ---------------------------------------------------


def _llm_truncated(groq: FakeGroq, _: FakeElevenLabs) -> None:
    groq.truncate_next("/chat/completions", times=10)


def _llm_html(groq: FakeGroq, _: FakeElevenLabs) -> None:
    groq.bad_body_next("/chat/completions", times=10)  # a proxy's HTML page, labelled JSON, status 200


def _llm_garbage_events(groq: FakeGroq, _: FakeElevenLabs) -> None:
    groq.bad_body_next("/chat/completions", body=b"data: {not json\n\n", content_type="text/event-stream", times=10)


def _stt_html(groq: FakeGroq, _: FakeElevenLabs) -> None:
    groq.bad_body_next("/audio/transcriptions", times=10)


def _stt_truncated(groq: FakeGroq, _: FakeElevenLabs) -> None:
    groq.truncate_next("/audio/transcriptions", times=10)


@pytest.mark.parametrize("streams", [True, False], ids=["streamed", "one-completion"])
@pytest.mark.parametrize(
    "inject", [_llm_truncated, _llm_html, _llm_garbage_events, _stt_html, _stt_truncated],
    ids=["llm-truncated", "llm-html-as-json", "llm-garbage-events", "stt-html-as-json", "stt-truncated"],
)
async def test_broken_bodies_get_a_clear_reply_and_bounded_retries(
    make_bot: Callable[..., Any], groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs,
    inject: Callable[[FakeGroq, FakeElevenLabs], None], streams: bool,
) -> None:
    bot = await make_bot(provider_retries=1, voice_replies=False)
    inject(groq_fake, elevenlabs_fake)
    outcome, sink, _ = await turn(bot, msg(audio=tone_ogg(1.0, seed=51)), streams=streams)
    assert outcome is Outcome.NOTICE
    assert_clear(sink.replies[0].text)
    assert len(groq_fake.requests) <= 3  # never more than one try and one retry per stage
    groq_fake.clear_faults()
    outcome, _, _ = await turn(bot, msg("working again?"))
    assert outcome is Outcome.ANSWERED


def _event(payload: dict[str, Any], name: str | None = None, *, newline: bytes = b"\n") -> bytes:
    head = b"event: " + name.encode() + newline if name else b""
    return head + b"data: " + json.dumps(payload).encode() + newline + newline


def _chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama-3.1-8b-instant",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}]}


async def test_streamed_events_parse_with_any_line_ending_and_comments(
    make_bot: Callable[..., Any], groq_fake: FakeGroq
) -> None:
    """Server-sent events as the spec allows them: CRLF lines, a keep-alive comment, a
    payload split over two data lines; [DONE] ends the answer even if bytes follow."""
    split = b'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk",\r\ndata: "created": 1, "model": "m", ' \
        b'"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": null}]}\r\n\r\n'
    body = (b": keep-alive\r\n\r\n" + _event(_chunk("Hello"), newline=b"\r\n") + split
            + _event(_chunk("!", "stop"), newline=b"\r\n") + b"data: [DONE]\r\n\r\n" + _event(_chunk(" ignored")))
    bot = await make_bot(provider_retries=0, voice_replies=False)
    groq_fake.bad_body_next("/chat/completions", body=body, content_type="text/event-stream")
    outcome, sink, _ = await turn(bot, msg("hi"), streams=True)
    assert outcome is Outcome.ANSWERED and sink.replies[0].text == "Hello there!"


async def test_tokens_read_together_come_as_one_piece_but_never_across_other_chunks(
    make_bot: Callable[..., Any], groq_fake: FakeGroq
) -> None:
    """One read with a whole answer: runs of text-only chunks merge; a chunk with logprobs, a
    new role or the final finish reason and usage stays apart, and the usage is still read."""
    usage = {"prompt_tokens": 70, "completion_tokens": 7, "total_tokens": 77}
    logprobs = {"content": [{"token": " there", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}
    chunks = [{**_chunk(""), "x_groq": {"id": "req_1"}}, _chunk("Hel"), _chunk("lo"),
              {**_chunk(" there"), "choices": [{**_chunk(" there")["choices"][0], "logprobs": logprobs}]},
              _chunk("!"), _chunk(" Bye"),
              {**_chunk("", "stop"), "x_groq": {"id": "req_1", "usage": usage}, "usage": usage}]
    body = b"".join(_event(chunk) for chunk in chunks) + b"data: [DONE]\n\n"
    bot = await make_bot(provider_retries=0, voice_replies=False)
    groq_fake.bad_body_next("/chat/completions", body=body, content_type="text/event-stream")
    outcome, sink, _ = await turn(bot, msg("hi"), streams=True)
    assert outcome is Outcome.ANSWERED and sink.replies[0].text == "Hello there! Bye"
    assert sink.deltas == ["Hello", "Hello there", "Hello there! Bye"]
    assert (await bot.store.usage("test", "u1")).tokens == 77


async def test_an_error_event_mid_stream_gets_a_clear_reply(make_bot: Callable[..., Any], groq_fake: FakeGroq) -> None:
    body = _event(_chunk("Partial")) + _event({"error": {"message": "model overloaded", "type": "server_error"}}, "error")
    bot = await make_bot(provider_retries=1, voice_replies=False)
    groq_fake.bad_body_next("/chat/completions", body=body, content_type="text/event-stream", times=5)
    outcome, sink, _ = await turn(bot, msg("hi"), streams=True)
    assert outcome is Outcome.NOTICE
    assert_clear(sink.replies[0].text)
    assert len(groq_fake.chat_requests) == 1  # tokens were shown: never retried into a second answer


async def test_a_broken_body_once_is_retried_into_an_answer(
    make_bot: Callable[..., Any], groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot(provider_retries=1)
    groq_fake.bad_body_next("/audio/transcriptions")
    groq_fake.bad_body_next("/chat/completions")
    elevenlabs_fake.truncate_next("/v1/text-to-speech/")
    outcome, sink, _ = await turn(bot, msg(audio=tone_ogg(1.0, seed=61)))
    assert outcome is Outcome.ANSWERED and sink.replies[0].voice is not None
    assert [len(groq_fake.transcription_requests), len(groq_fake.chat_requests), len(elevenlabs_fake.tts_requests)] == [2, 2, 2]


@pytest.mark.parametrize("body", [b"", b'{"detail": "ok"}', b"OggS" + b"\x00" * 40, b"ID3\x03garbage"])
async def test_tts_bytes_that_are_not_an_ogg_voice_note_give_text_only(
    make_bot: Callable[..., Any], elevenlabs_fake: FakeElevenLabs, body: bytes
) -> None:
    bot = await make_bot()
    elevenlabs_fake.bad_body_next("/v1/text-to-speech/", body=body, content_type="audio/ogg")
    outcome, sink, _ = await turn(bot, msg("talk to me"))
    assert outcome is Outcome.ANSWERED
    assert sink.replies[0].voice is None and "voice unavailable" in sink.replies[0].notes
    assert len(elevenlabs_fake.tts_requests) == 1  # a 200 with junk is not worth paying for twice


# --- the avatar never costs the answer ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "429", "hang", "html", "talk-error", "truncated-result"])
async def test_avatar_faults_leave_text_and_voice_alone(
    make_bot: Callable[..., Any], did_fake: FakeDID, fault: str
) -> None:
    bot = await make_bot(avatar_provider="auto", provider_retries=1, provider_timeout=0.5)
    chat_id = await bot.store.chat_id("test", "c1")
    await bot.store.update_chat_settings(chat_id, video_enabled=True)
    did_fake.polls_until_done = 1
    match fault:
        case "500":
            did_fake.fail_next("/talks", 500, times=2, method="POST")
        case "429":
            did_fake.fail_next("/talks", 429, headers={"retry-after": "0.1"}, times=2, method="POST")
        case "hang":
            did_fake.hang_next("/talks", seconds=20, times=2, method="POST")
        case "html":
            did_fake.bad_body_next("/talks", times=2, method="POST")
        case "talk-error":
            did_fake.fail_next_talk()
        case "truncated-result":
            did_fake.truncate_next("/results/")
    outcome, sink, took = await turn(bot, msg("show me"))
    assert outcome is Outcome.ANSWERED and sink.replies[0].voice is not None
    assert took < 2.0  # the clip never holds up the answer
    await bot.pipeline.drain(timeout=10)
    assert sink.videos == []
    assert len(did_fake.requests_to("/talks", method="POST")) <= 2


# --- circuit breakers ----------------------------------------------------------------------------


async def test_circuit_breaker_stops_hammering_a_down_llm_and_lets_it_back(
    make_bot: Callable[..., Any], groq_fake: FakeGroq
) -> None:
    bot = await make_bot(provider_retries=1, voice_replies=False)
    groq_fake.fail_next("/chat/completions", 503, times=1000)
    outcomes = [await turn(bot, msg(f"question {i}")) for i in range(10)]
    breaker = bot.pipeline.llm_breaker
    assert len(groq_fake.chat_requests) == breaker.threshold  # then no more calls at all
    assert all(outcome is Outcome.NOTICE for outcome, _, _ in outcomes)
    assert "unavailable right now" in outcomes[-1][1].replies[0].text
    assert all(took < 0.5 for _, _, took in outcomes[4:])  # an open breaker answers at once

    groq_fake.clear_faults()
    breaker._opened_at -= breaker.cooldown  # the rest is over: one trial call goes through
    outcome, sink, _ = await turn(bot, msg("back?"))
    assert outcome is Outcome.ANSWERED and not breaker.is_open
    assert len(groq_fake.chat_requests) == breaker.threshold + 1


async def test_circuit_breaker_for_speech_to_text(make_bot: Callable[..., Any], groq_fake: FakeGroq) -> None:
    bot = await make_bot(provider_retries=0, voice_replies=False)
    groq_fake.fail_next("/audio/transcriptions", 500, times=1000)
    for i in range(8):
        outcome, sink, _ = await turn(bot, msg(audio=tone_ogg(1.0, seed=70 + i)))
        assert outcome is Outcome.NOTICE
    assert len(groq_fake.transcription_requests) == 5
    assert groq_fake.chat_requests == []
    outcome, _, _ = await turn(bot, msg("text still works"))
    assert outcome is Outcome.ANSWERED


async def test_circuit_breaker_for_speech_synthesis_keeps_text_answers_fast(
    make_bot: Callable[..., Any], elevenlabs_fake: FakeElevenLabs
) -> None:
    bot = await make_bot(provider_retries=1)
    elevenlabs_fake.fail_next("/v1/text-to-speech/", 500, times=1000)
    for i in range(8):
        outcome, sink, _ = await turn(bot, msg(f"line {i}"))
        assert outcome is Outcome.ANSWERED and sink.replies[0].voice is None
    assert len(elevenlabs_fake.tts_requests) == 5


# --- on a running Telegram bot -----------------------------------------------------------------


async def test_a_provider_outage_on_telegram_gets_apologies_then_answers_again(
    start_telegram_bot: StartBot, telegram_fake: FakeTelegram, groq_fake: FakeGroq,
    elevenlabs_fake: FakeElevenLabs,
) -> None:
    bot = await start_telegram_bot(provider_retries=1, provider_timeout=1.0)
    user, chat = telegram_fake.new_private_chat()
    groq_fake.fail_next("/chat/completions", 503, times=1000)
    elevenlabs_fake.fail_next("/v1/text-to-speech/", 500, times=1000)
    for i in range(7):
        telegram_fake.send_text(chat, user, f"are you there {i}?")
    await telegram_fake.wait_for_sent(chat, 7, timeout=20)
    texts = telegram_fake.texts(chat)
    assert all("trouble" in t or "unavailable" in t for t in texts), texts
    assert len(groq_fake.chat_requests) == 5  # the breaker opened after five failures
    assert not bot.task.done()

    groq_fake.clear_faults()
    bot.voicebot.pipeline.llm_breaker._opened_at -= 60
    telegram_fake.send_text(chat, user, "better now?")
    await telegram_fake.wait_for_sent(chat, 8, timeout=20)
    assert "You said: better now?" in telegram_fake.texts(chat)[-1]
    assert telegram_fake.sent_to(chat, "voice") == []  # speech is still down: text only
    await asyncio.sleep(0)
