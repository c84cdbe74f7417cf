"""Item 5: connections that trickle their request head or body, or send nothing, are
dropped after the head and body deadlines, while normal requests keep being served; the
number of connections served at once can be capped."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import httpx

from tests.adversarial.support import get_request
from tests.bridge_support import running_bridge, turn_events, wait_for


class Tricklers:
    """Connections that each send one byte every ``every`` seconds from a thread, and
    note when the server dropped them (a reset, an end of stream, a 408)."""

    def __init__(self, port: int, heads: int, bodies: int, idle: int,
                 every: float = 0.2) -> None:
        self.every = every
        self.pending: dict[socket.socket, bytes] = {}
        self.dropped: dict[socket.socket, float] = {}
        self.started = time.monotonic()
        for _ in range(heads):  # a head that never ends
            self._open(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                       b"X-Slow: " + b"a" * 10_000)
        body_head = (b"POST /v1/threads/slow/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(bodies):  # a body that never ends
            self._open(port, body_head, b" " * 100_000)
        for _ in range(idle):  # nothing at all
            self._open(port, b"", b"")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self, port: int, first: bytes, rest: bytes) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        if first:
            sock.send(first)
        self.pending[sock] = rest

    def _drop(self, sock: socket.socket) -> None:
        self.dropped.setdefault(sock, time.monotonic() - self.started)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.dropped) < len(self.pending):
            live = [s for s in self.pending if s not in self.dropped]
            readable, _, _ = select.select(live, [], [], self.every)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    self._drop(sock)
            for sock in live:
                rest = self.pending[sock]
                if sock in self.dropped or not rest:
                    continue
                try:
                    sock.send(rest[:1])
                    self.pending[sock] = rest[1:]
                except OSError:
                    self._drop(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.pending:
            sock.close()


def test_trickling_clients_are_dropped_while_normal_requests_are_served() -> None:
    with running_bridge(header_timeout=2.0, body_timeout=3.0, heartbeat=600) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        tricklers = Tricklers(port, heads=60, bodies=60, idle=30)
        try:
            # Normal requests are served while the tricklers hold their connections.
            served: list[float] = []
            with httpx.Client(base_url=bridge.url, timeout=10) as client:
                for n in range(20):
                    assert client.get("/healthz").status_code == 200
                    response = client.post(f"/v1/threads/normal-{n}/events",
                                           content=b'{"type":"turn.started"}\n',
                                           headers={"content-type": "application/x-ndjson"})
                    assert response.status_code == 200
                    served.append(time.monotonic() - tricklers.started)
            wait_for(lambda: len(tricklers.dropped) == len(tricklers.pending), 20,
                     "every trickling connection to be dropped")
            times = sorted(tricklers.dropped.values())
            assert served[0] < times[0]  # served while all of them were held
            print(f"\n{len(times)} trickling connections dropped after "
                  f"{times[0]:.1f}-{times[-1]:.1f} s; {2 * len(served)} normal requests "
                  f"served meanwhile")
            # Nothing of the cut-off uploads reached the thread.
            assert bridge.broker.get("slow") is None
            # And the bridge still serves.
            assert httpx.get(f"{bridge.url}/healthz").status_code == 200
        finally:
            tricklers.close()


def test_a_cap_on_connections_refuses_requests_beyond_it_with_503() -> None:
    with running_bridge(max_connections=5, heartbeat=600) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        bridge.post("th", turn_events("t1", 1))
        streams: list[socket.socket] = []
        try:
            refused = None
            for _ in range(6):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                streams.append(sock)
                sock.sendall(get_request("/v1/threads/th/events"))
                head = sock.recv(65536)
                if head.startswith(b"HTTP/1.1 503"):
                    refused = len(streams)
                    break
                assert head.startswith(b"HTTP/1.1 200"), head
            assert refused is not None and refused <= 5
        finally:
            for sock in streams:
                with contextlib.suppress(OSError):
                    sock.close()
        wait_for(lambda: bridge.broker.readers("th") == 0, what="the streams to end")
        assert httpx.get(f"{bridge.url}/healthz").status_code == 200


def test_a_request_sent_whole_but_slowly_within_the_deadlines_is_served() -> None:
    # The deadlines are per request, not per byte: a slow but honest client gets through.
    with running_bridge(header_timeout=2.0, body_timeout=2.0) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        body = b'{"type":"turn.started"}\n'
        request = (b"POST /v1/threads/th/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(body), body))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for start in range(0, len(request), 20):
                sock.sendall(request[start:start + 20])
                select.select([], [], [], 0.02)  # a few ms between pieces, like a slow link
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
