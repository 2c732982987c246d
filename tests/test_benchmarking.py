"""The helpers the benchmark scripts share: memory readings and one configuration per process."""

from __future__ import annotations

from pathlib import Path

import pytest

from prismatic.util.benchmarking import peak_resident_memory_gb, resident_memory_gb, run_json_worker


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
