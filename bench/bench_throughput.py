"""Sustained text turns per second of one ``voicebot telegram`` process, providers answering at once.

``--chats`` private chats each send a text message, wait for the complete answer, and send the
next one (a closed loop, so the bot is never idle and never flooded beyond ``--chats`` turns in
flight). The providers answer with zero latency. After ``--warmup`` seconds the turns completed in
``--seconds`` are counted. A turn is complete when its last message arrived: the voice note with
the default settings (text streamed into one message, then a voice note), the one text message
with ``--text-only`` (``VOICE_REPLIES=false STREAM_TEXT=false``).

Besides turns/s the bot's CPU time per turn is read from /proc: on this 2-core machine the fakes
need CPU too, so ``1000 / cpu_ms_per_turn`` (what one core could do for the bot alone) is
printed beside the measured rate.

Goal (issue: benchmarks): >= 300 turns/s. Telegram's own pacing (30 messages/s per bot) is off
(``TELEGRAM_MAX_MESSAGES_PER_SECOND=0``): it would cap any bot at ~15 two-message answers a second.

    .venv/bin/python bench/bench_throughput.py [--chats 100] [--seconds 20] [--warmup 5] [--text-only]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Latencies, LoadWatch, machine, process_cpu_seconds, running_bot  # noqa: E402
from bench.report import print_table, write_result  # noqa: E402

GOAL_TURNS_PER_SECOND = 300.0


async def run(args: argparse.Namespace) -> dict:
    env = {"TELEGRAM_MAX_MESSAGES_PER_SECOND": "0", "RATE_LIMIT_MESSAGES": "0"}
    if args.text_only:  # one plain message per answer: its arrival is the end of the turn
        env.update(VOICE_REPLIES="false", STREAM_TEXT="false")
    final_kind = "text" if args.text_only else "voice"
    async with running_bot(Latencies.zero(), extra_env=env, profile=args.profile) as session:
        fake = session.telegram
        completed: list[float] = []
        stop = asyncio.Event()

        async def chat_loop(user, chat) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                before = len(fake.arrivals[chat.id])
                message_id, _ = session.send_text(chat, user, f"question number {n}, what is the capital of France?")

                def done() -> bool:
                    return any(a.kind == final_kind and a.reply_to == message_id
                               for a in fake.arrivals[chat.id][before:])

                try:
                    await fake.until(done, timeout=60)
                except TimeoutError:
                    return
                completed.append(time.perf_counter())

        tasks = [asyncio.create_task(chat_loop(u, c)) for u, c in session.users(args.chats, prefix="Busy")]
        await asyncio.sleep(args.warmup)
        watch = LoadWatch()
        started, cpu_start, done_start = time.perf_counter(), session.bot.cpu_seconds(), len(completed)
        fakes_cpu_start = process_cpu_seconds(session.providers.pid) + time.process_time()
        calls_start = fake.calls.copy()
        session.bot.start_profile()
        await asyncio.sleep(args.seconds)
        session.bot.stop_profile()
        elapsed = time.perf_counter() - started
        turns = len(completed) - done_start
        calls = fake.calls - calls_start
        cpu = session.bot.cpu_seconds() - cpu_start
        fakes_cpu = process_cpu_seconds(session.providers.pid) + time.process_time() - fakes_cpu_start
        loads = watch.result()
        stop.set()
        await asyncio.wait(tasks, timeout=30)
    rate = turns / elapsed
    cpu_ms = cpu * 1000 / turns if turns else float("nan")
    return {
        "chats": args.chats, "seconds": round(elapsed, 2), "warmup_s": args.warmup, "text_only": args.text_only,
        "host": machine(), **loads,
        "turns": turns, "turns_per_second": round(rate, 1), "goal_turns_per_second": GOAL_TURNS_PER_SECOND,
        "bot_cpu_ms_per_turn": round(cpu_ms, 2), "bot_cpu_share": round(cpu / elapsed, 2),
        "one_core_capacity_turns_per_second": round(1000 / cpu_ms, 1) if turns else 0.0,
        "fakes_cpu_ms_per_turn": round(fakes_cpu * 1000 / turns, 2) if turns else float("nan"),
        "bot_api_calls_per_turn": {method: round(n / turns, 2) for method, n in sorted(calls.items())} if turns else {},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--text-only", action="store_true",
                        help="VOICE_REPLIES=false STREAM_TEXT=false: text in, one text message out")
    parser.add_argument("--profile", help="py-spy output while measuring (.svg flame graph, .txt collapsed)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    write_result("throughput-text" if args.text_only else "throughput", result)
    what = "text in, text out" if args.text_only else "text in, text + voice note out"
    print_table(f"sustained turns, zero-latency providers ({what}, {args.chats} chats, load {result['load_start']})", [
        ("turns per second", f"{result['turns_per_second']:.1f} (goal >= {GOAL_TURNS_PER_SECOND:g})"),
        ("bot CPU per turn", f"{result['bot_cpu_ms_per_turn']:.2f} ms -> {result['one_core_capacity_turns_per_second']:.0f} turns/s on one core"),
        ("bot CPU share", f"{result['bot_cpu_share']:.2f} of a core"),
        ("fakes CPU per turn", f"{result['fakes_cpu_ms_per_turn']:.2f} ms"),
        ("Bot API calls per turn", "  ".join(f"{m} {n:g}" for m, n in result["bot_api_calls_per_turn"].items())),
    ])
    return result


if __name__ == "__main__":
    main()
