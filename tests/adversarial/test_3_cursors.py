"""Item 3: a malformed or absurd cursor is an unknown position (a reset), never a 500,
whether it comes as ``Last-Event-ID`` (any bytes a client can put in a header) or as
``?last_event_id=``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.adversarial.support import get_request
from tests.bridge_support import Bridge, parse_block, running_bridge, turn_events

CURSORS = [b"\xc2\xb2", b"\xb2", b"\xef\xbc\x91", b"9" * 5000, b"-1", b"1:2:3", b"x:y",
           b"abc", b"ffffffff:" + b"9" * 40, b"1e3", b"0x10", b":5", b"e:"]


def first_message(port: int, request: bytes) -> tuple[int, str]:
    """Status and the first SSE message with data of a raw request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            assert chunk, buffer
            buffer += chunk
            head, _, body = buffer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1]) if b"\r\n" in head else 0
            if status and status != 200:
                return status, ""
            if b"\ndata: " in body and body.count(b"\n\n") >= 2:
                blocks = [parse_block(b) for b in body.decode().split("\n\n")]
                data = [b for b in blocks if b.data is not None]
                if data:
                    return status, data[0].data or ""


@pytest.fixture(scope="module")
def bridge() -> Iterator[Bridge]:
    with running_bridge(heartbeat=600) as running:
        running.post("th", turn_events("t1", 1))
        yield running


@pytest.mark.parametrize("cursor", CURSORS, ids=lambda c: repr(c[:12]))
def test_a_malformed_last_event_id_gets_a_reset(bridge: Bridge, cursor: bytes) -> None:
    port = int(bridge.url.rsplit(":", 1)[1])
    status, data = first_message(port, get_request("/v1/threads/th/events").replace(
        b"\r\n\r\n", b"\r\nLast-Event-ID: " + cursor + b"\r\n\r\n"))
    assert status == 200
    assert '"type":"reset"' in data
    assert '"reason":"cursor_unknown"' in data or '"reason":"cursor_ahead"' in data


@pytest.mark.parametrize("cursor", CURSORS, ids=lambda c: repr(c[:12]))
def test_a_malformed_query_cursor_gets_a_reset_or_a_422(bridge: Bridge, cursor: bytes) -> None:
    port = int(bridge.url.rsplit(":", 1)[1])
    path = "/v1/threads/th/events?last_event_id=" + quote(cursor)
    status, data = first_message(port, get_request(path))
    if len(cursor) > 64:
        assert status == 422  # longer than any position: refused, without the value
    else:
        assert status == 200
        assert '"type":"reset"' in data
