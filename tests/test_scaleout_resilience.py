"""Lost connections do not stop a worker: a VoiceBot on real PostgreSQL and Redis keeps
answering after the servers drop its connections (``pg_terminate_backend``, ``CLIENT KILL``),
between turns and in the middle of one. Only this test's connections are killed: its own
fresh database's backends, and the Redis clients named after this process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bot.config import Settings
from bot.messages import IncomingMessage
from bot.pipeline import Outcome
from bot.runtime import VoiceBot
from bot.sink import SilentSink
from storage.store import HistoryStore
from tests.fakes.groq import FakeGroq
from tests.services import REDIS_URL, unique

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("redis_required")]


async def terminate_database_connections(pg_url: str) -> int:
    """``pg_terminate_backend`` for every connection to this test's own database."""
    url = make_url(pg_url)
    admin = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="test")
    try:
        return await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()) AS killed",
            url.database,
        )
    finally:
        await admin.close()


async def kill_redis_connections() -> int:
    """``CLIENT KILL`` every Redis connection of this process's bot (named ``voicebot-<pid>``)."""
    import redis.asyncio as redis

    admin = redis.from_url(REDIS_URL)
    try:
        mine = [c for c in await admin.client_list() if c.get("name") == f"voicebot-{os.getpid()}"]
        for client in mine:
            await admin.client_kill_filter(_id=client["id"])
        return len(mine)
    finally:
        await admin.aclose()


@pytest.fixture(params=["redis", "postgres"])
async def voicebot(
    request: pytest.FixtureRequest, pg_url: str, fake_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[VoiceBot]:
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(database_url=pg_url, redis_url=REDIS_URL, chat_lock=request.param, voice_replies=False,
                        rate_limit_messages=1000, avatar_provider="none", provider_retries=0, db_pool_size=2,
                        db_max_overflow=1)
    bot = await VoiceBot.create(settings)
    try:
        yield bot
    finally:
        await bot.aclose()


async def test_connections_dropped_between_turns_are_replaced(voicebot: VoiceBot, pg_url: str) -> None:
    chat, sink = unique("chat"), SilentSink()
    assert await voicebot.handle(IncomingMessage("telegram", chat, "u1", "1", text="before"), sink) == Outcome.ANSWERED
    assert await terminate_database_connections(pg_url) >= 1  # the pool keeps its connections open
    assert await kill_redis_connections() >= 1
    for i in range(2, 5):
        outcome = await voicebot.handle(IncomingMessage("telegram", chat, "u1", str(i), text=f"after {i}"), sink)
        assert outcome == Outcome.ANSWERED
    assert [r.text.split(".")[0] for r in sink.replies] == [
        "You said: before", "You said: after 2", "You said: after 3", "You said: after 4",
    ]
    history = await voicebot.store.recent_messages(await voicebot.store.chat_id("telegram", chat))
    assert [m.content for m in history if m.role == "user"] == ["before", "after 2", "after 3", "after 4"]


async def test_connections_dropped_in_the_middle_of_a_turn(
    voicebot: VoiceBot, pg_url: str, groq_fake: FakeGroq
) -> None:
    """The chat lock's connection (an advisory lock lives on one) and the store's are cut while
    the LLM thinks: the turn still finishes, and the chat is not left locked."""
    chat, sink = unique("chat"), SilentSink()
    assert await voicebot.handle(IncomingMessage("telegram", chat, "u1", "1", text="warm up"), sink) == Outcome.ANSWERED
    groq_fake.latency["chat"] = 0.8
    turn = asyncio.create_task(voicebot.handle(IncomingMessage("telegram", chat, "u1", "2", text="during"), sink))
    await groq_fake.wait_for_requests(2, "/chat/completions", timeout=10)
    await terminate_database_connections(pg_url)
    await kill_redis_connections()
    assert await asyncio.wait_for(turn, 20) == Outcome.ANSWERED
    groq_fake.latency["chat"] = 0.0
    nxt = await asyncio.wait_for(
        voicebot.handle(IncomingMessage("telegram", chat, "u1", "3", text="after"), sink), 20
    )
    assert nxt == Outcome.ANSWERED
    assert [r.text.split(".")[0] for r in sink.replies] == ["You said: warm up", "You said: during", "You said: after"]
    # Another worker can take the chat now: nothing holds its lock any more.
    other = await VoiceBot.create(voicebot.settings, migrate=False)
    try:
        last = IncomingMessage("telegram", chat, "u1", "4", text="elsewhere")
        assert await asyncio.wait_for(other.handle(last, sink), 10) == Outcome.ANSWERED
    finally:
        await other.aclose()


async def test_the_pool_is_bounded_and_waits_for_a_free_connection(pg_url: str) -> None:
    """DB_POOL_SIZE + DB_MAX_OVERFLOW connections at most; the next caller waits for one."""
    store = HistoryStore.from_url(pg_url, pool_size=1, max_overflow=1, pool_timeout=5)
    try:
        await store.migrate()
        chat = await store.chat_id("telegram", "pool")
        # Eight concurrent writes through two connections all land.
        await asyncio.gather(*(store.add_message(chat, "user", f"m{i}") for i in range(8)))
        assert await store.count_messages(chat) == 8
        url = make_url(pg_url)
        admin = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="test")
        try:
            opened = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", url.database)
        finally:
            await admin.close()
        assert opened <= 2
        assert store.engine.pool.size() == 1  # type: ignore[attr-defined]
    finally:
        await store.aclose()


async def test_postgres_chat_locks_never_take_the_stores_connections(
    pg_url: str, fake_env: dict[str, str], groq_fake: FakeGroq, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CHAT_LOCK=postgres every running turn holds its lock's connection: more chats at
    once than the store's pool has connections must still all be answered."""
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(database_url=pg_url, chat_lock="postgres", voice_replies=False, avatar_provider="none",
                        rate_limit_messages=1000, db_pool_size=2, db_max_overflow=0, db_pool_timeout=3)
    bot = await VoiceBot.create(settings)
    groq_fake.latency["chat"] = 0.3
    try:
        turns = [bot.handle(IncomingMessage("telegram", unique("chat"), "u", "1", text="hi"), SilentSink())
                 for _ in range(6)]
        assert await asyncio.wait_for(asyncio.gather(*turns), 20) == [Outcome.ANSWERED] * 6
    finally:
        await bot.aclose()
