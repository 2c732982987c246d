"""The helpers the benchmark scripts share (memory readings, one configuration per process), and the CRaFT overhead
benchmark's report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prismatic.util.benchmarking import peak_resident_memory_gb, resident_memory_gb, run_json_worker

from conftest import REPO_ROOT, run_python

BENCH = REPO_ROOT / "craft_experiments" / "02_stability_efficiency" / "bench_craft_overhead.py"


def test_memory_readings_are_plausible() -> None:
    current, peak = resident_memory_gb(), peak_resident_memory_gb()
    assert 0.01 < current < 64 and current <= peak + 0.01


def test_worker_result_is_its_last_json_line_and_failures_name_the_configuration(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        "args = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "if args['--worker'] == 'bad':\n"
        "    sys.exit('boom')\n"
        "print('warming up')\n"
        "print(json.dumps({'worker': args['--worker'], 'steps': int(args['--steps'])}))\n"
    )
    assert run_json_worker(script, {"worker": "tiny", "steps": 3}, "tiny") == {"worker": "tiny", "steps": 3}
    with pytest.raises(SystemExit, match=r"benchmark tiny/lora failed:\nboom"):
        run_json_worker(script, {"worker": "bad", "steps": 1}, "tiny/lora")


def test_craft_overhead_benchmark_reports_ratios_and_the_slack_steps() -> None:
    """bench_craft_overhead on the tiny preset: every method against the baseline, and a slack mode counts the timed
    steps that still computed the retention gradient (exact CRaFT: all of them)."""
    proc = run_python(
        [
            str(BENCH),
            *("--configs", "[tiny]", "--tunings", "[lora]", "--steps", "2", "--batch_size", "2"),
            *("--grad_accumulation_steps", "1", "--methods", "[baseline,craft,craft_cache_slack1.0]"),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    results = {row["method"]: row for row in report["results"]}
    assert results["baseline"]["timed_steps_with_retention_gradient"] is None
    assert results["craft"]["timed_steps_with_retention_gradient"] == 2
    assert 0 <= results["craft_cache_slack1.0"]["timed_steps_with_retention_gradient"] <= 2
    assert [row["method"] for row in report["ratios"]] == ["craft", "craft_cache_slack1.0"]
    assert all(row["step_time_ratio"] > 0 and row["peak_memory_ratio"] > 0 for row in report["ratios"])

    proc = run_python([str(BENCH), "--methods", "[craft_slack]"], timeout=120)
    assert proc.returncode != 0 and "--methods: unknown 'craft_slack'" in proc.stderr
