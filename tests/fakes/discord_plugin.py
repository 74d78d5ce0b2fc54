"""Pytest fixtures for the fake Discord and for our Discord bot running against it.

- ``discord_fake``: a :class:`FakeDiscord` on the test's event loop.
- ``discord_env``: every variable ``voicebot discord`` needs to run against the fake Discord
  and the Groq / ElevenLabs / D-ID fakes (for a subprocess's ``env`` or ``monkeypatch``).
- ``discord_bot``: the real :class:`DiscordBot` (real discord.py client) logged in to the fake
  and ready, with :class:`RecordingVoiceClient` standing in for discord.py's voice connection;
  stopped the way ``voicebot discord`` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import discord
import pytest
import pytest_asyncio
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord_bot import DiscordBot, point_at_endpoints, run
from bot.config import Settings
from bot.runtime import VoiceBot
from tests.fakes.discord_api import FakeDiscord


class RecordingVoiceClient(discord.VoiceProtocol):
    """Stands in for discord.VoiceClient: joins through the gateway (op 4) and keeps what it is given to play.

    It does the gateway half of a voice connection for real (the fake answers with
    VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE) but opens no voice WebSocket or UDP socket.
    ``play`` records the source and finishes at once, on a thread, as discord.py's player does.
    """

    instances: ClassVar[list[RecordingVoiceClient]] = []

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        super().__init__(client, channel)
        self.played: list[discord.AudioSource] = []
        self.connected = False
        self.server_update = asyncio.Event()
        RecordingVoiceClient.instances.append(self)

    async def on_voice_state_update(self, data: Any) -> None:
        return None

    async def on_voice_server_update(self, data: Any) -> None:
        self.server_update.set()

    async def connect(self, *, timeout: float, reconnect: bool, self_deaf: bool = False,
                      self_mute: bool = False) -> None:
        await self.channel.guild.change_voice_state(channel=self.channel, self_deaf=self_deaf, self_mute=self_mute)
        await asyncio.wait_for(self.server_update.wait(), timeout)
        self.connected = True

    async def move_to(self, channel: discord.abc.Snowflake | None) -> None:
        await self.channel.guild.change_voice_state(channel=channel)

    async def disconnect(self, *, force: bool) -> None:
        if self.connected:
            await self.channel.guild.change_voice_state(channel=None)
        self.connected = False
        self.cleanup()

    def is_connected(self) -> bool:
        return self.connected

    def is_playing(self) -> bool:
        return False

    def play(self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None,
             **_: Any) -> None:
        self.played.append(source)
        if after is not None:
            asyncio.get_running_loop().run_in_executor(None, after, None)


@dataclass(slots=True)
class RunningDiscordBot:
    fake: FakeDiscord
    client: DiscordBot
    voicebot: VoiceBot
    stop: asyncio.Event
    task: asyncio.Task[None]


def discord_variables(fake: FakeDiscord) -> dict[str, str]:
    return {
        "DISCORD_BOT_TOKEN": fake.token,
        "DISCORD_API_BASE_URL": fake.api_base_url,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
    }


@pytest_asyncio.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture
def discord_env(discord_fake: FakeDiscord, fake_env: dict[str, str], db_url: str) -> dict[str, str]:
    return {
        **fake_env,
        **discord_variables(discord_fake),
        "DATABASE_URL": db_url,
        "RATE_LIMIT_MESSAGES": "1000",
        "PROVIDER_RETRIES": "0",
    }


@pytest.fixture
def discord_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore discord.py's class-level endpoints after a test points them at a fake."""
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)


async def start_discord_bot(fake: FakeDiscord, settings: Settings) -> RunningDiscordBot:
    """Our Discord bot on ``settings``, logged in to ``fake`` and ready."""
    voicebot = await VoiceBot.create(settings)
    point_at_endpoints(settings)
    client = DiscordBot(voicebot, voice_client_class=RecordingVoiceClient, guild_ready_timeout=0.05)
    stop = asyncio.Event()
    token = Settings.secret(settings.discord_bot_token) or ""
    task = asyncio.create_task(run(client, token, stop))
    try:
        await _until_ready(client, task, timeout=15.0)
    except BaseException:
        await stop_discord_bot(RunningDiscordBot(fake, client, voicebot, stop, task))
        raise
    return RunningDiscordBot(fake, client, voicebot, stop, task)


async def _until_ready(client: DiscordBot, task: asyncio.Task[None], timeout: float) -> None:
    """Wait for discord.py's ready state (``wait_until_ready`` refuses to run before login)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not client.is_ready():
        if task.done():
            task.result()  # raises what stopped the bot
            raise RuntimeError("the Discord bot stopped before it was ready")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the Discord bot was not ready after {timeout} s")
        await asyncio.sleep(0.02)


async def stop_discord_bot(running: RunningDiscordBot) -> None:
    running.stop.set()
    try:
        await asyncio.wait_for(running.task, 15)
    finally:
        with contextlib.suppress(Exception):
            await running.voicebot.aclose()


@pytest_asyncio.fixture
async def discord_bot(
    discord_fake: FakeDiscord,
    discord_env: dict[str, str],
    discord_endpoints: None,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[RunningDiscordBot]:
    for name, value in discord_env.items():
        monkeypatch.setenv(name, value)
    RecordingVoiceClient.instances.clear()
    running = await start_discord_bot(discord_fake, Settings())
    try:
        yield running
    finally:
        await stop_discord_bot(running)
