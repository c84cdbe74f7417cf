"""Item 7: DNS rebinding (the Host header), where the query token is taken, the bearer
scheme in any case, security headers on every response, nothing from third parties."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otel_events.bridge import BridgeSettings
from tests.adversarial.support import get_request
from tests.bridge_support import Bridge, running_bridge, turn_events

STATIC = Path(__file__).parents[2] / "otel_events" / "bridge" / "static"
SECURITY = {"content-security-policy", "x-frame-options", "x-content-type-options",
            "referrer-policy"}


@pytest.fixture(scope="module")
def open_bridge() -> Iterator[Bridge]:
    with running_bridge(heartbeat=600) as bridge:
        bridge.post("th", turn_events("t1", 1))
        yield bridge


@pytest.fixture(scope="module")
def guarded() -> Iterator[Bridge]:
    with running_bridge(token="s3cret", heartbeat=600) as bridge:
        assert bridge.post("th", turn_events("t1", 1),
                           authorization="Bearer s3cret").status_code == 200
        yield bridge


def raw_status(bridge: Bridge, request: bytes) -> tuple[int, bytes]:
    port = int(bridge.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "", "[::1", "a:b:c"])
def test_a_foreign_host_is_refused_with_421_on_every_route(
        open_bridge: Bridge, host: str) -> None:
    for path in ("/v1/threads", "/v1/threads/th", "/v1/threads/th/events", "/", "/healthz",
                 "/openapi.json", "/static/app.js"):
        status, head = raw_status(open_bridge, get_request(path, host=host))
        assert status == 421, (path, host, head)
        assert b"s3cret" not in head and b"t1" not in head


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:1234", "[::1]:8765",
                                  "127.0.0.2", "localhost."])
def test_loopback_names_are_served(open_bridge: Bridge, host: str) -> None:
    status, _ = raw_status(open_bridge, get_request("/v1/threads", host=host))
    assert status == 200


def test_a_named_host_list_replaces_the_loopback_default() -> None:
    settings = BridgeSettings(allowed_hosts=("bridge.internal",))
    assert settings.host_allowed("bridge.internal")
    assert settings.host_allowed("BRIDGE.internal")
    assert not settings.host_allowed("127.0.0.1")
    assert BridgeSettings(allowed_hosts=("*",)).host_allowed("anything")
    # Bound to every interface with no list: any name (the command warns).
    assert BridgeSettings(host="0.0.0.0").host_allowed("bridge.example")


def test_the_query_token_is_taken_only_on_the_event_stream(guarded: Bridge) -> None:
    client = guarded.client
    for path in ("/v1/threads", "/v1/threads/th"):
        assert client.get(f"{path}?access_token=s3cret").status_code == 401
    post = client.post("/v1/threads/th/events?access_token=s3cret",
                       content=b'{"type":"turn.started"}\n',
                       headers={"content-type": "application/x-ndjson"})
    assert post.status_code == 401
    with client.stream("GET", "/v1/threads/th/events?access_token=s3cret") as stream:
        assert stream.status_code == 200
    assert client.head("/v1/threads/th/events?access_token=s3cret").status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(guarded: Bridge, scheme: str) -> None:
    response = guarded.client.get("/v1/threads", headers={"authorization": f"{scheme} s3cret"})
    assert response.status_code == 200
    wrong = guarded.client.get("/v1/threads", headers={"authorization": f"{scheme} s3cre"})
    assert wrong.status_code == 401


def test_security_headers_are_on_every_response(guarded: Bridge) -> None:
    client = guarded.client
    auth = {"authorization": "Bearer s3cret"}
    responses = [
        client.get("/"), client.get("/static/app.js"), client.get("/static/nope.js"),
        client.get("/healthz"), client.get("/openapi.json"), client.get("/nope"),
        client.get("/v1/threads"), client.get("/v1/threads", headers=auth),
        client.get("/v1/threads/nope", headers=auth),
        client.get("/v1/threads/bad%20id", headers=auth),
        client.post("/v1/threads/th/events", headers={**auth, "content-type": "text/csv"}),
        client.options("/v1/threads"), client.head("/healthz"),
        client.get("/healthz", headers={"host": "evil.example"}),
    ]
    with client.stream("GET", "/v1/threads/th/events", headers=auth) as stream:
        responses.append(stream)
    for response in responses:
        missing = SECURITY - set(response.headers)
        assert not missing, (response.request.url, response.status_code, missing)
    page = responses[0].headers
    assert "frame-ancestors 'none'" in page["content-security-policy"]
    assert "script-src 'self'" in page["content-security-policy"]
    assert page["x-frame-options"] == "DENY"
    assert page["x-content-type-options"] == "nosniff"
    assert page["referrer-policy"] == "no-referrer"


def test_no_page_loads_anything_from_a_third_party(open_bridge: Bridge) -> None:
    client = open_bridge.client
    assert client.get("/docs").status_code == 404  # Swagger UI from a CDN
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    page = client.get("/").text
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert references and all(not re.match(r"^(?:[a-z]+:)?//", r) for r in references)
    for name in ("app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"""(?:import|url\(|src\s*=)\s*["']?(?:https?:)?//""", text)


def test_a_cross_site_request_with_a_rebound_name_gets_nothing(open_bridge: Bridge) -> None:
    # The reproduction: curl -H 'Host: evil.example' .../v1/threads
    response = httpx.get(f"{open_bridge.url}/v1/threads", headers={"host": "evil.example"})
    assert response.status_code == 421
    assert "threads" not in response.text
