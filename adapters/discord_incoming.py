"""Discord message -> :class:`IncomingMessage`: who, where, what was said, and was the bot addressed.

Only translation lives here; whether to answer is the core's decision (it sees ``mentioned``,
``replied_to_bot`` and ``always_answer``, and transcribes voice to look for the bot's name).
Audio comes from a voice message (flag ``IS_VOICE_MESSAGE``) or an ``audio/*`` attachment and is
handed over undownloaded, with its declared size and length: the core checks those first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from bot.messages import Audio, ChatKind, IncomingMessage

PLATFORM = "discord"
_AUDIO_EXTENSIONS = frozenset({"ogg", "oga", "opus", "mp3", "wav", "m4a", "flac", "webm"})
_FORMATS_BY_TYPE = {
    "audio/ogg": "ogg", "audio/opus": "ogg", "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav",
    "audio/x-wav": "wav", "audio/wave": "wav", "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/aac": "m4a",
    "audio/webm": "webm", "audio/flac": "flac", "audio/x-flac": "flac",
}
_ANSWERED_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


@dataclass(frozen=True, slots=True)
class Addressing:
    """How a message reached the bot, decided from Discord's own data."""

    mentioned: bool
    replied_to_bot: bool


def is_from_a_person(message: discord.Message) -> bool:
    """Ordinary messages by people: never the bot itself, other bots, webhooks or system notices."""
    return not message.author.bot and message.webhook_id is None and message.type in _ANSWERED_TYPES


def audio_attachment(message: discord.Message) -> discord.Attachment | None:
    """The voice message's attachment, else the first ``audio/*`` (or audio-named) attachment."""
    for attachment in message.attachments:
        if attachment.is_voice_message() or message.flags.voice:  # IS_VOICE_MESSAGE, 1 << 13
            return attachment
    for attachment in message.attachments:
        kind = (attachment.content_type or "").split(";")[0].strip()
        extension = attachment.filename.rsplit(".", 1)[-1].lower() if "." in attachment.filename else ""
        if kind.startswith("audio/") or (not kind and extension in _AUDIO_EXTENSIONS):
            return attachment
    return None


def audio_of(attachment: discord.Attachment) -> Audio:
    """The core's :class:`Audio` for an attachment, not downloaded yet.

    Discord declares the size (and a voice message its length) up front, so the core refuses
    what is over its limits before fetching, and fetches the rest once.
    """
    return Audio(
        format=audio_format(attachment),
        declared_seconds=attachment.duration,
        declared_bytes=attachment.size,
        fetch=attachment.read,
    )


def audio_format(attachment: discord.Attachment) -> str:
    """The container, from the content type, else the file name; voice messages are OGG/Opus."""
    if attachment.is_voice_message():
        return "ogg"
    kind = (attachment.content_type or "").split(";")[0].strip().lower()
    if kind in _FORMATS_BY_TYPE:
        return _FORMATS_BY_TYPE[kind]
    extension = attachment.filename.rsplit(".", 1)[-1].lower() if "." in attachment.filename else ""
    return {"oga": "ogg", "opus": "ogg"}.get(extension, extension) or "ogg"


def addressing(message: discord.Message, me: discord.ClientUser) -> Addressing:
    """Was the bot mentioned (itself or its managed role), or is this a reply to one of its messages?"""
    mentioned = any(user.id == me.id for user in message.mentions)
    if not mentioned and message.guild is not None and message.guild.self_role is not None:
        mentioned = message.guild.self_role in message.role_mentions
    replied = False
    reference = message.reference
    if reference is not None:
        resolved = reference.resolved or reference.cached_message
        replied = isinstance(resolved, discord.Message) and resolved.author.id == me.id
    return Addressing(mentioned, replied)


def readable_text(message: discord.Message, me: discord.ClientUser) -> str:
    """The message text with the bot's mention removed and other mentions shown as names."""
    names = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role.name for role in message.role_mentions}
    own_role = message.guild.self_role if message.guild is not None else None

    def user(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        return "" if user_id == me.id else "@" + names.get(user_id, "someone")

    def role(match: re.Match[str]) -> str:
        role_id = int(match.group(1))
        return "" if own_role is not None and role_id == own_role.id else "@" + roles.get(role_id, "role")

    text = _ROLE_MENTION.sub(role, _USER_MENTION.sub(user, message.content))
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def sender_is_admin(message: discord.Message) -> bool:
    """Manage Server in this server (DMs have no admins: the settings are the user's own)."""
    author = message.author
    return isinstance(author, discord.Member) and author.guild_permissions.manage_guild


def to_incoming(
    message: discord.Message,
    me: discord.ClientUser,
    *,
    audio: Audio | None,
    bot_channel: bool,
) -> IncomingMessage:
    """Translate a Discord message (its audio already read) into the core's message."""
    how = addressing(message, me)
    text = readable_text(message, me) if audio is None else None
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=str(message.channel.id),
        user_id=str(message.author.id),
        message_id=str(message.id),
        text=text,
        audio=audio,
        kind=ChatKind.GROUP if message.guild is not None else ChatKind.PRIVATE,
        mentioned=how.mentioned,
        replied_to_bot=how.replied_to_bot,
        user_name=message.author.display_name,
        always_answer=bot_channel,
        sender_is_admin=sender_is_admin(message),
    )
