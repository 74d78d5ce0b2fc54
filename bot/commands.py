"""Chat commands, platform-free: ``/reset``, ``/voice``, ``/persona``, ``/video``, ``/transcript``,
``/stats``, ``/start``, ``/help``.

Adapters pass the command as text (Discord's slash commands become the same text), so every
platform gets the same behaviour. In groups, commands that change settings need an admin
(the adapter says whether the sender is one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.config import Settings
from bot.messages import IncomingMessage
from storage.store import HistoryStore

MAX_PERSONA_CHARS = 2000


@dataclass(frozen=True, slots=True)
class CommandInput:
    message: IncomingMessage
    chat_id: int
    argument: str


Handler = Callable[[CommandInput], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    handler: Handler
    changes_settings: bool = False


def parse_command(text: str) -> tuple[str, str] | None:
    """``"/voice@MyBot on"`` -> ``("voice", "on")``; None when ``text`` is not a command."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2 or stripped[1].isspace():
        return None
    head, *rest = stripped[1:].split(maxsplit=1)  # "/persona\nYou are..." is a command too
    argument = rest[0] if rest else ""
    name = head.split("@", 1)[0].casefold()
    if not name or not all(c.isalnum() or c == "_" for c in name):
        return None
    return name, argument.strip()


def _on_off(argument: str) -> bool | None:
    value = argument.casefold()
    if value in ("on", "yes", "true", "1", "enable"):
        return True
    if value in ("off", "no", "false", "0", "disable"):
        return False
    return None


class Commands:
    def __init__(self, settings: Settings, store: HistoryStore, *, has_avatar: bool, has_voice: bool) -> None:
        self.settings = settings
        self.store = store
        self.has_avatar = has_avatar
        self.has_voice = has_voice
        self.table: dict[str, Command] = {
            c.name: c
            for c in (
                Command("start", "say hello", self._start),
                Command("help", "what I can do", self._help),
                Command("reset", "forget this chat's conversation", self._reset, changes_settings=True),
                Command("voice", "on | off | <speaker>: voice replies and the speaker", self._voice, True),
                Command("persona", "<prompt> | reset: this chat's system prompt", self._persona, True),
                Command("video", "on | off: talking-avatar clips", self._video, True),
                Command("transcript", "on | off: show what I heard", self._transcript, True),
                Command("stats", "your usage", self._stats),
            )
        }

    def menu(self) -> list[tuple[str, str]]:
        """(name, description) pairs for a platform's command menu."""
        return [(c.name, c.help) for c in self.table.values()]

    async def run(self, message: IncomingMessage, chat_id: int, name: str, argument: str) -> str:
        command = self.table.get(name)
        if command is None:
            return f"I don't know /{name[:32]}. Send /help for the commands."
        if command.changes_settings and message.is_group and not message.sender_is_admin:
            return f"Only group admins can use /{name} here."
        return await command.handler(CommandInput(message, chat_id, argument))

    # --- handlers ----------------------------------------------------------------------------

    async def _start(self, cmd: CommandInput) -> str:
        name = self.settings.bot_name
        how = (
            f"In groups, mention me, reply to me, or say \"{name}\" in a voice note."
            if cmd.message.is_group
            else "Send me a voice note or a message."
        )
        return f"Hi! I'm {name}. {how} I answer with text and a voice note. /help lists the commands."

    async def _help(self, cmd: CommandInput) -> str:
        lines = [f"/{c.name} - {c.help}" for c in self.table.values()]
        return "Commands:\n" + "\n".join(lines)

    async def _reset(self, cmd: CommandInput) -> str:
        removed = await self.store.clear_history(cmd.chat_id)
        return f"Done: I forgot this conversation ({removed} messages)."

    async def _voice(self, cmd: CommandInput) -> str:
        argument = cmd.argument
        speakers = ", ".join(self.settings.speakers) or "none configured"
        if not argument:
            chat = await self.store.chat_settings(cmd.chat_id)
            enabled = self.settings.voice_replies if chat.voice_enabled is None else chat.voice_enabled
            speaker = chat.speaker or "default"
            return (f"Voice replies are {'on' if enabled else 'off'}; speaker: {speaker}.\n"
                    f"Use /voice on, /voice off or /voice <speaker> ({speakers}).")
        switch = _on_off(argument)
        if switch is not None:
            if switch and not self.has_voice:
                return "Voice replies are not available: no text-to-speech provider is configured."
            await self.store.update_chat_settings(cmd.chat_id, voice_enabled=switch)
            return f"Voice replies {'on' if switch else 'off'}."
        speaker = argument.split()[0]
        if speaker not in self.settings.speakers:
            return f"Unknown speaker {speaker[:40]!r}. Speakers: {speakers}."
        await self.store.update_chat_settings(cmd.chat_id, speaker=speaker, voice_enabled=True)
        return f"I'll speak as {speaker} now."

    async def _persona(self, cmd: CommandInput) -> str:
        argument = cmd.argument
        if not argument:
            chat = await self.store.chat_settings(cmd.chat_id)
            current = chat.persona or self.settings.resolved_system_prompt
            origin = "this chat's" if chat.persona else "the default"
            return f"Using {origin} persona:\n{current}\n\nChange it with /persona <prompt>, or /persona reset."
        if argument.casefold() == "reset":
            await self.store.update_chat_settings(cmd.chat_id, persona=None)
            return "Persona reset to the default."
        if len(argument) > MAX_PERSONA_CHARS:
            return f"That persona is too long; keep it under {MAX_PERSONA_CHARS} characters."
        await self.store.update_chat_settings(cmd.chat_id, persona=argument)
        return "Persona set for this chat."

    async def _toggle(self, cmd: CommandInput, field: str, label: str) -> str:
        switch = _on_off(cmd.argument)
        if switch is None:
            return f"Use /{field.split('_')[0]} on or /{field.split('_')[0]} off."
        await self.store.update_chat_settings(cmd.chat_id, **{field: switch})
        return f"{label} {'on' if switch else 'off'}."

    async def _video(self, cmd: CommandInput) -> str:
        if not self.has_avatar and _on_off(cmd.argument):
            return "Avatar videos are not available: set DID_API_KEY to enable D-ID."
        return await self._toggle(cmd, "video_enabled", "Avatar videos")

    async def _transcript(self, cmd: CommandInput) -> str:
        return await self._toggle(cmd, "transcript_enabled", "Transcripts")

    async def _stats(self, cmd: CommandInput) -> str:
        message = cmd.message
        today = dt.datetime.now(dt.UTC).date()
        day = await self.store.usage(message.platform, message.user_id, since=today)
        total = await self.store.usage(message.platform, message.user_id)
        return (
            "Your usage today / all time:\n"
            f"turns: {day.turns} / {total.turns}\n"
            f"audio heard: {day.audio_seconds:.0f} s / {total.audio_seconds:.0f} s\n"
            f"tokens: {day.tokens} / {total.tokens}\n"
            f"characters spoken: {day.tts_chars} / {total.tts_chars}"
        )
