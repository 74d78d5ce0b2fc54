"""The whole offline voice conversation as a user runs it: no keys, local models only.

A question spoken by the bundled Piper voice goes through `voicebot ask --audio` in a real
subprocess; the transcript, the English answer and the spoken reply (transcribed back) are
checked. Skipped, with the reason, where the offline engines are not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.audio import ogg_opus_duration
from bot.config import Settings
from bot.messages import Audio
from bot.providers import local_models

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not all(local_models.available(kind) for kind in ("stt", "llm", "tts")),
    reason="offline engines not installed (make venv installs requirements-offline*.txt)",
)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


async def test_voicebot_ask_holds_a_voice_conversation_offline(tmp_path: Path, cache_dir: Path) -> None:
    from bot.providers.local_stt import LocalWhisperSTT
    from bot.providers.local_tts import PiperTTS

    settings = Settings(_env_file=None, models_cache_dir=cache_dir)
    question = await PiperTTS(settings).synthesize("What is the capital of France?")
    (tmp_path / "question.ogg").write_bytes(question.data)

    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN", "_BASE_URL"))}
    env.update(PYTHONPATH=str(ROOT), MODELS_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1",
               LLM_TEMPERATURE="0", DATABASE_URL=f"sqlite:///{tmp_path / 'offline.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "ask", "--audio", "question.ogg", "--voice-out", "reply.ogg", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert {"capital", "france"} <= _words(out["transcript"])
    assert out["language"] == "en"
    reply = out["reply"]
    assert len(_words(reply)) >= 3 and reply.isascii()

    spoken = (tmp_path / "reply.ogg").read_bytes()
    assert spoken[:4] == b"OggS"
    seconds = ogg_opus_duration(spoken)
    assert seconds == pytest.approx(out["voice_seconds"], abs=0.05)
    assert 0.5 < seconds < 2 + len(reply) * 0.12  # plausible for the text's length

    heard = await LocalWhisperSTT(settings).transcribe(Audio(spoken, format="ogg"))
    overlap = _words(heard.text) & _words(reply)
    assert len(overlap) >= min(3, len(_words(reply))), (heard.text, reply)
