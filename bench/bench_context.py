"""Loading a chat's context from a big SQLite database: 1,000,000 messages in 10,000 chats.

Builds the database once (cached under bench/results/), then measures what a turn does to
get its context: read the newest rows of one chat and trim them to the token budget.
The database file is read once first so it sits in the OS page cache, as a running bot's
does (the file is 200 MB); ``--cold`` skips that and measures disk reads too. The process
holds the bot's whole import graph, frozen as ``voicebot`` freezes it after start-up
(``--unfrozen`` leaves it in the collector's sight, as before that).
Goal (issue: benchmarks): p99 <= 2 ms.

    .venv/bin/python bench/bench_context.py [--messages 1000000] [--chats 10000] [--samples 2000] [--cold] [--unfrozen]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import RESULTS, print_table, write_result  # noqa: E402
from bot.context import build_messages  # noqa: E402
from bot.pipeline import HISTORY_ROWS  # noqa: E402
from bot.runtime import freeze_startup_heap  # noqa: E402
from storage.store import HistoryStore  # noqa: E402


async def build(path: Path, messages: int, chats: int) -> None:
    store = HistoryStore.from_url(f"sqlite:///{path}")
    await store.migrate()
    await store.aclose()
    rng = random.Random(7)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO chats (id, platform, chat_key, extra) VALUES (?, 'telegram', ?, '{}')",
            ((i, str(i)) for i in range(1, chats + 1)),
        )
        words = "the quick brown fox jumps over a lazy dog while voice bots answer questions".split()

        def rows():
            for n in range(messages):
                text = " ".join(rng.choices(words, k=rng.randint(5, 40)))
                yield (rng.randint(1, chats), "user" if n % 2 == 0 else "assistant", text, len(text) // 4 + 4)

        db.executemany(
            "INSERT INTO messages (chat_id, role, content, from_voice, tokens) VALUES (?, ?, ?, 0, ?)", rows()
        )


async def measure(path: Path, chats: int, samples: int) -> list[float]:
    store = HistoryStore.from_url(f"sqlite:///{path}")
    rng = random.Random(11)
    timings = []
    for _ in range(50):  # warm the connection pool and page cache
        await store.recent_messages(rng.randint(1, chats), HISTORY_ROWS)
    for _ in range(samples):
        chat = rng.randint(1, chats)
        start = time.perf_counter()
        history = await store.recent_messages(chat, HISTORY_ROWS)
        build_messages("system prompt", history, "new question", budget=6000)
        timings.append((time.perf_counter() - start) * 1000)
    await store.aclose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--cold", action="store_true", help="do not read the file into the page cache first")
    parser.add_argument("--unfrozen", action="store_true", help="without the start-up gc.freeze() the bot does")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"context-{args.messages}-{args.chats}.db"
    if not path.exists():
        started = time.perf_counter()
        asyncio.run(build(path, args.messages, args.chats))
        print(f"built {path.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if not args.cold:
        with path.open("rb") as db:
            while db.read(1 << 24):
                pass
    # The heap of a running bot: its whole import graph, frozen after start-up as the CLI does.
    importlib.import_module("adapters.telegram_bot")
    importlib.import_module("langchain_groq")
    if not args.unfrozen:
        freeze_startup_heap()
    load_start = [round(x, 2) for x in os.getloadavg()]
    timings = asyncio.run(measure(path, args.chats, args.samples))
    quantiles = statistics.quantiles(timings, n=100)
    result = {
        "messages": args.messages, "chats": args.chats, "samples": args.samples, "page_cache": "cold" if args.cold else "warm",
        "p50_ms": round(statistics.median(timings), 3), "p99_ms": round(quantiles[98], 3),
        "max_ms": round(max(timings), 3), "heap_frozen": not args.unfrozen,
        "goal_p99_ms": 2.0, "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
    }
    write_result("context", result)
    print_table("context load (read newest rows + trim)", [
        ("database", f"{args.messages:,} messages / {args.chats:,} chats"),
        ("p50", f"{result['p50_ms']:.3f} ms"),
        ("p99", f"{result['p99_ms']:.3f} ms (goal <= 2 ms)"),
        ("max", f"{result['max_ms']:.3f} ms" + ("" if result["heap_frozen"] else " (start-up heap not frozen)")),
    ])


if __name__ == "__main__":
    main()
