"""Slash commands: the core's commands (``/reset``, ``/voice``, ``/persona``, ``/video``,
``/transcript``, ``/stats``) plus Discord's own ``/channel``, ``/join`` and ``/leave``.

A core command becomes the same text a Telegram user would type (``/voice on``), with the
interaction id as the message id, and is answered through the interaction: deferred first
(Discord wants an acknowledgement within 3 s, and the channel may be busy with a turn), then a
follow-up. Settings changes need Manage Server in servers; queries and ``/stats`` are ephemeral.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord_incoming import PLATFORM
from adapters.discord_replies import InteractionSink, send_to_interaction
from bot.messages import ChatKind, IncomingMessage

if TYPE_CHECKING:
    from adapters.discord_bot import Conversation

log = logging.getLogger(__name__)

OnOff = Literal["on", "off"]


def is_admin(interaction: discord.Interaction) -> bool:
    """Manage Server in a server; anyone in a DM (the settings are their own)."""
    return interaction.guild_id is None or interaction.permissions.manage_guild


def command_message(interaction: discord.Interaction, text: str) -> IncomingMessage:
    """The core's message for a slash command typed as ``text``."""
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=str(interaction.channel_id),
        user_id=str(interaction.user.id),
        message_id=str(interaction.id),
        text=text,
        kind=ChatKind.GROUP if interaction.guild_id is not None else ChatKind.PRIVATE,
        user_name=interaction.user.display_name,
        always_answer=True,
        sender_is_admin=is_admin(interaction),
    )


class SlashCommands(commands.Cog):
    """The bot's application commands; they are synced with Discord when the bot starts."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    async def run_core_command(self, interaction: discord.Interaction, name: str, argument: str = "") -> None:
        """Pass ``/name argument`` to the core and answer with what it says."""
        if not self.conversation.allows_guild(interaction.guild_id):
            await send_to_interaction(interaction, "This bot is not available in this server.", ephemeral=True)
            return
        command = self.conversation.voicebot.commands.table.get(name)
        changes = command is not None and command.changes_settings and (bool(argument) or name == "reset")
        refused = changes and not is_admin(interaction)
        ephemeral = refused or not changes
        await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        message = command_message(interaction, f"/{name} {argument}".strip())
        sink = InteractionSink(interaction, ephemeral=ephemeral)
        try:
            await self.conversation.run_turn(interaction.channel_id or 0, message, sink)
        finally:
            await sink.close()

    @app_commands.command(name="reset", description="Forget this channel's conversation")
    async def reset(self, interaction: discord.Interaction) -> None:
        await self.run_core_command(interaction, "reset")

    @app_commands.command(name="voice", description="Voice replies: on, off, or a speaker's name")
    @app_commands.describe(setting="on, off, or a speaker (empty: show the current setting)")
    async def voice(self, interaction: discord.Interaction, setting: str = "") -> None:
        await self.run_core_command(interaction, "voice", setting)

    @app_commands.command(name="persona", description="This channel's system prompt")
    @app_commands.describe(prompt="the new prompt, or 'reset' (empty: show the current one)")
    async def persona(self, interaction: discord.Interaction, prompt: str = "") -> None:
        await self.run_core_command(interaction, "persona", prompt)

    @app_commands.command(name="video", description="Talking-avatar clips with replies")
    async def video(self, interaction: discord.Interaction, setting: OnOff) -> None:
        await self.run_core_command(interaction, "video", setting)

    @app_commands.command(name="transcript", description="Show what I heard in voice messages")
    async def transcript(self, interaction: discord.Interaction, setting: OnOff) -> None:
        await self.run_core_command(interaction, "transcript", setting)

    @app_commands.command(name="stats", description="Your usage")
    async def stats(self, interaction: discord.Interaction) -> None:
        await self.run_core_command(interaction, "stats")

    @app_commands.command(name="channel", description="Answer every message in this channel, or stop")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def channel(self, interaction: discord.Interaction, mode: Literal["here", "off"]) -> None:
        if not is_admin(interaction):
            await send_to_interaction(interaction, "Only members with Manage Server can use /channel.", ephemeral=True)
            return
        channel_id = interaction.channel_id or 0
        await self.conversation.bot_channels.set(channel_id, mode == "here")
        text = ("I'll answer every message in this channel now." if mode == "here"
                else "I'll answer here only when mentioned or replied to.")
        await send_to_interaction(interaction, text, ephemeral=False)

    @app_commands.command(name="join", description="Speak my replies in your voice channel")
    @app_commands.guild_only()
    async def join(self, interaction: discord.Interaction) -> None:
        if not isinstance(interaction.user, discord.Member) or not self.conversation.allows_guild(interaction.guild_id):
            await send_to_interaction(interaction, "This works in servers only.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        text = await self.conversation.voice.join(interaction.user, interaction.channel_id or 0)
        await send_to_interaction(interaction, text, ephemeral=False)

    @app_commands.command(name="leave", description="Leave the voice channel")
    @app_commands.guild_only()
    async def leave(self, interaction: discord.Interaction) -> None:
        if interaction.guild is None:
            await send_to_interaction(interaction, "This works in servers only.", ephemeral=True)
            return
        await send_to_interaction(interaction, await self.conversation.voice.leave(interaction.guild), ephemeral=False)
