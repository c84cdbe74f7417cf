"""``otel-events run -- COMMAND...``: watch a Codex run live, with true timings.

It gets ready first (imports, exporters), then starts COMMAND and reads its stdout as
Codex JSONL, one line as it arrives: each line goes to our stdout unchanged (a tee, so
``otel-events run -- codex exec --json "..." | jq`` works), into spans and metrics
(stamped with its arrival time: Codex's events carry none), to ``--events FILE`` with that
``timestamp`` added, and to a bridge (``--bridge URL``). Signals are passed on; Ctrl-C
ends an open turn as abandoned, as Codex's own SIGINT does. The exit status is
COMMAND's.

Only the standard library loads with this module; the OpenTelemetry SDK, pydantic and
httpx load when a run starts, httpx only with ``--bridge``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from otel_events.http_sink import HttpSink
    from otel_events.ingest import Ingester
    from otel_events.log import EventLog
    from otel_events.redaction import Content

__all__ = ["default_usage_state", "main", "watch"]

# Passed on to COMMAND. SIGINT from a terminal reaches COMMAND by itself (same process
# group); see _terminal_delivered.
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


_USAGE_NAMES = ("input_tokens", "cached_input_tokens", "cache_write_input_tokens",
                "output_tokens", "reasoning_output_tokens")


def default_usage_state() -> Path:
    """Where runs keep Codex's per-thread usage sums (see ``ingest.UsageLedger``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "otel-events" / "codex-usage.json"


