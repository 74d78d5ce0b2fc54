"""The local stand-ins speak each service's protocol as the real SDKs use it.

Every test drives a real client library (groq, langchain-groq, elevenlabs, httpx for D-ID)
against a fake on 127.0.0.1, so a passing test means our code can be tested the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import groq
import httpx
import pytest
import pytest_asyncio
from elevenlabs import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_groq import ChatGroq

from tests.fakes import audio_samples
from tests.fakes.did import FakeDID
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq, language_name

STT_MODEL = "whisper-large-v3-turbo"
LLM_MODEL = "llama-3.1-8b-instant"
pytestmark = pytest.mark.timeout(60)


GroqFactory = Callable[..., groq.AsyncGroq]


@pytest_asyncio.fixture
async def groq_sdk(groq_fake: FakeGroq) -> AsyncIterator[GroqFactory]:
    """Make real ``AsyncGroq`` clients aimed at the fake (no retries unless asked); closed after the test."""
    clients: list[groq.AsyncGroq] = []

    def make(**kwargs: object) -> groq.AsyncGroq:
        options: dict = {"api_key": groq_fake.api_key, "base_url": groq_fake.base_url, "max_retries": 0}
        clients.append(groq.AsyncGroq(**{**options, "timeout": 10.0, **kwargs}))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def chat_groq(groq_fake: FakeGroq) -> AsyncIterator[ChatGroq]:
    """langchain-groq's ChatGroq aimed at the fake, on an httpx client the test closes."""
    async with httpx.AsyncClient() as http:
        yield ChatGroq(
            model=LLM_MODEL,
            api_key=groq_fake.api_key,
            base_url=groq_fake.base_url,
            max_retries=0,
            http_async_client=http,
        )


# ---------------------------------------------------------------------------------- audio


def test_audio_samples_are_real_media() -> None:
    ogg = audio_samples.tone_ogg(1.5)
    info = audio_samples.probe(ogg)
    assert ogg.startswith(b"OggS")
    assert (info.audio_codec, info.sample_rate, info.channels) == ("opus", 48_000, 1)
    assert info.duration == pytest.approx(1.5, abs=0.01)
    assert audio_samples.tone_ogg(1.0, seed=1) != audio_samples.tone_ogg(1.0, seed=2)
    assert audio_samples.tone_ogg(1.0, seed=3) == audio_samples.tone_ogg(1.0, seed=3)
    assert audio_samples.silence_ogg(0.5).startswith(b"OggS")
    assert audio_samples.wav_bytes(1.0).startswith(b"RIFF")
    mp4 = audio_samples.probe(audio_samples.mp4_clip())
    assert mp4.video_codec in ("h264", "mpeg4") and mp4.duration == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------------------- groq STT


async def test_transcription_verbose_json_returns_registered_text_and_language(
    groq_fake: FakeGroq, groq_sdk: GroqFactory
) -> None:
    audio = audio_samples.tone_ogg(1.2, seed=1)
    groq_fake.set_transcript(audio, "Bonjour tout le monde.", language="fr")
    async with groq_sdk() as client:
        result = await client.audio.transcriptions.create(
            file=("voice.ogg", audio), model=STT_MODEL, response_format="verbose_json"
        )
    assert result.text == " Bonjour tout le monde."  # Whisper's leading space
    extra = result.model_extra or {}
    assert extra["language"] == "French"  # a capitalised name, as Groq reports it
    assert extra["duration"] == pytest.approx(1.2, abs=0.01)
    assert extra["segments"][0]["text"] == " Bonjour tout le monde."

    sent = groq_fake.transcription_requests[-1]
    assert sent.headers["authorization"] == f"Bearer {groq_fake.api_key}"
    assert sent.form == {"model": STT_MODEL, "response_format": "verbose_json"}
    assert sent.files["file"].filename == "voice.ogg" and sent.files["file"].data == audio


async def test_transcription_default_text_json_and_text_formats(
    groq_fake: FakeGroq, groq_sdk: GroqFactory
) -> None:
    client = groq_sdk()
    audio = audio_samples.tone_ogg(0.6, seed=2)
    as_json = await client.audio.transcriptions.create(file=("a.ogg", audio), model=STT_MODEL, language="en")
    assert as_json.text.strip() == groq_fake.default_transcript
    as_text = await client.audio.transcriptions.create(file=("a.ogg", audio), model=STT_MODEL, response_format="text")
    assert isinstance(as_text, str) and as_text.strip() == groq_fake.default_transcript  # text/plain -> str
    groq_fake.leading_space = ""
    wav = await client.audio.transcriptions.create(file=("a.wav", audio_samples.wav_bytes(0.5)), model=STT_MODEL)
    assert wav.text == groq_fake.default_transcript


