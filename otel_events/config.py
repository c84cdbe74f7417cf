"""``configure()``: tracer and meter providers that export over OTLP, from the standard
environment variables, for applications that have none of their own.

Applications that already set up OpenTelemetry do not call this: the emitter uses the
global providers they installed.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from otel_events.emitter import abandon_open_work

__all__ = ["CountingBatchSpanProcessor", "CountingSpanExporter", "Telemetry", "configure"]

_log = logging.getLogger(__name__)


class CountingSpanExporter(SpanExporter):
    """Wraps an exporter and counts what it delivered and what it dropped."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            _log.exception("span export raised")
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported += len(spans)
            else:
                self.dropped += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """A batch processor that also counts the spans its full queue had to drop."""

    def __init__(self, exporter: CountingSpanExporter,
                 schedule_delay_millis: float | None = None) -> None:
        super().__init__(exporter, schedule_delay_millis=schedule_delay_millis)
        self.exporter = exporter
        #: Spans dropped because the queue was full (the exporter could not keep up).
        self.queue_dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        # The SDK drops the oldest span without a count when its queue is full; peek first.
        # (Its internals may change: then this counts nothing and drops stay uncounted.)
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            self.queue_dropped += 1
        super().on_end(span)


@dataclass
class Telemetry:
    """The providers ``configure`` made; ``shutdown()`` ends open work and flushes."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    span_processors: list[CountingBatchSpanProcessor] = field(default_factory=list)
    _shut_down: bool = False

    @property
    def spans_dropped(self) -> int:
        """Spans that will never be exported: export failed, or the queue was full."""
        return sum(p.exporter.dropped + p.queue_dropped for p in self.span_processors)

    @property
    def spans_exported(self) -> int:
        return sum(p.exporter.exported for p in self.span_processors)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        traces = self.tracer_provider.force_flush(timeout_millis)
        return self.meter_provider.force_flush(timeout_millis) and traces

    def shutdown(self, timeout: float = 5.0) -> bool:
        """End its emitters' open work as abandoned, then flush and stop both providers (once).

        Returns within ``timeout`` seconds even when the backend is down (an exporter
        retrying would otherwise hold the process at exit); False if the flush had not
        finished by then, and what was not exported then is lost.
        """
        if self._shut_down:
            return True
        self._shut_down = True
        atexit.unregister(self.shutdown)

        def stop() -> None:
            abandon_open_work(self.tracer_provider)  # its emitters' sinks flush here too
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown()

        worker = threading.Thread(target=stop, name="otel-events-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)
        return not worker.is_alive()


def _env_list(name: str, default: str) -> list[str]:
    raw = os.environ.get(name) or default
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


# (signal, protocol) -> where the OTLP exporter lives; imported only when used.
_OTLP_EXPORTERS = {
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                         "OTLPSpanExporter"),
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                                  "OTLPSpanExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
                          "OTLPMetricExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                                   "OTLPMetricExporter"),
}


def _exporter(signal: str, kind: str, endpoint: str | None, protocol: str,
              headers: dict[str, str] | None) -> Any:
    """The exporter named by ``kind`` (otlp, console or none) for traces or metrics."""
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter() if signal == "traces" else ConsoleMetricExporter()
    if kind != "otlp":
        raise ValueError(f"unknown {signal} exporter {kind!r} (otlp, console or none)")
    module, name = _OTLP_EXPORTERS[signal, protocol]
    # OTLP/HTTP wants each signal's full URL; gRPC wants the base address. Without an
    # endpoint, the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
    if endpoint is not None and protocol != "grpc":
        endpoint = f"{endpoint.rstrip('/')}/v1/{signal}"
    try:
        exporters = importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"OTLP export needs its extra: pip install 'otel-events[otlp]' "
                          f"({exc})") from exc
    return getattr(exporters, name)(endpoint=endpoint, headers=headers)


def _exporters(signal: str, choice: str | None, endpoint: str | None, protocol: str,
               headers: dict[str, str] | None) -> list[Any]:
    """The exporters asked for by ``choice``, else by ``OTEL_{SIGNAL}_EXPORTER``."""
    kinds = [choice.lower()] if choice else _env_list(f"OTEL_{signal.upper()}_EXPORTER", "otlp")
    made = (_exporter(signal, kind, endpoint, protocol, headers) for kind in kinds)
    return [exporter for exporter in made if exporter is not None]


#: How long finished spans wait for their batch when someone watches live (``run``,
#: ``ingest -``): a turn shows in Jaeger a moment after it ends, not 5 s later.
LIVE_SPAN_DELAY_MS = 200.0


def live_span_delay() -> float | None:
    """``LIVE_SPAN_DELAY_MS``, unless ``OTEL_BSP_SCHEDULE_DELAY`` says otherwise."""
    return None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else LIVE_SPAN_DELAY_MS


def configure(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    headers: dict[str, str] | None = None,
    traces_exporter: str | None = None,
    metrics_exporter: str | None = None,
    traces_file: str | Path | None = None,
    metric_export_interval_ms: int | None = None,
    span_delay_ms: float | None = None,
    set_global: bool = True,
) -> Telemetry:
    """Set up tracer and meter providers that export over OTLP (gRPC or HTTP).

    Every argument left out comes from the standard variables: ``OTEL_SERVICE_NAME``,
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc`` or
    ``http/protobuf``), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_EXPORTER`` and
    ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console`` or ``none``, comma-separated).
    ``traces_file`` also writes spans as OTLP JSON lines to that file (loadable in
    Jaeger's UI). ``span_delay_ms``: how long finished spans may wait to be exported
    in a batch (else ``OTEL_BSP_SCHEDULE_DELAY``, 5 s): short for live views.
    ``set_global`` installs the providers globally unless the application
    already installed its own, which are never replaced.
    """
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    protocol = (protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").lower()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"unsupported OTLP protocol {protocol!r} (grpc or http/protobuf)")

    # The SDK's own exit hooks would flush before open turns are ended as abandoned;
    # Telemetry.shutdown does both, in that order, at exit.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporters = [CountingSpanExporter(exporter) for exporter in _exporters(
        "traces", traces_exporter, endpoint, protocol, headers)]
    if traces_file is not None:
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        Path(traces_file).parent.mkdir(parents=True, exist_ok=True)
        exporters.append(CountingSpanExporter(FileSpanExporter(str(traces_file))))
    processors = [CountingBatchSpanProcessor(exporter, span_delay_ms)
                  for exporter in exporters]
    for processor in processors:
        tracer_provider.add_span_processor(processor)

    readers: list[MetricReader] = [
        PeriodicExportingMetricReader(exporter, export_interval_millis=metric_export_interval_ms)
        for exporter in _exporters("metrics", metrics_exporter, endpoint, protocol, headers)]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers,
                                   shutdown_on_exit=False)

    if set_global:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(tracer_provider)
        else:
            _log.warning("a global tracer provider is already set; leaving it in place")
        if type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
            metrics.set_meter_provider(meter_provider)
        else:
            _log.warning("a global meter provider is already set; leaving it in place")
    telemetry = Telemetry(tracer_provider, meter_provider, processors)
    atexit.register(telemetry.shutdown)
    return telemetry
