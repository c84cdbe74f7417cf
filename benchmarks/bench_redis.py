"""Two bridge replicas on Redis, beside the in-memory bridge and Centrifugo, in one run.

Variants, each a set of real server processes on loopback:

* ``memory``: one ``otel-events bridge`` process (the in-memory broker).
* ``redis``: two ``otel-events bridge --broker redis://...`` replicas on one
  redis-server. Events are posted to replica A; subscribers are split between A and B
  (a single subscriber reads B, so every event crosses Redis).
* ``centrifugo``: two Centrifugo v6.9.1 nodes with the Redis engine (same redis-server),
  a channel namespace with history and forced recovery (what resumable streams need),
  subscribers on its unidirectional SSE transport, publishing through its HTTP API
  (``/api/batch``, ``/api/publish``). Built by ``scripts/install-centrifugo.sh``.

Every variant gets the same events (about 350 bytes of JSON), published over HTTP from
a publisher process, and read by subscribers in a client process (raw sockets, markers
counted in the bytes). Variants take turns within each repetition, so a change in the
machine's load falls on all alike; figures are ratios within the run.

* Fan-out: events/s delivered to 1, 10, 100 subscribers of one stream, published in
  batches of 100 as fast as the server takes them.
* Latency: publish-to-receipt p50/p99, one event per request every 2 ms (500/s).
* Redis memory per retained event: ``used_memory`` growth per event over 4096 events
  held by one thread (stream, de-duplication window, checkpoint), and the same for
  Centrifugo's history of 4096 publications.

Run: ``python benchmarks/bench_redis.py`` (several minutes; builds Centrifugo first if
it is not in .cache/bin).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
CENTRIFUGO = ROOT / ".cache" / "bin" / "centrifugo"
API_KEY = "bench-api-key"
NAMESPACE = "bench"
MARK = b'"mark":"m"'
END = b'"mark":"end"'
_SENT_NS = re.compile(rb'"sent_ns":(\d+)')
VARIANTS = ("memory", "redis", "centrifugo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def make_event(n: int, last: bool = False, sent_ns: int | None = None) -> dict[str, Any]:
    """A realistic event of about 350 bytes, with a marker the clients count."""
    event: dict[str, Any] = {
        "type": "item.completed", "turn_id": "turn_1", "seq": n,
        "timestamp": "2026-11-25T10:00:00.000000Z",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
        "item": {"id": f"item_{n}", "type": "command_execution",
                 "description": "run the test suite of the parser module",
                 "status": "completed", "started_at": "2026-11-25T10:00:00.000000Z",
                 "completed_at": "2026-11-25T10:00:01.000000Z", "duration_ms": 1000.0},
        "mark": "end" if last else "m"}
    if sent_ns is not None:
        event["sent_ns"] = sent_ns
    return event


# -- servers -------------------------------------------------------------------------------


class Process:
    def __init__(self, args: list[str], port: int, what: str, **options: Any) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
        wait_port(port, self.proc, what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_redis(directory: Path) -> Process:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: run scripts/install-redis.sh")
    port = free_port()
    return Process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(directory)], port, "redis-server")


def start_bridge(broker: str | None, retention: int) -> Process:
    port = free_port()
    args = [sys.executable, "-m", "otel_events", "bridge", "--port", str(port),
            "--retention", str(retention), "--retention-age", "0", "--log-level", "warning"]
    if broker is not None:
        args += ["--broker", broker]
    return Process(args, port, "bridge", cwd=ROOT)


def start_centrifugo(redis_port: int, directory: Path, history: int) -> Process:
    port = free_port()
    config = {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "error"},
        "engine": {"type": "redis",
                   "redis": {"address": [f"redis://127.0.0.1:{redis_port}"]}},
        "http_api": {"key": API_KEY},
        "uni_sse": {"enabled": True},
        "client": {"allow_anonymous_connect_without_token": True},
        "channel": {"namespaces": [{
            "name": NAMESPACE, "history_size": history, "history_ttl": "3600s",
            "force_recovery": True, "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True}]},
    }
    path = directory / f"centrifugo-{port}.json"
    path.write_text(json.dumps(config))
    return Process([str(CENTRIFUGO), "--config", str(path)], port, "centrifugo")


class Variant:
    """Where a variant's publisher posts and its subscribers connect."""

    def __init__(self, name: str, publish: Process, subscribe: list[Process]) -> None:
        self.name = name
        self.publish_port = publish.port
        self.subscribe_ports = [p.port for p in subscribe]
        self.runs = 0

    def next_stream(self) -> str:
        self.runs += 1
        return f"run-{self.runs}"

    def ports_for(self, clients: int) -> list[int]:
        if clients == 1:
            return [self.subscribe_ports[-1]]  # the replica the publisher does not use
        return [self.subscribe_ports[n % len(self.subscribe_ports)] for n in range(clients)]

    def stream_path(self, stream: str) -> str:
        if self.name == "centrifugo":
            connect = json.dumps({"subs": {f"{NAMESPACE}:{stream}": {}}}, separators=(",", ":"))
            return "/connection/uni_sse?cf_connect=" + quote(connect, safe="")
        return f"/v1/threads/{stream}/events"


