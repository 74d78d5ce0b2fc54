"""Real test media made in-process with PyAV: OGG/Opus, WAV, MP3, WebM and MP4.

The fakes and the tests need audio that real decoders accept (Groq checks the container,
Telegram wants OGG/Opus, durations are measured), so nothing here is a stub: every helper
returns bytes FFmpeg can decode. Output is deterministic for the same arguments; ``seed``
changes the bytes (OGG stream serial / tone pitch) so a test can register a distinct
transcript per clip, since the Groq fake keys transcripts by the sha256 of the upload.
"""

from __future__ import annotations

import array
import io
import math
import wave
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import av

OPUS_RATE = 48_000
_AMPLITUDE = 0.3


# ----------------------------------------------------------------------------- PCM


def _tone_samples(n: int, freq: float, rate: int, amplitude: float = _AMPLITUDE) -> array.array:
    """``n`` signed 16-bit samples of a sine at ``freq`` Hz."""
    peak = int(32767 * amplitude)
    step = 2 * math.pi * freq / rate
    return array.array("h", (int(peak * math.sin(step * i)) for i in range(n)))


def tone_pcm(seconds: float, freq: float = 440.0, rate: int = OPUS_RATE) -> bytes:
    """Mono s16le PCM of a continuous sine; repeats a one-second block when it can."""
    total = max(0, round(seconds * rate))
    if freq == int(freq):  # whole cycles per second: tile one second, phase-continuous
        block = _tone_samples(min(total, rate), freq, rate).tobytes()
        reps, rest = divmod(total * 2, len(block) or 1)
        return block * reps + block[:rest]
    return _tone_samples(total, freq, rate).tobytes()


def silence_pcm(seconds: float, rate: int = OPUS_RATE) -> bytes:
    return bytes(2 * max(0, round(seconds * rate)))


@lru_cache(maxsize=16)
def _beep_cycle(rate: int, seed: int) -> bytes:
    """One 1.25 s cycle of five short beeps of varied pitch with gaps: speech-like rhythm."""
    out = array.array("h")
    beep, gap = round(0.18 * rate), round(0.07 * rate)
    ramp = round(0.01 * rate)
    for i in range(5):
        freq = 220 + ((i * 7 + seed * 3) % 9) * 45
        samples = _tone_samples(beep, freq, rate)
        for j in range(ramp):  # fade in/out so the beeps do not click
            k = j / ramp
            samples[j] = int(samples[j] * k)
            samples[-1 - j] = int(samples[-1 - j] * k)
        out.extend(samples)
        out.extend(array.array("h", bytes(2 * gap)))
    return out.tobytes()


def beeps_pcm(seconds: float, rate: int = OPUS_RATE, seed: int = 0) -> bytes:
    """Mono s16le PCM of a beep pattern lasting exactly ``seconds`` (tiled cycle)."""
    cycle = _beep_cycle(rate, seed)
    size = 2 * max(0, round(seconds * rate))
    reps, rest = divmod(size, len(cycle))
    return cycle * reps + cycle[:rest]


# ----------------------------------------------------------------------------- encoding


