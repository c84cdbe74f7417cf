"""Item 6: a burst of expected trouble (producers dropping their uploads, stalled
clients) logs one line per kind and interval at most, with a count; never a traceback."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import httpx

from tests.adversarial.support import (
    get_request,
    server_sockets,
    spawn_bridge,
    tiny_window_client,
)
from tests.bridge_support import ndjson, wait_for


def abort(sock: socket.socket) -> None:
    """Close with a reset, as a producer killed mid-request does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_200_aborted_uploads_and_stalled_clients_log_a_few_counted_lines(
        tmp_path: Path) -> None:
    uploads, stalled = 200, 5
    bridge = spawn_bridge(tmp_path, "--send-timeout", "0.5", "--heartbeat", "600")
    try:
        body_head = (b"POST /v1/threads/th/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(uploads):
            sock = socket.create_connection(("127.0.0.1", bridge.port))
            sock.sendall(body_head + b'{"type":"turn.started"}\n' + b" " * 1000)
            abort(sock)
        wait_for(lambda: not server_sockets(bridge.port), 30,
                 "the bridge to be done with the aborted uploads")
        # Stalled readers of a thread with more than the socket buffers hold.
        event = {"type": "item.updated", "item": {"id": "i", "type": "x", "text": "y" * 9000}}
        with httpx.Client(base_url=bridge.url) as client:
            for _ in range(4):
                assert client.post("/v1/threads/big/events", content=ndjson([event] * 100),
                                   headers={"content-type": "application/x-ndjson"}
                                   ).status_code == 200
        clients = [tiny_window_client(bridge.port, get_request("/v1/threads/big/events"))
                   for _ in range(stalled)]
        wait_for(lambda: not server_sockets(bridge.port), 30,
                 "the stalled clients to be dropped")
        for sock in clients:
            sock.close()
        during = bridge.log()
    finally:
        log = bridge.stop()
    print(f"\n{uploads} aborted uploads and {stalled} stalled clients logged:\n{log}")
    assert "Traceback" not in log and "ERROR" not in log
    lines = [line for line in during.splitlines() if line.strip()]
    assert len(lines) <= 2, during  # the first of each kind, at once
    # At shutdown, what was not logged yet is, with the count.
    assert f"{uploads} since start" in log
    assert f"{stalled} since start" in log
