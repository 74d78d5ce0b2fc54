"""Configuration: every variable documented, secrets never logged, providers chosen sensibly."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from bot.config import Settings
from bot.errors import ConfigError
from bot.logs import RedactSecrets, settings_secrets
from bot.providers import registry

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_settings_read_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BOT_NAME=Robo\nALLOWED_USER_IDS=1, 2;3\nGROQ_API_KEY=gsk_secret_value\n")
    monkeypatch.setenv("LLM_MODEL", "llama-3.3-70b-versatile")
    settings = Settings()
    assert settings.bot_name == "Robo" and settings.llm_model == "llama-3.3-70b-versatile"
    assert settings.allowed_user_ids == ["1", "2", "3"]
    assert "gsk_secret_value" not in repr(settings)
    assert "Robo" in settings.resolved_system_prompt


def test_named_speakers_map_to_voice_ids() -> None:
    settings = Settings()
    assert settings.voice_id_for("english-female") == "21m00Tcm4TlvDq8ikWAM"
    assert settings.voice_id_for(None) == settings.elevenlabs_voice_id
    assert settings.voice_id_for("rawVoiceId123") == "rawVoiceId123"


def test_secrets_are_redacted_from_log_records(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(telegram_bot_token="123456:ABCDEFsecret", groq_api_key="gsk_live_key_1234")
    logger = logging.getLogger("test.redact")
    redact = RedactSecrets(settings_secrets(settings))
    logger.addFilter(redact)
    try:
        with caplog.at_level(logging.INFO, logger="test.redact"):
            logger.info("POST https://api.telegram.org/bot%s/getUpdates", "123456:ABCDEFsecret")
            try:
                raise RuntimeError("key gsk_live_key_1234 rejected")
            except RuntimeError:
                logger.exception("failed")
    finally:
        logger.removeFilter(redact)
    text = caplog.text
    assert "ABCDEFsecret" not in text and "gsk_live_key_1234" not in text
    assert "bot***/getUpdates" in text


def test_auto_picks_cloud_when_keys_are_set() -> None:
    settings = Settings(groq_api_key="k", elevenlabs_api_key="k", did_api_key="k")
    assert registry.choose_names(settings) == {"stt": "groq", "llm": "groq", "tts": "elevenlabs", "avatar": "did"}


def test_auto_without_keys_or_offline_engines_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_offline_available", lambda kind, settings: False)
    with pytest.raises(ConfigError, match="GROQ_API_KEY"):
        registry.choose_names(Settings())


def test_explicit_choice_wins_and_mixing_works() -> None:
    settings = Settings(groq_api_key="k", tts_provider="none", avatar_provider="none")
    assert registry.choose_names(settings)["tts"] == "none"
    assert registry.build_tts("none", settings) is None
    with pytest.raises(ConfigError, match="not a stt provider"):
        registry.build_stt("elevenlabs", settings)


def test_auto_picks_the_offline_engines_without_keys() -> None:
    from bot.providers import local_models

    if not all(local_models.available(kind) for kind in ("stt", "llm", "tts")):
        pytest.skip("offline engines not installed (make venv installs requirements-offline.txt)")
    assert registry.choose_names(Settings()) == {"stt": "local", "llm": "local", "tts": "local", "avatar": "none"}
    mixed = Settings(groq_api_key="k")  # Groq for speech and the LLM, the local voice
    assert registry.choose_names(mixed) == {"stt": "groq", "llm": "groq", "tts": "local", "avatar": "none"}
