"""The turn pipeline: the one place where the order of a turn's stages is written down.

    admit -> ledger -> command -> check_input -> transcribe -> trigger -> rate
          -> remember -> think -> speak -> deliver          (then, in the background: avatar)

Each stage is a method that reads and fills a :class:`TurnContext`; a stage that settles the
turn (a command answered, a duplicate, a group message not for us) sets ``outcome`` and the
rest are skipped. A chat's turns run one at a time (:class:`ChatLocks`); different chats never
wait for each other. What the user said is committed before the LLM is asked, and a turn is
marked delivered only after the adapter's ``deliver`` returned, so a crash loses nothing and a
redelivered update is answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel

from bot.audio import is_ogg_opus, ogg_opus_duration, sniff_format
from bot.commands import Commands, parse_command
from bot.config import Settings
from bot.context import build_messages, estimate_tokens
from bot.errors import (
    AudioTooLongError,
    BadAudioError,
    DownloadError,
    NoSpeechError,
    NotAllowedError,
    ProviderError,
    RateLimitedError,
    VoicebotError,
)
from bot.gate import AudioTooLargeError, Gate
from bot.messages import Audio, IncomingMessage, Reply, ReplyKind, Stage, VoiceNote
from bot.ordering import ChatLockProvider, ChatLocks
from bot.providers.base import AvatarRenderer, SpeechToText, TextToSpeech
from bot.retry import CircuitBreaker, call_with_retries
from bot.sink import ReplySink
from bot.text import clean_input, to_spoken_text
from bot.trigger import addresses_bot
from storage.store import ChatSettings, HistoryStore, StoredMessage, TurnRecord, TurnState

log = logging.getLogger(__name__)

HISTORY_ROWS = 200  # rows read per turn; the token budget then trims them


class Outcome(enum.StrEnum):
    ANSWERED = "answered"  # the LLM's answer was delivered
    NOTICE = "notice"  # a command result or a clear message about a problem was delivered
    IGNORED = "ignored"  # not for us (group chatter, refused user already told)
    DUPLICATE = "duplicate"  # this message id was answered before
    UNDELIVERED = "undelivered"  # the platform did not take the reply; the turn stays open


STAGES: tuple[str, ...] = (
    "admit",
    "ledger",
    "command",
    "check_input",
    "transcribe",
    "trigger",
    "rate",
    "remember",
    "think",
    "speak",
    "deliver",
)


@dataclass(slots=True)
class TurnContext:
    message: IncomingMessage
    sink: ReplySink
    chat_id: int = 0
    chat: ChatSettings | None = None
    record: TurnRecord | None = None
    user_text: str | None = None
    from_voice: bool = False
    language: str | None = None
    audio_seconds: float = 0.0
    user_stored: bool = False
    history: list[StoredMessage] | None = None  # the chat's messages before this one, once read
    limited: bool = False  # rate and daily budgets checked (once per turn)
    voice_allowed: bool = True  # False once the user's daily voice budget is used
    reply_text: str | None = None
    reply_commit: asyncio.Future[None] | None = None  # the answer being stored
    tokens: int = 0
    tts_chars: int = 0
    voice: VoiceNote | None = None
    reply: Reply | None = None
    outcome: Outcome | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def explicitly_addressed(self) -> bool:
        m = self.message
        return not m.is_group or m.mentioned or m.replied_to_bot or m.always_answer


def _cleaned(message: IncomingMessage) -> IncomingMessage:
    """The message with text a database and a provider accept (see :func:`clean_input`)."""
    text = clean_input(message.text) if message.text else message.text
    name = clean_input(message.user_name) if message.user_name else message.user_name
    if text == message.text and name == message.user_name:
        return message
    return dataclasses.replace(message, text=text, user_name=name)


class TurnPipeline:
    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        *,
        stt: SpeechToText,
        llm: BaseChatModel,
        tts: TextToSpeech | None,
        avatar: AvatarRenderer | None,
        classify_llm_error: Callable[[BaseException], ProviderError | None] = lambda exc: None,
        locks: ChatLockProvider | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.avatar = avatar
        self.classify_llm_error = classify_llm_error
        self.llm_breaker = CircuitBreaker("language model")
        self.gate = Gate(settings)
        self.commands = Commands(settings, store, has_avatar=avatar is not None, has_voice=tts is not None)
        self.locks: ChatLockProvider = locks if locks is not None else ChatLocks()
        self._background: set[asyncio.Task[None]] = set()

    # --- the turn ----------------------------------------------------------------------------

    async def handle(self, message: IncomingMessage, sink: ReplySink) -> Outcome:
        """Run one incoming message through every stage, in this chat's order."""
        message = _cleaned(message)
        turn = TurnContext(message, sink)
        async with self.locks.hold(message.chat_key):
            started = time.perf_counter()
            try:
                for name in STAGES:
                    stage_start = time.perf_counter()
                    await getattr(self, f"_{name}")(turn)
                    turn.timings[name] = time.perf_counter() - stage_start
                    if turn.outcome is not None:
                        break
            except VoicebotError as error:
                await self._fail(turn, error)
            except Exception as error:  # noqa: BLE001 - a user never sees a traceback
                log.exception("turn %s/%s failed", message.platform, message.message_id)
                await self._fail(turn, VoicebotError(type(error).__name__))
            total = time.perf_counter() - started
        log.info(
            "turn platform=%s chat=%s message=%s outcome=%s total_ms=%.1f %s",
            message.platform, message.chat_id, message.message_id, turn.outcome, total * 1000,
            " ".join(f"{k}={v * 1000:.1f}" for k, v in turn.timings.items() if v >= 0.0005),
        )
        if turn.outcome is Outcome.ANSWERED and turn.reply is not None:
            self._maybe_render_video(turn)
        return turn.outcome or Outcome.IGNORED

    async def _fail(self, turn: TurnContext, error: VoicebotError) -> None:
        """Answer a problem with a clear notice, or stay silent where the bot was not addressed."""
        with contextlib.suppress(Exception):  # its failure is what may have brought us here
            await self._reply_stored(turn)
        log.warning("turn %s/%s: %s", turn.message.platform, turn.message.message_id, error)
        if not turn.explicitly_addressed and turn.user_text is None:
            # Group chatter we could not even read: not ours to complain about.
            if turn.record is not None and turn.record.is_new:
                await self.store.forget_turn(turn.record.id)
            turn.outcome = Outcome.IGNORED
            return
        await self._notice(turn, error.user_message)

    async def _notice(self, turn: TurnContext, text: str) -> None:
        reply = Reply(
            text=text,
            kind=ReplyKind.NOTICE,
            reply_to_message_id=turn.message.message_id,
            thread_id=turn.message.thread_id,
        )
        try:
            await turn.sink.deliver(reply)
        except Exception:  # noqa: BLE001
            log.exception("could not deliver a notice to %s/%s", turn.message.platform, turn.message.chat_id)
            turn.outcome = Outcome.UNDELIVERED
            return
        if turn.record is not None:
            await self.store.set_turn_state(turn.record.id, TurnState.FAILED)
        turn.outcome = Outcome.NOTICE

    # --- stages, in order --------------------------------------------------------------------

    async def _admit(self, turn: TurnContext) -> None:
        message = turn.message
        try:
            self.gate.admit(message)
        except NotAllowedError as error:
            addressed = turn.explicitly_addressed or parse_command(message.text or "") is not None
            if addressed and self.gate.first_refusal(message):
                await self._notice(turn, error.user_message)
            else:
                turn.outcome = Outcome.IGNORED

    async def _ledger(self, turn: TurnContext) -> None:
        message = turn.message
        turn.chat_id = await self.store.chat_id(message.platform, message.chat_id)
        # One transaction for the ledger entry, the chat's settings and, when the message is
        # surely for the bot, the context the LLM will see (bench/bench_turn.py).
        record, chat, turn.history = await self.store.open_turn(
            turn.chat_id, message.message_id, message.user_id,
            recent=HISTORY_ROWS if turn.explicitly_addressed else None,
        )
        turn.record = record
        if not record.is_new:
            if record.state in (TurnState.DELIVERED, TurnState.FAILED):
                turn.outcome = Outcome.DUPLICATE
                return
            # Resume what a crash interrupted: keep what was already heard and answered.
            turn.user_text = record.user_text
            turn.user_stored = record.user_text is not None
            turn.reply_text = record.reply_text
        turn.chat = chat

    async def _command(self, turn: TurnContext) -> None:
        parsed = parse_command(turn.message.text or "") if turn.message.audio is None else None
        if parsed is None:
            return
        await self.gate.check_rate(turn.message)
        text = await self.commands.run(turn.message, turn.chat_id, *parsed)
        await self._notice(turn, text)

    async def _check_input(self, turn: TurnContext) -> None:
        if turn.user_text is None:
            self.gate.check_input(turn.message)
            if turn.message.audio is not None and turn.explicitly_addressed:
                await self._rate(turn)  # before paying for a download and a transcription

    async def _transcribe(self, turn: TurnContext) -> None:
        message = turn.message
        if turn.user_text is not None:
            return
        if message.audio is None:
            turn.user_text = (message.text or "").strip()
            if not turn.user_text:
                turn.outcome = Outcome.IGNORED
            return
        await turn.sink.stage(Stage.TRANSCRIBING)
        audio = await self._audio_bytes(message.audio)
        if not audio.data or sniff_format(audio.data) is None:
            raise BadAudioError(f"{len(audio.data)} bytes, not a known audio container")
        if len(audio.data) > self.settings.max_audio_bytes:
            raise AudioTooLargeError(len(audio.data), self.settings.max_audio_bytes)
        if is_ogg_opus(audio.data):
            seconds = ogg_opus_duration(audio.data)
            if seconds > self.settings.max_audio_seconds:
                raise AudioTooLongError(seconds, self.settings.max_audio_seconds)
            turn.audio_seconds = seconds
        transcript = await self.stt.transcribe(audio)
        text = transcript.text.strip()
        if transcript.duration:
            turn.audio_seconds = transcript.duration
        if not text:
            if not turn.explicitly_addressed:
                if turn.record is not None:
                    await self.store.forget_turn(turn.record.id)
                turn.outcome = Outcome.IGNORED
                return
            raise NoSpeechError("empty transcript")
        turn.user_text = text
        turn.from_voice = True
        turn.language = transcript.language

    @staticmethod
    async def _audio_bytes(audio: Audio) -> Audio:
        """The audio with its bytes, downloading them now if the adapter gave a fetcher."""
        if audio.data or audio.fetch is None:
            return audio
        try:
            data = await audio.fetch()
        except VoicebotError:
            raise
        except Exception as exc:  # noqa: BLE001 - the platform's download failed
            raise DownloadError(f"{type(exc).__name__}: {exc}") from exc
        return dataclasses.replace(audio, data=data, fetch=None)

    async def _trigger(self, turn: TurnContext) -> None:
        if turn.user_stored:
            return
        assert turn.user_text is not None
        if not addresses_bot(turn.message, turn.user_text, self.settings.bot_name):
            if turn.record is not None:
                await self.store.forget_turn(turn.record.id)
            turn.outcome = Outcome.IGNORED

    async def _rate(self, turn: TurnContext) -> None:
        """The user's daily budgets and message rate, once per turn. A voice note addressed to
        the bot is checked before it is transcribed; group chatter only once it turned out to
        be for the bot."""
        if turn.user_stored or turn.limited:
            return
        turn.limited = True
        if self.gate.has_budgets:
            today = dt.datetime.now(dt.UTC).date()
            used = await self.store.usage(turn.message.platform, turn.message.user_id, since=today)
            self.gate.check_budget(used, voice_note=turn.message.audio is not None)
            turn.voice_allowed = self.gate.voice_budget_left(used)
        try:
            await self.gate.check_rate(turn.message)
        except RateLimitedError as error:
            key = f"{turn.message.platform}:{turn.message.user_id}"
            if self.gate.rate.first_refusal(key, error.wait_seconds):
                await self._notice(turn, error.user_message)
            else:
                assert turn.record is not None
                await self.store.set_turn_state(turn.record.id, TurnState.FAILED)
                turn.outcome = Outcome.IGNORED

    async def _remember(self, turn: TurnContext) -> None:
        if turn.user_stored:
            return
        assert turn.user_text is not None and turn.record is not None
        await self.store.add_message(
            turn.chat_id,
            "user",
            turn.user_text,
            turn_id=turn.record.id,
            tokens=estimate_tokens(turn.user_text),
            from_voice=turn.from_voice,
            language=turn.language,
            user_name=turn.message.user_name,
        )
        turn.user_stored = True

    async def _think(self, turn: TurnContext) -> None:
        if turn.reply_text is not None:
            return  # answered before a crash; deliver that answer
        assert turn.chat is not None and turn.record is not None and turn.user_text is not None
        await turn.sink.stage(Stage.THINKING)
        history = turn.history
        if history is None:  # group chatter found to be for the bot: not read with the ledger entry
            history = await self.store.recent_messages(turn.chat_id, HISTORY_ROWS, exclude_turn=turn.record.id)
        messages = build_messages(
            turn.chat.persona or self.settings.resolved_system_prompt,
            history,
            turn.user_text,
            budget=self.settings.context_tokens,
            group=turn.message.is_group,
            user_name=turn.message.user_name,
        )
        streamed: list[str] = []

        async def generate() -> tuple[str, int]:
            if not turn.sink.streams_text:
                # Nobody watches the answer grow: one completion instead of an object, a read
                # and a callback per token (bench/bench_throughput.py --text-only).
                answer = await self.llm.ainvoke(messages)
                usage = getattr(answer, "usage_metadata", None) or {}
                text = answer.content if isinstance(answer.content, str) else ""
                return text.strip(), usage.get("total_tokens", 0)
            streamed.clear()
            output_tokens = 0
            async for chunk in self.llm.astream(messages):
                piece = chunk.content if isinstance(chunk.content, str) else ""
                if piece:
                    streamed.append(piece)
                    if turn.sink.streams_text:
                        await turn.sink.text_delta("".join(streamed))
                usage = getattr(chunk, "usage_metadata", None)
                if usage:
                    output_tokens = usage.get("total_tokens", 0) or output_tokens
            return "".join(streamed).strip(), output_tokens

        def classify(exc: BaseException) -> ProviderError | None:
            error = self.classify_llm_error(exc)
            if error is not None and streamed:  # never retry once the user saw tokens
                error.retryable = False
            return error

        text, tokens = await call_with_retries(
            generate, classify=classify, attempts=self.settings.provider_retries + 1, breaker=self.llm_breaker,
        )
        if not text:
            raise VoicebotError("empty LLM reply", user_message="I couldn't come up with an answer. Could you rephrase?")
        turn.reply_text = text
        turn.tokens = tokens or estimate_tokens(text)
        # Stored while the voice is synthesized; awaited before anything is delivered.
        turn.reply_commit = asyncio.ensure_future(self.store.add_message(
            turn.chat_id, "assistant", text, turn_id=turn.record.id,
            tokens=estimate_tokens(text), turn_state=TurnState.REPLIED,
        ))

    @staticmethod
    async def _reply_stored(turn: TurnContext) -> None:
        """Wait for the answer's commit (the ledger says REPLIED before the user sees it)."""
        commit, turn.reply_commit = turn.reply_commit, None
        if commit is not None:
            await commit

    def _voice_enabled(self, chat: ChatSettings) -> bool:
        return self.settings.voice_replies if chat.voice_enabled is None else chat.voice_enabled

    async def _speak(self, turn: TurnContext) -> None:
        assert turn.chat is not None and turn.reply_text is not None
        if self.tts is None or not self._voice_enabled(turn.chat) or not turn.voice_allowed:
            return
        spoken = to_spoken_text(turn.reply_text, self.settings.max_reply_chars_spoken)
        if not spoken:
            return
        await turn.sink.stage(Stage.SPEAKING)
        try:
            turn.voice = await self.tts.synthesize(spoken, self.settings.voice_id_for(turn.chat.speaker))
        except VoicebotError as error:
            log.warning("voice synthesis failed, sending text only: %s", error)
        else:
            turn.tts_chars = len(spoken)

    async def _deliver(self, turn: TurnContext) -> None:
        assert turn.chat is not None and turn.record is not None and turn.reply_text is not None
        await self._reply_stored(turn)
        show = turn.chat.transcript_enabled
        reply = Reply(
            text=turn.reply_text,
            transcript=turn.user_text if turn.from_voice else None,
            language=turn.language,
            voice=turn.voice,
            show_transcript=self.settings.show_transcript if show is None else show,
            reply_to_message_id=turn.message.message_id,
            thread_id=turn.message.thread_id,
        )
        if turn.voice is None and self.tts is not None and self._voice_enabled(turn.chat):
            reply.notes.append("voice unavailable" if turn.voice_allowed else "voice allowance used")
        try:
            await turn.sink.deliver(reply)
        except Exception:  # noqa: BLE001 - the turn stays REPLIED and is delivered on redelivery
            log.exception("delivery failed for %s/%s", turn.message.platform, turn.message.message_id)
            turn.outcome = Outcome.UNDELIVERED
            return
        await self.store.finish_turn(
            turn.record.id, turn.message.platform, turn.message.user_id,
            audio_seconds=turn.audio_seconds, tokens=turn.tokens, tts_chars=turn.tts_chars,
        )
        turn.reply = reply
        turn.outcome = Outcome.ANSWERED

    # --- after the turn ----------------------------------------------------------------------

    def _maybe_render_video(self, turn: TurnContext) -> None:
        chat = turn.chat
        if self.avatar is None or chat is None or not chat.video_enabled:
            return
        task = asyncio.create_task(self._render_video(turn))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _render_video(self, turn: TurnContext) -> None:
        assert self.avatar is not None and turn.reply is not None
        try:
            await turn.sink.stage(Stage.RENDERING_VIDEO)
            video = await self.avatar.render(turn.reply.text, turn.voice)
            await turn.sink.deliver_video(video, turn.reply)
        except Exception as error:  # noqa: BLE001 - text and voice are out already
            log.warning("avatar clip failed for %s/%s: %s", turn.message.platform, turn.message.message_id, error)
            # No clip is coming: a sink showing "recording a video" stops (optional method).
            video_failed = getattr(turn.sink, "video_failed", None)
            if video_failed is not None:
                try:
                    await video_failed()
                except Exception:  # noqa: BLE001 - decoration only
                    log.debug("video_failed raised", exc_info=True)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for background work (avatar clips) to finish, cancelling what overruns."""
        if not self._background:
            return
        done, pending = await asyncio.wait(set(self._background), timeout=timeout)
        for task in pending:
            task.cancel()

    async def aclose(self) -> None:
        await self.drain()
        await self.locks.aclose()
        await self.gate.rate.aclose()
