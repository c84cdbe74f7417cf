"""Bridge fan-out, latency and memory, each beside two baselines measured in the same run.

Variants (each in its own uvicorn server process, clients in another process):

* ``bridge``: ``otel_events.bridge.create_app``; each chunk of events goes in-process
  through what the ingest endpoint does with a body (``parse_batch``: JSON, checks,
  validation; then ``MemoryBroker.append``: numbering, de-dup, encoding, wake-up, state
  fold), minus HTTP. The clients frame what they read.
* ``sse-starlette``: the plain pattern: an ``EventSourceResponse`` per client reading an
  (unbounded) ``asyncio.Queue`` of events and serialising each one (``ServerSentEvent``).
* ``bare``: a ``StreamingResponse`` per client reading a queue of frames encoded once by
  the publisher, one write per frame: the ceiling the issue names.
* ``bare-batched``: the same, but each wake-up writes every queued frame in one write (the
  bridge's strategy; the ceiling for batched writes).

Variants take turns within each round (each goes first in turn) and ratios are medians of
the per-round ratios: the machine may be shared, and a ratio taken within one round is far
steadier than a ratio of two medians. Nothing here is asserted.
Run: ``python benchmarks/bench_bridge.py`` (about four minutes); ``--part latency`` or
``--part fanout`` runs one part.
"""


import argparse
import asyncio
import multiprocessing as mp
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import orjson

VARIANTS = ("bridge", "sse-starlette", "bare", "bare-batched")
THREAD = "bench"
ITEM = b"event: item.completed"
END = b"event: turn.completed"
_SENT_NS = re.compile(rb'"sent_ns":(\d+)')


def make_event(n: int, kind: str = "item.completed") -> dict[str, Any]:
    """A realistic event of about 350 bytes."""
    return {"type": kind, "thread_id": THREAD, "turn_id": "turn_1", "seq": n,
            "timestamp": "2026-11-25T10:00:00.000000Z",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
            "item": {"id": f"item_{n}", "type": "command_execution",
                     "description": "run the test suite of the parser module",
                     "status": "completed", "started_at": "2026-11-25T10:00:00.000000Z",
                     "completed_at": "2026-11-25T10:00:01.000000Z", "duration_ms": 1000.0}}


# -- the server side -------------------------------------------------------------------


