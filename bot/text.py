"""Reply text shaping shared by every platform: splitting under a length limit without breaking
code blocks, and turning Markdown-ish LLM output into something pleasant to hear.
"""

from __future__ import annotations

import re

FENCE = "```"


def _cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` (len > limit): paragraph, then line, then sentence, then word."""
    window = text[:limit]
    for separator in ("\n\n", "\n"):
        at = window.rfind(separator)
        if at >= limit // 3:
            return at + len(separator)
    sentence = max(window.rfind(". "), window.rfind("! "), window.rfind("? "))
    if sentence >= limit // 3:
        return sentence + 2
    space = window.rfind(" ")
    if space >= limit // 3:
        return space + 1
    return limit


def split_for_platform(text: str, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters.

    Cuts on paragraph, line, sentence or word boundaries. A code block cut in two is closed
    at the end of one chunk and reopened (with its language tag) at the start of the next,
    so each chunk renders on its own.
    """
    if limit < 16:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    rest = text.strip()
    reopen = ""  # the fence line to reopen in the next chunk, if a block was cut
    while rest:
        rest = reopen + rest if reopen else rest
        if len(rest) <= limit:
            chunks.append(rest)
            break
        room = limit - len(FENCE) - 1  # keep room to close an open block
        cut = _cut_point(rest, room)
        chunk, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n")
        fences = re.findall(r"^```[^\n]*$", chunk, flags=re.MULTILINE)
        if len(fences) % 2 == 1:  # cut inside a code block
            opener = fences[-1]
            chunk = chunk + "\n" + FENCE
            reopen = opener + "\n"
        else:
            reopen = ""
            rest = rest.lstrip()
        if chunk.strip():
            chunks.append(chunk)
    return chunks


def clean_input(text: str) -> str:
    """User text as storage and providers take it: NUL removed (PostgreSQL's text type refuses
    it) and lone UTF-16 surrogates, which cannot be encoded as UTF-8, replaced by U+FFFD."""
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")
_URL = re.compile(r"https?://\S+")
_MARKUP = re.compile(r"[*_`#>|~]+")
_SPACES = re.compile(r"[ \t]+")


def to_spoken_text(text: str, limit: int) -> str:
    """What the voice note should say: no code, no Markdown symbols, no raw URLs, and at most
    ``limit`` characters, cut at a sentence end when possible."""
    spoken = _CODE_BLOCK.sub(" (code in the text reply) ", text)
    spoken = _LINK.sub(r"\1", spoken)
    spoken = _URL.sub("a link", spoken)
    spoken = _MARKUP.sub("", spoken)
    spoken = _SPACES.sub(" ", spoken).strip()
    if len(spoken) <= limit:
        return spoken
    window = spoken[:limit]
    end = max(window.rfind(". "), window.rfind("! "), window.rfind("? "), window.rfind("\n"))
    if end >= limit // 2:
        return window[: end + 1].strip()
    return window.rsplit(" ", 1)[0].strip() + "..."
