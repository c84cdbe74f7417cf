"""The real Codex CLI, scripted through the fake model server: each scenario's stream has
the shape recorded in tests/fixtures/codex/, and ingests to the trace of expected.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_events.ingest import Ingester
from otel_events.metrics import AgentMetrics

from ..conftest import Telemetry
from .expected import AGENT, EXPECTED, check
from .harness import Codex, CodexRun
from .scenarios import FIXTURES, SCENARIOS, normalized, run, shape

pytestmark = pytest.mark.codex


@pytest.mark.parametrize("name", list(EXPECTED))
def test_scenario(name: str, codex: Codex, workdir: Path, telemetry: Telemetry) -> None:
    runs: dict[str, CodexRun] = {}
    results = run(codex, name, workdir, runs)
    assert results[-1].returncode == SCENARIOS[name].returncode, results[-1].stderr
    lines = [line for result in results for line in normalized(result.lines, workdir)]
    recorded = (FIXTURES / f"{name}.jsonl").read_text().splitlines()
    assert shape(lines) == shape(recorded), (
        "the CLI's stream changed: re-record with python -m tests.codex.record " + name)
    ingester = Ingester(telemetry.tracer_provider.get_tracer("t"),
                        AgentMetrics(telemetry.meter_provider.get_meter("t")), AGENT)
    result = ingester.feed_lines(lines)
    assert result.rejected == []
    check(name, telemetry)


def test_resume_sends_the_earlier_turn_and_usage_is_cumulative(
        codex: Codex, workdir: Path, fake_model: object) -> None:
    """What the per-turn usage rule rests on: Codex's own numbers, run by run."""
    first, resumed = run(codex, "resume", workdir)
    assert resumed.thread_id == first.thread_id
    usage = [e["usage"] for r in (first, resumed) for e in r.events()
             if e["type"] == "turn.completed"]
    assert [u["input_tokens"] for u in usage] == [100, 1100]
    assert [u["cache_write_input_tokens"] for u in usage] == [5, 55]
