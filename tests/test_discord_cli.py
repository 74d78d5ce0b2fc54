"""The real ``voicebot discord`` command in a subprocess, against the fakes, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from tests.fakes.discord_api import FakeDiscord

pytestmark = pytest.mark.timeout(90)

ISOLATED_PREFIXES = ("GROQ_", "ELEVENLABS_", "DID_", "DISCORD_", "TELEGRAM_", "DATABASE_URL", "ALLOWED_")


def child_env(variables: dict[str, str]) -> dict[str, str]:
    """This process's environment without any of our settings, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ISOLATED_PREFIXES)}
    return {**env, **variables, "PYTHONUNBUFFERED": "1"}


async def start_cli(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "discord",
        env=child_env(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def test_voicebot_discord_answers_and_stops_on_sigterm(
    discord_fake: FakeDiscord, discord_env: dict[str, str]
) -> None:
    process = await start_cli(discord_env)
    try:
        await discord_fake.wait_for_session(timeout=45)
        dm = discord_fake.dm_channel(discord_fake.alice)
        await discord_fake.send(discord_fake.user_message(dm, discord_fake.alice, "hello from a subprocess"))
        text, voice = await discord_fake.wait_for_bot_messages(2, dm, timeout=20)
        assert text["content"].startswith("You said: hello from a subprocess")
        assert voice["flags"] == 8192
        assert {c["name"] for c in discord_fake.commands} >= {"reset", "voice", "join"}
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
        stopped_in = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert stopped_in < 5.0, f"took {stopped_in:.1f} s to stop"


async def test_missing_token_is_a_clear_error(discord_env: dict[str, str]) -> None:
    env = {k: v for k, v in discord_env.items() if k != "DISCORD_BOT_TOKEN"}
    process = await start_cli(env)
    _, stderr = await asyncio.wait_for(process.communicate(), 45)
    assert process.returncode == 2
    assert "DISCORD_BOT_TOKEN is not set" in stderr.decode()
