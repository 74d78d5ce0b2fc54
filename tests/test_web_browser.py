"""The web page in a real browser: Debian's Chromium driven by Playwright for Python.

Chromium's fake microphone plays a WAV file, so "Record" records real audio through the
browser's MediaRecorder. Every request the page makes is recorded and must go to this server:
this machine has no internet, so a font or script from a CDN would simply fail, and catching
that is half the point of these tests. A screenshot goes to ``test-artifacts/`` (not committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import av
import pytest
import pytest_asyncio

from adapters.web import start_site
from bot.audio import decode_pcm
from bot.runtime import VoiceBot
from tests.fakes.audio_samples import beeps_pcm, silence_pcm, tone_ogg, wav_from_pcm
from tests.fakes.did import FakeDID
from tests.fakes.groq import FakeGroq
from tests.fakes.web_plugin import StartWeb, offline_web_settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: `apt-get install chromium` to run the browser tests",
                allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright for Python is not installed (pip install playwright==1.65.2)"
)
expect = playwright_api.expect


@dataclass(slots=True)
class Visit:
    """A browser tab on the page, with every request and error it produced."""

    page: object  # playwright.async_api.Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_all_local(self) -> None:
        assert self.requests, "the page made no request at all?"
        foreign = [url for url in self.requests if urlsplit(url.removeprefix("blob:")).hostname != "127.0.0.1"]
        assert foreign == [], f"the page loaded something from elsewhere: {foreign}"
        assert self.errors == [], f"the page reported errors: {self.errors}"


@pytest.fixture
def microphone(tmp_path: Path) -> Path:
    """What Chromium's fake microphone hears: three seconds of speech-like beeps (48 kHz WAV)."""
    path = tmp_path / "question.wav"
    path.write_bytes(wav_from_pcm(beeps_pcm(3.0, rate=48_000, seed=2), 48_000))
    return path


Launch = Callable[[Path], Awaitable[object]]


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Launch]:
    """Launches Debian's Chromium with a fake microphone that plays the given WAV file."""
    async with playwright_api.async_playwright() as playwright:
        launched = []

        async def launch(microphone: Path) -> object:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone}"],
            )
            launched.append(browser)
            return browser

        yield launch
        for browser in launched:
            await browser.close()


@pytest_asyncio.fixture
async def browser(chromium: Launch, microphone: Path) -> object:
    return await chromium(microphone)


async def new_tab(browser: object) -> Visit:
    """A tab in a fresh browser profile that records what it requests and every error."""
    context = await browser.new_context(viewport={"width": 1100, "height": 820})
    page = await context.new_page()
    visit = Visit(page)
    page.on("request", lambda request: visit.requests.append(request.url))
    page.on("requestfailed", lambda request: visit.errors.append(f"{request.url}: {request.failure}"))
    page.on("pageerror", lambda error: visit.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and visit.errors.append(message.text))
    return visit


@pytest_asyncio.fixture
async def tab(browser: object) -> AsyncIterator[Visit]:
    visit = await new_tab(browser)
    yield visit
    await visit.page.context.close()


async def open_page(visit: Visit, url: str) -> object:
    page = visit.page
    await page.goto(url)
    await expect(page.locator("body[data-ready=true]")).to_be_attached()
    return page


async def wait_playable(page: object, media: object, timeout: float = 30_000) -> None:
    """Wait until a media element has loaded enough of its source to play, without error."""
    handle = await media.element_handle(timeout=timeout)
    await page.wait_for_function("el => el.readyState >= 2 && !el.error && el.duration > 0", arg=handle)


async def record(page: object, seconds: float) -> None:
    """Record ``seconds`` from the (fake) microphone and press "Process Audio"."""
    await page.click("#record")
    await expect(page.locator("#record")).to_have_class("record on")
    await page.wait_for_timeout(seconds * 1000)
    await page.click("#record")
    await expect(page.locator("#preview")).to_be_visible()
    await page.click("#process")


