"""Overhead of one voice-note turn, and time to first visible text, through the real bot process.

A user sends a voice note; the bot downloads it, transcribes it (Groq fake, 250 ms), streams
the LLM's answer (400 ms: first token at 200 ms), speaks it (ElevenLabs fake, 300 ms) and
sends the text (streamed into one message) and the voice note. Turns run one at a time,
round-robin over ``--chats`` private chats, with a short pause between turns.

    overhead    = (update available -> voice note received) - (STT + LLM + TTS injected)
    first text  = update available -> first text message received (streaming on)

Goals (issue: benchmarks): overhead p50 <= 15 ms, p99 <= 60 ms; first text <= STT + LLM first
token + 50 ms.

    .venv/bin/python bench/bench_turn.py [--turns 300] [--warmup 10] [--chats 10] [--profile out.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from bench.harness import Latencies, LoadWatch, latencies_dict, machine, percentile, running_bot, summary_ms  # noqa: E402
from bench.report import print_table, write_result  # noqa: E402

GOAL_P50_MS, GOAL_P99_MS, GOAL_FIRST_TEXT_MARGIN_MS = 15.0, 60.0, 50.0
_TURN_LINE = re.compile(r"turn platform=telegram chat=(\S+) message=(\S+) outcome=(\S+) total_ms=([\d.]+)(.*)")


def stage_breakdown(log: str, skip: int, latencies: Latencies) -> dict[str, float]:
    """p50 of each pipeline stage from the bot's ``turn ...`` log lines, provider time taken out."""
    injected = {"transcribe": latencies.stt, "think": latencies.llm, "speak": latencies.tts}
    stages: dict[str, list[float]] = {}
    for match in list(_TURN_LINE.finditer(log))[skip:]:
        stages.setdefault("pipeline total", []).append(float(match.group(4)) - latencies.voice_turn * 1000)
        for name, value in re.findall(r"(\w+)=([\d.]+)", match.group(5)):
            stages.setdefault(name, []).append(float(value) - injected.get(name, 0.0) * 1000)
    return {name: round(percentile(values, 50), 2) for name, values in stages.items()}


#: The calls a voice-note turn waits for, one after the other (chat actions and the first
#: streamed message run beside them).
#: The calls a voice turn waits for, one after the other. The streamed message's final edit
#: goes out beside the voice note (adapters/telegram_reply.py), so it is not on this path.
CHAIN = ("getUpdates", "getFile", "file", "stt", "chat", "tts", "sendVoice")


def timeline(events: list[tuple[str, float, float]], windows: list[tuple[float, float]]) -> dict:
    """Where a turn's time goes, from the fakes' side: p50 of when each call started and ended
    (ms after the update was available), and the gaps between one call of :data:`CHAIN`
    ending and the next starting, which is the bot's own time on the critical path."""
    events = sorted(events, key=lambda e: e[1])
    calls: dict[str, list[tuple[float, float]]] = {}
    gaps: dict[str, list[float]] = {}
    for pushed, done in windows:
        seen: dict[str, int] = {}
        mine = [(name, start - pushed, end - pushed) for name, start, end in events
                if pushed <= end <= done + 0.002 and name != "bench"]
        for name, start, end in mine:
            seen[name] = seen.get(name, 0) + 1
            calls.setdefault(f"{name}#{seen[name]}", []).append((start, end))
        chain = []
        for name in CHAIN:
            found = [e for e in mine if e[0] == name]
            if found:
                chain.append(found[0])
        if [c[0] for c in chain] != list(CHAIN):
            continue
        gaps.setdefault("update available -> getUpdates answered", []).append(chain[0][2])
        for before, after in zip(chain, chain[1:]):
            gaps.setdefault(f"{before[0]} -> {after[0]}", []).append(after[1] - before[2])
        gaps.setdefault("sendVoice upload", []).append(chain[-1][2] - chain[-1][1])
    half = len(windows) / 2
    rows = sorted(
        ((name, percentile([s for s, _ in v], 50), percentile([e for _, e in v], 50), len(v))
         for name, v in calls.items() if len(v) >= half),
        key=lambda row: row[1],
    )
    return {
        "calls_p50_ms": {name: [round(s * 1000, 1), round(e * 1000, 1), n] for name, s, e, n in rows},
        "critical_gaps_p50_ms": {name: round(percentile(v, 50) * 1000, 2) for name, v in gaps.items()},
    }


