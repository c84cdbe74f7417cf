"""An emitter made before a fork (a prefork server, a multiprocessing pool): the child's
events reach the sinks, once, and a lock held by another thread at the fork does not
hang the child. The SDK's span processors restart their threads in a child; the sinks
must too, or a child's event stream is lost without a word."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from otel_events import EventEmitter, JsonlSink
from otel_events.http_sink import HttpSink
from tests.bridge_support import running_bridge

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def wait_child(pid: int, timeout: float = 20.0) -> int:
    """The child's exit status; a child still running at the deadline is killed (hung)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)  # polling a child's exit: there is no event to wait on
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child hung")


def fork_and_run(emitter: EventEmitter, step: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: one turn, then close (flushes its sinks), then exit
        code = 1
        try:
            with emitter.turn() as turn:
                turn.item("reasoning", step).complete()
            emitter.close(timeout=10.0)
            code = 0
        finally:
            os._exit(code)
    return wait_child(pid)


def test_a_forked_child_writes_its_events_once(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    emitter = EventEmitter("forked", sinks=[JsonlSink(path)])
    with emitter.turn() as turn:
        turn.item("reasoning", "parent step").complete()
    assert fork_and_run(emitter, "child step") == 0
    emitter.close(timeout=5.0)
    events = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    described = [e["item"]["description"] for e in events if e["type"] == "item.completed"]
    assert sorted(described) == ["child step", "parent step"]  # each once


def test_a_forked_child_posts_its_events_to_the_bridge() -> None:
    with running_bridge() as bridge:
        emitter = EventEmitter("forked-http", sinks=[HttpSink(bridge.url)])
        with emitter.turn() as turn:
            turn.item("reasoning", "parent step").complete()
        assert fork_and_run(emitter, "child step") == 0
        emitter.close(timeout=5.0)
        state = bridge.client.get("/v1/threads/forked-http").json()
        steps = [item["description"] for t in state["turns"] for item in t["items"]]
        assert sorted(steps) == ["child step", "parent step"]


def test_a_lock_held_at_the_fork_does_not_hang_the_child(tmp_path: Path) -> None:
    emitter = EventEmitter("locked", sinks=[JsonlSink(tmp_path / "events.jsonl")])
    lock = emitter._recorder.lock  # the lock every event takes
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another thread of the agent, publishing at the moment of fork
        with lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        assert fork_and_run(emitter, "child step") == 0
    finally:
        release.set()
        holder.join()
    emitter.close(timeout=5.0)
