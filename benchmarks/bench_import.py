"""What agent code pays to import otel-events, beside what the OpenTelemetry API costs.

Each figure is the CPU time of one import statement in a fresh interpreter (interpreter
start-up excluded), or of a whole ``otel-events --help`` process; variants take turns
within each round so a load change on a shared machine falls on all alike. Medians of
``ROUNDS`` rounds; the ratios are taken within each round.

    python benchmarks/bench_import.py
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
BIN = Path(sys.executable).parent

# The cost of one import statement, measured inside the child.
IMPORTS = {
    "opentelemetry.trace + orjson (baseline)": "import opentelemetry.trace, orjson",
    "import otel_events": "import otel_events",
    "import otel_events + EventEmitter()": (
        "import otel_events; otel_events.EventEmitter('t', 'a').close()"),
    "import otel_events.bridge": "import otel_events.bridge",
}
_PROBE = ("import time; t = time.process_time(); {stmt}; "
          "print(time.process_time() - t)")


def import_cpu(statement: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(stmt=statement)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def process_cpu(argv: list[str]) -> float:
    """CPU time (user + system) of a whole child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    cli = str(BIN / "otel-events")
    rounds: dict[str, list[float]] = {name: [] for name in IMPORTS}
    rounds["python -c pass (process)"] = []
    rounds["otel-events --help (process)"] = []
    ratios: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(ROUNDS):
        seen = {name: import_cpu(stmt) for name, stmt in IMPORTS.items()}
        for name, value in seen.items():
            rounds[name].append(value)
            ratios[name].append(value / seen["opentelemetry.trace + orjson (baseline)"])
        rounds["python -c pass (process)"].append(process_cpu([sys.executable, "-c", "pass"]))
        rounds["otel-events --help (process)"].append(process_cpu([cli, "--help"]))
    print(f"import cost, CPU ms (median of {ROUNDS}; ratio to the baseline within each round)")
    for name, values in rounds.items():
        ratio = (f"  {statistics.median(ratios[name]):.2f}x" if name in ratios else "")
        print(f"  {name:44s} {statistics.median(values) * 1e3:7.1f} ms{ratio}")
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, otel_events; print(sorted({m.split('.')[0] for m "
         "in sys.modules if m.split('.')[0] in ('pydantic', 'httpx', 'fastapi', 'uvicorn', "
         "'starlette', 'rich', 'asyncio')}))"], check=True, capture_output=True,
        text=True).stdout.strip()
    print(f"  heavy modules loaded by `import otel_events`: {heavy}")


if __name__ == "__main__":
    main()
