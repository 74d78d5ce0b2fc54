"""The gate: who may talk to the bot, how often, and how much input a turn may carry."""

from __future__ import annotations

import time
import uuid
from collections import deque

from bot.config import Settings
from bot.errors import AudioTooLongError, BudgetExceededError, NotAllowedError, RateLimitedError, VoicebotError
from bot.messages import IncomingMessage
from storage.store import UsageTotals


class AccessList:
    """Optional allow-lists of user and chat ids (empty = everyone).

    A user or chat on either list is let in; the lists are checked on every path
    (messages, commands, callbacks) by the pipeline, not by adapters.
    """

    def __init__(self, users: list[str], chats: list[str]) -> None:
        self._users = frozenset(users)
        self._chats = frozenset(chats)

    @property
    def restricted(self) -> bool:
        return bool(self._users or self._chats)

    def allows(self, message: IncomingMessage) -> bool:
        if not self.restricted:
            return True
        return message.user_id in self._users or message.chat_id in self._chats


class RateLimiter:
    """A sliding window of ``limit`` messages per ``window`` seconds, per user, in this process.

    ``check`` raises :class:`RateLimitedError` with the wait; ``first_refusal`` lets the
    caller answer a flooding user once per window instead of once per message.
    """

    def __init__(self, limit: int, window: float, clock=time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._refused_until: dict[str, float] = {}

    async def check(self, user: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock()
        hits = self._hits.setdefault(user, deque())
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            raise RateLimitedError(self.window - (now - hits[0]))
        hits.append(now)
        if len(self._hits) > 10_000:  # forget idle users now and then
            self._prune(now)

    def first_refusal(self, user: str, wait: float) -> bool:
        """True the first time ``user`` is refused in this window."""
        now = self._clock()
        if self._refused_until.get(user, 0.0) > now:
            return False
        self._refused_until[user] = now + wait
        return True

    def _prune(self, now: float) -> None:
        for user in [u for u, h in self._hits.items() if not h or now - h[-1] >= self.window]:
            del self._hits[user]

    async def aclose(self) -> None:
        return None


class RedisRateLimiter(RateLimiter):
    """The same sliding window kept in Redis (a sorted set per user), shared by all workers."""

    def __init__(self, url: str, limit: int, window: float, clock=time.time, *, max_connections: int = 20) -> None:
        super().__init__(limit, window, clock)
        from bot.ordering import redis_client

        self._redis = redis_client(url, max_connections=max_connections)

    async def check(self, user: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock()
        key = f"voicebot:rate:{user}"
        member = f"{now:.6f}:{uuid.uuid4().hex[:8]}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, 0, now - self.window)
            pipe.zadd(key, {member: now})
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.expire(key, int(self.window) + 1)
            _, _, count, oldest, _ = await pipe.execute()
        if count > self.limit:
            await self._redis.zrem(key, member)
            first = oldest[0][1] if oldest else now
            raise RateLimitedError(self.window - (now - first))

    async def aclose(self) -> None:
        await self._redis.aclose()


class TooMuchTextError(VoicebotError):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"text {length} > {limit} chars",
            user_message=f"That message is too long ({length} characters). Please keep it under {limit}.",
        )


class AudioTooLargeError(VoicebotError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"audio {size} > {limit} bytes",
            user_message=f"That audio file is too large ({size / 1e6:.1f} MB). The limit is {limit / 1e6:.0f} MB.",
        )


class Gate:
    """Access, rate and size checks, in the order the pipeline needs them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.access = AccessList(settings.allowed_user_ids, settings.allowed_chat_ids)
        self.rate: RateLimiter = (
            RedisRateLimiter(settings.redis_url, settings.rate_limit_messages, settings.rate_limit_window,
                             max_connections=settings.redis_max_connections)
            if settings.redis_url
            else RateLimiter(settings.rate_limit_messages, settings.rate_limit_window)
        )
        self._refused: set[str] = set()

    def admit(self, message: IncomingMessage) -> None:
        if not self.access.allows(message):
            raise NotAllowedError(f"user {message.user_id} chat {message.chat_id} not allowed")

    def first_refusal(self, message: IncomingMessage) -> bool:
        """Refused users hear the polite refusal once per process, then silence."""
        key = f"{message.platform}:{message.user_id}"
        if key in self._refused:
            return False
        self._refused.add(key)
        return True

    def check_input(self, message: IncomingMessage) -> None:
        if message.text is not None and len(message.text) > self.settings.max_text_chars:
            raise TooMuchTextError(len(message.text), self.settings.max_text_chars)
        audio = message.audio
        if audio is None:
            return
        declared = audio.declared_seconds
        if declared is not None and declared > self.settings.max_audio_seconds:
            raise AudioTooLongError(declared, self.settings.max_audio_seconds)
        size = max(len(audio.data), audio.declared_bytes or 0)
        if size > self.settings.max_audio_bytes:
            raise AudioTooLargeError(size, self.settings.max_audio_bytes)

    async def check_rate(self, message: IncomingMessage) -> None:
        await self.rate.check(f"{message.platform}:{message.user_id}")

    @property
    def has_budgets(self) -> bool:
        s = self.settings
        return bool(s.daily_audio_seconds or s.daily_tokens or s.daily_tts_chars)

    def check_budget(self, used: UsageTotals, *, voice_note: bool = False) -> None:
        """Raise when today's usage reached a budget this turn needs: LLM tokens for any answer,
        listening seconds for a voice note. A used-up voice budget refuses nothing: the answer
        comes as text only (:meth:`voice_budget_left`)."""
        s = self.settings
        if s.daily_tokens and used.tokens >= s.daily_tokens:
            raise BudgetExceededError("conversation")
        if voice_note and s.daily_audio_seconds and used.audio_seconds >= s.daily_audio_seconds:
            raise BudgetExceededError("listening")

    def voice_budget_left(self, used: UsageTotals) -> bool:
        limit = self.settings.daily_tts_chars
        return not limit or used.tts_chars < limit
