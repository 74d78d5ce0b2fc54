"""Reply audio and avatar clips kept in memory for the page to fetch.

The database keeps a conversation's text; voice notes and clips live here, for this process
only, each under an unguessable token and handed out only to the chat it belongs to. The
shelf is bounded by total bytes (the oldest items go first), so a long session cannot grow
the process without limit.

An avatar clip arrives after its reply (the core renders it in the background), so the page
asks for it by turn and waits: :meth:`MediaShelf.wait_clip` resolves when the clip is put
here, or gives up after a timeout.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_PENDING_CLIPS = 256


@dataclass(frozen=True, slots=True)
class MediaItem:
    chat: str
    data: bytes
    mime_type: str


class MediaShelf:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, MediaItem] = OrderedDict()
        self._size = 0
        self._clips: OrderedDict[tuple[str, str], asyncio.Future[str]] = OrderedDict()

    @property
    def size(self) -> int:
        return self._size

    def put(self, chat: str, data: bytes, mime_type: str) -> str:
        """Keep ``data`` for ``chat``; returns its token. Evicts the oldest items past the bound."""
        token = secrets.token_urlsafe(18)
        self._items[token] = MediaItem(chat, data, mime_type)
        self._size += len(data)
        while self._size > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._size -= len(old.data)
        return token

    def get(self, chat: str, token: str) -> MediaItem | None:
        """The item under ``token`` if it belongs to ``chat``, else None (also when evicted)."""
        item = self._items.get(token)
        return item if item is not None and item.chat == chat else None

    def _clip_future(self, chat: str, turn: str) -> asyncio.Future[str]:
        key = (chat, turn)
        future = self._clips.get(key)
        if future is None:
            future = self._clips[key] = asyncio.get_running_loop().create_future()
            while len(self._clips) > MAX_PENDING_CLIPS:
                _, old = self._clips.popitem(last=False)
                old.cancel()
        return future

    def expect_clip(self, chat: str, turn: str) -> None:
        """Note that ``turn`` of ``chat`` may get a clip, so the page can wait for it."""
        self._clip_future(chat, turn)

    def put_clip(self, chat: str, turn: str, data: bytes, mime_type: str) -> str:
        """Keep a turn's avatar clip and wake whoever waits for it; returns its token."""
        token = self.put(chat, data, mime_type)
        future = self._clip_future(chat, turn)
        if not future.done():
            future.set_result(token)
        return token

    async def wait_clip(self, chat: str, turn: str, timeout: float) -> str | None:
        """The token of ``turn``'s clip once it is here; None if none is expected or it is late."""
        future = self._clips.get((chat, turn))
        if future is None:
            return None
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if not done or future.cancelled():
            return None  # late, or the shelf was closed because the server is stopping
        return future.result()

    def close(self) -> None:
        """Release every waiter (the server is stopping)."""
        for future in self._clips.values():
            future.cancel()
        self._clips.clear()

