"""Spans as Jaeger returns them, from either query API, in one shape for assertions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Tags the legacy API derives from the span's status, kind and scope.
_DERIVED_TAGS = {"error", "otel.status_code", "otel.status_description", "span.kind",
                 "otel.scope.name", "otel.scope.version"}


@dataclass
class StoredSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    attributes: dict[str, Any]
    error: bool
    status_message: str | None
    events: list[dict[str, Any]] = field(default_factory=list)


def from_legacy(trace: dict[str, Any]) -> list[StoredSpan]:
    """``/api/traces/{id}``: ``{"spans": [...], "processes": {...}}``."""
    processes = trace.get("processes") or {}
    spans = []
    for raw in trace["spans"]:
        tags = {tag["key"]: tag["value"] for tag in raw.get("tags") or []}
        parents = [ref["spanID"] for ref in raw.get("references") or []
                   if ref.get("refType") == "CHILD_OF"]
        events = [{f["key"]: f["value"] for f in log.get("fields") or []}
                  for log in raw.get("logs") or []]
        process = processes.get(raw.get("processID"), {})
        spans.append(StoredSpan(
            trace_id=raw["traceID"],
            span_id=raw["spanID"],
            parent_id=parents[0] if parents else None,
            name=raw["operationName"],
            service=process.get("serviceName", ""),
            attributes={k: v for k, v in tags.items() if k not in _DERIVED_TAGS},
            error=tags.get("otel.status_code") == "ERROR" or tags.get("error") is True,
            status_message=tags.get("otel.status_description"),
            events=events,
        ))
    return spans


def _value(value: dict[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # a string in OTLP JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    return value


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value") or {}) for item in items or []}


def from_v3(result: dict[str, Any]) -> list[StoredSpan]:
    """``/api/v3/traces/{id}``: OTLP JSON, ``{"resourceSpans": [...]}``."""
    spans = []
    for resource_spans in result["resourceSpans"]:
        resource = _attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for raw in scope_spans.get("spans") or []:
                status = raw.get("status") or {}
                code = status.get("code")
                events = [{"event": e.get("name"), **_attributes(e.get("attributes"))}
                          for e in raw.get("events") or []]
                spans.append(StoredSpan(
                    trace_id=raw["traceId"],
                    span_id=raw["spanId"],
                    parent_id=raw.get("parentSpanId") or None,
                    name=raw["name"],
                    service=str(resource.get("service.name", "")),
                    attributes=_attributes(raw.get("attributes")),
                    error=code in (2, "STATUS_CODE_ERROR"),
                    status_message=status.get("message"),
                    events=events,
                ))
    return spans


def by_name(spans: list[StoredSpan]) -> dict[str, StoredSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), f"span names not unique: {[s.name for s in spans]}"
    return named


def root(spans: list[StoredSpan]) -> StoredSpan:
    roots = [span for span in spans if span.parent_id is None]
    assert len(roots) == 1, f"roots: {[s.name for s in roots]}"
    return roots[0]
