"""Pytest fixtures for the fake Telegram Bot API and a running ``voicebot telegram``.

- ``telegram_fake``: :class:`FakeTelegram` on the test's event loop; ``telegram_fake_thread``:
  the same served from a daemon thread (for subprocess tests).
- ``start_telegram_bot``: starts the real adapter (``adapters.telegram_bot.serve``, what
  ``voicebot telegram`` runs) on the test's loop against ``telegram_fake`` and the provider
  fakes, with a fresh SQLite database; keyword arguments override settings. It can be called
  again after :meth:`RunningTelegramBot.shutdown` to restart on the same database. Everything
  still running is stopped at teardown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.fakes.telegram_api import FakeTelegram

StartBot = Callable[..., Awaitable["RunningTelegramBot"]]


@dataclass(slots=True)
class RunningTelegramBot:
    """A ``serve()`` task with its VoiceBot; :meth:`shutdown` stops it like SIGTERM would."""

    voicebot: Any  # bot.runtime.VoiceBot
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self, timeout: float = 10.0) -> float:
        """Set ``stop``, wait for ``serve`` to return; the seconds it took."""
        started = time.monotonic()
        self.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        finally:
            if not self.task.done():
                self.task.cancel()
            await self.voicebot.aclose()
        return time.monotonic() - started


@pytest_asyncio.fixture
async def telegram_fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def telegram_fake_thread() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


@pytest_asyncio.fixture
async def start_telegram_bot(
    telegram_fake: FakeTelegram, fake_env: dict[str, str], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartBot]:
    from adapters.telegram_bot import serve
    from bot.config import Settings
    from bot.runtime import VoiceBot

    for name, value in {**fake_env, **telegram_fake.env(), "DATABASE_URL": db_url}.items():
        monkeypatch.setenv(name, value)
    running: list[RunningTelegramBot] = []

    async def start(**overrides: Any) -> RunningTelegramBot:
        voicebot = await VoiceBot.create(Settings(**overrides))
        stop = asyncio.Event()
        polls_before = len(telegram_fake.requests_to("/getUpdates")) + len(telegram_fake.requests_to("/setWebhook"))
        task = asyncio.create_task(serve(voicebot, stop), name="telegram-serve")
        bot = RunningTelegramBot(voicebot, stop, task)
        running.append(bot)

        def listening() -> bool:
            asked = len(telegram_fake.requests_to("/getUpdates")) + len(telegram_fake.requests_to("/setWebhook"))
            return asked > polls_before or task.done()

        await telegram_fake.wait_until(listening, timeout=15)
        if task.done():
            task.result()  # serve() failed at start: show why
        return bot

    yield start
    for bot in running:
        if not bot.task.done() or not bot.stop.is_set():
            await bot.shutdown()
