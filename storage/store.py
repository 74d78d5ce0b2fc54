"""The history store: chats, their settings, the turn ledger and usage, over async SQLAlchemy.

SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg) by URL. Every method is one short
transaction, committed before it returns, so what a user said is on disk before the LLM is
asked and a crash loses nothing that was acknowledged.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage.models import Chat, InboxItem, Message, Turn, TurnState, Usage


def normalize_url(url: str) -> str:
    """Give plain ``sqlite:///`` and ``postgresql://`` URLs their async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def _prepare_sqlite_file(url: str) -> None:
    """Create the SQLite file (and folder) private to this user: mode 0600."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """A chat's stored settings; ``None`` fields fall back to the configured defaults."""

    chat_id: int
    voice_enabled: bool | None
    speaker: str | None
    persona: str | None
    video_enabled: bool | None
    transcript_enabled: bool | None
    extra: dict


@dataclass(frozen=True, slots=True)
class TurnRecord:
    id: int
    chat_id: int
    state: TurnState
    is_new: bool
    user_text: str | None = None  # what the user said, if already stored
    reply_text: str | None = None  # the stored answer, if the LLM already replied


@dataclass(frozen=True, slots=True)
class StoredMessage:
    role: str
    content: str
    tokens: int
    user_name: str | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    turns: int = 0
    audio_seconds: float = 0.0
    tokens: int = 0
    tts_chars: int = 0


_SETTING_FIELDS = frozenset(
    {"voice_enabled", "speaker", "persona", "video_enabled", "transcript_enabled", "extra"}
)


