"""The local web chat page: the original notebook's interface, served by the bot itself.

    voicebot web [--host 127.0.0.1] [--port 7860]

Record or upload audio (or type), pick a speaker, "Process Audio"; the page shows the
transcript and the answer, plays the spoken reply and, with D-ID on, the avatar clip. "Clear"
is the core's ``/reset``. Like every adapter it only translates: an HTTP request becomes an
:class:`IncomingMessage` and the reply streams back to the page (:mod:`adapters.web_sink`).

A page of our own on aiohttp (already a dependency) with a few hundred lines of vanilla
JavaScript in ``adapters/web_static``; nothing is loaded from anywhere but this server.

HTTP API (the page's; JSON unless said):
    GET  /                      the page
    GET  /static/<name>         its script, style sheet and icon (a fixed list of files)
    GET  /api/state             bot name, speakers, settings, this session's history
    POST /api/turns             multipart: ``audio`` (a file) or ``text``; NDJSON events back
    GET  /api/clips/<turn>      waits for the turn's avatar clip: {"url": ...}, or 204
    POST /api/settings          {"speaker": name} and/or {"video": true|false}
    POST /api/clear             forget this session's conversation (/reset)
    GET  /media/<token>         a reply's audio or clip (this session's only; Range supported)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from adapters.web_guard import add_security_headers, chat_of, guard, is_loopback, refuse
from adapters.web_media import MediaShelf
from adapters.web_sink import PageSink
from bot.audio import sniff_format
from bot.errors import ConfigError
from bot.messages import Audio, IncomingMessage
from bot.runtime import VoiceBot
from bot.sink import SilentSink

log = logging.getLogger(__name__)

PLATFORM = "web"
LOCAL_VOICE = "local voice"
HISTORY_ON_PAGE = 200  # messages shown when the page opens
FORM_OVERHEAD = 64 * 1024  # multipart headers and the text field, on top of the audio limit
SHUTDOWN_SECONDS = 3.0  # how long a stopping server lets a running turn finish
CLIP_GRACE_SECONDS = 15.0  # waited for a clip beyond D-ID's own timeout

STATIC_DIR = Path(__file__).with_name("web_static")
STATIC_TYPES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


BOT = web.AppKey("bot", VoiceBot)
SHELF = web.AppKey("shelf", MediaShelf)
ASSETS = web.AppKey("assets", dict[str, Asset])


def load_assets() -> dict[str, Asset]:
    """The page's files, read once: only these names are ever served (no path from a URL)."""
    return {name: Asset((STATIC_DIR / name).read_bytes(), kind) for name, kind in STATIC_TYPES.items()}


def web_message(chat: str, *, text: str | None = None, audio: Audio | None = None) -> IncomingMessage:
    """A message from this browser session (its own chat, and its own user)."""
    return IncomingMessage(
        platform=PLATFORM, chat_id=chat, user_id=chat, message_id=uuid.uuid4().hex, text=text, audio=audio,
    )


def speaker_choices(bot: VoiceBot) -> list[str]:
    """The speakers the picker offers: the named ElevenLabs voices, the one local voice, or none."""
    tts = bot.providers.names.get("tts") if bot.providers.tts is not None else None
    if tts == "elevenlabs":
        return list(bot.settings.speakers)
    return [LOCAL_VOICE] if tts == "local" else []


def default_speaker(bot: VoiceBot, choices: list[str]) -> str | None:
    """The name of the configured default voice, else the first choice."""
    named = [name for name, voice in bot.settings.speakers.items() if voice == bot.settings.elevenlabs_voice_id]
    return next((name for name in named if name in choices), choices[0] if choices else None)


async def chat_key(request: web.Request) -> tuple[VoiceBot, str, int]:
    """The bot, this session's chat id, and that chat's id in storage."""
    bot = request.app[BOT]
    chat = chat_of(request)
    return bot, chat, await bot.store.chat_id(PLATFORM, chat)


# --- handlers --------------------------------------------------------------------------------


def asset_response(asset: Asset) -> web.Response:
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def index(request: web.Request) -> web.Response:
    return asset_response(request.app[ASSETS]["index.html"])