async def run(args: argparse.Namespace) -> dict:
    latencies = Latencies()
    async with running_bot(latencies, profile=args.profile) as session:
        fake = session.telegram
        people = list(session.users(args.chats))
        fakes_excess = await harness.calibrate(session.providers, session.note)
        overheads: list[float] = []
        first_texts: list[float] = []
        windows: list[tuple[float, float]] = []
        watch: LoadWatch | None = None
        cpu_start = 0.0
        for i in range(args.warmup + args.turns):
            if i == args.warmup:
                watch = LoadWatch()
                cpu_start = session.bot.cpu_seconds()
                session.bot.start_profile()
            user, chat = people[i % len(people)]
            before = len(fake.arrivals[chat.id])
            message_id, pushed = session.send_note(chat, user)

            def answered() -> bool:
                return any(a.kind == "voice" and a.reply_to == message_id for a in fake.arrivals[chat.id][before:])

            await fake.until(answered, timeout=30)
            mine = fake.arrivals[chat.id][before:]
            voice = next(a for a in mine if a.kind == "voice")
            text = next(a for a in mine if a.kind == "text")
            if i >= args.warmup:
                overheads.append(voice.at - pushed - latencies.voice_turn)
                first_texts.append(text.at - pushed)
                windows.append((pushed, voice.at))
            await asyncio.sleep(args.pause)
        session.bot.stop_profile()
        assert watch is not None
        cpu = session.bot.cpu_seconds() - cpu_start
        await asyncio.sleep(0.3)
        stages = stage_breakdown(session.bot.log_text(), args.warmup, latencies)
        timing = timeline(harness.EVENTS + await session.providers.events(), windows)
    overhead = summary_ms(overheads)
    first = summary_ms(first_texts)
    goal_first_ms = (latencies.first_text * 1000) + GOAL_FIRST_TEXT_MARGIN_MS
    return {
        "turns": args.turns, "warmup": args.warmup, "chats": args.chats, "pause_s": args.pause,
        "latencies_s": latencies_dict(latencies), "host": machine(), **watch.result(),
        "overhead": overhead, "goal_overhead_p50_ms": GOAL_P50_MS, "goal_overhead_p99_ms": GOAL_P99_MS,
        "first_text": first, "goal_first_text_ms": goal_first_ms,
        "first_text_overhead_p50_ms": round(first["p50_ms"] - latencies.first_text * 1000, 2),
        "bot_cpu_ms_per_turn": round(cpu * 1000 / args.turns, 2),
        "stage_overhead_p50_ms": stages, **timing,
        "fakes_excess_p50_ms": fakes_excess,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between a reply and the next note")
    parser.add_argument("--timeline", action="store_true", help="print when each call of a turn happens")
    parser.add_argument("--profile", help="py-spy output while measuring (.svg flame graph, .txt collapsed)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = asyncio.run(run(args))
    write_result("turn", result)
    o, f = result["overhead"], result["first_text"]
    print_table(f"voice-note turn through `voicebot telegram` ({args.turns} turns, load {result['load_start']})", [
        ("overhead p50 / p99", f"{o['p50_ms']:.1f} / {o['p99_ms']:.1f} ms (goal <= {GOAL_P50_MS:g} / {GOAL_P99_MS:g} ms)"),
        ("end to end p50", f"{o['p50_ms'] + Latencies().voice_turn * 1000:.1f} ms (injected {Latencies().voice_turn * 1000:.0f} ms)"),
        ("first text p50 / p99", f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} ms (goal <= {result['goal_first_text_ms']:.0f} ms)"),
        ("bot CPU per turn", f"{result['bot_cpu_ms_per_turn']:.1f} ms"),
        ("fakes' own excess p50", f"{result['fakes_excess_p50_ms']['voice_turn']:.1f} ms a turn (plain client, included above)"),
        ("stages p50 (ms over injected)", " ".join(f"{k}={v:g}" for k, v in result["stage_overhead_p50_ms"].items())),
        ("critical path gaps p50 (ms)", " | ".join(f"{k}: {v:g}" for k, v in result["critical_gaps_p50_ms"].items())),
        ("took", f"{time.perf_counter() - started:.0f} s"),
    ])
    if args.timeline:
        print("  calls (p50 ms after the update was available: start, end, turns seen)")
        for name, (start, end, n) in result["calls_p50_ms"].items():
            print(f"    {name:<20} {start:8.1f} {end:8.1f}  {n}")
    return result


if __name__ == "__main__":
    main()
