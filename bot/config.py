"""Configuration from the environment and ``.env`` (pydantic-settings).

Every variable is listed with a comment in ``.env.example``. Secrets are ``SecretStr`` so
they never show up in a repr or a log line.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderChoice = Literal["auto", "groq", "elevenlabs", "did", "local", "none"]

DEFAULT_SPEAKERS = {
    # The original notebook's named speakers -> ElevenLabs premade voice ids.
    "english-male-1": "pNInz6obpgDQGcFmaJgB",  # Adam
    "english-male-2": "TxGEqnHWrfWFTfGW9XjX",  # Josh
    "english-female": "21m00Tcm4TlvDq8ikWAM",  # Rachel
}

DEFAULT_SYSTEM_PROMPT = (
    "You are {bot_name}, a friendly voice assistant in a chat. Answer briefly and "
    "conversationally, in the language the user spoke, in plain sentences that sound "
    "natural when read aloud (no tables, no long lists)."
)


def _split_ids(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- identity and behaviour
    bot_name: str = "Voicebot"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    database_url: str = "sqlite+aiosqlite:///voicebot.db"
    log_level: str = "INFO"

    # --- provider choice: auto = cloud when its key is set, otherwise offline, otherwise error
    stt_provider: ProviderChoice = "auto"
    llm_provider: ProviderChoice = "auto"
    tts_provider: ProviderChoice = "auto"
    avatar_provider: ProviderChoice = "auto"

    # --- Groq (speech-to-text and LLM)
    groq_api_key: SecretStr | None = None
    groq_base_url: str | None = None  # the SDK's default (https://api.groq.com)
    stt_model: str = "whisper-large-v3-turbo"
    stt_language: str | None = None  # None = let Whisper detect it
    llm_model: str = "llama-3.1-8b-instant"
    llm_temperature: float = 0.7
    llm_max_tokens: int = 512
    context_tokens: int = 6000  # history budget sent to the model (prompt side)

    # --- ElevenLabs (text-to-speech)
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_base_url: str | None = None  # the SDK's default (https://api.elevenlabs.io)
    elevenlabs_voice_id: str = DEFAULT_SPEAKERS["english-male-1"]
    elevenlabs_model_id: str = "eleven_flash_v2_5"
    elevenlabs_output_format: str = "opus_48000_64"
    speakers: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SPEAKERS))

    # --- D-ID (talking avatar, off unless a key is set)
    did_api_key: SecretStr | None = None
    did_base_url: str = "https://api.d-id.com"
    did_source_url: str = "https://create-images-results.d-id.com/DefaultPresenters/Noelle_f/image.jpeg"
    did_voice_id: str = "en-US-JennyNeural"  # Microsoft voice for text scripts
    did_use_audio: bool = True  # upload our synthesized voice instead of a text script
    did_timeout: float = 90.0

    # --- limits
    max_audio_seconds: float = 300.0
    max_audio_bytes: int = 20 * 1024 * 1024
    max_text_chars: int = 4000
    max_reply_chars_spoken: int = 1500  # longer replies are spoken up to here
    provider_timeout: float = 30.0
    provider_retries: int = 2
    # Requests in flight to each provider at once (httpx's default of 100 made a burst of
    # voice notes wait in waves); the provider's own rate limits still apply.
    provider_max_connections: int = Field(default=512, ge=1)
    rate_limit_messages: int = 10  # per user per rate_limit_window seconds
    rate_limit_window: float = 60.0
    # Per-user daily budgets (UTC days); 0 = unlimited.
    daily_audio_seconds: float = 0.0
    daily_tokens: int = 0
    daily_tts_chars: int = 0

    # --- access (empty = everyone)
    allowed_user_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_chat_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_guild_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- defaults for new chats
    voice_replies: bool = True
    show_transcript: bool = True
    stream_text: bool = True

    # --- platforms (used by adapters)
    telegram_bot_token: SecretStr | None = None
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    telegram_webhook_url: str | None = None
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: int = 8443
    telegram_webhook_secret: SecretStr | None = None
    # Bot API calls per second the bot allows itself across all chats (Telegram's limit is about
    # 30 messages a second per bot); 0 = no overall pacing (a raised limit, or a benchmark).
    telegram_max_messages_per_second: float = Field(default=30.0, ge=0)
    # Updates answered at the same time (each chat's in order); a turn mostly waits on
    # providers, so this bounds memory and provider load, not CPU.
    telegram_max_concurrent_turns: int = Field(default=512, ge=1)
    discord_bot_token: SecretStr | None = None
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    # Gateway sharding (discord.py's AutoShardedBot): empty = one connection, no sharding;
    # "auto" = as many shards as Discord recommends; a number = that many shards.
    discord_shards: str = ""
    # Which of those shards this process runs (e.g. "0,1" of 4); empty = all of them.
    discord_shard_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- scale-out: several worker processes sharing one bot
    redis_url: str | None = None
    # How one chat's turns are kept in order across workers: auto = redis when REDIS_URL is
    # set, else in-process (right for a single process); postgres = advisory locks.
    chat_lock: Literal["auto", "local", "redis", "postgres"] = "auto"
    # Seconds a Redis chat lock lives without renewal: how long a chat waits after a worker died
    # holding it (a running turn renews it every third of this).
    chat_lock_lease: float = 30.0
    # Telegram webhook worker processes sharing one port (SO_REUSEPORT); >1 needs PostgreSQL
    # and a shared chat lock (REDIS_URL or CHAT_LOCK=postgres).
    telegram_webhook_workers: int = Field(default=1, ge=1, le=64)
    # Database connections per process (PostgreSQL): kept open, extra under load, wait for one.
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    db_pool_timeout: float = 30.0
    # Redis connections per client (each worker has two: chat locks and rate limits).
    redis_max_connections: int = Field(default=20, ge=1)

    # --- offline engines
    models_cache_dir: Path = Path.home() / ".cache" / "voicebot"
    local_stt_model: str = "tiny.en"  # or "base" (multilingual)
    local_threads: int = 2

    # --- web page
    web_host: str = "127.0.0.1"
    web_port: int = 7860

    @field_validator("allowed_user_ids", "allowed_chat_ids", "allowed_guild_ids", "discord_shard_ids", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        return _split_ids(value)

    @cached_property
    def resolved_system_prompt(self) -> str:
        return self.system_prompt.replace("{bot_name}", self.bot_name)

    def voice_id_for(self, speaker: str | None) -> str:
        """A named speaker (``english-female``) or a raw voice id -> voice id."""
        if not speaker:
            return self.elevenlabs_voice_id
        return self.speakers.get(speaker, speaker)

    @staticmethod
    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None