# -- the publisher -------------------------------------------------------------------------


def publish(variant: str, port: int, stream: str, count: int, interval: float) -> None:
    """Posts ``count`` events: batches of 100 as fast as taken, or one every ``interval``."""
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60.0) as client:
        batch = 1 if interval else 100
        next_at = time.perf_counter()
        for start in range(1, count + 1, batch):
            numbers = range(start, min(start + batch, count + 1))
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            events = [make_event(n, last=n == count,
                                 sent_ns=time.time_ns() if interval else None)
                      for n in numbers]
            if variant == "centrifugo":
                channel = f"{NAMESPACE}:{stream}"
                if len(events) == 1:
                    response = client.post("/api/publish", headers={"X-API-Key": API_KEY},
                                           content=orjson.dumps(
                                               {"channel": channel, "data": events[0]}))
                else:
                    response = client.post("/api/batch", headers={"X-API-Key": API_KEY},
                                           content=orjson.dumps({"commands": [
                                               {"publish": {"channel": channel, "data": e}}
                                               for e in events]}))
            else:
                response = client.post(
                    f"/v1/threads/{stream}/events",
                    content=b"".join(orjson.dumps(e) + b"\n" for e in events),
                    headers={"content-type": "application/x-ndjson"})
            if response.status_code != 200 or b'"error"' in response.content[:200]:
                raise RuntimeError(f"{variant} refused a publish: {response.status_code} "
                                   f"{response.text[:200]}")


# -- the subscribers -----------------------------------------------------------------------


async def _open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    # The first bytes (headers, then `retry:` or Centrifugo's connect reply) say the
    # stream is open and subscribed.
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"subscribe refused: {head[:100]!r}")
    await reader.read(1 << 16)
    return reader, writer


async def _consume(reader: asyncio.StreamReader, latencies: list[int] | None) -> int:
    count, tail = 0, b""
    while True:
        chunk = await reader.read(1 << 20)
        if not chunk:
            raise RuntimeError("stream ended early")
        now = time.time_ns()
        data = tail + chunk
        count += data.count(MARK) - tail.count(MARK)
        if latencies is not None:
            latencies.extend(now - int(m) for m in _SENT_NS.findall(chunk))
        if END in data:
            return count + 1
        tail = data[-20:]


