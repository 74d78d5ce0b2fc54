"""``make bench``: every benchmark, one after the other, then one table of figures and goals.

Each bench runs in its own interpreter (``python bench/bench_<name>.py``) and leaves its JSON in
bench/results/ (or ``BENCH_RESULTS``); this script prints their own output as it comes, then the
table, and writes the table to ``summary.json`` beside them. The offline turn runs only when the
offline engines are installed. The load average is printed with every figure: the machine may
be busy with other work, and every figure but the memory ones moves with it.

    .venv/bin/python bench/run_all.py [--quick] [--only turn,burst] [--skip offline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import yardstick_ms  # noqa: E402
from bench.report import RESULTS  # noqa: E402

#: name -> (script, full arguments, --quick arguments, result files it writes)
BENCHES: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "turn": ("bench_turn.py", [], ["--turns", "3", "--warmup", "1", "--chats", "2"], ["turn"]),
    "burst": ("bench_burst.py", [], ["--chats", "4", "--single", "1", "--order-chats", "2", "--order-notes", "2"],
              ["burst"]),
    "throughput": ("bench_throughput.py", [], ["--chats", "3", "--seconds", "1", "--warmup", "0.5"], ["throughput"]),
    "throughput-text": ("bench_throughput.py", ["--text-only"],
                        ["--text-only", "--chats", "3", "--seconds", "1", "--warmup", "0.5"], ["throughput-text"]),
    "memory": ("bench_memory.py", [], ["--chats", "6", "--wave", "3", "--warmup", "2"], ["memory"]),
    "context": ("bench_context.py", [], ["--messages", "2000", "--chats", "20", "--samples", "50"], ["context"]),
    "units": ("bench_units.py", [], ["--rounds", "10"], ["units"]),
    "offline": ("bench_offline.py", ["--quiet"], ["--quiet", "--runs", "1"], ["offline"]),
}


def offline_available() -> bool:
    """The offline bench needs the offline engines (installed by `make run`, not by `make test`)."""
    if not (ROOT / "bench" / "bench_offline.py").exists():
        return False
    try:
        from bot.providers import local_models
    except ImportError:
        return False
    return all(local_models.available(kind) for kind in ("stt", "llm", "tts"))


def run_bench(name: str, quick: bool) -> tuple[bool, float]:
    script, full, short, _ = BENCHES[name]
    command = [sys.executable, str(ROOT / "bench" / script), *(short if quick else full)]
    print(f"\n=== {name}: {' '.join(command[1:])}  (load {load()})", flush=True)
    started = time.perf_counter()
    code = subprocess.call(command, cwd=ROOT)
    return code == 0, time.perf_counter() - started


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def read(name: str, since: float) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists() or path.stat().st_mtime < since:
        return None
    return json.loads(path.read_text())


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def rows_for(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(figure, measured, goal, verdict, load at start) for every result there is."""
    rows = []

    def add(figure: str, measured: str, goal: str, met: bool | None, result: dict[str, Any]) -> None:
        start = result.get("load_start")
        rows.append((figure, measured, goal, verdict(met), f"{start[0]:.2f}" if start else "-"))

    if r := results.get("turn"):
        o, f = r["overhead"], r["first_text"]
        add("voice turn overhead p50 / p99", f"{o['p50_ms']:.1f} / {o['p99_ms']:.1f} ms", "<= 15 / 60 ms",
            o["p50_ms"] <= r["goal_overhead_p50_ms"] and o["p99_ms"] <= r["goal_overhead_p99_ms"], r)
        add("  of which the fakes' own slack", f"{r['fakes_excess_p50_ms']['voice_turn']:.1f} ms", "", None, r)
        add("time to first text p50 / p99", f"{f['p50_ms']:.0f} / {f['p99_ms']:.0f} ms",
            f"<= {r['goal_first_text_ms']:.0f} ms", f["p50_ms"] <= r["goal_first_text_ms"], r)
    if r := results.get("burst"):
        b = r["burst"]
        add(f"{b['chats']} chats at once: wall / single turn",
            f"{b['wall_seconds']:.2f} s / {r['single_turn_seconds']:.2f} s = {r['ratio']:.2f}",
            f"<= {r['goal_ratio']}", r["ratio"] <= r["goal_ratio"], r)
        add("  lost / order kept", f"{b['lost_or_incomplete']} / {'yes' if r['order_kept'] else 'NO'}",
            "0 / yes", r["zero_lost"] and r["order_kept"], r)
    for key, label in (("throughput", "text turns/s (text + voice out)"), ("throughput-text", "text turns/s (text out)")):
        if r := results.get(key):
            add(label, f"{r['turns_per_second']:.1f} (bot CPU {r['bot_cpu_ms_per_turn']:.1f} ms/turn "
                       f"-> {r['one_core_capacity_turns_per_second']:.0f}/s on a core)",
                f">= {r['goal_turns_per_second']:g}", r["turns_per_second"] >= r["goal_turns_per_second"], r)
    if r := results.get("memory"):
        add("idle RSS", f"{r['idle_rss_mb']:.0f} MB", f"<= {r['goal_idle_mb']:g} MB", r["idle_rss_mb"] <= r["goal_idle_mb"], r)
        add("RSS per 1000 active chats", f"{r['per_1000_chats_mb']:.1f} MB", f"<= {r['goal_per_1000_chats_mb']:g} MB",
            r["per_1000_chats_mb"] <= r["goal_per_1000_chats_mb"], r)
    if r := results.get("context"):
        add(f"context load p99 ({r['messages']:,} msgs)", f"{r['p99_ms']:.2f} ms (p50 {r['p50_ms']:.2f})",
            f"<= {r['goal_p99_ms']:g} ms", r["p99_ms"] <= r["goal_p99_ms"], r)
    if r := results.get("units"):
        for client, floor in r["voice_turn_floor_cpu_ms"].items():
            add(f"CPU floor of a voice turn, Bot API {client}",
                f"{floor:.1f} ms (building blocks only; <= {1000 / floor:.0f} turns/s per core)", "", None, r)
        if "sdk_over_plain_http_cpu_ms" in r:
            prompt = r["library_cpu_ms"]["LangChain prompt, 200-message history"]["library"]
            add("  of which the provider SDKs over plain HTTP / LangChain's prompt",
                f"{r['sdk_over_plain_http_cpu_ms']:.1f} ms / {prompt:.1f} ms", "", None, r)
    if r := results.get("offline"):
        p50 = r["p50_seconds"]
        stages = " ".join(f"{k}={p50[k]:.2f}" for k in ("stt", "llm", "tts") if k in p50)
        add("offline voice turn p50", f"{p50['total']:.2f} s ({stages})", "<= 1.0 s", p50["total"] <= 1.0, r)
    return rows


