"""Live and replayed alike: the emitter's own JSONL fed back through ingest gives the
same span tree, statuses, error types and attributes as the emitter made live."""

from __future__ import annotations

import io
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from otel_events import EventEmitter, JsonlSink
from otel_events.ingest import Ingester
from otel_events.metrics import AgentMetrics
from tests.conftest import Telemetry

# Attributes both paths must agree on (ids and timings are compared separately).
COMPARED = ("gen_ai.operation.name", "gen_ai.agent.name", "gen_ai.tool.name",
            "gen_ai.data_source.id", "gen_ai.guardrail.component.name", "error.type",
            "otel_events.item.id", "otel_events.item.type", "otel_events.item.parent_id",
            "otel_events.item.description", "otel_events.item.status",
            "otel_events.item.output", "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens", "otel_events.turn.id")


def tree(spans: list[ReadableSpan]) -> list[tuple[Any, ...]]:
    """Each span as (path of names from its root, status, compared attributes, duration)."""
    by_id = {span.context.span_id: span for span in spans}
    out = []
    for span in spans:
        path = [span.name]
        parent = span.parent
        while parent is not None and parent.span_id in by_id:
            node = by_id[parent.span_id]
            path.insert(0, node.name)
            parent = node.parent
        attributes = span.attributes or {}
        duration_ms = round(((span.end_time or 0) - (span.start_time or 0)) / 1e6, 3)
        out.append((tuple(path), span.status.status_code.name,
                    tuple((key, attributes.get(key)) for key in COMPARED), duration_ms))
    return sorted(out, key=repr)


def run_agent(emitter: EventEmitter) -> None:
    with emitter.turn() as turn:
        turn.add_usage(input_tokens=120, output_tokens=30)
        with turn.item("doc_retrieval", "find the schema", name="docs") as search:
            turn.item("reasoning", "read the hits").complete(output="two tables")
            search.complete(output=[{"doc": "schema.md"}])
        turn.item("sql_execution", "count rows", name="sqlite").fail(
            RuntimeError("no such table"))
        turn.item("guardrail_check", "pii", name="pii-filter").decline("contains an email")
        turn.item("command_execution", "slow job").cancel("superseded")
        turn.item("agent_message", "answer").complete(output="42 rows")
    with pytest.raises(KeyError), emitter.turn() as turn:
        turn.item("command_execution", "ls").complete(output={"exit_code": 0})
        raise KeyError("missing")
    turn = emitter.turn()
    turn.item("web_search", "weather")
    turn.cancel("the user closed the tab")


def test_replaying_the_emitters_jsonl_gives_the_same_trace(telemetry: Telemetry) -> None:
    out = io.BytesIO()
    emitter = EventEmitter("parity", "data-agent", tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider, sinks=[JsonlSink(stream=out)])
    run_agent(emitter)
    emitter.close()
    live = tree(telemetry.spans())
    telemetry.exporter.clear()

    ingester = Ingester(telemetry.tracer_provider.get_tracer("replay"),
                        AgentMetrics(telemetry.meter_provider.get_meter("replay")), "data-agent")
    result = ingester.feed_lines(out.getvalue().splitlines())
    assert result.rejected == []
    replayed = tree(telemetry.spans())
    assert [entry[:3] for entry in replayed] == [entry[:3] for entry in live]
    # Durations come from the events' microsecond timestamps: equal within rounding.
    for (_, _, _, replayed_ms), (_, _, _, live_ms) in zip(replayed, live, strict=True):
        assert abs(replayed_ms - live_ms) <= 0.002
