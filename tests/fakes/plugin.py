"""Pytest fixtures for the local Groq, ElevenLabs and D-ID stand-ins.

Register with ``pytest_plugins = ["tests.fakes.plugin"]`` in ``tests/conftest.py``.

- ``groq_fake``, ``elevenlabs_fake``, ``did_fake``: started on the test's event loop and
  stopped after it (function scope).
- ``fake_env``: the environment variables that point our app at those three fakes.
- ``*_fake_thread`` and ``fake_env_thread``: the same fakes served from a daemon thread,
  for sync code and for tests that block on a subprocess (the test's loop would not run).

The fixtures only return the variables; set them with ``monkeypatch.setenv`` or pass them
to a subprocess's ``env``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.fakes.did import FakeDID
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.groq import FakeGroq


def env_for(groq: FakeGroq, elevenlabs: FakeElevenLabs, did: FakeDID) -> dict[str, str]:
    """Our configuration variables for three started fakes (base URLs as each SDK takes them)."""
    return {
        "GROQ_API_KEY": groq.api_key or "gsk_any",
        "GROQ_BASE_URL": groq.base_url,  # the groq SDK appends /openai/v1
        "ELEVENLABS_API_KEY": elevenlabs.api_key or "el_any",
        "ELEVENLABS_BASE_URL": elevenlabs.base_url,  # the SDK's paths start with /v1
        "DID_API_KEY": did.api_key or "did_any",
        "DID_BASE_URL": did.base_url,
    }


@pytest_asyncio.fixture
async def groq_fake() -> AsyncIterator[FakeGroq]:
    async with FakeGroq() as fake:
        yield fake


@pytest_asyncio.fixture
async def elevenlabs_fake() -> AsyncIterator[FakeElevenLabs]:
    async with FakeElevenLabs() as fake:
        yield fake


@pytest_asyncio.fixture
async def did_fake() -> AsyncIterator[FakeDID]:
    async with FakeDID() as fake:
        yield fake


@pytest.fixture
def fake_env(groq_fake: FakeGroq, elevenlabs_fake: FakeElevenLabs, did_fake: FakeDID) -> dict[str, str]:
    return env_for(groq_fake, elevenlabs_fake, did_fake)


@pytest.fixture
def groq_fake_thread() -> Iterator[FakeGroq]:
    with FakeGroq() as fake:
        yield fake


@pytest.fixture
def elevenlabs_fake_thread() -> Iterator[FakeElevenLabs]:
    with FakeElevenLabs() as fake:
        yield fake


@pytest.fixture
def did_fake_thread() -> Iterator[FakeDID]:
    with FakeDID() as fake:
        yield fake


@pytest.fixture
def fake_env_thread(
    groq_fake_thread: FakeGroq, elevenlabs_fake_thread: FakeElevenLabs, did_fake_thread: FakeDID
) -> dict[str, str]:
    return env_for(groq_fake_thread, elevenlabs_fake_thread, did_fake_thread)
