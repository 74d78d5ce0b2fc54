"""Delivering one turn to Telegram: chat actions, a streamed message, text chunks, voice, video.

:class:`TelegramReplySink` is the :class:`bot.sink.ReplySink` for one incoming message. It keeps
a chat action visible while the core works (:class:`ChatActionLoop`), optionally grows the
answer in one message as tokens arrive (:class:`StreamedMessage`), and finally sends the
formatted text (split under 4096 characters), the voice note and, later, the avatar clip.
Every call names the forum topic the user wrote in and answers the user's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from typing import Any

from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from adapters.telegram_client import TelegramClient
from adapters.telegram_format import Chunk, preview, reply_chunks, shows_as
from adapters.telegram_ratelimiter import NO_RETRIES, Retries, period_seconds, sleep_unless
from bot.messages import Reply, Stage, Video, VoiceNote

log = logging.getLogger(__name__)

#: A chat action shows for about 5 s; it is sent again this often while the stage lasts.
ACTION_REFRESH = 4.0
#: A stage shows its chat action only once it has lasted this long. Telegram asks bots to use
#: chat actions "only when a response from the bot will take a noticeable amount of time";
#: a stage that ends sooner (an upload of a short voice note, a quick answer) costs no call.
ACTION_GRACE = 0.2
#: A chat action loop ends by itself after this long, even if nobody stops it.
ACTION_MAX_SECONDS = 120.0
#: Uploads get more time than ordinary calls.
UPLOAD_TIMEOUT = 60.0

STAGE_ACTIONS: dict[Stage, str] = {
    Stage.TRANSCRIBING: ChatAction.TYPING,
    Stage.THINKING: ChatAction.TYPING,
    Stage.SPEAKING: ChatAction.RECORD_VOICE,
    Stage.UPLOADING_VOICE: ChatAction.UPLOAD_VOICE,
    Stage.RENDERING_VIDEO: ChatAction.RECORD_VIDEO,
}


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a turn's messages go: the chat, its forum topic (if any), the message answered."""

    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None

    def reply_parameters(self) -> dict[str, Any] | None:
        """Bot API ``ReplyParameters``: answer the user's message, even if it was deleted meanwhile."""
        if self.reply_to is None:
            return None
        return {"message_id": self.reply_to, "allow_sending_without_reply": True}


class ChatActionLoop:
    """Keeps one chat action ("typing", "recording a voice message"...) showing.

    :meth:`show` sends the action once it has been wanted for :data:`ACTION_GRACE` seconds,
    then every :data:`ACTION_REFRESH` seconds until :meth:`stop`, another :meth:`show`, or
    ``lasting`` seconds. A chat action is decoration: failures are logged at debug level and a
    429 only delays the next one.

    :meth:`stop` cancels a loop that is waiting (its grace, its pause, or the rate limiter's
    pacing), but lets a call already handed to the HTTP client finish, and sends no other:
    Telegram gets that request anyway, and abandoning its answer would make aiohttp close the
    connection, so a later call pays for a new one (a TLS handshake against Telegram). Under
    load about one turn in two stopped an action mid-call.
    """

    def __init__(self, bot: TelegramClient, to: Destination) -> None:
        self._bot = bot
        self._to = to
        self._timer: asyncio.TimerHandle | None = None
        self._current: _ActionRun | None = None
        self.action: str | None = None

    @property
    def active(self) -> bool:
        """An action is waiting out its grace or being shown."""
        return self._timer is not None or (self._current is not None and self._current.running)

    def show(self, action: str, lasting: float = ACTION_MAX_SECONDS) -> None:
        if action == self.action and self.active:
            return
        self.stop()
        self.action = action
        grace = ACTION_GRACE
        if grace > 0:
            self._timer = asyncio.get_running_loop().call_later(grace, self._start, action, max(0.0, lasting - grace))
        else:
            self._start(action, lasting)

    def _start(self, action: str, lasting: float) -> None:
        self._timer = None
        self._current = run = _ActionRun()
        run.task = asyncio.create_task(self._run(action, lasting, run), name=f"telegram-action-{self._to.chat_id}")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._current is not None:
            self._current.stop()
        self._timer = None
        self._current = None
        self.action = None

    async def _run(self, action: str, lasting: float, run: _ActionRun) -> None:
        deadline = time.monotonic() + lasting
        while time.monotonic() < deadline:
            pause = ACTION_REFRESH
            try:
                await self._bot.send_chat_action(
                    self._to.chat_id, action, message_thread_id=self._to.thread_id,
                    rate_limit_args=Retries(0, on_call=run.on_call),
                )
            except RetryAfter as error:
                pause = max(pause, period_seconds(error, "retry_after") or pause)
            except TelegramError as error:
                log.debug("chat action %s in %s failed: %s", action, self._to.chat_id, error)
            finally:
                run.calling = False
            if run.stopped:
                return
            await asyncio.sleep(pause)