def encode_pcm(
    pcm: bytes,
    *,
    rate: int,
    container: str,
    codec: str,
    bit_rate: int | None = None,
    seed: int = 0,
) -> bytes:
    """Encode mono s16le ``pcm`` into ``container`` with ``codec``, bit-exact and in memory."""
    buf = io.BytesIO()
    options = {"serial_offset": str(seed)} if container == "ogg" else {}
    with av.open(buf, "w", format=container, options=options) as out:
        out.flags |= av.container.Flags.bitexact.value
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        step = rate // 2  # half-second frames; PyAV re-chunks to the codec's frame size
        pts = 0
        for start in range(0, len(pcm) // 2, step):
            chunk = pcm[start * 2 : (start + step) * 2]
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(chunk) // 2)
            frame.planes[0].update(chunk)
            frame.rate = rate
            frame.pts = pts
            frame.time_base = Fraction(1, rate)
            pts += frame.samples
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def ogg_opus(pcm: bytes, *, bit_rate: int = 32_000, seed: int = 0) -> bytes:
    """48 kHz mono s16le PCM -> OGG/Opus bytes (what Telegram/Discord voice notes are)."""
    return encode_pcm(pcm, rate=OPUS_RATE, container="ogg", codec="libopus", bit_rate=bit_rate, seed=seed)


def tone_ogg(seconds: float, freq: float = 440.0, *, seed: int = 0, bit_rate: int = 32_000) -> bytes:
    """An OGG/Opus 48 kHz mono sine of ``seconds``; vary ``freq`` or ``seed`` for distinct bytes."""
    return ogg_opus(tone_pcm(seconds, freq + seed), bit_rate=bit_rate, seed=seed)


def silence_ogg(seconds: float, *, seed: int = 0) -> bytes:
    """An OGG/Opus 48 kHz mono clip of digital silence (a voice note with no speech)."""
    return ogg_opus(silence_pcm(seconds), seed=seed)


def beeps_ogg(seconds: float, *, bit_rate: int = 32_000, seed: int = 0) -> bytes:
    """An OGG/Opus 48 kHz mono beep pattern: the ElevenLabs fake's "speech"."""
    return ogg_opus(beeps_pcm(seconds, seed=seed), bit_rate=bit_rate, seed=seed)


def webm_opus(seconds: float, freq: float = 440.0) -> bytes:
    """A WebM/Opus clip, what browsers' MediaRecorder produce."""
    return encode_pcm(tone_pcm(seconds, freq), rate=OPUS_RATE, container="webm", codec="libopus", bit_rate=32_000)


def mp3_bytes(seconds: float, freq: float = 440.0, *, rate: int = 44_100, bit_rate: int = 128_000) -> bytes:
    """An MP3 (libmp3lame) mono sine."""
    return encode_pcm(tone_pcm(seconds, freq, rate), rate=rate, container="mp3", codec="libmp3lame", bit_rate=bit_rate)


def wav_from_pcm(pcm: bytes, rate: int) -> bytes:
    """Wrap mono s16le PCM in a RIFF/WAVE header."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def wav_bytes(seconds: float, freq: float = 440.0, *, rate: int = 16_000) -> bytes:
    """A 16-bit mono WAV sine (what the offline TTS produces)."""
    return wav_from_pcm(tone_pcm(seconds, freq, rate), rate)


# ----------------------------------------------------------------------------- video


@lru_cache(maxsize=8)
def mp4_clip(
    seconds: float = 1.0,
    *,
    color: tuple[int, int, int] = (40, 120, 200),
    size: tuple[int, int] = (64, 64),
    fps: int = 10,
    with_audio: bool = True,
) -> bytes:
    """A small real MP4: H.264 (libx264, else MPEG-4 Part 2) frames of one colour + AAC tone.

    Stands in for a D-ID talking-head result; cached because tests ask for it often.
    """
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        out.flags |= av.container.Flags.bitexact.value
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=OPUS_RATE, layout="mono") if with_audio else None
        rgb = bytes(color) * (width * height)
        n_frames = max(1, round(seconds * fps))
        for i in range(n_frames):
            frame = av.VideoFrame(width, height, "rgb24")
            frame.planes[0].update(rgb)
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if audio is not None:
            pcm = tone_pcm(n_frames / fps, 330.0)
            step = OPUS_RATE // 2
            pts = 0
            for start in range(0, len(pcm) // 2, step):
                chunk = pcm[start * 2 : (start + step) * 2]
                aframe = av.AudioFrame(format="s16", layout="mono", samples=len(chunk) // 2)
                aframe.planes[0].update(chunk)
                aframe.rate, aframe.pts, aframe.time_base = OPUS_RATE, pts, Fraction(1, OPUS_RATE)
                pts += aframe.samples
                for packet in audio.encode(aframe):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
    return buf.getvalue()


# ----------------------------------------------------------------------------- probing

# The first bytes of the containers Groq (and D-ID's audio upload) accept.
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"OggS"),
    (0, b"RIFF"),
    (0, b"ID3"),
    (0, b"fLaC"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (4, b"ftyp"),  # MP4 / M4A
)


def looks_like_audio(data: bytes) -> bool:
    """True when ``data`` starts like an audio container (or an MPEG audio frame sync)."""
    if any(data[offset : offset + len(magic)] == magic for offset, magic in _MAGIC):
        return True
    return len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What a decoder sees in some media bytes."""

    container: str
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None
    duration: float  # seconds, from decoded audio samples if any, else the container
    video_codec: str | None = None


def probe(data: bytes) -> MediaInfo:
    """Decode ``data`` fully with PyAV; raises ``av.error.FFmpegError`` if it is not media."""
    with av.open(io.BytesIO(data)) as media:
        container = media.format.name
        video = media.streams.video[0].codec_context.name if media.streams.video else None
        if not media.streams.audio:
            duration = (media.duration or 0) / av.time_base
            return MediaInfo(container, None, None, None, duration, video)
        stream = media.streams.audio[0]
        ctx = stream.codec_context
        samples = sum(frame.samples for frame in media.decode(audio=0))
        rate = ctx.sample_rate or stream.rate
        return MediaInfo(container, ctx.name, rate, ctx.channels, samples / rate if rate else 0.0, video)


def audio_duration(data: bytes) -> float:
    """Seconds of audio in ``data`` (decoded sample count / rate)."""
    return probe(data).duration
