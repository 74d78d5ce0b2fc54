"""The local chat in a terminal: text lines, and ``/audio PATH`` to send a voice file.

Also the one-shot ``voicebot ask``. Like every adapter it only translates: lines and files
become :class:`IncomingMessage`, replies are printed (and voice notes saved to files).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from bot.audio import sniff_format
from bot.messages import Audio, IncomingMessage, Reply, Stage, Video
from bot.runtime import VoiceBot

PLATFORM = "local"


def read_audio(path: Path) -> Audio:
    """An audio file as the core's Audio; the format from its bytes, else its extension."""
    data = path.read_bytes()
    return Audio(data=data, format=sniff_format(data) or path.suffix.lstrip(".").lower() or "ogg")


def new_message(chat: str, *, text: str | None = None, audio: Audio | None = None) -> IncomingMessage:
    return IncomingMessage(
        platform=PLATFORM, chat_id=chat, user_id="local-user", message_id=uuid.uuid4().hex,
        text=text, audio=audio, user_name="you",
    )


class CollectingSink:
    """Keeps the reply for the caller; optionally prints progress to stderr."""

    streams_text = False

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.replies: list[Reply] = []
        self.videos: list[Video] = []

    async def stage(self, stage: Stage) -> None:
        if self.verbose:
            print(f"  ... {stage.value}", file=sys.stderr)

    async def text_delta(self, text_so_far: str) -> None:  # not streamed here
        return None

    async def deliver(self, reply: Reply) -> None:
        self.replies.append(reply)

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        self.videos.append(video)


def describe(reply: Reply, voice_path: Path | None) -> str:
    lines = []
    if reply.transcript:
        lines.append(f"You said: {reply.transcript}")
    lines.append(f"Bot: {reply.text}")
    if reply.voice is not None:
        where = f" -> {voice_path}" if voice_path else ""
        lines.append(f"[voice note {reply.voice.duration:.1f} s{where}]")
    return "\n".join(lines)


async def chat_loop(bot: VoiceBot, chat: str) -> None:
    """Interactive terminal chat until EOF or /quit."""
    out_dir = Path(tempfile.mkdtemp(prefix="voicebot-"))
    print(f"{bot.settings.bot_name}: type a message, /audio PATH to send a voice file, /quit to leave.")
    loop = asyncio.get_running_loop()
    turn = 0
    while True:
        try:
            line = await loop.run_in_executor(None, input, "> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line.startswith("/audio"):
            path = Path(line.removeprefix("/audio").strip()).expanduser()
            if not path.is_file():
                print(f"No such file: {path}")
                continue
            message = new_message(chat, audio=read_audio(path))
        else:
            message = new_message(chat, text=line)
        sink = CollectingSink(verbose=True)
        await bot.handle(message, sink)
        for reply in sink.replies:
            turn += 1
            voice_path = None
            if reply.voice is not None:
                voice_path = out_dir / f"reply-{turn}.ogg"
                voice_path.write_bytes(reply.voice.data)
            print(describe(reply, voice_path))
