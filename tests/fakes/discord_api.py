"""A local stand-in for Discord: the REST API and the gateway WebSocket discord.py 2.7 talks to.

Point discord.py at it with ``discord.http.Route.BASE = fake.api_base_url`` and
``DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)`` (our ``DISCORD_API_BASE_URL``
and ``DISCORD_GATEWAY_URL`` do exactly that). It holds one small world: the bot, three people,
one server with text channels, a thread and a voice channel, and DM channels.

Facts copied from the real service (WIRE-NOTES.md):
- JSON responses carry ``Content-Type: application/json`` exactly (discord.py fails at login
  on ``; charset=utf-8``); errors are ``{"message", "code"}``;
- a 429 carries a ``Via`` header and a JSON ``retry_after``, or discord.py takes it for a
  Cloudflare ban and gives up (:meth:`FakeDiscord.rate_limit_next`);
- the gateway speaks ``zstd-stream``, ``zlib-stream`` or plain text frames, as the client asks
  in the ``compress`` query parameter; HELLO -> IDENTIFY -> READY (with
  ``resume_gateway_url``) -> one GUILD_CREATE per server; a heartbeat is ACKed; an IDENTIFY
  asking for the message-content intent the application lacks is closed with 4014;
- the bot's own messages come back to it as MESSAGE_CREATE;
- a voice message is flags 8192 with one ``audio/ogg`` attachment carrying ``duration_secs``
  and ``waveform`` (<= 256 bytes) and no text: 50159 text, 50160 not one file, 50161 no
  metadata, 50173 a channel that refuses voice messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import mimetypes
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.http_fake import FilePart, HttpFake, RecordedRequest, json_response

API = "/api/v10"
VOICE_MESSAGE_FLAG = 1 << 13
EPHEMERAL_FLAG = 1 << 6
MESSAGE_CONTENT_INTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | MESSAGE_CONTENT_INTENT  # members, presences, content

# Permission bits (https://discord.com/developers/docs/topics/permissions).
MANAGE_GUILD = 1 << 5
MEMBER_PERMISSIONS = sum(
    1 << bit for bit in (6, 10, 11, 14, 15, 16, 18, 20, 21, 25, 31, 35, 38, 46)
)  # add reactions, view, send, embed, attach, history, external emoji, connect, speak, VAD,
#    application commands, send in threads, ..., SEND_VOICE_MESSAGES (46)
ALL_PERMISSIONS = (1 << 50) - 1

CHANNEL_TEXT, CHANNEL_DM, CHANNEL_VOICE, CHANNEL_PUBLIC_THREAD = 0, 1, 2, 11
MESSAGE_DEFAULT, MESSAGE_REPLY, MESSAGE_CHAT_INPUT_COMMAND = 0, 19, 20

_ids = itertools.count(1_300_000_000_000_000_000 + secrets.randbelow(1_000_000) * 1_000)


def snowflake() -> int:
    """A fresh, increasing Discord-like id."""
    return next(_ids)


def _now() -> str:
    return datetime.now(UTC).isoformat()


# ----------------------------------------------------------------------------- the world


@dataclass(slots=True)
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "username": self.username, "discriminator": "0",
            "global_name": self.global_name, "avatar": None, "bot": self.bot, "public_flags": 0,
        }


@dataclass(slots=True)
class FakeChannel:
    """A channel; ``refuses_voice_messages`` makes voice messages fail with 50173."""

    id: int
    type: int
    name: str | None = None
    guild_id: int | None = None
    parent_id: int | None = None
    recipient: FakeUser | None = None
    refuses_voice_messages: bool = False

    @property
    def is_dm(self) -> bool:
        return self.type == CHANNEL_DM

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "type": self.type, "flags": 0}
        if self.is_dm:
            assert self.recipient is not None
            return {**data, "recipients": [self.recipient.payload()], "last_message_id": None}
        data.update(
            name=self.name, guild_id=str(self.guild_id), position=0, permission_overwrites=[],
            nsfw=False, parent_id=str(self.parent_id) if self.parent_id else None, rate_limit_per_user=0,
        )
        if self.type == CHANNEL_VOICE:
            data.update(bitrate=64000, user_limit=0, rtc_region=None)
        if self.type == CHANNEL_PUBLIC_THREAD:
            data.update(
                owner_id=str(self.guild_id), member_count=1, message_count=0,
                thread_metadata={"archived": False, "auto_archive_duration": 1440,
                                 "archive_timestamp": _now(), "locked": False},
            )
        return data


@dataclass(slots=True)
class FakeRole:
    id: int
    name: str
    permissions: int
    managed: bool = False
    bot_id: int | None = None

    def payload(self, position: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "name": self.name, "permissions": str(self.permissions), "position": position,
            "color": 0, "hoist": False, "managed": self.managed, "mentionable": True, "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(slots=True)
class FakeGuild:
    id: int
    name: str
    owner: FakeUser
    members: dict[int, tuple[FakeUser, list[int]]] = field(default_factory=dict)  # user id -> (user, role ids)
    roles: list[FakeRole] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)
    voice_states: dict[int, int] = field(default_factory=dict)  # user id -> voice channel id

    def permissions(self, user_id: int) -> int:
        if user_id == self.owner.id:
            return ALL_PERMISSIONS
        _, role_ids = self.members[user_id]
        value = 0
        for role in self.roles:
            if role.id == self.id or role.id in role_ids:
                value |= role.permissions
        return value

    def member_payload(self, user_id: int, *, with_user: bool = True) -> dict[str, Any]:
        user, role_ids = self.members[user_id]
        data: dict[str, Any] = {
            "roles": [str(r) for r in role_ids], "nick": None, "avatar": None, "joined_at": _now(),
            "deaf": False, "mute": False, "flags": 0, "pending": False, "premium_since": None,
        }
        if with_user:
            data["user"] = user.payload()
        return data

    def voice_state_payload(self, user_id: int, channel_id: int | None) -> dict[str, Any]:
        return {
            "guild_id": str(self.id), "channel_id": str(channel_id) if channel_id else None,
            "user_id": str(user_id), "member": self.member_payload(user_id), "session_id": secrets.token_hex(16),
            "deaf": False, "mute": False, "self_deaf": False, "self_mute": False, "self_video": False,
            "self_stream": False, "suppress": False, "request_to_speak_timestamp": None,
        }

    def payload(self) -> dict[str, Any]:
        """The GUILD_CREATE body: the guild with its channels, threads, roles and voice states."""
        in_voice = set(self.voice_states)
        listed = [uid for uid in self.members if uid in in_voice or self.members[uid][0].bot]
        return {
            "id": str(self.id), "name": self.name, "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": str(self.owner.id), "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
            "roles": [role.payload(i) for i, role in enumerate(self.roles)], "emojis": [], "stickers": [],
            "features": [], "mfa_level": 0, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None, "description": None, "banner": None,
            "premium_tier": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
            "nsfw_level": 0, "premium_progress_bar_enabled": False, "joined_at": _now(), "large": False,
            "unavailable": False, "member_count": len(self.members),
            "members": [self.member_payload(uid) for uid in listed],
            "channels": [c.payload() for c in self.channels if c.type != CHANNEL_PUBLIC_THREAD],
            "threads": [c.payload() for c in self.channels if c.type == CHANNEL_PUBLIC_THREAD],
            "voice_states": [
                {k: v for k, v in self.voice_state_payload(uid, cid).items() if k != "member"}
                for uid, cid in self.voice_states.items()
            ],
            "presences": [], "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
        }


@dataclass(slots=True)
class FakeInteraction:
    """A slash-command invocation and what the bot answered to it."""

    id: int
    token: str
    name: str
    payload: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # POST .../callback bodies
    followups: list[dict[str, Any]] = field(default_factory=list)  # messages sent by webhook
    edits: list[dict[str, Any]] = field(default_factory=list)  # PATCH @original bodies
    deleted: bool = False  # DELETE @original: the bot withdrew its "thinking..." response
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def texts(self) -> list[str]:
        """Every text the bot showed for this interaction, in order."""
        out = [c.get("data", {}).get("content") or "" for c in self.callbacks if c.get("type") == 4]
        out += [e.get("content") or "" for e in self.edits]
        out += [m.get("content") or "" for m in self.followups]
        return [t for t in out if t]

    @property
    def ephemeral(self) -> bool:
        flags = [c.get("data", {}).get("flags", 0) or 0 for c in self.callbacks]
        flags += [m.get("flags", 0) or 0 for m in self.followups]
        return any(f & EPHEMERAL_FLAG for f in flags)


# ----------------------------------------------------------------------------- gateway frames


class GatewayFrames:
    """Encodes gateway payloads the way the client asked: zstd-stream, zlib-stream or plain text."""

    def __init__(self, compress: str | None) -> None:
        self.compress = compress
        if compress == "zstd-stream":
            import zstandard

            self._zstd = zstandard.ZstdCompressor().compressobj()
            self._flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        elif compress == "zlib-stream":
            self._zlib = zlib.compressobj()
        elif compress:
            raise ValueError(f"unknown gateway compression {compress!r}")

    def encode(self, payload: dict[str, Any]) -> bytes | str:
        text = json.dumps(payload, separators=(",", ":"))
        if self.compress == "zstd-stream":
            return self._zstd.compress(text.encode()) + self._zstd.flush(self._flush)
        if self.compress == "zlib-stream":
            return self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        return text


@dataclass(slots=True)
class GatewaySession:
    """One WebSocket connection of the bot."""

    ws: web.WebSocketResponse
    frames: GatewayFrames
    path: str
    session_id: str | None = None
    intents: int | None = None
    seq: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    shard: tuple[int, int] | None = None  # [shard_id, num_shards] from IDENTIFY

    def carries(self, guild_id: int | str | None) -> bool:
        """Whether this session gets a server's events (DMs: shard 0), as Discord routes them."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return shard_id == ((int(guild_id) >> 22) % count if guild_id is not None else 0)

    async def send(self, op: int, data: Any, event: str | None = None) -> None:
        payload: dict[str, Any] = {"op": op, "d": data, "s": None, "t": event}
        if op == 0:
            self.seq += 1
            payload["s"] = self.seq
        frame = self.frames.encode(payload)
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)


