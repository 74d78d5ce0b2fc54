"""Several Telegram webhook worker processes behind one port.

``voicebot telegram --workers N`` (or ``TELEGRAM_WEBHOOK_WORKERS=N``) runs this supervisor
instead of the bot: it checks that the set-up is shared (PostgreSQL, a cross-process chat
lock), migrates the database once, then starts N ordinary ``voicebot telegram`` processes.
Each binds the webhook port with ``SO_REUSEPORT``, so the kernel spreads Telegram's
connections over them, and each has its own VoiceBot on the shared PostgreSQL and Redis.
Worker 0 alone registers the webhook and the command menu.

The supervisor forwards SIGTERM/SIGINT, restarts a worker that died (a crash, the OOM
killer, a SIGKILL) after a short back-off, and stops everything when a worker reports a
configuration error (exit code 2). A restarted worker answers what the inbox still holds,
which is how an update whose worker died mid-turn gets its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import ConfigError
from storage.store import HistoryStore, normalize_url

log = logging.getLogger(__name__)

#: Set by the supervisor for each worker: ``"<index>/<count>"``.
WORKER_ENV = "VOICEBOT_WORKER"
#: Seconds workers get to finish after SIGTERM before they are killed.
STOP_TIMEOUT = 10.0
#: A worker that lived this long before dying is restarted at once, else after a back-off.
STABLE_AFTER = 30.0
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Exit code of a worker that stopped on a configuration error (bot.cli): not restarted.
CONFIG_ERROR_EXIT = 2


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Which of the supervisor's workers this process is."""

    index: int
    count: int

    @property
    def registers(self) -> bool:
        """Only one worker calls setWebhook and setMyCommands."""
        return self.index == 0

    @property
    def name(self) -> str:
        return f"worker{self.index}"

    def tag_logs(self) -> None:
        """Put the worker's name in every log line of this process."""
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {self.name} %(name)s: %(message)s"))


def current_role() -> WorkerRole | None:
    """This process's role when the supervisor started it; None for an ordinary single process."""
    value = os.environ.get(WORKER_ENV, "")
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit()):
        return None
    return WorkerRole(int(index), int(count))


def check_shared_setup(settings: Settings, count: int) -> None:
    """Refuse, with what to change, a set-up where N workers would not be one bot."""
    if count <= 1:
        return
    what = f"{count} Telegram workers (TELEGRAM_WEBHOOK_WORKERS / --workers)"
    if not settings.telegram_bot_token:
        raise ConfigError("Set TELEGRAM_BOT_TOKEN (from @BotFather) to run the Telegram bot.")
    if not settings.telegram_webhook_url:
        raise ConfigError(f"{what} need webhook mode: set TELEGRAM_WEBHOOK_URL. Long polling allows one "
                          "poller per bot token.")
    if not normalize_url(settings.database_url).startswith("postgresql"):
        raise ConfigError(f"{what} need a shared database: set DATABASE_URL=postgresql+asyncpg://... "
                          "(SQLite is one file for one process).")
    lock = settings.chat_lock
    if lock == "auto":
        lock = "redis" if settings.redis_url else "local"
    if lock == "local":
        raise ConfigError(f"{what} need a per-chat lock shared between processes: set REDIS_URL "
                          "(or CHAT_LOCK=postgres for PostgreSQL advisory locks).")
    if lock == "redis" and not settings.redis_url:
        raise ConfigError("CHAT_LOCK=redis needs REDIS_URL.")
    if not settings.redis_url:
        log.warning("workers: no REDIS_URL, so each worker keeps its own rate limits "
                    "(RATE_LIMIT_MESSAGES applies per worker)")


