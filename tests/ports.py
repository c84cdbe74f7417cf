"""Ports for the servers tests start: free now, and never one handed out before in this
process (a server picks several and binds them later; another server's pick must not be
one of them: the kernel may give a port just released to the next ``bind(0)``)."""

from __future__ import annotations

import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port nothing listens on now, new to this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
