"""``voicebot discord``: the Discord bot on discord.py 2.7, built on the core.

The adapter only translates. :class:`Conversation` turns each person's message into an
:class:`IncomingMessage` and hands it to the core with a :class:`ChannelSink`; slash commands
(:mod:`adapters.discord_commands`) become the core's command text; voice channels are
:mod:`adapters.discord_voice`. Channels are handled concurrently, one channel in order: each
message gets its own task, and a per-channel lock keeps a channel's messages in arrival order
(the core's ledger answers a message id once; it fetches audio after its own checks).

``DISCORD_API_BASE_URL`` and ``DISCORD_GATEWAY_URL`` point discord.py elsewhere (tests, proxies).
``DISCORD_SHARDS`` (``auto`` or a number) runs discord.py's :class:`~discord.ext.commands.AutoShardedBot`
instead: several gateway connections, each for part of the servers; ``DISCORD_SHARD_IDS`` splits
them between processes. A channel's events all come through one shard, so its order holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

import discord
import yarl
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord_commands import SlashCommands
from adapters.discord_incoming import PLATFORM, audio_attachment, audio_of, is_from_a_person, to_incoming
from adapters.discord_replies import ChannelSink
from adapters.discord_voice import VoiceChannels
from bot.config import Settings
from bot.errors import ConfigError
from bot.messages import IncomingMessage
from bot.pipeline import Outcome
from bot.ordering import ChatLocks
from bot.runtime import VoiceBot
from bot.sink import ReplySink
from storage.store import HistoryStore

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()  # replies never ping anyone, whatever the LLM wrote
SHUTDOWN_GRACE = 2.0  # seconds in-flight turns get to finish after a stop
INTENT_HELP = (
    "Discord closed the connection with code 4014: the bot asks for the Message Content intent, "
    "which is not enabled for this application. Open https://discord.com/developers/applications, "
    "pick the application, go to Bot -> Privileged Gateway Intents, turn on MESSAGE CONTENT INTENT, "
    "save, and start the bot again."
)


def point_at_endpoints(settings: Settings) -> None:
    """Send discord.py's REST calls and gateway connection where the settings say."""
    Route.BASE = settings.discord_api_base_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def bot_intents() -> discord.Intents:
    """Default intents (servers, messages, DMs, voice states) plus message content (privileged)."""
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


class BotChannels:
    """Channels set with ``/channel here``, where the bot answers everything.

    Kept in each channel's chat settings (``extra["bot_channel"]``) and cached in memory.
    """

    KEY = "bot_channel"

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._known: dict[int, bool] = {}

    async def contains(self, channel_id: int) -> bool:
        if channel_id not in self._known:
            chat = await self.store.chat_settings(await self.store.chat_id(PLATFORM, str(channel_id)))
            self._known[channel_id] = bool(chat.extra.get(self.KEY))
        return self._known[channel_id]

    async def includes(self, channel: discord.abc.Messageable) -> bool:
        """A bot channel, or a thread inside one."""
        if await self.contains(channel.id):  # type: ignore[attr-defined]
            return True
        parent_id = getattr(channel, "parent_id", None)
        return parent_id is not None and await self.contains(parent_id)

    async def set(self, channel_id: int, on: bool) -> None:
        chat_id = await self.store.chat_id(PLATFORM, str(channel_id))
        extra = dict((await self.store.chat_settings(chat_id)).extra)
        extra[self.KEY] = on
        await self.store.update_chat_settings(chat_id, extra=extra)
        self._known[channel_id] = on


