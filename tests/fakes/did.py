"""A local stand-in for D-ID's talking-avatar API (talks, uploads, results).

``POST /talks`` creates a talk; each ``GET /talks/{id}`` moves it along
``created -> started -> done`` so a client's polling loop really polls; ``done`` carries a
``result_url`` on this fake (``/results/{id}.mp4``, a real H.264/AAC MP4 whose length is
the talk's ``duration``), reachable without auth like D-ID's pre-signed S3 links.
``POST /audios`` / ``POST /images`` store an upload and answer an ``s3://`` URL a talk can
use as ``audio_url`` / ``source_url``; the duration of a talk made from an uploaded audio
is that audio's decoded length. Auth is ``Authorization: Basic <api key>``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes import audio_samples
from tests.fakes.http_fake import FilePart, HttpFake, RecordedRequest, json_response

USER_ID = "google-oauth2|100000000000000000000"
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def _is_image(data: bytes) -> bool:
    """JPEG or PNG, the image types D-ID takes as a source."""
    return data.startswith(_IMAGE_MAGIC)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TalkOutcome:
    """How a talk ends: ``done``, ``error`` or ``rejected`` (with D-ID's error kind)."""

    status: str = "done"
    kind: str = "FaceError"
    description: str = "Face not detected in the source image"


@dataclass(slots=True)
class Talk:
    """A talk the fake knows: its request body, poll count and how it will end."""

    id: str
    body: dict[str, Any]
    created_at: str
    duration: float
    outcome: TalkOutcome
    polls: int = 0
    started_at: str | None = None
    finished_at: str | None = None


class FakeDID(HttpFake):
    """D-ID: ``/talks``, ``/talks/{id}``, ``/audios``, ``/images`` and ``/results/{id}.mp4``.

    Endpoint names for ``latency``: ``"talks"`` (create, list), ``"talk"`` (get, delete),
    ``"audios"``, ``"images"``, ``"results"``. ``polls_until_done`` is the number of the
    GET that first shows the final status (earlier GETs show ``started``, the first one
    ``created`` when there are 3 or more). ``api_key=None`` accepts any key.
    """

    ENDPOINTS = ("talks", "talk", "audios", "images", "results")

    def __init__(
        self,
        api_key: str | None = "ZmFrZUBleGFtcGxlLmNvbQ:fake-did-secret",
        *,
        polls_until_done: int = 2,
        seconds_per_char: float = 0.06,
        min_seconds: float = 0.5,
        max_seconds: float = 30.0,
        result_fps: int = 5,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.polls_until_done = polls_until_done
        self.seconds_per_char = seconds_per_char
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        self.result_fps = result_fps
        #: Served at /results/... instead of a generated clip when set.
        self.result_mp4: bytes | None = None
        self.talks: dict[str, Talk] = {}
        #: Uploads by their s3:// URL.
        self.uploads: dict[str, FilePart] = {}
        self._outcomes: list[TalkOutcome] = []
        self.route("POST", "/talks", self._create_talk, endpoint="talks")
        self.route("GET", "/talks", self._list_talks, endpoint="talks")
        self.route("GET", "/talks/{talk_id}", self._get_talk, endpoint="talk")
        self.route("DELETE", "/talks/{talk_id}", self._delete_talk, endpoint="talk")
        self.route("POST", "/audios", self._upload_audio, endpoint="audios")
        self.route("POST", "/images", self._upload_image, endpoint="images")
        self.route("GET", "/results/{name}", self._result, endpoint="results")

    # ------------------------------------------------------------------ test controls

    def fail_next_talk(
        self,
        status: str = "error",
        *,
        kind: str = "FaceError",
        description: str = "Face not detected in the source image",
    ) -> None:
        """Make the next created talk end in ``status`` (``error`` or ``rejected``) instead of ``done``."""
        if status not in ("error", "rejected", "done"):
            raise ValueError(f"unknown talk status {status!r}")
        self._outcomes.append(TalkOutcome(status, kind, description))

    def result_url(self, talk_id: str) -> str:
        return f"{self.base_url}/results/{talk_id}.mp4"

    # ------------------------------------------------------------------ errors

    def error_body(self, status: int, message: str) -> dict:
        kinds = {
            400: "ValidationError",
            401: "AuthorizationError",
            402: "InsufficientCreditsError",
            403: "PermissionError",
            404: "NotFoundError",
            429: "TooManyRequestsError",
            500: "InternalServerError",
            503: "ServiceUnavailableError",
        }
        return {"kind": kinds.get(status, "UnknownError"), "description": message}

    def _check_auth(self, recorded: RecordedRequest) -> web.Response | None:
        if self.api_key is None or recorded.headers.get("authorization") == f"Basic {self.api_key}":
            return None
        return self.error(401, "user unauthorized")

    # ------------------------------------------------------------------ talks

    async def _create_talk(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        body = recorded.json
        if not isinstance(body, dict):
            return self.error(400, "body must be a JSON object")
        source_url = body.get("source_url")
        if not isinstance(source_url, str) or not source_url.startswith(("http://", "https://", "s3://")):
            return self.error(400, "source_url must be an http(s) or s3 URL")
        script = body.get("script")
        if not isinstance(script, dict) or script.get("type") not in ("text", "audio"):
            return self.error(400, "script.type must be 'text' or 'audio'")
        if script["type"] == "text":
            text = script.get("input")
            if not isinstance(text, str) or not text.strip():
                return self.error(400, "script.input is required for a text script")
            duration = min(self.max_seconds, max(self.min_seconds, len(text) * self.seconds_per_char))
        else:
            audio_url = script.get("audio_url")
            if not isinstance(audio_url, str) or not audio_url:
                return self.error(400, "script.audio_url is required for an audio script")
            duration = await self._audio_seconds(audio_url)
        talk = Talk(
            id="tlk_" + secrets.token_urlsafe(15),
            body=body,
            created_at=_now(),
            duration=round(duration, 3),
            outcome=self._outcomes.pop(0) if self._outcomes else TalkOutcome(),
        )
        self.talks[talk.id] = talk
        created = {"id": talk.id, "created_at": talk.created_at, "created_by": USER_ID}
        return json_response({**created, "status": "created", "object": "talk"}, 201)

    async def _audio_seconds(self, audio_url: str) -> float:
        upload = self.uploads.get(audio_url)
        if upload is None:
            return self.min_seconds
        try:
            seconds = await asyncio.to_thread(audio_samples.audio_duration, upload.data)
        except Exception:  # noqa: BLE001 - undecodable upload: the shortest talk
            return self.min_seconds
        return min(self.max_seconds, max(self.min_seconds, seconds))

    def _status_for_poll(self, talk: Talk) -> str:
        if talk.polls >= self.polls_until_done:
            return talk.outcome.status
        return "created" if talk.polls == 1 and self.polls_until_done > 2 else "started"

    def _view(self, talk: Talk, status: str) -> dict[str, Any]:
        script = dict(talk.body.get("script", {}))
        view: dict[str, Any] = {
            "id": talk.id,
            "user_id": USER_ID,
            "created_by": USER_ID,
            "created_at": talk.created_at,
            "modified_at": _now(),
            "status": status,
            "source_url": talk.body.get("source_url"),
            "script": script,
            "config": {"stitch": False, "fluent": False, "pad_audio": 0.0, **talk.body.get("config", {})},
            "driver_url": "bank://natural/",
            "metadata": {},
        }
        if status != "created":
            talk.started_at = talk.started_at or _now()
            view["started_at"] = talk.started_at
        if script.get("type") == "audio":
            view["audio_url"] = script.get("audio_url")
        if status == "done":
            talk.finished_at = talk.finished_at or _now()
            view.update(result_url=self.result_url(talk.id), duration=talk.duration)
        elif status in ("error", "rejected"):
            view["error"] = {"kind": talk.outcome.kind, "description": talk.outcome.description}
        return view

    async def _get_talk(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        talk = self.talks.get(request.match_info["talk_id"])
        if talk is None:
            return self.error(404, "talk not found")
        talk.polls += 1
        return json_response(self._view(talk, self._status_for_poll(talk)))

    async def _list_talks(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        views = [self._view(t, self._status_for_poll(t)) for t in self.talks.values()]
        return json_response({"talks": views})

    async def _delete_talk(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        if self.talks.pop(request.match_info["talk_id"], None) is None:
            return self.error(404, "talk not found")
        return json_response({"deleted": 1})

    async def _result(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        talk_id = request.match_info["name"].removesuffix(".mp4")
        talk = self.talks.get(talk_id)
        if talk is None or self._status_for_poll(talk) != "done":
            # What S3 answers for a key that does not exist (XML, not D-ID's JSON).
            return web.Response(
                status=403 if talk is None else 404,
                body=b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code></Error>",
                content_type="application/xml",
            )
        data = self.result_mp4
        if data is None:
            data = await asyncio.to_thread(audio_samples.mp4_clip, talk.duration, fps=self.result_fps)
        return web.Response(body=data, content_type="video/mp4")

    # ------------------------------------------------------------------ uploads

    async def _upload_audio(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        return await self._upload(recorded, "audio", "d-id-audios-prod", audio_samples.looks_like_audio)

    async def _upload_image(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        return await self._upload(recorded, "image", "d-id-images-prod", _is_image)

    async def _upload(
        self, recorded: RecordedRequest, field_name: str, bucket: str, valid: Callable[[bytes], bool]
    ) -> web.Response:
        if (denied := self._check_auth(recorded)) is not None:
            return denied
        part = recorded.files.get(field_name)
        if part is None:
            return self.error(400, f"multipart field '{field_name}' with a file is required")
        if not part.data or not valid(part.data):
            return self.error(400, f"the uploaded {field_name} is not a supported file")
        upload_id = secrets.token_urlsafe(12)
        name = part.filename or f"{field_name}.bin"
        url = f"s3://{bucket}/{USER_ID}/{upload_id}/{name}"
        self.uploads[url] = part
        return json_response({"id": upload_id, "url": url}, 201)