async def _fan_out(variant: Variant, stream: str, clients: int, count: int,
                   interval: float) -> tuple[float, int, list[int]]:
    path = variant.stream_path(stream)
    streams = await asyncio.gather(*(_open(port, path) for port in variant.ports_for(clients)))
    if variant.name == "centrifugo":
        # Its subscription is made with the connection; give the nodes' Redis pub/sub
        # subscription a moment to be in place before publishing (the bridges replay).
        await asyncio.sleep(0.2)
    latencies: list[int] = []
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    publisher = loop.run_in_executor(None, publish, variant.name, variant.publish_port, stream,
                                     count, interval)
    counts = await asyncio.wait_for(asyncio.gather(
        *(_consume(r, latencies if interval else None) for r, _ in streams)), 300)
    elapsed = time.perf_counter() - start
    await publisher
    for _, writer in streams:
        writer.close()
    return elapsed, min(counts), latencies


def _client(conn: Connection, *args: Any) -> None:
    conn.send(asyncio.run(_fan_out(*args)))


def run_clients(variant: Variant, clients: int, count: int,
                interval: float = 0.0) -> tuple[float, int, list[int]]:
    parent, child = mp.Pipe()
    # A new stream each run (named here: the client process gets a copy of ``variant``).
    proc = mp.Process(target=_client, args=(child, variant, variant.next_stream(), clients,
                                            count, interval))
    proc.start()
    result: tuple[float, int, list[int]] = parent.recv()
    proc.join()
    return result


# -- Redis memory per retained event -------------------------------------------------------


def used_memory(port: int) -> int:
    import redis

    client = redis.Redis(port=port)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def bridge_memory_per_event(redis_port: int, events: int = 4096) -> float:
    async def fill() -> float:
        from otel_events.bridge.batch import parse_batch
        from otel_events.bridge.redis import RedisBroker

        broker = RedisBroker(f"redis://127.0.0.1:{redis_port}/0", prefix="memory-probe",
                             retention_count=events)
        before = used_memory(redis_port)
        for start in range(1, events + 1, 100):
            body = b"".join(orjson.dumps(make_event(n)) + b"\n"
                            for n in range(start, min(start + 100, events + 1)))
            await broker.append("probe", parse_batch(body, "application/x-ndjson",
                                                     "probe").events)
        # More than the retention, so the count includes trimming (steady state).
        for start in range(events + 1, 2 * events + 1, 100):
            body = b"".join(orjson.dumps(make_event(n)) + b"\n"
                            for n in range(start, min(start + 100, 2 * events + 1)))
            await broker.append("probe", parse_batch(body, "application/x-ndjson",
                                                     "probe").events)
        after = used_memory(redis_port)
        await broker.aclose()
        return (after - before) / events

    return asyncio.run(fill())


def centrifugo_memory_per_event(redis_port: int, api_port: int, events: int = 4096) -> float:
    before = used_memory(redis_port)
    with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
        for start in range(1, 2 * events + 1, 100):
            commands = [{"publish": {"channel": f"{NAMESPACE}:memory-probe",
                                     "data": make_event(n)}}
                        for n in range(start, min(start + 100, 2 * events + 1))]
            client.post("/api/batch", headers={"X-API-Key": API_KEY},
                        content=orjson.dumps({"commands": commands})).raise_for_status()
    return (used_memory(redis_port) - before) / events


# -- the run -------------------------------------------------------------------------------