def print_summary(rows: list[tuple[str, str, str, str, str]], failed: list[str], command: str) -> None:
    header = ("figure", "measured", "goal", "verdict", "load")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(5)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(f"\n=== voicebot benchmarks ({command}; {os.cpu_count()} CPUs; load = 1-min average at the start)")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    for name in failed:
        print(f"{name}: FAILED (see its output above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations each (the smoke test)")
    parser.add_argument("--only", help="comma-separated bench names: " + ",".join(BENCHES))
    parser.add_argument("--skip", default="", help="comma-separated bench names to leave out")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names + [s for s in args.skip.split(",") if s] if n not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {unknown}; known: {', '.join(BENCHES)}")
    names = [n for n in names if n not in args.skip.split(",")]
    if "offline" in names and not offline_available():
        print("offline: skipped (the offline engines are not installed; `make run` installs them)")
        names.remove("offline")
    started = time.time()
    speed_before = yardstick_ms()
    failed = []
    for name in names:
        ok, seconds = run_bench(name, args.quick)
        print(f"=== {name}: {'done' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
        if not ok:
            failed.append(name)
    results = {}
    for name in names:
        for result_name in BENCHES[name][3]:
            if (found := read(result_name, started)) is not None:
                results[result_name] = found
    command = "python bench/run_all.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    rows = rows_for(results)
    print_summary(rows, failed, command)
    speed = {"before": speed_before, "after": yardstick_ms()}
    print(f"machine yardstick: {speed['before']:.1f} ms before, {speed['after']:.1f} ms after "
          "(bench/harness.py yardstick_ms: a fixed pure-Python workload, best of 5; lower is faster)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps({
        "command": command, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
        "yardstick_ms": speed,
        "rows": [dict(zip(("figure", "measured", "goal", "verdict", "load"), row, strict=True)) for row in rows],
        "failed": failed,
    }, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
