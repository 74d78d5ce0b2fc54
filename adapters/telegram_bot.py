"""``voicebot telegram``: the Telegram adapter, on python-telegram-bot 22.

It only translates. A Telegram message becomes an :class:`IncomingMessage` (who, which chat,
text or the voice note's bytes, group or private, mentioned or replied to, forum topic, admin or
not); the core decides and answers through :class:`TelegramReplySink`. The pieces:

- ``telegram_intake``: long polling or webhook, every update committed to the inbox before
  Telegram forgets it, one chat in order and chats concurrently;
- ``telegram_reply``: chat actions, streamed text, chunks, voice note, video;
- ``telegram_format``: LLM Markdown as safe Telegram HTML, split under 4096 characters;
- ``telegram_ratelimiter``: flood limits and 429 retries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from dataclasses import dataclass

from telegram import BotCommand, Message, MessageEntity, Update, User
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ContextTypes, MessageHandler, TypeHandler, filters

from adapters.telegram_intake import (
    Backoff,
    ChatOrderedProcessor,
    PollingIntake,
    UpdateInbox,
    WebhookIntake,
)
from adapters.telegram_client import TelegramClient
from adapters.telegram_http import AiohttpRequest
from adapters.telegram_ratelimiter import ChatRateLimiter, period_seconds, sleep_unless
from adapters.telegram_reply import Destination, TelegramReplySink
from adapters.workers import WorkerRole, current_role, watch_parent
from bot.commands import parse_command
from bot.config import Settings
from bot.errors import ConfigError
from bot.messages import Audio, ChatKind, IncomingMessage, Stage
from bot.pipeline import Outcome
from bot.runtime import VoiceBot

log = logging.getLogger(__name__)

PLATFORM = "telegram"
#: Seconds running turns get to finish after a stop request; the rest resume after restart.
SHUTDOWN_GRACE = 2.5
#: How long a getChatMember answer (admin or not) is trusted.
ADMIN_CACHE_SECONDS = 60.0
DOWNLOAD_TIMEOUT = 60.0
#: Pauses before trying again to deliver an answer Telegram did not take (5xx, network).
RETRY_DELAYS = (5.0, 30.0, 120.0)
#: Handled updates are kept in the inbox this long (to recognise a late redelivery), then pruned.
INBOX_KEEP = dt.timedelta(days=7)
TOKEN_REFUSED = "Telegram refused TELEGRAM_BOT_TOKEN: check it with @BotFather."
#: Seconds between edits of a streamed reply: Telegram allows about 20 messages a minute in a group.
EDIT_INTERVAL = {ChatKind.PRIVATE: 1.0, ChatKind.GROUP: 3.0}
_GROUP_TYPES = frozenset({ChatType.GROUP, ChatType.SUPERGROUP})
_ADMIN_STATUSES = frozenset({ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER})
_MEDIA_FILTER = filters.TEXT | filters.VOICE | filters.AUDIO | filters.VIDEO_NOTE


# --- reading a message ------------------------------------------------------------------------


def _entities(message: Message) -> dict[MessageEntity, str]:
    return {**message.parse_entities(), **message.parse_caption_entities()}


def mentions_bot(message: Message, me: User) -> bool:
    """An ``@username`` mention, a text mention of the bot, or a ``/command@username``."""
    username = (me.username or "").casefold()
    for entity, text in _entities(message).items():
        if entity.type == MessageEntity.MENTION and text[1:].casefold() == username:
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user is not None and entity.user.id == me.id:
            return True
        if entity.type == MessageEntity.BOT_COMMAND and text.casefold().endswith(f"@{username}"):
            return True
    return False


def command_for_another_bot(message: Message, me: User) -> bool:
    """``/reset@OtherBot``: in a group with several bots, a command meant for another one."""
    for entity, text in message.parse_entities([MessageEntity.BOT_COMMAND]).items():
        if entity.offset == 0 and "@" in text:
            return text.split("@", 1)[1].casefold() != (me.username or "").casefold()
    return False


def replies_to_bot(message: Message, me: User) -> bool:
    """A reply to one of the bot's messages.

    In a forum topic every message "replies" to the topic's first message; that is not a
    reply to the bot even when the bot opened the topic.
    """
    target = message.reply_to_message
    if target is None or target.from_user is None or target.from_user.id != me.id:
        return False
    return not (message.is_topic_message and target.message_id == message.message_thread_id)


@dataclass(frozen=True, slots=True)
class Attachment:
    """The audio part of a message: what to download and what the platform says about it."""

    file_id: str
    format: str
    declared_seconds: float | None
    declared_bytes: int | None


_AUDIO_MIME_FORMATS = {
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "audio/opus": "ogg", "audio/wav": "wav",
    "audio/x-wav": "wav", "audio/flac": "flac", "audio/x-flac": "flac", "audio/mp4": "m4a", "audio/x-m4a": "m4a",
    "audio/m4a": "m4a", "audio/webm": "webm",
}


def _audio_file_format(file_name: str | None, mime_type: str | None) -> str:
    """The container of an audio file, from its name, else its MIME type (the bytes come later)."""
    if file_name and "." in file_name:
        return file_name.rsplit(".", 1)[-1].lower()
    return _AUDIO_MIME_FORMATS.get((mime_type or "").lower(), "mp3")


def attachment_of(message: Message) -> Attachment | None:
    """A voice note, an audio file or a video note (its sound is transcribed); None otherwise."""
    if message.voice is not None:
        media, fmt = message.voice, "ogg"
    elif message.audio is not None:
        media = message.audio
        fmt = _audio_file_format(media.file_name, media.mime_type)
    elif message.video_note is not None:
        media, fmt = message.video_note, "mp4"
    else:
        return None
    return Attachment(media.file_id, fmt, period_seconds(media, "duration"), media.file_size)


def to_incoming(
    message: Message, me: User, *, audio: Audio | None = None, sender_is_admin: bool = False
) -> IncomingMessage:
    """The platform-free message the core handles."""
    chat, sender = message.chat, message.from_user
    group = chat.type in _GROUP_TYPES
    user_id = sender.id if sender is not None else chat.id
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=str(chat.id),
        user_id=str(user_id),
        message_id=str(message.message_id),
        text=message.text if message.text is not None else message.caption,
        audio=audio,
        kind=ChatKind.GROUP if group else ChatKind.PRIVATE,
        mentioned=group and mentions_bot(message, me),
        replied_to_bot=group and replies_to_bot(message, me),
        thread_id=str(message.message_thread_id) if message.is_topic_message else None,
        user_name=sender.full_name if sender is not None else chat.title,
        sender_is_admin=sender_is_admin,
    )


# --- the adapter ------------------------------------------------------------------------------


class AdminCache:
    """Who may change a group's settings, asked with ``getChatMember`` and kept for a minute."""

    def __init__(self, ttl: float = ADMIN_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._answers: dict[tuple[int, int], tuple[float, bool]] = {}

    async def is_admin(self, message: Message) -> bool:
        chat = message.chat
        if message.sender_chat is not None and message.sender_chat.id == chat.id:
            return True  # an anonymous admin writes as the group itself
        if message.from_user is None:
            return False
        key, now = (chat.id, message.from_user.id), time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            member = await message.get_bot().get_chat_member(chat.id, message.from_user.id)
        except TelegramError as error:
            log.warning("telegram: could not check admin rights in %s: %s", chat.id, error)
            return False
        answer = member.status in _ADMIN_STATUSES
        if len(self._answers) > 10_000:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        self._answers[key] = (now + self.ttl, answer)
        return answer


class TelegramAdapter:
    """The Telegram side of one :class:`VoiceBot`: handlers, translation and lifecycle."""

    def __init__(self, voicebot: VoiceBot, application: Application, role: WorkerRole | None = None) -> None:
        self.voicebot = voicebot
        #: Set when this process is one of several webhook workers (adapters/workers.py).
        self.role = role
        self.settings: Settings = voicebot.settings
        self.application = application
        if not isinstance(application.bot, TelegramClient):
            raise TypeError("the Application's bot must be a TelegramClient (see build_application)")
        self.client: TelegramClient = application.bot
        self.processor = application.update_processor
        self.inbox = UpdateInbox(voicebot.store, self.client)
        self.admins = AdminCache()
        self._attempts: dict[int, int] = {}  # update id -> deliveries tried and failed
        self._retries: dict[int, asyncio.Task[None]] = {}
        application.add_handler(MessageHandler(filters.UpdateType.MESSAGE & _MEDIA_FILTER, self.on_message))
        application.add_handler(TypeHandler(Update, self.on_other_update))
        application.add_error_handler(self.on_error)

    @property
    def me(self) -> User:
        return self.application.bot.bot

    def intake(self) -> PollingIntake | WebhookIntake:
        bot, submit = self.client, self.application.update_queue.put
        if not self.settings.telegram_webhook_url:
            return PollingIntake(bot, self.inbox, submit)
        secret = Settings.secret(self.settings.telegram_webhook_secret) or secrets.token_urlsafe(32)
        return WebhookIntake(
            bot, self.inbox, submit, url=self.settings.telegram_webhook_url,
            listen=self.settings.telegram_webhook_listen, port=self.settings.telegram_webhook_port, secret=secret,
            reuse_port=self.role is not None, register=self.registers,
        )

    @property
    def registers(self) -> bool:
        """Whether this process registers the webhook and the command menu (one worker does)."""
        return self.role is None or self.role.registers

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then return within a few seconds."""
        app = self.application
        if not await self._initialize(stop):
            return
        intake_task: asyncio.Task[None] | None = None
        try:
            if self.registers:
                await self.register_commands()
                await self.prune_inbox()
            await app.start()
            for update in await self.inbox.pending():
                await app.update_queue.put(update)
            intake = self.intake()
            log.info("telegram: @%s is up (%s)", self.me.username, intake.mode)
            intake_task = asyncio.create_task(intake.run(stop), name="telegram-intake")
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({intake_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if intake_task.done():
                intake_task.result()  # an intake that ends by itself failed: raise why
        except InvalidToken:
            raise ConfigError(TOKEN_REFUSED) from None
        finally:
            for task in list(self._retries.values()):
                task.cancel()
            if intake_task is not None:
                if not stop.is_set():  # failing: nothing will tell the intake to finish
                    intake_task.cancel()
                await asyncio.wait({intake_task}, timeout=3.0)
                intake_task.cancel()
            if app.running:
                assert isinstance(self.processor, ChatOrderedProcessor)
                await asyncio.gather(self.processor.wind_down(SHUTDOWN_GRACE), app.stop())
            await app.shutdown()

    async def _initialize(self, stop: asyncio.Event) -> bool:
        """``getMe`` until Telegram answers (the network may come up after us); False if stopped first."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                await self.application.initialize()
                return True
            except InvalidToken:
                raise ConfigError(TOKEN_REFUSED) from None
            except BadRequest:
                raise
            except NetworkError as error:
                delay = backoff.take()
                log.warning("telegram: Bot API unreachable (%s); retrying in %.0f s", error, delay)
                await sleep_unless(stop, delay)
        return False

    async def register_commands(self) -> None:
        """The command menu Telegram shows when a user types ``/``."""
        commands = [BotCommand(name, description[:256]) for name, description in self.voicebot.commands.menu()]
        try:
            await self.application.bot.set_my_commands(commands)
        except TelegramError as error:
            log.warning("telegram: could not set the command menu: %s", error)

    async def prune_inbox(self) -> None:
        try:
            pruned = await self.voicebot.store.inbox_prune(PLATFORM, INBOX_KEEP)
        except Exception as error:  # noqa: BLE001 - housekeeping never stops the bot
            log.warning("telegram: could not prune the inbox: %s", error)
            return
        if pruned:
            log.info("telegram: pruned %d handled updates older than %d days", pruned, INBOX_KEEP.days)

    # --- handlers ----------------------------------------------------------------------------

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Answer one message (after the chat's earlier ones other workers received).

        In webhook mode several processes may share the endpoint (``--workers``, or a load
        balancer in front of separate processes); polling has one process by nature."""
        if self.settings.telegram_webhook_url:
            for earlier in await self.inbox.earlier_in_chat(update):
                if earlier.message is not None and _MEDIA_FILTER.check_update(earlier):
                    await self.answer_update(earlier)
        await self.answer_update(update)

    async def answer_update(self, update: Update) -> None:
        """Answer one message; mark its update done unless the answer did not get out."""
        message = update.message
        assert message is not None
        try:
            outcome = await self.answer(message)
        except Exception:  # noqa: BLE001 - never retry an update that breaks the adapter
            log.exception("telegram: update %s failed", update.update_id)
            outcome = None
        if outcome is Outcome.UNDELIVERED:
            self._retry_later(update)
        else:
            self._attempts.pop(update.update_id, None)
            await self.inbox.done(update)

    def _retry_later(self, update: Update) -> None:
        """Hand an update whose answer did not get out back to the queue after a pause.

        The core kept the turn open with its answer, so a retry only delivers. After the last
        delay the update waits in the inbox for the next start.
        """
        attempt = self._attempts.get(update.update_id, 0)
        if attempt >= len(RETRY_DELAYS):
            self._attempts.pop(update.update_id, None)
            log.warning("telegram: giving up on update %s until restart", update.update_id)
            return
        self._attempts[update.update_id] = attempt + 1

        async def resubmit() -> None:
            await asyncio.sleep(RETRY_DELAYS[attempt])
            self._retries.pop(update.update_id, None)
            await self.application.update_queue.put(update)

        self._retries[update.update_id] = asyncio.create_task(resubmit(), name=f"telegram-retry-{update.update_id}")

    async def on_other_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Edits, service messages, stickers...: nothing to answer."""
        await self.inbox.done(update)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram: unhandled %s", type(context.error).__name__, exc_info=context.error)

    async def answer(self, message: Message) -> Outcome | None:
        if message.from_user is not None and message.from_user.is_bot and message.sender_chat is None:
            return None  # another bot (or ourselves, via a forwarded echo)
        if command_for_another_bot(message, self.me):
            return None
        attachment = attachment_of(message)
        audio = self.lazy_audio(attachment) if attachment is not None else None
        incoming = to_incoming(
            message, self.me, audio=audio, sender_is_admin=await self._admin_if_needed(message)
        )
        sink = self.sink_for(incoming)
        try:
            return await self.voicebot.handle(incoming, sink)
        finally:
            sink.close()

    # --- translation helpers -----------------------------------------------------------------

    def lazy_audio(self, attachment: Attachment) -> Audio:
        """The attachment as the core's Audio, downloaded only when the core asks for it: after
        the declared size and duration passed its limits, and once per message id."""
        bot = self.application.bot

        async def fetch() -> bytes:
            file = await bot.get_file(attachment.file_id)
            return bytes(await file.download_as_bytearray(read_timeout=DOWNLOAD_TIMEOUT))

        return Audio(
            format=attachment.format,
            declared_seconds=attachment.declared_seconds,
            declared_bytes=attachment.declared_bytes,
            fetch=fetch,
        )

    async def _admin_if_needed(self, message: Message) -> bool:
        """Ask Telegram about admin rights only for a settings command in a group."""
        if message.chat.type not in _GROUP_TYPES or message.text is None:
            return False
        parsed = parse_command(message.text)
        command = self.voicebot.commands.table.get(parsed[0]) if parsed else None
        if command is None or not command.changes_settings:
            return False
        return await self.admins.is_admin(message)

    def sink_for(self, incoming: IncomingMessage) -> TelegramReplySink:
        addressed = not incoming.is_group or incoming.mentioned or incoming.replied_to_bot
        return TelegramReplySink(
            self.client,
            Destination(
                int(incoming.chat_id),
                int(incoming.thread_id) if incoming.thread_id else None,
                int(incoming.message_id),
            ),
            stream=self.settings.stream_text,
            edit_interval=EDIT_INTERVAL[incoming.kind],
            video_timeout=self.settings.did_timeout,
            quiet_stages=frozenset() if addressed else frozenset({Stage.TRANSCRIBING}),
        )


def build_application(settings: Settings, token: str) -> Application:
    """The PTB Application: our Bot API client (``telegram_client``) with our rate limiter and
    HTTP client (aiohttp, see ``telegram_http``), our update processor, no PTB Updater (our intake)."""
    client = TelegramClient(
        token,
        base_url=settings.telegram_base_url,
        base_file_url=settings.telegram_base_file_url,
        request=AiohttpRequest(read_timeout=15.0),
        get_updates_request=AiohttpRequest(connection_pool_size=1),
        rate_limiter=ChatRateLimiter(overall_per_second=settings.telegram_max_messages_per_second),
    )
    return (
        Application.builder()
        .bot(client)
        .concurrent_updates(ChatOrderedProcessor(settings.telegram_max_concurrent_turns))
        .updater(None)
        .build()
    )


async def serve(bot: VoiceBot, stop: asyncio.Event) -> None:
    """Run the Telegram bot for ``bot`` until ``stop`` is set (what ``voicebot telegram`` awaits)."""
    token = Settings.secret(bot.settings.telegram_bot_token)
    if not token:
        raise ConfigError("Set TELEGRAM_BOT_TOKEN (from @BotFather) to run the Telegram bot.")
    role = current_role()
    if role is None:
        await TelegramAdapter(bot, build_application(bot.settings, token)).run(stop)
        return
    role.tag_logs()
    log.info("telegram: %s of %d", role.name, role.count)
    orphaned = asyncio.create_task(watch_parent(stop), name="telegram-watch-supervisor")
    try:
        await TelegramAdapter(bot, build_application(bot.settings, token), role).run(stop)
    finally:
        orphaned.cancel()
