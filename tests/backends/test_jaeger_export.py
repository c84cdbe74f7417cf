"""1. The emitter exports over OTLP gRPC and OTLP HTTP to a real Jaeger; the traces read
back through both of Jaeger's HTTP APIs hold what the agent did."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import otel_events
from otel_events import EventEmitter, ItemType

from .servers import Jaeger
from .traces import StoredSpan, by_name, from_legacy, from_v3, root


class QueryFailed(Exception):
    pass


READERS: dict[str, Callable[[Jaeger, str], list[StoredSpan] | None]] = {
    "api-traces": lambda jaeger, trace_id: (
        from_legacy(found) if (found := jaeger.trace(trace_id)) else None),
    "api-v3": lambda jaeger, trace_id: (
        from_v3(found) if (found := jaeger.trace_v3(trace_id)) else None),
}


def run_agent(emitter: EventEmitter) -> tuple[str, str]:
    """A successful turn with two steps, then a turn whose SQL step raises."""
    with emitter.turn() as good:
        with good.item(ItemType.DOC_RETRIEVAL, "Looking up the revenue table",
                       name="catalog") as lookup:
            lookup.complete(output={"tables": ["revenue"]})
        with good.item(ItemType.SQL_EXECUTION, "Running the revenue query",
                       name="sqlite", call_id="call_7q") as query:
            query.complete(output={"rows": 3, "total": 1234.5})
        good.add_usage(input_tokens=100, output_tokens=20, cached_input_tokens=10)
    with pytest.raises(QueryFailed), emitter.turn() as bad:
        bad.add_usage(input_tokens=50, output_tokens=0)
        with bad.item(ItemType.SQL_EXECUTION, "Querying a table that is not there",
                      name="sqlite"):
            raise QueryFailed("no such table: revenew")
    assert good.trace_id and bad.trace_id and good.trace_id != bad.trace_id
    return good.trace_id, bad.trace_id


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_turns_exported_to_jaeger_read_back_through_its_apis(jaeger: Jaeger,
                                                             protocol: str) -> None:
    service = f"e2e-export-{protocol.split('/')[0]}-{uuid.uuid4().hex[:8]}"
    endpoint = jaeger.otlp_grpc if protocol == "grpc" else jaeger.otlp_http
    tel = otel_events.configure(service_name=service, endpoint=endpoint, protocol=protocol,
                                set_global=False)
    emitter = EventEmitter(thread_id="thread-e2e", agent_name="data-agent",
                           tracer_provider=tel.tracer_provider,
                           meter_provider=tel.meter_provider)
    try:
        good_id, bad_id = run_agent(emitter)
    finally:
        emitter.close()
        tel.shutdown()
    assert tel.spans_exported == 5
    assert tel.spans_dropped == 0

    jaeger.wait_for_trace(good_id, spans=3)
    jaeger.wait_for_trace(bad_id, spans=2)
    for api, read in READERS.items():
        good_spans, bad_spans = read(jaeger, good_id), read(jaeger, bad_id)
        assert good_spans is not None and bad_spans is not None, api
        check_good_turn(good_spans, good_id, service)
        check_failed_turn(bad_spans, bad_id, service)


def check_good_turn(spans: list[StoredSpan], trace_id: str, service: str) -> None:
    assert len(spans) == 3, [s.name for s in spans]
    turn = root(spans)
    named = by_name(spans)
    assert set(named) == {"invoke_agent data-agent", "retrieval catalog", "execute_tool sqlite"}
    assert turn.name == "invoke_agent data-agent"
    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.service for s in spans} == {service}
    attrs = turn.attributes
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "data-agent"
    assert attrs["gen_ai.conversation.id"] == "thread-e2e"
    assert attrs["otel_events.turn.id"]
    assert attrs["gen_ai.usage.input_tokens"] == 100
    assert attrs["gen_ai.usage.output_tokens"] == 20
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 10
    assert not turn.error

    lookup, query = named["retrieval catalog"], named["execute_tool sqlite"]
    for item in (lookup, query):
        assert item.parent_id == turn.span_id, item.name
        assert not item.error, item.name
    assert lookup.attributes["otel_events.item.type"] == "doc_retrieval"
    assert lookup.attributes["otel_events.item.description"] == "Looking up the revenue table"
    assert json.loads(lookup.attributes["otel_events.item.output"]) == {"tables": ["revenue"]}
    assert query.attributes["otel_events.item.type"] == "sql_execution"
    assert query.attributes["otel_events.item.description"] == "Running the revenue query"
    assert json.loads(query.attributes["otel_events.item.output"]) == {"rows": 3,
                                                                       "total": 1234.5}
    assert query.attributes["gen_ai.tool.name"] == "sqlite"
    assert query.attributes["gen_ai.tool.call.id"] == "call_7q"


def check_failed_turn(spans: list[StoredSpan], trace_id: str, service: str) -> None:
    assert len(spans) == 2, [s.name for s in spans]
    turn = root(spans)
    (item,) = [s for s in spans if s is not turn]
    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.service for s in spans} == {service}
    assert turn.name == "invoke_agent data-agent"
    assert item.name == "execute_tool sqlite"
    assert item.parent_id == turn.span_id
    for span in (turn, item):
        assert span.error, span.name
        assert span.attributes["error.type"] == "QueryFailed", span.name
        assert span.status_message == "no such table: revenew", span.name
    assert item.attributes["otel_events.item.description"] == (
        "Querying a table that is not there")
    exceptions: list[dict[str, Any]] = [e for e in item.events if e.get("event") == "exception"]
    assert exceptions and exceptions[0]["exception.message"] == "no such table: revenew"
    assert turn.attributes["gen_ai.usage.input_tokens"] == 50
