"""What every benchmark here shares: CPU time of the whole process, interleaved rounds,
medians of per-round ratios, and instruction counts from callgrind.

* CPU time is ``time.process_time()``: every thread of the process (span processors'
  export threads, sinks' writer threads) counts, other processes on the machine do not.
* Rounds are interleaved (A, B, C, then B, C, A...) and the median of the per-round ratios
  is reported: the machine's speed drifts under load, and a ratio taken within one round
  is far steadier than a ratio of two medians.
* Callgrind counts instructions, which do not move with the machine's load at all. A
  program is run twice, with ``small`` and ``large`` operations, and the difference
  divided by ``large - small``: start-up and imports cancel out.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Samples", "bare_item_span", "callgrind_available", "callgrind_per_op", "interleave",
           "python_argv", "ratio"]

Samples = dict[str, list[float]]


def interleave(rounds: int, variants: dict[str, Callable[[], float]]) -> Samples:
    """Run every variant once per round, rotating the order; each returns one sample."""
    names = list(variants)
    samples: Samples = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


def ratio(samples: Samples, name: str, baseline: str) -> float:
    """The median of the per-round ratios ``name / baseline``."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline],
                                                    strict=True))


def callgrind_available() -> bool:
    return shutil.which("valgrind") is not None


_COLLECTED = re.compile(rb"Collected : (\d+)")


def _instructions(argv: Sequence[str], env: dict[str, str] | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *argv],
            capture_output=True, env=env, check=True)
    match = _COLLECTED.search(result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from callgrind: {result.stderr[-500:]!r}")
    return int(match.group(1))


def callgrind_per_op(argv: Callable[[int], Sequence[str]], small: int, large: int,
                     env: dict[str, str] | None = None) -> float:
    """Instructions per operation of ``argv(n)`` (a command doing ``n`` operations)."""
    env = {**os.environ, **(env or {})}
    low = _instructions(argv(small), env)
    high = _instructions(argv(large), env)
    return (high - low) / (large - small)


def python_argv(script: str, *args: str) -> list[str]:
    """This interpreter running ``script`` (a path) with ``args``."""
    return [sys.executable, script, *args]


def bare_item_span(tracer: Any, context: Any, number: int, output: str) -> None:
    """The span the emitter makes for a completed SQL item, made with the SDK alone and
    the same attributes: the baseline of the emitter's per-item figures."""
    span = tracer.start_span("execute_tool sqlite", context=context, attributes={
        "otel_events.item.id": f"item_{number}", "otel_events.item.type": "sql_execution",
        "otel_events.item.description": "Running the revenue query",
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "sqlite"})
    span.set_attributes({"otel_events.item.output": output})
    span.end()
