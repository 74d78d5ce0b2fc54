"""The real ``voicebot telegram`` command in a subprocess, against fakes served from threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes import audio_samples
from tests.fakes.groq import FakeGroq
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.timeout(90)


def test_voicebot_telegram_answers_a_voice_note_and_stops_on_sigterm(
    telegram_fake_thread: FakeTelegram, groq_fake_thread: FakeGroq, fake_env_thread: dict[str, str], tmp_path: Path
) -> None:
    fake = telegram_fake_thread
    env = {
        **os.environ, **fake_env_thread, **fake.env(),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "LOG_LEVEL": "DEBUG",  # the noisiest logs must still not show the token
    }
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "telegram"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=log_file,
        )
        try:
            fake.wait_until_sync(lambda: bool(fake.requests_to("/getUpdates")) or process.poll() is not None, 45)
            assert process.poll() is None, log_path.read_text()

            user = fake.user("Carol")
            chat = fake.private_chat(user)
            voice = audio_samples.tone_ogg(1.5, seed=21)
            groq_fake_thread.set_transcript(voice, "Are you running in a subprocess?")
            fake.send_voice(chat, user, voice)
            fake.wait_until_sync(lambda: bool(fake.sent_to(chat, "voice")), 45)

            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=15)
            stopped_in = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    log = log_path.read_text(errors="replace")
    assert code == 0, log
    assert stopped_in < 5.0
    [text] = fake.sent_to(chat, "text")
    assert "You said: Are you running in a subprocess?" in (text.text or "")
    assert fake.sent_to(chat, "voice")[0].file.data.startswith(b"OggS")
    assert "@voicebot_test_bot is up" in log
    assert fake.token not in log and fake.token.split(":")[1] not in log