def timestamp(ns: int) -> str:
    """RFC 3339, UTC, microseconds: what the protocol's ``timestamp`` holds."""
    second, fraction = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{fraction // 1000:06d}Z"


def stamped(line: bytes, when: str) -> bytes:
    """The line with ``"timestamp"`` added first, if it is a JSON object without one.

    Text is inserted rather than the object re-encoded, so the line keeps everything
    Codex wrote (even a key written twice).
    """
    body = line.strip()
    if not (body.startswith(b"{") and body.endswith(b"}")) or b'"timestamp"' in body:
        return line
    rest = body[1:].lstrip()
    separator = b"" if rest == b"}" else b","
    return b'{"timestamp":"' + when.encode() + b'"' + separator + rest + b"\n"


class _Bridge:
    """Posts the events to a bridge as they arrive: one event log and one ``HttpSink``
    per thread, stamped as the emitter stamps its own (thread, turn, seq, time, ids)."""

    def __init__(self, url: str, token: str | None) -> None:
        # httpx loads only when a bridge is asked for.
        from otel_events.http_sink import HttpSink
        from otel_events.log import EventLog

        self._sink_type, self._log_type = HttpSink, EventLog
        self.url, self.token = url, token
        self._threads: dict[str, tuple[EventLog, HttpSink]] = {}

    def post(self, event: dict[str, Any], when: str, ingester: Ingester,
             turn_id: str | None) -> None:
        """Post one event of the turn ``turn_id`` (None: outside any turn)."""
        import orjson

        from otel_events.ingest import describe_item
        from otel_events.protocol import ThreadItem

        thread_id = str(event.get("thread_id") or ingester.thread_id)
        if thread_id == "unknown":
            thread_id = f"run-{os.getpid()}"
        if thread_id not in self._threads:
            log = self._log_type()
            sink = self._sink_type(self.url, self.token)
            sink.start(log, thread_id)
            self._threads[thread_id] = (log, sink)
        log, _ = self._threads[thread_id]
        body = {**event, "thread_id": thread_id, "seq": log.next_seq}
        item = event.get("item")
        if isinstance(item, dict) and not item.get("description"):
            # The live page shows what each step does; Codex's items never say.
            text = describe_item(ThreadItem.model_validate(item))
            body["item"] = {**item, "description": ingester.content.text(text)}
        if event.get("type") == "turn.completed" and isinstance(event.get("usage"), dict):
            # The bridge adds turns up: give it each turn's own usage, not Codex's sums.
            own = dict(zip(_USAGE_NAMES, ingester.last_usage, strict=True))
            body["usage"] = {**event["usage"], **own}
        body.setdefault("timestamp", when)
        if turn_id is not None:
            body.setdefault("turn_id", turn_id)
        span = ingester.last_span
        if span is not None and span.get_span_context().is_valid:
            context = span.get_span_context()
            body.setdefault("trace_id", format(context.trace_id, "032x"))
            body.setdefault("span_id", format(context.span_id, "016x"))
        data = orjson.dumps(body)
        if len(data) > ingester.content.max_value_chars:
            # A command's whole output, say: past what a bridge takes in one request the
            # event would be refused, and the step never complete there.
            data = orjson.dumps(_bounded(body, ingester.content))
        log.append(str(event.get("type")), data)

    def close(self, timeout: float = 5.0) -> int:
        """Send what is left (up to ``timeout``); returns how many events were lost."""
        lost = 0
        for log, sink in self._threads.values():
            log.close()
            sink.close(timeout)
            lost += sink.dropped
        return lost


def _bounded(event: dict[str, Any], content: Content) -> dict[str, Any]:
    """``event`` with each of its (and its item's) values longer than the content's bound
    cut as ``Content.cut`` does: the event then fits a bridge's request."""
    import orjson

    out: dict[str, Any] = {}
    for key, value in event.items():
        if key == "item" and isinstance(value, dict):
            out[key] = _bounded(value, content)
            continue
        text = orjson.dumps(value).decode()
        out[key] = value if len(text) <= content.max_value_chars else orjson.loads(
            content.cut(text))
    return out


def _terminal_delivered() -> bool:
    """Whether a SIGINT most likely came from the terminal, which sends it to the whole
    foreground process group: COMMAND then has it already, and a second one would count
    as a second Ctrl-C (Codex quits at once on that)."""
    for stream in (sys.stdin, sys.stderr):
        try:
            if stream.isatty():
                return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
        except (OSError, ValueError, AttributeError):
            continue
    return False


def watch(command: Sequence[str], ingester: Ingester, out: BinaryIO, *,
          events: BinaryIO | None = None, bridge: _Bridge | None = None) -> int:
    """Run ``command``, tee its stdout to ``out`` and fold its events into ``ingester``
    as they arrive; returns its exit status (128 + N if signal N ended it)."""
    from pydantic import ValidationError

    from otel_events.ingest import decode_line
    from otel_events.protocol import parse_event

    received: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if child is not None and not (signum == signal.SIGINT and _terminal_delivered()):
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    teeing = True
    try:
        child = subprocess.Popen(list(command), stdout=subprocess.PIPE)
        for signum in received:  # arrived while it was starting
            child.send_signal(signum)
        assert child.stdout is not None
        for line in iter(child.stdout.readline, b""):
            now = time.time_ns()
            if teeing:
                try:
                    out.write(line)
                    out.flush()
                except BrokenPipeError:
                    teeing = False  # the reader left (`| head`): keep watching
            when = timestamp(now)
            if events is not None:
                try:
                    events.write(stamped(line, when))
                    events.flush()
                except OSError as exc:
                    # A record beside the run (a full disk, say): losing it must not
                    # end the run, nor COMMAND with it. Said once; the rest goes unsaved.
                    name = getattr(events, "name", "the events file")
                    print(f"otel-events run: cannot write {name} "
                          f"({exc.strerror or type(exc).__name__}); the run goes on "
                          f"without it", file=sys.stderr)
                    events = None
            before = ingester.open_turn_id
            try:
                data = decode_line(line)
                if not isinstance(data, dict):
                    continue
                ingester.feed(parse_event(data), now)
            except (ValueError, ValidationError):
                continue  # not an event (COMMAND's own output): passed through only
            if bridge is not None:
                # The turn it began, went on or ended; none for work held for a turn.
                bridge.post(data, when, ingester, ingester.open_turn_id or before)
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    interrupted = signal.SIGINT in received
    ingester.finish(time.time_ns(), "interrupted (SIGINT)" if interrupted else None)
    return 128 - status if status < 0 else status


def main(command: Sequence[str], *, service_name: str | None = None,
         agent_name: str | None = None, endpoint: str | None = None,
         protocol: str | None = None, events: str | None = None, bridge: str | None = None,
         bridge_token: str | None = None, usage_state: str | None = None) -> int:
    """``otel-events run``: set everything up, then ``watch`` COMMAND."""
    from otel_events.config import configure, live_span_delay
    from otel_events.ingest import Ingester, UsageLedger

    # Our stdout carries COMMAND's stream only: anything else this process would print
    # there (a console exporter, say) goes to stderr instead.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    telemetry = configure(service_name, endpoint=endpoint, protocol=protocol,
                          span_delay_ms=live_span_delay(), set_global=False)
    ingester = Ingester.from_providers(
        telemetry.tracer_provider, telemetry.meter_provider, agent_name,
        usage=UsageLedger(usage_state or default_usage_state()),
        # Codex names no turns: ids unique across runs, so a bridge keeps resumes apart.
        turn_prefix=f"turn_{time.time_ns() // 1_000_000:x}_",
    )
    poster = _Bridge(bridge, bridge_token) if bridge else None
    events_file = open(events, "ab") if events else None
    try:
        status = watch(command, ingester, out, events=events_file, bridge=poster)
    except FileNotFoundError as exc:
        print(f"otel-events run: {exc}", file=sys.stderr)
        status = 127
    finally:
        if events_file is not None:
            with contextlib.suppress(OSError):  # a failed write is said already
                events_file.close()
        lost = poster.close() if poster is not None else 0
        telemetry.shutdown(timeout=10.0)
        try:
            out.close()
        except BrokenPipeError:
            pass
    if lost:
        print(f"otel-events run: {lost} events did not reach the bridge", file=sys.stderr)
    return status
