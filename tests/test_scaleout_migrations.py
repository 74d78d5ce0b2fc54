"""Alembic migrations on real databases (a SQLite file, and PostgreSQL where it runs):

- from an empty database to the newest revision, and the result equals ``storage.models``
  (Alembic's own autogenerate comparison finds no difference);
- from the previous schema (revision 0001) holding data, with the real ``voicebot db upgrade``
  command, keeping every row; then down to 0001 and up again, still keeping them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.migrate import alembic_config, current_revision, head_revision, upgrade
from storage.models import Base
from storage.store import HistoryStore
from tests.databases import fresh_postgres_url, postgres_unavailable

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]

# The tables as revision 0001 created them (no inbox.chat_key), for writing "old" data.
_meta = sa.MetaData()
chats = sa.Table(
    "chats", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("platform", sa.String),
    sa.Column("chat_key", sa.String), sa.Column("voice_enabled", sa.Boolean), sa.Column("speaker", sa.String),
    sa.Column("persona", sa.Text), sa.Column("extra", sa.JSON),
)
turns = sa.Table(
    "turns", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("chat_id", sa.Integer),
    sa.Column("message_id", sa.String), sa.Column("user_key", sa.String), sa.Column("state", sa.String),
)
messages = sa.Table(
    "messages", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("chat_id", sa.Integer),
    sa.Column("turn_id", sa.Integer), sa.Column("role", sa.String), sa.Column("content", sa.Text),
    sa.Column("from_voice", sa.Boolean), sa.Column("tokens", sa.Integer), sa.Column("user_name", sa.String),
)
usage = sa.Table(
    "usage", _meta, sa.Column("platform", sa.String), sa.Column("user_key", sa.String), sa.Column("day", sa.Date),
    sa.Column("turns", sa.Integer), sa.Column("audio_seconds", sa.Float), sa.Column("tokens", sa.Integer),
    sa.Column("tts_chars", sa.Integer),
)
inbox = sa.Table(
    "inbox", _meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("platform", sa.String),
    sa.Column("key", sa.String), sa.Column("payload", sa.Text), sa.Column("done", sa.Boolean),
)

PENDING_UPDATE = {"update_id": 900, "message": {"message_id": 3, "date": 0, "chat": {"id": -100777, "type": "supergroup"},
                                                "text": "still waiting"}}
DONE_UPDATE = {"update_id": 899, "message": {"message_id": 2, "date": 0, "chat": {"id": -100777, "type": "supergroup"},
                                             "text": "answered"}}


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    reason = await postgres_unavailable()
    if reason:
        pytest.skip(reason)
    async with fresh_postgres_url() as url:
        yield url


def _schema_differences(connection: sa.Connection) -> list:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata)


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(alembic_config(c), revision))


async def _write_revision_0001_data(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(chats.insert(), [
            {"id": 1, "platform": "telegram", "chat_key": "-100777", "voice_enabled": False, "speaker": "english-female",
             "persona": "You are a pirate.", "extra": {"bot_channel": True}},
            {"id": 2, "platform": "discord", "chat_key": "55", "voice_enabled": None, "speaker": None,
             "persona": None, "extra": {}},
        ])
        await connection.execute(turns.insert(), [
            {"id": 1, "chat_id": 1, "message_id": "1", "user_key": "u1", "state": "delivered"},
            {"id": 2, "chat_id": 1, "message_id": "2", "user_key": "u1", "state": "received"},
        ])
        await connection.execute(messages.insert(), [
            {"chat_id": 1, "turn_id": 1, "role": "user", "content": "Ahoy?", "from_voice": True, "tokens": 3,
             "user_name": "Ann"},
            {"chat_id": 1, "turn_id": 1, "role": "assistant", "content": "Arr, ahoy!", "from_voice": False,
             "tokens": 4, "user_name": None},
            {"chat_id": 1, "turn_id": 2, "role": "user", "content": "Where is the treasure?", "from_voice": False,
             "tokens": 6, "user_name": "Ann"},
        ])
        await connection.execute(usage.insert(), [
            {"platform": "telegram", "user_key": "u1", "day": dt.date(2026, 11, 20), "turns": 7,
             "audio_seconds": 12.5, "tokens": 900, "tts_chars": 300},
        ])
        await connection.execute(inbox.insert(), [
            {"platform": "telegram", "key": "899", "payload": json.dumps(DONE_UPDATE), "done": True},
            {"platform": "telegram", "key": "900", "payload": json.dumps(PENDING_UPDATE), "done": False},
            {"platform": "telegram", "key": "901", "payload": "not json", "done": False},
        ])


async def _assert_data_intact(store: HistoryStore) -> None:
    assert await store.chat_id("telegram", "-100777") == 1
    settings = await store.chat_settings(1)
    assert (settings.voice_enabled, settings.speaker, settings.persona) == (False, "english-female", "You are a pirate.")
    assert settings.extra == {"bot_channel": True}
    assert await store.chat_id("discord", "55") == 2
    history = await store.recent_messages(1)
    assert [(m.role, m.content, m.tokens, m.user_name) for m in history] == [
        ("user", "Ahoy?", 3, "Ann"), ("assistant", "Arr, ahoy!", 4, None), ("user", "Where is the treasure?", 6, "Ann"),
    ]
    resumed = await store.begin_turn(1, "2", "u1")  # the ledger still knows the unfinished turn
    assert not resumed.is_new and resumed.id == 2 and resumed.user_text == "Where is the treasure?"
    assert not (await store.begin_turn(1, "1", "u1")).is_new
    totals = await store.usage("telegram", "u1")
    assert (totals.turns, totals.audio_seconds, totals.tokens, totals.tts_chars) == (7, 12.5, 900, 300)
    assert [key for key, _ in await store.inbox_pending("telegram")] == ["900", "901"]
    assert json.loads(dict(await store.inbox_pending("telegram"))["900"]) == PENDING_UPDATE


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)  # cwd: the test's tmp_path (no .env)


async def test_an_empty_database_migrates_to_exactly_the_models(empty_url: str) -> None:
    store = HistoryStore.from_url(empty_url)
    try:
        assert await current_revision(store.engine) is None
        await store.migrate()
        assert await current_revision(store.engine) == head_revision() == "0002"
        async with store.engine.connect() as connection:
            assert await connection.run_sync(_schema_differences) == []
        # Down to nothing and up again: every downgrade undoes its upgrade.
        await _downgrade(store.engine, "base")
        async with store.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert set(tables) <= {"alembic_version"}
        await store.migrate()
        async with store.engine.connect() as connection:
            assert await connection.run_sync(_schema_differences) == []
    finally:
        await store.aclose()


async def test_voicebot_db_upgrade_keeps_the_data_of_the_previous_schema(empty_url: str) -> None:
    store = HistoryStore.from_url(empty_url)
    try:
        await upgrade(store.engine, "0001")
        await _write_revision_0001_data(store.engine)
    finally:
        await store.aclose()

    before = _cli(empty_url, "db", "current")
    assert before.returncode == 0, before.stderr
    assert "revision 0001 (newest: 0002)" in before.stdout
    result = _cli(empty_url, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "is at revision 0002" in result.stdout

    store = HistoryStore.from_url(empty_url)
    try:
        assert await current_revision(store.engine) == "0002"
        await _assert_data_intact(store)
        async with store.engine.connect() as connection:
            assert await connection.run_sync(_schema_differences) == []
            # Pending updates learnt their chat from the stored payload; handled ones need not.
            rows = dict((await connection.execute(sa.text("SELECT key, chat_key FROM inbox"))).all())
        assert rows == {"899": None, "900": "-100777", "901": None}
        assert [key for key, _ in await store.inbox_pending_in_chat("telegram", "-100777")] == ["900"]

        # 0002 -> 0001 -> 0002 keeps everything too.
        await _downgrade(store.engine, "0001")
        assert await current_revision(store.engine) == "0001"
        async with store.engine.connect() as connection:
            columns = await connection.run_sync(lambda c: [col["name"] for col in sa.inspect(c).get_columns("inbox")])
        assert "chat_key" not in columns
        await store.migrate()
        await _assert_data_intact(store)
    finally:
        await store.aclose()


async def test_upgrading_twice_and_starting_on_a_current_database_change_nothing(empty_url: str) -> None:
    first = _cli(empty_url, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    store = HistoryStore.from_url(empty_url)
    try:
        chat = await store.chat_id("telegram", "1")
        await store.add_message(chat, "user", "kept")
    finally:
        await store.aclose()
    again = _cli(empty_url, "db", "upgrade")
    assert again.returncode == 0 and "is at revision 0002" in again.stdout
    store = HistoryStore.from_url(empty_url)
    try:
        assert [m.content for m in await store.recent_messages(chat)] == ["kept"]
    finally:
        await store.aclose()


async def test_inbox_prune_drops_old_handled_updates_only(empty_url: str) -> None:
    store = HistoryStore.from_url(empty_url)
    try:
        await store.migrate()
        await store.inbox_put("telegram", [("1", "{}", "c"), ("2", "{}", "c"), ("3", "{}", None)])
        await store.inbox_done("telegram", "1")
        await store.inbox_done("telegram", "3")
        assert await store.inbox_prune("telegram", dt.timedelta(days=1)) == 0  # too recent
        assert await store.inbox_prune("discord", dt.timedelta(seconds=-60)) == 0  # another platform
        assert await store.inbox_prune("telegram", dt.timedelta(seconds=-60)) == 2
        assert [key for key, _ in await store.inbox_pending("telegram")] == ["2"]
        assert [key for key, _ in await store.inbox_pending_in_chat("telegram", "c")] == ["2"]
    finally:
        await store.aclose()
