"""Start-up and the gateway: clear errors for a missing intent or a bad token, frame compression, resuming."""

from __future__ import annotations

import asyncio
import json
import zlib

import aiohttp
import pytest
import zstandard

from adapters.discord_bot import DiscordBot, point_at_endpoints, run
from bot.config import Settings
from bot.errors import ConfigError
from bot.runtime import VoiceBot
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_plugin import RunningDiscordBot, discord_variables

pytestmark = pytest.mark.timeout(60)


async def run_until_failure(fake: FakeDiscord, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                            token: str) -> BaseException | None:
    """Run the bot against ``fake`` with ``token``; what it stopped with (None if it kept running)."""
    for name, value in {**env, **discord_variables(fake)}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    voicebot = await VoiceBot.create(settings)
    point_at_endpoints(settings)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(run(DiscordBot(voicebot), token, stop))
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            stop.set()
            await asyncio.wait_for(task, 10)
            return None
        return task.exception()
    finally:
        await voicebot.aclose()


async def test_missing_message_content_intent_is_explained(
    discord_env: dict[str, str], discord_endpoints: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeDiscord(message_content_allowed=False) as fake:
        error = await run_until_failure(fake, discord_env, monkeypatch, fake.token)
    assert isinstance(error, ConfigError)
    assert "4014" in str(error) and "MESSAGE CONTENT INTENT" in str(error)


async def test_a_refused_token_is_explained(
    discord_fake: FakeDiscord, discord_env: dict[str, str], discord_endpoints: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = await run_until_failure(discord_fake, discord_env, monkeypatch, "not-the-token")
    assert isinstance(error, ConfigError) and "DISCORD_BOT_TOKEN" in str(error)


@pytest.mark.parametrize("compress", ["zstd-stream", "zlib-stream", None])
async def test_gateway_frames_follow_the_requested_compression(discord_fake: FakeDiscord,
                                                                compress: str | None) -> None:
    query = {"v": "10", "encoding": "json", **({"compress": compress} if compress else {})}
    zstd = zstandard.ZstdDecompressor().decompressobj()
    inflate = zlib.decompressobj()
    async with aiohttp.ClientSession() as session, session.ws_connect(discord_fake.gateway_url, params=query) as ws:
        frame = await ws.receive(timeout=5)
        if compress == "zstd-stream":
            text = zstd.decompress(frame.data).decode()
        elif compress == "zlib-stream":
            assert frame.data.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH: one whole message
            text = inflate.decompress(frame.data).decode()
        else:
            assert frame.type is aiohttp.WSMsgType.TEXT
            text = frame.data
        hello = json.loads(text)
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await ws.send_json({"op": 1, "d": None})
        ack = await ws.receive(timeout=5)
        data = ack.data if isinstance(ack.data, str) else (
            zstd.decompress(ack.data) if compress == "zstd-stream" else inflate.decompress(ack.data)).decode()
        assert json.loads(data)["op"] == 11


async def test_bot_resumes_at_the_resume_gateway_url(discord_bot: RunningDiscordBot) -> None:
    fake = discord_bot.fake
    first = fake.sessions[0]
    assert first.intents is not None and first.intents & (1 << 15)  # asked for message content
    await first.send(7, None)  # RECONNECT: discord.py resumes at READY's resume_gateway_url
    for _ in range(250):
        if len(fake.sessions) > 1 and fake.sessions[-1].ready.is_set():
            break
        await asyncio.sleep(0.02)
    resumed = fake.sessions[-1]
    assert resumed.path == "/gateway-resume/"
    assert [p["op"] for p in resumed.received if p["op"] in (2, 6)] == [6]
    dm = fake.dm_channel(fake.alice)
    await fake.send(fake.user_message(dm, fake.alice, "still there?"))
    text, _ = await fake.wait_for_bot_messages(2, dm)
    assert text["content"].startswith("You said: still there?")
