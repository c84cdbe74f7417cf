"""Item 1: clients that stop reading pin a bounded amount of memory and are dropped for
real; retention is bounded in bytes, per thread and in total."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.adversarial.support import (
    ESTABLISHED,
    get_request,
    server_side_of,
    server_sockets,
    settle,
    spawn_bridge,
    tiny_window_client,
)
from tests.bridge_support import (
    ndjson,
    parse_block,
    read_events,
    running_bridge,
    seq_of,
    wait_for,
)

MiB = 1024 * 1024
WRITE_CAP = 256 * 1024  # BridgeSettings.max_write_bytes's default
UVICORN_HIGH_WATER = 64 * 1024  # the transport's buffer before uvicorn waits to drain


def big_events(count: int, size: int, seq0: int = 1) -> list[dict[str, object]]:
    return [{"type": "item.updated", "seq": seq0 + n,
             "item": {"id": f"i{seq0 + n}", "type": "x", "text": "y" * size}}
            for n in range(count)]


def test_rss_with_stalled_clients_grows_by_about_their_write_cap(tmp_path: Path) -> None:
    clients, events, size = 20, 512, 64 * 1024  # the case: 20 x 512 x 64 KB
    bridge = spawn_bridge(tmp_path, "--max-body", str(16 * MiB), "--heartbeat", "600")
    sockets: list[socket.socket] = []
    try:
        with httpx.Client(base_url=bridge.url, timeout=30) as client:
            for start in range(0, events, 128):
                response = client.post("/v1/threads/big/events",
                                       content=ndjson(big_events(128, size, start + 1)),
                                       headers={"content-type": "application/x-ndjson"})
                assert response.status_code == 200, response.text
        # One client reads it all first, so whatever is made once (frames shared by every
        # client of a batch) is in the baseline: what grows after is per client.
        with httpx.Client(base_url=bridge.url, timeout=30) as client, \
                client.stream("GET", "/v1/threads/big/events") as stream:
            seen = 0
            for line in stream.iter_lines():
                seen += line.startswith("data:")
                if seen == events:
                    break
        baseline = settle(bridge.rss)
        request = get_request("/v1/threads/big/events")
        sockets = [tiny_window_client(bridge.port, request) for _ in range(clients)]

        def all_stalled() -> bool:
            # Every connection has bytes it cannot deliver: the bridge wrote to it and
            # now waits on it.
            stalled = [s for s in server_sockets(bridge.port)
                       if s.state == ESTABLISHED and s.tx_queue > 0]
            return len(stalled) >= clients

        wait_for(all_stalled, 30, "every stalled client's send queue to fill")
        stalled_rss = settle(bridge.rss)
        growth = stalled_rss - baseline
        for sock in sockets:
            sock.close()
        released_rss = settle(bridge.rss)
    finally:
        for sock in sockets:
            sock.close()
        bridge.stop()
    per_client = growth / clients
    print(f"\nRSS: {baseline / MiB:.1f} MiB, with {clients} stalled clients "
          f"{stalled_rss / MiB:.1f} MiB (+{per_client / 1024:.0f} KiB per client, write cap "
          f"{WRITE_CAP // 1024} KiB), after they left {released_rss / MiB:.1f} MiB")
    # About the cap per client (the write, uvicorn's buffer, bookkeeping), not a replay.
    assert growth <= clients * (WRITE_CAP + UVICORN_HIGH_WATER) * 1.5 + 8 * MiB, (
        f"{per_client / MiB:.1f} MiB per stalled client")


async def test_a_client_past_the_send_timeout_is_reset_and_its_socket_released() -> None:
    with running_bridge(send_timeout=0.5, heartbeat=600) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        for start in range(0, 400, 100):  # 4 MB: far more than socket buffers hold
            assert bridge.post("th", big_events(100, 10_000, start + 1)).status_code == 200
        client = tiny_window_client(port, get_request("/v1/threads/th/events"))
        try:
            wait_for(lambda: bridge.broker.readers("th") == 1, what="the client reading")
            # Released for real: the server's socket is gone (a close that waits for the
            # unsent bytes to drain would keep it, ESTABLISHED, for as long as the client
            # does not read), and the client sees a reset, not an orderly end.
            wait_for(lambda: server_side_of(port, client) is None, 15,
                     "the server's socket of the stalled client to be released")
            assert bridge.broker.readers("th") == 0
            client.settimeout(10)
            with pytest.raises(ConnectionResetError):
                while client.recv(1 << 20):
                    pass
        finally:
            client.close()


def read_chunks(sock: socket.socket, want_events: int) -> list[bytes]:
    """The HTTP/1.1 chunks of a chunked response, until ``want_events`` events came."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower()
    chunks: list[bytes] = []
    events = 0
    while events < want_events:
        while b"\r\n" not in buffer:
            buffer += sock.recv(65536)
        size_line, buffer = buffer.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(buffer) < size + 2:
            buffer += sock.recv(65536)
        chunk, buffer = buffer[:size], buffer[size + 2:]
        chunks.append(chunk)
        events += chunk.count(b"\ndata: ")
    return chunks