def build_app(variant: str, bridge_app: Any = None) -> Any:
    """The variant's app with the bench's routes (the bridge's: ``bridge_app``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from sse_starlette import EventSourceResponse, ServerSentEvent

    from otel_events.bridge.batch import parse_batch

    queues: set[asyncio.Queue[Any]] = set()
    if variant == "bridge":
        app = bridge_app
        registry = app.state.broker
    else:
        app = FastAPI()
    # Each run reads its own bridge thread: a client without a cursor replays what the
    # thread retains, which must not be the previous run's events.
    current = {"thread": THREAD}

    def readers() -> int:
        if variant != "bridge":
            return len(queues)
        return int(registry.readers(current["thread"]))

    async def subscribe() -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    async def plain_stream() -> AsyncIterator[ServerSentEvent]:
        async for seq, event in subscribe():
            yield ServerSentEvent(data=orjson.dumps(event).decode(), id=str(seq),
                                  event=event["type"])

    async def bare_stream() -> AsyncIterator[bytes]:
        async for frame in subscribe():
            yield frame

    async def batched_stream() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(queue)
        try:
            while True:
                frames = [await queue.get()]
                while not queue.empty():
                    frames.append(queue.get_nowait())
                yield b"".join(frames)
        finally:
            queues.discard(queue)

    if variant == "sse-starlette":
        @app.get("/events")
        async def plain() -> EventSourceResponse:
            return EventSourceResponse(plain_stream())
    elif variant == "bare":
        @app.get("/events")
        async def bare() -> StreamingResponse:
            return StreamingResponse(bare_stream(), media_type="text/event-stream")
    elif variant == "bare-batched":
        @app.get("/events")
        async def batched() -> StreamingResponse:
            return StreamingResponse(batched_stream(), media_type="text/event-stream")

    async def publish(events: list[tuple[int, dict[str, Any]]]) -> None:
        if variant == "bridge":
            # What the ingest endpoint does with a body (a producer's batch, as HttpSink
            # posts it): check every line, then append them through the broker
            # (numbering, de-dup, log, wake-up; the state fold follows).
            thread = current["thread"]
            for _, event in events:
                event["thread_id"] = thread
            body = b"\n".join([orjson.dumps(event) for _, event in events])
            batch = parse_batch(body, "application/x-ndjson", thread)
            await registry.append(thread, batch.events)
        elif variant == "sse-starlette":
            for queue in queues:
                for item in events:
                    queue.put_nowait(item)
        else:
            for n, event in events:
                data = orjson.dumps(event)
                frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (n, event["type"].encode(), data)
                for queue in queues:
                    queue.put_nowait(frame)

    async def publisher(count: int, interval: float) -> None:
        # Without an interval, chunks of 100 events, each published at once (for the
        # bridge, one ingest body) before the loop turns; with one, an event at a time,
        # stamped before any of the server's work on it.
        chunk = 100 if interval == 0 else 1
        for start in range(1, count + 1, chunk):
            events = []
            for n in range(start, min(start + chunk, count + 1)):
                kind = "turn.completed" if n == count else "item.completed"
                event = make_event(n, kind)
                if interval:
                    event["sent_ns"] = time.time_ns()
                events.append((n, event))
            await publish(events)
            await asyncio.sleep(interval)

    @app.get("/bench/readers")
    async def bench_readers(thread: str = THREAD) -> dict[str, int]:
        current["thread"] = thread
        return {"readers": readers()}

    @app.post("/bench/publish")
    async def bench_publish(request: Request) -> dict[str, str]:
        args = await request.json()
        app.state.publisher = asyncio.create_task(
            publisher(args["count"], args.get("interval", 0.0)))
        return {"status": "started"}

    return app


def serve(variant: str, port: int, retention: int) -> None:
    import uvicorn

    if variant != "bridge":
        uvicorn.run(build_app(variant), host="127.0.0.1", port=port, log_level="warning",
                    access_log=False)
        return
    from otel_events.bridge import BridgeSettings, create_server

    # As deployed: the bridge's own server, its default settings (a stalled client's
    # writes timed out after 30 s, once per connection) but for retention.
    server = create_server(BridgeSettings(port=port, retention_count=retention,
                                          retention_age=None))
    build_app(variant, server.config.app)
    server.run()


class Server:
    def __init__(self, variant: str, retention: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.variant = variant
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", variant, "--port", str(self.port),
             "--retention", str(retention)])
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{variant} server did not start") from None
                time.sleep(0.05)

    def path(self) -> str:
        """The stream of a new thread (for the bridge; the baselines have one stream)."""
        self.runs = getattr(self, "runs", 0) + 1
        return f"/v1/threads/run-{self.runs}/events" if self.variant == "bridge" else "/events"

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the client side -------------------------------------------------------------------


async def _request(port: int, method: str, path: str, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Content-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1]


async def _wait_readers(port: int, count: int, path: str) -> None:
    thread = path.split("/")[3] if path.startswith("/v1/") else THREAD
    while True:
        body = await _request(port, "GET", f"/bench/readers?thread={thread}")
        # Chunked or not, the JSON object is in there.
        found = re.search(rb'"readers":(\d+)', body)
        if found and int(found.group(1)) >= count:
            return
        await asyncio.sleep(0.02)


async def _open_stream(port: int, path: str, rcvbuf: int | None = None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return reader, writer


async def _consume(reader: asyncio.StreamReader, latencies: list[int] | None) -> int:
    count, tail = 0, b""
    while True:
        chunk = await reader.read(1 << 20)
        if not chunk:
            raise RuntimeError("stream ended early")
        now = time.time_ns()
        data = tail + chunk
        count += data.count(ITEM) - tail.count(ITEM)
        if latencies is not None:
            latencies.extend(now - int(m) for m in _SENT_NS.findall(chunk))
        if END in data:
            return count + 1
        tail = data[-40:]


async def _fan_out(port: int, path: str, clients: int, count: int,
                   interval: float) -> tuple[float, int, list[int]]:
    streams = [await _open_stream(port, path) for _ in range(clients)]
    await _wait_readers(port, clients, path)
    latencies: list[int] = []
    start = time.perf_counter()
    await _request(port, "POST", "/bench/publish",
                   orjson.dumps({"count": count, "interval": interval}))
    counts = await asyncio.wait_for(asyncio.gather(
        *(_consume(r, latencies if interval else None) for r, _ in streams)), 120)
    elapsed = time.perf_counter() - start
    for _, writer in streams:
        writer.close()
    return elapsed, min(counts), latencies


def _client(conn: Connection, *args: Any) -> None:
    conn.send(asyncio.run(_fan_out(*args)))


def run_clients(port: int, path: str, clients: int, count: int,
                interval: float = 0.0) -> tuple[float, int, list[int]]:
    parent, child = mp.Pipe()
    proc = mp.Process(target=_client, args=(child, port, path, clients, count, interval))
    proc.start()
    result: tuple[float, int, list[int]] = parent.recv()
    proc.join()
    return result


async def _stalled(port: int, path: str, count: int, rss: Any) -> tuple[list[int], int]:
    """RSS growth of the server each quarter of the flow, and what the reader got."""
    # The stalled client connects with a small receive buffer and never reads.
    stalled = await _open_stream(port, path, rcvbuf=4096)
    reader, writer = await _open_stream(port, path)
    await _wait_readers(port, 2, path)
    before = rss()
    await _request(port, "POST", "/bench/publish",
                   orjson.dumps({"count": count, "interval": 0.0}))
    growth: list[int] = []
    received, tail, step = 0, b"", count // 4

    async def consume() -> None:
        nonlocal received, tail
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                raise RuntimeError("stream ended early")
            data = tail + chunk
            received += data.count(ITEM) - tail.count(ITEM)
            ended = END in data
            while len(growth) < 3 and received >= step * (len(growth) + 1):
                growth.append(rss() - before)
            if ended:
                received += 1
                return
            tail = data[-40:]

    await asyncio.wait_for(consume(), 120)
    growth.append(rss() - before)
    writer.close()
    stalled[1].close()
    return growth, received


# -- the run ---------------------------------------------------------------------------


def publisher_cost(count: int = 20_000) -> tuple[float, float]:
    """Microseconds per event: the bridge's ingest work, and the bare variants' encoding."""
    from otel_events.bridge.batch import parse_batch
    from otel_events.bridge.memory import MemoryThread

    thread = MemoryThread("cost", 4096, None, dedup_window=4096)
    lines = [orjson.dumps(make_event(n)) for n in range(1, count + 1)]
    start = time.perf_counter()
    for line in lines:
        for parsed in parse_batch(line, "application/x-ndjson", "bench").events:
            thread.publish(parsed.event, parsed.digest, parsed.raw)
    bridge = (time.perf_counter() - start) / count * 1e6
    events = [make_event(n) for n in range(1, count + 1)]
    start = time.perf_counter()
    for n, event in enumerate(events, 1):
        data = orjson.dumps(event)
        b"id: %d\nevent: %s\ndata: %s\n\n" % (n, event["type"].encode(), data)
    bare = (time.perf_counter() - start) / count * 1e6
    return bridge, bare


def _rotated(names: list[str], turn: int) -> list[str]:
    """The variants in the order of round ``turn`` (each goes first in turn), so that a
    change in the machine's load, or running right after another, falls on all alike."""
    shift = turn % len(names)
    return names[shift:] + names[:shift]


