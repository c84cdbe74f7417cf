"""The protocol's names: event types, item types and statuses, without the models.

Agent code and the emitter need only these; the typed models of ``otel_events.protocol``
(pydantic) load when something parses or validates an event.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TERMINAL_EVENT_TYPES", "TRANSIENT_EVENT_TYPES", "EventType", "ItemStatus",
           "ItemType"]


class EventType(StrEnum):
    """Every event type this protocol names."""

    THREAD_STARTED = "thread.started"
    TURN_STARTED = "turn.started"
    TURN_COMPLETED = "turn.completed"
    TURN_FAILED = "turn.failed"
    ITEM_STARTED = "item.started"
    ITEM_UPDATED = "item.updated"
    ITEM_COMPLETED = "item.completed"
    ITEM_PLAN_DELTA = "item.plan.delta"
    REQUEST_USER_INPUT = "request_user_input"
    ERROR = "error"
    PROGRESS_UPDATE = "progress.update"
    TOKEN_COUNT = "token.count"
    STREAM_OVERFLOW = "stream.overflow"


#: Events a slow reader may lose (the next lifecycle event supersedes them).
TRANSIENT_EVENT_TYPES = frozenset(
    {EventType.ITEM_UPDATED, EventType.PROGRESS_UPDATE, EventType.TOKEN_COUNT,
     EventType.ITEM_PLAN_DELTA}
)
#: Events that close something; never dropped silently.
TERMINAL_EVENT_TYPES = frozenset(
    {EventType.ITEM_COMPLETED, EventType.TURN_COMPLETED, EventType.TURN_FAILED}
)


class ItemType(StrEnum):
    """Item types with a meaning of their own; any other string is allowed too."""

    AGENT_MESSAGE = "agent_message"
    REASONING = "reasoning"
    PLAN = "plan"
    COMMAND_EXECUTION = "command_execution"
    FILE_CHANGE = "file_change"
    MCP_TOOL_CALL = "mcp_tool_call"
    COLLAB_TOOL_CALL = "collab_tool_call"
    WEB_SEARCH = "web_search"
    TODO_LIST = "todo_list"
    ERROR = "error"
    SQL_EXECUTION = "sql_execution"
    DOC_RETRIEVAL = "doc_retrieval"
    CHART_GENERATION = "chart_generation"
    GUARDRAIL_CHECK = "guardrail_check"


class ItemStatus(StrEnum):
    """Where an item is in its life; ``item.completed`` carries one of the last four.

    ``cancelled`` is otel-events' own (Codex has no such status): stopped on purpose.
    Abandoned work is ``failed`` with ``error.type`` ``abandoned``.
    """

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DECLINED = "declined"
    CANCELLED = "cancelled"