def start_variants(directory: Path, retention: int,
                   wanted: list[str]) -> tuple[dict[str, Variant], list[Process]]:
    """A redis-server and every variant's servers on it; Redis first in the list."""
    redis = start_redis(directory)
    url = f"redis://127.0.0.1:{redis.port}/0"
    processes = [redis]
    try:
        memory = start_bridge(None, retention)
        replica_a, replica_b = start_bridge(url, retention), start_bridge(url, retention)
        processes += [memory, replica_a, replica_b]
        variants = {"memory": Variant("memory", memory, [memory]),
                    "redis": Variant("redis", replica_a, [replica_a, replica_b])}
        if "centrifugo" in wanted:
            node_a = start_centrifugo(redis.port, directory, retention)
            node_b = start_centrifugo(redis.port, directory, retention)
            processes += [node_a, node_b]
            variants["centrifugo"] = Variant("centrifugo", node_a, [node_a, node_b])
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return variants, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-centrifugo", action="store_true")
    options = parser.parse_args()
    variants_wanted = [v for v in VARIANTS
                       if not (v == "centrifugo" and options.skip_centrifugo)]
    if "centrifugo" in variants_wanted and not CENTRIFUGO.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "install-centrifugo.sh")], check=True)
    counts = {1: 20_000, 10: 5_000, 100: 1_000}
    rates: dict[tuple[str, int], list[float]] = {}
    latencies: dict[tuple[str, int], list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        # Throughput: retention above the largest run, so no subscriber is ever reset.
        variants, processes = start_variants(directory, 32_768, variants_wanted)
        try:
            for _ in range(options.repeats):
                for clients, count in counts.items():
                    for name, variant in variants.items():
                        elapsed, got, _ = run_clients(variant, clients, count)
                        assert got == count, f"{name}: a client got {got} of {count}"
                        rates.setdefault((name, clients), []).append(
                            clients * count / elapsed)
        finally:
            for process in reversed(processes):
                process.stop()
        # Latency and memory on fresh servers with the default retention: the heaps the
        # throughput runs left (hundreds of thousands of events) would add GC pauses.
        variants, processes = start_variants(directory, 4096, variants_wanted)
        try:
            for _ in range(2):
                for clients in (1, 100):
                    for name, variant in variants.items():
                        _, got, lat = run_clients(variant, clients, 1000, interval=0.002)
                        assert got == 1000, f"{name}: a client got {got} of 1000"
                        latencies.setdefault((name, clients), []).extend(lat)
            redis_port = processes[0].port
            per_event = bridge_memory_per_event(redis_port)
            centrifugo_per_event = (
                centrifugo_memory_per_event(redis_port, variants["centrifugo"].publish_port)
                if "centrifugo" in variants else None)
        finally:
            for process in reversed(processes):
                process.stop()

    names = list(variants)
    throughput = {key: statistics.median(values) for key, values in rates.items()}
    print(f"\nFan-out (events delivered/s, median of {options.repeats}; {os.cpu_count()} CPUs; "
          "publisher and clients in two other processes)")
    print(f"{'subscribers':>11} " + " ".join(f"{n:>12}" for n in names)
          + "   redis/memory" + ("   redis/centrifugo" if "centrifugo" in names else ""))
    for clients in counts:
        row = [throughput[n, clients] for n in names]
        line = f"{clients:>11} " + " ".join(f"{r:>12,.0f}" for r in row)
        line += f"   {row[1] / row[0]:>11.2f}x"
        if "centrifugo" in names:
            line += f"   {row[1] / row[2]:>15.2f}x"
        print(line)
    print("\nPublish-to-receipt, one event per request every 2 ms: p50 / p99 ms "
          "(p99 ratio to memory" + (", to centrifugo)" if "centrifugo" in names else ")"))
    for clients in (1, 100):
        print(f"  {clients} subscriber(s)")
        summary = {}
        for name in names:
            values = sorted(latencies[name, clients])
            summary[name] = (values[len(values) // 2] / 1e6,
                             values[int(len(values) * 0.99)] / 1e6)
        for name in names:
            p50, p99 = summary[name]
            ratios = f"{p99 / summary['memory'][1]:.2f}x"
            if "centrifugo" in names:
                ratios += f", {p99 / summary['centrifugo'][1]:.2f}x"
            print(f"  {name:>12}: p50 {p50:6.2f}  p99 {p99:6.2f}  ({ratios})")
    print(f"\nRedis memory per retained event (used_memory growth / 4096 events of "
          f"~350 B JSON, steady state): bridge {per_event:,.0f} B"
          + (f", centrifugo {centrifugo_per_event:,.0f} B"
             if centrifugo_per_event is not None else ""))


if __name__ == "__main__":
    main()
