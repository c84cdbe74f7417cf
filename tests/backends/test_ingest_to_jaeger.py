"""4. A `codex exec --json` stream replayed by `otel-events ingest` arrives in Jaeger as
one trace per turn, configured only through the standard OTEL_* variables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .servers import Jaeger
from .traces import from_legacy, root

SAMPLE = Path(__file__).parents[1] / "fixtures" / "codex-exec-sample.jsonl"

# A second turn for the same thread, as `codex exec resume --json` would append it.
_DEPLOY = {"id": "item_5", "type": "command_execution", "command": "bash -lc 'make deploy'"}
FAILED_TURN = "".join(json.dumps(event) + "\n" for event in [
    {"type": "turn.started"},
    {"type": "item.started", "item": {**_DEPLOY, "aggregated_output": "", "exit_code": None,
                                      "status": "in_progress"}},
    {"type": "item.completed", "item": {**_DEPLOY, "aggregated_output": "permission denied\n",
                                        "exit_code": 2, "status": "failed"}},
    {"type": "turn.failed", "error": {"message": "the deploy step failed"}},
])


def ingest(path: Path, jaeger: Jaeger, service: str, protocol: str) -> list[str]:
    """Run the console script (``python -m otel_events`` when it is not installed)."""
    script = Path(sys.executable).with_name("otel-events")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "otel_events"]
    endpoint = jaeger.otlp_grpc if protocol == "grpc" else jaeger.otlp_http
    env = {**os.environ, "OTEL_SERVICE_NAME": service, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"):
        env.pop(name, None)
    result = subprocess.run([*argv, "ingest", str(path)], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    match = re.search(r"traces: ([0-9a-f ]+)$", result.stderr.strip())
    assert match, result.stderr
    return match.group(1).split()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_codex_sample_arrives_as_one_trace_per_turn(jaeger: Jaeger,
                                                    protocol: str) -> None:
    service = f"e2e-ingest-{uuid.uuid4().hex[:8]}"
    (trace_id,) = ingest(SAMPLE, jaeger, service, protocol)
    spans = from_legacy(jaeger.wait_for_trace(trace_id, spans=6))
    assert len(spans) == 6, [s.name for s in spans]  # the turn and its five items
    turn = root(spans)
    assert turn.name.startswith("invoke_agent ")
    assert turn.attributes["gen_ai.conversation.id"] == "0199a213-81c0-7800-8aa1-bbab2a035a53"
    assert turn.attributes["gen_ai.usage.input_tokens"] == 24763
    assert turn.attributes["gen_ai.usage.output_tokens"] == 122
    assert turn.attributes["gen_ai.usage.cache_read.input_tokens"] == 24448
    assert not turn.error
    items = [s for s in spans if s is not turn]
    assert all(s.parent_id == turn.span_id for s in items)
    assert sorted(s.attributes["otel_events.item.type"] for s in items) == [
        "agent_message", "command_execution", "command_execution", "file_change", "reasoning"]
    # The first test run failed (exit code 1): that step is an error, the turn is not.
    failed = [s for s in items if s.error]
    assert [s.attributes["otel_events.item.id"] for s in failed] == ["item_1"]
    assert jaeger.trace_ids(service) == {trace_id}


def test_two_turns_arrive_as_two_traces(jaeger: Jaeger, tmp_path: Path) -> None:
    stream = tmp_path / "two-turns.jsonl"
    stream.write_text(SAMPLE.read_text(encoding="utf-8") + FAILED_TURN, encoding="utf-8")
    service = f"e2e-ingest2-{uuid.uuid4().hex[:8]}"
    first_id, second_id = ingest(stream, jaeger, service, "grpc")
    assert first_id != second_id
    first = from_legacy(jaeger.wait_for_trace(first_id, spans=6))
    second = from_legacy(jaeger.wait_for_trace(second_id, spans=2))
    assert len(first) == 6 and len(second) == 2
    turn = root(second)
    assert turn.error
    assert turn.status_message == "the deploy step failed"
    (step,) = [s for s in second if s is not turn]
    assert step.parent_id == turn.span_id and step.error
    assert step.attributes["otel_events.item.description"] == "Running bash -lc 'make deploy'"
    # Both turns belong to the same conversation, each in its own trace.
    assert {root(first).attributes["gen_ai.conversation.id"],
            turn.attributes["gen_ai.conversation.id"]} == {"0199a213-81c0-7800-8aa1-bbab2a035a53"}
    assert jaeger.trace_ids(service) == {first_id, second_id}
