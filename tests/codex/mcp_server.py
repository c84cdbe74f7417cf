"""A tiny stdio MCP server for the Codex tests: one tool, ``add``, over JSON-RPC lines.

Run as ``python mcp_server.py``; Codex starts it from ``[mcp_servers.calc]``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TOOLS = [{
    "name": "add",
    "description": "Add two integers.",
    "inputSchema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}]


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    """The response to one request; None for a notification."""
    method, params = request.get("method"), request.get("params") or {}
    if "id" not in request:
        return None
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "calc", "version": "1.0.0"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and params.get("name") == "add":
        arguments = params.get("arguments") or {}
        total = int(arguments["a"]) + int(arguments["b"])
        result = {"content": [{"type": "text", "text": str(total)}], "isError": False}
    else:
        return {"jsonrpc": "2.0", "id": request["id"],
                "error": {"code": -32601, "message": f"unknown method {method}"}}
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        response = answer(json.loads(line))
        if response is not None:
            sys.stdout.write(json.dumps(response) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
