"""Many chats at once: every chat sends a voice note in the same instant.

First the single-turn time is measured (median of a few voice-note turns, one at a time), then
``--chats`` private chats each push one voice note at once (all available to the same
``getUpdates``), with the default provider latencies. Figures:

    ratio = (all pushed -> last voice note received) / single-turn time
    lost  = chats without exactly one text answer and one voice note answering their note
    order = every chat got its text before its voice note, both replying to its note; and in a
          second, smaller wave each of ``--order-chats`` chats sends ``--order-notes`` notes back
          to back, whose answers must come in the order the notes were sent

Goal (issue: benchmarks): ratio <= 1.3 for 500 chats, zero lost, per-chat order kept.

Telegram allows a bot about 30 messages a second overall, and the adapter paces itself to
that (``TELEGRAM_MAX_MESSAGES_PER_SECOND``, default 30); 500 answers of two messages each
cannot reach a user faster than ~33 s whatever the bot does. This bench measures the bot,
so it runs with the pacing off (``0``) unless ``--telegram-pacing`` is given.

    .venv/bin/python bench/bench_burst.py [--chats 500] [--order-chats 50] [--order-notes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Latencies, LoadWatch, latencies_dict, machine, running_bot  # noqa: E402
from bench.report import print_table, write_result  # noqa: E402

GOAL_RATIO = 1.3


async def single_turns(session, count: int) -> list[float]:
    fake = session.telegram
    times = []
    for user, chat in session.users(count, prefix="Solo"):
        message_id, pushed = session.send_note(chat, user)
        await fake.until(lambda: any(a.kind == "voice" and a.reply_to == message_id for a in fake.arrivals[chat.id]), 30)
        voice = next(a for a in fake.arrivals[chat.id] if a.kind == "voice")
        times.append(voice.at - pushed)
        await asyncio.sleep(0.2)
    return times


def check_chat(arrivals, note_ids: list[int]) -> tuple[bool, bool]:
    """(answered completely once per note, in order) for one chat's arrivals."""
    texts = [a for a in arrivals if a.kind == "text"]
    voices = [a for a in arrivals if a.kind == "voice"]
    complete = [a.reply_to for a in texts] == note_ids and [a.reply_to for a in voices] == note_ids
    if not complete:
        return False, False
    ordered = all(t.at <= v.at for t, v in zip(texts, voices, strict=True))
    ordered = ordered and all(voices[i].at <= texts[i + 1].at for i in range(len(note_ids) - 1))
    return True, ordered


async def wave(session, chats: int, notes: int, prefix: str, timeout: float) -> dict:
    fake = session.telegram
    people = list(session.users(chats, prefix=prefix))
    sent: dict[int, list[int]] = {}
    first_push = time.perf_counter()
    for _ in range(notes):
        for user, chat in people:
            message_id, _ = session.send_note(chat, user)
            sent.setdefault(chat.id, []).append(message_id)
    pushed = time.perf_counter()

    def all_answered() -> bool:
        return all(sum(a.kind == "voice" for a in fake.arrivals[chat.id]) >= notes for _, chat in people)

    timed_out = False
    try:
        await fake.until(all_answered, timeout)
    except TimeoutError:
        timed_out = True
    await asyncio.sleep(0.5)  # anything sent twice would show now
    last_voice = max((a.at for _, chat in people for a in fake.arrivals[chat.id] if a.kind == "voice"), default=pushed)
    lost = out_of_order = 0
    for _, chat in people:
        complete, ordered = check_chat(fake.arrivals[chat.id], sent[chat.id])
        lost += not complete
        out_of_order += complete and not ordered
    return {
        "chats": chats, "notes_per_chat": notes, "push_seconds": round(pushed - first_push, 4),
        "wall_seconds": round(last_voice - first_push, 3), "lost_or_incomplete": lost,
        "out_of_order": out_of_order, "timed_out": timed_out,
    }


async def run(args: argparse.Namespace) -> dict:
    latencies = Latencies()
    pacing = {} if args.telegram_pacing else {"TELEGRAM_MAX_MESSAGES_PER_SECOND": "0"}
    async with running_bot(latencies, extra_env=pacing, profile=args.profile) as session:
        await single_turns(session, 2)  # warm-up: imports, connections
        singles = await single_turns(session, args.single)
        single = statistics.median(singles)
        watch = LoadWatch()
        cpu_start = session.bot.cpu_seconds()
        calls_before = Counter(session.telegram.calls)
        session.bot.start_profile()
        burst = await wave(session, args.chats, 1, "Burst", args.timeout)
        session.bot.stop_profile()
        cpu = session.bot.cpu_seconds() - cpu_start
        calls = session.telegram.calls - calls_before
        rss = session.bot.rss_mb()
        loads = watch.result()
        await asyncio.sleep(1.0)
        order = await wave(session, args.order_chats, args.order_notes, "Order", args.timeout) if args.order_chats else None
    ratio = burst["wall_seconds"] / single
    return {
        "latencies_s": latencies_dict(latencies), "host": machine(), **loads,
        "telegram_pacing": bool(args.telegram_pacing),
        "single_turn_seconds": round(single, 4), "single_turns": [round(s, 4) for s in singles],
        "burst": burst, "ratio": round(ratio, 3), "goal_ratio": GOAL_RATIO,
        "bot_cpu_seconds_during_burst": round(cpu, 2),
        "bot_api_calls_per_turn": {method: round(n / args.chats, 2) for method, n in calls.most_common()},
        "bot_rss_mb_after_burst": round(rss, 1),
        "order": order,
        "zero_lost": burst["lost_or_incomplete"] == 0 and (order is None or order["lost_or_incomplete"] == 0),
        "order_kept": burst["out_of_order"] == 0 and (order is None or order["out_of_order"] == 0),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=500)
    parser.add_argument("--single", type=int, default=5, help="single turns measured before the burst")
    parser.add_argument("--order-chats", type=int, default=50)
    parser.add_argument("--order-notes", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--telegram-pacing", action="store_true",
                        help="keep the adapter's 30 messages/s pacing (what real Telegram needs)")
    parser.add_argument("--profile", help="py-spy output during the burst (.svg flame graph, .txt collapsed)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    write_result("burst", result)
    b, o = result["burst"], result["order"]
    print_table(f"{args.chats} chats send a voice note at once (load {result['load_start']})", [
        ("single turn", f"{result['single_turn_seconds'] * 1000:.0f} ms"),
        ("burst wall time", f"{b['wall_seconds']:.2f} s"),
        ("ratio", f"{result['ratio']:.2f} (goal <= {GOAL_RATIO})"),
        ("lost", f"{b['lost_or_incomplete']}" + (f" + {o['lost_or_incomplete']} in the order wave" if o else "")),
        ("order kept", f"{result['order_kept']}" + (f" ({o['chats']} chats x {o['notes_per_chat']} notes too)" if o else "")),
        ("bot CPU during burst", f"{result['bot_cpu_seconds_during_burst']:.1f} s ({result['bot_cpu_seconds_during_burst'] * 1000 / args.chats:.0f} ms per turn)"),
        ("Bot API calls per turn", "  ".join(f"{m} {n:g}" for m, n in result["bot_api_calls_per_turn"].items())),
    ])
    return result


if __name__ == "__main__":
    main()
