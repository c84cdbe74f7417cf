"""2. Through collector-config.yaml (run by the Jaeger binary, a Collector distribution):
every failed turn and every slow turn is kept, most successful turns are not; both
backends get the same turns; spanmetrics counts every span, before sampling."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import otel_events
from otel_events import EventEmitter, ItemType

from .servers import Collector, Jaeger, wait_for
from .traces import from_legacy, root

OK_TURNS = 80
SLOW_MS = 400  # the latency policy's threshold in this test (30 s in the shipped file)


class ToolCrashed(Exception):
    pass


@pytest.fixture(scope="module")
def tempo(jaeger_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """The second backend of the pipeline (otlp/tempo). Tempo cannot be built here (its
    go.mod has replace directives), so a second Jaeger stands in: both speak OTLP."""
    server = Jaeger(jaeger_bin, tmp_path_factory.mktemp("tempo-stand-in"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def collector(jaeger_bin: Path, jaeger: Jaeger, tempo: Jaeger,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    server = Collector(jaeger_bin, tmp_path_factory.mktemp("collector"),
                       jaeger_otlp=jaeger.otlp_grpc, tempo_otlp=tempo.otlp_grpc,
                       decision_wait="1s", slow_turn_ms=SLOW_MS)
    server.start()
    yield server
    server.stop()


def test_tail_sampling_keeps_failed_and_slow_turns(collector: Collector, jaeger: Jaeger,
                                                  tempo: Jaeger) -> None:
    rate = Collector.policy(collector.config, "probabilistic")["probabilistic"][
        "sampling_percentage"]
    assert rate <= 25, "the test needs a low sampling rate for the rest"
    service = f"e2e-sampling-{uuid.uuid4().hex[:8]}"
    tel = otel_events.configure(service_name=service, endpoint=collector.otlp_grpc,
                                protocol="grpc", set_global=False)
    emitter = EventEmitter(thread_id="thread-sampling", agent_name="data-agent",
                           tracer_provider=tel.tracer_provider,
                           meter_provider=tel.meter_provider)
    ok: list[str] = []
    failed: list[str] = []  # every kind of error: turn and step, step only, turn only
    slow: list[str] = []
    try:
        for n in range(OK_TURNS):
            with emitter.turn() as turn:
                with turn.item(ItemType.SQL_EXECUTION, "Running the query", name="sqlite") as i:
                    i.complete(output={"rows": n})
            ok.append(str(turn.trace_id))
            if n % 10 == 3:
                with pytest.raises(ToolCrashed), emitter.turn() as turn:
                    with turn.item(ItemType.CHART_GENERATION, "Drawing", name="chart"):
                        raise ToolCrashed("renderer died")
                failed.append(str(turn.trace_id))
            if n % 10 == 6:
                with emitter.turn() as turn:
                    item = turn.item(ItemType.MCP_TOOL_CALL, "Calling search", name="search")
                    item.fail(ToolCrashed("timeout"))  # the agent recovered: turn succeeds
                failed.append(str(turn.trace_id))
            if n % 40 == 9:
                with emitter.turn() as turn:
                    with turn.item(ItemType.COMMAND_EXECUTION, "Building", name="make") as i:
                        time.sleep(SLOW_MS * 1.5 / 1000)  # a slow step, not synchronisation
                        i.complete(output={"exit_code": 0})
                slow.append(str(turn.trace_id))
        # Last, so that when it is stored every turn before it has been decided.
        with emitter.turn() as turn:
            turn.fail("sentinel")
        failed.append(str(turn.trace_id))
    finally:
        emitter.close()
        tel.shutdown()
    assert tel.spans_dropped == 0

    began = time.monotonic()
    for trace_id in failed + slow:
        trace = jaeger.wait_for_trace(trace_id, timeout=60)
        spans = from_legacy(trace)
        assert root(spans).name == "invoke_agent data-agent"
        assert any(s.error for s in spans) or trace_id in slow
    print(f"[tail-sampling] kept turns in Jaeger {time.monotonic() - began:.1f} s after export")
    # The failed turns are kept whole: the turn and its step, not only the span in error.
    for trace_id in failed[:-1]:
        assert len(from_legacy(jaeger.wait_for_trace(trace_id, spans=2))) == 2

    stored = jaeger.trace_ids(service)
    kept_ok = stored & set(ok)
    print(f"[tail-sampling] sampling rate {rate} %: kept {len(kept_ok)}/{len(ok)} successful, "
          f"{len(stored & set(failed))}/{len(failed)} failed, "
          f"{len(stored & set(slow))}/{len(slow)} slow turns")
    assert set(failed) <= stored
    assert set(slow) <= stored
    assert len(kept_ok) < len(ok) / 2, "most successful turns must be sampled away"
    assert stored <= set(ok) | set(failed) | set(slow)

    # The Tempo exporter got the same decisions.
    wait_for(lambda: tempo.trace_ids(service) == stored, "the same turns in the Tempo stand-in",
             timeout=30, interval=0.2)

    # spanmetrics counted every turn, sampled or not.
    turns_total = len(ok) + len(failed) + len(slow)
    wait_for(lambda: span_calls(collector, service, "invoke_agent data-agent") == turns_total,
             f"spanmetrics counting all {turns_total} turns", timeout=30, interval=0.2)


def span_calls(collector: Collector, service: str, span_name: str) -> int:
    """The sum of traces_span_metrics_calls_total over status codes, from the exporter."""
    text = httpx.get(f"http://127.0.0.1:{collector.metrics_port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("traces_span_metrics_calls_total{"):
            continue
        if f'service_name="{service}"' in line and f'span_name="{span_name}"' in line:
            match = re.search(r"\}\s+(\S+)", line)
            assert match, line
            total += float(match.group(1))
    return int(total)
