"""Builds a ready :class:`VoiceBot` from settings: store (migrated), providers, pipeline.

Adapters hold one VoiceBot and call :meth:`VoiceBot.handle` for each incoming message.
"""

from __future__ import annotations

import gc
import logging
from typing import Self

from bot.config import Settings
from bot.errors import ConfigError
from bot.ordering import ChatLockProvider, ChatLocks, PostgresChatLocks, RedisChatLocks
from bot.messages import IncomingMessage
from bot.pipeline import Outcome, TurnPipeline
from bot.providers.registry import Providers, build_providers
from bot.sink import ReplySink
from storage.store import HistoryStore

log = logging.getLogger(__name__)

#: Connections CHAT_LOCK=postgres may hold beyond DB_POOL_SIZE: one per turn running at once.
LOCK_CONNECTIONS = 64


def chat_locks(settings: Settings, store: HistoryStore) -> ChatLockProvider:
    """The per-chat lock that fits the deployment (see ``CHAT_LOCK``)."""
    choice = settings.chat_lock
    if choice == "auto":
        choice = "redis" if settings.redis_url else "local"
    if choice == "redis":
        if not settings.redis_url:
            raise ConfigError("CHAT_LOCK=redis needs REDIS_URL.")
        return RedisChatLocks(settings.redis_url, lease=settings.chat_lock_lease,
                              max_connections=settings.redis_max_connections)
    if choice == "postgres":
        if store.engine.dialect.name != "postgresql":
            raise ConfigError("CHAT_LOCK=postgres needs a PostgreSQL DATABASE_URL.")
        # A running turn holds its lock's connection: locks get a pool of their own (up to
        # LOCK_CONNECTIONS running turns per process) so they never starve the store's.
        engine = store.sibling_engine(pool_size=settings.db_pool_size, max_overflow=LOCK_CONNECTIONS,
                                      pool_timeout=120.0)
        return PostgresChatLocks(engine, dispose=True)
    return ChatLocks()


def freeze_startup_heap() -> None:
    """Take what start-up built out of the cyclic garbage collector's sight, for good.

    A running bot holds ~175,000 tracked objects from start-up (LangChain, PTB, SQLAlchemy,
    pydantic and their modules) that live as long as the process. Python's full collections
    walked all of them every time, a pause of 100 ms and more in the middle of turns
    (bench/bench_context.py, docs/benchmarks.md). Start-up garbage is collected once, the rest
    is frozen (``gc.freeze``); what turns allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


class VoiceBot:
    def __init__(self, settings: Settings, store: HistoryStore, providers: Providers) -> None:
        self.settings = settings
        self.store = store
        self.providers = providers
        self.pipeline = TurnPipeline(
            settings,
            store,
            stt=providers.stt,
            llm=providers.llm,
            tts=providers.tts,
            avatar=providers.avatar,
            classify_llm_error=providers.classify_llm_error,
            locks=chat_locks(settings, store),
        )

    @classmethod
    async def create(cls, settings: Settings, *, migrate: bool = True) -> Self:
        providers = build_providers(settings)
        store = HistoryStore.from_url(
            settings.database_url, pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout,
        )
        if migrate:
            await store.migrate()
        log.info("storage: %s", store.url)
        return cls(settings, store, providers)

    @property
    def commands(self):  # noqa: ANN201 - bot.commands.Commands
        return self.pipeline.commands

    async def handle(self, message: IncomingMessage, sink: ReplySink) -> Outcome:
        return await self.pipeline.handle(message, sink)

    async def aclose(self) -> None:
        await self.pipeline.aclose()
        await self.providers.aclose()
        await self.store.aclose()
