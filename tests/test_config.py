"""configure(): real OTLP over gRPC and HTTP, the standard variables, global state respected."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

import otel_events
from otel_events import EventEmitter

from .otlp_receiver import grpc_receiver, http_receiver


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.parametrize(("protocol", "receiver"), [("grpc", grpc_receiver),
                                                     ("http/protobuf", http_receiver)])
def test_exports_over_real_otlp_from_standard_variables(
        monkeypatch: pytest.MonkeyPatch, protocol: str, receiver: object) -> None:
    with receiver() as (endpoint, received):  # type: ignore[operator]
        monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-agent")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=agents")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = otel_events.configure(set_global=False)
        emitter = EventEmitter("t-1", tracer_provider=telemetry.tracer_provider,
                               meter_provider=telemetry.meter_provider)
        with emitter.turn() as turn:
            turn.item("sql_execution", "Revenue query").complete(output={"rows": 2})
            turn.add_usage(input_tokens=10, output_tokens=3)
        telemetry.shutdown()  # flushes
        spans = received.wait_for(2)
        assert {service for service, _ in spans} == {"billing-agent"}
        by_name = {span.name: span for _, span in spans}
        assert set(by_name) == {"invoke_agent billing-agent", "execute_tool sql_execution"}
        turn_span = by_name["invoke_agent billing-agent"]
        assert by_name["execute_tool sql_execution"].parent_span_id == turn_span.span_id
        attributes = {a.key: a.value for a in turn_span.attributes}
        assert attributes["gen_ai.usage.input_tokens"].int_value == 10
        assert received.headers[0]["x-team"] == "agents"
        assert telemetry.spans_exported == 2 and telemetry.spans_dropped == 0
        emitter.close()


def test_exporter_selection_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    telemetry = otel_events.configure(set_global=False)
    assert [type(p.exporter.inner) for p in telemetry.span_processors] == [ConsoleSpanExporter]
    telemetry.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert otel_events.configure(set_global=False).span_processors == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="zipkin"):
        otel_events.configure(set_global=False)
    with pytest.raises(ValueError, match="protocol"):
        otel_events.configure(protocol="carrier-pigeon", set_global=False)


def test_unreachable_backend_drops_with_a_count_and_never_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # seconds of retries before giving up
    telemetry = otel_events.configure(endpoint="http://127.0.0.1:9", protocol="http/protobuf",
                                      metrics_exporter="none", set_global=False)
    emitter = EventEmitter("t", tracer_provider=telemetry.tracer_provider)
    with emitter.turn():
        pass
    telemetry.force_flush(timeout_millis=30_000)
    assert telemetry.spans_dropped == 1 and telemetry.spans_exported == 0
    telemetry.shutdown()


def test_full_queue_drops_are_counted_and_shutdown_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")  # an exporter still retrying at exit
    telemetry = otel_events.configure(endpoint="http://127.0.0.1:9", protocol="http/protobuf",
                                      metrics_exporter="none", set_global=False)
    emitter = EventEmitter("t", tracer_provider=telemetry.tracer_provider)
    for _ in range(100):
        with emitter.turn():
            pass
    # 100 spans into a queue of 16 whose exporter is stuck retrying: most overflow.
    queue_dropped = sum(p.queue_dropped for p in telemetry.span_processors)
    assert 100 - 16 - 8 <= queue_dropped <= 100 - 16
    assert telemetry.spans_dropped >= queue_dropped
    # It returned before the flush finished: bounded, though the exporter was retrying.
    assert telemetry.shutdown(timeout=0.5) is False
    # Let the exporter give up before other tests run (its retries use `random`).
    for thread in threading.enumerate():
        if thread.name == "otel-events-shutdown":
            thread.join(30)
            assert not thread.is_alive()
    emitter.close()


def test_traces_file_writes_otlp_json(tmp_path: object) -> None:
    import json
    from pathlib import Path

    path = Path(str(tmp_path)) / "traces.jsonl"
    telemetry = otel_events.configure("demo", traces_exporter="none", metrics_exporter="none",
                                      traces_file=path, set_global=False)
    emitter = EventEmitter("t", tracer_provider=telemetry.tracer_provider)
    with emitter.turn():
        pass
    telemetry.shutdown()
    batch = json.loads(path.read_text().splitlines()[0])
    span = batch["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["name"] == "invoke_agent demo"
    assert len(span["traceId"]) == 32  # hex, as OTLP JSON wants


def test_never_replaces_an_existing_global_provider() -> None:
    mine = TracerProvider()
    original = trace.get_tracer_provider()
    if isinstance(original, trace.ProxyTracerProvider):
        trace.set_tracer_provider(mine)
    installed = trace.get_tracer_provider()
    telemetry = otel_events.configure(traces_exporter="none", metrics_exporter="none")
    assert trace.get_tracer_provider() is installed
    assert telemetry.tracer_provider is not installed
    telemetry.shutdown()
