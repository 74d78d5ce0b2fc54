"""Logging set-up: one line per event on stderr, with every configured secret redacted.

Client libraries log request URLs (python-telegram-bot's URLs contain the bot token), so
besides quietening them, a filter replaces any secret value that reaches a log record.
"""

from __future__ import annotations

import logging
import sys
from urllib.parse import urlsplit

from pydantic import SecretStr

from bot.config import Settings

NOISY = ("httpx", "httpcore", "telegram.ext", "discord.gateway", "discord.http", "aiohttp.access", "faster_whisper")


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        cleaned = self._clean(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def settings_secrets(settings: Settings) -> list[str]:
    values = [
        value.get_secret_value()
        for value in (getattr(settings, name) for name in type(settings).model_fields)
        if isinstance(value, SecretStr)
    ]
    # "<bot id>:<secret>" (Telegram) and "<user>:<key>" (D-ID): the part after the colon is the
    # secret itself and may show up alone (a URL-encoded colon, an error quoting half a token).
    values += [value.split(":", 1)[1] for value in values if len(value.partition(":")[2]) >= 8]
    # Passwords inside connection URLs (PostgreSQL, Redis).
    for url in (settings.database_url, settings.redis_url):
        password = urlsplit(url).password if url else None
        if password:
            values.append(password)
    return values


def configure_logging(settings: Settings, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(settings_secrets(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
