"""Several workers, one bot: per-chat locks and rate limits shared through Redis or PostgreSQL,
and two VoiceBots on one PostgreSQL database answering interleaved updates once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.config import Settings
from bot.errors import RateLimitedError
from bot.gate import RedisRateLimiter
from bot.messages import IncomingMessage
from bot.ordering import ChatLocks, PostgresChatLocks, RedisChatLocks
from bot.pipeline import Outcome
from bot.runtime import VoiceBot
from bot.sink import SilentSink
from storage.store import HistoryStore
from tests.fakes.groq import FakeGroq
from tests.services import REDIS_URL, skip_without_redis, unique


async def _overlaps(make_locks: Callable[[], ChatLocks], same_key: bool) -> bool:
    """Do two workers' turns overlap when both hold a chat lock at once?"""
    first, second = make_locks(), make_locks()
    inside = 0
    overlapped = False
    key_a = ("test", unique("chat"))
    key_b = key_a if same_key else ("test", unique("chat"))

    async def turn(locks: ChatLocks, key: tuple[str, str]) -> None:
        nonlocal inside, overlapped
        async with locks.hold(key):
            inside += 1
            overlapped = overlapped or inside > 1
            await asyncio.sleep(0.2)
            inside -= 1

    try:
        await asyncio.gather(turn(first, key_a), turn(second, key_b))
    finally:
        await first.aclose()
        await second.aclose()
    return overlapped


async def test_redis_chat_lock_serialises_one_chat_across_workers() -> None:
    await skip_without_redis()
    assert not await _overlaps(lambda: RedisChatLocks(REDIS_URL), same_key=True)
    assert await _overlaps(lambda: RedisChatLocks(REDIS_URL), same_key=False)


async def test_redis_lock_lease_is_renewed_during_a_long_turn() -> None:
    await skip_without_redis()
    holder, other = RedisChatLocks(REDIS_URL, lease=0.3), RedisChatLocks(REDIS_URL, lease=0.3, wait=0.2)
    key = ("test", unique("slow"))
    try:
        async with holder.hold(key):
            await asyncio.sleep(0.8)  # well past the lease: renewal must keep it ours
            with pytest.raises(TimeoutError):
                async with other.hold(key):
                    pass
    finally:
        await holder.aclose()
        await other.aclose()


async def test_postgres_advisory_lock_serialises_one_chat(pg_url: str) -> None:
    stores = [HistoryStore.from_url(pg_url), HistoryStore.from_url(pg_url)]
    try:
        engines = iter([s.engine for s in stores] * 2)
        assert not await _overlaps(lambda: PostgresChatLocks(next(engines)), same_key=True)
        assert await _overlaps(lambda: PostgresChatLocks(next(engines)), same_key=False)
    finally:
        for store in stores:
            await store.aclose()


async def test_redis_rate_limit_is_shared_by_workers() -> None:
    await skip_without_redis()
    user = unique("user")
    workers = [RedisRateLimiter(REDIS_URL, limit=3, window=30), RedisRateLimiter(REDIS_URL, limit=3, window=30)]
    try:
        await workers[0].check(user)
        await workers[1].check(user)
        await workers[0].check(user)
        with pytest.raises(RateLimitedError) as refused:
            await workers[1].check(user)
        assert 0 < refused.value.wait_seconds <= 30
        await workers[1].check(unique("someone-else"))
    finally:
        for worker in workers:
            await worker.aclose()


async def test_two_workers_on_postgres_answer_interleaved_updates_once_and_in_order(
    pg_url: str, fake_env: dict[str, str], groq_fake: FakeGroq, monkeypatch: pytest.MonkeyPatch
) -> None:
    await skip_without_redis()
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(database_url=pg_url, redis_url=REDIS_URL, voice_replies=False,
                        rate_limit_messages=1000, avatar_provider="none")
    workers = [await VoiceBot.create(settings), await VoiceBot.create(settings)]
    groq_fake.latency["chat"] = 0.05
    chat = unique("chat")
    sink = SilentSink()
    try:
        messages = [
            IncomingMessage("telegram", chat, "u1", str(i), text=f"m{i}") for i in range(1, 9)
        ]
        jobs = []
        for message in messages:
            # Every update reaches both workers (a redelivery racing the original).
            jobs += [asyncio.create_task(w.handle(message, sink)) for w in workers]
            await asyncio.sleep(0.01)  # arrival order
        outcomes = await asyncio.gather(*jobs)
        assert outcomes.count(Outcome.ANSWERED) == 8 and outcomes.count(Outcome.DUPLICATE) == 8
        answered = [r.text.split(".")[0].removeprefix("You said: ") for r in sink.replies]
        assert answered == [f"m{i}" for i in range(1, 9)]
        history = await workers[0].store.recent_messages(await workers[0].store.chat_id("telegram", chat))
        assert [m.content for m in history if m.role == "user"] == [f"m{i}" for i in range(1, 9)]
    finally:
        for worker in workers:
            await worker.aclose()