def screenshot_path(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


async def test_record_upload_type_then_clear(
    start_web: StartWeb, groq_fake: FakeGroq, tab: Visit, tmp_path: Path
) -> None:
    groq_fake.default_transcript = "what is the weather like today"
    server = await start_web()
    page = await open_page(tab, server.url)
    await expect(page.locator("#speaker")).to_have_value("english-male-1")
    await expect(page.locator("#empty")).to_be_visible()

    # Record a spoken question with the (fake) microphone, then "Process Audio".
    await record(page, 1.5)
    user, answer = page.locator(".msg.user").nth(0), page.locator(".msg.bot").nth(0)
    await expect(answer.locator(".text")).to_have_text(
        "You said: what is the weather like today. I have 0 earlier messages.")
    await expect(user.locator(".text")).to_have_text("what is the weather like today")
    await wait_playable(page, answer.locator("audio.reply-audio"))
    upload = groq_fake.transcription_requests[-1].files["file"]
    assert upload.filename == "voice.webm" and upload.data[:4] == b"\x1a\x45\xdf\xa3"  # MediaRecorder's WebM

    # Upload a file.
    voice_note = tmp_path / "question.ogg"
    voice_note.write_bytes(tone_ogg(1.5, seed=5))
    groq_fake.set_transcript(voice_note.read_bytes(), "tell me a joke")
    await page.set_input_files("#upload", str(voice_note))
    await page.click("#process")
    await expect(page.locator(".msg.user").nth(1).locator(".text")).to_have_text("tell me a joke")
    await expect(page.locator(".msg.bot").nth(1).locator(".text")).to_have_text(
        "You said: tell me a joke. I have 2 earlier messages.")

    # Type a message.
    await page.fill("#text", "and one about cats")
    await page.press("#text", "Enter")
    last = page.locator(".msg.bot").nth(2)
    await expect(last.locator(".text")).to_have_text("You said: and one about cats. I have 4 earlier messages.")
    await wait_playable(page, last.locator("audio.reply-audio"))

    await page.screenshot(path=screenshot_path("web-page.png"))

    # Clear empties the conversation, here and after a reload.
    await page.click("#clear")
    await expect(page.locator(".msg")).to_have_count(0)
    await expect(page.locator("#status")).to_contain_text("I forgot this conversation")
    await page.reload()
    await expect(page.locator("body[data-ready=true]")).to_be_attached()
    await expect(page.locator(".msg")).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    tab.assert_all_local()


async def test_unreadable_audio_gets_a_notice_and_history_survives_a_restart(
    start_web: StartWeb, tab: Visit, tmp_path: Path
) -> None:
    server = await start_web()
    page = await open_page(tab, server.url)
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("these are not sounds\n")
    await page.set_input_files("#upload", str(not_audio))
    await page.click("#process")
    notice = page.locator(".msg.bot.notice")
    await expect(notice.locator(".text")).to_contain_text("I couldn't read that audio")

    await page.fill("#text", "remember the blue door")
    await page.click("#send")
    answer = page.locator(".msg.bot").nth(1)
    await expect(answer.locator(".text")).to_have_text("You said: remember the blue door. I have 0 earlier messages.")
    await wait_playable(page, answer.locator("audio.reply-audio"))
    tab.assert_all_local()

    await page.goto("about:blank")  # leave the old page first: its late loads (the icon) would fail
    await server.stop()
    tab.errors.clear()
    restarted = await start_web()  # same database, another port: the cookie still holds
    page = await open_page(tab, restarted.url)
    await expect(page.locator(".msg .text")).to_have_text([
        "remember the blue door", "You said: remember the blue door. I have 0 earlier messages.",
    ])
    tab.assert_all_local()


async def test_avatar_clip_appears_under_the_reply(start_web: StartWeb, did_fake: FakeDID, tab: Visit) -> None:
    server = await start_web(avatar_provider="auto")
    page = await open_page(tab, server.url)
    await expect(page.locator("#video-field")).to_be_visible()
    await page.check("#video")
    await expect(page.locator("#status")).to_have_text("Avatar videos on.")
    await page.fill("#text", "show yourself")
    await page.press("#text", "Enter")
    clip = page.locator(".msg.bot video.clip")
    await expect(clip).to_be_attached(timeout=20_000)
    if "libx264" in av.codecs_available:  # the fake's clip is H.264 then, which Chromium plays
        await wait_playable(page, clip)
    fetched = await clip.evaluate(
        "async el => { const r = await fetch(el.src); return [r.status, r.headers.get('content-type')]; }")
    assert fetched == [200, "video/mp4"]
    await page.screenshot(path=screenshot_path("web-page-avatar.png"))
    tab.assert_all_local()


async def test_a_spoken_question_is_answered_offline(chromium: Launch, db_url: str, tmp_path: Path) -> None:
    """No key, no network: faster-whisper hears the question, llama.cpp answers, Piper speaks."""
    bot = await VoiceBot.create(offline_web_settings(db_url))
    runner, url = await start_site(bot)
    try:
        # The question is spoken by the offline voice itself and played by the fake microphone.
        question = await bot.providers.tts.synthesize("What is the capital of France?")
        speech = (await asyncio.to_thread(decode_pcm, question.data, 48_000)).tobytes()
        microphone = tmp_path / "spoken.wav"
        microphone.write_bytes(wav_from_pcm(silence_pcm(0.3) + speech + silence_pcm(1.5), 48_000))
        visit = await new_tab(await chromium(microphone))
        page = await open_page(visit, url)
        await expect(page.locator("#speaker")).to_have_value("local voice")
        await expect(page.locator("#speaker")).to_be_disabled()
        await record(page, question.duration + 0.8)
        await expect(page.locator(".msg.user .text")).to_contain_text("France", timeout=120_000)
        answer = page.locator(".msg.bot")
        await expect(answer.locator(".text")).not_to_be_empty()
        await wait_playable(page, answer.locator("audio.reply-audio"), timeout=120_000)
        await page.screenshot(path=screenshot_path("web-page-offline.png"))
        visit.assert_all_local()
    finally:
        await runner.cleanup()
        await bot.aclose()
