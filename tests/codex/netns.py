"""Run a command where the only network is loopback, with one port relayed to a Unix socket.

Usage: ``unshare -n -r python netns.py [--lo-up] SOCKET PORT -- COMMAND...``

Inside a fresh network namespace nothing leaves the machine, yet Codex must reach the fake
model server, which listens in the test process. Filesystems are shared across network
namespaces, so the server also listens on a Unix socket, and this wrapper relays
``127.0.0.1:PORT`` inside the namespace to it. It forwards SIGINT and SIGTERM to the
command and exits with the command's status.
"""

from __future__ import annotations

import fcntl
import signal
import socket
import struct
import subprocess
import sys
import threading

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """``ip link set lo up``: a new namespace's loopback starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Pass the end of one direction on; the other direction may still be talking.
        for end in (sink, source):
            try:
                end.shutdown(socket.SHUT_WR if end is sink else socket.SHUT_RD)
            except OSError:
                pass


def _relay(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            continue
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()


def main(argv: list[str]) -> int:
    lo_up = argv[:1] == ["--lo-up"]
    if lo_up:
        argv = argv[1:]
        loopback_up()
    path, port, separator, *command = argv
    assert separator == "--", "usage: netns.py [--lo-up] SOCKET PORT -- COMMAND..."
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(64)
    threading.Thread(target=_relay, args=(listener, path), daemon=True).start()
    child = subprocess.Popen(command)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: child.send_signal(number))
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
