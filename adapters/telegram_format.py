"""Reply text as Telegram shows it: LLM Markdown turned into Telegram HTML, cut under the limit.

LLMs write Markdown (``**bold**``, ``*italic*``, `` `code` ``, fenced blocks, ``[links](url)``).
Telegram's HTML parse mode is the forgiving one to target: only ``<``, ``>`` and ``&`` need
escaping, so user text can never break it. Anything the converter is unsure of stays literal;
when the result is not well-formed it gives up (``None``) and the caller sends plain text.
Lengths are measured in UTF-16 code units, as Telegram counts them.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from bot.text import split_for_platform

#: Telegram's limit for a message's text after entity parsing.
MESSAGE_LIMIT = 4096
#: How much of a voice note's transcript is shown above the reply.
TRANSCRIPT_SHOWN = 1000
TRANSCRIPT_MARK = "\N{MICROPHONE} "

_FENCED = re.compile(r"```([^\n`]*)\n(.*?)(?:\n?```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s()<>\"\x00]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_BULLET = re.compile(r"^([ \t]*)[*+-][ \t]+", re.MULTILINE)
# Bold runs first, on text without tags; the later rules never span a tag, so none can cross.
_BOLD = re.compile(r"\*\*(?=\S)([^\n]+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n<>]+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)([^~\n<>]+?)(?<=\S)~~")
_SLOT = re.compile(r"\x00(\d+)\x00")
_TAG = re.compile(r"<(/?)([a-z]+)(?:\s[^>]*)?>")
_LANGUAGE = re.compile(r"[\w+#.-]{1,32}")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One Telegram message: ``html`` for parse mode HTML (None = send ``plain`` as it is)."""

    plain: str
    html: str | None


def utf16_len(text: str) -> int:
    """The length Telegram measures: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


class _Slots:
    """Finished HTML fragments parked behind ``\\x00n\\x00`` markers so later rules cannot touch them."""

    def __init__(self) -> None:
        self.fragments: list[str] = []

    def park(self, fragment: str) -> str:
        self.fragments.append(fragment)
        return f"\x00{len(self.fragments) - 1}\x00"

    def restore(self, text: str) -> str:
        while _SLOT.search(text):  # fragments may hold markers of their own (a link's text)
            text = _SLOT.sub(lambda m: self.fragments[int(m.group(1))], text)
        return text


def _code_block(match: re.Match[str], slots: _Slots) -> str:
    language, body = match.group(1).strip(), match.group(2)
    if not body.strip():
        return slots.park(_escape(match.group(0)))
    attribute = f' class="language-{language}"' if _LANGUAGE.fullmatch(language) else ""
    return slots.park(f"<pre><code{attribute}>{_escape(body)}</code></pre>")


def _inline(text: str, slots: _Slots) -> str:
    """Escape ``text`` (code already parked) and apply the inline rules."""
    text = _escape(text)
    text = _LINK.sub(lambda m: slots.park(f'<a href="{m.group(2)}">{m.group(1)}</a>'), text)
    text = _HEADING.sub(lambda m: slots.park(f"<b>{m.group(1).replace('**', '')}</b>"), text)
    text = _BULLET.sub(lambda m: f"{m.group(1)}\N{BULLET} ", text)
    text = _BOLD.sub(r"<b>\1</b>", text)
    text = _ITALIC.sub(r"<i>\1</i>", text)
    return _STRIKE.sub(r"<s>\1</s>", text)


def well_formed(markup: str) -> bool:
    """True when every tag in ``markup`` is closed in order (no crossing, nothing left open)."""
    open_tags: list[str] = []
    for match in _TAG.finditer(markup):
        closing, name = match.group(1), match.group(2)
        if not closing:
            open_tags.append(name)
        elif not open_tags or open_tags.pop() != name:
            return False
    return not open_tags


def markdown_to_html(text: str) -> str | None:
    """Telegram HTML for LLM Markdown, or None when the result would not be well-formed.

    Code (fenced and inline) is escaped verbatim; outside code: links, headings (bold),
    bullets, ``**bold**``, ``*italic*``, ``~~strike~~``. ``_underscores_`` stay literal so
    ``snake_case`` names survive.
    """
    slots = _Slots()
    parked = _FENCED.sub(lambda m: _code_block(m, slots), text.replace("\x00", ""))
    parked = _INLINE_CODE.sub(lambda m: slots.park(f"<code>{_escape(m.group(1))}</code>"), parked)
    converted = slots.restore(_inline(parked, slots))
    return converted if well_formed(converted) else None


def transcript_header(transcript: str | None) -> tuple[str, str]:
    """(plain, html) of the "🎤 what you said" line put above a reply; empty when none."""
    if not transcript:
        return "", ""
    shown = transcript.strip()
    if len(shown) > TRANSCRIPT_SHOWN:
        shown = shown[:TRANSCRIPT_SHOWN].rstrip() + "\N{HORIZONTAL ELLIPSIS}"
    return f"{TRANSCRIPT_MARK}{shown}\n\n", f"{TRANSCRIPT_MARK}<i>{_escape(shown)}</i>\n\n"


def split_utf16(text: str, limit: int) -> list[str]:
    """:func:`split_for_platform`, tightened until every piece is at most ``limit`` UTF-16 units."""
    size = limit
    while True:
        pieces = split_for_platform(text, size)
        if all(utf16_len(piece) <= limit for piece in pieces):
            return pieces
        size = max(16, size - max(64, size // 8))


def reply_chunks(text: str, transcript: str | None = None, limit: int = MESSAGE_LIMIT) -> list[Chunk]:
    """The messages a reply becomes: the transcript line (if any) on top, each under ``limit``.

    Splitting happens on the Markdown, so each chunk (code blocks re-opened by the splitter)
    converts on its own; the visible text of a chunk is never longer than its Markdown.
    """
    header_plain, header_html = transcript_header(transcript)
    pieces = split_utf16(text, limit - utf16_len(header_plain)) or [""]
    chunks = []
    for i, piece in enumerate(pieces):
        plain_head, html_head = (header_plain, header_html) if i == 0 else ("", "")
        converted = markdown_to_html(piece)
        chunks.append(
            Chunk(plain_head + piece, None if converted is None else html_head + converted)
        )
    if not chunks[0].plain.strip():
        return []
    return chunks


def shows_as(chunk: Chunk, text: str) -> bool:
    """Whether ``chunk`` would show exactly ``text`` sent as plain text: the same characters
    and no formatting (its HTML, if any, only escapes them)."""
    return chunk.plain == text and (chunk.html is None or chunk.html == _escape(chunk.plain))


def preview(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """What a streamed message shows while tokens arrive: plain text, at most one message."""
    pieces = split_utf16(text, limit - 2)
    if not pieces:
        return ""
    return pieces[0] if len(pieces) == 1 else pieces[0] + " \N{HORIZONTAL ELLIPSIS}"
