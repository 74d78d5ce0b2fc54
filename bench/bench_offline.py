"""One offline voice turn, stage by stage: speech-to-text -> LLM -> text-to-speech.

Loads the three offline engines (printing each load time), makes four 4-second English voice
notes (Piper speaks a question, padded with silence to 4 s, encoded to OGG/Opus as Telegram
sends them), then answers them round-robin ``--runs`` times the way a turn does: transcribe
the note, stream the LLM's reply (system prompt + transcript), speak the reply as an OGG/Opus
voice note. Prints p50/p90 per stage and in total (wall time, and the CPU time the turn used
on all threads), and the process's peak RSS.

Other processes on the machine inflate wall times a lot (two engines threads on two cores), so
each turn also records how many cores *other* processes used meanwhile (from /proc/stat), and
the figures are given again for the quiet turns alone (other load < QUIET_CORES): that is the
number the goal is about. On a busy shared machine, raise ``--runs`` to collect quiet turns.
Goal (issue: offline engines): total p50 <= 1.0 s of processing on 2 cores, peak RSS <= 800 MB.

    .venv/bin/python bench/bench_offline.py [--runs 20] [--threads 2] [--max-tokens N] [--stt-model tiny.en]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402

from bench.report import print_table, write_result  # noqa: E402
from bot.audio import encode_ogg_opus  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.messages import Audio  # noqa: E402
from bot.providers.local_llm import LocalLlamaChatModel, build_local_chat_model  # noqa: E402
from bot.providers.local_models import CPU_GATE  # noqa: E402
from bot.providers.local_stt import LocalWhisperSTT  # noqa: E402
from bot.providers.local_tts import PiperTTS  # noqa: E402

NOTE_SECONDS = 4.0
QUESTIONS = (
    "Hi, I have a quick question. What is the capital of France?",
    "Hello there. Could you tell me what color the sky is?",
    "Good morning. I would like to know, what is two plus two?",
    "Hey, can you tell me who wrote Romeo and Juliet?",
)
GOAL_TOTAL_SECONDS = 1.0
GOAL_RSS_MB = 800.0
QUIET_CORES = 0.2  # a turn counts as measured on a quiet machine below this much other load
MIN_QUIET_TURNS = 5


def cpu_seconds() -> float:
    """CPU time this process used so far, all threads: unlike wall time, other load barely moves it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float | None:
    """CPU time all processes used so far (user..steal, from /proc/stat), or None off Linux."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def voice_note(tts: PiperTTS, text: str) -> bytes:
    """``text`` spoken by Piper, padded with silence to NOTE_SECONDS, as OGG/Opus."""
    voice = tts._voice()  # noqa: SLF001 - the bench wants raw PCM to pad it
    rate = voice.config.sample_rate
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
    target = int(NOTE_SECONDS * rate) * 2
    if len(pcm) > target:
        print(f"  note: {text!r} is {len(pcm) / 2 / rate:.2f}s long, over {NOTE_SECONDS}s")
    pcm = pcm + bytes(max(0, target - len(pcm)))
    return encode_ogg_opus(pcm, rate)


async def timed(label: str, coro: object) -> float:
    start = time.perf_counter()
    await coro  # type: ignore[misc]
    elapsed = time.perf_counter() - start
    print(f"  load {label:<5} {elapsed:6.2f} s   (peak RSS so far {peak_rss_mb():.0f} MB)")
    return elapsed


async def reply_text(llm: LocalLlamaChatModel, system: str, question: str) -> tuple[str, float, int]:
    """Stream the LLM's answer; return it, the time to its first token and its token count."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    async for chunk in llm.astream([SystemMessage(system), HumanMessage(question)]):
        if chunk.content and first is None:
            first = time.perf_counter() - start
        parts.append(str(chunk.content))
        if chunk.usage_metadata:
            tokens = chunk.usage_metadata["output_tokens"]
    return "".join(parts).strip(), first or 0.0, tokens


