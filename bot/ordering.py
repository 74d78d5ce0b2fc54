"""Per-chat ordering: one chat's turns run one after another, different chats in parallel.

In one process an asyncio lock per chat key does it (:class:`ChatLocks`): created on demand,
dropped when nobody holds or waits for it, FIFO for waiters. When several worker processes
serve one bot, a chat's lock must be shared: :class:`RedisChatLocks` (``REDIS_URL``) and
:class:`PostgresChatLocks` (advisory locks) take a cross-process lock *after* the local one,
so a process never has two of its own turns of one chat contending across the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ChatLockProvider(Protocol):
    def hold(self, key: Hashable) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def aclose(self) -> None: ...


class ChatLocks:
    """In-process per-chat locks."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def aclose(self) -> None:
        return None


def lock_name(key: Hashable) -> str:
    return "voicebot:chat:" + ":".join(str(part) for part in (key if isinstance(key, tuple) else (key,)))


class RedisChatLocks(ChatLocks):
    """A Redis lock per chat on top of the local one (redis-py's Lock: SET NX PX + token).

    The lease is renewed while the turn runs, so a slow local model never loses it, and a
    crashed worker's lock expires after ``lease`` seconds instead of blocking the chat.
    """

    def __init__(self, url: str, *, lease: float = 30.0, wait: float = 120.0) -> None:
        super().__init__()
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._lease = lease
        self._wait = wait

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        async with super().hold(key):
            lock = self._redis.lock(lock_name(key), timeout=self._lease, sleep=0.02,
                                    blocking_timeout=self._wait, raise_on_release_error=False)
            if not await lock.acquire():
                raise TimeoutError(f"chat lock {lock_name(key)} not acquired in {self._wait:.0f}s")
            renew = asyncio.create_task(self._renew(lock))
            try:
                yield
            finally:
                renew.cancel()
                with contextlib.suppress(Exception):
                    await lock.release()

    async def _renew(self, lock: Any) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await lock.reacquire()
            except Exception as exc:  # noqa: BLE001 - keep the turn going; log the risk
                log.warning("could not renew %s: %s", lock.name, exc)

    async def aclose(self) -> None:
        await self._redis.aclose()


def advisory_key(key: Hashable) -> int:
    """A stable signed 64-bit id for PostgreSQL's advisory lock functions."""
    digest = hashlib.blake2b(lock_name(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresChatLocks(ChatLocks):
    """A PostgreSQL session advisory lock per chat on top of the local one.

    Waiting polls ``pg_try_advisory_lock`` so a waiting chat holds no connection; the holder
    keeps one connection (from ``engine``'s pool) for the length of its turn.
    """

    def __init__(self, engine: Any, *, wait: float = 120.0, poll: float = 0.02) -> None:
        super().__init__()
        self._engine = engine
        self._wait = wait
        self._poll = poll

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        from sqlalchemy import text

        lock_id = advisory_key(key)
        async with super().hold(key):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._wait
            while True:
                async with self._engine.connect() as connection:
                    got = await connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id})
                    if got:
                        await connection.commit()
                        try:
                            yield
                        finally:
                            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                            await connection.commit()
                        return
                if loop.time() > deadline:
                    raise TimeoutError(f"advisory lock for {lock_name(key)} not acquired in {self._wait:.0f}s")
                await asyncio.sleep(self._poll)
