"""Metrics: semconv names and buckets, bounded attributes, turns by outcome."""

from __future__ import annotations

import pytest

from otel_events import EventEmitter
from otel_events.metrics import AGENT_BUCKETS, TOOL_BUCKETS

from .conftest import Telemetry


def test_durations_counters_and_tokens(emitter: EventEmitter, telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("sql_execution", "q", name="sqlite").complete()
        turn.item("guardrail_check", "g").fail("blocked", error_type="blocked")
        turn.add_usage(input_tokens=50, output_tokens=7)
    with pytest.raises(ValueError), emitter.turn():
        raise ValueError("boom")
    metrics = telemetry.metrics()

    agent = metrics["gen_ai.invoke_agent.duration"]
    assert {dp.attributes.get("error.type") for dp in agent} == {None, "ValueError"}
    assert list(agent[0].explicit_bounds) == AGENT_BUCKETS
    assert AGENT_BUCKETS[0] == 0.1 and AGENT_BUCKETS[-1] == 409.6

    # Each item in exactly one histogram: tool calls in the GenAI one, with the item type
    # beside the tool name; the other items in otel_events.item.duration. A completed
    # item has no status (nor error.type): absent means completed, as on its span.
    tool = metrics["gen_ai.execute_tool.duration"]
    assert [dict(dp.attributes) for dp in tool] == [
        {"gen_ai.tool.name": "sqlite", "otel_events.item.type": "sql_execution"}]
    assert list(tool[0].explicit_bounds) == TOOL_BUCKETS and TOOL_BUCKETS[-1] == 81.92
    assert [dict(dp.attributes) for dp in metrics["otel_events.item.duration"]] == [
        {"otel_events.item.type": "guardrail_check", "otel_events.item.status": "failed",
         "error.type": "blocked"}]

    turns = {dp.attributes["otel_events.turn.outcome"]: dp.value
             for dp in metrics["otel_events.turns"]}
    assert turns == {"completed": 1, "failed": 1}

    tokens = {dp.attributes["gen_ai.token.type"]: dp.sum
              for dp in metrics["gen_ai.client.token.usage"]}
    assert tokens == {"input": 50, "output": 7}

    # No unbounded values (thread, turn or item ids) on any metric.
    for points in metrics.values():
        for dp in points:
            for key, value in dp.attributes.items():
                assert "id" not in key.split(".")[-1], key
                assert value not in ("thread-1", "turn_1", "item_1")


def test_a_failed_tool_step_is_one_point_with_its_status_and_error_type(
        emitter: EventEmitter, telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("command_execution", "c", name="sh").fail(RuntimeError("exit 2"))
        turn.item("command_execution", "c", name="sh").cancel()
    metrics = telemetry.metrics()
    assert "otel_events.item.duration" not in metrics
    points = {dp.attributes["otel_events.item.status"]: dict(dp.attributes)
              for dp in metrics["gen_ai.execute_tool.duration"]}
    assert points == {
        "failed": {"gen_ai.tool.name": "sh", "otel_events.item.type": "command_execution",
                   "otel_events.item.status": "failed", "error.type": "RuntimeError"},
        "cancelled": {"gen_ai.tool.name": "sh", "otel_events.item.type": "command_execution",
                      "otel_events.item.status": "cancelled", "error.type": "cancelled"}}


def test_each_status_but_completed_is_a_label(emitter: EventEmitter,
                                              telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("doc_retrieval", "r").complete()
        turn.item("doc_retrieval", "r").decline("not allowed")
        turn.item("doc_retrieval", "r").fail("boom", error_type="Timeout")
        turn.item("doc_retrieval", "r").cancel()
        turn.item("doc_retrieval", "r")  # still open when the turn ends: abandoned
    points = [dict(dp.attributes) for dp in telemetry.metrics()["otel_events.item.duration"]]
    statuses = sorted(str(p.get("otel_events.item.status")) for p in points)
    assert statuses == ["None", "cancelled", "declined", "failed", "failed"]
    assert {p.get("error.type") for p in points} == {None, "Timeout", "cancelled", "abandoned"}


def test_an_exemplar_links_a_step_duration_to_the_step_span(
        emitter: EventEmitter, telemetry: Telemetry) -> None:
    # The SDK's default exemplar filter samples measurements made in a sampled span's
    # context: an entered item's own span, not the turn's (current when the item ends);
    # an item ended without being entered records in the current context.
    with emitter.turn() as turn:
        with turn.item("sql_execution", "q", name="sqlite"):
            pass
        turn.item("command_execution", "c", name="sh").complete()
    spans = {span.name: span.context for span in telemetry.spans()}
    # Exemplars are handed over once, at the collection after their measurement.
    points = {dp.attributes["gen_ai.tool.name"]: dp
              for dp in telemetry.metrics()["gen_ai.execute_tool.duration"]}
    linked = {tool: {(e.trace_id, e.span_id) for e in dp.exemplars}
              for tool, dp in points.items()}
    own, turn_span = spans["execute_tool sqlite"], spans["invoke_agent data-agent"]
    assert linked == {"sqlite": {(own.trace_id, own.span_id)},
                      "sh": {(turn_span.trace_id, turn_span.span_id)}}
