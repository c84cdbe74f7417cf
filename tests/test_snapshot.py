"""The thread state folded from events: Codex's stream, the emitter's, and its bounds."""

from __future__ import annotations

import orjson
import pytest

from otel_events import EventEmitter
from otel_events.bridge.snapshot import ThreadSnapshot
from otel_events.protocol import parse_event
from tests.conftest import FIXTURES, Telemetry, logged


def fold(events: list[dict[str, object]], **limits: int) -> ThreadSnapshot:
    snapshot = ThreadSnapshot("th", **limits)
    for seq, event in enumerate(events, 1):
        snapshot.apply(parse_event(event), seq)
    return snapshot


def test_codex_stream_without_turn_ids_or_timestamps() -> None:
    lines = (FIXTURES / "codex-exec-sample.jsonl").read_bytes().splitlines()
    snapshot = fold([orjson.loads(line) for line in lines])
    state = snapshot.to_dict()
    assert state["status"] == "completed"
    assert state["last_seq"] == len(lines)
    (turn,) = state["turns"]
    assert turn["turn_id"] == "turn_1"
    items = {item["id"]: item for item in turn["items"]}
    assert list(items) == ["item_0", "item_1", "item_2", "item_3", "item_4"]
    assert items["item_1"]["status"] == "failed" and items["item_1"]["failed"]
    assert items["item_3"]["status"] == "completed"
    assert items["item_0"]["status"] == "completed"  # completed events may omit status
    assert turn["failed_items"] == 1
    assert turn["usage"] == {"input_tokens": 24763, "cached_input_tokens": 24448,
                             "output_tokens": 122}
    assert state["usage"]["output_tokens"] == 122


def test_emitter_stream_statuses_durations_usage_and_failures(telemetry: Telemetry) -> None:
    emitter = EventEmitter("th", tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider)
    with emitter.turn() as turn:
        with turn.item("sql_execution", "count rows") as item:
            item.progress(0.25, "scanning")
        turn.add_usage(input_tokens=100, output_tokens=7)
        failing = turn.item("chart_generation", "draw chart")
        failing.fail(ValueError("no data"))
        running_state = fold(logged(emitter)).summary()
    with pytest.raises(RuntimeError), emitter.turn() as second:
        with second.item("doc_retrieval", "find docs"):
            pass
        raise RuntimeError("model unavailable")
    state = fold(logged(emitter)).to_dict()
    emitter.close()

    assert running_state["status"] == "running"
    assert running_state["usage"]["input_tokens"] == 100  # token.count, before the end
    first, failed = state["turns"]
    assert first["status"] == "completed" and not first["failed"]
    assert first["trace_id"] and len(first["trace_id"]) == 32
    assert first["duration_ms"] is not None and first["duration_ms"] >= 0
    sql, chart = first["items"]
    assert (sql["description"], sql["status"], sql["progress"]) == ("count rows",
                                                                    "completed", 0.25)
    assert sql["duration_ms"] is not None
    assert chart["failed"] and chart["error"] == {"message": "no data", "type": "ValueError"}
    assert first["failed_items"] == 1
    assert failed["status"] == "failed" and failed["failed"]
    assert failed["error"]["message"] == "model unavailable"
    assert state["status"] == "failed" and state["failed"]
    assert state["usage"]["input_tokens"] == 100


def test_state_is_bounded_whatever_the_thread_length() -> None:
    events: list[dict[str, object]] = []
    for turn in range(30):
        events.append({"type": "turn.started", "turn_id": f"t{turn}"})
        for n in range(20):
            item = {"id": f"t{turn}-{n}", "type": "x", "status": "completed"}
            events.append({"type": "item.completed", "turn_id": f"t{turn}", "item": item})
        events.append({"type": "turn.completed", "turn_id": f"t{turn}",
                       "usage": {"input_tokens": 1}})
    state = fold(events, max_turns=5, max_items=8).to_dict()
    assert len(state["turns"]) == 5
    assert state["turns_dropped"] == 25
    assert state["turn_count"] == 30
    assert state["turns"][-1]["turn_id"] == "t29"
    assert len(state["turns"][-1]["items"]) == 8
    assert state["turns"][-1]["items_dropped"] == 12
    assert state["usage"]["input_tokens"] == 30  # dropped turns still count