def test_writes_to_a_client_are_cut_by_bytes_not_only_by_count() -> None:
    cap = 64 * 1024
    with running_bridge(max_write_bytes=cap, heartbeat=600) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        bridge.post("th", big_events(100, 10_000))  # 1 MB, one batch by count
        bridge.post("th", big_events(1, 200_000, 101))  # one event over the cap alone
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(get_request("/v1/threads/th/events"))
            chunks = read_chunks(sock, 101)
    sizes = []
    for chunk in chunks:
        frames = [parse_block(block) for block in chunk.decode().split("\n\n") if block]
        data = [len(f.data or "") for f in frames if f.data is not None]
        if data:
            sizes.append((len(data), sum(data)))
    assert sum(count for count, _ in sizes) == 101
    for count, total in sizes:
        assert total <= cap or count == 1, sizes  # a write holds at least one event
    assert len(sizes) >= 1_000_000 // cap


async def test_retention_is_bounded_in_bytes_per_thread_and_in_total() -> None:
    with running_bridge(retention_bytes=200_000, retention_total_bytes=300_000) as bridge:
        assert bridge.post("a", big_events(50, 10_000)).status_code == 200  # ~500 KB
        broker = bridge.broker
        thread = bridge.thread_state("a")
        held = [thread.log.get(seq) for seq in range(thread.log.first_seq,
                                                     thread.log.next_seq)]
        assert thread.bytes == sum(len(e.json) for e in held if e is not None)
        assert 180_000 < thread.bytes <= 200_000
        assert thread.log.next_seq - 1 == 50 and thread.log.get(50) is not None
        # The thread's start is gone: a new client gets an explicit reset, never a gap;
        # one resuming inside what is held gets the rest exactly.
        first_held = thread.log.first_seq
        async with httpx.AsyncClient(base_url=bridge.url) as client:
            got = await read_events(client, "/v1/threads/a/events", 1)
            assert got[0].event == "reset" and got[0].json()["reason"] == "history_expired"
            epoch = got[0].json()["epoch"]
            rest = await read_events(client, "/v1/threads/a/events", 51 - first_held,
                                     headers={"Last-Event-ID": f"{epoch}:{first_held - 1}"})
        assert [seq_of(m.id) for m in rest] == list(range(first_held, 51))
        # Over all threads: the biggest are trimmed first (here "a"), to 90 % of the bound.
        for name in ("b", "c"):
            assert bridge.post(name, big_events(15, 10_000)).status_code == 200
        assert broker.budget.total <= 300_000
        assert broker.budget.total == sum(t.bytes for t in broker)
        assert bridge.thread_state("c").log.get(15) is not None
        assert bridge.thread_state("a").bytes < 150_000


def test_the_byte_bounds_are_flags_of_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "otel_events", "bridge", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 0, result.stderr
    for flag in ("--retention-bytes", "--retention-total-bytes", "--max-write-bytes",
                 "--send-timeout"):
        assert flag in result.stdout


async def test_byte_counts_stay_exact_whatever_forgets_an_event() -> None:
    # Events leave by count (the ring), by bytes, by the total and with their thread;
    # the counts must follow each, or the bounds drift.
    from otel_events.bridge.batch import parse_batch
    from otel_events.bridge.memory import MemoryBroker

    broker = MemoryBroker(retention_count=8, retention_bytes=30_000,
                          retention_total_bytes=50_000, idle_expiry=0.001)

    def held(thread_id: str) -> int:
        thread = broker.get(thread_id)
        assert thread is not None
        log = thread.log
        return sum(len(e.json) for s in range(log.first_seq, log.next_seq)
                   if (e := log.get(s)) is not None)

    for round_, size in enumerate((100, 5_000, 9_000, 20_000)):
        for name in ("a", "b", "c"):
            body = ndjson(big_events(12, size, 12 * round_ + 1))
            await broker.append(name, parse_batch(body, "application/x-ndjson", name).events)
            thread = broker.get(name)
            assert thread is not None and thread.bytes == held(name)
        # The total holds even when one event per thread is more than it.
        assert broker.budget.total == sum(t.bytes for t in broker) <= 50_000
    assert broker.sweep(now=float("inf")) == 3  # every thread idle: forgotten
    assert broker.budget.total == 0


@pytest.mark.parametrize("how", ["pipelined", "connection-close", "keep-alive"])
def test_a_client_that_does_not_read_an_ordinary_response_is_reset(how: str) -> None:
    # Not only streams: uvicorn waits without limit for a response to drain, before
    # the next pipelined one and in a polite close, and its keep-alive close waits too.
    with running_bridge(send_timeout=1.0, header_timeout=1.0) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        request = get_request("/openapi.json")  # ~27 KB
        if how == "pipelined":
            request *= 400  # 11 MB of answers, more than the kernel buffers hold
        elif how == "connection-close":
            request = get_request("/openapi.json", extra="Connection: close\r\n")
        client = tiny_window_client(port, request, rcvbuf=1024)
        try:
            wait_for(lambda: (s := server_side_of(port, client)) is not None
                     and s.tx_queue > 0, 10, "the server to have written")

            def released() -> bool:
                # Gone, or an orphan that no process holds (after a polite close whose
                # last bytes the kernel still offers): the bridge keeps nothing of it.
                found = server_side_of(port, client)
                return found is None or found.inode == 0

            wait_for(released, 15, "the bridge to let go of the client that does not read")
            assert not [c for c in bridge.server.server_state.connections]
        finally:
            client.close()
