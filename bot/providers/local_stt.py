"""Offline speech-to-text: faster-whisper (CTranslate2, int8 on the CPU).

The model comes from a pip package (see :mod:`bot.providers.local_models`) and is loaded
once per process, on first use or by :meth:`LocalWhisperSTT.warm_up`. Decoding and inference
run on the shared CPU gate, never on the event loop. Settings favour speed on 2 cores:
greedy decoding, no timestamps, no conditioning on earlier windows, and Silero VAD (shipped
inside faster-whisper) so silence gives an empty transcript instead of a hallucinated one.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.errors import AudioTooLongError, BadAudioError
from bot.messages import Audio
from bot.providers.base import SpeechToText, Transcript
from bot.providers.local_models import CPU_GATE, FASTER_WHISPER, require_modules, whisper_model_dir

if TYPE_CHECKING:
    import numpy as np
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000

_MODELS: dict[tuple[str, int], WhisperModel] = {}
_MODELS_LOCK = threading.Lock()


def load_whisper(model_dir: str, threads: int) -> WhisperModel:
    """The faster-whisper model in ``model_dir``, loaded once per process (thread-safe)."""
    key = (model_dir, threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from faster_whisper import WhisperModel

            model = WhisperModel(
                model_dir,
                device="cpu",
                compute_type="int8",
                cpu_threads=threads,
                num_workers=1,
                local_files_only=True,
            )
            _MODELS[key] = model
        return model


def decode_audio(data: bytes) -> np.ndarray:
    """Any container PyAV reads (OGG/Opus, MP3, WAV, M4A, WebM...) -> 16 kHz mono float32.

    Raises :class:`BadAudioError` for bytes that are not decodable audio.
    """
    import av
    from faster_whisper.audio import decode_audio as fw_decode

    if not data:
        raise BadAudioError("empty audio")
    try:
        return fw_decode(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as exc:
        raise BadAudioError(f"undecodable audio: {exc}") from exc


class LocalWhisperSTT(SpeechToText):
    """Whisper tiny.en (English) or base (multilingual) from a pip package, int8 on the CPU."""

    name = "local-whisper"

    def __init__(self, settings: Settings) -> None:
        require_modules(FASTER_WHISPER)
        self._settings = settings
        self._model_dir = str(whisper_model_dir(settings))  # clear ConfigError now, not mid-chat
        self._threads = max(1, settings.local_threads)
        self._english_only = settings.local_stt_model.endswith(".en")

    def _model(self) -> WhisperModel:
        return load_whisper(self._model_dir, self._threads)

    async def warm_up(self) -> None:
        """Load the model now (and run it once on silence) so the first turn is not slow."""
        await CPU_GATE.run(self._warm_up_sync)

    def _warm_up_sync(self) -> None:
        import numpy as np

        model = self._model()
        segments, _ = model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), language="en",
                                       beam_size=1, vad_filter=False, without_timestamps=True)
        list(segments)

    async def transcribe(self, audio: Audio) -> Transcript:
        return await CPU_GATE.run(self._transcribe_sync, audio.data)

    def _language(self) -> str | None:
        if self._english_only:
            return "en"
        return self._settings.stt_language or None

    def _transcribe_sync(self, data: bytes) -> Transcript:
        samples = decode_audio(data)
        duration = len(samples) / SAMPLE_RATE
        if duration > self._settings.max_audio_seconds:
            raise AudioTooLongError(duration, self._settings.max_audio_seconds)
        if duration < 0.1:
            return Transcript(text="", language=self._language(), duration=duration)
        segments, info = self._model().transcribe(
            samples,
            language=self._language(),
            beam_size=1,
            best_of=1,
            temperature=(0.0, 0.4),  # one fallback re-decode at most, not Whisper's five
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=True,
            vad_parameters={"min_silence_duration_ms": 500},
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        log.debug("local whisper: %.2fs of audio, language=%s -> %r", duration, info.language, text)
        return Transcript(text=text, language=info.language, duration=duration)