# ----------------------------------------------------------------------------- the fake


class FakeDiscord(HttpFake):
    """Discord's REST API under ``/api/v10``, its gateway at ``/gateway``, attachments under ``/attachments``.

    Endpoint names for ``latency``: ``"rest"``, ``"gateway"``, ``"cdn"``.
    ``message_content_allowed=False`` makes an IDENTIFY asking for the intent close with 4014.
    """

    ENDPOINTS = ("rest", "gateway", "cdn")

    def __init__(self, token: str = "fake-discord-bot-token", *, message_content_allowed: bool = True) -> None:
        super().__init__()
        self.token = token
        self.message_content_allowed = message_content_allowed
        self.heartbeat_interval_ms = 41_250
        self.recommended_shards = 1  # what GET /gateway/bot recommends (DISCORD_SHARDS=auto)
        self.bot = FakeUser(snowflake(), "voicebot", "Voicebot", bot=True)
        self.application_id = self.bot.id
        self.alice = FakeUser(snowflake(), "alice", "Alice")  # the server's owner
        self.bob = FakeUser(snowflake(), "bob", "Bob")  # a member without Manage Server
        self.other_bot = FakeUser(snowflake(), "otherbot", "Other Bot", bot=True)
        self.guild = self._build_guild()
        self.general, self.bots_channel, self.voice_channel, self.thread = self.guild.channels
        self.dms: dict[int, FakeChannel] = {}
        self.messages: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self.typing: list[int] = []  # channel ids, one per typing request
        #: What the bot uploaded with each of its messages (by message id), byte for byte.
        self.uploads: dict[str, list[FilePart]] = {}
        self.sessions: list[GatewaySession] = []
        self._attachments: dict[str, tuple[bytes, str]] = {}
        self._message_added = asyncio.Condition()
        self._session_ready = asyncio.Condition()
        self._add_routes()

    def _build_guild(self) -> FakeGuild:
        guild_id = snowflake()
        guild = FakeGuild(guild_id, "Test Server", owner=self.alice)
        everyone = FakeRole(guild_id, "@everyone", MEMBER_PERMISSIONS)
        bot_role = FakeRole(snowflake(), "Voicebot", MEMBER_PERMISSIONS, managed=True, bot_id=self.bot.id)
        guild.roles = [everyone, bot_role]
        for user, roles in ((self.bot, [bot_role.id]), (self.alice, []), (self.bob, []), (self.other_bot, [])):
            guild.members[user.id] = (user, roles)
        general = FakeChannel(snowflake(), CHANNEL_TEXT, "general", guild_id)
        guild.channels = [
            general,
            FakeChannel(snowflake(), CHANNEL_TEXT, "bots", guild_id),
            FakeChannel(snowflake(), CHANNEL_VOICE, "Lounge", guild_id),
            FakeChannel(snowflake(), CHANNEL_PUBLIC_THREAD, "ideas", guild_id, parent_id=general.id),
        ]
        return guild

    # ------------------------------------------------------------------ addresses

    @property
    def api_base_url(self) -> str:
        """What ``DISCORD_API_BASE_URL`` / ``Route.BASE`` should be."""
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        """What ``DISCORD_GATEWAY_URL`` should be (discord.py adds the query string)."""
        return self.base_url.replace("http://", "ws://") + "/gateway/"

    @property
    def resume_gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/gateway-resume/"

    # ------------------------------------------------------------------ test controls

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The DM channel between ``user`` and the bot (created on first use)."""
        if user.id not in self.dms:
            self.dms[user.id] = FakeChannel(snowflake(), CHANNEL_DM, recipient=user)
        return self.dms[user.id]

    def channel(self, channel_id: int) -> FakeChannel | None:
        for channel in [*self.guild.channels, *self.dms.values()]:
            if channel.id == channel_id:
                return channel
        return None

    def rate_limit_next(self, path_contains: str, *, retry_after: float = 0.2, times: int = 1,
                        method: str | None = None) -> None:
        """Answer the next matching requests with Discord's 429 (``Via`` header, JSON ``retry_after``)."""
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False, "code": 0}
        headers = {
            "Via": "1.1 google", "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": str(retry_after),
            "X-RateLimit-Bucket": "fakebucket", "X-RateLimit-Scope": "user",
        }
        self.fail_next(path_contains, 429, body=body, headers=headers, times=times, method=method)

    def add_attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None,
        *,
        duration_secs: float | None = None,
        waveform: str | None = None,
        size: int | None = None,
    ) -> dict[str, Any]:
        """Host ``data`` on the fake CDN and return the attachment object a message carries."""
        attachment_id = snowflake()
        path = f"/attachments/{attachment_id}/{filename}"
        self._attachments[path] = (data, content_type or "application/octet-stream")
        url = self.base_url + path
        attachment: dict[str, Any] = {
            "id": str(attachment_id), "filename": filename, "size": len(data) if size is None else size,
            "url": url, "proxy_url": url, "content_type": content_type,
        }
        if duration_secs is not None:
            attachment.update(duration_secs=duration_secs, waveform=waveform or base64.b64encode(bytes(32)).decode())
        return attachment

    def user_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        content: str = "",
        *,
        mention_bot: bool = False,
        mention_bot_role: bool = False,
        reply_to: dict[str, Any] | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        flags: int = 0,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE body from ``author`` in ``channel`` (not yet sent: see :meth:`send`)."""
        mentions: list[FakeUser] = []
        if mention_bot:
            content = f"<@{self.bot.id}> {content}".strip()
            mentions.append(self.bot)
        role_mentions: list[str] = []
        if mention_bot_role:
            bot_role = next(r for r in self.guild.roles if r.bot_id == self.bot.id)
            content = f"<@&{bot_role.id}> {content}".strip()
            role_mentions.append(str(bot_role.id))
        message = self._message(channel, author, content, attachments=list(attachments), flags=flags)
        if reply_to is not None:
            message["type"] = MESSAGE_REPLY
            message["message_reference"] = {
                "type": 0, "message_id": reply_to["id"], "channel_id": reply_to["channel_id"],
                **({"guild_id": str(channel.guild_id)} if channel.guild_id else {}),
            }
            message["referenced_message"] = reply_to
            author_id = int(reply_to["author"]["id"])
            if author_id == self.bot.id and not mention_bot:
                mentions.append(self.bot)  # a reply pings the replied-to author by default
        message["mentions"] = [self._mention(channel, user) for user in mentions]
        message["mention_roles"] = role_mentions
        return message

    def voice_message(self, channel: FakeChannel, author: FakeUser, ogg: bytes, duration: float) -> dict[str, Any]:
        """A voice message body: flags 8192, one ``voice-message.ogg`` attachment with duration and waveform."""
        attachment = self.add_attachment(
            ogg, "voice-message.ogg", "audio/ogg", duration_secs=duration,
            waveform=base64.b64encode(bytes(range(0, 256, 4))).decode(),
        )
        return self.user_message(channel, author, attachments=[attachment], flags=VOICE_MESSAGE_FLAG)

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """Deliver a user's message: store it and dispatch MESSAGE_CREATE to the bot."""
        await self._store(message)
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def invoke(
        self,
        name: str,
        options: dict[str, str] | None = None,
        *,
        channel: FakeChannel,
        user: FakeUser,
    ) -> FakeInteraction:
        """Dispatch INTERACTION_CREATE for the slash command ``name`` as ``user`` in ``channel``."""
        command = next((c for c in self.commands if c["name"] == name), None)
        if command is None:
            raise AssertionError(f"/{name} was not synced; synced: {[c['name'] for c in self.commands]}")
        types = {o["name"]: o["type"] for o in command.get("options", [])}
        interaction_id, token = snowflake(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)
        payload: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(self.application_id), "type": 2, "token": token,
            "version": 1, "locale": "en-US", "entitlements": [], "attachment_size_limit": 10 * 1024 * 1024,
            "app_permissions": str(MEMBER_PERMISSIONS),
            "data": {
                "id": command["id"], "name": name, "type": 1,
                "options": [{"name": k, "type": types.get(k, 3), "value": v} for k, v in (options or {}).items()],
            },
            "channel_id": str(channel.id), "channel": channel.payload(),
        }
        if channel.is_dm:
            payload.update(user=user.payload(), context=1, authorizing_integration_owners={"1": str(user.id)})
        else:
            member = self.guild.member_payload(user.id)
            member["permissions"] = str(self.guild.permissions(user.id))
            payload.update(
                guild_id=str(self.guild.id), member=member, context=0, guild_locale="en-US",
                guild={"id": str(self.guild.id), "locale": "en-US", "features": []},
                authorizing_integration_owners={"0": str(self.guild.id)},
            )
        interaction = FakeInteraction(interaction_id, token, name, payload)
        self.interactions[interaction_id] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def join_voice(self, user: FakeUser, channel: FakeChannel | None) -> None:
        """``user`` joins ``channel`` (None: leaves voice); dispatches VOICE_STATE_UPDATE."""
        if channel is None:
            self.guild.voice_states.pop(user.id, None)
        else:
            self.guild.voice_states[user.id] = channel.id
        await self.dispatch("VOICE_STATE_UPDATE", self.guild.voice_state_payload(user.id, channel and channel.id))

    # ------------------------------------------------------------------ waiting and reading

    def bot_messages(self, channel: FakeChannel | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted (in ``channel``, if given), oldest first."""
        return [
            m for m in self.messages
            if m["author"]["id"] == str(self.bot.id) and (channel is None or m["channel_id"] == str(channel.id))
        ]

    async def wait_for_bot_messages(
        self, count: int, channel: FakeChannel | None = None, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until the bot posted ``count`` messages (in ``channel``); raises TimeoutError."""

        async def enough() -> list[dict[str, Any]]:
            async with self._message_added:
                await self._message_added.wait_for(lambda: len(self.bot_messages(channel)) >= count)
            return self.bot_messages(channel)

        try:
            return await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{len(self.bot_messages(channel))} of {count} bot messages after {timeout}s: "
                f"{[m['content'][:80] for m in self.bot_messages(channel)]}"
            ) from None

    async def wait_for_session(self, timeout: float = 10.0) -> GatewaySession:
        """Wait until a gateway session identified and got READY and its GUILD_CREATE."""

        async def ready() -> GatewaySession:
            async with self._session_ready:
                await self._session_ready.wait_for(lambda: any(s.ready.is_set() for s in self.sessions))
            return next(s for s in self.sessions if s.ready.is_set())

        return await asyncio.wait_for(ready(), timeout)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH event to every ready session."""
        for session in list(self.sessions):
            if session.ready.is_set() and not session.ws.closed and session.carries(data.get("guild_id")):
                await session.send(0, data, event)

    async def stop(self) -> None:
        for session in list(self.sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(code=1001)
        await super().stop()

    # ------------------------------------------------------------------ errors

    def error_body(self, status: int, message: str) -> dict:
        return {"message": f"{status}: {message}", "code": 0}

    def _error(self, status: int, code: int, message: str, errors: dict | None = None) -> web.Response:
        body: dict[str, Any] = {"message": message, "code": code}
        if errors:
            body["errors"] = errors
        return json_response(body, status)

    # ------------------------------------------------------------------ routes

    def _add_routes(self) -> None:
        rest = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway", self._gateway_info),
            ("GET", "/gateway/bot", self._gateway_info),
            ("PUT", "/applications/{app_id}/commands", self._sync_commands),
            ("GET", "/applications/{app_id}/commands", self._list_commands),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("POST", "/channels/{channel_id}/messages", self._create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("POST", "/users/@me/channels", self._open_dm),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{app_id}/{token}", self._followup),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/@original", self._edit_original),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/@original", self._delete_original),
        ]
        for method, path, handler in rest:
            self.route(method, API + path, handler, endpoint="rest")
        self.route("GET", "/gateway/", self._gateway, endpoint="gateway")
        self.route("GET", "/gateway", self._gateway, endpoint="gateway")  # as GET /gateway/bot names it
        self.route("GET", "/gateway-resume/", self._gateway, endpoint="gateway")
        self.route("GET", "/attachments/{attachment_id}/{filename}", self._attachment, endpoint="cdn")

    def _authorized(self, recorded: RecordedRequest) -> bool:
        return recorded.headers.get("authorization") == f"Bot {self.token}"

    async def _me(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if not self._authorized(recorded):
            return self._error(401, 0, "401: Unauthorized")
        return json_response({**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0})

    async def _application(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        return json_response({
            "id": str(self.application_id), "name": "Voicebot", "icon": None, "description": "",
            "bot_public": True, "bot_require_code_grant": False, "owner": self.alice.payload(),
            "verify_key": secrets.token_hex(32), "team": None, "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED
            "summary": "", "rpc_origins": [], "interactions_endpoint_url": None,
        })

    async def _gateway_info(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": self.gateway_url.rstrip("/"), "shards": self.recommended_shards,
                              "session_start_limit": limit})

    async def _sync_commands(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if not isinstance(recorded.json, list):
            return self._error(400, 50035, "Invalid Form Body")
        self.commands = [
            {"id": str(snowflake()), "application_id": str(self.application_id), "version": str(snowflake()),
             "type": 1, "options": [], "default_member_permissions": None, "dm_permission": True, "nsfw": False,
             **command}
            for command in recorded.json
        ]
        return json_response(self.commands)

    async def _list_commands(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        return json_response(self.commands)

    def _known_channel(self, request: web.Request) -> FakeChannel | None:
        return self.channel(int(request.match_info["channel_id"]))

    async def _get_channel(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        channel = self._known_channel(request)
        return json_response(channel.payload()) if channel else self._error(404, 10003, "Unknown Channel")

    async def _typing(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        channel = self._known_channel(request)
        if channel is None:
            return self._error(404, 10003, "Unknown Channel")
        self.typing.append(channel.id)
        return web.Response(status=204)

    async def _get_message(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        wanted = request.match_info["message_id"]
        found = next((m for m in self.messages if m["id"] == wanted), None)
        return json_response(found) if found else self._error(404, 10008, "Unknown Message")

    async def _open_dm(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        body = recorded.json or {}
        user = next((u for u in (self.alice, self.bob) if str(u.id) == str(body.get("recipient_id"))), None)
        if user is None:
            return self._error(400, 50007, "Cannot send messages to this user")
        return json_response(self.dm_channel(user).payload())

    async def _attachment(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        found = self._attachments.get(request.path)
        if found is None:
            return web.Response(status=404, text="Not Found")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    # ------------------------------------------------------------------ messages

    @staticmethod
    def _body(recorded: RecordedRequest) -> tuple[dict[str, Any], list[FilePart]]:
        """The JSON payload of a JSON or multipart (``payload_json`` + ``files[n]``) request."""
        if recorded.files or "payload_json" in recorded.form:
            payload = json.loads(recorded.form.get("payload_json") or "{}")
            files = [recorded.files[k] for k in sorted(recorded.files, key=lambda k: int(k[6:-1]))]
            return payload, files
        return (recorded.json if isinstance(recorded.json, dict) else {}), []

    def _check_content(self, payload: dict[str, Any]) -> web.Response | None:
        content = payload.get("content") or ""
        if len(content) > 2000:
            errors = {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}
            return self._error(400, 50035, "Invalid Form Body", errors)
        return None

    def _check_voice_message(self, channel: FakeChannel, payload: dict[str, Any],
                             files: list[FilePart]) -> web.Response | None:
        """Discord's rules for a voice message (flags 8192), with its error codes."""
        if payload.get("content"):
            return self._error(400, 50159, "Voice messages do not support additional content.")
        attachments = payload.get("attachments") or []
        if len(files) != 1 or len(attachments) != 1:
            return self._error(400, 50160, "Voice messages must have a single audio attachment.")
        meta = attachments[0]
        if not isinstance(meta.get("duration_secs"), int | float) or not isinstance(meta.get("waveform"), str):
            return self._error(400, 50161, "Voice messages must have supporting metadata.")
        try:
            samples = base64.b64decode(meta["waveform"], validate=True)
        except ValueError:
            samples = b""
        if not samples or len(samples) > 256 or not files[0].data.startswith(b"OggS"):
            errors = {"attachments": {"0": {"_errors": [{"code": "INVALID", "message": "Invalid voice message."}]}}}
            return self._error(400, 50035, "Invalid Form Body", errors)
        if channel.refuses_voice_messages:
            return self._error(403, 50173, "Cannot send voice messages in this channel.")
        return None

    async def _create_message(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        if not self._authorized(recorded):
            return self._error(401, 0, "401: Unauthorized")
        channel = self._known_channel(request)
        if channel is None:
            return self._error(404, 10003, "Unknown Channel")
        payload, files = self._body(recorded)
        if (refused := self._check_content(payload)) is not None:
            return refused
        flags = int(payload.get("flags") or 0)
        if flags & VOICE_MESSAGE_FLAG and (refused := self._check_voice_message(channel, payload, files)):
            return refused
        if not payload.get("content") and not files and not payload.get("embeds"):
            return self._error(400, 50006, "Cannot send an empty message")
        message = self._bot_message(channel, payload, files)
        await self._store(message)
        await self.dispatch("MESSAGE_CREATE", message)  # Discord echoes the bot's own messages
        return json_response(message)

    def _bot_message(self, channel: FakeChannel, payload: dict[str, Any], files: list[FilePart]) -> dict[str, Any]:
        metas = {int(a.get("id", i)): a for i, a in enumerate(payload.get("attachments") or [])}
        attachments = []
        for index, part in enumerate(files):
            meta = metas.get(index, {})
            filename = meta.get("filename") or part.filename or f"file{index}"
            content_type = part.content_type
            if content_type in (None, "application/octet-stream"):  # Discord goes by the file name
                content_type = mimetypes.guess_type(filename)[0] or content_type
            attachments.append(self.add_attachment(
                part.data, filename, content_type,
                duration_secs=meta.get("duration_secs"), waveform=meta.get("waveform"),
            ))
        message = self._message(
            channel, self.bot, payload.get("content") or "", attachments=attachments,
            flags=int(payload.get("flags") or 0),
        )
        reference = payload.get("message_reference")
        if reference:
            message["type"] = MESSAGE_REPLY
            message["message_reference"] = {**reference, "channel_id": str(channel.id)}
            message["referenced_message"] = next(
                (m for m in self.messages if m["id"] == str(reference.get("message_id"))), None
            )
        self.uploads[message["id"]] = files
        return message

    def _message(self, channel: FakeChannel, author: FakeUser, content: str, *,
                 attachments: list[dict[str, Any]], flags: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": str(snowflake()), "channel_id": str(channel.id), "author": author.payload(), "content": content,
            "timestamp": _now(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": [], "mention_roles": [], "attachments": attachments, "embeds": [], "pinned": False,
            "type": MESSAGE_DEFAULT, "flags": flags, "components": [],
        }
        if not channel.is_dm:
            message["guild_id"] = str(channel.guild_id)
            message["member"] = self.guild.member_payload(author.id, with_user=False)
        return message

    def _mention(self, channel: FakeChannel, user: FakeUser) -> dict[str, Any]:
        if channel.is_dm:
            return user.payload()
        return {**user.payload(), "member": self.guild.member_payload(user.id, with_user=False)}

    async def _store(self, message: dict[str, Any]) -> None:
        async with self._message_added:
            self.messages.append(message)
            self._message_added.notify_all()

    # ------------------------------------------------------------------ interactions

    def _interaction(self, request: web.Request) -> FakeInteraction | None:
        token = request.match_info["token"]
        return next((i for i in self.interactions.values() if i.token == token), None)

    def _interaction_channel(self, interaction: FakeInteraction) -> FakeChannel:
        channel = self.channel(int(interaction.payload["channel_id"]))
        assert channel is not None, "interactions are only made in the fake's channels"
        return channel

    async def _interaction_callback(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        interaction = self._interaction(request)
        if interaction is None or str(interaction.id) != request.match_info["interaction_id"]:
            return self._error(404, 10062, "Unknown interaction")
        if interaction.callbacks:
            return self._error(400, 40060, "Interaction has already been acknowledged.")
        body, _ = self._body(recorded)
        interaction.callbacks.append(body)
        kind = body.get("type")
        data = body.get("data") or {}
        flags = int(data.get("flags") or 0) | (128 if kind == 5 else 0)  # 128: "thinking..."
        message = self._message(self._interaction_channel(interaction), self.bot, data.get("content") or "",
                                attachments=[], flags=flags)
        message.update(type=MESSAGE_CHAT_INPUT_COMMAND, application_id=str(self.application_id),
                       webhook_id=str(self.application_id))
        if kind == 4:
            interaction.answered.set()
        return json_response({
            "interaction": {
                "id": str(interaction.id), "type": 2, "response_message_id": message["id"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message["flags"] & EPHEMERAL_FLAG),
            },
            "resource": {"type": kind, "message": message},
        })

    async def _followup(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        interaction = self._interaction(request)
        if interaction is None:
            return self._error(404, 10015, "Unknown Webhook")
        body, _ = self._body(recorded)
        if (refused := self._check_content(body)) is not None:
            return refused
        message = self._message(self._interaction_channel(interaction), self.bot, body.get("content") or "",
                                attachments=[], flags=int(body.get("flags") or 0))
        message.update(webhook_id=str(self.application_id), application_id=str(self.application_id))
        interaction.followups.append(message)
        interaction.answered.set()
        return json_response(message)

    async def _edit_original(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        interaction = self._interaction(request)
        if interaction is None:
            return self._error(404, 10015, "Unknown Webhook")
        body, _ = self._body(recorded)
        interaction.edits.append(body)
        interaction.answered.set()
        channel = self._interaction_channel(interaction)
        return json_response(self._message(channel, self.bot, body.get("content") or "", attachments=[], flags=0))

    async def _delete_original(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        interaction = self._interaction(request)
        if interaction is None or not interaction.callbacks:
            return self._error(404, 10008, "Unknown Message")
        interaction.deleted = True
        interaction.answered.set()
        return web.Response(status=204)

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request, recorded: RecordedRequest) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(ws, GatewayFrames(request.query.get("compress")), request.path)
        self.sessions.append(session)
        try:
            await session.send(10, {"heartbeat_interval": self.heartbeat_interval_ms})
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                session.received.append(payload)
                await self._on_gateway_op(session, payload)
        finally:
            session.ready.clear()
        return ws

    async def _on_gateway_op(self, session: GatewaySession, payload: dict[str, Any]) -> None:
        op, data = payload.get("op"), payload.get("d")
        if op == 1:
            await session.send(11, None)
        elif op == 2:
            await self._identify(session, data or {})
        elif op == 6:
            await self._resume(session, data or {})
        elif op == 4:
            await self._voice_state(session, data or {})

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        session.intents = int(data.get("intents") or 0)
        if session.intents & MESSAGE_CONTENT_INTENT and not self.message_content_allowed:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session.session_id = secrets.token_hex(16)
        if "shard" in data:
            session.shard = (int(data["shard"][0]), int(data["shard"][1]))
        guilds = [self.guild] if session.carries(self.guild.id) else []
        ready = {
            "v": 10, "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds], "session_id": session.session_id,
            "session_type": "normal", "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": 1 << 19}, "private_channels": [],
            "relationships": [], "presences": [], "guild_join_requests": [], "geo_ordered_rtc_regions": [],
            "user_settings": {}, "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await session.send(0, ready, "READY")
        for guild in guilds:
            await session.send(0, guild.payload(), "GUILD_CREATE")
        async with self._session_ready:
            session.ready.set()
            self._session_ready.notify_all()

    async def _resume(self, session: GatewaySession, data: dict[str, Any]) -> None:
        known = next((s for s in self.sessions if s.session_id == data.get("session_id") and s is not session), None)
        if known is None or data.get("token") != self.token:
            await session.send(9, False)
            return
        session.session_id, session.seq, session.intents = known.session_id, known.seq, known.intents
        session.shard = known.shard
        await session.send(0, {"_trace": ["fake-discord"]}, "RESUMED")
        session.ready.set()

    async def _voice_state(self, session: GatewaySession, data: dict[str, Any]) -> None:
        """The bot joins or leaves a voice channel: echo its voice state and a voice server."""
        channel_id = int(data["channel_id"]) if data.get("channel_id") else None
        if channel_id is None:
            self.guild.voice_states.pop(self.bot.id, None)
        else:
            self.guild.voice_states[self.bot.id] = channel_id
        state = self.guild.voice_state_payload(self.bot.id, channel_id)
        state["session_id"] = session.session_id
        await session.send(0, state, "VOICE_STATE_UPDATE")
        if channel_id is not None:
            server = {"token": secrets.token_hex(8), "guild_id": str(self.guild.id), "endpoint": "127.0.0.1:9"}
            await session.send(0, server, "VOICE_SERVER_UPDATE")
