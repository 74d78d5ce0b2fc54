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


def redis_client(url: str, *, max_connections: int = 20, wait: float = 10.0) -> Any:
    """A redis-py asyncio client with a bounded pool and retries on a lost connection.

    At most ``max_connections`` connections; a caller waits up to ``wait`` seconds for a free
    one. A connection the server dropped (a restart, ``CLIENT KILL``, an idle timeout) is
    noticed when it is taken from the pool and replaced; a command whose connection breaks
    under it is sent again on a new one, up to three times with a short backoff. Connections
    are named ``voicebot-<pid>`` (``CLIENT LIST`` shows which worker holds which).
    """
    import os

    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff

    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        client_name=f"voicebot-{os.getpid()}",
    )
    return redis.Redis.from_pool(pool)


def lock_name(key: Hashable) -> str:
    return "voicebot:chat:" + ":".join(str(part) for part in (key if isinstance(key, tuple) else (key,)))


class RedisChatLocks(ChatLocks):
    """A Redis lock per chat on top of the local one (redis-py's Lock: SET NX PX + token).

    The lease is renewed while the turn runs, so a slow local model never loses it, and a
    crashed worker's lock expires after ``lease`` seconds instead of blocking the chat.
    """

    def __init__(self, url: str, *, lease: float = 30.0, wait: float = 120.0, max_connections: int = 20) -> None:
        super().__init__()
        self._redis = redis_client(url, max_connections=max_connections)
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
    keeps one connection (from ``engine``'s pool) for the length of its turn, so ``engine``
    should not be the store's: lock holders could take every connection the turns need.
    ``dispose`` closes ``engine`` with the locks.
    """

    def __init__(self, engine: Any, *, wait: float = 120.0, poll: float = 0.02, dispose: bool = False) -> None:
        super().__init__()
        self._engine = engine
        self._wait = wait
        self._poll = poll
        self._dispose = dispose

    async def aclose(self) -> None:
        if self._dispose:
            await self._engine.dispose()

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
                            await self._unlock(connection, lock_id, key)
                        return
                if loop.time() > deadline:
                    raise TimeoutError(f"advisory lock for {lock_name(key)} not acquired in {self._wait:.0f}s")
                await asyncio.sleep(self._poll)

    @staticmethod
    async def _unlock(connection: Any, lock_id: int, key: Hashable) -> None:
        """Release the advisory lock; if the connection broke, drop it (its locks went with it)."""
        from sqlalchemy import text

        try:
            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
            await connection.commit()
        except Exception as exc:  # noqa: BLE001 - the turn is done; never fail it here
            log.warning("chat lock %s: connection lost while held (%s); dropping it", lock_name(key),
                        type(exc).__name__)
            with contextlib.suppress(Exception):
                await connection.invalidate()  # closed, never back in the pool holding a lock
