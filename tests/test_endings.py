"""One rule for how work ends: completed, failed, cancelled, abandoned, everywhere alike."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import StatusCode

from otel_events import Cancelled, EventEmitter
from otel_events.endings import ending_of, outcome_of
from tests.conftest import Telemetry, logged


def outcomes(telemetry: Telemetry) -> dict[str, int]:
    counts: dict[str, int] = {}
    for point in telemetry.metrics()["otel_events.turns"]:
        outcome = str(point.attributes["otel_events.turn.outcome"])
        counts[outcome] = counts.get(outcome, 0) + int(point.value)
    return counts


@pytest.mark.parametrize(("error", "error_type", "outcome"), [
    (None, None, "completed"),
    (ValueError("bad"), "ValueError", "failed"),
    ("a message", "error", "failed"),
    (Cancelled("user left"), "cancelled", "cancelled"),
    (asyncio.CancelledError(), "abandoned", "abandoned"),
    (asyncio.CancelledError(Cancelled("tab closed")), "cancelled", "cancelled"),
    (KeyboardInterrupt(), "abandoned", "abandoned"),
])
def test_the_rule(error: BaseException | str | None, error_type: str | None,
                  outcome: str) -> None:
    ending = ending_of(error)
    assert (ending.error_type, ending.outcome) == (error_type, outcome)
    assert outcome_of(error_type) == outcome
    assert ending.is_error == (outcome in ("failed", "abandoned"))


def test_a_chained_cancellation_keeps_its_reason() -> None:
    try:
        raise asyncio.CancelledError from Cancelled("client disconnected")
    except asyncio.CancelledError as exc:
        ending = ending_of(exc)
    assert ending.outcome == "cancelled" and ending.message == "client disconnected"


def test_turn_cancel_is_not_an_error_of_the_service(telemetry: Telemetry,
                                                    emitter: EventEmitter) -> None:
    turn = emitter.turn()
    item = turn.item("command_execution", "long job")
    turn.cancel("the user stopped it")
    events = logged(emitter)
    ended = next(e for e in events if e["type"] == "turn.failed")
    assert ended["error"] == {"message": "the user stopped it", "type": "cancelled"}
    # The item left open ends the way its turn did.
    completed = next(e for e in events if e["type"] == "item.completed")["item"]
    assert completed["status"] == "cancelled" and completed["error"]["type"] == "cancelled"
    assert item.status == "cancelled"
    span = telemetry.span("invoke_agent data-agent")
    assert span.status.status_code is StatusCode.UNSET
    assert (span.attributes or {})["error.type"] == "cancelled"
    assert not [e for e in span.events if e.name == "exception"]
    assert outcomes(telemetry) == {"cancelled": 1}


def test_item_cancel(telemetry: Telemetry, emitter: EventEmitter) -> None:
    with emitter.turn() as turn:
        turn.item("web_search", "q").cancel("superseded")
    completed = next(e for e in logged(emitter) if e["type"] == "item.completed")["item"]
    assert completed["status"] == "cancelled"
    assert completed["error"] == {"message": "superseded", "type": "cancelled"}
    span = telemetry.span("execute_tool web_search")
    assert span.status.status_code is StatusCode.UNSET
    assert outcomes(telemetry) == {"completed": 1}


async def test_a_task_cancelled_with_a_reason_ends_cancelled_a_bare_one_abandoned(
        telemetry: Telemetry, emitter: EventEmitter) -> None:
    started = asyncio.Event()

    async def work() -> None:
        async with emitter.turn() as turn:
            async with turn.item("command_execution", "sleep"):
                started.set()
                await asyncio.sleep(3600)

    for reason in (Cancelled("client disconnected"), None):
        started.clear()
        task = asyncio.create_task(work())
        await started.wait()
        task.cancel(reason)  # type: ignore[arg-type]
        with pytest.raises(asyncio.CancelledError):
            await task
    failed = [e for e in logged(emitter) if e["type"] == "turn.failed"]
    assert [e["error"]["type"] for e in failed] == ["cancelled", "abandoned"]
    assert failed[0]["error"]["message"] == "client disconnected"
    assert outcomes(telemetry) == {"cancelled": 1, "abandoned": 1}
    statuses = [s.status.status_code for s in telemetry.spans() if s.name.startswith("invoke")]
    assert statuses == [StatusCode.UNSET, StatusCode.ERROR]


def test_an_exception_fails_with_its_class_and_a_given_type_wins(
        telemetry: Telemetry, emitter: EventEmitter) -> None:
    with pytest.raises(ZeroDivisionError), emitter.turn():
        raise ZeroDivisionError("boom")
    emitter.turn().fail("model refused", error_type="refusal")
    failed = [e["error"] for e in logged(emitter) if e["type"] == "turn.failed"]
    assert failed == [{"message": "boom", "type": "ZeroDivisionError"},
                      {"message": "model refused", "type": "refusal"}]
    assert outcomes(telemetry) == {"failed": 2}