def summarize(stages: dict[str, list[float]], turns: Iterable[int]) -> dict[str, tuple[float, float]]:
    """(p50, p90) of each stage over the given turn indexes."""
    picked = list(turns)
    return {name: (statistics.median(values[i] for i in picked), pct([values[i] for i in picked], 0.9))
            for name, values in stages.items()}


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="LOCAL_THREADS (default: settings)")
    parser.add_argument("--max-tokens", type=int, default=None, help="LLM_MAX_TOKENS (default: settings)")
    parser.add_argument("--stt-model", default=None, help="LOCAL_STT_MODEL: tiny.en or base")
    parser.add_argument("--quiet", action="store_true", help="do not print each turn")
    args = parser.parse_args()

    overrides: dict[str, object] = {}
    if args.threads is not None:
        overrides["local_threads"] = args.threads
    if args.max_tokens is not None:
        overrides["llm_max_tokens"] = args.max_tokens
    if args.stt_model is not None:
        overrides["local_stt_model"] = args.stt_model
    settings = Settings(_env_file=None, **overrides)  # type: ignore[arg-type,call-arg]
    print(f"offline bench: stt={settings.local_stt_model} threads={settings.local_threads} "
          f"llm_max_tokens={settings.llm_max_tokens} runs={args.runs}")

    stt = LocalWhisperSTT(settings)
    llm = build_local_chat_model(settings)
    assert isinstance(llm, LocalLlamaChatModel)
    tts = PiperTTS(settings)
    loads = {
        "stt": await timed("stt", stt.warm_up()),
        "llm": await timed("llm", llm.warm_up()),
        "tts": await timed("tts", tts.warm_up()),
    }
    notes = [await CPU_GATE.run(voice_note, tts, question) for question in QUESTIONS]
    # One untimed turn per note: first-call allocations are not what a running bot pays.
    for note in notes:
        transcript = await stt.transcribe(Audio(data=note))
        await reply_text(llm, settings.resolved_system_prompt, transcript.text)

    stages: dict[str, list[float]] = {"stt": [], "llm": [], "llm_first_token": [], "tts": [], "total": [],
                                      "total_cpu": []}
    other_load: list[float | None] = []
    reply_tokens: list[int] = []
    reply_seconds: list[float] = []
    for run in range(args.runs):
        note = notes[run % len(notes)]
        busy_start = machine_busy_seconds()
        cpu_start = cpu_seconds()
        start = time.perf_counter()
        transcript = await stt.transcribe(Audio(data=note))
        after_stt = time.perf_counter()
        answer, first_token, tokens = await reply_text(llm, settings.resolved_system_prompt, transcript.text)
        after_llm = time.perf_counter()
        spoken = await tts.synthesize(answer)
        end = time.perf_counter()
        turn_cpu = cpu_seconds() - cpu_start
        busy_end = machine_busy_seconds()
        stages["total_cpu"].append(turn_cpu)
        other_load.append(None if busy_start is None or busy_end is None
                          else max(0.0, (busy_end - busy_start - turn_cpu) / (end - start)))
        stages["stt"].append(after_stt - start)
        stages["llm"].append(after_llm - after_stt)
        stages["llm_first_token"].append(first_token)
        stages["tts"].append(end - after_llm)
        stages["total"].append(end - start)
        reply_tokens.append(tokens)
        reply_seconds.append(spoken.duration)
        if not args.quiet:
            load = "?" if other_load[-1] is None else f"{other_load[-1]:.1f}"
            print(f"  run {run + 1:2d}: {end - start:5.2f} s (other load {load} cores)  heard {transcript.text!r} -> "
                  f"{answer!r} ({tokens} tokens, {spoken.duration:.1f} s of speech)")

    rss = peak_rss_mb()
    quiet = [i for i, load in enumerate(other_load) if load is not None and load < QUIET_CORES]
    rows = [(f"load {name}", f"{seconds:.2f} s") for name, seconds in loads.items()]
    rows += [("other load", f"p50 {statistics.median(x for x in other_load if x is not None):.1f} cores"
              if any(x is not None for x in other_load) else "unknown")]
    figures = summarize(stages, range(args.runs))
    rows += [(name, f"p50 {p50 * 1000:6.0f} ms   p90 {p90 * 1000:6.0f} ms") for name, (p50, p90) in figures.items()]
    quiet_figures = summarize(stages, quiet) if len(quiet) >= MIN_QUIET_TURNS else None
    if quiet_figures is not None:
        rows += [(f"quiet {name}", f"p50 {p50 * 1000:6.0f} ms   p90 {p90 * 1000:6.0f} ms")
                 for name, (p50, p90) in quiet_figures.items() if name in ("stt", "llm", "tts", "total")]
    rows += [
        ("quiet turns", f"{len(quiet)} of {args.runs} (other load < {QUIET_CORES} cores)"),
        ("reply tokens", f"p50 {statistics.median(reply_tokens):.0f}"),
        ("reply speech", f"p50 {statistics.median(reply_seconds):.1f} s"),
        ("peak RSS", f"{rss:.0f} MB"),
    ]
    judged = quiet_figures or figures
    basis = "quiet turns" if quiet_figures else "all turns (too few quiet ones: machine busy)"
    rows += [("goal", f"total p50 <= {GOAL_TOTAL_SECONDS:.1f} s: {verdict(judged['total'][0] <= GOAL_TOTAL_SECONDS)} "
                      f"({basis}); peak RSS <= {GOAL_RSS_MB:.0f} MB: {verdict(rss <= GOAL_RSS_MB)}")]
    print_table(f"Offline turn, {NOTE_SECONDS:.0f}-second voice note, {args.runs} runs", rows)
    path = write_result("offline", {
        "runs": args.runs,
        "quiet_runs": len(quiet),
        "stt_model": settings.local_stt_model,
        "threads": settings.local_threads,
        "llm_max_tokens": settings.llm_max_tokens,
        "load_seconds": loads,
        "p50_seconds": {name: p50 for name, (p50, _) in figures.items()},
        "p90_seconds": {name: p90 for name, (_, p90) in figures.items()},
        "quiet_p50_seconds": {name: p50 for name, (p50, _) in quiet_figures.items()} if quiet_figures else None,
        "reply_tokens_p50": statistics.median(reply_tokens),
        "peak_rss_mb": rss,
    })
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    asyncio.run(main())
