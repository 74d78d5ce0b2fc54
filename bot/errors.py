"""Errors the core turns into clear replies instead of tracebacks."""

from __future__ import annotations


class VoicebotError(Exception):
    """Base class; ``user_message`` is safe to show in a chat (no secrets, no internals)."""

    user_message = "Sorry, something went wrong. Please try again."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class ConfigError(VoicebotError):
    """Configuration is missing or invalid; raised at start-up, names the variable."""


class BadAudioError(VoicebotError):
    user_message = "I couldn't read that audio. Please send a voice note (OGG/Opus, MP3, WAV or M4A)."


class DownloadError(VoicebotError):
    user_message = "I couldn't download that audio from the chat service. Please send it again."


class AudioTooLongError(VoicebotError):
    def __init__(self, seconds: float, limit: float) -> None:
        super().__init__(
            f"audio {seconds:.1f}s > limit {limit:.0f}s",
            user_message=f"That voice note is too long ({seconds:.0f} s). "
            f"Please keep it under {limit:.0f} seconds.",
        )


class NoSpeechError(VoicebotError):
    user_message = "I couldn't hear any words in that audio. Could you try again?"


class ProviderError(VoicebotError):
    """A provider call failed.

    ``retryable`` says whether trying again may help (429, 5xx, timeouts, connection
    errors); ``retry_after`` is the server's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        provider: str,
        detail: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        user_message: str | None = None,
    ) -> None:
        super().__init__(f"{provider}: {detail}", user_message=user_message)
        self.provider = provider
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class RateLimitedError(VoicebotError):
    def __init__(self, wait_seconds: float) -> None:
        super().__init__(
            f"user rate limited for {wait_seconds:.1f}s",
            user_message=f"You're sending messages too fast. Please wait {max(1, round(wait_seconds))} s.",
        )
        self.wait_seconds = wait_seconds


class NotAllowedError(VoicebotError):
    user_message = "Sorry, this bot is private and not available in this chat."


class BudgetExceededError(VoicebotError):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"daily {what} budget used",
            user_message=f"You've used today's {what} allowance. It resets at midnight UTC; /stats shows your usage.",
        )
