"""Outgoing Bot API calls paced to Telegram's flood limits, with 429s retried per chat.

PTB's ``AIORateLimiter`` is the reference implementation of ``BaseRateLimiter``; this one keeps
its shape but fits a bot that streams and shows chat actions:

- the group budget (20 messages a minute) is spent only by calls that post a new message, not
  by chat actions or edits (their callers pace those), so a busy turn does not starve the reply;
- a ``RetryAfter`` pauses only the chat it came from, not every chat of the bot;
- ``rate_limit_args`` is a :class:`Retries`, the number of retries for one call; ``Retries(0)``
  means none: chat actions and the text streamer ask for that, so a 429 skips a stale action or
  edit instead of resending it after the wait. (A plain ``0`` would never arrive: PTB's ExtBot
  drops a falsy ``rate_limit_args`` on its way to the limiter.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiolimiter import AsyncLimiter
from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter
from telegram.warnings import PTBDeprecationWarning

log = logging.getLogger(__name__)

#: Methods that post a new message and so count against a group's per-minute budget.
POSTING_METHODS = frozenset(
    {
        "sendMessage", "sendVoice", "sendVideo", "sendAudio", "sendDocument", "sendPhoto",
        "sendAnimation", "sendVideoNote", "sendMediaGroup", "sendSticker", "copyMessage",
        "forwardMessage",
    }
)

#: Seconds added to Telegram's ``retry_after`` so the retry does not land a hair too early.
RETRY_MARGIN = 0.1

ApiCall = Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Retries:
    """``rate_limit_args`` for one call: how often a 429 is retried (an object, so 0 is truthy).

    ``on_call`` is called each time the request is handed to the HTTP client, after any pacing
    or pause: from then on Telegram gets it, whether or not the caller waits for the answer.
    """

    count: int
    on_call: Callable[[], None] | None = None


#: For calls a later one supersedes (chat actions, the streamed message's edits).
NO_RETRIES = Retries(0)


def period_seconds(owner: object, attribute: str) -> float | None:
    """A PTB duration attribute (``Voice.duration``, ``RetryAfter.retry_after``) in seconds.

    PTB 22 returns an int or a timedelta depending on ``PTB_TIMEDELTA`` and warns about the
    int form; this reads either without the warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = getattr(owner, attribute, None)
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


async def sleep_unless(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, waking early when ``event`` is set (a stop, a stream closing)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, seconds))


def _group_key(chat_id: object) -> int | str | None:
    """The key of a group or channel chat (negative ids, ``@names``); None for private chats."""
    with contextlib.suppress(ValueError, TypeError):
        chat_id = int(chat_id)  # type: ignore[arg-type]
    if isinstance(chat_id, int):
        return chat_id if chat_id < 0 else None
    return chat_id if isinstance(chat_id, str) else None


class ChatRateLimiter(BaseRateLimiter[Retries]):
    """Overall and per-group pacing plus per-chat handling of ``RetryAfter``.

    ``max_retries`` retries a call that got a 429 after waiting what Telegram asked for, unless
    that wait is longer than ``max_wait`` seconds (then the error reaches the caller at once).
    """

    def __init__(
        self,
        overall_per_second: float = 30,
        group_per_minute: float = 20,
        max_retries: int = 3,
        max_wait: float = 120.0,
    ) -> None:
        self._overall = AsyncLimiter(overall_per_second, 1) if overall_per_second else None
        self._group_rate = group_per_minute
        self._groups: dict[int | str, AsyncLimiter] = {}
        self._paused_until: dict[object, float] = {}
        self.max_retries = max_retries
        self.max_wait = max_wait

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    def _group_limiter(self, group: int | str) -> AsyncLimiter:
        if len(self._groups) > 512:  # forget groups that are idle again
            for key, limiter in list(self._groups.items()):
                if key != group and limiter.has_capacity(limiter.max_rate):
                    del self._groups[key]
        return self._groups.setdefault(group, AsyncLimiter(self._group_rate, 60))

    async def _wait_while_paused(self, chat: object) -> None:
        until = self._paused_until.get(chat)
        if until is None:
            return
        delay = until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._paused_until.get(chat, 0) <= time.monotonic():
            self._paused_until.pop(chat, None)

    async def process_request(
        self,
        callback: ApiCall,
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: Retries | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        retries = self.max_retries if rate_limit_args is None else rate_limit_args.count
        chat = data.get("chat_id")
        group = _group_key(chat) if endpoint in POSTING_METHODS and self._group_rate else None
        for attempt in range(retries + 1):
            if chat is not None:
                await self._wait_while_paused(chat)
            try:
                async with contextlib.AsyncExitStack() as limits:
                    if group is not None:
                        await limits.enter_async_context(self._group_limiter(group))
                    if chat is not None and self._overall is not None:
                        await limits.enter_async_context(self._overall)
                    if rate_limit_args is not None and rate_limit_args.on_call is not None:
                        rate_limit_args.on_call()
                    return await callback(*args, **kwargs)
            except RetryAfter as error:
                wait = period_seconds(error, "retry_after") or 1.0
                if chat is not None:
                    self._paused_until[chat] = time.monotonic() + wait + RETRY_MARGIN
                if attempt >= retries or wait > self.max_wait:
                    raise
                log.info("Telegram asked to wait %.1f s before %s (retry %d of %d)", wait, endpoint, attempt + 1, retries)
                if chat is None:
                    await asyncio.sleep(wait + RETRY_MARGIN)
        raise AssertionError("unreachable")  # the loop returns or raises