class Worker:
    """One child process and what is needed to start it again."""

    def __init__(self, role: WorkerRole, env: dict[str, str]) -> None:
        self.role = role
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.failures = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "telegram", env=self.env,
        )
        self.started_at = time.monotonic()
        log.info("workers: %s started (pid %d)", self.role.name, self.process.pid)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def restart_delay(self) -> float:
        if time.monotonic() - self.started_at >= STABLE_AFTER:
            self.failures = 0
        delay = RESTART_DELAYS[min(self.failures, len(RESTART_DELAYS) - 1)]
        self.failures += 1
        return delay

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def worker_env(role: WorkerRole, secret: str, log_level: str | None) -> dict[str, str]:
    """The environment of one worker: ours, as one process of ``role``, sharing one secret."""
    env = dict(os.environ)
    env.update({
        WORKER_ENV: f"{role.index}/{role.count}",
        "TELEGRAM_WEBHOOK_WORKERS": "1",  # a worker runs the bot itself, it supervises nothing
        "TELEGRAM_WEBHOOK_SECRET": secret,  # Telegram sends one secret; every worker must know it
        "PYTHONUNBUFFERED": "1",
    })
    if log_level:
        env["LOG_LEVEL"] = log_level
    return env


async def supervise(settings: Settings, count: int, *, log_level: str | None = None) -> int:
    """Run ``count`` webhook workers until SIGINT/SIGTERM; the exit code for ``voicebot``."""
    check_shared_setup(settings, count)
    store = HistoryStore.from_url(settings.database_url, pool_size=1, max_overflow=0)
    try:
        await store.migrate()  # once, before the workers: they find it current and skip it
    finally:
        await store.aclose()
    secret = Settings.secret(settings.telegram_webhook_secret) or secrets.token_urlsafe(32)
    workers = [Worker(role, worker_env(role, secret, log_level))
               for role in (WorkerRole(i, count) for i in range(count))]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    log.info("workers: starting %d Telegram webhook workers on %s:%d", count, settings.telegram_webhook_listen,
             settings.telegram_webhook_port)
    exit_code = 0
    try:
        for worker in workers:
            await worker.start()
        exit_code = await _watch(workers, stop)
    finally:
        await _stop_all(workers)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
    return exit_code


async def _watch(workers: list[Worker], stop: asyncio.Event) -> int:
    """Restart workers that die until ``stop``; 2 when one stopped on a configuration error."""
    waits = {asyncio.create_task(w.wait()): w for w in workers}
    stopping = asyncio.create_task(stop.wait())
    try:
        while True:
            done, _ = await asyncio.wait({*waits, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return 0
            for task in done:
                worker = waits.pop(task)
                code = task.result()
                if code == CONFIG_ERROR_EXIT:
                    log.error("workers: %s stopped on a configuration error; stopping all", worker.role.name)
                    return CONFIG_ERROR_EXIT
                delay = worker.restart_delay()
                log.warning("workers: %s (pid %s) exited with %s; restarting in %.0f s", worker.role.name,
                            worker.process.pid if worker.process else "?", code, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stop.wait()), delay)
                if stop.is_set():
                    return 0
                await worker.start()
                waits[asyncio.create_task(worker.wait())] = worker
    finally:
        stopping.cancel()
        for task in waits:
            task.cancel()


async def _stop_all(workers: list[Worker]) -> None:
    """SIGTERM every worker, then SIGKILL what is still running after :data:`STOP_TIMEOUT`."""
    running = [w for w in workers if w.process is not None and w.process.returncode is None]
    for worker in running:
        worker.signal(signal.SIGTERM)
    if not running:
        return
    waiting = [asyncio.create_task(w.wait()) for w in running]
    _, late = await asyncio.wait(waiting, timeout=STOP_TIMEOUT)
    if late:
        for worker in running:
            worker.signal(signal.SIGKILL)
        await asyncio.wait(late, timeout=5.0)


async def watch_parent(stop: asyncio.Event, interval: float = 1.0) -> None:
    """In a worker: set ``stop`` when the supervisor is gone (the worker was re-parented)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("workers: the supervisor (pid %d) is gone; stopping", parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
