"""A ``multipart/form-data`` body built in one piece, for uploads held in memory.

aiohttp's ``FormData`` builds a payload object per part and writes them one by one; encoding
a voice note's form into bytes through it costs about 70 us of CPU, writing the same bytes
directly about 2 us (a Whisper upload and a Telegram ``sendVoice`` each voice turn).
Names and file names are escaped as browsers do (WHATWG: ``"``, CR and LF percent-encoded).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

#: A file part: (file name, content, content type).
FilePart = tuple[str, bytes | bytearray, str]

_ESCAPES = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})


def _quoted(value: str) -> str:
    return '"' + value.translate(_ESCAPES) + '"'


def encode_form(fields: Mapping[str, str], files: Mapping[str, FilePart]) -> tuple[bytes, str]:
    """The body and its ``Content-Type`` (with the boundary): text fields first, then files."""
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Disposition: form-data; name="
    parts: list[bytes | bytearray] = []
    for name, value in fields.items():
        parts.append(f"{head}{_quoted(name)}\r\n\r\n{value}\r\n".encode())
    for name, (filename, content, content_type) in files.items():
        parts.append(f"{head}{_quoted(name)}; filename={_quoted(filename)}\r\n"
                     f"Content-Type: {content_type}\r\n\r\n".encode())
        parts.append(content)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