def test_items_of_a_turn_never_started_still_land_somewhere() -> None:
    state = fold([
        {"type": "item.started", "turn_id": "late", "item": {"id": "a", "type": "x"}},
        {"type": "item.started", "item": {"id": "b", "type": "x"}},
    ]).to_dict()
    assert [t["turn_id"] for t in state["turns"]] == ["late"]
    assert state["running_turn"] == "late"
    # No turn id and a running turn: the item belongs to it.
    assert [i["id"] for i in state["turns"][0]["items"]] == ["a", "b"]


def test_a_late_event_of_a_dropped_turn_does_not_mark_the_thread_running() -> None:
    from otel_events.bridge.snapshot import ThreadSnapshot
    from otel_events.protocol import parse_event

    snapshot = ThreadSnapshot("t", max_turns=2)
    for n in range(1, 4):  # turn_1 is let go when turn_3 starts
        snapshot.apply(parse_event({"type": "turn.started", "turn_id": f"turn_{n}"}), 0)
        snapshot.apply(parse_event({"type": "turn.completed", "turn_id": f"turn_{n}",
                                    "usage": {"input_tokens": 1, "cached_input_tokens": 0,
                                              "output_tokens": 1}}), 0)
    snapshot.apply(parse_event({"type": "item.updated", "turn_id": "turn_1",
                                "item": {"id": "late", "type": "reasoning"}}), 0)
    assert "turn_1" not in snapshot.turns
    assert snapshot._running is None


def item_event(kind: str, item: dict[str, object], **fields: object) -> dict[str, object]:
    return {"type": kind, "turn_id": "t1", "item": item, **fields}


def test_items_keep_their_content_bounded_and_say_what_was_cut() -> None:
    big = {"rows": [{"region": f"r{n}", "revenue": n} for n in range(500)]}
    state = fold([
        {"type": "turn.started", "turn_id": "t1"},
        item_event("item.started", {"id": "msg", "type": "agent_message",
                                    "text": "Revenue rose 4%."}),
        # Codex's completed event leaves out the text the started one had.
        item_event("item.completed", {"id": "msg", "type": "agent_message",
                                      "status": "completed"}),
        item_event("item.completed", {"id": "q", "type": "sql_execution",
                                      "status": "completed", "output": big}),
        item_event("item.completed", {"id": "small", "type": "x", "status": "completed",
                                      "output": {"passed": True}}),
        item_event("item.completed", {"id": "cmd", "type": "command_execution",
                                      "status": "completed", "command": "ls",
                                      "aggregated_output": "a\n" * 5000, "exit_code": 0}),
    ], max_item_content=1000).to_dict()
    items = {item["id"]: item for item in state["turns"][0]["items"]}
    assert items["msg"]["text"] == "Revenue rose 4%."
    assert items["msg"]["truncated"] == []
    assert items["small"]["output"] == {"passed": True}
    # Too big: the start of its JSON, marked cut.
    output = items["q"]["output"]
    assert isinstance(output, str) and len(output) == 1000
    assert output.startswith('{"rows":[{"region":"r0","revenue":0}')
    assert items["q"]["truncated"] == ["output"]
    cmd = items["cmd"]
    assert len(cmd["aggregated_output"]) + len(cmd["command"]) + 1 <= 1000
    assert cmd["command"] == "ls" and cmd["exit_code"] == 0
    assert cmd["truncated"] == ["aggregated_output"]


def test_a_threads_content_is_capped_oldest_items_first() -> None:
    events: list[dict[str, object]] = [{"type": "turn.started", "turn_id": "t1"}]
    for n in range(100):
        events.append(item_event("item.completed", {"id": f"i{n}", "type": "x",
                                                    "status": "completed",
                                                    "output": "x" * 900}))
    snapshot = fold(events, max_item_content=1000, max_content=10_000)
    assert snapshot.content_size <= 10_000
    items = snapshot.to_dict()["turns"][0]["items"]
    kept = [item["id"] for item in items if "output" in item]
    assert kept == [f"i{n}" for n in range(89, 100)]  # 11 x 900 characters fit
    assert items[0]["content_dropped"] and "output" not in items[0]
    assert items[0]["status"] == "completed"  # statuses and timings stay


