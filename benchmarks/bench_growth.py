"""Does the emitter's cost per item stay flat as a turn grows and as emitters multiply?

1. Items per turn: a turn of 1, 100 or 10,000 items (10,000 items in all at each size:
   10,000 turns of 1, 100 of 100, one of 10,000). CPU time of the whole process per
   item (the turn's own cost shared among its items), beside bare SDK spans doing the
   same (a parent span per turn, a child span per item) in the same round; and the
   memory the emitter still holds at the end of the turn (tracemalloc, in a separate
   pass), per item.
2. Concurrent emitters (threads of conversation) in one process: 1, 100 or 10,000
   emitters, each with a turn open, items going round-robin over them (10,000 items in
   all). CPU time per item, as a ratio to the same work with one emitter measured in the
   same round; memory held per emitter.

Spans go through the SDK's batch processor to an exporter that drops them; metrics to an
SDK ``MeterProvider`` (what ``configure()`` installs). No subscriber: each emitter's log
holds its events, as it does whether or not anyone reads them.
Run: ``python benchmarks/bench_growth.py`` (``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import set_span_in_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import bare_item_span, interleave, ratio

from otel_events import EventEmitter

TOTAL = 10_000
OUTPUT = {"rows": 3, "total": 1234.5}
SIZES = (1, 100, 10_000)


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Providers:
    def __init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def emitter(self, thread_id: str) -> EventEmitter:
        return EventEmitter(thread_id, "bench", tracer_provider=self.tracer_provider,
                            meter_provider=self.meter_provider)

    def flush(self) -> None:
        self.tracer_provider.force_flush()


def item(turn: object) -> None:
    turn.item("sql_execution", "Running the revenue query",  # type: ignore[attr-defined]
              name="sqlite").complete(output=OUTPUT)


# -- 1. items per turn ------------------------------------------------------------------


def emitter_turns(p: Providers, size: int) -> EventEmitter:
    emitter = p.emitter("growth")
    for _ in range(TOTAL // size):
        with emitter.turn() as turn:
            for _ in range(size):
                item(turn)
    return emitter


def bare_turns(p: Providers, size: int) -> None:
    tracer = p.tracer_provider.get_tracer("bench")
    for _ in range(TOTAL // size):
        parent = tracer.start_span("invoke_agent bench")
        ctx = set_span_in_context(parent)
        for i in range(size):
            bare_item_span(tracer, ctx, i, '{"rows":3,"total":1234.5}')
        parent.end()


def cpu_per_item(p: Providers, work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    p.flush()
    return (time.process_time() - start) / TOTAL


def held_after(p: Providers, build: Callable[[], object]) -> tuple[int, object]:
    """Bytes still allocated after ``build()``, with what it returned kept alive (spans
    waiting in the batch processor's queue are exported first: they are the SDK's)."""
    gc.collect()
    tracemalloc.start()
    kept = build()
    p.flush()
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return held, kept


def items_per_turn(rounds: int) -> None:
    p = Providers()
    emitter_turns(p, 100).close()  # warm-up
    bare_turns(p, 100)
    print(f"1. items per turn ({TOTAL:,} items at each size), CPU per item, the turn's "
          f"cost shared among its items:")
    for size in SIZES:
        samples = interleave(rounds, {
            "emitter": lambda size=size: cpu_per_item(p, lambda: emitter_turns(p, size).close()),
            "bare": lambda size=size: cpu_per_item(p, lambda: bare_turns(p, size))})

        def one_turn(size: int = size) -> EventEmitter:
            emitter = p.emitter("held")
            with emitter.turn() as turn:
                for _ in range(size):
                    item(turn)
            return emitter

        held, kept = held_after(p, one_turn)
        kept.close()  # type: ignore[attr-defined]
        p.flush()
        print(f"   {size:>6,} per turn: emitter {statistics.median(samples['emitter']) * 1e6:6.1f}"
              f" us, bare spans {statistics.median(samples['bare']) * 1e6:6.1f} us -> "
              f"{ratio(samples, 'emitter', 'bare'):.2f}x; held after the turn "
              f"{held / 1024:8.1f} KiB ({held / size:6.0f} B per item)")


# -- 2. concurrent emitters ---------------------------------------------------------------


def open_emitters(p: Providers, count: int) -> list[tuple[EventEmitter, object]]:
    emitters = [p.emitter(f"thread-{i}") for i in range(count)]
    return [(emitter, emitter.turn()) for emitter in emitters]


def round_robin(pairs: list[tuple[EventEmitter, object]]) -> None:
    for _ in range(TOTAL // len(pairs)):
        for _, turn in pairs:
            item(turn)


def close_all(pairs: list[tuple[EventEmitter, object]]) -> None:
    for emitter, turn in pairs:
        turn.complete()  # type: ignore[attr-defined]
        emitter.close()


def concurrent_emitters(rounds: int) -> None:
    p = Providers()
    print(f"2. concurrent emitters, each with a turn open, {TOTAL:,} items round-robin:")
    baseline = open_emitters(p, 1)
    for count in SIZES:
        pairs = open_emitters(p, count)
        round_robin(pairs)  # warm-up: every ring grown to its working size
        samples = interleave(rounds, {
            "many": lambda pairs=pairs: cpu_per_item(p, lambda: round_robin(pairs)),
            "one": lambda: cpu_per_item(p, lambda: round_robin(baseline))})
        close_all(pairs)
        del pairs
        held, kept = held_after(p, lambda count=count: open_emitters(p, count))
        # After items, the rings hold events: memory per emitter at work.
        held_busy, busy = held_after(p, lambda count=count: _busy(p, count))
        close_all(kept)  # type: ignore[arg-type]
        close_all(busy)  # type: ignore[arg-type]
        p.flush()
        print(f"   {count:>6,} emitters: {statistics.median(samples['many']) * 1e6:6.1f} us per"
              f" item -> {ratio(samples, 'many', 'one'):.2f}x one emitter; held per emitter "
              f"{held / count / 1024:6.1f} KiB open, {held_busy / count / 1024:6.1f} KiB after "
              f"{TOTAL // count:,} items each")
    close_all(baseline)


def _busy(p: Providers, count: int) -> list[tuple[EventEmitter, object]]:
    pairs = open_emitters(p, count)
    round_robin(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    items_per_turn(rounds)
    concurrent_emitters(rounds)


if __name__ == "__main__":
    main()
