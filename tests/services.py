"""Real services for tests: Redis on 127.0.0.1:6379 where the machine runs it (skipped, with
the reason, where not). PostgreSQL lives in tests/databases.py."""

from __future__ import annotations

import os
import uuid

import pytest

REDIS_URL = os.environ.get("VOICEBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def redis_unavailable() -> str | None:
    try:
        import redis.asyncio as redis
    except ImportError:
        return "redis is not installed"
    client = redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip
        return f"no Redis at {REDIS_URL} ({type(exc).__name__}: {exc})"
    finally:
        await client.aclose()
    return None


async def skip_without_redis() -> None:
    reason = await redis_unavailable()
    if reason:
        pytest.skip(reason)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
