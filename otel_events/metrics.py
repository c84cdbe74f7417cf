"""Metrics for per-step latency and for alerting on failed turns.

Only bounded attributes go on metrics: agent name, item type, tool name, status and
``error.type``; never thread, turn or item ids.

Every ended item is recorded in exactly one duration histogram:

* tool calls (``execute_tool`` items: commands, SQL, charts, MCP and collab tool calls,
  web searches) in ``gen_ai.execute_tool.duration``, the GenAI conventions' metric, by
  ``gen_ai.tool.name``, with ``otel_events.item.type``, ``otel_events.item.status`` and
  ``error.type`` beside it;
* every other item (retrieval, guardrail checks, reasoning, messages...) in
  ``otel_events.item.duration``, by the same ``otel_events.item.type``,
  ``otel_events.item.status`` and ``error.type``.

So "every step" is the union of the two, summed by item type and status. As on spans,
a completed item has neither ``otel_events.item.status`` nor ``error.type`` (the
conventions' rule for ``error.type``: absent means it worked); the others have a status
(failed, declined, cancelled, abandoned). In PromQL, completed steps are
``otel_events_item_status=""``.

Why so sparing: with the SDK, one measurement costs about half a span, and each
attribute about 8.5K instructions more (checked, copied and hashed on every call). One
histogram per step, not two (they would only repeat each other), and no label that
says what the absence of the others already says. An item used as a context manager
records in its span's context, so an exemplar links a latency to the step's own span
(an item ended without one records in the current context: the enclosing span).
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram, Meter

from otel_events.endings import outcome_of
from otel_events.tracing import set_item_status

__all__ = ["AgentMetrics"]


def _doubling(start: float, count: int) -> list[float]:
    return [round(start * 2**i, 6) for i in range(count)]


# Bucket boundaries advised by the GenAI semantic conventions.
TOOL_BUCKETS = _doubling(0.01, 14)  # 0.01 .. 81.92 s
AGENT_BUCKETS = _doubling(0.1, 13)  # 0.1 .. 409.6 s
TOKEN_BUCKETS = [float(4**i) for i in range(14)]  # 1 .. 67108864


class AgentMetrics:
    """The instruments, created once per meter."""

    def __init__(self, meter: Meter) -> None:
        # Few distinct attribute sets, recorded often: each is built once.
        self._item_cache: dict[tuple[str, str, str | None, str, str | None],
                               tuple[Histogram, dict[str, str]]] = {}
        self.invoke_agent_duration = meter.create_histogram(
            "gen_ai.invoke_agent.duration", unit="s",
            description="Duration of agent turns.",
            explicit_bucket_boundaries_advisory=AGENT_BUCKETS,
        )
        self.execute_tool_duration = meter.create_histogram(
            "gen_ai.execute_tool.duration", unit="s",
            description="Duration of tool executions, by tool, item type and status.",
            explicit_bucket_boundaries_advisory=TOOL_BUCKETS,
        )
        self.item_duration = meter.create_histogram(
            "otel_events.item.duration", unit="s",
            description="Duration of items other than tool calls, by item type and status.",
            explicit_bucket_boundaries_advisory=TOOL_BUCKETS,
        )
        self.turns = meter.create_counter(
            "otel_events.turns", unit="{turn}",
            description="Turns ended, by outcome (completed, failed, cancelled, abandoned).",
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Tokens used per turn, by token type.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )

    def record_turn(
        self,
        agent_name: str,
        seconds: float,
        error_type: str | None,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        """One ended turn; its outcome follows from ``error_type`` (None: completed)."""
        outcome = outcome_of(error_type)
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent_name}
        if error_type is not None:
            attributes["error.type"] = error_type
        self.invoke_agent_duration.record(seconds, attributes)
        self.turns.add(1, {**attributes, "otel_events.turn.outcome": outcome})
        if input_tokens:
            self.token_usage.record(input_tokens, {**attributes, "gen_ai.token.type": "input"})
        if output_tokens:
            self.token_usage.record(output_tokens, {**attributes, "gen_ai.token.type": "output"})

    def record_item(
        self,
        item_type: str,
        status: str,
        seconds: float,
        operation: str | None,
        tool_name: str,
        error_type: str | None,
        context: Context | None = None,
    ) -> None:
        """One ended item, in the one histogram its operation says (see the module);
        ``context`` holds the item's span (for exemplars)."""
        key = (item_type, status, operation, tool_name, error_type)
        cached = self._item_cache.get(key)
        if cached is None:
            attributes = {"otel_events.item.type": item_type}
            set_item_status(attributes, status)
            histogram = self.item_duration
            if operation == "execute_tool":
                # gen_ai.operation.name is left out: the metric's name says it, and every
                # attribute costs on each record (opentelemetry-util-genai leaves it out too).
                attributes = {"gen_ai.tool.name": tool_name, **attributes}
                histogram = self.execute_tool_duration
            if error_type is not None:
                attributes["error.type"] = error_type
            if len(self._item_cache) >= 4096:  # bounded, whatever the item types
                self._item_cache.clear()
            cached = self._item_cache[key] = (histogram, attributes)
        histogram, attributes = cached
        histogram.record(seconds, attributes, context)