@dataclass(slots=True)
class _ActionRun:
    """One :class:`ChatActionLoop` run: its task, whether a call is on the wire, whether to end."""

    task: asyncio.Task[None] | None = None
    calling: bool = False
    stopped: bool = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def on_call(self) -> None:
        self.calling = True

    def stop(self) -> None:
        """Cancel the run while it waits; a call on the wire is let finish, then the run ends."""
        if self.task is None or self.task.done():
            return
        if self.calling:
            self.stopped = True
            _FINISHING.add(self.task)
            self.task.add_done_callback(_FINISHING.discard)
        else:
            self.task.cancel()


#: Stopped chat action loops whose last call is still on the wire (a task needs a reference).
_FINISHING: set[asyncio.Task[None]] = set()


class StreamedMessage:
    """One message that grows while the LLM writes.

    The first text is sent as a new message, later text edits it: at most one call per
    ``interval`` seconds, only when the text changed, plain text only (half-written Markdown is
    not valid markup). A 429 pauses the edits for as long as Telegram asks. :meth:`finish`
    waits for a call in flight, so the caller knows the message id and never sends the text twice.
    """

    def __init__(self, bot: TelegramClient, to: Destination, interval: float) -> None:
        self._bot = bot
        self._to = to
        self._interval = interval
        self._latest = ""
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.message_id: int | None = None
        self.shown = ""  # the text Telegram last took for the message (plain)

    def update(self, text_so_far: str) -> None:
        if self._closing.is_set():
            return
        self._latest = text_so_far  # cut to one message only when shown, not on every token
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"telegram-stream-{self._to.chat_id}")

    async def finish(self) -> int | None:
        """Stop editing; the id of the streamed message, if one was sent."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        return self.message_id

    def cancel(self) -> None:
        self._closing.set()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing.is_set():
                return
            text, pause = preview(self._latest), self._interval
            if text.strip() and text != self.shown:
                try:
                    await self._show(text)
                    self.shown = text
                except RetryAfter as error:
                    pause = max(pause, period_seconds(error, "retry_after") or pause)
                except TelegramError as error:
                    log.debug("streaming to %s failed: %s", self._to.chat_id, error)
                    if self.message_id is None:
                        return  # could not even start: deliver() sends the whole reply
            await sleep_unless(self._closing, pause)

    async def _show(self, text: str) -> None:
        if self.message_id is None:
            self.message_id = await self._bot.send_text(
                self._to.chat_id, text, thread_id=self._to.thread_id,
                reply_parameters=self._to.reply_parameters(), retries=NO_RETRIES,
            )
        else:
            await self._bot.edit_text(self._to.chat_id, self.message_id, text, retries=NO_RETRIES)


def _not_modified(error: BadRequest) -> bool:
    return "not modified" in str(error).lower()


class TelegramReplySink:
    """The :class:`bot.sink.ReplySink` for one Telegram message.

    ``stream`` turns on :class:`StreamedMessage`; ``edit_interval`` paces its edits (groups
    have tighter limits). Stages in ``quiet_stages`` show no chat action (a group voice note
    is transcribed before the bot knows whether it was addressed; typing at everyone's voice
    notes would be noise). Call :meth:`close` when the turn is over, delivered or not.
    """

    def __init__(
        self,
        bot: TelegramClient,
        to: Destination,
        *,
        stream: bool,
        edit_interval: float = 1.0,
        video_timeout: float = ACTION_MAX_SECONDS,
        quiet_stages: frozenset[Stage] = frozenset(),
    ) -> None:
        self.streams_text = stream
        self._bot = bot
        self._to = to
        self._edit_interval = edit_interval
        self._video_timeout = video_timeout
        self._quiet = quiet_stages
        self._actions = ChatActionLoop(bot, to)
        self._stream: StreamedMessage | None = None

    # --- ReplySink ---------------------------------------------------------------------------

    async def stage(self, stage: Stage) -> None:
        if stage in self._quiet or stage not in STAGE_ACTIONS:
            return
        lasting = self._video_timeout if stage is Stage.RENDERING_VIDEO else ACTION_MAX_SECONDS
        self._actions.show(STAGE_ACTIONS[stage], lasting)

    async def text_delta(self, text_so_far: str) -> None:
        if self._stream is None:
            self._stream = StreamedMessage(self._bot, self._to, self._edit_interval)
        self._stream.update(text_so_far)

    async def deliver(self, reply: Reply) -> None:
        """Text first (into the streamed message if there is one), then the voice note; a
        streamed one-message answer gets its final edit and the voice note at once.

        Raises if Telegram did not take the text, so the core keeps the turn open and it is
        tried again. When it never will (the user blocked the bot, the bot left the group) the
        reply counts as delivered. A voice note that fails is logged and dropped: the answer
        is already out.
        """
        streamed = await self._stream.finish() if self._stream is not None else None
        shown = self._stream.shown if self._stream is not None else ""
        self._stream = None
        chunks = reply_chunks(reply.text, reply.transcript if reply.show_transcript else None)
        try:
            if streamed is not None and len(chunks) == 1 and reply.voice is not None:
                await self._finish_streamed_with_voice(streamed, chunks[0], reply.voice, shown)
                return
            for i, chunk in enumerate(chunks):
                if i == 0 and streamed is not None and await self._edit(streamed, chunk, shown):
                    continue
                await self._post(chunk, answer=i == 0)
            if reply.voice is not None:
                await self._send_voice(reply.voice)
        except Forbidden as error:
            log.info("chat %s does not take messages from the bot: %s", self._to.chat_id, error)
        finally:
            self._actions.stop()

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        self._actions.show(ChatAction.UPLOAD_VIDEO)
        try:
            await self._bot.send_upload(
                "sendVideo", "video", self._to.chat_id, video.data, "reply.mp4", supports_streaming=True,
                thread_id=self._to.thread_id, reply_parameters=self._to.reply_parameters(), timeout=UPLOAD_TIMEOUT,
            )
        finally:
            self._actions.stop()

    async def video_failed(self) -> None:
        """The avatar clip will not come: stop showing "recording a video"."""
        self._actions.stop()

    def close(self) -> None:
        """Stop what still runs for this turn (a chat action, an unfinished stream)."""
        if self._stream is not None:
            self._stream.cancel()
        # A video still rendering keeps its own action loop; it ends by itself.
        if self._actions.action != ChatAction.RECORD_VIDEO:
            self._actions.stop()

    # --- sending -----------------------------------------------------------------------------

    async def _post(self, chunk: Chunk, *, answer: bool) -> None:
        """Send one chunk as a new message: HTML, or plain text if Telegram refuses the HTML."""
        reply_parameters = self._to.reply_parameters() if answer else None
        if chunk.html is not None:
            try:
                await self._bot.send_text(
                    self._to.chat_id, chunk.html, parse_mode=ParseMode.HTML,
                    thread_id=self._to.thread_id, reply_parameters=reply_parameters,
                )
                return
            except BadRequest as error:
                log.warning("Telegram refused the formatted reply (%s); sending plain text", error)
        await self._bot.send_text(
            self._to.chat_id, chunk.plain, thread_id=self._to.thread_id, reply_parameters=reply_parameters,
        )

    async def _edit(self, message_id: int, chunk: Chunk, shown: str) -> bool:
        """Put the final text into the streamed message; False if it cannot be edited.

        Nothing is sent when the message already shows it (``shown``): a plain answer the
        stream caught whole. Telegram would refuse that edit as "not modified", and in a group
        every edit counts against the chat's limit of about 20 messages a minute.
        """
        if shows_as(chunk, shown):
            return True
        attempts = [(chunk.html, ParseMode.HTML)] if chunk.html is not None else []
        attempts.append((chunk.plain, None))
        for text, parse_mode in attempts:
            try:
                await self._bot.edit_text(self._to.chat_id, message_id, text, parse_mode=parse_mode)
                return True
            except BadRequest as error:
                if _not_modified(error):
                    return True
                log.warning("could not edit the streamed reply in %s: %s", self._to.chat_id, error)
        return False

    async def _finish_streamed_with_voice(self, message_id: int, chunk: Chunk, voice: VoiceNote, shown: str) -> None:
        """The streamed message's final text and the voice note, sent together.

        The answer's message is already in the chat, above where the voice note will land, so
        the voice note need not wait for the last edit (bench/bench_turn.py). If
        the edit fails, the text follows as a new message; if that fails too, the error goes
        up like any text that did not get out.
        """
        voice_out = asyncio.ensure_future(self._send_voice(voice))  # the longer call goes first
        edit = asyncio.ensure_future(self._edit(message_id, chunk, shown))
        try:
            await asyncio.wait((edit, voice_out))
        except asyncio.CancelledError:
            edit.cancel()
            voice_out.cancel()
            raise
        try:
            edited = edit.result()
        except Forbidden:
            raise
        except TelegramError as error:
            log.warning("could not finish the streamed reply in %s (%s); sending it anew", self._to.chat_id, error)
            edited = False
        if not edited:
            await self._post(chunk, answer=True)
        voice_out.result()

    async def _send_voice(self, voice: VoiceNote) -> None:
        self._actions.show(ChatAction.UPLOAD_VOICE)  # shown if the upload takes a while
        try:
            await self._bot.send_upload(
                "sendVoice", "voice", self._to.chat_id, voice.data, "reply.ogg", duration=max(1, round(voice.duration)),
                thread_id=self._to.thread_id, reply_parameters=self._to.reply_parameters(), timeout=UPLOAD_TIMEOUT,
            )
        except TelegramError as error:  # e.g. VOICE_MESSAGES_FORBIDDEN by the user's privacy settings
            log.warning("voice note to %s not sent: %s", self._to.chat_id, error)
