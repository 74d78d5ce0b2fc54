"""The real ``voicebot telegram --workers 2``: two webhook worker processes on one port
(SO_REUSEPORT) behind a supervisor, on PostgreSQL and Redis, fed by the fake Bot API's
webhook push (a new connection per update, as Telegram spreads updates over connections).

- interleaved updates of two chats, some delivered twice, reach both workers and are
  answered once each, in each chat's order;
- a worker SIGKILLed while a turn is in flight: its update is answered exactly once (by the
  other worker or by the restarted one), and the chat's next update after it;
- the set-ups that cannot work with several workers are refused with what to change.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.fakes.groq import FakeGroq
from tests.fakes.telegram_api import FakeChat, FakeTelegram
from tests.services import REDIS_URL

pytestmark = pytest.mark.timeout(180)

WORKER_STARTED = re.compile(r"workers: (worker\d+) started \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerGroup:
    """``voicebot telegram --workers N`` in a subprocess, its log, and its workers' pids."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int) -> None:
        self.env = env
        self.log_path = log_path
        self.workers = workers
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, telegram: FakeTelegram, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "telegram", "--workers", str(self.workers),
                env=self.env, stdout=subprocess.DEVNULL, stderr=log_file,
            )
        await self.wait_for_log(lambda log: log.count("telegram: webhook listening") >= self.workers, timeout)
        await telegram.wait_until(lambda: bool(telegram.webhook_url), timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, ready, timeout: float) -> None:  # noqa: ANN001 - a str predicate
        deadline = time.monotonic() + timeout
        while not ready(self.log()):
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"the supervisor exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.05)

    def pids(self) -> dict[str, int]:
        """The newest pid of each worker."""
        return {name: int(pid) for name, pid in WORKER_STARTED.findall(self.log())}

    def all_pids(self) -> list[int]:
        return [int(pid) for _, pid in WORKER_STARTED.findall(self.log())]

    async def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Whatever still runs: the supervisor and every worker it ever started."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
        for pid in self.all_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
