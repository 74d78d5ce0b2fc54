"""The ``voicebot`` command as a user runs it: a real subprocess against the fakes."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import av

from bot.runtime import freeze_startup_heap
from tests.fakes.audio_samples import tone_ogg
from tests.fakes.groq import FakeGroq

VOICEBOT = [sys.executable, "-m", "bot.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN"))}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        VOICEBOT + args, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_ask_text_prints_the_reply(fake_env_thread: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["ask", "--text", "hello cli"], fake_env_thread, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Bot: You said: hello cli. I have 0 earlier messages." in result.stdout
    assert (tmp_path / "voicebot.db").exists()


def test_ask_audio_writes_a_voice_reply_and_keeps_history_per_chat(
    fake_env_thread: dict[str, str], groq_fake_thread: FakeGroq, tmp_path: Path
) -> None:
    audio = tone_ogg(1.5, seed=9)
    groq_fake_thread.set_transcript(audio, "What is the capital of France?")
    (tmp_path / "question.ogg").write_bytes(audio)
    args = ["ask", "--audio", "question.ogg", "--voice-out", "reply.ogg", "--chat", "c9", "--json"]
    first = run_cli(args, fake_env_thread, tmp_path)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["transcript"] == "What is the capital of France?" and out["language"] == "en"
    assert out["reply"].startswith("You said: What is the capital of France?")
    data = (tmp_path / "reply.ogg").read_bytes()
    assert data[:4] == b"OggS"
    with av.open(str(tmp_path / "reply.ogg")) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
    second = run_cli(["ask", "--text", "and Germany?", "--chat", "c9", "--json"], fake_env_thread, tmp_path)
    assert json.loads(second.stdout)["reply"].endswith("I have 2 earlier messages.")


def test_bad_input_exits_non_zero_with_one_clear_line(fake_env_thread: dict[str, str], tmp_path: Path) -> None:
    missing = run_cli(["ask", "--audio", "nope.ogg"], fake_env_thread, tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == "voicebot: no such audio file: nope.ogg"
    both = run_cli(["ask"], fake_env_thread, tmp_path)
    assert both.returncode == 2 and "exactly one of --text or --audio" in both.stderr
    (tmp_path / "junk.ogg").write_bytes(b"definitely not audio")
    junk = run_cli(["ask", "--audio", "junk.ogg"], fake_env_thread, tmp_path)
    assert junk.returncode == 1 and "couldn't read that audio" in junk.stdout
    assert "Traceback" not in junk.stderr


def test_missing_key_names_the_variable(tmp_path: Path) -> None:
    result = run_cli(["ask", "--text", "hi"], {"STT_PROVIDER": "groq", "LLM_PROVIDER": "groq", "TTS_PROVIDER": "none"}, tmp_path)
    assert result.returncode == 2
    assert "GROQ_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    from storage.migrate import head_revision

    head = head_revision()
    up = run_cli(["db", "upgrade"], env, tmp_path)
    assert up.returncode == 0 and f"revision {head}" in up.stdout
    current = run_cli(["db", "current"], env, tmp_path)
    assert f"revision {head} (newest: {head})" in current.stdout


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run_cli(["--help"], {}, tmp_path)
    for command in ("ask", "chat", "telegram", "discord", "web", "run", "db"):
        assert command in result.stdout


def test_the_start_up_heap_is_frozen_after_its_garbage_is_collected() -> None:
    """What `voicebot` serves with lives outside the cyclic collector's full passes; start-up
    garbage is collected first, not kept forever."""

    class Node:
        me: object

    garbage = Node()
    garbage.me = garbage  # a cycle only the collector frees
    gone = weakref.ref(garbage)
    del garbage
    frozen_before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert gone() is None
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()
