"""How turns and items become spans, after the OpenTelemetry GenAI conventions.

The emitter (live) and ``ingest`` (replayed JSONL) both build spans through these
functions, so the two produce the same trace for the same run.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from otel_events.endings import Ending

__all__ = [
    "end_span",
    "item_operation",
    "set_item_status",
    "set_usage",
    "start_item_span",
    "start_turn_span",
]

# Item types whose work is a tool call in GenAI terms.
_TOOL_TYPES = frozenset({
    "command_execution", "sql_execution", "chart_generation", "mcp_tool_call",
    "collab_tool_call", "web_search",
})


_OPERATIONS: dict[str, tuple[str | None, SpanKind]] = {
    **dict.fromkeys(_TOOL_TYPES, ("execute_tool", SpanKind.INTERNAL)),
    "doc_retrieval": ("retrieval", SpanKind.CLIENT),
    "guardrail_check": ("apply_guardrail", SpanKind.CLIENT),
}
_NO_OPERATION: tuple[str | None, SpanKind] = (None, SpanKind.INTERNAL)


def item_operation(item_type: str) -> tuple[str | None, SpanKind]:
    """The ``gen_ai.operation.name`` of an item type (None if none fits) and span kind."""
    return _OPERATIONS.get(item_type, _NO_OPERATION)


def start_turn_span(
    tracer: Tracer,
    agent_name: str,
    thread_id: str,
    turn_id: str,
    context: Context | None = None,
    start_time: int | None = None,
) -> Span:
    """``invoke_agent {agent}``: the child of the current span if any, else a root."""
    return tracer.start_span(
        f"invoke_agent {agent_name}",
        context=context,
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent_name,
            "gen_ai.conversation.id": thread_id,
            "otel_events.turn.id": turn_id,
        },
        start_time=start_time,
    )


def start_item_span(
    tracer: Tracer,
    context: Context,
    item_id: str,
    item_type: str,
    description: str | None,
    name: str | None,
    parent_id: str | None = None,
    start_time: int | None = None,
    call_id: str | None = None,
) -> tuple[Span, str | None]:
    """The span of one item, with its identifying attributes; returns it and its operation.

    ``call_id`` is the model's id for a tool call (an item's ``call_id`` field), the
    ``gen_ai.tool.call.id`` of the conventions; the item's own id is not one.
    """
    operation, kind = _OPERATIONS.get(item_type, _NO_OPERATION)
    target = name or item_type
    attributes: dict[str, Any] = {
        "otel_events.item.id": item_id,
        "otel_events.item.type": item_type,
    }
    if description:
        attributes["otel_events.item.description"] = description
    if parent_id:
        attributes["otel_events.item.parent_id"] = parent_id
    if operation is None:
        span_name = item_type
    else:
        span_name = f"{operation} {target}"
        attributes["gen_ai.operation.name"] = operation
        if operation == "execute_tool":
            attributes["gen_ai.tool.name"] = target
            if call_id:
                attributes["gen_ai.tool.call.id"] = call_id
        elif operation == "retrieval":
            attributes["gen_ai.data_source.id"] = target
        else:
            attributes["gen_ai.guardrail.component.name"] = target
    span = tracer.start_span(
        span_name, context=context, kind=kind, attributes=attributes, start_time=start_time
    )
    return span, operation


def set_item_status(attributes: dict[str, Any], status: str) -> None:
    """``otel_events.item.status`` for an item that did not complete (failed, declined,
    cancelled, abandoned), on its span and its duration metric. A completed item carries
    no status attribute: no ``error.type`` (and on a span no ERROR status) already says
    it, and each attribute costs the SDK about a sixth of a bare span."""
    if status != "completed":
        attributes["otel_events.item.status"] = status


def end_span(span: Span, ending: Ending, *, message: str | None = None,
             end_time: int | None = None) -> None:
    """End a span as ``ending`` says: ``error.type`` unless completed, status ERROR for
    failed and abandoned work (not for a cancellation), the exception recorded.

    ``message`` must already have been through the content pass: it replaces the
    exception's own text, so the span says what the events say.
    """
    error_type = ending.error_type
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        if ending.is_error:
            if ending.exception is not None:
                span.record_exception(ending.exception, timestamp=end_time, escaped=True,
                                      attributes={"exception.message": message or error_type})
            span.set_status(Status(StatusCode.ERROR, message or error_type))
    span.end(end_time=end_time)


def set_usage(span: Span, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> None:
    """Token usage of a turn, in GenAI attribute names."""
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    span.set_attribute("gen_ai.usage.cache_read.input_tokens", cached_input_tokens)