async def workers(
    redis_required: None, pg_url: str, telegram_fake: FakeTelegram, fake_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[WorkerGroup]:
    """Two workers, not started; tests adjust ``env`` first."""
    port = free_port()
    telegram_fake.webhook_new_connection_each = True
    env = {
        **os.environ, **fake_env, **telegram_fake.env(),
        "DATABASE_URL": pg_url, "REDIS_URL": REDIS_URL,
        "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{port}/telegram/hook",
        "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1", "TELEGRAM_WEBHOOK_PORT": str(port),
        "STREAM_TEXT": "false", "VOICE_REPLIES": "false", "AVATAR_PROVIDER": "none",
        "RATE_LIMIT_MESSAGES": "1000", "PROVIDER_RETRIES": "0", "DB_POOL_SIZE": "3",
    }
    group = WorkerGroup(env, tmp_path / "workers.log", workers=2)
    try:
        yield group
    finally:
        group.kill()


def answers(telegram: FakeTelegram, chat: FakeChat) -> list[str]:
    """What the bot answered in ``chat``: the text the fake LLM echoed, in order."""
    return [re.sub(r"^You said: (.*?)\. I have.*$", r"\1", text, flags=re.S) for text in telegram.texts(chat)]


def turn_lines(log: str) -> dict[str, int]:
    """How many turns each worker ran to the end, from the workers' tagged log lines."""
    counts: dict[str, int] = {}
    for name in re.findall(r" (worker\d+) bot\.pipeline: turn platform=telegram", log):
        counts[name] = counts.get(name, 0) + 1
    return counts


async def unanswered_inbox(pg_url: str) -> int:
    url = make_url(pg_url)
    connection = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
    try:
        return await connection.fetchval("SELECT count(*) FROM inbox WHERE NOT done")
    finally:
        await connection.close()


async def test_two_webhook_workers_answer_interleaved_chats_once_each_in_order(
    workers: WorkerGroup, telegram_fake: FakeTelegram, groq_fake: FakeGroq, pg_url: str
) -> None:
    await workers.start(telegram_fake)
    assert set(workers.pids()) == {"worker0", "worker1"}
    # One worker registered the webhook and the menu; both serve it.
    assert len(telegram_fake.requests_to("/setWebhook")) == 1
    assert len(telegram_fake.requests_to("/setMyCommands")) == 1
    groq_fake.latency["chat"] = 0.15

    alice, chat_a = telegram_fake.new_private_chat("Alice")
    bob, chat_b = telegram_fake.new_private_chat("Bob")
    rounds = 8
    for i in range(1, rounds + 1):
        a = telegram_fake.send_text(chat_a, alice, f"a{i}")
        telegram_fake.send_text(chat_b, bob, f"b{i}")
        if i % 3 == 0:
            telegram_fake.push_update(a)  # the same update delivered again
            telegram_fake.redeliver(a)  # the same message in a new update
        await asyncio.sleep(0.05)

    await telegram_fake.wait_until(
        lambda: len(telegram_fake.texts(chat_a)) >= rounds and len(telegram_fake.texts(chat_b)) >= rounds, timeout=60
    )
    await asyncio.sleep(1.0)  # anything answered twice would show up now
    assert answers(telegram_fake, chat_a) == [f"a{i}" for i in range(1, rounds + 1)]
    assert answers(telegram_fake, chat_b) == [f"b{i}" for i in range(1, rounds + 1)]
    assert await unanswered_inbox(pg_url) == 0

    log = workers.log()
    per_worker = turn_lines(log)
    assert set(per_worker) == {"worker0", "worker1"}, per_worker  # both took part
    assert await workers.stop() == 0, log
    assert "Traceback" not in workers.log()


def pids_connected_to(port: int, pids: list[int]) -> list[int]:
    """Which of ``pids`` hold an established TCP connection to 127.0.0.1:``port`` (/proc)."""
    remote_inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                remote_inodes.add(fields[9])
    found = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in remote_inodes:
                found.append(pid)
                break
    return found


@pytest.mark.parametrize(
    ("lock", "chat_goes_on"),
    [("redis", True), ("postgres", False)],
    ids=["redis-lock/next-update-catches-up", "postgres-lock/restarted-worker-replays"],
)
async def test_a_worker_killed_mid_turn_loses_nothing_and_answers_once(
    workers: WorkerGroup, telegram_fake: FakeTelegram, groq_fake: FakeGroq, pg_url: str, lock: str,
    chat_goes_on: bool,
) -> None:
    """The webhook said 200 once the update was stored, so Telegram will not send it again: the
    inbox has it. Either the chat's next update reaches the other worker, which answers the
    chat's earlier stored updates first, or the supervisor restarts the dead worker, which
    answers what the inbox holds. The dead worker's Redis lock lapses after its lease; its
    advisory lock goes with its connection."""
    workers.env.update({"CHAT_LOCK": lock, "CHAT_LOCK_LEASE": "2"})
    await workers.start(telegram_fake)
    groq_fake.latency["chat"] = 30.0  # the first turn hangs in the LLM call until we kill its worker

    alice, chat_a = telegram_fake.new_private_chat("Alice")
    bob, chat_b = telegram_fake.new_private_chat("Bob")
    telegram_fake.send_text(chat_a, alice, "first")
    await groq_fake.wait_for_requests(1, "/chat/completions", timeout=20)
    groq_port = int(groq_fake.base_url.rsplit(":", 1)[1])
    [victim] = pids_connected_to(groq_port, list(workers.pids().values()))
    name = next(n for n, pid in workers.pids().items() if pid == victim)
    os.kill(victim, signal.SIGKILL)
    groq_fake.latency["chat"] = 0.0

    if chat_goes_on:
        telegram_fake.send_text(chat_a, alice, "second")
    telegram_fake.send_text(chat_b, bob, "other chat")  # the webhook keeps working meanwhile
    await workers.wait_for_log(lambda log: f"{name} (pid {victim}) exited with -9" in log, 20)
    await telegram_fake.wait_until(lambda: len(telegram_fake.texts(chat_a)) >= 1, timeout=60)
    if not chat_goes_on:
        first_turn = re.compile(r" (worker\d+) bot\.pipeline: turn platform=telegram chat=%d message=1 "
                                r"outcome=answered" % chat_a.id)
        await workers.wait_for_log(lambda log: first_turn.search(log) is not None, 10)
        assert first_turn.findall(workers.log()) == [name]  # the restarted worker
        telegram_fake.send_text(chat_a, alice, "second")
    await telegram_fake.wait_until(
        lambda: len(telegram_fake.texts(chat_a)) >= 2 and len(telegram_fake.texts(chat_b)) >= 1, timeout=60
    )
    await asyncio.sleep(1.5)
    assert answers(telegram_fake, chat_a) == ["first", "second"]  # once each, in order
    assert answers(telegram_fake, chat_b) == ["other chat"]
    # The restarted worker is up again and the inbox holds nothing unanswered.
    await workers.wait_for_log(lambda log: log.count("telegram: webhook listening") >= 3, 60)
    assert workers.pids()[name] != victim
    deadline = time.monotonic() + 10
    while await unanswered_inbox(pg_url) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await unanswered_inbox(pg_url) == 0
    assert await workers.stop() == 0, workers.log()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"DATABASE_URL": "sqlite+aiosqlite:///bot.db", "REDIS_URL": "redis://127.0.0.1:6379/15"},
         "need a shared database: set DATABASE_URL=postgresql"),
        ({"DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:1/x"}, "set REDIS_URL (or CHAT_LOCK=postgres"),
        ({"DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:1/x", "CHAT_LOCK": "local",
          "REDIS_URL": "redis://127.0.0.1:6379/15"}, "set REDIS_URL (or CHAT_LOCK=postgres"),
        ({"TELEGRAM_WEBHOOK_URL": "", "DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:1/x",
          "REDIS_URL": "redis://127.0.0.1:6379/15"}, "need webhook mode: set TELEGRAM_WEBHOOK_URL"),
        ({"TELEGRAM_WEBHOOK_WORKERS": "1", "--workers": "3"}, "need a shared database"),
        ({"--workers": "0"}, "--workers must be 1 or more"),
    ],
)
def test_several_workers_refuse_a_set_up_that_is_not_shared(
    overrides: dict[str, str], expected: str, tmp_path: Path
) -> None:
    env = {
        **os.environ, "TELEGRAM_BOT_TOKEN": "1:abcdefghij", "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/hook",
        "TELEGRAM_WEBHOOK_WORKERS": "3", **overrides,
    }
    args = ["--workers", env.pop("--workers")] if "--workers" in env else []
    result = subprocess.run([sys.executable, "-m", "bot.cli", "telegram", *args], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "3 Telegram workers" in result.stderr or "--workers must" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bot.db").exists()  # refused before touching anything