async def test_transcription_rejects_oga_name_and_non_audio(
    groq_fake: FakeGroq, groq_sdk: GroqFactory
) -> None:
    client = groq_sdk()
    audio = audio_samples.tone_ogg(0.5)
    with pytest.raises(groq.BadRequestError) as bad_name:
        await client.audio.transcriptions.create(file=("voice.oga", audio), model=STT_MODEL)
    error = bad_name.value.body["error"]
    assert error["code"] == "unsupported_audio_format" and "ogg opus wav webm" in error["message"]
    with pytest.raises(groq.BadRequestError, match="could not process file"):
        await client.audio.transcriptions.create(file=("voice.ogg", b"definitely not audio"), model=STT_MODEL)
    with pytest.raises(groq.BadRequestError, match="could not process file"):
        await client.audio.transcriptions.create(file=("voice.ogg", b"OggS" + b"\0" * 200), model=STT_MODEL)


async def test_wrong_key_is_401_in_groq_shape(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    async with groq_sdk(api_key="gsk_wrong") as client:
        with pytest.raises(groq.AuthenticationError) as denied:
            await client.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body == {
        "error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}
    }


# ---------------------------------------------------------------------------------- groq chat

HISTORY = [
    SystemMessage("You are Voicebot."),
    HumanMessage("Hi"),
    AIMessage("Hello!"),
    HumanMessage("What time is it?"),
]


async def test_chatgroq_ainvoke_gives_deterministic_reply_with_usage(
    groq_fake: FakeGroq, chat_groq: ChatGroq
) -> None:
    reply = await chat_groq.ainvoke(HISTORY)
    assert reply.content == "You said: What time is it?. I have 2 earlier messages."
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 11
    assert reply.usage_metadata["total_tokens"] == reply.usage_metadata["input_tokens"] + 11
    assert groq_fake.last_messages[0] == {"role": "system", "content": "You are Voicebot."}
    assert [m["role"] for m in groq_fake.last_messages] == ["system", "user", "assistant", "user"]
    assert groq_fake.chat_requests[-1].json["model"] == LLM_MODEL


async def test_chatgroq_astream_streams_word_chunks_and_final_usage(
    groq_fake: FakeGroq, chat_groq: ChatGroq
) -> None:
    groq_fake.reply_fn = lambda messages: "one two three four five"
    chunks = [chunk async for chunk in chat_groq.astream(HISTORY)]
    texts = [c.content for c in chunks if c.content]
    assert texts == ["one", " two", " three", " four", " five"]
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1 and with_usage[0].usage_metadata["output_tokens"] == 5
    # langchain-core appends an empty closing chunk, so look for finish_reason on any chunk
    reasons = [c.response_metadata.get("finish_reason") for c in chunks]
    assert [r for r in reasons if r] == ["stop"]
    assert groq_fake.chat_requests[-1].json["stream"] is True


async def test_raw_stream_is_groq_sse_with_x_groq_usage(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    async with groq_sdk() as client:
        stream = await client.chat.completions.create(
            model=LLM_MODEL, messages=[{"role": "user", "content": "hello"}], stream=True, max_tokens=3
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hello."
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"  # max_tokens cut the reply
    assert last.x_groq.usage.completion_tokens == 3


async def test_token_delay_paces_the_stream(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    groq_fake.reply_fn = lambda messages: "a b c d e"
    groq_fake.token_delay = 0.05
    async with groq_sdk() as client:
        stream = await client.chat.completions.create(
            model=LLM_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        arrivals = [time.monotonic() async for _ in stream]
    assert arrivals[-1] - arrivals[0] >= 0.2  # 7 chunks, 6 gaps of 0.05 s


async def test_async_reply_fn_and_decommissioned_model(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    async def reply(messages: list[dict]) -> str:
        return f"{len(messages)} messages"

    groq_fake.reply_fn = reply
    client = groq_sdk()
    done = await client.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "x"}])
    assert done.choices[0].message.content == "1 messages" and done.usage.total_tokens > 0
    with pytest.raises(groq.BadRequestError) as retired:
        await client.chat.completions.create(model="llama3-8b-8192", messages=[{"role": "user", "content": "x"}])
    assert retired.value.body["error"]["code"] == "model_decommissioned"


async def test_429_is_retried_by_the_sdk_after_retry_after(
    groq_fake: FakeGroq, groq_sdk: GroqFactory
) -> None:
    groq_fake.retry_after = 0.05  # the SDK honours fractional seconds; the real service sends whole ones
    groq_fake.fail_next("/chat/completions", 429)
    client = groq_sdk(max_retries=2)
    done = await client.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "x"}])
    assert done.choices[0].message.content.startswith("You said: x.")
    first, second = groq_fake.chat_requests
    assert (first.status, second.status) == (429, 200)
    assert (first.headers["x-stainless-retry-count"], second.headers["x-stainless-retry-count"]) == ("0", "1")


