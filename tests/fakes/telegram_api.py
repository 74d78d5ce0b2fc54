"""A local stand-in for the Telegram Bot API, speaking the protocol as python-telegram-bot uses it.

``POST /bot<token>/<method>`` with form-urlencoded or multipart bodies (non-string values
JSON-encoded) or a JSON body, answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code",
"description"[, "parameters"]}``; files at ``GET /file/bot<token>/<file_path>``. Point PTB here
with ``base_url=<fake>/bot`` and ``base_file_url=<fake>/file/bot``.

Facts kept from the real service (WIRE-NOTES.md):
- an update stays until a ``getUpdates`` with a higher ``offset`` confirms it, so a bot that
  dies before confirming gets it again; a second poller gets 409, as does polling while a
  webhook is set;
- ``parse_mode=HTML`` is parsed like Telegram does: only its tags, properly nested, raw ``<``
  refused, the 4096 limit counted in UTF-16 units on the text *after* parsing, ``editMessageText``
  with the same content is 400 "message is not modified";
- ``getFile`` refuses files over 20 MB; a webhook gets each update POSTed with the secret token
  header and again until it answers 200;
- a 429 carries ``parameters.retry_after``.
The test side builds realistic updates (:meth:`FakeTelegram.send_text`, :meth:`send_voice`...),
reads what the bot sent (:attr:`FakeTelegram.sent`, :meth:`wait_for_sent`) and injects faults
with the :class:`HttpFake` methods, e.g. ``fail_next("sendMessage", 429)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import audio_samples
from tests.fakes.http_fake import FilePart, HttpFake, RecordedRequest, json_response

TOKEN = "7000000001:AAFakeTelegramTokenForTests_0123456"
MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
DOWNLOAD_LIMIT = 20 * 1024 * 1024
CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
        "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
    }
)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
_COMMAND = re.compile(r"[a-z0-9_]{1,32}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


class ApiError(Exception):
    """A Bot API error answer: ``error_code`` and ``description`` as Telegram words them."""

    def __init__(self, description: str, code: int = 400, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ----------------------------------------------------------------------------- HTML parse mode

_HTML_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>]+))?)*)\s*>")
_HTML_ATTR = re.compile(r"([a-zA-Z-]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+)))?")
_HTML_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);")
_HTML_TYPES = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "code": "code", "pre": "pre",
    "a": "text_link", "tg-spoiler": "spoiler", "span": "spoiler", "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_MARKDOWN_V2_RESERVED = set("_*[]()~`>#+-=|{}.!")


@dataclass(slots=True)
class _Open:
    tag: str
    start: int  # UTF-16 offset in the visible text
    attrs: dict[str, str]


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Visible text and entities of an HTML-formatted message, or :class:`ApiError` as Telegram words it."""
    visible: list[str] = []
    length = 0
    entities: list[dict[str, Any]] = []
    stack: list[_Open] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "<":
            match = _HTML_TAG.match(text, pos)
            offset = len(text[:pos].encode())
            if match is None:
                raise ApiError(f'Bad Request: can\'t parse entities: Unsupported start tag "" at byte offset {offset}')
            closing, tag = match.group(1) == "/", match.group(2).lower()
            if tag not in _HTML_TYPES:
                kind = "end" if closing else "start"
                raise ApiError(f'Bad Request: can\'t parse entities: Unsupported {kind} tag "{tag}" at byte offset {offset}')
            if closing:
                if not stack or stack[-1].tag != tag:
                    expected = f"</{stack[-1].tag}>" if stack else "no end tag"
                    raise ApiError(
                        f"Bad Request: can't parse entities: Unmatched end tag at byte offset {offset}, "
                        f'expected "{expected}", found "</{tag}>"'
                    )
                opened = stack.pop()
                inside_pre = bool(stack) and stack[-1].tag == "pre"
                if inside_pre and opened.tag == "code" and "class" in opened.attrs:
                    stack[-1].attrs.setdefault("class", opened.attrs["class"])  # <pre><code class=...>
                entity = _entity(opened, length, inside_pre=inside_pre)
                if entity is not None:
                    entities.append(entity)
            else:
                attrs = {m.group(1).lower(): m.group(2) or m.group(3) or m.group(4) or "" for m in _HTML_ATTR.finditer(match.group(3))}
                stack.append(_Open(tag, length, attrs))
            pos = match.end()
            continue
        if char == "&" and (entity_match := _HTML_ENTITY.match(text, pos)):
            piece = html.unescape(entity_match.group(0))
            pos = entity_match.end()
        else:
            piece = char
            pos += 1
        visible.append(piece)
        length += utf16_len(piece)
    if stack:
        raise ApiError(f'Bad Request: can\'t parse entities: Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    return "".join(visible), sorted(entities, key=lambda e: (e["offset"], -e["length"]))


def _entity(opened: _Open, end: int, *, inside_pre: bool) -> dict[str, Any] | None:
    if end == opened.start or (opened.tag == "code" and inside_pre):
        return None  # empty entities are dropped; <pre><code> is one pre entity
    entity: dict[str, Any] = {"type": _HTML_TYPES[opened.tag], "offset": opened.start, "length": end - opened.start}
    if opened.tag == "a":
        entity["url"] = opened.attrs.get("href", "")
    if opened.tag == "pre" and (language := opened.attrs.get("class", "")):
        entity["language"] = language.removeprefix("language-")
    return entity


def parse_text(text: str, parse_mode: str | None, limit: int) -> tuple[str, list[dict[str, Any]]]:
    """Apply ``parse_mode`` (HTML fully, MarkdownV2's escaping rule only) and Telegram's length limit."""
    entities: list[dict[str, Any]] = []
    if parse_mode is None or parse_mode == "":
        visible = text
    elif parse_mode.lower() == "html":
        visible, entities = parse_html(text)
    elif parse_mode.lower() == "markdownv2":
        visible = _check_markdown_v2(text)
    else:
        raise ApiError(f"Bad Request: unsupported parse_mode {parse_mode!r}")
    if not visible.strip():
        raise ApiError("Bad Request: message text is empty")
    if utf16_len(visible) > limit:
        raise ApiError("Bad Request: message is too long" if limit == MESSAGE_LIMIT else "Bad Request: message caption is too long")
    return visible, entities


def _check_markdown_v2(text: str) -> str:
    """Only the rule bots trip over: reserved characters outside markup must be escaped."""
    out, escaped = [], False
    for i, char in enumerate(text):
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ".!#+-={}>" and char in _MARKDOWN_V2_RESERVED:
            raise ApiError(
                f"Bad Request: can't parse entities: Character '{char}' is reserved and must be escaped "
                f"with the preceding '\\' (offset {i})"
            )
        elif char not in "*_~`|[]()":
            out.append(char)
    return "".join(out)


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class FakeUser:
    id: int
    first_name: str
    username: str | None = None
    is_bot: bool = False
    last_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.last_name:
            data["last_name"] = self.last_name
        if self.username:
            data["username"] = self.username
        return data


@dataclass(frozen=True, slots=True)
class FakeChat:
    id: int
    type: str  # private | group | supergroup
    title: str | None = None
    first_name: str | None = None
    is_forum: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.title:
            data["title"] = self.title
        if self.first_name:
            data["first_name"] = self.first_name
        if self.is_forum:
            data["is_forum"] = True
        return data


@dataclass(slots=True)
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    declared_size: int


@dataclass(slots=True)
class SentMessage:
    """A message the bot sent, as it stands now (edits applied; ``edits`` keeps each new text).

    ``text`` is what users see (after parsing), ``raw`` what the bot sent, ``file`` the upload
    of a voice note or video. ``thread_id`` and ``reply_to`` are what the bot asked for.
    """

    chat_id: int
    message_id: int
    method: str
    text: str | None = None
    raw: str | None = None
    parse_mode: str | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    reply_to: int | None = None
    thread_id: int | None = None
    file: FilePart | None = None
    duration: int | None = None
    sent_at: float = 0.0
    edits: list[str] = field(default_factory=list)
    edited_at: list[float] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return {"sendVoice": "voice", "sendVideo": "video"}.get(self.method, "text")


@dataclass(frozen=True, slots=True)
class ChatActionSent:
    chat_id: int
    action: str
    thread_id: int | None
    at: float


class FakeTelegram(HttpFake):
    """The Bot API methods a bot built on PTB calls, plus test controls.

    Endpoint names for ``latency`` and faults are the method names (``"sendMessage"``...).
    ``retry_after`` is the wait a 429 announces (``fail_next("sendMessage", 429)``).
    """

    METHODS = (
        "getMe", "getUpdates", "deleteWebhook", "setWebhook", "getWebhookInfo", "getFile", "sendMessage",
        "sendVoice", "sendVideo", "sendChatAction", "editMessageText", "setMyCommands", "getMyCommands",
        "getChatMember", "close", "logOut",
    )
    ENDPOINTS = METHODS

    def __init__(
        self,
        token: str = TOKEN,
        *,
        bot_username: str = "voicebot_test_bot",
        bot_name: str = "Voicebot",
        retry_after: int = 1,
        webhook_retry_delay: float = 0.2,
    ) -> None:
        super().__init__()
        self.token = token
        self.bot_user = FakeUser(int(token.split(":")[0]), bot_name, bot_username, is_bot=True)
        self.retry_after = retry_after
        self.webhook_retry_delay = webhook_retry_delay
        self.sent: list[SentMessage] = []
        self.chat_actions: list[ChatActionSent] = []
        self.commands: list[dict[str, str]] = []
        self.admins: dict[tuple[int, int], str] = {}
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self.webhook_posts: list[tuple[int, int | None]] = []  # (update_id, status or None)
        #: Open a new connection for every webhook post (Telegram uses many connections), so
        #: several processes sharing the port (SO_REUSEPORT) each get some of the updates.
        self.webhook_new_connection_each = False
        self.confirmed_offset = 0
        self.allowed_updates: list[str] = []
        self._state = threading.Lock()
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(500_000)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._chats: dict[int, FakeChat] = {}
        self._files: dict[str, StoredFile] = {}
        self._file_numbers = itertools.count(1)
        self._user_ids = itertools.count(1001)
        self._group_ids = itertools.count(1)
        self._poll_generation = 0
        self._webhook_task: asyncio.Task[None] | None = None
        for method in self.METHODS:
            for verb in ("GET", "POST"):
                self.route(verb, f"/bot{{token}}/{method}", self._method, endpoint=method)
        self.route("GET", "/file/bot{token}/{path:.+}", self._download, endpoint="file")

    # ------------------------------------------------------------------ configuration for PTB

    @property
    def api_base_url(self) -> str:
        """PTB's ``base_url`` (it appends the token): our ``TELEGRAM_BASE_URL``."""
        return f"{self.base_url}/bot"

    @property
    def file_base_url(self) -> str:
        """PTB's ``base_file_url``: our ``TELEGRAM_BASE_FILE_URL``."""
        return f"{self.base_url}/file/bot"

    def env(self) -> dict[str, str]:
        return {
            "TELEGRAM_BOT_TOKEN": self.token,
            "TELEGRAM_BASE_URL": self.api_base_url,
            "TELEGRAM_BASE_FILE_URL": self.file_base_url,
        }

    # ------------------------------------------------------------------ test side: people and chats

    def user(self, first_name: str = "Alice", *, username: str | None = None, user_id: int | None = None) -> FakeUser:
        return FakeUser(user_id or next(self._user_ids), first_name, username)

    def private_chat(self, user: FakeUser) -> FakeChat:
        return self._chat(FakeChat(user.id, "private", first_name=user.first_name))

    def new_private_chat(self, first_name: str = "Alice") -> tuple[FakeUser, FakeChat]:
        """A new user and their private chat with the bot."""
        user = self.user(first_name)
        return user, self.private_chat(user)

    def group(self, title: str = "Test group", *, forum: bool = False, chat_id: int | None = None) -> FakeChat:
        return self._chat(FakeChat(chat_id or -(1_001_000_000_000 + next(self._group_ids)), "supergroup", title, is_forum=forum))

    def _chat(self, chat: FakeChat) -> FakeChat:
        self._chats[chat.id] = chat
        return chat

    def set_admin(self, chat: FakeChat, user: FakeUser, status: str = "administrator") -> None:
        self.admins[(chat.id, user.id)] = status

    # ------------------------------------------------------------------ test side: updates

    def send_text(
        self,
        chat: FakeChat,
        user: FakeUser,
        text: str,
        *,
        reply_to: SentMessage | int | None = None,
        thread_id: int | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A user writes ``text``; commands and @mentions get their entities as Telegram adds them."""
        return self.push_message(chat, user, _with_entities("text", text, entities), reply_to=reply_to,
                                 thread_id=thread_id)

    def send_voice(
        self,
        chat: FakeChat,
        user: FakeUser,
        data: bytes,
        *,
        duration: int | None = None,
        file_size: int | None = None,
        caption: str | None = None,
        reply_to: SentMessage | int | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """A user records a voice note (``data`` as the file); the duration is measured unless given."""
        stored = self.store_file(data, "voice", "oga", declared_size=file_size)
        voice = {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "mime_type": "audio/ogg",
            "duration": duration if duration is not None else _measured_seconds(data),
            "file_size": stored.declared_size,
        }
        return self._media_message(chat, user, "voice", voice, caption, reply_to, thread_id)

    def send_audio(
        self, chat: FakeChat, user: FakeUser, data: bytes, *, file_name: str = "song.mp3",
        mime_type: str = "audio/mpeg", duration: int | None = None, caption: str | None = None,
    ) -> dict[str, Any]:
        """A user sends an audio file (a music/audio attachment, not a voice note)."""
        stored = self.store_file(data, "music", file_name.rsplit(".", 1)[-1])
        audio = {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_name": file_name,
            "mime_type": mime_type, "duration": duration if duration is not None else _measured_seconds(data),
            "file_size": stored.declared_size,
        }
        return self._media_message(chat, user, "audio", audio, caption, None, None)

    def send_video_note(self, chat: FakeChat, user: FakeUser, data: bytes, *, duration: int | None = None) -> dict[str, Any]:
        """A user records a round video note (MP4)."""
        stored = self.store_file(data, "video_notes", "mp4")
        note = {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "length": 240,
            "duration": duration if duration is not None else _measured_seconds(data),
            "file_size": stored.declared_size,
        }
        return self._media_message(chat, user, "video_note", note, None, None, None)

    def _media_message(
        self, chat: FakeChat, user: FakeUser, kind: str, media: dict[str, Any], caption: str | None,
        reply_to: SentMessage | int | None, thread_id: int | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {kind: media, **(_with_entities("caption", caption) if caption else {})}
        return self.push_message(chat, user, fields, reply_to=reply_to, thread_id=thread_id)

    def push_message(
        self,
        chat: FakeChat,
        user: FakeUser,
        fields: dict[str, Any],
        *,
        reply_to: SentMessage | int | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue an update carrying a new message from ``user`` with ``fields`` (text, voice...)."""
        message = self._new_message(chat, user, fields, thread_id=thread_id)
        if reply_to is not None:
            target_id = reply_to.message_id if isinstance(reply_to, SentMessage) else reply_to
            target = self._messages.get((chat.id, target_id))
            if target is not None:
                message["reply_to_message"] = _without_reply(target)
        return self.push_update({"message": message})

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update; an ``update_id`` is assigned unless it has one (a redelivery)."""
        update = dict(update)
        update.setdefault("update_id", next(self._update_ids))
        with self._state:
            self._updates.append(update)
        return update

    def redeliver(self, update: dict[str, Any]) -> dict[str, Any]:
        """The same message once more in a new update, as after a lost confirmation or a replayed webhook."""
        return self.push_update({k: v for k, v in update.items() if k != "update_id"})

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by an offset (polling) or a 200 (webhook)."""
        with self._state:
            return list(self._updates)

    def store_file(self, data: bytes, folder: str, extension: str, *, declared_size: int | None = None) -> StoredFile:
        number = next(self._file_numbers)
        file_id = f"AwACAgQAAxkBAA{number:08d}{hashlib.sha1(data).hexdigest()[:12]}"
        stored = StoredFile(
            file_id, f"AgAD{number:06d}", f"{folder}/file_{number}.{extension}", data,
            declared_size if declared_size is not None else len(data),
        )
        self._files[file_id] = stored
        return stored

    # ------------------------------------------------------------------ test side: reading what the bot did

    def sent_to(self, chat: FakeChat | int, kind: str | None = None) -> list[SentMessage]:
        chat_id = chat.id if isinstance(chat, FakeChat) else chat
        return [m for m in list(self.sent) if m.chat_id == chat_id and (kind is None or m.kind == kind)]

    def texts(self, chat: FakeChat | int) -> list[str]:
        """What the chat shows of the bot's text messages, in order, edits applied."""
        return [m.text or "" for m in self.sent_to(chat, "text")]

    def actions_in(self, chat: FakeChat | int) -> list[str]:
        chat_id = chat.id if isinstance(chat, FakeChat) else chat
        return [a.action for a in list(self.chat_actions) if a.chat_id == chat_id]

    async def wait_for_sent(
        self, chat: FakeChat | int, count: int = 1, *, kind: str | None = None, timeout: float = 10.0
    ) -> list[SentMessage]:
        """Wait until the bot sent ``count`` messages (of ``kind``) to ``chat``."""
        return await self.wait_until(lambda: len(self.sent_to(chat, kind)) >= count, lambda: self.sent_to(chat, kind), timeout)

    async def wait_until(self, ready: Callable[[], bool], result: Callable[[], Any] = lambda: None, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s; bot sent {self._summary()}")
            await asyncio.sleep(0.01)
        return result()

    def wait_until_sync(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        """:meth:`wait_until` for a test thread that is not running an event loop (fake in thread mode)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s; bot sent {self._summary()}")
            time.sleep(0.02)

    def _summary(self) -> str:
        return repr([(m.chat_id, m.kind, (m.text or "")[:60]) for m in self.sent[-10:]])

    # ------------------------------------------------------------------ protocol: plumbing

    def error_body(self, status: int, message: str) -> dict:
        descriptions = {
            400: "Bad Request: injected fault", 401: "Unauthorized", 403: "Forbidden: bot was blocked by the user",
            404: "Not Found", 409: "Conflict: terminated by other getUpdates request",
            429: f"Too Many Requests: retry after {self.retry_after}", 500: "Internal Server Error",
            502: "Bad Gateway",
        }
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": descriptions.get(status, message)}
        if status == 429:
            body["parameters"] = {"retry_after": self.retry_after}
        return body

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return json_response({"ok": True, "result": result})

    @staticmethod
    def _failure(error: ApiError) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": error.code, "description": error.description}
        if error.parameters:
            body["parameters"] = error.parameters
        return json_response(body, error.code)

    async def _method(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._failure(ApiError("Unauthorized", 401))
        params = recorded.params
        handler = getattr(self, f"_api_{_snake(recorded.endpoint)}")
        try:
            return self._ok(await handler(params, recorded))
        except ApiError as error:
            return self._failure(error)

    async def _download(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401, text="Unauthorized")
        stored = next((f for f in self._files.values() if f.file_path == request.match_info["path"]), None)
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=stored.data, content_type="application/octet-stream")

    def _chat_of(self, params: dict[str, str]) -> FakeChat:
        raw = params.get("chat_id", "")
        try:
            return self._chats[int(raw)]
        except (ValueError, KeyError):
            raise ApiError("Bad Request: chat not found") from None

    def _topic(self, chat: FakeChat, params: dict[str, str]) -> int | None:
        raw = params.get("message_thread_id")
        if raw in (None, ""):
            return None
        if not chat.is_forum:
            raise ApiError("Bad Request: message thread not found")
        return int(raw)

    def _reply_target(self, chat: FakeChat, params: dict[str, str]) -> dict[str, Any] | None:
        reply = _json_param(params, "reply_parameters") or {}
        if "reply_to_message_id" in params:
            reply = {"message_id": int(params["reply_to_message_id"]),
                     "allow_sending_without_reply": params.get("allow_sending_without_reply") == "true"}
        if not reply:
            return None
        target = self._messages.get((int(reply.get("chat_id", chat.id)), int(reply["message_id"])))
        if target is None and not reply.get("allow_sending_without_reply"):
            raise ApiError("Bad Request: message to be replied not found")
        return target

    def _new_message(
        self, chat: FakeChat, sender: FakeUser, fields: dict[str, Any], *, thread_id: int | None = None
    ) -> dict[str, Any]:
        self._chat(chat)
        counter = self._message_ids.setdefault(chat.id, itertools.count(1))
        message: dict[str, Any] = {
            "message_id": next(counter), "date": int(time.time()), "chat": chat.to_dict(),
            "from": sender.to_dict(), **fields,
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        self._messages[(chat.id, message["message_id"])] = message
        return message

    def _bot_message(
        self, method: str, chat: FakeChat, params: dict[str, str], fields: dict[str, Any], record: SentMessage
    ) -> dict[str, Any]:
        thread_id = self._topic(chat, params)
        target = self._reply_target(chat, params)
        message = self._new_message(chat, self.bot_user, fields, thread_id=thread_id)
        if target is not None:
            message["reply_to_message"] = _without_reply(target)
        record.chat_id, record.message_id, record.method = chat.id, message["message_id"], method
        record.thread_id = thread_id
        record.reply_to = target["message_id"] if target is not None else None
        record.sent_at = time.time()
        self.sent.append(record)
        return message

    # ------------------------------------------------------------------ protocol: methods

    async def _api_get_me(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        return {**self.bot_user.to_dict(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def _api_close(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        return True

    _api_log_out = _api_close

    async def _api_get_updates(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        if self.webhook_url:
            raise ApiError(
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
                "the webhook first", 409,
            )
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        if allowed := _json_param(params, "allowed_updates"):
            self.allowed_updates = list(allowed)
        self._poll_generation += 1
        generation = self._poll_generation
        deadline = time.monotonic() + timeout
        while True:
            with self._state:
                if offset:
                    self.confirmed_offset = max(self.confirmed_offset, offset)
                self._updates = [u for u in self._updates if u["update_id"] >= self.confirmed_offset]
                ready = [u for u in self._updates if self._allowed(u)][:limit]
            if ready or time.monotonic() >= deadline or self._closing is None or self._closing.is_set():
                return ready
            if generation != self._poll_generation:
                raise ApiError("Conflict: terminated by other getUpdates request; make sure that only one bot "
                               "instance is running", 409)
            await asyncio.sleep(0.02)

    def _allowed(self, update: dict[str, Any]) -> bool:
        kinds = set(update) - {"update_id"}
        return not self.allowed_updates or bool(kinds & set(self.allowed_updates))

    async def _api_delete_webhook(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        self.webhook_url, self.webhook_secret = "", None
        if params.get("drop_pending_updates") == "true":
            with self._state:
                self._updates.clear()
        return True

    async def _api_set_webhook(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        url = params.get("url", "")
        if not url.startswith(("http://", "https://")):
            raise ApiError("Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.fullmatch(secret):
            raise ApiError("Bad Request: secret token contains unallowed characters")
        if allowed := _json_param(params, "allowed_updates"):
            self.allowed_updates = list(allowed)
        self.webhook_url, self.webhook_secret = url, secret
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.create_task(self._push_to_webhook())
        return True

    async def _api_get_webhook_info(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        return {"url": self.webhook_url, "has_custom_certificate": False, "pending_update_count": len(self.pending_updates)}

    async def _push_to_webhook(self) -> None:
        """Deliver pending updates one by one to the webhook, again until it answers 200."""
        connector = aiohttp.TCPConnector(force_close=self.webhook_new_connection_each)
        async with aiohttp.ClientSession(connector=connector) as session:
            while self.webhook_url and self._closing is not None and not self._closing.is_set():
                with self._state:
                    update = next((u for u in self._updates if self._allowed(u)), None)
                if update is None:
                    await asyncio.sleep(0.02)
                    continue
                headers = {"X-Telegram-Bot-Api-Secret-Token": self.webhook_secret} if self.webhook_secret else {}
                status: int | None = None
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(self.webhook_url, json=update, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as response:
                        status = response.status
                self.webhook_posts.append((update["update_id"], status))
                if status == 200:
                    with self._state:
                        self._updates = [u for u in self._updates if u is not update]
                else:
                    await self._sleep(self.webhook_retry_delay)

    async def stop(self) -> None:
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._webhook_task
        await super().stop()

    async def _api_get_file(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        stored = self._files.get(params.get("file_id", ""))
        if stored is None:
            raise ApiError("Bad Request: invalid file_id")
        if stored.declared_size > DOWNLOAD_LIMIT:
            raise ApiError("Bad Request: file is too big")
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "file_size": stored.declared_size, "file_path": stored.file_path}

    async def _api_send_message(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        chat = self._chat_of(params)
        raw = params.get("text", "")
        parse_mode = params.get("parse_mode") or None
        visible, entities = parse_text(raw, parse_mode, MESSAGE_LIMIT)
        fields: dict[str, Any] = {"text": visible}
        if entities:
            fields["entities"] = entities
        record = SentMessage(chat.id, 0, "sendMessage", visible, raw, parse_mode, entities)
        return self._bot_message("sendMessage", chat, params, fields, record)

    async def _send_file(self, method: str, field_name: str, params: dict[str, str], recorded: RecordedRequest,
                         describe: Callable[[StoredFile, dict[str, str]], dict[str, Any]]) -> Any:
        chat = self._chat_of(params)
        upload = recorded.files.get(field_name)
        if upload is None:
            raise ApiError(f"Bad Request: there is no {field_name} in the request")
        caption, entities = None, []
        if params.get("caption"):
            caption, entities = parse_text(params["caption"], params.get("parse_mode") or None, CAPTION_LIMIT)
        stored = self.store_file(upload.data, f"{field_name}s", "ogg" if field_name == "voice" else "mp4")
        fields: dict[str, Any] = {field_name: describe(stored, params)}
        if caption:
            fields["caption"] = caption
        duration = int(params["duration"]) if params.get("duration") else None
        record = SentMessage(chat.id, 0, method, caption, params.get("caption"), None, entities, file=upload, duration=duration)
        return self._bot_message(method, chat, params, fields, record)

    async def _api_send_voice(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        return await self._send_file("sendVoice", "voice", params, recorded, lambda stored, p: {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "mime_type": "audio/ogg",
            "duration": int(p.get("duration") or 0), "file_size": stored.declared_size,
        })

    async def _api_send_video(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        return await self._send_file("sendVideo", "video", params, recorded, lambda stored, p: {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "width": 64, "height": 64,
            "duration": int(p.get("duration") or 0), "mime_type": "video/mp4", "file_size": stored.declared_size,
        })

    async def _api_send_chat_action(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        chat = self._chat_of(params)
        action = params.get("action", "")
        if action not in CHAT_ACTIONS:
            raise ApiError("Bad Request: wrong parameter action in request")
        self.chat_actions.append(ChatActionSent(chat.id, action, self._topic(chat, params), time.time()))
        return True

    async def _api_edit_message_text(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        chat = self._chat_of(params)
        message_id = int(params.get("message_id") or 0)
        record = next((m for m in self.sent if m.chat_id == chat.id and m.message_id == message_id), None)
        if record is None:
            raise ApiError("Bad Request: message to edit not found")
        if record.kind != "text":
            raise ApiError("Bad Request: there is no text in the message to edit")
        parse_mode = params.get("parse_mode") or None
        visible, entities = parse_text(params.get("text", ""), parse_mode, MESSAGE_LIMIT)
        if visible == record.text and entities == record.entities:
            raise ApiError(NOT_MODIFIED)
        record.text, record.raw, record.parse_mode, record.entities = visible, params.get("text"), parse_mode, entities
        record.edits.append(visible)
        record.edited_at.append(time.time())
        message = dict(self._messages[(chat.id, message_id)])
        message.update({"text": visible, "edit_date": int(time.time())})
        message.pop("entities", None)
        if entities:
            message["entities"] = entities
        self._messages[(chat.id, message_id)] = message
        return message

    async def _api_set_my_commands(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        commands = _json_param(params, "commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError("Bad Request: commands must be a list of at most 100 items")
        for command in commands:
            if not _COMMAND.fullmatch(str(command.get("command", ""))):
                raise ApiError("Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise ApiError("Bad Request: command description must be 1-256 characters")
        self.commands = commands
        return True

    async def _api_get_my_commands(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        return self.commands

    async def _api_get_chat_member(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        chat = self._chat_of(params)
        user_id = int(params.get("user_id") or 0)
        status = self.admins.get((chat.id, user_id), "member")
        user = {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}
        if status == "creator":
            return {"status": "creator", "user": user, "is_anonymous": False}
        if status == "administrator":
            rights = ("can_be_edited is_anonymous can_manage_chat can_delete_messages can_manage_video_chats "
                      "can_restrict_members can_promote_members can_change_info can_invite_users can_post_stories "
                      "can_edit_stories can_delete_stories").split()
            return {"status": "administrator", "user": user, **{right: right == "can_manage_chat" for right in rights}}
        return {"status": status, "user": user}


# ----------------------------------------------------------------------------- small pieces


def _snake(method: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", method).lower()


def _json_param(params: dict[str, str], name: str) -> Any:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(f"Bad Request: can't parse {name} JSON object") from None


def _without_reply(message: dict[str, Any]) -> dict[str, Any]:
    """A message as it appears inside ``reply_to_message`` (Telegram does not nest further)."""
    return {k: v for k, v in message.items() if k != "reply_to_message"}


_MENTION = re.compile(r"(?<![\w@])@[A-Za-z][A-Za-z0-9_]{3,31}")
_BOT_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(?:@[A-Za-z][A-Za-z0-9_]{3,31})?")


def _with_entities(key: str, text: str, entities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``{"text": ..., "entities": ...}`` (or caption / caption_entities); entities found if not given."""
    found = _auto_entities(text) if entities is None else entities
    return {key: text, **({f"{key}_entities" if key != "text" else "entities": found} if found else {})}


def _auto_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram's clients attach by themselves: a leading /command and @mentions."""
    entities = []
    if command := _BOT_COMMAND.match(text):
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command.group(0))})
    for mention in _MENTION.finditer(text):
        entities.append({"type": "mention", "offset": utf16_len(text[: mention.start()]),
                         "length": utf16_len(mention.group(0))})
    return entities


def _measured_seconds(data: bytes) -> int:
    """A media file's duration as Telegram reports it (whole seconds); 1 for undecodable bytes."""
    try:
        return max(1, round(audio_samples.audio_duration(data)))
    except Exception:  # noqa: BLE001 - corrupt media is a valid test input
        return 1
