"""Audio facts and conversions, done in-process.

The hot path never transcodes: voice notes arrive as OGG/Opus and leave as OGG/Opus.
What is here is cheap inspection (container sniffing, Opus duration from the last page's
granule position) plus the two conversions some paths need: PCM -> OGG/Opus for the offline
voice (PyAV's wheel bundles libopus, no ffmpeg binary) and a waveform for Discord voice
messages. Decoding functions are CPU work: call them from a worker thread.
"""

from __future__ import annotations

import base64
import io
import struct
from array import array

OPUS_RATE = 48_000

_MAGICS: tuple[tuple[bytes, int, str], ...] = (
    (b"OggS", 0, "ogg"),
    (b"RIFF", 0, "wav"),
    (b"fLaC", 0, "flac"),
    (b"ID3", 0, "mp3"),
    (b"\x1a\x45\xdf\xa3", 0, "webm"),
    (b"ftyp", 4, "m4a"),
)


def sniff_format(data: bytes) -> str | None:
    """The container of ``data`` from its magic bytes, or None if it is not audio we know."""
    for magic, offset, name in _MAGICS:
        if data[offset : offset + len(magic)] == magic:
            return name
    if len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0:
        return "mp3"  # MPEG frame sync without an ID3 tag
    return None


def is_ogg_opus(data: bytes) -> bool:
    """True when ``data`` is an OGG stream whose first packet is an Opus header."""
    return data[:4] == b"OggS" and b"OpusHead" in data[:128]


def _pre_skip(data: bytes) -> int:
    head = data.find(b"OpusHead")
    if head < 0 or len(data) < head + 12:
        return 0
    return struct.unpack_from("<H", data, head + 10)[0]


def ogg_opus_duration(data: bytes) -> float:
    """Seconds of audio in an OGG/Opus stream, read from the last page's granule position.

    Reads only page headers (no decoding), so it is cheap enough for the event loop.
    Returns 0.0 when ``data`` is not OGG/Opus or carries no complete page.
    """
    if not is_ogg_opus(data):
        return 0.0
    last = data.rfind(b"OggS")
    while last >= 0:
        if len(data) >= last + 14:
            granule = struct.unpack_from("<q", data, last + 6)[0]
            if granule >= 0:
                return max(0.0, (granule - _pre_skip(data)) / OPUS_RATE)
        last = data.rfind(b"OggS", 0, last)
    return 0.0


def encode_ogg_opus(pcm_s16le: bytes, sample_rate: int, channels: int = 1, bitrate: int = 64_000) -> bytes:
    """Encode signed 16-bit little-endian PCM into an OGG/Opus voice note (48 kHz).

    CPU work: run it in a worker thread.
    """
    import av  # imported here: only the offline voice and tests need it

    out = io.BytesIO()
    layout = "mono" if channels == 1 else "stereo"
    with av.open(out, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=OPUS_RATE, layout=layout)
        stream.bit_rate = bitrate
        stream.options = {"application": "voip", "compression_level": "5"}
        # One input frame; the resampler cuts 20 ms frames, the size libopus wants.
        resampler = av.AudioResampler(format="s16", layout=layout, rate=OPUS_RATE, frame_size=960)
        usable = len(pcm_s16le) - len(pcm_s16le) % (2 * channels)
        frame = av.AudioFrame(format="s16", layout=layout, samples=usable // (2 * channels))
        frame.planes[0].update(pcm_s16le[:usable])
        frame.sample_rate = sample_rate
        frame.pts = 0
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for resampled in resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def decode_pcm(data: bytes, rate: int = 16_000) -> array:
    """Decode any audio PyAV understands to mono signed 16-bit samples at ``rate``.

    Raises ``ValueError`` for bytes that are not decodable audio. CPU work.
    """
    import av

    samples = array("h")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
            for out in resampler.resample(None):
                samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise ValueError(f"undecodable audio: {exc}") from exc
    return samples


def waveform(data: bytes, points: int = 64) -> str:
    """Base64 of up to 256 one-byte amplitude samples, as Discord voice messages carry.

    CPU work (decodes the audio).
    """
    samples = decode_pcm(data, rate=8_000)
    if not samples:
        return base64.b64encode(bytes(points)).decode()
    points = max(1, min(256, points))
    step = max(1, len(samples) // points)
    peaks = []
    for i in range(points):
        window = samples[i * step : (i + 1) * step]
        peak = max((abs(s) for s in window), default=0)
        peaks.append(min(255, peak * 255 // 32768))
    return base64.b64encode(bytes(peaks)).decode()
