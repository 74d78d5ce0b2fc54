"""The history store: chats, their settings, the turn ledger and usage.

SQLite (WAL) by default, PostgreSQL (asyncpg) by URL. Every method is one short transaction,
committed before it returns, so what a user said is on disk before the LLM is asked and a
crash loses nothing that was acknowledged.

Each method is written once, as a synchronous function of one SQLAlchemy ``Connection``
(the ``_q_*`` functions below), and run as a whole transaction by the database's runner:

- SQLite: in one dedicated thread with the plain ``sqlite3`` driver, so a transaction costs
  one hop to that thread and back. aiosqlite hops to its thread for every cursor call
  (execute, fetch, commit: four to eight per transaction, each a thread wake-up and a GIL
  hand-over), which made storage the biggest share of a turn's CPU (docs/benchmarks.md).
  One thread also keeps SQLite's single writer in order instead of failing "database is
  locked".
- PostgreSQL: ``AsyncConnection.run_sync`` on asyncpg, which runs the same function on the
  event loop, awaiting the driver under it; the pool is bounded and pre-pinged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, create_engine, delete, event, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from storage.models import Chat, InboxItem, Message, Turn, TurnState, Usage

T = TypeVar("T")

CHATS = Chat.__table__
TURNS = Turn.__table__
MESSAGES = Message.__table__
USAGE = Usage.__table__
INBOX = InboxItem.__table__


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
    # Read pages through a memory map instead of a read() call each: loading a chat's history
    # touches ~100 scattered pages (bench/bench_context.py: p99 0.8 -> 0.5 ms for the query).
    cursor.execute("PRAGMA mmap_size=268435456")
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


# --- the runners: one transaction function, run where its driver wants it -------------------


class _SQLiteThread:
    """Runs each transaction in one dedicated thread on one ``sqlite3`` connection.

    Transactions run one at a time, in the order they were asked for. A thread hop costs more
    CPU than a small transaction (85-110 us through ``run_in_executor`` against ~35 us for the
    inbox's done mark, bench/bench_units.py), so the hand-over is kept to the minimum: a plain
    queue in, and one ``call_soon_threadsafe`` back for each run of transactions that queued
    up meanwhile (at most :data:`_BATCH`), so a busy bot wakes its loop once for several.
    The thread keeps one SQLAlchemy ``Connection`` open: ``engine.begin()`` would check one out
    of the pool and reset it on return for every transaction (44 against 9 us of CPU for an
    empty transaction).
    """

    def __init__(self, url: str) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        self.engine: Engine = create_engine(
            sync_url, poolclass=StaticPool, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._connection: Connection | None = None  # the thread's own, opened on first use
        self._thread = threading.Thread(target=self._serve, name="voicebot-sqlite", daemon=True)
        self._thread.start()
        self._closed = False

    def _serve(self) -> None:
        settled: list[_Settled] = []
        loop: asyncio.AbstractEventLoop | None = None
        while (job := self._queue.get()) is not None:
            call, future, job_loop = job
            if settled and job_loop is not loop:
                self._hand_back(loop, settled)
                settled = []
            loop = job_loop
            try:
                outcome: tuple[bool, Any] = (True, call())
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
                outcome = (False, error)
            settled.append((future, outcome))
            if len(settled) < _BATCH and not self._queue.empty():
                continue  # more were asked for meanwhile: run them, then wake the loop once
            self._hand_back(loop, settled)
            settled = []
        if settled:
            self._hand_back(loop, settled)

    @staticmethod
    def _hand_back(loop: asyncio.AbstractEventLoop | None, settled: list[_Settled]) -> None:
        assert loop is not None
        try:
            loop.call_soon_threadsafe(_settle_all, settled)
        except RuntimeError:  # the loop was closed meanwhile: nobody is waiting
            pass

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        connection = self._connection
        if connection is None or connection.closed:
            connection = self._connection = self.engine.connect()
        with connection.begin():
            return work(connection)

    def _dispose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.engine.dispose()

    async def _call(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((call, future, loop))
        return await future

    async def run(self, work: Callable[[Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the SQLite store is closed")
        return await self._call(lambda: self._transaction(work))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._call(self._dispose)  # after every transaction asked for before
        finally:
            self._queue.put(None)


_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


#: Transactions whose results go back to the event loop in one wake-up, at most.
_BATCH = 8
_Settled = tuple["asyncio.Future[Any]", tuple[bool, Any]]


def _settle_all(settled: list[_Settled]) -> None:
    for future, (ok, value) in settled:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _AsyncDriver:
    """Runs each transaction with ``run_sync`` on an async engine (asyncpg)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def run(self, work: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as connection:
            return await connection.run_sync(work)

    async def aclose(self) -> None:
        return None  # the store disposes of the engine


# --- the transactions ------------------------------------------------------------------------


def _insert(connection: Connection, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return (pg_insert if connection.dialect.name == "postgresql" else sqlite_insert)(table)


_BUILT: dict[tuple[str, str], Any] = {}


def _built(connection: Connection, name: str, build: Callable[[Connection], Any]) -> Any:
    """A statement with bind parameters, built once per dialect: building an INSERT ... ON
    CONFLICT and its cache key every time cost more CPU than running it (bench/bench_units.py)."""
    key = (connection.dialect.name, name)
    statement = _BUILT.get(key)
    if statement is None:
        statement = _BUILT[key] = build(connection)
    return statement


_SELECT_CHAT_ID = select(CHATS.c.id).where(
    CHATS.c.platform == bindparam("platform"), CHATS.c.chat_key == bindparam("chat_key")
)
_SELECT_SETTINGS = select(
    CHATS.c.voice_enabled, CHATS.c.speaker, CHATS.c.persona, CHATS.c.video_enabled,
    CHATS.c.transcript_enabled, CHATS.c.extra,
).where(CHATS.c.id == bindparam("chat_id"))
_INSERT_MESSAGE = MESSAGES.insert()
_SET_TURN_STATE = update(TURNS).where(TURNS.c.id == bindparam("turn_id")).values(state=bindparam("state"))
_SELECT_RECENT = (
    select(MESSAGES.c.role, MESSAGES.c.content, MESSAGES.c.tokens, MESSAGES.c.user_name)
    .where(MESSAGES.c.chat_id == bindparam("chat_id"))
    .order_by(MESSAGES.c.id.desc())
    .limit(bindparam("limit"))
)
_SELECT_RECENT_EXCLUDING = _SELECT_RECENT.where(
    or_(MESSAGES.c.turn_id.is_(None), MESSAGES.c.turn_id != bindparam("exclude_turn"))
)
_INBOX_DONE = (
    update(INBOX)
    .where(INBOX.c.platform == bindparam("b_platform"), INBOX.c.key == bindparam("b_key"))
    .values(done=True, payload="")
)


def _q_chat_id(connection: Connection, platform: str, chat_key: str) -> int:
    key = {"platform": platform, "chat_key": chat_key}
    found = connection.execute(_SELECT_CHAT_ID, key).scalar()
    if found is None:  # first sight; another worker may be creating it at the same moment
        connection.execute(
            _insert(connection, CHATS).values(platform=platform, chat_key=chat_key, extra={})
            .on_conflict_do_nothing(index_elements=[CHATS.c.platform, CHATS.c.chat_key])
        )
        found = connection.execute(_SELECT_CHAT_ID, key).scalar()
    assert found is not None
    return int(found)


def _q_chat_settings(connection: Connection, chat_id: int) -> ChatSettings:
    row = connection.execute(_SELECT_SETTINGS, {"chat_id": chat_id}).one_or_none()
    assert row is not None, f"unknown chat {chat_id}"
    voice, speaker, persona, video, transcript, extra = row
    return ChatSettings(chat_id, voice, speaker, persona, video, transcript, dict(extra or {}))


def _build_begin_turn(connection: Connection) -> Any:
    return (
        _insert(connection, TURNS)
        .values(
            chat_id=bindparam("chat_id"), message_id=bindparam("message_id"),
            user_key=bindparam("user_key"), state=bindparam("state"),
        )
        .on_conflict_do_nothing(index_elements=[TURNS.c.chat_id, TURNS.c.message_id])
        .returning(TURNS.c.id)
    )


def _q_begin_turn(connection: Connection, chat_id: int, message_id: str, user_key: str) -> TurnRecord:
    new_id = connection.execute(
        _built(connection, "begin turn", _build_begin_turn),
        {"chat_id": chat_id, "message_id": message_id, "user_key": user_key, "state": TurnState.RECEIVED.value},
    ).scalar()
    if new_id is not None:
        return TurnRecord(int(new_id), chat_id, TurnState.RECEIVED, is_new=True)
    turn_id, state = connection.execute(
        select(TURNS.c.id, TURNS.c.state).where(TURNS.c.chat_id == chat_id, TURNS.c.message_id == message_id)
    ).one()
    texts = dict(
        connection.execute(select(MESSAGES.c.role, MESSAGES.c.content).where(MESSAGES.c.turn_id == turn_id)).all()
    )
    return TurnRecord(
        int(turn_id), chat_id, TurnState(state), is_new=False,
        user_text=texts.get("user"), reply_text=texts.get("assistant"),
    )


def _q_add_message(connection: Connection, values: dict[str, Any], turn_state: TurnState | None) -> None:
    connection.execute(_INSERT_MESSAGE, values)
    if values["turn_id"] is not None and turn_state is not None:
        connection.execute(_SET_TURN_STATE, {"turn_id": values["turn_id"], "state": turn_state.value})


def _q_recent(connection: Connection, chat_id: int, limit: int, exclude_turn: int | None) -> list[StoredMessage]:
    if exclude_turn is None:
        rows = connection.execute(_SELECT_RECENT, {"chat_id": chat_id, "limit": limit}).all()
    else:
        rows = connection.execute(
            _SELECT_RECENT_EXCLUDING, {"chat_id": chat_id, "limit": limit, "exclude_turn": exclude_turn}
        ).all()
    return [StoredMessage(role, content, tokens, name) for role, content, tokens, name in reversed(rows)]


_USAGE_FIELDS = ("turns", "audio_seconds", "tokens", "tts_chars")


def _build_usage_add(connection: Connection) -> Any:
    stmt = _insert(connection, USAGE).values(
        platform=bindparam("platform"), user_key=bindparam("user_key"), day=bindparam("day"),
        **{name: bindparam(name) for name in _USAGE_FIELDS},
    )
    return stmt.on_conflict_do_update(
        index_elements=[USAGE.c.platform, USAGE.c.user_key, USAGE.c.day],
        set_={name: USAGE.c[name] + stmt.excluded[name] for name in _USAGE_FIELDS},
    )


def _q_usage_add(
    connection: Connection, platform: str, user_key: str, day: dt.date | None, **values: float
) -> None:
    """Add to a user's totals for ``day`` (today, UTC, by default)."""
    params: dict[str, Any] = {name: values.get(name, 0) for name in _USAGE_FIELDS}
    params.update(platform=platform, user_key=user_key, day=day or dt.datetime.now(dt.UTC).date())
    connection.execute(_built(connection, "usage add", _build_usage_add), params)


def _build_inbox_put(connection: Connection) -> Any:
    return (
        _insert(connection, INBOX)
        .on_conflict_do_nothing(index_elements=[INBOX.c.platform, INBOX.c.key])
        .returning(INBOX.c.key)
    )


def _q_inbox_put(connection: Connection, platform: str, rows: list[dict[str, Any]]) -> int:
    return len(connection.execute(_built(connection, "inbox put", _build_inbox_put), rows).all())


# --- the store -------------------------------------------------------------------------------


class HistoryStore:
    """Chats, history and ledger for one database URL."""

    def __init__(self, engine: AsyncEngine, runner: _SQLiteThread | _AsyncDriver | None = None) -> None:
        self.engine = engine  # migrations, admin and tests; the store's own work goes to the runner
        self._runner = runner or _AsyncDriver(engine)
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
        dropped (a restart, ``pg_terminate_backend``, an idle timeout) is replaced, not used.
        SQLite gets its dedicated thread (module docstring)."""
        url = normalize_url(url)
        if url.startswith("sqlite"):
            _prepare_sqlite_file(url)
            # The async engine only migrates (and lets tests look); one connection is plenty.
            engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=120)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return cls(engine, _SQLiteThread(url))
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size if max_overflow is None else max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=pool_recycle,
            pool_pre_ping=True,
        )
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
        await self._runner.aclose()
        await self.engine.dispose()

    # --- chats -------------------------------------------------------------------------------

    async def chat_id(self, platform: str, chat_key: str) -> int:
        """The internal id of a chat, created on first sight."""
        key = (platform, chat_key)
        cached = self._chat_ids.get(key)
        if cached is not None:
            return cached
        found = await self._runner.run(lambda c: _q_chat_id(c, platform, chat_key))
        self._chat_ids[key] = found
        return found

    async def chat_settings(self, chat_id: int) -> ChatSettings:
        return await self._runner.run(lambda c: _q_chat_settings(c, chat_id))

    async def update_chat_settings(self, chat_id: int, **values: Any) -> None:
        unknown = set(values) - _SETTING_FIELDS
        if unknown:
            raise ValueError(f"not chat settings: {sorted(unknown)}")
        await self._runner.run(lambda c: c.execute(update(CHATS).where(CHATS.c.id == chat_id).values(**values)))

    # --- the turn ledger ---------------------------------------------------------------------

    async def begin_turn(self, chat_id: int, message_id: str, user_key: str) -> TurnRecord:
        """Record an incoming message, or find it when it was seen before.

        A new message comes back with ``is_new=True``; a redelivered one with its state and
        whatever text was already stored, so the caller can resume instead of starting again.
        """
        return await self._runner.run(lambda c: _q_begin_turn(c, chat_id, message_id, user_key))

    async def open_turn(
        self, chat_id: int, message_id: str, user_key: str, *, recent: int | None = None
    ) -> tuple[TurnRecord, ChatSettings, list[StoredMessage] | None]:
        """What a turn's ledger stage needs, in one transaction: the ledger entry
        (:meth:`begin_turn`), the chat's settings and, with ``recent``, that many of the chat's
        newest messages before this turn. Reading the context here, while a voice note is
        still to be downloaded and transcribed, takes it off the path between the transcript
        and the LLM call (a chat's turns run one at a time, so it cannot change meanwhile)."""

        def work(connection: Connection) -> tuple[TurnRecord, ChatSettings, list[StoredMessage] | None]:
            record = _q_begin_turn(connection, chat_id, message_id, user_key)
            history = None if recent is None else _q_recent(connection, chat_id, recent, record.id)
            return record, _q_chat_settings(connection, chat_id), history

        return await self._runner.run(work)

    async def forget_turn(self, turn_id: int) -> None:
        """Drop a ledger entry that turned out not to be a turn (a group message not for us)."""
        await self._runner.run(lambda c: c.execute(delete(TURNS).where(TURNS.c.id == turn_id)))

    async def set_turn_state(self, turn_id: int, state: TurnState) -> None:
        await self._runner.run(lambda c: c.execute(_SET_TURN_STATE, {"turn_id": turn_id, "state": state.value}))

    async def unfinished_turns(self, platform: str) -> list[tuple[str, str, TurnState]]:
        """(chat key, message id, state) of turns received or replied but never delivered."""
        query = (
            select(CHATS.c.chat_key, TURNS.c.message_id, TURNS.c.state)
            .join(CHATS, CHATS.c.id == TURNS.c.chat_id)
            .where(
                CHATS.c.platform == platform,
                TURNS.c.state.in_([TurnState.RECEIVED.value, TurnState.REPLIED.value]),
            )
            .order_by(TURNS.c.id)
        )
        rows = await self._runner.run(lambda c: c.execute(query).all())
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
        values = {
            "chat_id": chat_id, "turn_id": turn_id, "role": role, "content": content, "tokens": tokens,
            "from_voice": from_voice, "language": language, "user_name": user_name,
        }
        await self._runner.run(lambda c: _q_add_message(c, values, turn_state))

    async def recent_messages(
        self, chat_id: int, limit: int = 60, *, exclude_turn: int | None = None
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a chat, oldest first, without ``exclude_turn``'s."""
        return await self._runner.run(lambda c: _q_recent(c, chat_id, limit, exclude_turn))

    async def clear_history(self, chat_id: int) -> int:
        """Forget a chat's conversation (``/reset``); returns how many messages went."""
        result = await self._runner.run(lambda c: c.execute(delete(MESSAGES).where(MESSAGES.c.chat_id == chat_id)))
        return result.rowcount or 0

    async def count_messages(self, chat_id: int) -> int:
        query = select(func.count()).select_from(MESSAGES).where(MESSAGES.c.chat_id == chat_id)
        return int(await self._runner.run(lambda c: c.execute(query).scalar()) or 0)

    # --- inbox: raw updates kept until answered ----------------------------------------------

    async def inbox_put(
        self, platform: str, items: Sequence[tuple[str, str] | tuple[str, str, str | None]]
    ) -> int:
        """Store (key, payload[, chat key]) updates not seen before, in one statement
        (``INSERT ... ON CONFLICT DO NOTHING RETURNING``); returns how many were new."""
        if not items:
            return 0
        unique = {item[0]: item for item in items}
        rows = [
            {"platform": platform, "key": key, "payload": item[1], "chat_key": item[2] if len(item) > 2 else None,
             "done": False}
            for key, item in unique.items()
        ]
        return await self._runner.run(lambda c: _q_inbox_put(c, platform, rows))

    async def inbox_pending(self, platform: str) -> list[tuple[str, str]]:
        """(key, payload) of stored updates not yet handled, oldest first."""
        query = (
            select(INBOX.c.key, INBOX.c.payload)
            .where(INBOX.c.platform == platform, INBOX.c.done.is_(False))
            .order_by(INBOX.c.id)
        )
        rows = await self._runner.run(lambda c: c.execute(query).all())
        return [(key, payload) for key, payload in rows]

    async def inbox_pending_in_chat(self, platform: str, chat_key: str) -> list[tuple[str, str]]:
        """(key, payload) of one chat's stored updates not yet handled, oldest first."""
        query = (
            select(INBOX.c.key, INBOX.c.payload)
            .where(INBOX.c.platform == platform, INBOX.c.chat_key == chat_key, INBOX.c.done.is_(False))
            .order_by(INBOX.c.id)
        )
        rows = await self._runner.run(lambda c: c.execute(query).all())
        return [(key, payload) for key, payload in rows]

    async def inbox_prune(self, platform: str, older_than: dt.timedelta) -> int:
        """Delete handled updates received more than ``older_than`` ago; returns how many went."""
        cutoff = dt.datetime.now(dt.UTC) - older_than
        stmt = delete(INBOX).where(INBOX.c.platform == platform, INBOX.c.done.is_(True), INBOX.c.received_at < cutoff)
        result = await self._runner.run(lambda c: c.execute(stmt))
        return result.rowcount or 0

    async def inbox_done(self, platform: str, key: str) -> None:
        """Mark an update handled and drop its payload: the message text is not kept in the
        inbox once answered (``/reset`` must not leave it there); the key stays until pruned."""
        params = {"b_platform": platform, "b_key": key}
        await self._runner.run(lambda c: c.execute(_INBOX_DONE, params))

    # --- usage -------------------------------------------------------------------------------

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
        await self._runner.run(lambda c: _q_usage_add(
            c, platform, user_key, day, turns=turns, audio_seconds=audio_seconds, tokens=tokens, tts_chars=tts_chars
        ))

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

        def work(connection: Connection) -> None:
            connection.execute(_SET_TURN_STATE, {"turn_id": turn_id, "state": TurnState.DELIVERED.value})
            _q_usage_add(
                connection, platform, user_key, None,
                turns=1, audio_seconds=audio_seconds, tokens=tokens, tts_chars=tts_chars,
            )

        await self._runner.run(work)

    async def usage(self, platform: str, user_key: str, since: dt.date | None = None) -> UsageTotals:
        """A user's totals since ``since`` (inclusive); all time when None."""
        query = select(
            func.coalesce(func.sum(USAGE.c.turns), 0),
            func.coalesce(func.sum(USAGE.c.audio_seconds), 0.0),
            func.coalesce(func.sum(USAGE.c.tokens), 0),
            func.coalesce(func.sum(USAGE.c.tts_chars), 0),
        ).where(USAGE.c.platform == platform, USAGE.c.user_key == user_key)
        if since is not None:
            query = query.where(USAGE.c.day >= since)
        turns, seconds, tokens, chars = await self._runner.run(lambda c: c.execute(query).one())
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
