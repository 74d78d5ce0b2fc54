"""Chooses the providers from configuration: ``auto`` = the cloud one when its key is set,
otherwise the offline one when its model packages are installed, otherwise a clear error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel

from bot.config import Settings
from bot.errors import ConfigError, ProviderError
from bot.providers.base import AvatarRenderer, SpeechToText, TextToSpeech

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Providers:
    stt: SpeechToText
    llm: BaseChatModel
    tts: TextToSpeech | None
    avatar: AvatarRenderer | None
    names: dict[str, str]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def classify_llm_error(self, exc: BaseException) -> ProviderError | None:
        """The LLM's SDK exceptions as ProviderErrors (retryable or not)."""
        if self.names.get("llm") == "groq":
            from bot.providers.groq_cloud import classify_groq_error

            return classify_groq_error(exc)
        return None

    async def aclose(self) -> None:
        for provider in (self.stt, self.tts, self.avatar):
            if provider is not None:
                await provider.aclose()
        for close in self.closers:
            await close()


def _offline_available(kind: str, settings: Settings) -> bool:
    try:
        from bot.providers import local_models
    except ImportError:
        return False
    return local_models.available(kind, settings)


def _choose(kind: str, choice: str, cloud: str, has_key: bool, key_var: str, settings: Settings) -> str:
    if choice != "auto":
        return choice
    if has_key:
        return cloud
    if _offline_available(kind, settings):
        return "local"
    raise ConfigError(
        f"No {kind.upper()} provider: set {key_var} for the cloud one, or install the offline "
        f"engines (`make run` installs them) and set {kind.upper()}_PROVIDER=local."
    )


def choose_names(settings: Settings) -> dict[str, str]:
    """The provider name each stage will use, e.g. ``{"stt": "groq", "llm": "local", ...}``."""
    has_groq = settings.groq_api_key is not None
    names = {
        "stt": _choose("stt", settings.stt_provider, "groq", has_groq, "GROQ_API_KEY", settings),
        "llm": _choose("llm", settings.llm_provider, "groq", has_groq, "GROQ_API_KEY", settings),
        "tts": _choose("tts", settings.tts_provider, "elevenlabs",
                       settings.elevenlabs_api_key is not None, "ELEVENLABS_API_KEY", settings),
    }
    avatar = settings.avatar_provider
    if avatar == "auto":
        avatar = "did" if settings.did_api_key is not None else "none"
    names["avatar"] = avatar
    return names


def _unknown(kind: str, name: str) -> ConfigError:
    return ConfigError(f"{kind.upper()}_PROVIDER={name!r} is not a {kind} provider.")


def build_stt(name: str, settings: Settings) -> SpeechToText:
    if name == "groq":
        from bot.providers.groq_cloud import GroqWhisperSTT

        return GroqWhisperSTT(settings)
    if name == "local":
        from bot.providers.local_stt import LocalWhisperSTT

        return LocalWhisperSTT(settings)
    raise _unknown("stt", name)


def build_llm(name: str, settings: Settings, closers: list[Callable[[], Awaitable[None]]]) -> BaseChatModel:
    if name == "groq":
        from bot.providers.groq_cloud import build_groq_chat_model

        model, client = build_groq_chat_model(settings)
        closers.append(client.aclose)
        return model
    if name == "local":
        from bot.providers.local_llm import build_local_chat_model

        return build_local_chat_model(settings)
    raise _unknown("llm", name)


def build_tts(name: str, settings: Settings) -> TextToSpeech | None:
    if name == "none":
        return None
    if name == "elevenlabs":
        from bot.providers.elevenlabs_cloud import ElevenLabsTTS

        return ElevenLabsTTS(settings)
    if name == "local":
        from bot.providers.local_tts import PiperTTS

        return PiperTTS(settings)
    raise _unknown("tts", name)


def build_avatar(name: str, settings: Settings) -> AvatarRenderer | None:
    if name == "none":
        return None
    if name == "did":
        from bot.providers.did_cloud import DIDAvatar

        return DIDAvatar(settings)
    raise _unknown("avatar", name)


def build_providers(settings: Settings) -> Providers:
    names = choose_names(settings)
    log.info("providers: %s", ", ".join(f"{k}={v}" for k, v in names.items()))
    closers: list[Callable[[], Awaitable[None]]] = []
    return Providers(
        stt=build_stt(names["stt"], settings),
        llm=build_llm(names["llm"], settings, closers),
        tts=build_tts(names["tts"], settings),
        avatar=build_avatar(names["avatar"], settings),
        names=names,
        closers=closers,
    )
