"""otel-events beside what a team would pick instead, doing the same work, in one run.

The work: one turn of an agent with 1,000 tool steps, each returning a ~100-byte JSON
output that goes on the step's span, and the turn's token usage. Spans go through the
SDK's ``BatchSpanProcessor`` to an exporter that drops them. Each way of doing it is
written as its documentation shows:

* ``bare``: OpenTelemetry spans by hand (``start_as_current_span``), GenAI attribute
  names, the output as ``gen_ai.tool.call.result``. No metrics: the floor.
* ``util-genai``: ``opentelemetry-util-genai``'s ``TelemetryHandler`` (the OpenTelemetry
  reference helper for GenAI): ``invoke_local_agent`` and ``tool`` invocations, content
  captured on spans (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=SPAN_ONLY``).
* ``logfire``: ``logfire.configure(local=True, send_to_logfire=False, console=False)``,
  ``logfire.span`` per turn and per step.
* ``otel-events``: ``EventEmitter``, ``with turn.item(..., call_id=...) as item:
  item.complete(...)`` (the tool call id, as the others record it); it also writes the
  Codex-compatible event stream (two events per step) into its log.

Metrics off: no meter provider (the API's no-op). Metrics on: an SDK ``MeterProvider``
with a periodic reader, what ``otel_events.configure()`` installs.

Each variant runs in its own process (no shared global providers); rounds are
interleaved, each sample is the CPU time of that whole process (export threads included)
per step, and each figure is the median of per-round ratios to ``bare``.
Run: ``python benchmarks/bench_peers.py`` (``--quick``; ``--callgrind`` adds instruction
counts, a few minutes more).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import callgrind_available, callgrind_per_op, interleave, python_argv, ratio

STEPS = 1000
AGENT = "data-agent"
# About 100 bytes once encoded.
OUTPUT = {"rows": 4, "columns": ["region", "revenue"], "total": 1234.5, "currency": "EUR",
          "cached": False, "query_ms": 12}
USAGE = {"input_tokens": 1200, "output_tokens": 80, "cached_input_tokens": 900}
VARIANTS = ("bare", "util-genai", "logfire", "otel-events")
ENV = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}


# -- the worker side: one variant, one process ------------------------------------------


def _span_processor() -> Any:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class NullExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16)


def _meter_provider(metrics: bool) -> Any:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )

    if not metrics:
        return NoOpMeterProvider()

    class NullMetricExporter(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                   **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    reader = PeriodicExportingMetricReader(NullMetricExporter(), export_interval_millis=60_000)
    return MeterProvider(metric_readers=[reader])


def make_turn(variant: str, metrics: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(turn, flush)``: one turn of ``STEPS`` tool steps, and a flush of its spans."""
    if variant == "logfire":
        import logfire

        lf = logfire.configure(local=True, send_to_logfire=False, console=False,
                               metrics=None if metrics else False,
                               additional_span_processors=[_span_processor()])

        def logfire_turn() -> None:
            with lf.span("invoke_agent {agent}", agent=AGENT) as turn:
                for i in range(STEPS):
                    with lf.span("execute_tool {tool}", tool="sqlite",
                                 **{"gen_ai.tool.call.id": f"call_{i}"}) as span:
                        span.set_attribute("gen_ai.tool.call.result", OUTPUT)
                turn.set_attributes({f"gen_ai.usage.{k}": v for k, v in USAGE.items()})

        return logfire_turn, lambda: lf.force_flush()

    from opentelemetry.sdk.trace import TracerProvider

    tp = TracerProvider()
    tp.add_span_processor(_span_processor())
    mp = _meter_provider(metrics)

    if variant == "bare":
        import orjson
        from opentelemetry.trace import SpanKind

        tracer = tp.get_tracer("bench")

        def bare_turn() -> None:
            with tracer.start_as_current_span(f"invoke_agent {AGENT}", attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": AGENT}) as turn:
                for i in range(STEPS):
                    with tracer.start_as_current_span("execute_tool sqlite",
                                                      kind=SpanKind.INTERNAL, attributes={
                            "gen_ai.operation.name": "execute_tool",
                            "gen_ai.tool.name": "sqlite",
                            "gen_ai.tool.call.id": f"call_{i}"}) as span:
                        span.set_attribute("gen_ai.tool.call.result",
                                           orjson.dumps(OUTPUT).decode())
                turn.set_attributes({f"gen_ai.usage.{k}": v for k, v in USAGE.items()})

        return bare_turn, lambda: tp.force_flush()

    if variant == "util-genai":
        from opentelemetry.util.genai.handler import TelemetryHandler

        handler = TelemetryHandler(tracer_provider=tp, meter_provider=mp)

        def util_genai_turn() -> None:
            with handler.invoke_local_agent(agent_name=AGENT) as agent:
                for i in range(STEPS):
                    with handler.tool("sqlite") as tool:
                        tool.tool_call_id = f"call_{i}"
                        tool.tool_result = OUTPUT
                agent.input_tokens = USAGE["input_tokens"]
                agent.output_tokens = USAGE["output_tokens"]

        return util_genai_turn, lambda: tp.force_flush()

    if variant == "otel-events":
        from otel_events import EventEmitter

        emitter = EventEmitter("bench", AGENT, tracer_provider=tp, meter_provider=mp)

        def otel_events_turn() -> None:
            with emitter.turn() as turn:
                for i in range(STEPS):
                    with turn.item("sql_execution", "Running the revenue query",
                                   name="sqlite", call_id=f"call_{i}") as item:
                        item.complete(output=OUTPUT)
                turn.add_usage(**USAGE)

        return otel_events_turn, lambda: tp.force_flush()

    raise ValueError(f"unknown variant {variant!r}")


def worker(variant: str, metrics: bool, turns: int | None) -> None:
    """Serve ``run N`` lines (print CPU seconds per step of N turns), or run ``turns``
    turns and exit (for callgrind)."""
    os.environ.update(ENV)
    turn, flush = make_turn(variant, metrics)
    turn()  # warm-up: imports, caches, first-use paths
    flush()
    if turns is not None:
        for _ in range(turns):
            turn()
        flush()
        return
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line.split()[1])
        start = time.process_time()
        for _ in range(count):
            turn()
        flush()  # the export thread's work is part of the cost
        print((time.process_time() - start) / (count * STEPS), flush=True)


