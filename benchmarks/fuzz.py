"""The fuzz suite's large run: the properties of ``tests/test_fuzz.py`` with many generated cases each,
under a memory limit, with a per-case deadline (a hang fails the case).

    python benchmarks/fuzz.py --examples 2000

Prints the cases per entry point (a result, or refused with one of the toolkit's own errors) and
pytest's verdict: any foreign exception, hang or out-of-memory is a failing test, shown with the
smallest case hypothesis found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _limit_memory(gib: float) -> None:
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2000, help="generated cases per property")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address-space limit of the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "outcomes.json"
        env = dict(os.environ, INSTSEG_FUZZ_EXAMPLES=str(args.examples), INSTSEG_FUZZ_REPORT=str(report))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
            cwd=ROOT,
            env=env,
            preexec_fn=lambda: _limit_memory(args.memory_gib),
        )
        seconds = time.perf_counter() - started
        outcomes = json.loads(report.read_text()) if report.is_file() else {}
    total = sum(outcomes.values())
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, {seconds:.0f} s")
    print(f"{total} cases ({args.examples} per property), memory limit {args.memory_gib:g} GiB")
    for key, n in outcomes.items():
        print(f"  {key:<22} {n}")
    print("verdict:", "every case a result or a toolkit error" if done.returncode == 0 else "FAILURES above")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
