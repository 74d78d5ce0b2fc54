"""Before/after: one bench against another checkout's bot and this one's, in alternating rounds.

On a shared machine the load drifts by the minute, so two runs an hour apart compare badly.
Here the two bots take turns (base, current, base, current...) with the same harness and
fakes, and the medians of the rounds are printed side by side.

    git archive <commit> | tar -x -C /tmp/base          # the "before" tree
    .venv/bin/python bench/compare.py --base /tmp/base --bench turn --rounds 3 -- --turns 60

The base bot runs from ``--base`` (``PYTHONPATH``), with this checkout's bench and fakes.
Arguments after ``--`` go to the bench script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: bench -> (script, result file, {label: path into its JSON})
METRICS: dict[str, tuple[str, str, dict[str, tuple[str, ...]]]] = {
    "turn": ("bench_turn.py", "turn", {
        "overhead p50 ms": ("overhead", "p50_ms"), "overhead p99 ms": ("overhead", "p99_ms"),
        "first text p50 ms": ("first_text", "p50_ms"), "bot CPU ms/turn": ("bot_cpu_ms_per_turn",),
        "fakes' slack ms": ("fakes_excess_p50_ms", "voice_turn"),
    }),
    "throughput": ("bench_throughput.py", "throughput", {
        "turns/s": ("turns_per_second",), "bot CPU ms/turn": ("bot_cpu_ms_per_turn",),
    }),
    "burst": ("bench_burst.py", "burst", {
        "wall s": ("burst", "wall_seconds"), "single turn s": ("single_turn_seconds",), "ratio": ("ratio",),
        "bot CPU s": ("bot_cpu_seconds_during_burst",),
    }),
    "memory": ("bench_memory.py", "memory", {"idle MB": ("idle_rss_mb",), "MB per 1000 chats": ("per_1000_chats_mb",)}),
}


def dig(data: dict, path: tuple[str, ...]) -> float:
    for key in path:
        data = data[key]
    return float(data)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="folder with the 'before' checkout")
    parser.add_argument("--bench", choices=list(METRICS), default="turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("args", nargs="*", help="arguments for the bench script (after --)")
    args = parser.parse_args()
    script, result_name, metrics = METRICS[args.bench]
    sides = {"base": args.base, "current": ""}
    values: dict[str, dict[str, list[float]]] = {side: {m: [] for m in metrics} for side in sides}
    loads = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for side, pythonpath in sides.items():
                folder = Path(scratch) / f"{side}-{round_}"
                env = {**os.environ, "BENCH_RESULTS": str(folder), "BENCH_BOT_PYTHONPATH": pythonpath}
                print(f"round {round_ + 1}/{args.rounds}: {side} (load {os.getloadavg()[0]:.2f})", flush=True)
                subprocess.run([sys.executable, str(ROOT / "bench" / script), *args.args], cwd=ROOT, env=env,
                               check=True, stdout=subprocess.DEVNULL)
                # e.g. throughput.json, or throughput-text.json with --text-only
                [path] = folder.glob(f"{result_name}*.json")
                result = json.loads(path.read_text())
                loads.append(result.get("load_start", [0.0])[0])
                for label, path in metrics.items():
                    values[side][label].append(dig(result, path))
    print(f"\n{args.bench}: median of {args.rounds} alternating rounds "
          f"(load {min(loads):.1f}-{max(loads):.1f}); base = {args.base}")
    print(f"  {'':<20} {'base':>10} {'current':>10}")
    for label in metrics:
        base, current = (statistics.median(values[side][label]) for side in sides)
        print(f"  {label:<20} {base:>10.2f} {current:>10.2f}")


if __name__ == "__main__":
    main()