def test_content_of_dropped_turns_and_items_is_not_counted() -> None:
    events: list[dict[str, object]] = []
    for turn in range(10):
        events.append({"type": "turn.started", "turn_id": f"t{turn}"})
        for n in range(10):
            events.append({"type": "item.completed", "turn_id": f"t{turn}",
                           "item": {"id": f"{turn}-{n}", "type": "x", "output": "y" * 100}})
    snapshot = fold(events, max_turns=2, max_items=5, max_content=1 << 20)
    assert snapshot.content_size == 2 * 5 * 100  # what the kept items hold, no more


def test_outcomes_tell_cancelled_and_abandoned_from_failed() -> None:
    def ended(kind: str, error_type: str | None) -> dict[str, object]:
        return {"id": kind, "type": "x", "status": "failed",
                "error": {"message": "stopped", "type": error_type}}

    state = fold([
        {"type": "turn.started", "turn_id": "t1"},
        item_event("item.completed", ended("broken", "ValueError")),
        item_event("item.completed", ended("left", "abandoned")),
        item_event("item.completed", {"id": "stopped", "type": "x", "status": "cancelled"}),
        item_event("item.completed", {"id": "no", "type": "x", "status": "declined"}),
        {"type": "turn.failed", "turn_id": "t1",
         "error": {"message": "user pressed stop", "type": "cancelled"}},
    ])
    snapshot = state.to_dict()
    outcomes = {item["id"]: item["outcome"] for item in snapshot["turns"][0]["items"]}
    assert outcomes == {"broken": "failed", "left": "abandoned", "stopped": "cancelled",
                        "no": "declined"}
    assert snapshot["turns"][0]["outcome"] == "cancelled"
    assert snapshot["turns"][0]["status"] == "failed"  # the protocol's status is kept
    summary = state.summary()
    assert (summary["status"], summary["outcome"]) == ("failed", "cancelled")
    running = fold([{"type": "turn.started", "turn_id": "t1"}]).to_dict()
    assert running["outcome"] == "running" and running["turns"][0]["outcome"] == "running"


def test_items_carry_their_span_and_turns_their_detailed_usage() -> None:
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    state = fold([
        {"type": "turn.started", "turn_id": "t1", "trace_id": trace,
         "span_id": "1111111111111111"},
        item_event("item.started", {"id": "i", "type": "x"}, trace_id=trace, span_id=span),
        item_event("item.completed", {"id": "i", "type": "x", "status": "completed"}),
        {"type": "token.count", "turn_id": "t1",
         "usage": {"input_tokens": 5, "cached_input_tokens": 1, "output_tokens": 2,
                   "reasoning_output_tokens": 1, "cache_write_input_tokens": 3}},
    ]).to_dict()
    turn = state["turns"][0]
    assert (turn["items"][0]["trace_id"], turn["items"][0]["span_id"]) == (trace, span)
    assert turn["usage"] == {"input_tokens": 5, "cached_input_tokens": 1, "output_tokens": 2,
                             "cache_write_input_tokens": 3, "reasoning_output_tokens": 1}
    assert state["usage"] == {"input_tokens": 5, "cached_input_tokens": 1,
                              "output_tokens": 2}


def test_content_and_its_order_survive_a_checkpoint() -> None:
    """The Redis broker checkpoints the fold as JSON and folds on from it: content, what
    was cut, and which content goes first past the budget must come back the same."""
    from otel_events.bridge.redis import decode_state, encode_state

    events: list[dict[str, object]] = [{"type": "turn.started", "turn_id": "t1"}]
    for n in range(40):
        output: object = "x" * 900 if n % 2 else {"rows": list(range(n * 40))}
        events.append(item_event("item.completed", {"id": f"i{n}", "type": "x",
                                                    "status": "completed", "output": output}))
    parsed = [parse_event(event) for event in events]
    limits = {"max_item_content": 1000, "max_content": 10_000}
    whole = ThreadSnapshot("th", **limits)
    for seq, event in enumerate(parsed, 1):
        whole.apply(event, seq)
    for cut in (5, 17, 30):
        resumed = ThreadSnapshot("th", **limits)
        for seq, event in enumerate(parsed[:cut], 1):
            resumed.apply(event, seq)
        restored = decode_state(encode_state(resumed))  # raises if anything is not JSON
        assert restored.to_dict() == resumed.to_dict()
        for seq, event in enumerate(parsed[cut:], cut + 1):
            restored.apply(event, seq)
        assert restored.to_dict() == whole.to_dict(), cut
        assert restored.content_size == whole.content_size <= 10_000
