"""What the end-to-end benches share: the fakes in their own processes, the real bot in another.

    bench process:    FakeTelegram (event-driven long polls) + the driver that pushes updates
                      and timestamps what the bot sends back, on one asyncio loop
    provider process: FakeGroq (Whisper + streamed chat) and FakeElevenLabs, with fixed
                      injected latencies (:class:`Latencies`), ``python -m bench.harness providers``
    bot process:      ``python -m bot.cli telegram`` (what ``voicebot telegram`` runs), pointed
                      at both by environment variables, with a fresh SQLite database

so the bot's interpreter does nothing but the bot's work, and its CPU time and RSS can be read
from ``/proc``. Every time in a figure is the fake Telegram's clock: from the moment an update
is available to ``getUpdates`` to the moment a bot message arrives at the fake.

The fakes' own CPU is kept off the measured path where it would otherwise count as ours:
- the chat reply is a fixed sentence, so the ElevenLabs fake encodes its OGG/Opus once (its
  ``render`` cache) instead of once per turn;
- the Groq fake measures each uploaded clip's duration once (PyAV decode), then remembers it;
- the Telegram fake answers a waiting ``getUpdates`` the moment an update is pushed (the test
  fake polls its queue every 20 ms, which would add 10 ms on average to every turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from tests.fakes import audio_samples  # noqa: E402
from tests.fakes.elevenlabs import FakeElevenLabs  # noqa: E402
from tests.fakes.groq import FakeGroq  # noqa: E402
from tests.fakes.http_fake import RecordedRequest, Streamed, json_response  # noqa: E402
from tests.fakes.telegram_api import FakeChat, FakeTelegram, FakeUser, SentMessage  # noqa: E402

#: The LLM's answer in every bench: 20 words, about 120 characters (a short spoken reply,
#: 7 s of OGG/Opus from the ElevenLabs fake, ~55 kB).
REPLY = (
    "Sure, here is a short answer: the capital of France is Paris, "
    "a city on the Seine known for its museums and cafes."
)
REPLY_WORDS = len(REPLY.split())
#: The voice note every bench user sends: 3 s of speech-like beeps, OGG/Opus 32 kbit/s (~12 kB).
NOTE_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Latencies:
    """Injected provider latencies, in seconds.

    ``llm`` is the whole streamed answer: the first content token arrives ``llm_first_token``
    after the request (Groq's time to first token for a small Llama is ~0.2 s), the other tokens
    follow evenly spaced, and the stream ends ``llm`` after the request. With the 20-word reply
    that is one token every ~9.5 ms (about 100 tokens/s on the wire).
    """

    stt: float = 0.25
    llm: float = 0.40
    llm_first_token: float = 0.20
    tts: float = 0.30

    @classmethod
    def zero(cls) -> Latencies:
        return cls(0.0, 0.0, 0.0, 0.0)

    @property
    def voice_turn(self) -> float:
        """What a voice-note turn spends waiting for providers: STT + the whole LLM + TTS."""
        return self.stt + self.llm + self.tts

    @property
    def first_text(self) -> float:
        """What a turn waits for before it can show text: STT + the LLM's first token."""
        return self.stt + self.llm_first_token

    def groq_timing(self, words: int = REPLY_WORDS) -> tuple[float, float]:
        """(latency before the first SSE chunk, delay between chunks) for a ``words`` reply.

        The fake streams [role chunk, one chunk per word, finish chunk, [DONE]]; chunk ``i``
        leaves at ``latency + i * delay``. First content (chunk 1) at ``llm_first_token``,
        [DONE] (chunk words + 2) at ``llm``.
        """
        if self.llm <= 0:
            return 0.0, 0.0
        delay = (self.llm - self.llm_first_token) / (words + 1)
        return self.llm_first_token - delay, delay


# ----------------------------------------------------------------------------- provider fakes

#: (endpoint, request fully received, response fully sent) of every request the fakes of this
#: process served, in ``perf_counter`` time (CLOCK_MONOTONIC: comparable across processes).
EVENTS: list[tuple[str, float, float]] = []


class Timed:
    """Mixin for an HttpFake: log each request's service window in :data:`EVENTS`."""

    async def _serve(self, request: Any, recorded: RecordedRequest, handler: Any, endpoint: str) -> Any:
        start = time.perf_counter()
        try:
            return await super()._serve(request, recorded, handler, endpoint)  # type: ignore[misc]
        finally:
            if len(EVENTS) > 200_000:
                del EVENTS[:100_000]
            EVENTS.append((endpoint, start, time.perf_counter()))


class OnTime:
    """Mixin for a provider fake: answer exactly ``latency`` after the request arrived.

    The base fake sleeps ``latency``, then does its own work (the ElevenLabs fake hands the
    encode to a thread even when it is cached), then streams with a relative sleep between
    chunks. On a busy machine every one of those steps wakes a little late, and the sum (5-70 ms
    a turn, measured) would be charged to the bot. Here the fake's work is done first and the
    answer is due at a deadline: the whole body ``latency`` after arrival, or for a stream, chunk
    ``i`` at ``latency + i * delay``. (Faults are not injected: benches do not use them.)
    """

    async def _serve(self, request: Any, recorded: RecordedRequest, handler: Any, endpoint: str) -> Any:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.latency.get(endpoint, 0.0)  # type: ignore[attr-defined]
        reply = await handler(request, recorded)
        if isinstance(reply, Streamed):
            return await self._stream_on_time(request, recorded, reply, due)
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        return reply

    @staticmethod
    async def _stream_on_time(request: Any, recorded: RecordedRequest, reply: Streamed, due: float) -> Any:
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        response.enable_chunked_encoding()
        recorded.status = reply.status
        for i, chunk in enumerate(reply.chunks):
            if (wait := due + i * reply.delay - loop.time()) > 0:
                await asyncio.sleep(wait)
            if i == 0:
                await response.prepare(request)
            await response.write(chunk)
        await response.write_eof()
        return response


class BenchGroq(Timed, OnTime, FakeGroq):
    """FakeGroq that decodes each distinct upload once (the decode is the fake's cost, not ours)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(api_key=None, reply_fn=lambda messages: REPLY, **kwargs)
        self._durations: dict[str, float | None] = {}
        self._app.router.add_get("/_bench/events", self._events)

    async def _events(self, request: web.Request) -> web.Response:
        """Hand this process's :data:`EVENTS` to the bench process (and forget them)."""
        events, EVENTS[:] = list(EVENTS), []
        return json_response(events)

    async def _audio_duration(self, data: bytes) -> float | None:
        key = hashlib.sha256(data).hexdigest()
        if key not in self._durations:
            self._durations[key] = await super()._audio_duration(data)
        return self._durations[key]

    async def _record(self, request: Any, endpoint: str) -> RecordedRequest:
        recorded = await super()._record(request, endpoint)
        self.requests.clear()  # nothing reads them; a long run would keep every body
        return recorded


class BenchElevenLabs(Timed, OnTime, FakeElevenLabs):
    async def _record(self, request: Any, endpoint: str) -> RecordedRequest:
        recorded = await super()._record(request, endpoint)
        self.requests.clear()
        return recorded


async def serve_providers(latencies: Latencies) -> None:
    """The provider process (``python -m bench.harness providers``): both fakes on one loop,
    their URLs printed as one JSON line, serving until stdin closes (the parent went away)."""
    import json
    import zlib

    from bot.text import to_spoken_text
    from tests.fakes.elevenlabs import render

    groq, eleven = BenchGroq(), BenchElevenLabs(api_key=None)
    latency, delay = latencies.groq_timing()
    groq.latency.update(stt=latencies.stt, chat=latency)
    groq.token_delay = delay
    eleven.latency.update(tts=latencies.tts)
    await groq.start()
    await eleven.start()
    # Pay the one-off cost (the OGG encode of the reply) before anyone measures.
    spoken = to_spoken_text(REPLY, 1500)
    render("opus_48000_64", eleven.expected_duration(spoken), zlib.crc32(spoken.encode()) % 1000)
    print(json.dumps({"groq": groq.base_url, "elevenlabs": eleven.base_url}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await groq.stop()
    await eleven.stop()


class ProviderFakes:
    """Groq and ElevenLabs fakes in a process of their own."""

    def __init__(self, latencies: Latencies) -> None:
        self.latencies = latencies
        self.urls: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ProviderFakes:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.harness", "providers", json.dumps(asdict(self.latencies))],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("provider fakes did not start")
        self.urls = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def events(self) -> list[tuple[str, float, float]]:
        """The provider fakes' :data:`EVENTS` since the last call."""
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(self.urls["groq"] + "/_bench/events") as response:
            return [tuple(e) for e in await response.json()]

    def env(self) -> dict[str, str]:
        return {
            "GROQ_API_KEY": "gsk_bench", "GROQ_BASE_URL": self.urls["groq"],
            "ELEVENLABS_API_KEY": "el_bench", "ELEVENLABS_BASE_URL": self.urls["elevenlabs"],
        }


async def calibrate(providers: ProviderFakes, note: bytes, rounds: int = 15) -> dict[str, float]:
    """How far the provider fakes are from their nominal latency, seen by a plain aiohttp client
    in the bench process: p50 of (measured - injected) in ms per call, and their sum for a turn.

    This is the floor under every "overhead" figure: localhost HTTP, the fakes' own parsing and
    timer slack on this machine. It is reported, not subtracted.
    """
    import aiohttp

    lat = providers.latencies
    groq, eleven = providers.urls["groq"], providers.urls["elevenlabs"]
    excess: dict[str, list[float]] = {"stt": [], "llm_first_token": [], "llm": [], "tts": []}
    body = {"model": "llama-3.1-8b-instant", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            form = aiohttp.FormData()
            form.add_field("model", "whisper-large-v3-turbo")
            form.add_field("response_format", "verbose_json")
            form.add_field("file", note, filename="voice.ogg", content_type="audio/ogg")
            start = time.perf_counter()
            async with http.post(f"{groq}/openai/v1/audio/transcriptions", data=form) as response:
                await response.read()
            excess["stt"].append(time.perf_counter() - start - lat.stt)
            start, first = time.perf_counter(), None
            async with http.post(f"{groq}/openai/v1/chat/completions", json=body) as response:
                async for line in response.content:
                    if first is None and b'"content":"' in line and b'"content":""' not in line:
                        first = time.perf_counter()
            excess["llm"].append(time.perf_counter() - start - lat.llm)
            excess["llm_first_token"].append((first or start) - start - lat.llm_first_token)
            start = time.perf_counter()
            async with http.post(f"{eleven}/v1/text-to-speech/voice?output_format=opus_48000_64",
                                 json={"text": REPLY, "model_id": "eleven_flash_v2_5"}) as response:
                await response.read()
            excess["tts"].append(time.perf_counter() - start - lat.tts)
    result = {name: round(percentile(values, 50) * 1000, 2) for name, values in excess.items()}
    result["voice_turn"] = round(result["stt"] + result["llm"] + result["tts"], 2)
    return result


# ----------------------------------------------------------------------------- Telegram fake


@dataclass(slots=True)
class Arrival:
    """A bot message as it reached the fake: kind (text/voice), perf_counter time, what it answered."""

    kind: str
    at: float
    reply_to: int | None
    message_id: int


class BenchTelegram(Timed, FakeTelegram):
    """FakeTelegram for benches: event-driven long polls and a timestamped log of what arrives.

    :meth:`push` makes an update available and returns the ``perf_counter`` time at which it
    was; :attr:`arrivals` lists, per chat, every message the bot sent (edits are not arrivals).
    """

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[int, list[Arrival]] = defaultdict(list)
        self.calls: Counter[str] = Counter()  # Bot API calls by method, answered or not
        self.pushed_at: dict[int, float] = {}  # update_id -> perf_counter
        self._wake: asyncio.Event | None = None
        self._watchers: list[tuple[Any, asyncio.Future[None]]] = []
        self._sent_index: dict[tuple[int, int], SentMessage] = {}

    async def start(self) -> BenchTelegram:
        self._wake = asyncio.Event()
        await super().start()
        return self

    # --- updates in ---------------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        update = super().push_update(update)
        self.pushed_at[update["update_id"]] = time.perf_counter()
        if self._wake is not None:
            self._wake.set()
        return update

    async def _api_get_updates(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        """The base long poll, but woken by a push instead of checking every 20 ms."""
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        instant = {**params, "timeout": "0"}
        while True:
            assert self._wake is not None
            self._wake.clear()
            ready = await super()._api_get_updates(instant, recorded)
            remaining = deadline - time.monotonic()
            if ready or remaining <= 0 or self._closing is None or self._closing.is_set():
                return ready
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _record(self, request: Any, endpoint: str) -> RecordedRequest:
        recorded = await super()._record(request, endpoint)
        self.calls[endpoint] += 1
        if endpoint not in ("getUpdates", "setMyCommands", "getMe", "deleteWebhook"):
            self.requests.pop()  # keep what start-up checks read; drop the bulk (bodies, uploads)
        return recorded

    def store_file(self, data: bytes, folder: str, extension: str, *, declared_size: int | None = None) -> Any:
        if folder in ("voices", "videos"):  # the bot's uploads: nobody downloads them here
            return super().store_file(b"", folder, extension, declared_size=len(data))
        return super().store_file(data, folder, extension, declared_size=declared_size)

    # --- messages out -------------------------------------------------------------------------

    def _bot_message(self, method: str, chat: FakeChat, params: dict[str, str], fields: dict[str, Any],
                     record: SentMessage) -> dict[str, Any]:
        message = super()._bot_message(method, chat, params, fields, record)
        self.sent.pop()  # the base scans ``sent`` for every edit: keep an index instead
        self._sent_index[(record.chat_id, record.message_id)] = record
        record.file = None  # drop the upload's bytes
        self.arrivals[chat.id].append(Arrival(record.kind, time.perf_counter(), record.reply_to, record.message_id))
        self._check_watchers()
        return message

    async def _api_edit_message_text(self, params: dict[str, str], recorded: RecordedRequest) -> Any:
        key = (int(params.get("chat_id") or 0), int(params.get("message_id") or 0))
        record = self._sent_index.get(key)
        if record is None:
            return await super()._api_edit_message_text(params, recorded)
        self.sent.append(record)  # the base looks it up in ``sent``
        try:
            return await super()._api_edit_message_text(params, recorded)
        finally:
            self.sent.pop()

    def _check_watchers(self) -> None:
        still = []
        for ready, future in self._watchers:
            if future.done():
                continue
            if ready():
                future.set_result(None)
            else:
                still.append((ready, future))
        self._watchers = still

    async def until(self, ready: Any, timeout: float) -> None:
        """Wait until ``ready()`` holds (checked whenever a bot message arrives)."""
        if ready():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append((ready, future))
        await asyncio.wait_for(future, timeout)

    def kinds(self, chat: FakeChat) -> list[str]:
        return [a.kind for a in self.arrivals[chat.id]]

    def first(self, chat: FakeChat, kind: str, after: float = 0.0) -> Arrival | None:
        return next((a for a in self.arrivals[chat.id] if a.kind == kind and a.at >= after), None)


# ----------------------------------------------------------------------------- the bot process


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class BotProcess:
    """``python -m bot.cli telegram`` in a scratch folder (no .env), logging to a file."""

    def __init__(self, telegram: BenchTelegram, providers: ProviderFakes, extra_env: dict[str, str] | None = None,
                 profile: str | None = None) -> None:
        self.telegram = telegram
        self.folder = Path(tempfile.mkdtemp(prefix="voicebot-bench-"))
        self.log_path = self.folder / "bot.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.folder)),
            "LANG": "C.UTF-8",
            **telegram.env(), **providers.env(),
            "DATABASE_URL": f"sqlite+aiosqlite:///{self.folder / 'bot.db'}",
            **(extra_env or {}),
        }
        if os.environ.get("BENCH_BOT_PYTHONPATH"):  # run another checkout's bot (before/after)
            self.env["PYTHONPATH"] = os.environ["BENCH_BOT_PYTHONPATH"]
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self._profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 60.0) -> None:
        polls = len(self.telegram.requests_to("/getUpdates"))
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *(os.environ.get("BENCH_BOT_ARGS") or "-m bot.cli telegram").split()],
            cwd=self.folder, env=self.env,
            stdout=subprocess.DEVNULL, stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while len(self.telegram.requests_to("/getUpdates")) <= polls:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bot exited at start:\n{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the bot did not start polling")
            await asyncio.sleep(0.05)

    def start_profile(self) -> None:
        """Attach py-spy (``BENCH_PYSPY`` or on PATH) to the bot until :meth:`stop_profile`."""
        if not self.profile:
            return
        py_spy = os.environ.get("BENCH_PYSPY") or shutil.which("py-spy")
        if not py_spy:
            print("  (no py-spy: set BENCH_PYSPY=/path/to/py-spy to profile)", file=sys.stderr)
            return
        fmt = "raw" if self.profile.endswith((".txt", ".raw")) else "flamegraph"
        self._profiler = subprocess.Popen(
            [py_spy, "record", "--pid", str(self.pid), "--rate", "250", *os.environ.get("BENCH_PYSPY_ARGS", "--gil").split(), "--format", fmt, "--output", self.profile],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach

    def stop_profile(self) -> None:
        if self._profiler is not None:
            self._profiler.send_signal(signal.SIGINT)
            self._profiler.wait(30)
            self._profiler = None
            print(f"  profile written to {self.profile}", file=sys.stderr)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return process_rss_mb(self.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.stop_profile()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if os.environ.get("BENCH_KEEP"):
            print(f"  kept {self.folder}", file=sys.stderr)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_bot(latencies: Latencies, extra_env: dict[str, str] | None = None,
                      profile: str | None = None) -> Any:
    """Provider fakes (own process), the Telegram fake (this loop) and a started bot process."""
    with ProviderFakes(latencies) as providers:
        telegram = BenchTelegram()
        await telegram.start()
        bot = BotProcess(telegram, providers, extra_env, profile)
        try:
            await bot.start()
            yield Session(telegram, bot, providers, latencies)
        finally:
            bot.stop()
            await telegram.stop()


@dataclass(slots=True)
class Session:
    telegram: BenchTelegram
    bot: BotProcess
    providers: ProviderFakes
    latencies: Latencies
    _note: bytes = b""

    @property
    def note(self) -> bytes:
        if not self._note:
            self._note = audio_samples.beeps_ogg(NOTE_SECONDS, seed=5)
        return self._note

    def users(self, count: int, prefix: str = "User") -> Iterator[tuple[FakeUser, FakeChat]]:
        for i in range(count):
            user = self.telegram.user(f"{prefix}{i}")
            yield user, self.telegram.private_chat(user)

    def send_note(self, chat: FakeChat, user: FakeUser) -> tuple[int, float]:
        """Push a voice note; (its message id, the time it became available)."""
        update = self.telegram.send_voice(chat, user, self.note, duration=round(NOTE_SECONDS))
        return update["message"]["message_id"], self.telegram.pushed_at[update["update_id"]]

    def send_text(self, chat: FakeChat, user: FakeUser, text: str) -> tuple[int, float]:
        update = self.telegram.send_text(chat, user, text)
        return update["message"]["message_id"], self.telegram.pushed_at[update["update_id"]]


# ----------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


_YARDSTICK_UPDATE = {
    "update_id": 900000001,
    "message": {
        "message_id": 41, "date": 1733400000, "text": "What is the capital of France? " * 3,
        "from": {"id": 7, "is_bot": False, "first_name": "Ann", "language_code": "en"},
        "chat": {"id": 7, "first_name": "Ann", "type": "private"},
        "voice": {"file_id": "AwACAgIAAxkBAAI", "file_unique_id": "AgAD", "duration": 4, "mime_type": "audio/ogg"},
    },
}


def yardstick_ms(repeats: int = 5) -> float:
    """Milliseconds this machine takes for a fixed pure-Python workload right now (JSON in and
    out, dicts, sorting: what the bot's CPU mostly does), best of ``repeats``.

    Shared VMs differ from day to day by a factor of two or more, which no code change
    explains; ``run_all.py`` prints this before and after the benches so a slow run can be
    told from a regression. Lower is faster.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(2000):
            decoded = json.loads(json.dumps(_YARDSTICK_UPDATE))
            decoded["message"]["message_id"] = i
            sorted(decoded["message"].items(), key=lambda item: item[0])
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def latencies_dict(latencies: Latencies) -> dict[str, float]:
    return {k: v for k, v in asdict(latencies).items()}


@dataclass(slots=True)
class LoadWatch:
    """Load average at the start and the end of a measurement."""

    start: list[float] = field(default_factory=load_average)

    def result(self) -> dict[str, list[float]]:
        return {"load_start": self.start, "load_end": load_average()}


async def serve_telegram() -> None:
    """``python -m bench.harness telegram``: a FakeTelegram with one private chat, for
    bench_units; prints its URL, token and chat id as one JSON line, serves until stdin closes."""
    fake = FakeTelegram()
    await fake.start()
    user = fake.user("Unit")
    chat = fake.private_chat(user)
    stored = fake.store_file(audio_samples.beeps_ogg(NOTE_SECONDS, seed=5), "voice", "oga")
    asked = fake.send_text(chat, user, "What is the capital of France?")  # what the answers reply to
    print(json.dumps({"api": fake.api_base_url, "files": fake.file_base_url, "token": fake.token,
                      "chat": chat.id, "file_id": stored.file_id, "message_id": asked["message"]["message_id"]}),
          flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await fake.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["providers"]:
    asyncio.run(serve_providers(Latencies(**json.loads(sys.argv[2]))))
elif __name__ == "__main__" and sys.argv[1:2] == ["telegram"]:
    asyncio.run(serve_telegram())
