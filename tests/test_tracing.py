"""Spans follow the GenAI conventions: names, kinds, attributes, tree, errors."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from otel_events import EventEmitter

from .conftest import Telemetry


def test_span_tree_names_kinds_and_attributes(emitter: EventEmitter,
                                              telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("sql_execution", "Revenue query", name="sqlite",
                  call_id="call_9f2").complete(output={"n": 1})
        turn.item("doc_retrieval", "Searching the handbook", name="handbook").complete()
        turn.item("guardrail_check", "PII check").complete()
        turn.item("mcp_tool_call", "Calling db.query", tool="query").complete()
        turn.item("reasoning", "Thinking").complete()
        turn.add_usage(input_tokens=120, output_tokens=30, cached_input_tokens=100)
    root = telemetry.span("invoke_agent data-agent")
    assert root.kind is SpanKind.INTERNAL and root.parent is None
    assert dict(root.attributes or {}) | {} == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "data-agent",
        "gen_ai.conversation.id": "thread-1", "otel_events.turn.id": turn.id,
        "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100}
    expected = {
        "execute_tool sqlite": SpanKind.INTERNAL, "retrieval handbook": SpanKind.CLIENT,
        "apply_guardrail guardrail_check": SpanKind.CLIENT,
        "execute_tool mcp_tool_call": SpanKind.INTERNAL, "reasoning": SpanKind.INTERNAL,
    }
    for name, kind in expected.items():
        span = telemetry.span(name)
        assert span.kind is kind
        assert span.parent is not None and root.context is not None
        assert span.parent.span_id == root.context.span_id
        assert span.context is not None and span.context.trace_id == root.context.trace_id
    sql = telemetry.span("execute_tool sqlite").attributes or {}
    assert sql["gen_ai.operation.name"] == "execute_tool"
    assert sql["gen_ai.tool.name"] == "sqlite"
    # The model's tool call id, given as the item's call_id; the item's own id is not one.
    assert sql["gen_ai.tool.call.id"] == "call_9f2"
    assert sql["otel_events.item.id"] == "item_1"
    assert sql["otel_events.item.type"] == "sql_execution"
    assert sql["otel_events.item.description"] == "Revenue query"
    assert sql["otel_events.item.output"] == '{"n":1}'
    # Completed, output whole on the span: neither a status nor a length attribute.
    assert "otel_events.item.status" not in sql
    assert "otel_events.item.output.length" not in sql
    assert "gen_ai.tool.call.id" not in (telemetry.span("execute_tool mcp_tool_call")
                                         .attributes or {})
    assert (telemetry.span("retrieval handbook").attributes or {})[
        "gen_ai.data_source.id"] == "handbook"


def test_turn_is_child_of_the_applications_current_span(emitter: EventEmitter,
                                                       telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("POST /chat") as request, emitter.turn():
        pass
    turn = telemetry.span("invoke_agent data-agent")
    assert turn.parent is not None and turn.parent.span_id == request.get_span_context().span_id


def test_application_spans_inside_an_item_become_its_children(emitter: EventEmitter,
                                                             telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with emitter.turn() as turn, turn.item("command_execution", "ls"):
        with tracer.start_as_current_span("subprocess"):
            pass
    child = telemetry.span("subprocess")
    item = telemetry.span("execute_tool command_execution")
    assert child.parent is not None and item.context is not None
    assert child.parent.span_id == item.context.span_id


def test_failure_sets_error_status_type_and_exception(emitter: EventEmitter,
                                                     telemetry: Telemetry) -> None:
    with pytest.raises(TimeoutError), emitter.turn() as turn, turn.item(
            "sql_execution", "slow query"):
        raise TimeoutError("query took too long")
    for name in ("execute_tool sql_execution", "invoke_agent data-agent"):
        span = telemetry.span(name)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "query took too long"
        assert (span.attributes or {})["error.type"] == "TimeoutError"
        exceptions = [e for e in span.events if e.name == "exception"]
        assert len(exceptions) == 1
        assert (exceptions[0].attributes or {})["exception.type"] == "TimeoutError"


def test_explicit_fail_without_exception_and_abandoned(emitter: EventEmitter,
                                                      telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("guardrail_check", "PII").fail("found an email", error_type="pii_found")
        turn.item("reasoning", "left open")
    guard = telemetry.span("apply_guardrail guardrail_check")
    assert (guard.attributes or {})["error.type"] == "pii_found"
    assert guard.events == ()  # no exception to record
    left = telemetry.span("reasoning")
    assert left.status.status_code is StatusCode.ERROR
    assert (left.attributes or {})["error.type"] == "abandoned"
    assert telemetry.span("invoke_agent data-agent").status.status_code is StatusCode.UNSET


def test_output_attribute_is_truncated_to_the_limit(telemetry: Telemetry) -> None:
    from otel_events import Content

    em = EventEmitter("t", "a", tracer_provider=telemetry.tracer_provider,
                      content=Content(max_attribute_chars=50))
    with em.turn() as turn:
        turn.item("command_execution", "big").complete(output="x" * 500)
    attributes = telemetry.span("execute_tool command_execution").attributes or {}
    value = str(attributes["otel_events.item.output"])
    assert value.startswith('"xxxx') and value.endswith("[truncated 452 chars]")
    assert attributes["otel_events.item.output.length"] == 502  # not whole on the span
    em.close()


@pytest.mark.parametrize("end", ["fail", "decline", "cancel"])
def test_an_item_that_did_not_complete_says_so_on_its_span(end: str,
                                                           telemetry: Telemetry) -> None:
    em = EventEmitter("t", "a", tracer_provider=telemetry.tracer_provider)
    with em.turn() as turn:
        item = turn.item("command_execution", "pytest")
        if end == "fail":
            item.fail(RuntimeError("boom"))
        else:
            getattr(item, end)("not now")
    expected = {"fail": "failed", "decline": "declined", "cancel": "cancelled"}[end]
    attributes = telemetry.span("execute_tool command_execution").attributes or {}
    assert attributes["otel_events.item.status"] == expected
    em.close()


def test_event_timestamps_match_span_times(emitter: EventEmitter,
                                           telemetry: Telemetry) -> None:
    from datetime import datetime

    from .conftest import logged

    with emitter.turn() as turn:
        turn.item("reasoning", "x").complete()
    started = next(e for e in logged(emitter) if e["type"] == "item.started")
    span = telemetry.span("reasoning")
    moment = datetime.fromisoformat(started["timestamp"])
    assert span.start_time is not None
    assert int(moment.timestamp() * 1e6) == span.start_time // 1000
