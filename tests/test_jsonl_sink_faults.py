"""JsonlSink when writing fails: a full disk (``/dev/full``), a device that fails for a
while and a pipe whose reader left. The agent never sees it, the loss is counted and said
once, and writing resumes when it can, with every line after that one whole JSON line."""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from otel_events import EventEmitter, EventLog, JsonlSink
from tests.bridge_support import wait_for


@pytest.fixture
def thread_errors() -> Iterator[list[BaseException]]:
    """Exceptions that escaped any thread (a sink's thread must let none escape)."""
    caught: list[BaseException] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            caught.append(args.exc_value)

    threading.excepthook = hook
    yield caught
    threading.excepthook = previous


def append(log: EventLog, seq: int) -> None:
    log.append("item.completed", orjson.dumps({"type": "item.completed", "seq": seq}))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_reported_once_and_its_events_counted_as_dropped(
        thread_errors: list[BaseException], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otel_events")
    sink = JsonlSink("/dev/full")
    emitter = EventEmitter("full", sinks=[sink])
    with emitter.turn() as turn:
        for n in range(50):
            turn.item("command_execution", f"step {n}").complete(output="ok")
    emitter.close(timeout=5)
    assert thread_errors == []
    assert sink.dropped == emitter.log.next_seq - 1  # every event, none silently
    warnings = [r.getMessage() for r in caplog.records if "JsonlSink" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "/dev/full" in warnings[0] and "No space left on device" in warnings[0]


class FailingThenWorking(io.RawIOBase):
    """A raw device that writes part of one batch and then fails ``failures`` times with
    ENOSPC before it works again (a disk that filled up, then was cleaned)."""

    def __init__(self, failures: int) -> None:
        self.data = bytearray()
        self.failures = failures
        self.torn = False
        self.calls = 0

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        data = bytes(b)  # type: ignore[call-overload]
        self.calls += 1
        if self.failures > 0:
            if not self.torn:  # the first failure leaves a line cut in two
                self.torn = True
                self.data += data[: len(data) // 2]
                return len(data) // 2
            self.failures -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.data += data
        return len(data)


def test_writing_resumes_after_a_failure_with_whole_lines(
        thread_errors: list[BaseException], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otel_events")
    log = EventLog()
    out = FailingThenWorking(failures=3)
    sink = JsonlSink(stream=out)  # type: ignore[arg-type]
    sink.start(log, "t")
    for seq in range(1, 11):  # one event a batch: each write fails or works alone
        calls = out.calls
        append(log, seq)
        wait_for(lambda calls=calls: out.calls > calls,
                 what=f"the sink to write event {seq}")
    log.close()
    sink.close(timeout=5)
    assert thread_errors == []
    lines = bytes(out.data).split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    parsed = []
    for line in lines[:-1]:
        try:
            parsed.append(orjson.loads(line)["seq"])
        except orjson.JSONDecodeError:
            parsed.append(None)  # the one line cut by the failure
    # Event 1's write failed halfway (a line cut in two), 2 and 3 were refused, then
    # 4-10 are whole, the first after a newline that ends the cut line.
    assert parsed == [None, 4, 5, 6, 7, 8, 9, 10]
    assert sink.dropped == 3
    messages = [r.getMessage() for r in caplog.records if "JsonlSink" in r.getMessage()]
    assert len(messages) == 2, messages  # the failure, then writing again
    assert "again" in messages[1]


def test_a_pipe_whose_reader_left_stops_the_sink_quietly(
        thread_errors: list[BaseException], caplog: pytest.LogCaptureFixture) -> None:
    # `agent | head -1`: once head exits, writing to the pipe raises BrokenPipeError.
    caplog.set_level(logging.WARNING, logger="otel_events")
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "wb", buffering=0) as out:
        sink = JsonlSink(stream=out)
        emitter = EventEmitter("piped", sinks=[sink])
        with emitter.turn() as turn:
            turn.item("reasoning", "thinking").complete()
        wait_for(lambda: sink.dropped > 0, what="the sink to find the pipe broken")
        with emitter.turn() as turn:  # events after that are counted too
            turn.item("reasoning", "more").complete()
        emitter.close(timeout=5)
        assert thread_errors == []
        assert sink.dropped == emitter.log.next_seq - 1
    assert [r for r in caplog.records if "JsonlSink" in r.getMessage()] == []
