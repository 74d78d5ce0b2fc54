"""Regenerates the binary part of the bad-input corpus in this folder (deterministic).

    .venv/bin/python -m tests.data.make_corpus

The text part (``texts.json``, ``commands.json``) is written by hand; see README.md.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests.fakes import audio_samples

HERE = Path(__file__).parent


def build() -> dict[str, bytes]:
    tone = audio_samples.tone_ogg(2.0, seed=3)
    noise = random.Random(7).randbytes(2048)
    return {
        "empty.ogg": b"",
        "truncated_header.ogg": tone[:60],  # cut inside the Opus header: nothing decodable
        "truncated_half.ogg": tone[: len(tone) // 2],  # the first half of a real voice note
        "random.ogg": noise,  # random bytes labelled audio/ogg
        "oggs_then_noise.ogg": b"OggS" + noise[:1020],  # the right magic, then garbage
        "voice_note.wav": audio_samples.wav_bytes(0.5, rate=8_000),  # a WAV sent as a voice note
        "silence.ogg": audio_samples.silence_ogg(1.0),  # no speech at all
    }


def main() -> None:
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
