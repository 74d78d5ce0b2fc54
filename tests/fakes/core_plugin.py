"""``make_bot``: VoiceBots on a test's SQLite file, pointed at the provider fakes.

A test module changes the defaults by overriding the ``bot_defaults`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.config import Settings
from bot.runtime import VoiceBot


@pytest.fixture
def bot_defaults() -> dict[str, Any]:
    return {"provider_retries": 2, "provider_timeout": 5.0, "rate_limit_messages": 1000, "avatar_provider": "none"}


@pytest.fixture
async def make_bot(
    fake_env: dict[str, str], db_url: str, monkeypatch: pytest.MonkeyPatch, bot_defaults: dict[str, Any]
) -> AsyncIterator[Callable[..., Any]]:
    """A factory of started VoiceBots (closed after the test); keyword arguments override settings."""
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    bots: list[VoiceBot] = []

    async def factory(**overrides: Any) -> VoiceBot:
        bot = await VoiceBot.create(Settings(**{"database_url": db_url, **bot_defaults, **overrides}))
        bots.append(bot)
        return bot

    yield factory
    for bot in bots:
        await bot.aclose()
