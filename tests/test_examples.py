"""The demo agent (what `make demo` runs) does its real work and leaves events and traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from otel_events.protocol import parse_event

ROOT = Path(__file__).resolve().parents[1]


def test_demo_agent_writes_events_traces_and_chart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EVENTS_DEMO_OUT=str(tmp_path), OTEL_EVENTS_DEMO_THINK="0")
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "data_agent.py")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Net revenue last quarter: EMEA" in run.stdout

    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[0].type == "thread.started" and events[-1].type == "turn.completed"
    completed = [e.item for e in events if e.type == "item.completed"]  # type: ignore[union-attr]
    assert [(i.type, i.status) for i in completed] == [
        ("reasoning", "completed"), ("doc_retrieval", "completed"),
        ("sql_execution", "failed"), ("sql_execution", "completed"),
        ("chart_generation", "completed"), ("reasoning", "completed"),
        ("guardrail_check", "completed"), ("agent_message", "completed")]
    assert completed[2].error is not None and "legacy_orders" in completed[2].error.message
    assert completed[3].output[0]["region"] == "EMEA"

    spans = [span for line in (tmp_path / "traces.jsonl").read_text().splitlines()
             for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
             for span in ss["spans"]]
    names = sorted(span["name"] for span in spans)
    assert names == sorted(["invoke_agent data-agent", "reasoning", "reasoning",
                            "retrieval docs", "execute_tool sqlite", "execute_tool sqlite",
                            "execute_tool svg_bar_chart", "apply_guardrail pii",
                            "agent_message"])
    failed = [s for s in spans if s.get("status", {}).get("code") == 2]
    assert [s["name"] for s in failed] == ["execute_tool sqlite"]
    assert (tmp_path / "revenue-by-region.svg").read_text().startswith("<svg")
