"""The history store on real databases: SQLite files, and PostgreSQL where it runs."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.migrate import current_revision, head_revision
from storage.store import HistoryStore, TurnState
from tests.databases import fresh_postgres_url, postgres_unavailable


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    if request.param == "sqlite":
        store = HistoryStore.from_url(f"sqlite:///{tmp_path / 'history.db'}")
        await store.migrate()
        yield store
        await store.aclose()
        return
    reason = await postgres_unavailable()
    if reason:
        pytest.skip(reason)
    async with fresh_postgres_url() as url:
        store = HistoryStore.from_url(url)
        await store.migrate()
        yield store
        await store.aclose()


async def test_migrations_reach_head_and_are_idempotent(store: HistoryStore) -> None:
    assert await current_revision(store.engine) == head_revision()
    await store.migrate()
    assert await current_revision(store.engine) == head_revision()


async def test_chat_ids_are_stable_and_keyed_by_platform(store: HistoryStore) -> None:
    first = await store.chat_id("telegram", "42")
    assert await store.chat_id("telegram", "42") == first
    assert await store.chat_id("discord", "42") != first


async def test_turn_ledger_answers_a_message_once(store: HistoryStore) -> None:
    chat = await store.chat_id("telegram", "1")
    turn = await store.begin_turn(chat, "100", "u1")
    assert turn.is_new and turn.state is TurnState.RECEIVED
    await store.add_message(chat, "user", "hello", turn_id=turn.id)
    again = await store.begin_turn(chat, "100", "u1")
    assert not again.is_new and again.id == turn.id and again.user_text == "hello"
    await store.add_message(chat, "assistant", "hi!", turn_id=turn.id, turn_state=TurnState.REPLIED)
    resumed = await store.begin_turn(chat, "100", "u1")
    assert resumed.state is TurnState.REPLIED and resumed.reply_text == "hi!"
    await store.set_turn_state(turn.id, TurnState.DELIVERED)
    assert (await store.begin_turn(chat, "100", "u1")).state is TurnState.DELIVERED
    # The same message id in another chat is another message.
    other = await store.chat_id("telegram", "2")
    assert (await store.begin_turn(other, "100", "u1")).is_new


async def test_unfinished_turns_lists_what_a_crash_left(store: HistoryStore) -> None:
    chat = await store.chat_id("telegram", "7")
    done = await store.begin_turn(chat, "1", "u")
    await store.set_turn_state(done.id, TurnState.DELIVERED)
    await store.begin_turn(chat, "2", "u")
    assert await store.unfinished_turns("telegram") == [("7", "2", TurnState.RECEIVED)]


async def test_history_order_limit_exclusion_and_reset(store: HistoryStore) -> None:
    chat = await store.chat_id("local", "c")
    for i in range(5):
        turn = await store.begin_turn(chat, str(i), "u")
        await store.add_message(chat, "user", f"q{i}", turn_id=turn.id, user_name="ann")
        await store.add_message(chat, "assistant", f"a{i}", turn_id=turn.id)
    recent = await store.recent_messages(chat, limit=4)
    assert [m.content for m in recent] == ["q3", "a3", "q4", "a4"]
    assert recent[0].user_name == "ann"
    last_turn = (await store.begin_turn(chat, "4", "u")).id
    assert [m.content for m in await store.recent_messages(chat, limit=2, exclude_turn=last_turn)] == ["q3", "a3"]
    assert await store.clear_history(chat) == 10
    assert await store.recent_messages(chat) == []
    # The ledger survives a reset: an old update redelivered is still known.
    assert not (await store.begin_turn(chat, "3", "u")).is_new


async def test_chat_settings_round_trip(store: HistoryStore) -> None:
    chat = await store.chat_id("discord", "9")
    settings = await store.chat_settings(chat)
    assert settings.voice_enabled is None and settings.persona is None and settings.extra == {}
    await store.update_chat_settings(chat, voice_enabled=False, persona="Be a pirate.", extra={"bot_channel": "5"})
    settings = await store.chat_settings(chat)
    assert settings.voice_enabled is False and settings.persona == "Be a pirate."
    assert settings.extra == {"bot_channel": "5"}
    with pytest.raises(ValueError):
        await store.update_chat_settings(chat, chat_key="evil")


async def test_usage_accumulates_per_user_and_day(store: HistoryStore) -> None:
    import datetime as dt

    yesterday = dt.date.today() - dt.timedelta(days=1)
    await store.add_usage("telegram", "u", turns=1, tokens=10, audio_seconds=2.5, day=yesterday)
    await store.add_usage("telegram", "u", turns=1, tokens=5, tts_chars=40)
    await store.add_usage("telegram", "u", turns=1, tokens=5)
    await store.add_usage("telegram", "other", turns=1, tokens=99)
    total = await store.usage("telegram", "u")
    assert (total.turns, total.tokens, total.audio_seconds, total.tts_chars) == (3, 20, 2.5, 40)
    today = await store.usage("telegram", "u", since=dt.datetime.now(dt.UTC).date())
    assert (today.turns, today.tokens) == (2, 10)


async def test_concurrent_usage_upserts_do_not_lose_counts(store: HistoryStore) -> None:
    await asyncio.gather(*(store.add_usage("telegram", "busy", turns=1) for _ in range(20)))
    assert (await store.usage("telegram", "busy")).turns == 20


async def test_inbox_keeps_updates_until_done(store: HistoryStore) -> None:
    assert await store.inbox_put("telegram", [("1", '{"a":1}'), ("2", '{"b":2}')]) == 2
    assert await store.inbox_put("telegram", [("2", '{"b":2}'), ("3", "{}")]) == 1
    await store.inbox_done("telegram", "1")
    assert await store.inbox_pending("telegram") == [("2", '{"b":2}'), ("3", "{}")]
    assert await store.inbox_pending("discord") == []


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    async def create() -> None:
        store = HistoryStore.from_url(f"sqlite:///{tmp_path / 'sub' / 'bot.db'}")
        await store.migrate()
        await store.aclose()

    asyncio.run(create())
    mode = stat.S_IMODE(os.stat(tmp_path / "sub" / "bot.db").st_mode)
    assert mode == 0o600


async def test_history_survives_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keep.db'}"
    first = HistoryStore.from_url(url)
    await first.migrate()
    chat = await first.chat_id("local", "x")
    await first.add_message(chat, "user", "remember me")
    await first.aclose()
    second = HistoryStore.from_url(url)
    await second.migrate()
    assert [m.content for m in await second.recent_messages(await second.chat_id("local", "x"))] == ["remember me"]
    await second.aclose()


async def test_a_failed_transaction_reaches_its_caller_and_the_store_goes_on(store: HistoryStore) -> None:
    chat = await store.chat_id("telegram", "7")
    with pytest.raises(Exception, match="(?i)foreign key"):
        await store.add_message(chat + 1000, "user", "to a chat that does not exist")
    await store.add_message(chat, "user", "still here")
    assert [m.content for m in await store.recent_messages(chat)] == ["still here"]


async def test_sqlite_runs_transactions_in_the_order_they_were_asked_for(tmp_path: Path) -> None:
    store = HistoryStore.from_url(f"sqlite:///{tmp_path / 'order.db'}")
    await store.migrate()
    chat = await store.chat_id("telegram", "1")
    await asyncio.gather(*(store.add_message(chat, "user", str(i)) for i in range(200)))
    assert [m.content for m in await store.recent_messages(chat, 200)] == [str(i) for i in range(200)]
    await store.aclose()


async def test_sqlite_a_cancelled_caller_does_not_stop_the_store(tmp_path: Path) -> None:
    store = HistoryStore.from_url(f"sqlite:///{tmp_path / 'cancel.db'}")
    await store.migrate()
    chat = await store.chat_id("telegram", "1")
    waiting = [asyncio.ensure_future(store.add_message(chat, "user", str(i))) for i in range(50)]
    await asyncio.sleep(0)  # every transaction is queued
    for task in waiting[::2]:
        task.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 25
    # A queued transaction runs even when its caller stopped waiting: nothing half-done.
    assert len(await store.recent_messages(chat, 100)) == 50
    await store.add_message(chat, "user", "after")
    assert (await store.recent_messages(chat, 1))[0].content == "after"
    await store.aclose()


async def test_sqlite_closing_finishes_what_was_asked_for_then_refuses_more(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'close.db'}"
    store = HistoryStore.from_url(url)
    await store.migrate()
    chat = await store.chat_id("telegram", "1")
    pending = [asyncio.ensure_future(store.add_message(chat, "user", str(i))) for i in range(20)]
    await asyncio.sleep(0)
    await store.aclose()
    await asyncio.gather(*pending)
    with pytest.raises(RuntimeError, match="closed"):
        await store.add_message(chat, "user", "too late")
    reopened = HistoryStore.from_url(url)
    assert len(await reopened.recent_messages(chat, 100)) == 20
    await reopened.aclose()


def test_sqlite_hands_each_event_loop_its_own_results(tmp_path: Path) -> None:
    """Two threads with an event loop each share one store: every answer reaches its own loop."""
    import threading

    store = HistoryStore.from_url(f"sqlite:///{tmp_path / 'loops.db'}")
    asyncio.run(store.migrate())
    errors: list[BaseException] = []

    def client(name: str) -> None:
        async def talk() -> None:
            chat = await store.chat_id("telegram", name)
            await asyncio.gather(*(store.add_message(chat, "user", f"{name}{i}") for i in range(100)))
            assert [m.content for m in await store.recent_messages(chat, 100)] == [f"{name}{i}" for i in range(100)]

        try:
            asyncio.run(talk())
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=client, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    asyncio.run(store.aclose())