def _ratio(per_round: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median of the per-round ratios ``name / baseline`` (steadier than a ratio of
    two medians on a shared machine, see ``measure.py``)."""
    return statistics.median(a / b for a, b in zip(per_round[name], per_round[baseline],
                                                    strict=True))


def measure_fan_out(repeats: int = 5) -> dict[int, dict[str, list[float]]]:
    """Deliveries per second, per round, for each number of subscribers and variant."""
    rates: dict[int, dict[str, list[float]]] = {clients: {} for clients in FAN_OUT}
    servers = {variant: Server(variant, retention=32_768) for variant in VARIANTS}
    try:
        for turn in range(repeats):
            for clients, count in FAN_OUT.items():
                for variant in _rotated(list(VARIANTS), turn):
                    server = servers[variant]
                    elapsed, got, _ = run_clients(server.port, server.path(), clients, count)
                    assert got == count, f"{variant}: a client got {got} of {count}"
                    rates[clients].setdefault(variant, []).append(clients * count / elapsed)
    finally:
        for server in servers.values():
            server.stop()
    return rates


def print_fan_out(rates: dict[int, dict[str, list[float]]]) -> None:
    repeats = len(rates[next(iter(rates))][VARIANTS[0]])
    print(f"\nFan-out throughput (event deliveries/s, median of {repeats} rounds; ratios: "
          f"median of the per-round ratios), {os.cpu_count()} CPUs, clients in one other "
          "process")
    print(f"{'subscribers':>11} " + " ".join(f"{v:>14}" for v in VARIANTS)
          + "   bridge/sse-starlette  bridge/bare  bridge/bare-batched")
    for clients, per_round in rates.items():
        row = [statistics.median(per_round[v]) for v in VARIANTS]
        print(f"{clients:>11} " + " ".join(f"{r:>14,.0f}" for r in row)
              + f"   {_ratio(per_round, 'bridge', 'sse-starlette'):>20.2f}x"
              f" {_ratio(per_round, 'bridge', 'bare'):>11.2f}x"
              f" {_ratio(per_round, 'bridge', 'bare-batched'):>19.2f}x")


#: Subscribers, and events each round.
FAN_OUT = {1: 20_000, 10: 5_000, 100: 1_000}


def main(part: str = "all") -> None:
    if part == "latency":
        print_latency(measure_latency())
        return
    if part == "fanout":
        print_fan_out(measure_fan_out())
        return
    memory: dict[str, tuple[list[int], int]] = {}
    rates = measure_fan_out()
    latency = measure_latency()
    for variant in VARIANTS:
        server = Server(variant, retention=4096)
        try:
            memory[variant] = asyncio.run(
                _stalled(server.port, server.path(), 100_000, server.rss))
        finally:
            server.stop()

    ingest_us, encode_us = publisher_cost()
    print(f"\nPublisher work per event: bridge {ingest_us:.1f} us (JSON, checks, validation, "
          f"numbering, encoding, framing, state fold); bare {encode_us:.1f} us (encoding, "
          "framing); sse-starlette none (each client serialises). With one subscriber the "
          "bridge is bound by that work, not by fan-out.")
    print_fan_out(rates)
    print_latency(latency)
    print("\nServer RSS growth while 100,000 events flow past one stalled subscriber "
          "(one other subscriber reading), MiB after 25k / 50k / 75k / 100k events")
    for variant in VARIANTS:
        growth, got = memory[variant]
        print(f"  {variant:>13}: " + " / ".join(f"{g / 2**20:6.1f}" for g in growth)
              + f"   (reader got {got:,} events)")

Latency = dict[tuple[str, int], list[tuple[float, float]]]


def measure_latency(rounds: int = 5) -> Latency:
    """p50 and p99 publish-to-receipt, ms, each round, on fresh servers with the default
    retention (1000 events a round and variant: a round's p99 is its 10th slowest).

    The event is stamped before the bridge's ingest work (JSON, checks, validation),
    which is counted in.
    """
    latency: Latency = {}
    servers = {variant: Server(variant, retention=4096) for variant in VARIANTS}
    try:
        for turn in range(rounds):
            for clients in (1, 10):
                for variant in _rotated(list(VARIANTS), turn):
                    server = servers[variant]
                    _, _, lat = run_clients(server.port, server.path(), clients, 1000,
                                            interval=0.002)
                    lat.sort()
                    latency.setdefault((variant, clients), []).append(
                        (lat[len(lat) // 2] / 1e6, lat[int(len(lat) * 0.99)] / 1e6))
    finally:
        for server in servers.values():
            server.stop()
    return latency


def print_latency(latency: Latency) -> None:
    rounds = len(latency[VARIANTS[0], 1])
    print(f"\nPublish-to-receipt latency, one event every 2 ms, ms: medians of {rounds} "
          "rounds (ratios to sse-starlette: medians of the per-round ratios)")
    for clients in (1, 10):
        base = latency["sse-starlette", clients]
        print(f"  {clients} subscriber(s)")
        for variant in VARIANTS:
            rows = latency[variant, clients]
            p50s, p99s = [p50 for p50, _ in rows], [p99 for _, p99 in rows]
            r50 = statistics.median(a / b for a, (b, _) in zip(p50s, base, strict=True))
            r99 = statistics.median(a / b for a, (_, b) in zip(p99s, base, strict=True))
            print(f"  {variant:>15}: p50 {statistics.median(p50s):6.2f} ({r50:.2f}x)  "
                  f"p99 {statistics.median(p99s):6.2f} ({r99:.2f}x)   "
                  f"p99 per round {' '.join(f'{p:.2f}' for p in p99s)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve")
    parser.add_argument("--port", type=int)
    parser.add_argument("--retention", type=int, default=4096)
    parser.add_argument("--part", choices=("all", "latency", "fanout"), default="all")
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.port, options.retention)
    else:
        main(options.part)
