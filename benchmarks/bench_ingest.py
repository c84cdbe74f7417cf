"""``otel-events ingest``: lines per second beside merely parsing the lines, and the time
to the first span of a live pipe.

1. Throughput on a 100,000-line Codex stream (what ``codex exec --json`` writes: turns of
   a reasoning item, command executions started and completed with ~100-byte outputs,
   an agent message and the usage), as a ratio to parsing the same lines with orjson:
   * in one process, interleaved rounds, CPU time of the whole process: ``Ingester``
     with spans through the SDK's batch processor to an exporter that drops them and
     metrics into an SDK ``MeterProvider``;
   * the command itself (``python -m otel_events ingest FILE``, start-up included, with
     ``OTEL_TRACES_EXPORTER=none`` and ``OTEL_METRICS_EXPORTER=none``: nowhere to export
     to here), CPU time of the child, beside a child that parses the file with orjson.
2. A live pipe: ``ingest -`` exporting over OTLP/HTTP to a receiver in this process; the
   time from writing the line that ends the first item to that span's arrival, and from
   starting the command.

Run: ``python benchmarks/bench_ingest.py`` (``--quick``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import interleave, ratio

from otel_events.ingest import Ingester
from otel_events.metrics import AgentMetrics

LINES = 100_000
COMMANDS = 8  # command executions per turn


def codex_turn(turn: int) -> list[bytes]:
    """One turn as Codex writes it: 2 * COMMANDS + 4 lines."""
    lines = [{"type": "turn.started"},
             {"type": "item.completed", "item": {
                 "id": f"item_{turn}_r", "type": "reasoning",
                 "text": "**Scanning the repository for the failing test**"}}]
    for i in range(COMMANDS):
        command = {"id": f"item_{turn}_{i}", "type": "command_execution",
                   "command": "bash -lc 'pytest -q tests/test_parser.py'",
                   "aggregated_output": "", "exit_code": None, "status": "in_progress"}
        lines.append({"type": "item.started", "item": command})
        lines.append({"type": "item.completed", "item": {
            **command, "aggregated_output": "1 failed, 11 passed in 0.41s\n"
            "FAILED tests/test_parser.py::test_offsets - AssertionError\n",
            "exit_code": 1 if i == 0 else 0, "status": "failed" if i == 0 else "completed"}})
    lines.append({"type": "item.completed", "item": {
        "id": f"item_{turn}_m", "type": "agent_message",
        "text": "Fixed the off-by-one in the tokenizer; all 12 parser tests pass."}})
    lines.append({"type": "turn.completed", "usage": {
        "input_tokens": 24763 * (turn + 1), "cached_input_tokens": 24448 * (turn + 1),
        "output_tokens": 122 * (turn + 1)}})
    return [orjson.dumps(line) for line in lines]


def codex_stream(count: int) -> list[bytes]:
    out = [orjson.dumps({"type": "thread.started",
                         "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"})]
    turn = 0
    while len(out) < count:
        out.extend(codex_turn(turn))
        turn += 1
    return out[:count]


# -- 1. throughput ------------------------------------------------------------------------


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def in_process(rounds: int, lines: list[str]) -> None:
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def ingest() -> float:
        start = time.process_time()
        ingester = Ingester(tp.get_tracer("bench"), AgentMetrics(mp.get_meter("bench")), "bench")
        result = ingester.feed_lines(lines)
        tp.force_flush()
        assert not result.rejected, result.rejected[:3]
        return (time.process_time() - start) / len(lines)

    def parse() -> float:
        start = time.process_time()
        for line in lines:
            orjson.loads(line)
        return (time.process_time() - start) / len(lines)

    ingest()  # warm-up
    samples = interleave(rounds, {"ingest": ingest, "orjson": parse})
    per_line, parse_line = (statistics.median(samples[k]) for k in ("ingest", "orjson"))
    print(f"1. {len(lines):,} Codex lines, in one process: ingest {1 / per_line:,.0f} lines/s "
          f"({per_line * 1e6:.1f} us/line), orjson.loads {1 / parse_line:,.0f} lines/s -> "
          f"ingest at {1 / ratio(samples, 'ingest', 'orjson'):.4f}x orjson's rate "
          f"({ratio(samples, 'ingest', 'orjson'):.0f}x its cost)")


def child_cpu(argv: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def command(rounds: int, path: str, count: int) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    ingest = [sys.executable, "-m", "otel_events", "ingest", path]
    parse = [sys.executable, "-c",
             "import sys, orjson\nfor line in open(sys.argv[1], 'rb'): orjson.loads(line)",
             path]
    samples = interleave(rounds, {"ingest": lambda: child_cpu(ingest, env),
                                  "orjson": lambda: child_cpu(parse, env)})
    seconds, parse_seconds = (statistics.median(samples[k]) for k in ("ingest", "orjson"))
    print(f"   the command, start-up included: {count / seconds:,.0f} lines/s "
          f"({seconds:.2f} s CPU), a python child parsing with orjson {count / parse_seconds:,.0f}"
          f" lines/s ({parse_seconds:.2f} s) -> {1 / ratio(samples, 'ingest', 'orjson'):.3f}x")


# -- 2. a live pipe -------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    arrivals: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/v1/traces"):
            Receiver.arrivals.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def live_pipe() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
           "OTEL_METRICS_EXPORTER": "none"}
    turn = codex_stream(2 * COMMANDS + 5)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "otel_events", "ingest", "-"], env=env,
                            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(b"\n".join(turn[:4]) + b"\n")  # thread, turn, reasoning, item.started
    proc.stdin.flush()
    time.sleep(3.0)  # the command is up and waiting for the next line
    ended = time.monotonic()
    proc.stdin.write(turn[4] + b"\n")  # the first command's item.completed
    proc.stdin.flush()
    deadline = ended + 30
    while not Receiver.arrivals and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.stdin.close()
    proc.wait(timeout=60)
    server.shutdown()
    if not Receiver.arrivals:
        print("2. live pipe: no span arrived within 30 s")
        return
    first = Receiver.arrivals[0]
    # The first write already ends a span (the reasoning item): with the live span delay
    # it is exported before the command's item ends; without it, 5 s later.
    print(f"2. live pipe (OTLP/HTTP to a local receiver): the first span arrives "
          f"{first - started:.2f} s after the command started (its first lines written "
          f"then; {first - ended:+.2f} s from the command item's end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 5
    stream = codex_stream(LINES)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "codex.jsonl")
        Path(path).write_bytes(b"\n".join(stream) + b"\n")
        in_process(rounds, [line.decode() for line in stream])
        command(rounds, path, LINES)
    live_pipe()


if __name__ == "__main__":
    main()
