"""The web page's HTTP API on a real server on 127.0.0.1, with the real SDKs against the fakes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.web import serve, start_site
from adapters.web_guard import COOKIE
from adapters.web_media import MediaShelf
from bot.config import DEFAULT_SPEAKERS
from bot.errors import ConfigError
from bot.runtime import VoiceBot
from tests.fakes.audio_samples import audio_duration, probe, silence_ogg, tone_ogg, webm_opus
from tests.fakes.did import FakeDID
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq
from tests.fakes.web_plugin import RunningWeb, StartWeb, offline_web_settings, web_settings
from tests.test_cli import ROOT, VOICEBOT

Events = list[dict[str, Any]]


async def opened(page: RunningWeb, cookie_jar: aiohttp.CookieJar | None = None) -> aiohttp.ClientSession:
    """A client that has loaded the page once, so it holds a session cookie."""
    client = page.client(cookie_jar)
    async with client.get("/") as response:
        assert response.status == 200
    return client


async def post_turn(client: aiohttp.ClientSession, *, text: str | None = None,
                    audio: bytes | None = None, filename: str = "recording.webm") -> Events:
    """POST one turn; the NDJSON events it streamed back."""
    form = aiohttp.FormData()
    if text is not None:
        form.add_field("text", text)
    if audio is not None:
        form.add_field("audio", audio, filename=filename, content_type="application/octet-stream")
    async with client.post("/api/turns", data=form) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/x-ndjson"
        return [json.loads(line) for line in (await response.text()).splitlines()]


def reply_of(events: Events) -> dict[str, Any]:
    replies = [e for e in events if e["type"] == "reply"]
    assert len(replies) == 1, events
    return replies[0]


async def state_of(client: aiohttp.ClientSession) -> dict[str, Any]:
    async with client.get("/api/state") as response:
        return await response.json()


# --- the page and its files ------------------------------------------------------------------


async def test_page_sets_a_private_session_cookie_and_loads_nothing_from_elsewhere(start_web: StartWeb) -> None:
    page = await start_web()
    client = page.client()
    async with client.get("/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        cookie = response.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and len(cookie.value) >= 32
        html = await response.text()
    assert 'src="/static/app.js"' in html and "Process Audio" in html
    for name in ("app.js", "style.css", "icon.svg"):
        async with client.get(f"/static/{name}") as response:
            assert response.status == 200
            body = (await response.text()).replace("http://www.w3.org/2000/svg", "")
        assert "://" not in body and "@import" not in body, f"{name} refers to another host"
    assert "://" not in html


@pytest.mark.parametrize("path", [
    "/static/../web.py", "/static/..%2Fweb.py", "/static/%2e%2e%2fweb_guard.py", "/static/web.py",
    "/static/..%2F..%2Fbot%2Fconfig.py", "/static/", "/static//etc/passwd", "/media/..%2Fweb.py",
])
async def test_no_path_reaches_files_outside_the_page(start_web: StartWeb, path: str) -> None:
    page = await start_web()
    client = page.client()
    async with client.get(aiohttp.client.URL(path, encoded=True)) as response:
        assert response.status == 404
        assert "import" not in await response.text()


async def test_state_offers_the_configured_speakers(start_web: StartWeb) -> None:
    page = await start_web()
    state = await state_of(await opened(page))
    assert state["speakers"] == list(DEFAULT_SPEAKERS) and state["speaker"] == "english-male-1"
    assert state["voice"] is True and state["avatar"] is False and state["video"] is False
    assert state["bot_name"] == "Voicebot" and state["history"] == []
    assert state["max_audio_bytes"] == page.bot.settings.max_audio_bytes


# --- turns -----------------------------------------------------------------------------------


async def test_text_turn_streams_stages_and_a_reply_with_playable_ogg(start_web: StartWeb) -> None:
    page = await start_web()
    client = await opened(page)
    events = await post_turn(client, text="hello there")
    stages = [e["stage"] for e in events if e["type"] == "stage"]
    assert stages == ["thinking", "speaking"]
    assert any(e["type"] == "delta" for e in events)
    reply = reply_of(events)
    assert reply["kind"] == "answer" and reply["text"] == "You said: hello there. I have 0 earlier messages."
    assert reply["transcript"] is None and reply["clip"] is None
    assert events[-1] == {"type": "done", "outcome": "answered"}

    async with client.get(reply["audio"]) as response:
        assert response.status == 200 and response.content_type == "audio/ogg"
        voice = await response.read()
    assert probe(voice).audio_codec == "opus" and audio_duration(voice) > 1.0
    async with client.get(reply["audio"], headers={"Range": "bytes=0-99"}) as response:
        assert response.status == 206 and len(await response.read()) == 100
        assert response.headers["Content-Range"] == f"bytes 0-99/{len(voice)}"
    async with client.get(reply["audio"], headers={"Range": f"bytes={len(voice)}-"}) as response:
        assert response.status == 416
    stranger = await opened(page)  # another browser session never gets this chat's audio
    async with stranger.get(reply["audio"]) as response:
        assert response.status == 404


async def test_browser_recording_is_uploaded_to_whisper_as_webm(start_web: StartWeb, groq_fake: FakeGroq) -> None:
    page = await start_web()
    client = await opened(page)
    recording = webm_opus(1.5)
    groq_fake.set_transcript(recording, "What time is it?")
    reply = reply_of(await post_turn(client, audio=recording))
    assert reply["transcript"] == "What time is it?" and reply["language"] == "en"
    assert reply["text"].startswith("You said: What time is it?")
    upload = groq_fake.transcription_requests[-1].files["file"]
    assert upload.filename == "voice.webm" and upload.data == recording


@pytest.mark.parametrize(("audio", "filename", "notice"), [
    (b"", "recording.webm", "I couldn't read that audio"),
    (b"these are not sounds\n" * 20, "notes.txt", "I couldn't read that audio"),
    (silence_ogg(1.0), "silence.ogg", "I couldn't hear any words"),
])
async def test_empty_unsupported_or_silent_audio_gets_a_clear_notice(
    start_web: StartWeb, groq_fake: FakeGroq, audio: bytes, filename: str, notice: str
) -> None:
    groq_fake.set_transcript(silence_ogg(1.0), "")
    page = await start_web()
    client = await opened(page)
    events = await post_turn(client, audio=audio, filename=filename)
    reply = reply_of(events)
    assert reply["kind"] == "notice" and reply["text"].startswith(notice) and reply["audio"] is None
    assert events[-1]["outcome"] == "notice"


async def test_a_page_that_leaves_mid_turn_finds_the_answer_in_its_history(
    start_web: StartWeb, groq_fake: FakeGroq
) -> None:
    groq_fake.latency["chat"] = 0.5
    page = await start_web()
    client = await opened(page)
    response = await client.post("/api/turns", data=aiohttp.FormData({"text": "are you there"}))
    assert json.loads(await response.content.readline()) == {"type": "stage", "stage": "thinking"}
    response.close()  # the tab was closed or reloaded
    for _ in range(100):
        history = (await state_of(client))["history"]
        if len(history) == 2:
            break
        await asyncio.sleep(0.05)
    assert history[1]["text"] == "You said: are you there. I have 0 earlier messages."
    # A chat's turns run in order, so this one also waits until the abandoned turn is over.
    assert reply_of(await post_turn(client, text="hello?"))["text"].endswith("I have 2 earlier messages.")


async def test_nothing_to_send_is_refused_with_a_message(start_web: StartWeb) -> None:
    page = await start_web()
    client = await opened(page)
    async with client.post("/api/turns", data=aiohttp.FormData({"text": "   "})) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "Record, upload or type something first."


async def test_uploads_over_the_limit_are_refused_clearly(start_web: StartWeb, groq_fake: FakeGroq) -> None:
    page = await start_web(max_audio_bytes=100_000)
    client = await opened(page)
    form = aiohttp.FormData()
    form.add_field("audio", b"OggS" + bytes(300_000), filename="big.ogg")
    async with client.post("/api/turns", data=form) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "That file is too large. The limit is 0.1 MB."
    # Just over the limit but within the form's slack: the core's own notice says so.
    reply = reply_of(await post_turn(client, audio=tone_ogg(1.0) + bytes(100_000), filename="a.ogg"))
    assert reply["kind"] == "notice" and "too large" in reply["text"]
    assert groq_fake.transcription_requests == []


# --- who may post ----------------------------------------------------------------------------


async def test_posts_must_come_from_the_page_itself(start_web: StartWeb) -> None:
    page = await start_web()
    client = await opened(page)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        async with client.post("/api/clear", headers=headers) as response:
            assert response.status == 403, headers
            assert (await response.json())["error"] == "Cross-site request refused."
    same_origin = page.url.rstrip("/")
    async with client.post("/api/clear", headers={"Origin": same_origin, "Sec-Fetch-Site": "same-origin"}) as response:
        assert response.status == 200
    cookieless = page.client()
    async with cookieless.post("/api/turns", data=aiohttp.FormData({"text": "hi"})) as response:
        assert response.status == 403 and "reload the page" in (await response.json())["error"]


async def test_a_loopback_server_ignores_other_host_names(start_web: StartWeb) -> None:
    """A site that rebinds its DNS name to 127.0.0.1 must not reach the page."""
    page = await start_web()
    client = page.client()
    async with client.get("/api/state", headers={"Host": "evil.example:7860"}) as response:
        assert response.status == 403
    async with client.get("/", headers={"Host": "localhost:7860"}) as response:
        assert response.status == 200


# --- settings, clear, history ------------------------------------------------------------------


async def test_speaker_choice_reaches_the_voice(start_web: StartWeb, elevenlabs_fake: FakeElevenLabs) -> None:
    page = await start_web()
    client = await opened(page)
    async with client.post("/api/settings", json={"speaker": "english-female"}) as response:
        assert (await response.json())["text"] == "I'll speak as english-female now."
    assert (await state_of(client))["speaker"] == "english-female"
    await post_turn(client, text="hi")
    assert elevenlabs_fake.tts_requests[-1].path.startswith(f"/v1/text-to-speech/{DEFAULT_SPEAKERS['english-female']}")
    for body in ({"speaker": "nobody"}, {"speaker": 3}, {"video": "yes"}, ["speaker"]):
        async with client.post("/api/settings", json=body) as response:
            assert response.status == 400, body


async def test_clear_forgets_this_session_only(start_web: StartWeb, groq_fake: FakeGroq) -> None:
    page = await start_web()
    client, other = await opened(page), await opened(page)
    await post_turn(client, text="one")
    await post_turn(other, text="elsewhere")
    async with client.post("/api/clear") as response:
        result = await response.json()
    assert result == {"cleared": True, "text": "Done: I forgot this conversation (2 messages)."}
    assert (await state_of(client))["history"] == []
    assert len((await state_of(other))["history"]) == 2
    reply = reply_of(await post_turn(client, text="two"))
    assert reply["text"].endswith("I have 0 earlier messages.")


async def test_history_survives_a_server_restart(start_web: StartWeb) -> None:
    first = await start_web()
    jar = aiohttp.CookieJar(unsafe=True)
    client = await opened(first, jar)
    answer = reply_of(await post_turn(client, text="remember me"))["text"]
    await first.stop()

    second = await start_web()
    client = second.client(jar)  # the same browser, after the restart
    history = (await state_of(client))["history"]
    assert history == [{"role": "user", "text": "remember me"}, {"role": "assistant", "text": answer}]
    assert reply_of(await post_turn(client, text="still there?"))["text"].endswith("I have 2 earlier messages.")


async def test_avatar_clip_follows_the_reply(start_web: StartWeb, did_fake: FakeDID) -> None:
    page = await start_web(avatar_provider="auto")
    client = await opened(page)
    assert (await state_of(client))["avatar"] is True
    async with client.post("/api/settings", json={"video": True}) as response:
        assert (await response.json())["text"] == "Avatar videos on."
    reply = reply_of(await post_turn(client, text="show yourself"))
    assert reply["clip"]
    async with client.get(reply["clip"]) as response:
        assert response.status == 200
        url = (await response.json())["url"]
    async with client.get(url) as response:
        assert response.content_type == "video/mp4"
        assert probe(await response.read()).video_codec is not None


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


async def wait_until_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


async def clip_status(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as response:
        return response.status


async def test_serve_stops_within_seconds_while_a_page_waits_for_a_clip(
    fake_env: dict[str, str], did_fake: FakeDID, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    did_fake.latency["talks"] = 3.0  # the clip is still rendering when the server is told to stop
    bot = await VoiceBot.create(web_settings(db_url, web_port=free_port(), avatar_provider="auto"))
    stop = asyncio.Event()
    server = asyncio.create_task(serve(bot, stop))
    try:
        await wait_until_listening(bot.settings.web_port)
        url = f"http://127.0.0.1:{bot.settings.web_port}/"
        async with aiohttp.ClientSession(base_url=url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            await client.get("/")
            await client.post("/api/settings", json={"video": True})
            reply = reply_of(await post_turn(client, text="hi"))
            waiting = asyncio.create_task(clip_status(client, reply["clip"]))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(server, 10)
            assert time.monotonic() - started < 2
            assert await waiting == 204  # the waiting page was answered "no clip", not cut off
    finally:
        stop.set()
        await asyncio.gather(server, return_exceptions=True)
        await bot.aclose()


def test_voicebot_web_serves_the_page_and_stops_on_sigterm(fake_env_thread: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN"))}
    env.update(fake_env_thread, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([*VOICEBOT, "web", "--port", str(port)], env=env, cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)
    line = ""
    try:
        for line in server.stderr:  # the log says where the page is once it listens
            if "web chat: open" in line:
                break
        assert f"http://127.0.0.1:{port}/" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"Process Audio" in response.read()
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        server.stderr.close()


async def test_a_busy_port_is_a_clear_configuration_error(start_web: StartWeb) -> None:
    page = await start_web()
    port = int(page.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        await start_web(web_port=port)


# --- pieces ----------------------------------------------------------------------------------


async def test_media_shelf_is_bounded_and_per_chat() -> None:
    shelf = MediaShelf(max_bytes=1000)
    first = shelf.put("a", bytes(600), "audio/ogg")
    second = shelf.put("a", bytes(600), "audio/ogg")
    assert shelf.get("a", first) is None and shelf.get("a", second) is not None
    assert shelf.get("b", second) is None and shelf.size == 600
    shelf.expect_clip("a", "t1")
    assert await shelf.wait_clip("a", "t1", timeout=0.01) is None
    assert await shelf.wait_clip("a", "unknown", timeout=10) is None
    waiter = asyncio.create_task(shelf.wait_clip("a", "t1", timeout=10))
    token = shelf.put_clip("a", "t1", b"mp4", "video/mp4")
    assert await waiter == token


# --- offline ---------------------------------------------------------------------------------


async def test_the_page_answers_with_the_offline_engines(db_url: str) -> None:
    bot = await VoiceBot.create(offline_web_settings(db_url))
    runner, url = await start_site(bot)
    try:
        async with aiohttp.ClientSession(base_url=url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            async with client.get("/"):
                pass
            state = await state_of(client)
            assert state["speakers"] == ["local voice"]
            reply = reply_of(await post_turn(client, text="Say hello."))
            assert reply["kind"] == "answer" and reply["text"]
            async with client.get(reply["audio"]) as response:
                assert probe(await response.read()).audio_codec == "opus"
    finally:
        await runner.cleanup()
        await bot.aclose()
