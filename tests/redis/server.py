"""A real redis-server (Debian's, from scripts/install-redis.sh) on a free loopback port.

Each server is a plain process of the test run with its own directory; nothing talks to
a system Redis. Without redis-server the tests that need it skip with the reason, except
under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from otel_events.redis_sink import stream_keys
from tests.ports import free_port

if TYPE_CHECKING:
    import redis

IN_CI = os.environ.get("CI") == "true"


def require_redis_server() -> str:
    binary = os.environ.get("OTEL_EVENTS_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed; run scripts/install-redis.sh"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: a missing server is a failure)", pytrace=False)
        pytest.skip(reason)
    try:
        import redis  # noqa: F401
    except ImportError:
        reason = "redis-py is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return binary


class RedisServer:
    """One redis-server process; ``kill()`` (SIGKILL) and ``start()`` again keep its port
    and directory, so with ``persist=True`` the data survives (append-only file, fsync
    on every write)."""

    def __init__(self, binary: str, directory: Path, persist: bool = False,
                 password: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.persist = persist
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
                "--appendonly", "yes" if self.persist else "no"]
        if self.persist:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import redis

        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1.0,
                             socket_connect_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = (self.directory / "redis.log")
                    raise RuntimeError("redis-server exited while starting: " + (
                        log.read_text()[-2000:] if log.exists() else "no log"))
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # loading its append-only file
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis(port=self.port, password=self.password, socket_timeout=10.0)


def run_server(tmp: Path, persist: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server(), tmp, persist=persist)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the tests that only need a store; each uses its own key prefix."""
    yield from run_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, persisted, for tests that kill, flush or restart it."""
    yield from run_server(tmp_path, persist=True)


@pytest.fixture
def scratch_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, not persisted: for tests that fill it, demote it or
    keep it busy (nothing here restarts it)."""
    yield from run_server(tmp_path)


def stream_seqs(client: redis.Redis, thread: str, prefix: str = "otel-events") -> list[int]:
    """The seqs a thread's stream holds now, oldest first."""
    entries = client.xrange(stream_keys(prefix, thread)[1])
    return [int(stream_id.split(b"-")[0]) for stream_id, _ in entries]
