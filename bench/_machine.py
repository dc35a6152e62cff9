"""What every bench prints about the machine it ran on (issue 16: keep bench/ honest).

``announce()`` prints the machine (cores, CPU model, memory, Python, OS) and the load average
before the bench starts, and the load average again when it ends, so a table is never read
without knowing how busy the machine was. Each bench compares against a baseline measured in the
same run; absolute numbers from a loaded machine are only comparable as ratios.
"""

from __future__ import annotations

import atexit
import os
import platform
import sys
import time
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "? GiB"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"


def machine() -> str:
    return (
        f"{os.cpu_count()} cores ({_cpu_model()}), {_memory_gib()} RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def announce(bench: str) -> None:
    """Print the machine and load now; the load again (and the wall time) at exit."""
    name = Path(bench).stem
    # The script's folder is sys.path[0]: bench/mcp.py would shadow the `mcp` package that
    # corral.app.main imports. Benches import nothing else from bench/ after this.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    start = time.monotonic()
    print(f"[{name}] machine: {machine()}")
    print(f"[{name}] load average at start: {load_average()}", flush=True)

    def _at_exit() -> None:
        took = time.monotonic() - start
        print(f"[{name}] load average at end: {load_average()}; bench took {took:.0f} s")
        sys.stdout.flush()

    atexit.register(_at_exit)
