"""Metrics for per-step latency and for alerting on failed turns.

Only bounded attributes go on metrics: agent name, item type, tool name, status and
``error.type``; never thread, turn or item ids.
"""

from __future__ import annotations

from opentelemetry.metrics import Meter

from otel_events.endings import outcome_of

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
        self._item_cache: dict[tuple[str, str, str | None, str, str | None],
                               tuple[dict[str, str], dict[str, str] | None]] = {}
        self.invoke_agent_duration = meter.create_histogram(
            "gen_ai.invoke_agent.duration", unit="s",
            description="Duration of agent turns.",
            explicit_bucket_boundaries_advisory=AGENT_BUCKETS,
        )
        self.execute_tool_duration = meter.create_histogram(
            "gen_ai.execute_tool.duration", unit="s",
            description="Duration of tool executions.",
            explicit_bucket_boundaries_advisory=TOOL_BUCKETS,
        )
        self.item_duration = meter.create_histogram(
            "otel_events.item.duration", unit="s",
            description="Duration of every item by item type and status.",
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

    def _item_attributes(self, item_type: str, status: str, operation: str | None,
                         tool_name: str, error_type: str | None) -> tuple[
                             dict[str, str], dict[str, str] | None]:
        # Few distinct combinations, recorded often: build each attribute set once.
        key = (item_type, status, operation, tool_name, error_type)
        cached = self._item_cache.get(key)
        if cached is None:
            attributes = {"otel_events.item.type": item_type, "otel_events.item.status": status}
            tool: dict[str, str] | None = None
            if operation == "execute_tool":
                tool = {"gen_ai.operation.name": operation, "gen_ai.tool.name": tool_name}
            if error_type is not None:
                attributes["error.type"] = error_type
                if tool is not None:
                    tool["error.type"] = error_type
            if len(self._item_cache) >= 4096:  # bounded, whatever the item types
                self._item_cache.clear()
            cached = self._item_cache[key] = (attributes, tool)
        return cached

    def record_item(
        self,
        item_type: str,
        status: str,
        seconds: float,
        operation: str | None,
        tool_name: str,
        error_type: str | None,
    ) -> None:
        attributes, tool = self._item_attributes(item_type, status, operation, tool_name,
                                                 error_type)
        self.item_duration.record(seconds, attributes)
        if tool is not None:
            self.execute_tool_duration.record(seconds, tool)
