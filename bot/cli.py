"""The ``voicebot`` command.

    voicebot ask --text "..." | --audio FILE [--voice-out reply.ogg] [--chat ID] [--json]
    voicebot chat                 interactive terminal chat
    voicebot telegram [--workers N] | discord   run a platform adapter
    voicebot web                  the local web chat page
    voicebot run                  what `make run` does: the configured platforms, else the local chat
    voicebot db upgrade|current   database migrations

Platform adapters are imported only by the commands that run them, so the core stays free of
platform libraries. Errors a user can fix end the command with one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.config import Settings
from bot.errors import ConfigError, VoicebotError
from bot.logs import configure_logging
from bot.runtime import VoiceBot, freeze_startup_heap

log = logging.getLogger("voicebot")

Server = Callable[[VoiceBot, asyncio.Event], Awaitable[None]]


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


# --- commands ------------------------------------------------------------------------------


async def cmd_ask(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.terminal import CollectingSink, describe, new_message, read_audio

    if bool(args.text) == bool(args.audio):
        raise UsageError("give exactly one of --text or --audio")
    audio = None
    if args.audio:
        path = Path(args.audio)
        if not path.is_file():
            raise UsageError(f"no such audio file: {path}")
        audio = read_audio(path)
    bot = await VoiceBot.create(settings)
    try:
        sink = CollectingSink()
        await bot.handle(new_message(args.chat, text=args.text, audio=audio), sink)
        await bot.pipeline.drain(timeout=settings.did_timeout)
    finally:
        await bot.aclose()
    if not sink.replies:
        raise UsageError("the bot did not answer (was the message empty?)")
    reply = sink.replies[-1]
    voice_path = Path(args.voice_out) if args.voice_out and reply.voice is not None else None
    if voice_path is not None:
        voice_path.write_bytes(reply.voice.data)
    if args.video_out and sink.videos:
        Path(args.video_out).write_bytes(sink.videos[-1].data)
    if args.json:
        print(json.dumps({
            "kind": reply.kind.value,
            "transcript": reply.transcript,
            "language": reply.language,
            "reply": reply.text,
            "voice_seconds": reply.voice.duration if reply.voice else None,
            "voice_out": str(voice_path) if voice_path else None,
            "video": bool(sink.videos),
        }, ensure_ascii=False))
    else:
        print(describe(reply, voice_path))
    return 0 if reply.kind.value == "answer" else 1


async def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.terminal import chat_loop

    bot = await VoiceBot.create(settings)
    freeze_startup_heap()
    try:
        await chat_loop(bot, args.chat)
    finally:
        await bot.aclose()
    return 0


def _server(module: str, attribute: str = "serve") -> Server:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{module} is not available in this installation")
    return getattr(importlib.import_module(module), attribute)


async def serve_until_stopped(settings: Settings, servers: list[Server]) -> int:
    """Run adapters on one VoiceBot until SIGINT/SIGTERM, then shut down within seconds."""
    bot = await VoiceBot.create(settings)
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        tasks = [asyncio.create_task(server(bot, stop)) for server in servers]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        await bot.aclose()
    return 0


async def cmd_platform(settings: Settings, args: argparse.Namespace) -> int:
    modules = {"telegram": "adapters.telegram_bot", "discord": "adapters.discord_bot", "web": "adapters.web"}
    if args.command == "web":
        settings = settings.model_copy(update={"web_host": args.host or settings.web_host,
                                               "web_port": args.port or settings.web_port})
    if args.command == "telegram":
        if args.workers is not None and args.workers < 1:
            raise UsageError("--workers must be 1 or more")
        workers = args.workers or settings.telegram_webhook_workers
        if workers > 1:  # a supervisor of N webhook worker processes (adapters/workers.py)
            supervise = _server("adapters.workers", "supervise")
            return await supervise(settings, workers, log_level=args.log_level)
    return await serve_until_stopped(settings, [_server(modules[args.command])])


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    servers: list[Server] = []
    if settings.telegram_bot_token is not None:
        servers.append(_server("adapters.telegram_bot"))
        if settings.telegram_webhook_workers > 1:
            log.warning("TELEGRAM_WEBHOOK_WORKERS is for `voicebot telegram`; `voicebot run` is one process")
    if settings.discord_bot_token is not None:
        servers.append(_server("adapters.discord_bot"))
    if servers:
        return await serve_until_stopped(settings, servers)
    if importlib.util.find_spec("adapters.web") is not None:
        print(f"No platform token set: starting the local web chat on http://{settings.web_host}:{settings.web_port}",
              file=sys.stderr)
        return await serve_until_stopped(settings, [_server("adapters.web")])
    print("No platform token set: starting the terminal chat.", file=sys.stderr)
    return await cmd_chat(settings, args)


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from storage.migrate import current_revision, head_revision
    from storage.store import HistoryStore

    store = HistoryStore.from_url(settings.database_url)
    try:
        if args.action == "upgrade":
            await store.migrate()
            print(f"database {store.url} is at revision {await current_revision(store.engine)}")
        else:
            current = await current_revision(store.engine)
            print(f"database {store.url}: revision {current or 'none'} (newest: {head_revision()})")
    finally:
        await store.aclose()
    return 0


# --- parsing ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="A voice chat bot: speech in, speech out.")
    parser.add_argument("--log-level", help="override LOG_LEVEL (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="run one turn through the whole pipeline and print the reply")
    ask.add_argument("--text", help="what to say")
    ask.add_argument("--audio", help="an audio file to send as a voice note (OGG/Opus, WAV, MP3, ...)")
    ask.add_argument("--voice-out", help="write the spoken reply (OGG/Opus) here")
    ask.add_argument("--video-out", help="write the avatar clip (mp4) here, when the avatar is on")
    ask.add_argument("--chat", default="cli", help="chat id: turns with the same id share history")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ask.set_defaults(handler=cmd_ask)

    chat = sub.add_parser("chat", help="interactive terminal chat (/audio PATH sends a voice file)")
    chat.add_argument("--chat", default="terminal", help="chat id: history is kept per id")
    chat.set_defaults(handler=cmd_chat)

    telegram = sub.add_parser("telegram", help="run the Telegram bot")
    telegram.add_argument("--workers", type=int, metavar="N",
                          help="webhook mode: N worker processes on one port (default TELEGRAM_WEBHOOK_WORKERS, 1)")
    telegram.set_defaults(handler=cmd_platform)
    sub.add_parser("discord", help="run the Discord bot").set_defaults(handler=cmd_platform)
    web = sub.add_parser("web", help="serve the local web chat page")
    web.add_argument("--host", help="listen address (default 127.0.0.1)")
    web.add_argument("--port", type=int, help="listen port (default 7860)")
    web.set_defaults(handler=cmd_platform)

    run = sub.add_parser("run", help="the configured platforms, else the local chat (what `make run` does)")
    run.add_argument("--chat", default="terminal", help=argparse.SUPPRESS)
    run.set_defaults(handler=cmd_run)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(handler=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's validation error: say which variable
        print(f"voicebot: invalid configuration: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    quiet = args.command == "ask" and not args.log_level
    configure_logging(settings, args.log_level or ("WARNING" if quiet else None))
    try:
        return asyncio.run(args.handler(settings, args))
    except (UsageError, ConfigError) as exc:
        print(f"voicebot: {exc}", file=sys.stderr)
        return 2
    except VoicebotError as exc:
        print(f"voicebot: {exc.user_message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
