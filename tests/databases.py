"""Real databases for tests: a SQLite file per test, and a fresh PostgreSQL database per test
where the machine runs PostgreSQL on 127.0.0.1:5432 (skipped, with the reason, where not)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

PG_HOST = os.environ.get("VOICEBOT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("VOICEBOT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("VOICEBOT_TEST_PG_USER", "postgres")


async def postgres_unavailable() -> str | None:
    """None when PostgreSQL answers, else why not (shown as the skip reason)."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"
    try:
        connection = await asyncio.wait_for(
            asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="test"), timeout=3
        )
    except Exception as exc:  # noqa: BLE001 - any failure means: skip
        return f"no PostgreSQL at {PG_HOST}:{PG_PORT} ({type(exc).__name__}: {exc})"
    await connection.close()
    return None


@asynccontextmanager
async def fresh_postgres_url() -> AsyncIterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    import asyncpg

    name = f"voicebot_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="test")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="test")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
