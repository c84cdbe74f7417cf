"""How work ends: one rule for a turn's or an item's outcome, ``error.type`` and message.

The emitter (live) and ``ingest`` (replayed JSONL) both end work through ``ending_of``,
and metrics, spans and the bridge's page all read the outcome from ``error.type`` with
``outcome_of``, so a run looks the same wherever it is seen.

Four outcomes:

* ``completed``: the work finished.
* ``failed``: it went wrong (an exception, a failing tool, Codex's ``turn.failed``).
  Span status ERROR.
* ``cancelled``: the application or its user stopped it (``turn.cancel(reason)``, a
  ``Cancelled`` exception, or a task cancelled with ``task.cancel(Cancelled(...))``).
  Not an error of the service: span status stays UNSET, ``error.type`` is
  ``cancelled`` so dashboards and alert rules can tell it apart.
* ``abandoned``: the process or the emitter ended while the work was open (a plain
  task cancellation, Ctrl-C, exit). Span status ERROR: work in flight was lost.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = [
    "ABANDONED",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "Cancelled",
    "Ending",
    "ending_of",
    "outcome_of",
]

COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
ABANDONED = "abandoned"

# Exceptions that mean "the work was not finished", not "the work failed" (and
# asyncio's CancelledError, looked up only if asyncio is loaded: importing it costs
# agent code ~20 ms for nothing when it does not use it).
_ABANDONING = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _task_cancellation(error: BaseException) -> bool:
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(error, asyncio.CancelledError)


class Cancelled(Exception):
    """Marks a stop the application asked for: the work ends as ``cancelled``.

    Raise it inside a turn or item, or let an ``asyncio.CancelledError`` carry it:
    ``task.cancel(Cancelled("client disconnected"))`` or
    ``raise asyncio.CancelledError from Cancelled(...)``.
    """


@dataclass(frozen=True, slots=True)
class Ending:
    """How one turn or item ended."""

    outcome: str
    #: ``None`` when completed; else the exception's class, the given type, ``cancelled``
    #: or ``abandoned``.
    error_type: str | None = None
    message: str | None = None
    exception: BaseException | None = None

    @property
    def is_error(self) -> bool:
        """Whether the span ends with status ERROR (failed and abandoned work)."""
        return self.outcome in (FAILED, ABANDONED)


DONE = Ending(COMPLETED)


def outcome_of(error_type: str | None) -> str:
    """The outcome that an ``error.type`` stands for (``None``: completed)."""
    if error_type is None:
        return COMPLETED
    if error_type in (CANCELLED, ABANDONED):
        return error_type
    return FAILED


def _cancellation(error: BaseException) -> Cancelled | None:
    if isinstance(error, Cancelled):
        return error
    if _task_cancellation(error):
        if isinstance(error.__cause__, Cancelled):
            return error.__cause__
        if error.args and isinstance(error.args[0], Cancelled):  # task.cancel(Cancelled())
            return error.args[0]
    return None


def ending_of(error: BaseException | str | None = None, *, error_type: str | None = None,
              message: str | None = None) -> Ending:
    """The ending of work stopped by ``error`` (an exception or a message).

    ``error_type`` overrides the type the rule would pick (``abandoned``,
    ``cancelled`` or a domain-specific one); with neither an error nor a type, the work
    completed.
    """
    if error is None and error_type is None:
        return DONE
    exception = error if isinstance(error, BaseException) else None
    if exception is not None:
        cancel = _cancellation(exception)
        if error_type is None:
            if cancel is not None:
                error_type = CANCELLED
            elif isinstance(exception, _ABANDONING) or _task_cancellation(exception):
                error_type = ABANDONED
            else:
                error_type = type(exception).__qualname__
        source: BaseException = cancel if cancel is not None else exception
        if message is None:
            message = str(source) or (error_type if cancel is not None
                                      else type(source).__name__)
    else:
        error_type = error_type or "error"
        if message is None:
            message = str(error) if error else error_type
    return Ending(outcome_of(error_type), error_type, message, exception)
