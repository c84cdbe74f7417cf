"""Emitter benchmarks, each a ratio against a baseline measured in the same run.

1. Cost per item (start + complete: one span, two events, one subscriber draining)
   against a bare OpenTelemetry SDK span with the same attributes, without and with a
   JSONL sink attached. Target: <= 1.3x. CPU time of the whole process
   (``time.process_time``: the span processor's export thread and the sink's writer
   thread count, and each sample ends once they have done their part), and callgrind's
   instruction counts beside when valgrind is installed.
2. Time inside emitter calls per item with 100 subscribers against 1 (the calling
   thread's CPU time: what publishing costs the agent). Target: <= 1.2x.
3. Deliveries per second to 100 subscribers against the seed's algorithm. Target: >= 2x.

Rounds are interleaved (A, B, C, then B, C, A...) and the median of the per-round ratios
taken, so drift hits every side (see ``measure.py``).
Run: ``make bench`` (or ``python benchmarks/bench_emitter.py --quick``; ``--no-callgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import orjson
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider, set_span_in_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (
    bare_item_span,
    callgrind_available,
    callgrind_per_op,
    interleave,
    python_argv,
    ratio,
)
from seed_emitter import SeedEmitter

from otel_events import EventEmitter, JsonlSink

OUTPUT = {"rows": 3, "total": 1234.5}
BATCH = 50  # items between yields to the event loop (readers drain per batch)
ITEM_VARIANTS = ("bare", "emitter", "emitter+jsonl")


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def provider() -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16))
    return tp


async def drain(sub: object, counter: list[int]) -> None:
    async for _event in sub:  # type: ignore[attr-defined]
        counter[0] += 1


async def bare_span_items(tp: TracerProvider, n: int) -> None:
    """Baseline for 1: the span the emitter makes for an item, with the same attributes."""
    tracer = tp.get_tracer("bench")
    parent = tracer.start_span("invoke_agent bench")
    ctx = set_span_in_context(parent)
    for i in range(n):
        bare_item_span(tracer, ctx, i, orjson.dumps(OUTPUT).decode())
        if i % BATCH == 0:
            await asyncio.sleep(0)
    parent.end()


async def emitter_items(tp: TracerProvider, n: int, subscribers: int,
                        jsonl: str | None = None) -> float:
    """Items with readers draining; returns the calling thread's CPU time inside the
    emitter's calls, per item."""
    sinks = [JsonlSink(jsonl)] if jsonl is not None else []
    em = EventEmitter("bench", "bench", tracer_provider=tp, buffer_size=1 << 14, sinks=sinks)
    counter = [0]
    readers = [asyncio.create_task(drain(em.subscribe(), counter)) for _ in range(subscribers)]
    await asyncio.sleep(0)
    turn = em.turn()
    inside = 0.0
    for i in range(n):
        t0 = time.thread_time()
        item = turn.item("sql_execution", "Running the revenue query", name="sqlite")
        item.complete(output=OUTPUT)
        inside += time.thread_time() - t0
        if i % BATCH == 0:
            await asyncio.sleep(0)
    turn.complete()
    em.close()  # joins the sink's thread: its writing is counted
    await asyncio.gather(*readers)
    expected = subscribers * (2 * n + 3)
    assert counter[0] == expected, (counter[0], expected)
    return inside / n


def run_items(variant: str, tp: TracerProvider, n: int, jsonl: str) -> None:
    if variant == "bare":
        asyncio.run(bare_span_items(tp, n))
    else:
        asyncio.run(emitter_items(tp, n, 1, jsonl if variant == "emitter+jsonl" else None))
    tp.force_flush()  # the export thread's share of these items


def item_cpu(variant: str, tp: TracerProvider, n: int, jsonl: str) -> float:
    """CPU seconds of the whole process per item."""
    start = time.process_time()
    run_items(variant, tp, n, jsonl)
    return (time.process_time() - start) / n


def item_instructions(variant: str) -> float:
    return callgrind_per_op(
        lambda n: python_argv(__file__, "--items", variant, str(n)), 1000, 3000)


async def seed_deliveries(n_items: int, subscribers: int) -> float:
    em = SeedEmitter("bench")
    queues = [em.subscribe() for _ in range(subscribers)]
    total = 2 * n_items
    done = [0]

    async def reader(queue: asyncio.Queue) -> None:  # type: ignore[type-arg]
        for _ in range(total):
            event = await queue.get()
            _ = event.type
            done[0] += 1

    tasks = [asyncio.create_task(reader(q)) for q in queues]
    start = time.process_time()
    for i in range(n_items):
        item_id = await em.start_item("sql_execution", "Running the revenue query")
        await em.complete_item(item_id, OUTPUT)
        if i % BATCH == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return done[0] / (time.process_time() - start)


