"""Run a benchmark case in a fresh Python process and read back its figures and peak RSS.

Peak RSS (`ru_maxrss`) only ever grows within a process, so comparing a 1-minute run with a
10-minute run is only honest when each runs in its own process.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size in MiB of this process (or of its largest waited-for child)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def run_case(module: str, *args: str) -> dict:
    """Run `python -m MODULE ARGS...` (which prints one JSON object last) and parse its result."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark case {module} {' '.join(args)} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
