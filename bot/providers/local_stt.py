"""Offline speech-to-text: faster-whisper (CTranslate2, int8 on the CPU).

The model comes from a pip package (see :mod:`bot.providers.local_models`) and is loaded
once per process, on first use or by :meth:`LocalWhisperSTT.warm_up`. Decoding and inference
run on the shared CPU gate, never on the event loop. Settings favour speed on 2 cores:
greedy decoding, no timestamps, no conditioning on earlier windows, and Silero VAD (shipped
inside faster-whisper) so silence gives an empty transcript instead of a hallucinated one.

Whisper pads every window to 30 s, so a 4-second voice note costs as much encoder time as
a 30-second one. :func:`encoder_frames` cuts the zero padding down to a 10-second window
(at least 3 s after the speech), like whisper.cpp's ``audio_ctx``: about 1/8 of the encoder
work for a short note, with the same transcripts on our tests. Longer windows are untouched.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING

from bot.audio import decode_pcm
from bot.config import Settings
from bot.errors import AudioTooLongError, BadAudioError, ProviderError
from bot.messages import Audio
from bot.providers.base import SpeechToText, Transcript
from bot.providers.local_models import CPU_GATE, FASTER_WHISPER, require_modules, whisper_model_dir

if TYPE_CHECKING:
    import numpy as np
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100  # mel frames
MIN_WINDOW_FRAMES = 10 * FRAMES_PER_SECOND
WINDOW_STEP_FRAMES = 5 * FRAMES_PER_SECOND
TAIL_FRAMES = 3 * FRAMES_PER_SECOND  # tighter windows make Whisper repeat itself

_MODELS: dict[tuple[str, int], WhisperModel] = {}
_MODELS_LOCK = threading.Lock()


def encoder_frames(features: np.ndarray) -> int:
    """How many mel frames of a zero-padded Whisper window the encoder is given.

    faster-whisper pads each window's features with exact zeros up to 30 s; real audio never
    gives an all-zero frame. Keep the speech plus TAIL_FRAMES, rounded up to WINDOW_STEP_FRAMES,
    and never less than MIN_WINDOW_FRAMES.
    """
    import numpy as np

    total = features.shape[-1]
    voiced = np.flatnonzero(np.any(features.reshape(-1, total) != 0, axis=0))
    speech = int(voiced[-1]) + 1 if voiced.size else 0
    wanted = math.ceil((speech + TAIL_FRAMES) / WINDOW_STEP_FRAMES) * WINDOW_STEP_FRAMES
    return min(total, max(MIN_WINDOW_FRAMES, wanted))


def _short_window_model_class() -> type[WhisperModel]:
    from faster_whisper import WhisperModel

    class ShortWindowWhisperModel(WhisperModel):
        """faster-whisper that encodes only the part of each window that holds audio."""

        def encode(self, features: np.ndarray):  # type: ignore[no-untyped-def]
            return super().encode(features[..., : encoder_frames(features)])

    return ShortWindowWhisperModel


def load_whisper(model_dir: str, threads: int) -> WhisperModel:
    """The faster-whisper model in ``model_dir``, loaded once per process (thread-safe)."""
    key = (model_dir, threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _short_window_model_class()(
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

    Uses :func:`bot.audio.decode_pcm` rather than faster-whisper's decoder, which runs a full
    ``gc.collect()`` on every call (150+ ms in a process as big as the bot's).
    Raises :class:`BadAudioError` for bytes that are not decodable audio.
    """
    import numpy as np

    if not data:
        raise BadAudioError("empty audio")
    try:
        pcm = decode_pcm(data, rate=SAMPLE_RATE)
    except ValueError as exc:
        raise BadAudioError(str(exc)) from exc
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


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
        try:
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
        except RuntimeError as exc:  # CTranslate2 and ONNX Runtime (VAD) failures
            raise ProviderError(self.name, f"Whisper failed: {exc}") from exc
        log.debug("local whisper: %.2fs of audio, language=%s -> %r", duration, info.language, text)
        return Transcript(text=text, language=info.language, duration=duration)