class HistoryStore:
    """Chats, history and ledger for one database URL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._chat_ids: dict[tuple[str, str], int] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int | None = None,
        pool_timeout: float = 30.0,
        pool_recycle: float = 1800.0,
    ) -> HistoryStore:
        """A store on ``url``. PostgreSQL gets a bounded pool: ``pool_size`` connections kept,
        up to ``max_overflow`` (default: ``pool_size``) more under load, then callers wait up to
        ``pool_timeout`` seconds. Every checkout is pinged first, so a connection the server
        dropped (a restart, ``pg_terminate_backend``, an idle timeout) is replaced, not used."""
        url = normalize_url(url)
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            _prepare_sqlite_file(url)
            # SQLite has one writer at a time; one connection (aiosqlite runs it in its own
            # thread) queues writes in order instead of failing with "database is locked".
            kwargs.update(pool_size=1, max_overflow=0, pool_timeout=120)
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size if max_overflow is None else max_overflow,
                pool_timeout=pool_timeout,
                pool_recycle=pool_recycle,
                pool_pre_ping=True,
            )
        engine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    def sibling_engine(self, *, pool_size: int, max_overflow: int, pool_timeout: float = 30.0) -> AsyncEngine:
        """Another engine on the same database with a pool of its own, for connections held
        for long (a chat lock lives on its connection for a whole turn) so they never take
        the store's. The caller disposes of it."""
        return create_async_engine(
            self.engine.url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout,
            pool_recycle=1800.0, pool_pre_ping=True,
        )

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (keeps existing data)."""
        from storage.migrate import upgrade

        await upgrade(self.engine)

    async def aclose(self) -> None:
        await self.engine.dispose()

    # --- chats -------------------------------------------------------------------------------

    async def chat_id(self, platform: str, chat_key: str) -> int:
        """The internal id of a chat, created on first sight."""
        key = (platform, chat_key)
        cached = self._chat_ids.get(key)
        if cached is not None:
            return cached
        async with self._sessions() as session:
            found = await session.scalar(
                select(Chat.id).where(Chat.platform == platform, Chat.chat_key == chat_key)
            )
            if found is None:
                chat = Chat(platform=platform, chat_key=chat_key, extra={})
                session.add(chat)
                try:
                    await session.commit()
                    found = chat.id
                except IntegrityError:  # another worker created it first
                    await session.rollback()
                    found = await session.scalar(
                        select(Chat.id).where(Chat.platform == platform, Chat.chat_key == chat_key)
                    )
        assert found is not None
        self._chat_ids[key] = found
        return found

    async def chat_settings(self, chat_id: int) -> ChatSettings:
        async with self._sessions() as session:
            return await self._chat_settings(session, chat_id)

    @staticmethod
    async def _chat_settings(session: AsyncSession, chat_id: int) -> ChatSettings:
        chat = await session.get(Chat, chat_id)
        assert chat is not None, f"unknown chat {chat_id}"
        return ChatSettings(
            chat_id=chat.id,
            voice_enabled=chat.voice_enabled,
            speaker=chat.speaker,
            persona=chat.persona,
            video_enabled=chat.video_enabled,
            transcript_enabled=chat.transcript_enabled,
            extra=dict(chat.extra or {}),
        )

    async def update_chat_settings(self, chat_id: int, **values: Any) -> None:
        unknown = set(values) - _SETTING_FIELDS
        if unknown:
            raise ValueError(f"not chat settings: {sorted(unknown)}")
        async with self._sessions() as session:
            await session.execute(update(Chat).where(Chat.id == chat_id).values(**values))
            await session.commit()

    # --- the turn ledger ---------------------------------------------------------------------

    async def begin_turn(self, chat_id: int, message_id: str, user_key: str) -> TurnRecord:
        """Record an incoming message, or find it when it was seen before.

        A new message comes back with ``is_new=True``; a redelivered one with its state and
        whatever text was already stored, so the caller can resume instead of starting again.
        """
        async with self._sessions() as session:
            return await self._begin_turn(session, chat_id, message_id, user_key)

    async def begin_turn_with_settings(
        self, chat_id: int, message_id: str, user_key: str
    ) -> tuple[TurnRecord, ChatSettings]:
        """:meth:`begin_turn` and :meth:`chat_settings` in one session: what a turn's ledger
        stage needs with one connection checkout instead of two (with SQLite each checkout and
        statement is a few hops to aiosqlite's thread; bench/bench_turn.py)."""
        async with self._sessions() as session:
            record = await self._begin_turn(session, chat_id, message_id, user_key)
            return record, await self._chat_settings(session, chat_id)

    @staticmethod
    async def _begin_turn(session: AsyncSession, chat_id: int, message_id: str, user_key: str) -> TurnRecord:
        turn = Turn(chat_id=chat_id, message_id=message_id, user_key=user_key)
        session.add(turn)
        try:
            await session.commit()
            return TurnRecord(turn.id, chat_id, TurnState.RECEIVED, is_new=True)
        except IntegrityError:
            await session.rollback()
        existing = await session.scalar(
            select(Turn).where(Turn.chat_id == chat_id, Turn.message_id == message_id)
        )
        assert existing is not None
        rows = (
            await session.execute(
                select(Message.role, Message.content).where(Message.turn_id == existing.id)
            )
        ).all()
        texts = {role: content for role, content in rows}
        return TurnRecord(
            existing.id,
            chat_id,
            TurnState(existing.state),
            is_new=False,
            user_text=texts.get("user"),
            reply_text=texts.get("assistant"),
        )

    async def forget_turn(self, turn_id: int) -> None:
        """Drop a ledger entry that turned out not to be a turn (a group message not for us)."""
        async with self._sessions() as session:
            await session.execute(delete(Turn).where(Turn.id == turn_id))
            await session.commit()

    async def set_turn_state(self, turn_id: int, state: TurnState) -> None:
        async with self._sessions() as session:
            await session.execute(update(Turn).where(Turn.id == turn_id).values(state=state.value))
            await session.commit()

    async def unfinished_turns(self, platform: str) -> list[tuple[str, str, TurnState]]:
        """(chat key, message id, state) of turns received or replied but never delivered."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Chat.chat_key, Turn.message_id, Turn.state)
                .join(Chat, Chat.id == Turn.chat_id)
                .where(
                    Chat.platform == platform,
                    Turn.state.in_([TurnState.RECEIVED.value, TurnState.REPLIED.value]),
                )
                .order_by(Turn.id)
            )
            return [(key, mid, TurnState(state)) for key, mid, state in rows]

    # --- history -----------------------------------------------------------------------------

    async def add_message(
        self,
        chat_id: int,
        role: str,
        content: str,
        *,
        turn_id: int | None = None,
        tokens: int = 0,
        from_voice: bool = False,
        language: str | None = None,
        user_name: str | None = None,
        turn_state: TurnState | None = None,
    ) -> None:
        """Append to a chat's history; optionally move the turn's state in the same commit."""
        async with self._sessions() as session:
            session.add(
                Message(
                    chat_id=chat_id,
                    turn_id=turn_id,
                    role=role,
                    content=content,
                    tokens=tokens,
                    from_voice=from_voice,
                    language=language,
                    user_name=user_name,
                )
            )
            if turn_id is not None and turn_state is not None:
                await session.execute(
                    update(Turn).where(Turn.id == turn_id).values(state=turn_state.value)
                )
            await session.commit()

    async def recent_messages(
        self, chat_id: int, limit: int = 60, *, exclude_turn: int | None = None
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a chat, oldest first, without ``exclude_turn``'s."""
        query = (
            select(Message.role, Message.content, Message.tokens, Message.user_name)
            .where(Message.chat_id == chat_id)
            .order_by(Message.id.desc())
            .limit(limit)
        )
        if exclude_turn is not None:
            query = query.where(or_(Message.turn_id.is_(None), Message.turn_id != exclude_turn))
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [StoredMessage(role, content, tokens, name) for role, content, tokens, name in reversed(rows)]

    async def clear_history(self, chat_id: int) -> int:
        """Forget a chat's conversation (``/reset``); returns how many messages went."""
        async with self._sessions() as session:
            result = await session.execute(delete(Message).where(Message.chat_id == chat_id))
            await session.commit()
            return result.rowcount or 0

    async def count_messages(self, chat_id: int) -> int:
        async with self._sessions() as session:
            return int(
                await session.scalar(select(func.count()).select_from(Message).where(Message.chat_id == chat_id))
                or 0
            )

    # --- inbox: raw updates kept until answered ----------------------------------------------

    async def inbox_put(
        self, platform: str, items: Sequence[tuple[str, str] | tuple[str, str, str | None]]
    ) -> int:
        """Store (key, payload[, chat key]) updates not seen before, in one commit; returns how
        many were new."""
        if not items:
            return 0
        rows = {item[0]: (item[1], item[2] if len(item) > 2 else None) for item in items}
        async with self._sessions() as session:
            known = set(
                await session.scalars(
                    select(InboxItem.key).where(InboxItem.platform == platform, InboxItem.key.in_(list(rows)))
                )
            )
            fresh = [(k, p, c) for k, (p, c) in rows.items() if k not in known]
            session.add_all(
                InboxItem(platform=platform, key=k, payload=p, chat_key=c, done=False) for k, p, c in fresh
            )
            try:
                await session.commit()
            except IntegrityError:  # another worker stored some of them first
                await session.rollback()
                return 0
            return len(fresh)

    async def inbox_pending(self, platform: str) -> list[tuple[str, str]]:
        """(key, payload) of stored updates not yet handled, oldest first."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(InboxItem.key, InboxItem.payload)
                .where(InboxItem.platform == platform, InboxItem.done.is_(False))
                .order_by(InboxItem.id)
            )
            return [(key, payload) for key, payload in rows]

    async def inbox_pending_in_chat(self, platform: str, chat_key: str) -> list[tuple[str, str]]:
        """(key, payload) of one chat's stored updates not yet handled, oldest first."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(InboxItem.key, InboxItem.payload)
                .where(
                    InboxItem.platform == platform, InboxItem.chat_key == chat_key, InboxItem.done.is_(False)
                )
                .order_by(InboxItem.id)
            )
            return [(key, payload) for key, payload in rows]

    async def inbox_prune(self, platform: str, older_than: dt.timedelta) -> int:
        """Delete handled updates received more than ``older_than`` ago; returns how many went."""
        cutoff = dt.datetime.now(dt.UTC) - older_than
        async with self._sessions() as session:
            result = await session.execute(
                delete(InboxItem).where(
                    InboxItem.platform == platform, InboxItem.done.is_(True), InboxItem.received_at < cutoff
                )
            )
            await session.commit()
            return result.rowcount or 0

    async def inbox_done(self, platform: str, key: str) -> None:
        """Mark an update handled and drop its payload: the message text is not kept in the
        inbox once answered (``/reset`` must not leave it there); the key stays until pruned."""
        async with self._sessions() as session:
            await session.execute(
                update(InboxItem)
                .where(InboxItem.platform == platform, InboxItem.key == key)
                .values(done=True, payload="")
            )
            await session.commit()

    # --- usage -------------------------------------------------------------------------------

    def _usage_upsert(self, platform: str, user_key: str, day: dt.date | None, **values: float) -> Any:
        day = day or dt.datetime.now(dt.UTC).date()
        values = {name: values.get(name, 0) for name in ("turns", "audio_seconds", "tokens", "tts_chars")}
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(Usage).values(platform=platform, user_key=user_key, day=day, **values)
        return stmt.on_conflict_do_update(
            index_elements=[Usage.platform, Usage.user_key, Usage.day],
            set_={name: getattr(Usage, name) + getattr(stmt.excluded, name) for name in values},
        )

    async def add_usage(
        self,
        platform: str,
        user_key: str,
        *,
        turns: int = 0,
        audio_seconds: float = 0.0,
        tokens: int = 0,
        tts_chars: int = 0,
        day: dt.date | None = None,
    ) -> None:
        stmt = self._usage_upsert(
            platform, user_key, day, turns=turns, audio_seconds=audio_seconds, tokens=tokens, tts_chars=tts_chars
        )
        async with self._sessions() as session:
            await session.execute(stmt)
            await session.commit()

    async def finish_turn(
        self,
        turn_id: int,
        platform: str,
        user_key: str,
        *,
        audio_seconds: float = 0.0,
        tokens: int = 0,
        tts_chars: int = 0,
    ) -> None:
        """Mark a turn delivered and count its usage, in one commit."""
        async with self._sessions() as session:
            await session.execute(
                update(Turn).where(Turn.id == turn_id).values(state=TurnState.DELIVERED.value)
            )
            await session.execute(
                self._usage_upsert(
                    platform, user_key, None, turns=1, audio_seconds=audio_seconds, tokens=tokens, tts_chars=tts_chars
                )
            )
            await session.commit()

    async def usage(self, platform: str, user_key: str, since: dt.date | None = None) -> UsageTotals:
        """A user's totals since ``since`` (inclusive); all time when None."""
        query = select(
            func.coalesce(func.sum(Usage.turns), 0),
            func.coalesce(func.sum(Usage.audio_seconds), 0.0),
            func.coalesce(func.sum(Usage.tokens), 0),
            func.coalesce(func.sum(Usage.tts_chars), 0),
        ).where(Usage.platform == platform, Usage.user_key == user_key)
        if since is not None:
            query = query.where(Usage.day >= since)
        async with self._sessions() as session:
            turns, seconds, tokens, chars = (await session.execute(query)).one()
        return UsageTotals(int(turns), float(seconds), int(tokens), int(chars))


__all__ = [
    "ChatSettings",
    "HistoryStore",
    "StoredMessage",
    "TurnRecord",
    "TurnState",
    "UsageTotals",
    "normalize_url",
]
