"""Discord sharding: with ``DISCORD_SHARDS`` the bot runs on discord.py's AutoShardedBot,
opens one gateway session per shard against the fake Discord (which routes a server's events
to its shard and DMs to shard 0, as Discord does) and answers as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.discord_bot import DiscordBot, ShardedDiscordBot, build_client, point_at_endpoints, run, shard_options
from bot.config import Settings
from bot.errors import ConfigError
from bot.runtime import VoiceBot
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_plugin import RecordingVoiceClient, RunningDiscordBot, _until_ready, stop_discord_bot

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def start_bot(
    discord_fake: FakeDiscord, discord_env: dict[str, str], discord_endpoints: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator:
    for name, value in {**discord_env, "VOICE_REPLIES": "false"}.items():
        monkeypatch.setenv(name, value)
    running: list[RunningDiscordBot] = []

    async def start(**overrides: object) -> RunningDiscordBot:
        settings = Settings(**overrides)
        voicebot = await VoiceBot.create(settings)
        point_at_endpoints(settings)
        client = build_client(voicebot, voice_client_class=RecordingVoiceClient, guild_ready_timeout=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(run(client, Settings.secret(settings.discord_bot_token) or "", stop))
        bot = RunningDiscordBot(discord_fake, client, voicebot, stop, task)
        running.append(bot)
        await _until_ready(client, task, timeout=30.0)
        return bot

    yield start
    for bot in running:
        await stop_discord_bot(bot)


def _shards(fake: FakeDiscord) -> list[tuple[int, int] | None]:
    return sorted((s.shard for s in fake.sessions if s.ready.is_set()), key=lambda s: s or (0, 0))


async def test_two_shards_connect_and_answer_a_dm_and_a_server_mention(start_bot, discord_fake: FakeDiscord) -> None:
    bot = await start_bot(discord_shards="2")
    client = bot.client
    assert isinstance(client, ShardedDiscordBot) and client.shard_count == 2
    assert _shards(discord_fake) == [(0, 2), (1, 2)]
    assert sorted(client.shards) == [0, 1] and [g.id for g in client.guilds] == [discord_fake.guild.id]

    dm = discord_fake.dm_channel(discord_fake.alice)
    await discord_fake.send(discord_fake.user_message(dm, discord_fake.alice, "hello shards"))
    [answer] = await discord_fake.wait_for_bot_messages(1, dm)
    assert answer["content"] == "You said: hello shards. I have 0 earlier messages."

    general = discord_fake.general
    await discord_fake.send(discord_fake.user_message(general, discord_fake.bob, "and here?", mention_bot=True))
    [reply] = await discord_fake.wait_for_bot_messages(1, general)
    assert "and here?" in reply["content"]
    assert client.get_guild(discord_fake.guild.id).shard_id == (discord_fake.guild.id >> 22) % 2

    await asyncio.sleep(0.5)
    assert len(discord_fake.bot_messages()) == 2  # each message answered once


async def test_auto_takes_the_shard_count_discord_recommends(start_bot, discord_fake: FakeDiscord) -> None:
    discord_fake.recommended_shards = 2
    bot = await start_bot(discord_shards="auto")
    assert bot.client.shard_count == 2 and _shards(discord_fake) == [(0, 2), (1, 2)]
    dm = discord_fake.dm_channel(discord_fake.bob)
    await discord_fake.send(discord_fake.user_message(dm, discord_fake.bob, "auto sharded"))
    [answer] = await discord_fake.wait_for_bot_messages(1, dm)
    assert "auto sharded" in answer["content"]


async def test_a_process_runs_only_its_shard_ids(start_bot, discord_fake: FakeDiscord) -> None:
    bot = await start_bot(discord_shards="2", discord_shard_ids="0")
    assert _shards(discord_fake) == [(0, 2)]
    ours = (discord_fake.guild.id >> 22) % 2 == 0
    assert len(bot.client.guilds) == (1 if ours else 0)  # a server on shard 1 is another process's
    dm = discord_fake.dm_channel(discord_fake.alice)  # DMs come through shard 0
    await discord_fake.send(discord_fake.user_message(dm, discord_fake.alice, "shard zero"))
    [answer] = await discord_fake.wait_for_bot_messages(1, dm)
    assert "shard zero" in answer["content"]


def test_shard_settings() -> None:
    assert shard_options(Settings()) is None
    assert shard_options(Settings(discord_shards="auto")) == {}
    assert shard_options(Settings(discord_shards="4", discord_shard_ids="2,3")) == {"shard_count": 4,
                                                                                 "shard_ids": [2, 3]}
    for bad in ({"discord_shards": "many"}, {"discord_shards": "0"}, {"discord_shard_ids": "1"},
                {"discord_shards": "auto", "discord_shard_ids": "1"},
                {"discord_shards": "2", "discord_shard_ids": "2"}):
        with pytest.raises(ConfigError):
            shard_options(Settings(**bad))


async def test_unsharded_is_the_default(discord_bot: RunningDiscordBot) -> None:
    assert type(discord_bot.client) is DiscordBot
    assert _shards(discord_bot.fake) == [None]
