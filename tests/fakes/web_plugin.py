"""Pytest fixtures for the web page (``adapters.web``).

- ``start_web``: starts the real page server (:func:`adapters.web.start_site`, what
  ``voicebot web`` runs) on the test's event loop, on a free 127.0.0.1 port, against the
  Groq/ElevenLabs/D-ID fakes and a fresh SQLite file; keyword arguments override settings.
  Call it again after :meth:`RunningWeb.stop` to restart on the same database. Everything
  still running is stopped at teardown.
- :func:`offline_web_settings`: settings for the offline engines, or a skip without them.
- :meth:`RunningWeb.client`: an aiohttp session for the page's API that keeps the session
  cookie (pass ``cookie_jar`` to be the same browser across a restart).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from adapters.web import start_site
from bot.config import Settings
from bot.runtime import VoiceBot

StartWeb = Callable[..., Awaitable["RunningWeb"]]


@dataclass(slots=True)
class RunningWeb:
    bot: VoiceBot
    runner: web.AppRunner
    url: str  # http://127.0.0.1:<port>/
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)
    stopped: bool = False

    def client(self, cookie_jar: aiohttp.CookieJar | None = None) -> aiohttp.ClientSession:
        """A client of this server; closed by :meth:`stop`."""
        jar = cookie_jar if cookie_jar is not None else aiohttp.CookieJar(unsafe=True)  # unsafe: IP hosts
        session = aiohttp.ClientSession(base_url=self.url, cookie_jar=jar)
        self.sessions.append(session)
        return session

    async def stop(self) -> None:
        """Stop serving and close the bot, as ``serve`` does when told to stop."""
        if self.stopped:
            return
        self.stopped = True
        for session in self.sessions:
            await session.close()
        await self.runner.cleanup()
        await self.bot.aclose()


def web_settings(db_url: str, **overrides: object) -> Settings:
    """Settings for a test server: a free port, no rate limit to trip over, no avatar unless asked."""
    values: dict[str, object] = {
        "database_url": db_url, "web_port": 0, "rate_limit_messages": 1000,
        "avatar_provider": "none", "provider_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def offline_web_settings(db_url: str) -> Settings:
    """Settings for the offline engines alone; skips the test when they are not installed."""
    local_models = pytest.importorskip("bot.providers.local_models")
    missing = [kind for kind in ("stt", "llm", "tts") if not local_models.available(kind)]
    if missing:
        pytest.skip(f"offline engines not installed ({', '.join(missing)}): `make venv` installs them")
    return web_settings(db_url, stt_provider="local", llm_provider="local", tts_provider="local")


@pytest_asyncio.fixture
async def start_web(
    fake_env: dict[str, str], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartWeb]:
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    running: list[RunningWeb] = []

    async def start(**overrides: object) -> RunningWeb:
        bot = await VoiceBot.create(web_settings(db_url, **overrides))
        try:
            runner, url = await start_site(bot)
        except BaseException:
            await bot.aclose()
            raise
        page = RunningWeb(bot, runner, url)
        running.append(page)
        return page

    yield start
    for page in running:
        await page.stop()
