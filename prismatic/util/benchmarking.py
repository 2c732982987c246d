"""What the benchmark scripts share: resident-memory readings and running one configuration in its own process.

Each configuration runs in a fresh process so that its peak resident memory (ru_maxrss) is its own; the worker
prints its result as the last line of stdout, as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def resident_memory_gb() -> float:
    """Current resident memory of this process, in GB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_resident_memory_gb() -> float:
    """Peak resident memory of this process so far, in GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_json_worker(script: str | Path, flags: dict[str, Any], label: str) -> dict[str, Any]:
    """Run `python script --flag value ...` in a fresh process and return the JSON of its last stdout line.

    Exits with the worker's stderr tail when it fails, naming `label` (the configuration that failed).
    """
    args = [sys.executable, str(script)]
    for name, value in flags.items():
        args += [f"--{name}", str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