async def test_429_without_retries_raises_with_retry_after(
    groq_fake: FakeGroq, groq_sdk: GroqFactory
) -> None:
    groq_fake.fail_next("/chat/completions", 429)
    async with groq_sdk() as client:
        with pytest.raises(groq.RateLimitError) as limited:
            await client.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.body["error"]["code"] == "rate_limit_exceeded"
    assert len(groq_fake.chat_requests) == 1


# ---------------------------------------------------------------------------------- faults


async def test_faults_hang_drop_truncate_and_bad_body(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    client = groq_sdk(timeout=0.3)
    ask = {"model": LLM_MODEL, "messages": [{"role": "user", "content": "x"}]}
    groq_fake.hang_next("/chat/completions")
    with pytest.raises(groq.APITimeoutError):
        await client.chat.completions.create(**ask)
    groq_fake.drop_next("/chat/completions")
    with pytest.raises(groq.APIConnectionError):
        await client.chat.completions.create(**ask)
    groq_fake.truncate_next("/chat/completions")
    with pytest.raises(groq.APIConnectionError):
        await client.chat.completions.create(**ask)
    groq_fake.bad_body_next("/chat/completions")
    with pytest.raises(Exception) as garbled:  # the SDK lets json's own error through
        await client.chat.completions.create(**ask)
    assert "Expecting value" in str(garbled.value)
    groq_fake.fail_next("/chat/completions", 503, delay=0.05, times=2)
    for _ in range(2):
        with pytest.raises(groq.InternalServerError):
            await client.chat.completions.create(**ask)
    assert (await client.chat.completions.create(**ask)).choices[0].message.content
    faults = [r.fault for r in groq_fake.chat_requests]
    assert faults == ["hang", "drop", "truncate", "status", "status", "status", None]
    assert not groq_fake.pending_faults


async def test_slow_answer_times_out_and_the_sdk_retries(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    groq_fake.slow_next("/chat/completions", 5.0)
    client = groq_sdk(timeout=0.3, max_retries=1)
    done = await client.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "x"}])
    assert done.choices[0].message.content
    timed_out, answered = await groq_fake.wait_for_requests(2, "/chat/completions")
    assert (timed_out.fault, timed_out.status, answered.status) == ("slow", None, 200)


