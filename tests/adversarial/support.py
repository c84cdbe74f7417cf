"""Tools of the adversarial suite: the bridge in a process of its own (its RSS, its log),
raw sockets that read slowly or not at all, and the kernel's view of a port's sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.bridge_support import wait_for
from tests.ports import free_port

# /proc/net/tcp state codes.
ESTABLISHED = "01"
TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


@dataclass(frozen=True)
class TcpSocket:
    """One socket as /proc/net/tcp shows it."""

    local_port: int
    remote_port: int
    state: str
    tx_queue: int
    rx_queue: int
    #: 0 when no process holds the socket any more (an orphan the kernel finishes).
    inode: int = 0


def server_sockets(port: int) -> list[TcpSocket]:
    """The sockets whose local port is ``port`` (the server's side), listener excluded."""
    found: list[TcpSocket] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                tx, rx = fields[4].split(":")
                local_port = int(local.rsplit(":", 1)[1], 16)
                if local_port == port and state != "0A":
                    found.append(TcpSocket(local_port, int(remote.rsplit(":", 1)[1], 16),
                                           state, int(tx, 16), int(rx, 16), int(fields[9])))
    return found


def server_side_of(port: int, client: socket.socket) -> TcpSocket | None:
    """The server's socket of ``client``'s connection, if the kernel still has one."""
    client_port = client.getsockname()[1]
    for found in server_sockets(port):
        if found.remote_port == client_port:
            return found
    return None


def tiny_window_client(port: int, request: bytes, rcvbuf: int = 4096) -> socket.socket:
    """A client that sends ``request`` and never reads, with a tiny receive window (set
    before connecting, so the window it advertises is small from the start)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def get_request(path: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid``, in bytes (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class BridgeProcess:
    """``python -m otel_events bridge`` in a process of its own, its output in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return rss_of(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> str:
        """SIGTERM (the bridge's orderly shutdown); returns everything it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError("the bridge did not stop on SIGTERM") from None
        return self.log()


def spawn_bridge(log_dir: Path, *args: str, env: dict[str, str] | None = None,
                 ) -> BridgeProcess:
    port = free_port()
    log_path = log_dir / f"bridge-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "otel_events", "bridge", "--port", str(port),
             "--log-level", "warning", *args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    bridge = BridgeProcess(process, port, log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the bridge exited while starting:\n{bridge.log()}")
        try:
            return httpx.get(f"{bridge.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 30.0, "the bridge process's /healthz")
    except BaseException:
        bridge.stop()
        raise
    return bridge


@contextlib.contextmanager
def bridge_process(log_dir: Path, *args: str) -> Iterator[BridgeProcess]:
    bridge = spawn_bridge(log_dir, *args)
    try:
        yield bridge
    finally:
        bridge.stop()


def settle(read: Callable[[], int], deadline: float = 5.0, interval: float = 0.1) -> int:
    """Poll ``read()`` until two readings ``interval`` apart agree (within 1 %), or the
    deadline passes; returns the last reading. For figures that settle, like RSS."""
    last = read()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        time.sleep(interval)
        now = read()
        if abs(now - last) <= last / 100:
            return int(now)
        last = now
    return int(last)