# -- the parent side ------------------------------------------------------------------


class Worker:
    def __init__(self, variant: str, metrics: bool) -> None:
        self.proc = subprocess.Popen(
            python_argv(__file__, "--worker", variant, "--metrics", "on" if metrics else "off"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError(f"worker {variant} did not start")

    def sample(self, turns: int) -> float:
        self.stdin.write(f"run {turns}\n")
        self.stdin.flush()
        return float(self.stdout.readline())

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


def measure(metrics: bool, rounds: int, turns: int) -> dict[str, list[float]]:
    workers = {variant: Worker(variant, metrics) for variant in VARIANTS}
    try:
        return interleave(rounds, {name: (lambda w=w: w.sample(turns))
                                   for name, w in workers.items()})
    finally:
        for w in workers.values():
            w.close()


def instructions(variant: str, metrics: bool) -> float:
    def argv(turns: int) -> list[str]:
        return python_argv(__file__, "--worker", variant, "--metrics",
                           "on" if metrics else "off", "--turns", str(turns))

    return callgrind_per_op(argv, 1, 3, env=ENV) / STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per step with callgrind")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", choices=("on", "off"), default="off",
                        help=argparse.SUPPRESS)
    parser.add_argument("--turns", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.metrics == "on", args.turns)
        return

    rounds, turns = (5, 2) if args.quick else (15, 3)
    print(f"peers: a turn of {STEPS:,} tool steps, CPU time of the whole process per step "
          f"(median of {rounds} interleaved rounds), ratio to bare spans in the same round")
    counts: dict[tuple[str, bool], float] = {}
    if args.callgrind and callgrind_available():
        for metrics in (False, True):
            for variant in VARIANTS:
                counts[variant, metrics] = instructions(variant, metrics)
    header = f"{'':12s} {'metrics off':>22s} {'metrics on (SDK)':>22s}"
    if counts:
        header += f" {'instructions off / on':>28s}"
    results = {metrics: measure(metrics, rounds, turns) for metrics in (False, True)}
    print(header)
    for variant in VARIANTS:
        row = f"{variant:12s}"
        for metrics in (False, True):
            samples = results[metrics]
            per_step = statistics.median(samples[variant]) * 1e6
            row += f" {per_step:8.1f} us {ratio(samples, variant, 'bare'):8.2f}x"
        if counts:
            off, on = counts[variant, False], counts[variant, True]
            base = counts["bare", False]
            row += f"  {off / 1e3:6.0f}K {off / base:4.2f}x / {on / 1e3:6.0f}K {on / base:4.2f}x"
        print(row)
    for metrics in (False, True):
        ours = ratio(results[metrics], "otel-events", "util-genai")
        print(f"otel-events / util-genai, metrics {'on' if metrics else 'off'}: {ours:.2f}x "
              f"(goal <= 1.00x: {'ok' if ours <= 1.0 else 'MISSED'})")


if __name__ == "__main__":
    main()
