"""The web page's :class:`~bot.sink.ReplySink`: one turn streamed to the browser as NDJSON.

    {"type": "stage", "stage": "transcribing"}          what the bot is busy with
    {"type": "delta", "text": "The answer so f"}        the reply so far, while it is generated
    {"type": "reply", "kind": "answer", "text": "...", "transcript": "...",
     "audio": "/media/<token>", "clip": "/api/clips/<turn>", "notes": []}
    {"type": "done", "outcome": "answered"}

One JSON object per line keeps the page's reader small (split on newlines) and needs no
websocket. Reply audio goes to the :class:`~adapters.web_media.MediaShelf` and the event
carries its URL. Once the turn's response is finished, the avatar clip (rendered later, in
the background) goes to the shelf too, where the page's wait for it picks it up.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from adapters.web_media import MediaShelf
from bot.messages import Reply, ReplyKind, Stage, Video


class PageSink:
    def __init__(
        self,
        response: web.StreamResponse,
        shelf: MediaShelf,
        *,
        chat: str,
        turn: str,
        streams_text: bool,
        clip_expected: bool,
    ) -> None:
        self.response = response
        self.shelf = shelf
        self.chat = chat
        self.turn = turn
        self.streams_text = streams_text
        self.clip_expected = clip_expected
        self._open = True

    async def _write(self, event: dict[str, Any]) -> None:
        if not self._open:
            raise ConnectionResetError("the page's response is finished")
        await self.response.write(json.dumps(event, ensure_ascii=False).encode() + b"\n")

    async def send(self, event: dict[str, Any]) -> None:
        """Write a progress event. If the page went away the turn goes on all the same (its
        answer is in the history when the page comes back), so nothing is raised."""
        try:
            await self._write(event)
        except ConnectionResetError:
            self._open = False

    def close(self) -> None:
        """The turn's response is finished: later stages (the clip) are not written to it."""
        self._open = False

    async def stage(self, stage: Stage) -> None:
        await self.send({"type": "stage", "stage": stage.value})

    async def text_delta(self, text_so_far: str) -> None:
        await self.send({"type": "delta", "text": text_so_far})

    async def deliver(self, reply: Reply) -> None:
        audio = None
        if reply.voice is not None:
            audio = f"/media/{self.shelf.put(self.chat, reply.voice.data, reply.voice.mime_type)}"
        clip = None
        if self.clip_expected and reply.kind is ReplyKind.ANSWER:
            self.shelf.expect_clip(self.chat, self.turn)
            clip = f"/api/clips/{self.turn}"
        await self._write({  # raises when the page is gone: the core then keeps the turn open
            "type": "reply",
            "kind": reply.kind.value,
            "text": reply.text,
            "transcript": reply.transcript,
            "language": reply.language,
            "audio": audio,
            "clip": clip,
            "notes": reply.notes,
        })

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        self.shelf.put_clip(self.chat, self.turn, video.data, video.mime_type)
