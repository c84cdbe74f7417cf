"""The emitter: events in order, items end once with their real type, failures, concurrency."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import pytest

from otel_events import EventEmitter, ItemType, JsonlSink
from otel_events.protocol import TurnStarted, parse_event

from .conftest import Telemetry, logged


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def test_a_turn_emits_codex_compatible_events_with_our_superset(
        emitter: EventEmitter) -> None:
    async with emitter.turn() as turn:
        async with turn.item(ItemType.SQL_EXECUTION, "Running the revenue query") as item:
            item.progress(0.5, "half way")
            item.update(text="partial")
            item.complete(output={"rows": 3})
        turn.add_usage(input_tokens=100, output_tokens=20, cached_input_tokens=10)
    events = logged(emitter)
    assert types(events) == ["thread.started", "turn.started", "item.started",
                             "progress.update", "item.updated", "item.completed",
                             "token.count", "turn.completed"]
    assert [e["seq"] for e in events] == list(range(1, 9))
    for event in events:
        parse_event(orjson.dumps(event))  # every event we emit is valid protocol
        assert event["thread_id"] == "thread-1"
        assert event["timestamp"].endswith("Z")
    assert all(e["turn_id"] == turn.id for e in events[1:])
    assert all(e["trace_id"] == turn.trace_id for e in events[1:])
    started, completed = events[2]["item"], events[5]["item"]
    assert started["status"] == "in_progress" and started["type"] == "sql_execution"
    # The seed's completed event forgot the item's type, description and start time.
    assert completed["type"] == "sql_execution"
    assert completed["description"] == "Running the revenue query"
    assert completed["started_at"] == started["started_at"]
    assert completed["status"] == "completed" and completed["output"] == {"rows": 3}
    assert completed["duration_ms"] >= 0 and completed["completed_at"] >= started["started_at"]
    assert events[5]["span_id"] == events[2]["span_id"] != events[1]["span_id"]
    assert events[-1]["usage"] == {"input_tokens": 100, "cached_input_tokens": 10,
                                   "output_tokens": 20}


async def test_exception_marks_item_and_turn_failed_and_propagates(
        emitter: EventEmitter) -> None:
    with pytest.raises(RuntimeError, match="db is down"):
        async with emitter.turn():
            async with emitter.current_turn().item("sql_execution", "query"):  # type: ignore[union-attr]
                raise RuntimeError("db is down")
    events = logged(emitter)
    completed = next(e for e in events if e["type"] == "item.completed")["item"]
    assert completed["status"] == "failed"
    assert completed["error"] == {"message": "db is down", "type": "RuntimeError"}
    failed = events[-1]
    assert failed["type"] == "turn.failed"
    assert failed["error"] == {"message": "db is down", "type": "RuntimeError"}


def test_sync_context_managers_and_explicit_calls(emitter: EventEmitter) -> None:
    with emitter.turn() as turn:
        with turn.item("chart_generation", "Drawing the chart") as item:
            item.complete(output="chart.png")
            item.complete(output="twice")  # an item ends once; later calls are no-ops
        declined = turn.item("command_execution", "rm -rf /")
        declined.decline("refused by the guardrail")
        explicit = turn.item("doc_retrieval", "Searching the docs")
        explicit.fail(ValueError("index missing"))
    completed = [e["item"] for e in logged(emitter) if e["type"] == "item.completed"]
    assert [(c["type"], c["status"]) for c in completed] == [
        ("chart_generation", "completed"), ("command_execution", "declined"),
        ("doc_retrieval", "failed")]
    assert completed[0]["output"] == "chart.png"
    assert completed[1]["error"]["message"] == "refused by the guardrail"


async def test_concurrent_items_in_one_turn_get_the_right_parents(
        emitter: EventEmitter, telemetry: Telemetry) -> None:
    async def tool(turn: Any, name: str) -> None:
        async with turn.item("command_execution", f"run {name}", name=name) as outer:
            await asyncio.sleep(0)
            async with turn.item("reasoning", f"think about {name}") as inner:
                await asyncio.sleep(0)
                assert inner.parent_id == outer.id

    async with emitter.turn() as turn:
        await asyncio.gather(tool(turn, "a"), tool(turn, "b"))
    spans = {s.name: s for s in telemetry.spans()}
    for name in ("a", "b"):
        outer = spans[f"execute_tool {name}"]
        inner = next(s for s in telemetry.spans()
                     if s.attributes and s.attributes.get("otel_events.item.description")
                     == f"think about {name}")
        assert inner.parent is not None and outer.context is not None
        assert inner.parent.span_id == outer.context.span_id
    completed = [e["item"] for e in logged(emitter) if e["type"] == "item.completed"]
    assert len(completed) == 4 and all(c["status"] == "completed" for c in completed)


async def test_cancelled_item_and_turn_end_as_abandoned(emitter: EventEmitter) -> None:
    started = asyncio.Event()

    async def agent() -> None:
        async with emitter.turn() as turn, turn.item("command_execution", "long job"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(agent())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = logged(emitter)
    item = next(e for e in events if e["type"] == "item.completed")["item"]
    assert item["status"] == "failed" and item["error"]["type"] == "abandoned"
    assert events[-1]["type"] == "turn.failed"
    assert events[-1]["error"]["type"] == "abandoned"


def test_turn_end_abandons_items_left_open_and_close_abandons_open_turns(
        emitter: EventEmitter) -> None:
    with emitter.turn() as turn:
        turn.item("web_search", "forgotten")
    forgotten = [e["item"] for e in logged(emitter) if e["type"] == "item.completed"]
    assert forgotten[0]["error"]["type"] == "abandoned"
    open_turn = emitter.turn()
    open_turn.item("reasoning", "never ends")
    emitter.close()
    events = logged(emitter)
    assert events[-1]["type"] == "turn.failed" and events[-1]["turn_id"] == open_turn.id
    assert events[-1]["error"]["type"] == "abandoned"


async def test_seed_calls_keep_working(emitter: EventEmitter) -> None:
    queue = emitter.subscribe()
    async with emitter.turn():
        item_id = await emitter.start_item(ItemType.SQL_EXECUTION, "Running the revenue query")
        await emitter.complete_item(item_id, output=[1, 2])
        await emitter.emit(TurnStarted())
    got = [await queue.get() for _ in range(6)]
    assert [e.type for e in got] == ["thread.started", "turn.started", "item.started",
                                     "item.completed", "turn.started", "turn.completed"]
    completed = got[3]
    assert completed.event.type == "item.completed"
    assert completed.item.type == "sql_execution" and completed.item.output == [1, 2]  # type: ignore[union-attr]
    assert [e.seq for e in got] == list(range(1, 7))
    emitter.unsubscribe(queue)
    with pytest.raises(KeyError):
        await emitter.complete_item("item_404")


def test_seq_is_strictly_increasing_across_threads(emitter: EventEmitter) -> None:
    turn = emitter.turn()

    def work() -> None:
        for _ in range(200):
            turn.item("reasoning", "x").complete()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    turn.complete()
    events = logged(emitter)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len(events) == 2 + 4 * 200 * 2 + 1
    ids = [e["item"]["id"] for e in events if e["type"] == "item.started"]
    assert len(set(ids)) == 800


async def test_subscriber_gets_typed_events_carrying_their_json(emitter: EventEmitter) -> None:
    sub = emitter.subscribe()
    with emitter.turn():
        pass
    entry = await sub.next_entry()
    assert entry is not None and entry.type == "thread.started"
    assert orjson.loads(entry.json)["seq"] == entry.seq == entry.event.seq == 1


def test_jsonl_sink_writes_a_codex_readable_stream(tmp_path: Any, telemetry: Telemetry) -> None:
    path = tmp_path / "events.jsonl"
    em = EventEmitter("t", "agent", tracer_provider=telemetry.tracer_provider,
                      sinks=[JsonlSink(path)])
    with em.turn() as turn:
        turn.item("agent_message", "Answering", text="42").complete()
    em.close()
    lines = path.read_text().splitlines()
    assert [orjson.loads(line)["type"] for line in lines] == [
        "thread.started", "turn.started", "item.started", "item.completed", "turn.completed"]
    for line in lines:
        parse_event(line)


def test_redaction_hook_applies_identically_to_events_and_spans(
        telemetry: Telemetry) -> None:
    from otel_events import Content

    def hide_emails(value: Any) -> Any:
        return {k: ("<email>" if k == "email" else v) for k, v in value.items()}

    em = EventEmitter("t", "agent", tracer_provider=telemetry.tracer_provider,
                      content=Content(redact=hide_emails))
    with em.turn() as turn:
        turn.item("sql_execution", "lookup").complete(
            output={"email": "a@b.c", "dsn": "postgres://app:hunter2@db/x",
                    "auth": "Bearer abcdefghijklmnop"})
    event = next(e for e in logged(em) if e["type"] == "item.completed")["item"]["output"]
    attribute = telemetry.span("execute_tool sql_execution").attributes
    assert attribute is not None
    assert orjson.loads(str(attribute["otel_events.item.output"])) == event
    assert event["email"] == "<email>"
    assert "hunter2" not in str(event) and "abcdefghijklmnop" not in str(event)
    em.close()


def test_content_capture_off_records_lengths_only(telemetry: Telemetry) -> None:
    from otel_events import Content

    em = EventEmitter("t", "agent", tracer_provider=telemetry.tracer_provider,
                      content=Content(capture=False))
    with em.turn() as turn:
        item = turn.item("sql_execution", "lookup")
        item.update(text="secret partial")
        item.complete(output={"ssn": "123-45-6789"})
    events = logged(em)
    assert "123-45-6789" not in str(events) and "secret partial" not in str(events)
    completed = next(e for e in events if e["type"] == "item.completed")["item"]
    assert completed["output_length"] == len('{"ssn":"123-45-6789"}')
    attributes = telemetry.span("execute_tool sql_execution").attributes or {}
    assert "otel_events.item.output" not in attributes
    assert attributes["otel_events.item.output.length"] == completed["output_length"]
    em.close()


def test_progress_fraction_is_checked(emitter: EventEmitter) -> None:
    with emitter.turn() as turn, turn.item("reasoning") as item, pytest.raises(ValueError):
        item.progress(1.5)


def test_agent_name_defaults_to_the_service_name(telemetry: Telemetry) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": "billing-agent"}))
    assert EventEmitter(tracer_provider=provider).agent_name == "billing-agent"


def test_work_left_open_at_process_exit_is_ended_as_abandoned(tmp_path: Any) -> None:
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import otel_events
        from otel_events import EventEmitter, JsonlSink
        telemetry = otel_events.configure("exit-test", traces_exporter="none",
                                          metrics_exporter="none",
                                          traces_file={str(tmp_path / "traces.jsonl")!r})
        emitter = EventEmitter("t", sinks=[JsonlSink({str(tmp_path / "events.jsonl")!r})])
        turn = emitter.turn()
        turn.item("command_execution", "still running")
        # no close, no shutdown: the process just exits
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events][-2:] == ["item.completed", "turn.failed"]
    assert events[-1]["error"]["type"] == "abandoned"
    spans = [span for line in (tmp_path / "traces.jsonl").read_text().splitlines()
             for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
             for span in ss["spans"]]
    assert sorted(s["name"] for s in spans) == ["execute_tool command_execution",
                                                "invoke_agent exit-test"]
    for span in spans:
        attributes = {a["key"]: a["value"] for a in span["attributes"]}
        assert attributes["error.type"] == {"stringValue": "abandoned"}


def test_held_events_take_about_their_size_in_memory() -> None:
    import tracemalloc

    from opentelemetry.trace import NoOpTracerProvider

    emitter = EventEmitter("t", "a", tracer_provider=NoOpTracerProvider())  # no spans held
    turn = emitter.turn()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(500):
        turn.item("reasoning", "think").complete()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    events = logged(emitter)[-1000:]
    json_bytes = sum(len(orjson.dumps(e)) for e in events)
    # 1000 events of ~450 bytes; orjson's 4 KiB result buffers would make this ~4 MiB.
    assert held < 3 * json_bytes, (held, json_bytes)


def test_outputs_that_cannot_be_encoded_never_break_the_item(telemetry: Telemetry) -> None:
    from otel_events import Content

    def broken_hook(value: Any) -> Any:
        raise RuntimeError("hook bug")

    em = EventEmitter("t", "a", tracer_provider=telemetry.tracer_provider)
    with em.turn() as turn:
        turn.item("sql_execution", "int keys").complete(output={1: "a", 2: "b"})
    hooked = EventEmitter("t2", "a", tracer_provider=telemetry.tracer_provider,
                          content=Content(redact=broken_hook))
    with hooked.turn() as turn:
        turn.item("sql_execution", "hook fails").complete(output={"secret": 1})
    first = next(e for e in logged(em) if e["type"] == "item.completed")["item"]
    assert first["status"] == "completed" and first["output"] == {"1": "a", "2": "b"}
    second = next(e for e in logged(hooked) if e["type"] == "item.completed")["item"]
    assert second["status"] == "completed"
    assert second["output"] == "[not recorded: RuntimeError]"
    assert em.open_work() == [] and hooked.open_work() == []
    em.close()
    hooked.close()


def test_errors_reach_spans_through_the_same_content_pass(telemetry: Telemetry) -> None:
    from otel_events import Content

    em = EventEmitter("t", "a", tracer_provider=telemetry.tracer_provider,
                      content=Content(redact=lambda v: v.replace("Alice", "<name>")
                                      if isinstance(v, str) else v))
    with pytest.raises(ValueError), em.turn() as turn, turn.item("sql_execution", "q"):
        raise ValueError("Alice's password=hunter22 was wrong")
    event = next(e for e in logged(em) if e["type"] == "item.completed")["item"]["error"]
    span = telemetry.span("execute_tool sql_execution")
    recorded = (span.events[0].attributes or {})["exception.message"]
    assert event["message"] == span.status.description == recorded
    assert "hunter22" not in str(recorded) and "Alice" not in str(recorded)
    em.close()


def test_published_events_cannot_override_stamps_and_are_scrubbed(
        emitter: EventEmitter) -> None:
    from otel_events.protocol import ErrorEvent

    emitter.publish(ErrorEvent(seq=99, thread_id="other", message="token=abcdef123456"))
    emitter.publish(ErrorEvent(message="second"))
    events = logged(emitter)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[1]["thread_id"] == "thread-1"
    assert events[1]["message"] == "token=[REDACTED]"


def test_ended_turns_take_no_items_and_ended_items_no_progress(emitter: EventEmitter) -> None:
    with emitter.turn() as turn:
        item = turn.item("reasoning", "x")
        item.complete()
        item.progress(0.5, "late")  # after completion: ignored
    with pytest.raises(RuntimeError, match="has ended"):
        turn.item("reasoning", "too late")
    assert [e["type"] for e in logged(emitter)].count("progress.update") == 0


def test_jsonl_sink_keeps_the_events_published_as_the_emitter_closes(
        tmp_path: Any, telemetry: Telemetry) -> None:
    import io
    import time as _time

    class SlowStream(io.BytesIO):
        """A pipe whose flush takes a while: widens the close-versus-read window."""

        def flush(self) -> None:
            _time.sleep(0.005)
            super().flush()

        def close(self) -> None:  # keep the bytes readable after the sink is done
            pass

    for _ in range(10):
        stream = SlowStream()
        em = EventEmitter("t", "a", tracer_provider=telemetry.tracer_provider,
                          sinks=[JsonlSink(stream=stream)])
        turn = em.turn()
        turn.item("command_execution", "left open")
        em.close()  # abandons the item and the turn, then stops the sink
        kinds = [orjson.loads(line)["type"] for line in stream.getvalue().splitlines()]
        assert kinds[-2:] == ["item.completed", "turn.failed"], kinds


def test_work_ended_from_many_threads_at_once_ends_exactly_once(
        emitter: EventEmitter, telemetry: Telemetry) -> None:
    turn = emitter.turn()
    items = [turn.item("sql_execution", "q", name="db") for _ in range(50)]
    barrier = threading.Barrier(4)

    def end_all(index: int) -> None:
        barrier.wait()
        for item in items:
            if index % 2:
                item.complete(output={"by": index})
            else:
                item.fail(RuntimeError(f"by {index}"))
        turn.complete()

    threads = [threading.Thread(target=end_all, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = logged(emitter)
    ended = [e["item"]["id"] for e in events if e["type"] == "item.completed"]
    assert sorted(ended) == sorted(item.id for item in items)  # each once
    assert types(events).count("turn.completed") == 1
    assert emitter.open_work() == []
    spans = [s for s in telemetry.spans() if s.name == "execute_tool db"]
    assert len(spans) == 50


def test_a_repeated_description_is_scrubbed_every_time(emitter: EventEmitter) -> None:
    # Short texts are scrubbed once per distinct text (a cache): every use still is.
    description = "curl -H 'Authorization: Bearer abcdefghijklmnop' https://api"
    with emitter.turn() as turn:
        for _ in range(3):
            turn.item("command_execution", description).complete()
    started = [e["item"]["description"] for e in logged(emitter) if e["type"] == "item.started"]
    assert len(started) == 3
    assert all("abcdefghijklmnop" not in d and "[REDACTED]" in d for d in started)


def test_large_outputs_cannot_make_the_emitter_hold_more_than_buffer_bytes(
        telemetry: Telemetry) -> None:
    emitter = EventEmitter("big", "agent", tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider, buffer_bytes=100_000)
    reader = emitter.log.cursor(after=0)
    read: list[str] = []
    with emitter.turn() as turn:
        for _ in range(20):
            turn.item("command_execution", "cat a big file", name="sh").complete(
                output="x" * 30_000)
            entries, gap = reader.read()  # a reader that keeps up loses nothing
            assert gap is None
            read += [entry.type for entry in entries]
    assert emitter.log.bytes <= 100_000
    assert read.count("item.completed") == 20
    # The default bound is in bytes as well as in events.
    assert EventEmitter("default", "agent", tracer_provider=telemetry.tracer_provider,
                        meter_provider=telemetry.meter_provider).log.max_bytes == 16 * 2**20
    emitter.close()
