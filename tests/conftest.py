"""Shared fixtures. Fake servers live in ``tests/fakes``; every ``tests/fakes/*plugin.py``
module is registered here so each platform's fixtures are available to all tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.databases import fresh_postgres_url, postgres_unavailable
from tests.services import skip_without_redis

pytest_plugins = sorted(
    f"tests.fakes.{path.stem}" for path in (Path(__file__).parent / "fakes").glob("*plugin.py")
)

# Settings read .env and the environment; tests must see neither the developer's keys nor
# their database, only what each test sets.
_ISOLATED = (
    "GROQ_API_KEY", "GROQ_BASE_URL", "ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL", "DID_API_KEY",
    "DID_BASE_URL", "DATABASE_URL", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "STT_PROVIDER",
    "LLM_PROVIDER", "TTS_PROVIDER", "AVATAR_PROVIDER", "ALLOWED_USER_IDS", "ALLOWED_CHAT_IDS",
    "ALLOWED_GUILD_IDS", "SYSTEM_PROMPT", "BOT_NAME", "REDIS_URL",
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ISOLATED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env is read; relative DB paths land here


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'voicebot.db'}"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database of the test's own; skipped, with the reason, where none runs."""
    reason = await postgres_unavailable()
    if reason:
        pytest.skip(reason)
    async with fresh_postgres_url() as url:
        yield url


@pytest.fixture
async def redis_required() -> None:
    """Skips the test, with the reason, where no Redis runs."""
    await skip_without_redis()