async def test_silence_can_be_registered_as_no_speech(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    silence = audio_samples.silence_ogg(1.0)
    groq_fake.set_transcript(silence, "")
    result = await groq_sdk().audio.transcriptions.create(
        file=("s.ogg", silence), model=STT_MODEL, response_format="verbose_json"
    )
    assert result.text == "" and (result.model_extra or {})["segments"] == []


async def test_latency_applies_per_endpoint(groq_fake: FakeGroq, groq_sdk: GroqFactory) -> None:
    groq_fake.latency["stt"] = 0.25
    client = groq_sdk()
    started = time.monotonic()
    await client.audio.transcriptions.create(file=("a.ogg", audio_samples.tone_ogg(0.5)), model=STT_MODEL)
    assert time.monotonic() - started >= 0.25


def test_thread_mode_serves_sync_clients(groq_fake_thread: FakeGroq) -> None:
    audio = audio_samples.tone_ogg(0.5, seed=9)
    groq_fake_thread.set_transcript(audio, "from a thread")
    client = groq.Groq(api_key=groq_fake_thread.api_key, base_url=groq_fake_thread.base_url, max_retries=0)
    assert client.audio.transcriptions.create(file=("v.ogg", audio), model=STT_MODEL).text == " from a thread"
    groq_fake_thread.fail_next("/audio/", 500)
    with pytest.raises(groq.InternalServerError):
        client.audio.transcriptions.create(file=("v.ogg", audio), model=STT_MODEL)


# ---------------------------------------------------------------------------------- ElevenLabs


def eleven(fake: FakeElevenLabs, api_key: str | None = None) -> AsyncElevenLabs:
    return AsyncElevenLabs(api_key=api_key or fake.api_key, base_url=fake.base_url, timeout=10.0)


async def test_elevenlabs_convert_returns_real_ogg_opus(elevenlabs_fake: FakeElevenLabs) -> None:
    text = "Hello there, this is a voice reply."
    chunks = [
        chunk
        async for chunk in eleven(elevenlabs_fake).text_to_speech.convert(
            "pNInz6obpgDQGcFmaJgB", text=text, model_id="eleven_flash_v2_5", output_format="opus_48000_64"
        )
    ]
    audio = b"".join(chunks)
    assert audio.startswith(b"OggS")
    info = audio_samples.probe(audio)
    assert (info.audio_codec, info.sample_rate, info.channels) == ("opus", 48_000, 1)
    assert info.duration == pytest.approx(elevenlabs_fake.expected_duration(text), abs=0.02)
    assert info.duration == pytest.approx(len(text) * 0.06, abs=0.02)

    sent = elevenlabs_fake.tts_requests[-1]
    assert sent.path == "/v1/text-to-speech/pNInz6obpgDQGcFmaJgB"
    assert sent.headers["xi-api-key"] == elevenlabs_fake.api_key
    assert sent.query == {"output_format": "opus_48000_64"}
    assert sent.json == {"text": text, "model_id": "eleven_flash_v2_5"}


async def test_elevenlabs_stream_endpoint_chunks_and_short_text_minimum(
    elevenlabs_fake: FakeElevenLabs,
) -> None:
    elevenlabs_fake.chunk_size = 512
    chunks = [
        c
        async for c in eleven(elevenlabs_fake).text_to_speech.stream(
            "voice1", text="Hi", model_id="eleven_flash_v2_5", output_format="opus_48000_32"
        )
    ]
    assert len(chunks) > 1
    assert audio_samples.audio_duration(b"".join(chunks)) == pytest.approx(0.5, abs=0.02)
    assert elevenlabs_fake.tts_requests[-1].path.endswith("/voice1/stream")


async def test_elevenlabs_default_format_is_mp3(elevenlabs_fake: FakeElevenLabs) -> None:
    audio = b"".join([c async for c in eleven(elevenlabs_fake).text_to_speech.convert("v", text="Some words")])
    assert audio_samples.probe(audio).container == "mp3"


async def test_elevenlabs_errors(elevenlabs_fake: FakeElevenLabs) -> None:
    with pytest.raises(ApiError) as denied:
        [c async for c in eleven(elevenlabs_fake, "wrong").text_to_speech.convert("v", text="x")]
    assert denied.value.status_code == 401
    assert denied.value.body == {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
    elevenlabs_fake.fail_next("/text-to-speech/", 429)
    with pytest.raises(ApiError) as busy:  # streaming calls are not retried by the SDK
        [c async for c in eleven(elevenlabs_fake).text_to_speech.convert("v", text="x")]
    assert busy.value.status_code == 429 and len(elevenlabs_fake.tts_requests) == 2
    with pytest.raises(ApiError) as unsupported:
        [c async for c in eleven(elevenlabs_fake).text_to_speech.convert("v", text="x", output_format="ulaw_8000")]
    assert unsupported.value.body["detail"]["status"] == "unsupported_output_format"


async def test_elevenlabs_bad_audio_and_truncated_stream(elevenlabs_fake: FakeElevenLabs) -> None:
    client = eleven(elevenlabs_fake)
    elevenlabs_fake.bad_audio = True
    bad = b"".join([c async for c in client.text_to_speech.convert("v", text="hi", output_format="opus_48000_64")])
    assert not bad.startswith(b"OggS") and not audio_samples.looks_like_audio(bad)
    elevenlabs_fake.bad_audio = False
    elevenlabs_fake.chunk_size = 256
    elevenlabs_fake.truncate_next("/stream")
    with pytest.raises(httpx.RemoteProtocolError):
        [c async for c in client.text_to_speech.stream("v", text="a longer text", output_format="opus_48000_64")]


# ---------------------------------------------------------------------------------- D-ID


def did_client(fake: FakeDID, api_key: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=fake.base_url, headers={"Authorization": f"Basic {api_key or fake.api_key}"}, timeout=10.0
    )


async def poll(client: httpx.AsyncClient, talk_id: str) -> tuple[list[str], dict]:
    statuses: list[str] = []
    for _ in range(10):
        talk = (await client.get(f"/talks/{talk_id}")).json()
        statuses.append(talk["status"])
        if talk["status"] in ("done", "error", "rejected"):
            return statuses, talk
        await asyncio.sleep(0)
    raise AssertionError(f"talk never finished: {statuses}")


async def test_did_audio_talk_upload_poll_and_result(did_fake: FakeDID) -> None:
    async with did_client(did_fake) as client:
        voice = audio_samples.tone_ogg(2.0)
        uploaded = await client.post("/audios", files={"audio": ("reply.ogg", voice, "audio/ogg")})
        assert uploaded.status_code == 201 and uploaded.json()["url"].startswith("s3://d-id-audios-prod/")
        created = await client.post(
            "/talks",
            json={
                "source_url": "https://example.com/face.jpg",
                "script": {"type": "audio", "audio_url": uploaded.json()["url"]},
            },
        )
        assert created.status_code == 201
        assert created.json()["status"] == "created" and created.json()["id"].startswith("tlk_")
        statuses, done = await poll(client, created.json()["id"])
        assert statuses == ["started", "done"]
        assert done["duration"] == pytest.approx(2.0, abs=0.01)
        assert done["result_url"].startswith(did_fake.base_url)
        async with httpx.AsyncClient() as s3:  # a pre-signed URL: no auth header
            video = (await s3.get(done["result_url"])).content
    info = audio_samples.probe(video)
    assert info.video_codec in ("h264", "mpeg4") and info.duration == pytest.approx(2.0, abs=0.1)


async def test_did_text_talk_errors_and_auth(did_fake: FakeDID) -> None:
    did_fake.polls_until_done = 3
    did_fake.fail_next_talk("rejected", kind="ModerationError", description="not allowed")
    async with did_client(did_fake) as client:
        body = {
            "source_url": "https://example.com/face.jpg",
            "script": {
                "type": "text",
                "input": "Hello",
                "provider": {"type": "microsoft", "voice_id": "en-US-JennyNeural"},
            },
        }
        talk_id = (await client.post("/talks", json=body)).json()["id"]
        statuses, final = await poll(client, talk_id)
        assert statuses == ["created", "started", "rejected"]
        assert final["error"] == {"kind": "ModerationError", "description": "not allowed"}
        bad = await client.post("/talks", json={"script": {"type": "text", "input": "x"}})
        assert bad.status_code == 400 and bad.json()["kind"] == "ValidationError"
        image = await client.post("/images", files={"image": ("face.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)})
        assert image.status_code == 201 and image.json()["url"].startswith("s3://d-id-images-prod/")
        did_fake.fail_next("/talks", 500)
        assert (await client.post("/talks", json=body)).json()["kind"] == "InternalServerError"
    async with did_client(did_fake, api_key="wrong") as client:
        denied = await client.post("/talks", json=body)
    assert denied.status_code == 401 and denied.json()["kind"] == "AuthorizationError"


# ---------------------------------------------------------------------------------- plugin


async def test_fake_env_points_at_the_fakes(fake_env: dict[str, str], groq_fake: FakeGroq) -> None:
    assert set(fake_env) == {
        "GROQ_API_KEY", "GROQ_BASE_URL", "ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL", "DID_API_KEY", "DID_BASE_URL",
    }
    assert fake_env["GROQ_BASE_URL"] == groq_fake.base_url and not fake_env["GROQ_BASE_URL"].endswith("/v1")
    assert all(fake_env[k].startswith("http://127.0.0.1:") for k in fake_env if k.endswith("_BASE_URL"))
    assert language_name("en") == "English"
    async with httpx.AsyncClient(base_url=fake_env["GROQ_BASE_URL"]) as client:
        missing = await client.get("/openai/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
