"""Every bench script runs: a few iterations each, no timing asserted (a benchmark is not a test).

The scripts start the real ``voicebot telegram`` against the fakes, so they run side by side
(each has its own fakes on free ports and its own results folder) to keep this quick; then the
``make bench`` table is built from what they wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run_all  # noqa: E402

pytestmark = pytest.mark.timeout(240)

QUICK = [name for name in run_all.BENCHES if name != "offline"]  # offline: its own tests, big models


def test_every_bench_script_runs_a_few_iterations_and_the_table_is_built(tmp_path: Path) -> None:
    runs = {}
    for name in QUICK:
        script, _, quick, _ = run_all.BENCHES[name]
        folder = tmp_path / name
        folder.mkdir()
        env = {**os.environ, "BENCH_RESULTS": str(folder)}
        log = (folder / "output.txt").open("wb")
        runs[name] = (subprocess.Popen([sys.executable, str(ROOT / "bench" / script), *quick], cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT), folder, log)
    results = {}
    try:
        for name, (process, folder, log) in runs.items():
            code = process.wait(timeout=200)
            log.close()
            assert code == 0, f"{name} failed:\n{(folder / 'output.txt').read_text()[-3000:]}"
            for result_name in run_all.BENCHES[name][3]:
                results[result_name] = json.loads((folder / f"{result_name}.json").read_text())
    finally:
        for process, _, _ in runs.values():
            if process.poll() is None:
                process.kill()

    turn = results["turn"]
    assert turn["overhead"]["n"] == 3 and turn["critical_gaps_p50_ms"]
    burst = results["burst"]
    assert burst["zero_lost"] and burst["order_kept"] and burst["order"]["notes_per_chat"] == 2
    assert results["throughput"]["turns"] > 0 and results["throughput-text"]["turns"] > 0
    assert results["memory"]["idle_rss_mb"] > 0
    assert results["context"]["samples"] == 50 and results["context"]["heap_frozen"]
    assert set(results["units"]["voice_turn_floor_cpu_ms"]) == {
        "httpx, PTB objects (PTB default)", "aiohttp, PTB objects", "aiohttp, answers unread (adapter)"}
    assert all(ms > 0 for ms in results["units"]["update_json_cpu_ms"].values())
    libraries = results["units"]["library_cpu_ms"]
    assert all(pair["library"] > 0 for pair in libraries.values())
    assert sum("plain aiohttp" in pair for pair in libraries.values()) == 3

    rows = run_all.rows_for(results)
    figures = [row[0].strip() for row in rows]
    assert "voice turn overhead p50 / p99" in figures and "idle RSS" in figures
    assert all(row[3] in ("met", "MISSED", "-") for row in rows)
    run_all.print_summary(rows, [], "smoke")
    assert run_all.yardstick_ms(repeats=1) > 0
