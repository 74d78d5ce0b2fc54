"""Memory of one ``voicebot telegram`` process: idle, and what each active chat adds.

The bot runs with the cloud providers (the Groq and ElevenLabs fakes, zero latency). Its RSS is
read from /proc:

- idle: polling, nothing answered yet (and again after one turn, when the lazily imported parts
  of the turn are loaded);
- per 1000 active chats: after ``--warmup`` chats had a turn, ``--chats`` new chats each send a
  text message (answered with text and a voice note, the default), ``--wave`` at a time; the
  RSS growth divided by thousands of chats.

Goals (issue: benchmarks): idle <= 150 MB, <= 10 MB per 1000 active chats.

    .venv/bin/python bench/bench_memory.py [--chats 2000] [--wave 100] [--warmup 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Latencies, LoadWatch, machine, running_bot  # noqa: E402
from bench.report import print_table, write_result  # noqa: E402

GOAL_IDLE_MB, GOAL_PER_1000_MB = 150.0, 10.0


async def answer_all(session, people) -> None:
    fake = session.telegram
    waits = []
    for user, chat in people:
        message_id, _ = session.send_text(chat, user, "hello, what is the capital of France?")
        waits.append((chat, message_id))

    def done() -> bool:
        return all(any(a.kind == "voice" and a.reply_to == m for a in fake.arrivals[c.id]) for c, m in waits)

    await fake.until(done, timeout=120)


async def run(args: argparse.Namespace) -> dict:
    env = {"TELEGRAM_MAX_MESSAGES_PER_SECOND": "0"}
    async with running_bot(Latencies.zero(), extra_env=env) as session:
        watch = LoadWatch()
        await asyncio.sleep(2.0)
        idle = session.bot.rss_mb()
        people = list(session.users(args.warmup + args.chats, prefix="Mem"))
        await answer_all(session, people[:1])
        await asyncio.sleep(1.0)
        after_one = session.bot.rss_mb()
        for start in range(1, args.warmup, args.wave):
            await answer_all(session, people[start:min(start + args.wave, args.warmup)])
        await asyncio.sleep(1.0)
        before = session.bot.rss_mb()
        for start in range(args.warmup, args.warmup + args.chats, args.wave):
            await answer_all(session, people[start:start + args.wave])
        await asyncio.sleep(1.0)
        after = session.bot.rss_mb()
    per_1000 = (after - before) * 1000 / args.chats
    return {
        "host": machine(), **watch.result(), "chats": args.chats, "wave": args.wave, "warmup_chats": args.warmup,
        "idle_rss_mb": round(idle, 1), "rss_after_first_turn_mb": round(after_one, 1),
        "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
        "per_1000_chats_mb": round(per_1000, 2),
        "goal_idle_mb": GOAL_IDLE_MB, "goal_per_1000_chats_mb": GOAL_PER_1000_MB,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=2000)
    parser.add_argument("--wave", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    write_result("memory", result)
    print_table(f"memory of `voicebot telegram` (load {result['load_start']})", [
        ("idle RSS", f"{result['idle_rss_mb']:.1f} MB (goal <= {GOAL_IDLE_MB:g} MB); "
                     f"{result['rss_after_first_turn_mb']:.1f} MB after the first turn"),
        ("per 1000 active chats", f"{result['per_1000_chats_mb']:.2f} MB (goal <= {GOAL_PER_1000_MB:g} MB; "
                                  f"{result['rss_before_mb']:.0f} -> {result['rss_after_mb']:.0f} MB over {args.chats} chats)"),
    ])
    return result


if __name__ == "__main__":
    main()
