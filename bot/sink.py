"""How the core hands a turn's output to an adapter.

An adapter implements :class:`ReplySink` once per incoming message. The core calls it in
this order: ``stage`` (any number of times, for chat actions), ``text_delta`` (only when the
adapter streams), ``deliver`` exactly once, then ``deliver_video`` at most once, later, when
an avatar clip is ready. A turn counts as answered only after ``deliver`` returned, so an
adapter must raise if the platform did not take the reply. When a clip announced with
``stage(RENDERING_VIDEO)`` fails, the core calls the sink's ``video_failed()`` if it has one
(optional: for sinks that keep showing the stage until told otherwise).
"""

from __future__ import annotations

from typing import Protocol

from bot.messages import Reply, Stage, Video


class ReplySink(Protocol):
    #: When True the core streams LLM tokens to :meth:`text_delta` as they arrive.
    streams_text: bool

    async def stage(self, stage: Stage) -> None:
        """The bot started ``stage``; show a chat action if the platform has one."""

    async def text_delta(self, text_so_far: str) -> None:
        """The reply text generated so far (whole, not the increment)."""

    async def deliver(self, reply: Reply) -> None:
        """Send the reply's text and voice note; raise if the platform refused it."""

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        """Send the avatar clip for an already delivered reply."""


class SilentSink:
    """A sink that keeps what it is given; for the CLI and tests of the core."""

    def __init__(self, *, streams_text: bool = False) -> None:
        self.streams_text = streams_text  # True: the answer comes token by token to text_delta
        self.stages: list[Stage] = []
        self.deltas: list[str] = []
        self.replies: list[Reply] = []
        self.videos: list[Video] = []

    async def stage(self, stage: Stage) -> None:
        self.stages.append(stage)

    async def text_delta(self, text_so_far: str) -> None:
        self.deltas.append(text_so_far)

    async def deliver(self, reply: Reply) -> None:
        self.replies.append(reply)

    async def deliver_video(self, video: Video, reply: Reply) -> None:
        self.videos.append(video)