class Conversation(commands.Cog):
    """People's messages in, the core's replies out; one task per message, one channel in order."""

    def __init__(self, client: commands.Bot, voicebot: VoiceBot, voice: VoiceChannels) -> None:
        self.client = client
        self.voicebot = voicebot
        self.voice = voice
        self.bot_channels = BotChannels(voicebot.store)
        self.order = ChatLocks()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = True
        allowed = voicebot.settings.allowed_guild_ids
        self.allowed_guilds = frozenset(int(g) for g in allowed if g.isdigit())

    def allows_guild(self, guild_id: int | None) -> bool:
        """DMs always; servers when ``ALLOWED_GUILD_IDS`` is empty or lists them."""
        return guild_id is None or not self.allowed_guilds or guild_id in self.allowed_guilds

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self.accepting or not is_from_a_person(message):
            return
        if not self.allows_guild(message.guild.id if message.guild else None):
            return
        if not message.content and not message.attachments:
            return
        task = asyncio.create_task(self._answer(message), name=f"discord-message-{message.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @commands.Cog.listener()
    async def on_voice_state_update(self, member: discord.Member, before: discord.VoiceState,
                                    after: discord.VoiceState) -> None:
        await self.voice.on_voice_state_update(member, before, after)

    async def _answer(self, message: discord.Message) -> None:
        """Translate (downloading audio) and run the turn, in this channel's order."""
        try:
            async with self.order.hold(message.channel.id):
                await self._translate_and_handle(message)
        except Exception:  # noqa: BLE001 - the core answers its own errors; this is the adapter's
            log.exception("discord message %s in channel %s failed", message.id, message.channel.id)

    async def _translate_and_handle(self, message: discord.Message) -> None:
        """The message translated (its audio left for the core to fetch) and the core's turn run."""
        me = self.client.user
        assert me is not None
        attachment = audio_attachment(message)
        if attachment is None and not message.content:
            return
        bot_channel = message.guild is not None and await self.bot_channels.includes(message.channel)
        audio = audio_of(attachment) if attachment is not None else None
        incoming = to_incoming(message, me, audio=audio, bot_channel=bot_channel)
        speaker = None
        if message.guild is not None and self.voice.speaks_for(message.guild, message.channel.id, bot_channel):
            speaker = functools.partial(self.voice.speak, message.guild)
        addressed = not incoming.is_group or incoming.mentioned or incoming.replied_to_bot or bot_channel
        sink = ChannelSink(message, self.client.http, speaker, addressed=addressed)
        try:
            await self._handle(incoming, sink)
        finally:
            sink.close()

    async def _handle(self, incoming: IncomingMessage, sink: ReplySink) -> Outcome:
        outcome = await self.voicebot.handle(incoming, sink)
        log.debug("discord message %s: %s", incoming.message_id, outcome)
        return outcome

    async def run_turn(self, channel_id: int, incoming: IncomingMessage, sink: ReplySink) -> Outcome:
        """Run a turn that did not come from a message (a slash command) in the channel's order."""
        async with self.order.hold(channel_id):
            return await self._handle(incoming, sink)

    async def finish(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop taking messages; give in-flight turns ``grace`` seconds, then cancel them."""
        self.accepting = False
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class DiscordBot(commands.Bot):
    """discord.py's bot with our cogs; the slash commands are synced when it logs in.

    ``voice_client_class`` is what joining a voice channel builds; ``guild_ready_timeout`` is
    how long discord.py waits for more servers before ``on_ready`` (tests shorten it).
    """

    def __init__(
        self,
        voicebot: VoiceBot,
        *,
        voice_client_class: type[discord.VoiceProtocol] = discord.VoiceClient,
        guild_ready_timeout: float = 2.0,
        **options: Any,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=bot_intents(),
            allowed_mentions=NO_PINGS,
            guild_ready_timeout=guild_ready_timeout,
            help_command=None,
            **options,  # shard_count / shard_ids for ShardedDiscordBot
        )
        self.voicebot = voicebot
        self.voice = VoiceChannels(self, voice_client_class)
        self.conversation = Conversation(self, voicebot, self.voice)

    async def setup_hook(self) -> None:
        await self.add_cog(self.conversation)
        await self.add_cog(SlashCommands(self.conversation))
        try:
            synced = await self.tree.sync()
            log.info("discord: %d slash commands synced", len(synced))
        except discord.HTTPException as error:  # the bot still works without a fresh menu
            log.warning("discord: slash commands not synced: %s", error)

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: people's messages go to :class:`Conversation`."""

    async def on_ready(self) -> None:
        log.info("discord: logged in as %s (%s) in %d servers", self.user, self.user and self.user.id,
                 len(self.guilds))


class ShardedDiscordBot(DiscordBot, commands.AutoShardedBot):
    """The same bot on discord.py's AutoShardedBot: one gateway connection per shard.

    Discord requires sharding from 2,500 servers on; each shard carries the events of the
    servers with ``(guild_id >> 22) % shard_count == shard_id``, and DMs come through shard 0.
    """

    async def on_ready(self) -> None:
        log.info("discord: logged in as %s (%s) in %d servers on shards %s of %s", self.user,
                 self.user and self.user.id, len(self.guilds), sorted(self.shards), self.shard_count)


def shard_options(settings: Settings) -> dict[str, Any] | None:
    """AutoShardedBot's options from ``DISCORD_SHARDS``/``DISCORD_SHARD_IDS``; None when unsharded."""
    value = settings.discord_shards.strip().lower()
    if settings.discord_shard_ids and not value.isdigit():
        raise ConfigError("DISCORD_SHARD_IDS needs DISCORD_SHARDS set to the total number of shards.")
    if not value:
        return None
    if value == "auto":
        return {}  # discord.py asks Discord for the recommended count
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"DISCORD_SHARDS must be empty, auto or a number of shards, not {settings.discord_shards!r}.")
    count = int(value)
    options: dict[str, Any] = {"shard_count": count}
    if settings.discord_shard_ids:
        ids = sorted({int(i) for i in settings.discord_shard_ids if i.isdigit()})
        if len(ids) != len(set(settings.discord_shard_ids)) or not all(0 <= i < count for i in ids):
            raise ConfigError(f"DISCORD_SHARD_IDS must be shard numbers from 0 to {count - 1}.")
        options["shard_ids"] = ids
    return options


def build_client(voicebot: VoiceBot, **kwargs: Any) -> DiscordBot:
    """The unsharded bot, or the sharded one when ``DISCORD_SHARDS`` is set."""
    options = shard_options(voicebot.settings)
    if options is None:
        return DiscordBot(voicebot, **kwargs)
    return ShardedDiscordBot(voicebot, **kwargs, **options)


async def run(client: DiscordBot, token: str, stop: asyncio.Event) -> None:
    """Run ``client`` until ``stop`` is set (then close within seconds) or it fails.

    A refused token and a missing Message Content intent become :class:`ConfigError` with
    what to do about them.
    """
    running = asyncio.create_task(client.start(token), name="discord-client")
    stopping = asyncio.create_task(stop.wait(), name="discord-stop")
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not running.done():
            await client.conversation.finish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.close(), timeout=5.0)
        if not running.done():
            running.cancel()
            await asyncio.wait({running}, timeout=2.0)
    if running.done() and not running.cancelled() and (error := running.exception()) is not None:
        raise _explained(error) from error


def _explained(error: BaseException) -> BaseException:
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return ConfigError(INTENT_HELP)
    if isinstance(error, discord.LoginFailure):
        return ConfigError("Discord refused DISCORD_BOT_TOKEN: copy the token again from the Developer Portal "
                           "(Bot -> Reset Token).")
    return error


async def serve(bot: VoiceBot, stop: asyncio.Event) -> None:
    """What ``voicebot discord`` runs: the Discord bot on ``bot`` until ``stop`` is set."""
    token = Settings.secret(bot.settings.discord_bot_token)
    if not token:
        raise ConfigError("DISCORD_BOT_TOKEN is not set: create a bot in the Discord Developer Portal "
                          "and put its token in .env (see docs/discord.md).")
    client = build_client(bot)
    point_at_endpoints(bot.settings)
    await run(client, token, stop)
