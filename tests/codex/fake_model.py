"""A fake model server of our own: the Responses API (``POST /v1/responses``, SSE) on loopback.

Codex is pointed at it through a ``model_providers`` entry with ``wire_api = "responses"``.
Each request is answered from a script: the prompt carries ``[scenario:NAME]``, and the
reply is ``script[NAME][step]`` where ``step`` counts the tool outputs Codex has sent back
since that prompt (so a tool call, then its follow-up, are steps 0 and 1). A step given as
a list of replies answers successive attempts of the same step (a retry after a cut); a
step given as a function builds its reply from the request.
"""

from __future__ import annotations

import json
import re
import socketserver
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCENARIO = re.compile(r"\[scenario:([\w-]+)\]")
_OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output",
                           "mcp_tool_call_output"})


@dataclass
class Usage:
    """What ``response.completed`` reports for one model call."""

    input_tokens: int = 100
    cached_tokens: int = 40
    output_tokens: int = 10
    reasoning_tokens: int = 3
    #: Codex reports it as ``cache_write_input_tokens``.
    cache_write_tokens: int = 5

    def wire(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens,
                                     "cache_write_tokens": self.cache_write_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass
class Reply:
    """One answer to one request: output items streamed as SSE, or an HTTP error.

    ``cut_after``: close the connection after that many SSE events, without a final one.
    ``hold``: stream everything but the final event, then wait for it to be set (or for
    the client to go away) before finishing.
    """

    items: Sequence[dict[str, Any]] = ()
    usage: Usage = field(default_factory=Usage)
    status: int = 200
    error_body: dict[str, Any] | None = None
    failed: str | None = None
    cut_after: int | None = None
    hold: threading.Event | None = None

    def events(self, response_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"type": "response.created", "response": {"id": response_id}}]
        for index, item in enumerate(self.items):
            added = dict(item)
            if item["type"] == "message":
                added["content"] = []
            elif item["type"] == "web_search_call":
                # The query is known only when the search is done, as with the real API.
                added = {"type": "web_search_call", "id": item["id"], "status": "in_progress"}
            out.append({"type": "response.output_item.added", "output_index": index,
                        "item": added})
            if item["type"] == "message":
                text = item["content"][0]["text"]
                out.append({"type": "response.output_text.delta", "output_index": index,
                            "content_index": 0, "item_id": item["id"], "delta": text})
            out.append({"type": "response.output_item.done", "output_index": index,
                        "item": item})
        if self.failed is not None:
            out.append({"type": "response.failed", "response": {
                "id": response_id, "status": "failed",
                "error": {"code": "server_error", "message": self.failed}}})
        else:
            out.append({"type": "response.completed",
                        "response": {"id": response_id, "usage": self.usage.wire()}})
        return out


# --- output items, as the Responses API writes them ---------------------------------------

def message(text: str, item_id: str = "msg_1") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def reasoning(summary: str, item_id: str = "rs_1") -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id,
            "summary": [{"type": "summary_text", "text": summary}]}


def call(name: str, arguments: Mapping[str, Any], call_id: str = "call_1",
         namespace: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id,
                            "name": name, "arguments": json.dumps(arguments)}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def custom_call(name: str, text: str, call_id: str = "call_1") -> dict[str, Any]:
    return {"type": "custom_tool_call", "id": f"ctc_{call_id}", "call_id": call_id,
            "name": name, "input": text}


def tool_output(body: Mapping[str, Any], call_id: str) -> str:
    """The output Codex sent back for ``call_id``, as text."""
    for item in body.get("input") or []:
        if item.get("type") in _OUTPUT_TYPES and item.get("call_id") == call_id:
            output = item.get("output")
            return output if isinstance(output, str) else json.dumps(output)
    raise KeyError(call_id)


def web_search(query: str, item_id: str = "ws_1") -> dict[str, Any]:
    return {"type": "web_search_call", "id": item_id, "status": "completed",
            "action": {"type": "search", "query": query}}


# --- the server ---------------------------------------------------------------------------

#: A step's reply may depend on the request (an id Codex made up, for instance).
Step = Reply | Sequence[Reply] | Callable[[dict[str, Any]], Reply]
Script = Mapping[str, Sequence[Step]]


@dataclass
class Request:
    """One request as received, for assertions."""

    scenario: str | None
    step: int
    attempt: int
    body: dict[str, Any]
    headers: dict[str, str]


def route(body: Mapping[str, Any]) -> tuple[str | None, int]:
    """The scenario named by the latest tagged user message, and the tool outputs since."""
    items = body.get("input") or []
    scenario, step = None, 0
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message" and item.get("role") == "user":
            for part in item.get("content") or []:
                found = SCENARIO.findall(str(part.get("text", "")))
                if found:
                    scenario, step = found[-1], 0
        elif item.get("type") in _OUTPUT_TYPES:
            step += 1
    return scenario, step


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class FakeModel:
    """The server; ``with FakeModel(script) as model: model.base_url``.

    It listens on 127.0.0.1 (``port``) and on a Unix socket (``socket_path``), the way in
    from a network namespace of its own (see netns.py).
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script: dict[str, Sequence[Step]] = dict(script or {})
        self.requests: list[Request] = []
        self._attempts: dict[tuple[str | None, int], int] = {}
        self._lock = threading.Lock()
        handler = self._handler()
        tcp = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        tcp.daemon_threads = True
        self._dir = tempfile.TemporaryDirectory(prefix="fake-model-")
        self.socket_path = str(Path(self._dir.name) / "model.sock")
        self._servers: list[socketserver.BaseServer] = [
            tcp, _UnixHTTPServer(self.socket_path, handler)]
        self.port: int = tcp.server_address[1]
        self._threads = [threading.Thread(target=server.serve_forever, daemon=True)
                         for server in self._servers]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._dir.cleanup()

    def __enter__(self) -> FakeModel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reply_for(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        scenario, step = route(body)
        with self._lock:
            attempt = self._attempts.get((scenario, step), 0)
            self._attempts[(scenario, step)] = attempt + 1
            self.requests.append(Request(scenario, step, attempt, body, headers))
        steps = self.script.get(scenario or "", ())
        if step >= len(steps):
            return Reply([message(f"(no scripted reply for {scenario} step {step})")])
        chosen = steps[step]
        if isinstance(chosen, Reply):
            return chosen
        if callable(chosen):
            return chosen(body)
        return chosen[min(attempt, len(chosen) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # model listings: nothing beyond the catalog
                self._json(200, {"object": "list", "data": [], "models": []})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/responses":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(raw) if raw else {}
                reply = model.reply_for(body, dict(self.headers.items()))
                if reply.status != 200:
                    self._json(reply.status, reply.error_body or {"error": {
                        "message": "internal error", "type": "server_error"}})
                    return
                self._stream(reply, f"resp_{len(model.requests)}")

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def _stream(self, reply: Reply, response_id: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                events = reply.events(response_id)
                if reply.cut_after is not None:
                    events = events[:reply.cut_after]
                for number, event in enumerate(events):
                    if reply.hold is not None and number == len(events) - 1:
                        # Released by the test, or by Codex going away (SIGINT).
                        while not reply.hold.wait(0.05):
                            if self._peer_gone():
                                return
                    frame = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    try:
                        self.wfile.write(frame.encode())
                        self.wfile.flush()
                    except OSError:
                        return

            def _peer_gone(self) -> bool:
                import select

                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and not self.connection.recv(1, 0x2)  # MSG_PEEK

        return Handler

