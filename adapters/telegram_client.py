"""The Bot API client: PTB's ``ExtBot`` plus the calls whose answers the bot does not read.

PTB turns every answer into objects. The answer to ``sendMessage``, ``editMessageText`` or
``sendVoice`` is the whole message sent, with the user's message it replies to nested inside:
building that ``Message`` costs 0.42-0.45 ms of CPU, and an update's ``to_json`` for the inbox
0.21 ms, against 4-5 ms of CPU for a whole text turn (bench/bench_units.py compares the calls
with and without the objects, and ``to_json`` with the JSON as received).
The bot needs one field of those answers (the new message's id), and the inbox wants the
update's JSON, which Telegram sent in the first place.

So these calls go through the same path as ``bot.send_message`` (``_post``: defaults, our
rate limiter, our aiohttp request, PTB's error mapping) and stop short of building objects.
Updates are still parsed into PTB's ``Update`` (the handlers use them) and keep their JSON.
"""

from __future__ import annotations

import json
from typing import Any

from telegram import InputFile, Update
from telegram.ext import ExtBot

from adapters.telegram_ratelimiter import Retries

__all__ = ["ReceivedUpdate", "TelegramClient"]

#: Seconds a ``getUpdates`` long poll may take beyond its own ``timeout`` (PTB adds the
#: request's read timeout the same way).
POLL_READ_MARGIN = 5.0

ReceivedUpdate = tuple[Update, str]  # the update, and its JSON as Telegram sent it


class TelegramClient(ExtBot[Retries]):
    """``ExtBot`` with answer-less sends. Each raises PTB's errors (``BadRequest``,
    ``Forbidden``, ``RetryAfter`` once the limiter's retries are spent) like PTB's methods."""

    async def _call(
        self, method: str, data: dict[str, Any], *, retries: Retries | None = None, timeout: float | None = None
    ) -> Any:
        """``method`` with ``data`` (``None`` values are left out); Telegram's ``result`` as JSON."""
        timeouts: dict[str, Any] = {} if timeout is None else {"read_timeout": timeout, "write_timeout": timeout}
        return await self._post(method, data, api_kwargs=self._merge_api_rl_kwargs(None, retries), **timeouts)

    async def send_text(
        self, chat_id: int, text: str, *, parse_mode: str | None = None, thread_id: int | None = None,
        reply_parameters: dict[str, Any] | None = None, retries: Retries | None = None,
    ) -> int:
        """Send a text message; its message id."""
        sent = await self._call("sendMessage", {
            "chat_id": chat_id, "text": text, "parse_mode": parse_mode, "message_thread_id": thread_id,
            "reply_parameters": reply_parameters,
        }, retries=retries)
        return int(sent["message_id"])

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, *, parse_mode: str | None = None,
        retries: Retries | None = None,
    ) -> None:
        await self._call("editMessageText", {
            "chat_id": chat_id, "message_id": message_id, "text": text, "parse_mode": parse_mode,
        }, retries=retries)

    async def send_upload(
        self, method: str, field: str, chat_id: int, data: bytes, filename: str, *, timeout: float,
        thread_id: int | None = None, reply_parameters: dict[str, Any] | None = None, **fields: Any,
    ) -> None:
        """Upload ``data`` as ``field`` of ``method`` (``sendVoice``/``voice``, ``sendVideo``/``video``)."""
        await self._call(method, {
            "chat_id": chat_id, field: InputFile(data, filename=filename), "message_thread_id": thread_id,
            "reply_parameters": reply_parameters, **fields,
        }, timeout=timeout)

    async def updates_with_json(
        self, *, offset: int | None, timeout: int, allowed_updates: list[str], limit: int | None = None
    ) -> list[ReceivedUpdate]:
        """``getUpdates``: each update parsed, beside its JSON (for the inbox)."""
        result = await self._post(
            "getUpdates",
            {"offset": offset, "timeout": timeout, "limit": limit, "allowed_updates": allowed_updates},
            read_timeout=timeout + POLL_READ_MARGIN,
        )
        received = []
        for raw in result:
            update = Update.de_json(raw, self)
            if update is not None:
                # ASCII: a lone surrogate (``"\\ud800"``, which Telegram passes on) stays escaped.
                received.append((update, json.dumps(raw, separators=(",", ":"))))
        return received
