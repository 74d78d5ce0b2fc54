"""How Telegram updates come in without ever being lost, and in which order they run.

Telegram forgets an update once it is confirmed: by the next ``getUpdates`` with a higher
``offset`` (long polling) or by a 200 answer (webhook). PTB's ``run_polling`` confirms a batch
as soon as it is queued, before any handler ran, so a crash there loses those messages. Here
each update is first committed to the store's inbox (:class:`UpdateInbox`), only then
confirmed, and marked done after the core answered it; at start the unanswered ones are
handled first. :class:`PollingIntake` and :class:`WebhookIntake` are the two ways in; both
put updates on the Application's ``update_queue``, and :class:`ChatOrderedProcessor` runs them:
one chat's updates in arrival order, different chats concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Bot, Update
from telegram.error import Forbidden, InvalidToken, TelegramError
from telegram.ext import BaseUpdateProcessor

from adapters.telegram_client import ReceivedUpdate, TelegramClient
from adapters.telegram_ratelimiter import sleep_unless
from bot.ordering import ChatLocks
from storage.store import HistoryStore

log = logging.getLogger(__name__)

PLATFORM = "telegram"
#: The only update type the bot acts on; everything else is never fetched.
ALLOWED_UPDATES = ("message",)
#: Seconds a ``getUpdates`` long poll waits for news.
POLL_TIMEOUT = 10
#: Seconds between handing new updates to their handlers and asking for more. Building and
#: sending the next long poll takes the event loop ~0.3 ms; asked for at once, it ran before
#: the new turns' first steps (their ledger transaction, the voice note's getFile). Updates
#: arriving meanwhile wait this much longer, at most.
NEXT_POLL_PAUSE = 0.002
#: Telegram's update bodies are small; anything bigger than this is refused unread.
MAX_WEBHOOK_BODY = 1024 * 1024
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: Update ids remembered to recognise one that is already being handled.
SEEN_REMEMBERED = 10_000

Submit = Callable[[Update], Awaitable[None]]


class UpdateInbox:
    """Telegram updates in the store's inbox: kept from arrival until answered.

    :meth:`put` commits a batch and says which updates are new to this process: an update
    already handled (done) or already running (replayed at start, or delivered twice) is left
    out, so nothing runs twice.
    """

    def __init__(self, store: HistoryStore, bot: Bot) -> None:
        self._store = store
        self._bot = bot
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()  # one put at a time: "new" must be decided atomically

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN_REMEMBERED:
            self._seen.popitem(last=False)

    async def put(self, received: Sequence[ReceivedUpdate]) -> list[Update]:
        """Commit ``received`` (each update with its JSON as Telegram sent it); return the
        updates that should be handled now, in order."""
        updates = [update for update, _ in received]
        items = [(str(u.update_id), payload, _chat_key(u)) for u, payload in received]
        async with self._lock:
            fresh = await self._store.inbox_put(PLATFORM, items)
            if fresh == len({item[0] for item in items}):
                new = [u for u in updates if str(u.update_id) not in self._seen]
            else:  # some were stored before: only pending ones nobody is handling yet are new
                pending = {key for key, _ in await self._store.inbox_pending(PLATFORM)}
                new = [u for u in updates if str(u.update_id) in pending and str(u.update_id) not in self._seen]
            unique = list({u.update_id: u for u in new}.values())
            for update in unique:
                self._remember(str(update.update_id))
        return unique

    async def pending(self) -> list[Update]:
        """Updates stored but never answered (a crash or a failed delivery), oldest first."""
        updates = []
        for key, payload in await self._store.inbox_pending(PLATFORM):
            try:
                update = Update.de_json(json.loads(payload), self._bot)
            except (ValueError, TypeError, KeyError) as error:
                log.warning("dropping unreadable stored update %s: %s", key, error)
                await self._store.inbox_done(PLATFORM, key)
                continue
            if key not in self._seen:
                self._remember(key)
                updates.append(update)
        return updates

    async def done(self, update: Update) -> None:
        await self._store.inbox_done(PLATFORM, str(update.update_id))

    async def earlier_in_chat(self, update: Update) -> list[Update]:
        """The chat's updates older than ``update`` that another worker stored and nobody here
        is handling, oldest first: with several webhook workers, one chat's updates can reach
        different processes, and answering these first keeps the chat in order."""
        chat_key = _chat_key(update)
        if chat_key is None:
            return []
        earlier = []
        for key, payload in await self._store.inbox_pending_in_chat(PLATFORM, chat_key):
            if not key.isdigit() or int(key) >= update.update_id or key in self._seen:
                continue
            try:
                stored = Update.de_json(json.loads(payload), self._bot)
            except (ValueError, TypeError, KeyError):
                continue  # the worker that stored it drops it
            self._remember(key)
            earlier.append(stored)
        return sorted(earlier, key=lambda u: u.update_id)


def _chat_key(update: Update) -> str | None:
    chat = update.effective_chat
    return str(chat.id) if chat is not None else None


class ChatOrderedProcessor(BaseUpdateProcessor):
    """PTB update processor: one chat's updates in arrival order, chats concurrently.

    PTB's ``SimpleUpdateProcessor`` runs updates concurrently in any order; a voice note
    followed by a text would race. Here an update first waits for its chat's turn (holding
    nothing else, so a flooding chat cannot take every slot), then for one of ``max_running``
    slots. :meth:`wind_down` lets running updates finish for a grace period, cancels the rest
    and skips what still waits: those stay in the inbox for the next start.
    """

    def __init__(self, max_running: int) -> None:
        super().__init__(max_concurrent_updates=2**20)  # waiting updates are cheap
        self._max_running = max_running
        self._running: asyncio.Semaphore | None = None
        self._locks = ChatLocks()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def initialize(self) -> None:
        self._running = asyncio.Semaphore(self._max_running)
        self._closing = False

    async def shutdown(self) -> None:
        """Nothing to release."""

    @staticmethod
    def _chat_key(update: object) -> Hashable:
        if isinstance(update, Update) and update.effective_chat is not None:
            return update.effective_chat.id
        return ("update", id(update))

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        task = asyncio.current_task()
        assert task is not None and self._running is not None
        self._tasks.add(task)
        started = False
        try:
            async with self._locks.hold(self._chat_key(update)), self._running:
                if not self._closing:
                    started = True
                    await coroutine
        finally:
            self._tasks.discard(task)
            if not started and asyncio.iscoroutine(coroutine):
                coroutine.close()

    async def wind_down(self, grace: float) -> None:
        """Stop starting updates; give running ones ``grace`` seconds, then cancel them."""
        self._closing = True
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in late:
            task.cancel()
        if late:
            log.info("shutdown: abandoned %d unfinished update(s); they are answered after restart", len(late))
            await asyncio.wait(late, timeout=1.0)


class Backoff:
    """1, 2, 4 ... 30 seconds between attempts after errors; back to 1 after a success."""

    def __init__(self, first: float = 1.0, limit: float = 30.0) -> None:
        self.first, self.limit = first, limit
        self.next_delay = first

    def reset(self) -> None:
        self.next_delay = self.first

    def take(self) -> float:
        delay, self.next_delay = self.next_delay, min(self.limit, self.next_delay * 2)
        return delay


class PollingIntake:
    """Long polling with ``getUpdates``, committing each batch before the offset confirms it."""

    mode = "long polling"

    def __init__(self, bot: TelegramClient, inbox: UpdateInbox, submit: Submit, poll_timeout: int = POLL_TIMEOUT) -> None:
        self._bot = bot
        self._inbox = inbox
        self._submit = submit
        self._poll_timeout = poll_timeout

    async def run(self, stop: asyncio.Event) -> None:
        await self._bot.delete_webhook(drop_pending_updates=False)  # getUpdates is refused while one is set
        offset: int | None = None
        backoff = Backoff()
        while not stop.is_set():
            try:
                received = await self._fetch(offset, stop)
                if received is None:
                    break  # stopped while waiting
                fresh = await self._inbox.put(received)
                for update in fresh:
                    await self._submit(update)
                if fresh:  # let them start before the next poll is built and sent
                    await asyncio.sleep(NEXT_POLL_PAUSE)
            except (InvalidToken, Forbidden):
                raise
            except Exception as error:  # noqa: BLE001 - network, 5xx, 409, database: retry later
                delay = backoff.take()
                log.warning("telegram: fetching updates failed (%s: %s); retrying in %.0f s",
                            type(error).__name__, error, delay)
                await sleep_unless(stop, delay)
                continue
            backoff.reset()
            if received:
                offset = received[-1][0].update_id + 1
        await self._confirm(offset)

    async def _fetch(self, offset: int | None, stop: asyncio.Event) -> list[ReceivedUpdate] | None:
        """One long poll, abandoned (unconfirmed, so nothing is lost) when ``stop`` is set."""
        fetch = asyncio.ensure_future(
            self._bot.updates_with_json(offset=offset, timeout=self._poll_timeout, allowed_updates=list(ALLOWED_UPDATES))
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, TelegramError):
                await fetch
            return None
        return fetch.result()

    async def _confirm(self, offset: int | None) -> None:
        """Tell Telegram the stored updates need not come again (they are in the inbox)."""
        if offset is None:
            return
        with contextlib.suppress(TelegramError, TimeoutError):
            await asyncio.wait_for(self._bot.get_updates(offset=offset, timeout=0, limit=1), 2.0)


class WebhookIntake:
    """An aiohttp endpoint Telegram posts updates to; answers 200 only once the update is stored.

    Requests without the secret token are refused (403), bodies over
    :data:`MAX_WEBHOOK_BODY` too (413). Telegram retries anything but a 2xx, so a database
    hiccup (500) loses nothing.
    """

    mode = "webhook"

    def __init__(
        self, bot: Bot, inbox: UpdateInbox, submit: Submit, *, url: str, listen: str, port: int, secret: str,
        reuse_port: bool = False, register: bool = True,
    ) -> None:
        self._bot = bot
        self._inbox = inbox
        self._submit = submit
        self._url = url
        self._listen = listen
        self._port = port
        self._secret = secret
        # Several worker processes bind one port (SO_REUSEPORT) and one of them registers it.
        self._reuse_port = reuse_port
        self._register = register

    @property
    def path(self) -> str:
        return urlsplit(self._url).path or "/"

    async def run(self, stop: asyncio.Event) -> None:
        app = web.Application(client_max_size=MAX_WEBHOOK_BODY)
        app.router.add_post(self.path, self._receive)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._listen, self._port, reuse_port=self._reuse_port or None).start()
            log.info("telegram: webhook listening on %s:%d%s", self._listen, self._port, self.path)
            if self._register:
                await self._bot.set_webhook(
                    self._url, secret_token=self._secret, allowed_updates=list(ALLOWED_UPDATES), max_connections=40
                )
            await stop.wait()
        finally:
            await runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), self._secret.encode()):
            return web.Response(status=403)
        try:
            payload = await request.text()
            update = Update.de_json(json.loads(payload), self._bot)
        except (ValueError, TypeError, KeyError, AttributeError):  # PTB meets a list or a string
            return web.Response(status=400)
        if update is None:
            return web.Response(status=400)
        try:
            fresh = await self._inbox.put([(update, payload)])
        except Exception:  # noqa: BLE001 - Telegram will send it again
            log.exception("telegram: could not store update %s", update.update_id)
            return web.Response(status=500)
        for item in fresh:
            await self._submit(item)
        return web.Response(status=200)
