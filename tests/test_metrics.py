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

    tool = metrics["gen_ai.execute_tool.duration"]
    assert [dict(dp.attributes) for dp in tool] == [
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "sqlite"}]
    assert list(tool[0].explicit_bounds) == TOOL_BUCKETS and TOOL_BUCKETS[-1] == 81.92

    items = {(dp.attributes["otel_events.item.type"], dp.attributes["otel_events.item.status"])
             for dp in metrics["otel_events.item.duration"]}
    assert items == {("sql_execution", "completed"), ("guardrail_check", "failed")}

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