async def static(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    return asset_response(asset)


async def state(request: web.Request) -> web.Response:
    bot, _, pk = await chat_key(request)
    chat = await bot.store.chat_settings(pk)
    choices = speaker_choices(bot)
    history = await bot.store.recent_messages(pk, HISTORY_ON_PAGE)
    return web.json_response({
        "bot_name": bot.settings.bot_name,
        "speakers": choices,
        "speaker": chat.speaker if chat.speaker in choices else default_speaker(bot, choices),
        "voice": bot.providers.tts is not None,
        "avatar": bot.providers.avatar is not None,
        "video": bool(chat.video_enabled) and bot.providers.avatar is not None,
        "max_audio_bytes": bot.settings.max_audio_bytes,
        "max_text_chars": bot.settings.max_text_chars,
        "history": [{"role": m.role, "text": m.content} for m in history],
    })


async def read_turn(request: web.Request, chat: str) -> IncomingMessage | web.Response:
    """The posted form as a message, or the error response to send instead."""
    limit = request.app[BOT].settings.max_audio_bytes
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return refuse(413, f"That file is too large. The limit is {round(limit / 1e6, 1):g} MB.")
    upload = form.get("audio")
    if isinstance(upload, web.FileField):
        data = await asyncio.to_thread(upload.file.read)  # a temporary file for large uploads
        return web_message(chat, audio=Audio(data=data, format=sniff_format(data) or "unknown"))
    text = form.get("text")
    if isinstance(text, str) and text.strip():
        return web_message(chat, text=text.strip())
    return refuse(400, "Record, upload or type something first.")


async def turn(request: web.Request) -> web.StreamResponse:
    """One turn: the reply streams back as NDJSON events while the bot works."""
    bot, chat, pk = await chat_key(request)
    message = await read_turn(request, chat)
    if isinstance(message, web.Response):
        return message
    clip_expected = bot.providers.avatar is not None and bool((await bot.store.chat_settings(pk)).video_enabled)
    # Not "no-store": Chromium then reports a fully read streamed fetch as aborted
    # (microsoft/playwright#42742); a POST's answer is never cached anyway.
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    await response.prepare(request)
    sink = PageSink(response, request.app[SHELF], chat=chat, turn=message.message_id,
                    streams_text=bot.settings.stream_text, clip_expected=clip_expected)
    outcome = await bot.handle(message, sink)
    await sink.send({"type": "done", "outcome": outcome.value})
    sink.close()
    with contextlib.suppress(ConnectionResetError):  # the page left; its answer is in the history
        await response.write_eof()
    return response


async def clip(request: web.Request) -> web.Response:
    """Wait for a turn's avatar clip (rendered after the reply): its URL, or 204 if none came."""
    bot = request.app[BOT]
    timeout = bot.settings.did_timeout + CLIP_GRACE_SECONDS
    token = await request.app[SHELF].wait_clip(chat_of(request), request.match_info["turn"], timeout)
    if token is None:
        return web.Response(status=204)
    return web.json_response({"url": f"/media/{token}"})


async def change_settings(request: web.Request) -> web.Response:
    """The speaker picker and the avatar switch, through the core's /voice and /video commands.

    Called directly rather than sent as chat messages: moving a control is not a message to
    answer, so it is neither in the history nor counted by the rate limit.
    """
    bot, chat, pk = await chat_key(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return refuse(400, "Send a JSON object.")
    message = web_message(chat)
    answers = []
    speaker = body.get("speaker")
    if speaker is not None:
        if not isinstance(speaker, str) or speaker not in speaker_choices(bot):
            return refuse(400, "Unknown speaker.")
        if speaker != LOCAL_VOICE:
            answers.append(await bot.commands.run(message, pk, "voice", speaker))
    video = body.get("video")
    if video is not None:
        if not isinstance(video, bool):
            return refuse(400, "video is true or false.")
        answers.append(await bot.commands.run(message, pk, "video", "on" if video else "off"))
    return web.json_response({"text": "\n".join(answers)})


async def clear(request: web.Request) -> web.Response:
    """"Clear": the core's /reset for this session's chat."""
    bot, chat, pk = await chat_key(request)
    sink = SilentSink()
    await bot.handle(web_message(chat, text="/reset"), sink)
    cleared = await bot.store.count_messages(pk) == 0
    return web.json_response({"cleared": cleared, "text": sink.replies[-1].text if sink.replies else ""})


async def media(request: web.Request) -> web.Response:
    """A reply's audio or clip, for this session only; answers byte ranges (video seeking needs them)."""
    item = request.app[SHELF].get(chat_of(request), request.match_info["token"])
    if item is None:
        return refuse(404, "That recording is no longer kept. New replies play as usual.")
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    if "Range" not in request.headers:
        return web.Response(body=item.data, content_type=item.mime_type, headers=headers)
    size = len(item.data)
    try:
        start, stop, _ = request.http_range.indices(size)
    except ValueError:
        start, stop = size, size
    if start >= stop:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return web.Response(status=206, body=item.data[start:stop], content_type=item.mime_type, headers=headers)


# --- the server ------------------------------------------------------------------------------


async def release_waiters(app: web.Application) -> None:
    """On shutdown: answer the pages still waiting for a clip, so stopping takes no time."""
    app[SHELF].close()


def create_app(bot: VoiceBot) -> web.Application:
    """The page's application for ``bot`` (bound to ``bot.settings.web_host`` by :func:`serve`)."""
    app = web.Application(
        middlewares=[guard(loopback_only=is_loopback(bot.settings.web_host))],
        client_max_size=bot.settings.max_audio_bytes + FORM_OVERHEAD,
    )
    app[BOT] = bot
    app[SHELF] = MediaShelf()
    app[ASSETS] = load_assets()
    app.on_response_prepare.append(add_security_headers)
    app.on_shutdown.append(release_waiters)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/state", state)
    app.router.add_post("/api/turns", turn)
    app.router.add_get("/api/clips/{turn}", clip)
    app.router.add_post("/api/settings", change_settings)
    app.router.add_post("/api/clear", clear)
    app.router.add_get("/media/{token}", media)
    return app


def page_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def start_site(bot: VoiceBot) -> tuple[web.AppRunner, str]:
    """Start listening; returns the runner (``cleanup()`` stops it) and the page's URL.

    A port of 0 picks a free one (the URL has the real port).
    """
    settings = bot.settings
    runner = web.AppRunner(create_app(bot), access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    except OSError as error:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {settings.web_host}:{settings.web_port} ({error.strerror or error}); "
            "choose another port with --port or WEB_PORT"
        ) from error
    host, port = runner.addresses[0][:2]
    if not is_loopback(settings.web_host):
        log.warning("the web page listens on %s: anyone who can reach it can talk to the bot", settings.web_host)
    return runner, page_url(host, port)


async def serve(bot: VoiceBot, stop: asyncio.Event) -> None:
    """Serve the page until ``stop`` is set, then close within a few seconds."""
    runner, url = await start_site(bot)
    log.info("web chat: open %s in a browser", url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