async def our_deliveries(tp: TracerProvider | NoOpTracerProvider, n_items: int,
                         subscribers: int) -> float:
    em = EventEmitter("bench", "bench", tracer_provider=tp, buffer_size=1 << 14)
    done = [0]

    async def reader(sub: object) -> None:
        async for event in sub:  # type: ignore[attr-defined]
            _ = event.type
            done[0] += 1

    tasks = [asyncio.create_task(reader(em.subscribe())) for _ in range(subscribers)]
    await asyncio.sleep(0)
    turn = em.turn()
    start = time.process_time()
    for i in range(n_items):
        turn.item("sql_execution", "Running the revenue query", name="sqlite").complete(OUTPUT)
        if i % BATCH == 0:
            await asyncio.sleep(0)
    turn.complete()
    em.close()
    await asyncio.gather(*tasks)
    return done[0] / (time.process_time() - start)


async def interleave_async(rounds: int, a: Callable[[], Awaitable[float]],
                           b: Callable[[], Awaitable[float]]) -> tuple[float, float, float]:
    """Medians of A and of B, and the median of the per-round ratios A/B."""
    xs, ys, ratios = [], [], []
    for i in range(rounds):
        if i % 2:
            y, x = await b(), await a()
        else:
            x, y = await a(), await b()
        xs.append(x)
        ys.append(y)
        ratios.append(x / y)
    return statistics.median(xs), statistics.median(ys), statistics.median(ratios)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def per_item(rounds: int, n: int, callgrind: bool) -> None:
    tp = provider()
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "events.jsonl")
        for variant in ITEM_VARIANTS:  # warm-up: imports, caches, first-use paths
            run_items(variant, tp, 500, jsonl)
        samples = interleave(rounds, {v: (lambda v=v: item_cpu(v, tp, n, jsonl))
                                      for v in ITEM_VARIANTS})
    tp.shutdown()
    counts = {v: item_instructions(v) for v in ITEM_VARIANTS} if callgrind else {}
    bare = statistics.median(samples["bare"])
    print(f"1. per item (one span, two events, one subscriber draining), process CPU time: "
          f"bare SDK span {bare * 1e6:.1f} us"
          + (f" ({counts['bare'] / 1e3:.0f}K instructions)" if counts else ""))
    for variant in ("emitter", "emitter+jsonl"):
        r = ratio(samples, variant, "bare")
        line = (f"   {variant:14s} {statistics.median(samples[variant]) * 1e6:6.1f} us -> "
                f"{r:.2f}x (target <= 1.3x: {verdict(r <= 1.3)})")
        if counts:
            line += (f"; instructions {counts[variant] / 1e3:.0f}K -> "
                     f"{counts[variant] / counts['bare']:.2f}x")
        print(line)


async def fan_out(rounds: int, n: int) -> None:
    tp = provider()
    await emitter_items(tp, 500, 1)  # warm-up

    many, one, ratio2 = await interleave_async(
        rounds, lambda: emitter_items(tp, n, 100), lambda: emitter_items(tp, n, 1))
    print(f"2. time inside emitter calls per item: 100 subscribers {many * 1e6:.1f} us, "
          f"1 subscriber {one * 1e6:.1f} us -> {ratio2:.2f}x "
          f"(target <= 1.2x: {verdict(ratio2 <= 1.2)})")

    # The seed makes no spans, so its fan-out is compared with ours with tracing off; the
    # figure with SDK spans on is printed beside it.
    items = n // 5
    noop = NoOpTracerProvider()
    ours_rate, seed_rate, ratio3 = await interleave_async(
        rounds, lambda: our_deliveries(noop, items, 100), lambda: seed_deliveries(items, 100))
    with_spans, _, spans_ratio = await interleave_async(
        rounds, lambda: our_deliveries(tp, items, 100), lambda: seed_deliveries(items, 100))
    print(f"3. deliveries/s to 100 subscribers: emitter {ours_rate:,.0f}, seed {seed_rate:,.0f}"
          f" -> {ratio3:.2f}x (target >= 2x: {verdict(ratio3 >= 2)}); emitter with SDK spans"
          f" on: {with_spans:,.0f} ({spans_ratio:.2f}x)")
    tp.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--no-callgrind", action="store_true",
                        help="skip the instruction counts (about a minute)")
    parser.add_argument("--items", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.items:  # one measured run, for callgrind
        with tempfile.TemporaryDirectory() as tmp:
            tp = provider()
            run_items(args.items[0], tp, int(args.items[1]), os.path.join(tmp, "e.jsonl"))
            tp.shutdown()
    else:
        rounds, n = (5, 1000) if args.quick else (21, 2000)
        per_item(rounds, n, not args.no_callgrind and callgrind_available())
        asyncio.run(fan_out(rounds, n))
