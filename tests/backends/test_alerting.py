"""3. A failed turn pages: emitter -> Jaeger (spanmetrics) -> Prometheus (the shipped alert
rules) -> Alertmanager (the shipped routing) -> a webhook in this test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import otel_events
from otel_events import EventEmitter, ItemType

from .servers import (
    Alertmanager,
    Jaeger,
    Notification,
    Prometheus,
    Webhook,
    free_port,
    require_tool,
    wait_for,
)

# Newer Collector releases add collector_instance_id by default; v0.140 (in Jaeger v1.76.0)
# behind this gate. On, so the rules are tested against the label they must aggregate away.
INSTANCE_ID_GATE = "connector.spanmetrics.includeCollectorInstanceID"


class QueryFailed(Exception):
    pass


@dataclass
class Stack:
    jaeger: Jaeger
    prometheus: Prometheus
    alertmanager: Alertmanager
    webhook: Webhook


@pytest.fixture(scope="module")
def stack(jaeger_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus")
    alertmanager_bin = require_tool("prometheus-alertmanager", "alertmanager")
    workdir = tmp_path_factory.mktemp("alerting")
    webhook = Webhook()
    webhook.start()
    started: list[Any] = []
    try:
        alertmanager = Alertmanager(alertmanager_bin, workdir / "alertmanager", webhook.url)
        alertmanager.start()
        started.append(alertmanager)
        prometheus_port = free_port()
        jaeger = Jaeger(jaeger_bin, workdir / "jaeger",
                        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
                        feature_gates=[INSTANCE_ID_GATE])
        jaeger.start()
        started.append(jaeger)
        prometheus = Prometheus(prometheus_bin, workdir / "prometheus",
                                targets=[jaeger.metrics_target],
                                alertmanager=alertmanager.address, port=prometheus_port)
        prometheus.start()
        started.append(prometheus)
        # Ready means wired: Jaeger scraped and Alertmanager discovered (Prometheus applies
        # discovered targets a few seconds after it starts).
        wait_for(lambda: prometheus.query("up == 1"), "Prometheus scraping Jaeger", timeout=60,
                 interval=0.2)
        wait_for(lambda: httpx.get(f"{prometheus.url}/api/v1/alertmanagers", timeout=5)
                 .json()["data"]["activeAlertmanagers"], "Prometheus knowing Alertmanager",
                 timeout=60, interval=0.2)
        yield Stack(jaeger, prometheus, alertmanager, webhook)
    finally:
        for server in reversed(started):
            server.stop()
        webhook.stop()


def alerts_of(notification: Notification, alertname: str, service: str) -> list[dict[str, Any]]:
    return [alert for alert in notification.body.get("alerts", [])
            if alert["labels"].get("alertname") == alertname
            and alert["labels"].get("service_name") == service
            and alert["status"] == "firing"]


def test_failed_turn_pages_through_prometheus_and_alertmanager(stack: Stack) -> None:
    service = f"e2e-alert-{uuid.uuid4().hex[:8]}"
    healthy_service = f"e2e-healthy-{uuid.uuid4().hex[:8]}"
    healthy = otel_events.configure(service_name=healthy_service, endpoint=stack.jaeger.otlp_grpc,
                                    protocol="grpc", set_global=False)
    tel = otel_events.configure(service_name=service, endpoint=stack.jaeger.otlp_grpc,
                                protocol="grpc", set_global=False)
    try:
        ok_emitter = EventEmitter(agent_name="data-agent", tracer_provider=healthy.tracer_provider,
                                  meter_provider=healthy.meter_provider)
        with ok_emitter.turn() as turn, turn.item(ItemType.SQL_EXECUTION, "Query",
                                                  name="sqlite") as item:
            item.complete(output={"rows": 1})
        healthy.force_flush()

        emitter = EventEmitter(agent_name="data-agent", tracer_provider=tel.tracer_provider,
                               meter_provider=tel.meter_provider)
        # The first failure this service ever had: a brand-new error series, which
        # `increase(...) > 0` alone would never see.
        with pytest.raises(QueryFailed), emitter.turn() as turn:
            with turn.item(ItemType.SQL_EXECUTION, "Running the revenue query", name="sqlite"):
                raise QueryFailed("no such table: revenew")
        failed_at = time.monotonic()
        assert tel.force_flush()

        # Each hop, for whoever tunes the intervals (waiting here does not slow the hops).
        error_series = (f'traces_span_metrics_calls_total{{service_name="{service}",'
                        f'status_code="STATUS_CODE_ERROR"}}')
        wait_for(lambda: stack.prometheus.query(error_series), "the error series in Prometheus",
                 timeout=60, interval=0.1)
        scraped = time.monotonic() - failed_at
        wait_for(lambda: [a for a in stack.prometheus.alerts()
                          if a["labels"].get("service_name") == service
                          and a["labels"]["alertname"] == "AgentTurnFailed"
                          and a["state"] == "firing"],
                 "AgentTurnFailed firing in Prometheus", timeout=60, interval=0.1)
        firing = time.monotonic() - failed_at
        page = stack.webhook.wait_for(
            lambda n: n.path == "/alerts/page" and bool(alerts_of(n, "AgentTurnFailed", service)),
            "AgentTurnFailed delivered to the on-call webhook", timeout=90)
        print(f"[alerting] failed turn -> series scraped {scraped:.2f} s -> alert firing "
              f"{firing:.2f} s -> webhook (page) {page.received - failed_at:.2f} s")
        ticket = stack.webhook.wait_for(
            lambda n: n.path == "/alerts/ticket" and bool(alerts_of(n, "AgentStepFailed", service)),
            "AgentStepFailed delivered to the ticket webhook", timeout=90)
        print(f"[alerting] failed turn -> webhook (ticket): {ticket.received - failed_at:.2f} s")
    finally:
        tel.shutdown()
        healthy.shutdown()

    (turn_alert,) = alerts_of(page, "AgentTurnFailed", service)
    assert turn_alert["labels"] == {"alertname": "AgentTurnFailed", "severity": "page",
                                    "service_name": service,
                                    "span_name": "invoke_agent data-agent"}
    assert service in turn_alert["annotations"]["summary"]
    (step_alert,) = alerts_of(ticket, "AgentStepFailed", service)
    assert step_alert["labels"] == {"alertname": "AgentStepFailed", "severity": "ticket",
                                    "service_name": service, "span_name": "execute_tool sqlite"}
    assert page.body["groupLabels"] == {"alertname": "AgentTurnFailed", "service_name": service}

    # The series under the alert carry collector_instance_id; the alert does not.
    series = stack.prometheus.query(
        f'traces_span_metrics_calls_total{{service_name="{service}",'
        f'status_code="STATUS_CODE_ERROR"}}')
    assert {s["metric"]["span_name"] for s in series} == {"invoke_agent data-agent",
                                                          "execute_tool sqlite"}
    assert all(s["metric"].get("collector_instance_id") for s in series)

    # The healthy service's turn was counted, and pages nobody.
    assert stack.prometheus.query(
        f'traces_span_metrics_calls_total{{service_name="{healthy_service}"}}')
    assert not [a for a in stack.prometheus.alerts()
                if a["labels"].get("service_name") == healthy_service]
    assert not [n for n in stack.webhook.notifications
                if any(a["labels"].get("service_name") == healthy_service
                       for a in n.body.get("alerts", []))]


def test_agent_metrics_and_jaeger_monitor_data_reach_prometheus(stack: Stack) -> None:
    """The agent's own OTLP metrics go through the same Jaeger to Prometheus, and Jaeger's
    Monitor API (per-operation calls and errors) reads span metrics back from it."""
    service = f"e2e-metrics-{uuid.uuid4().hex[:8]}"
    tel = otel_events.configure(service_name=service, endpoint=stack.jaeger.otlp_grpc,
                                protocol="grpc", set_global=False)
    emitter = EventEmitter(agent_name="data-agent", tracer_provider=tel.tracer_provider,
                           meter_provider=tel.meter_provider)
    try:
        for failing in (False, False, True):
            with pytest.raises(QueryFailed) if failing else _nothing():
                with emitter.turn() as turn:
                    turn.add_usage(input_tokens=100, output_tokens=10)
                    if failing:
                        raise QueryFailed("boom")
    finally:
        tel.shutdown()  # flushes the metrics too

    # The exporter's job label (service.name) becomes exported_job: the scrape's own job and
    # instance labels are kept, so that several Collectors never collide (no honor_labels).
    turns = wait_for(
        lambda: stack.prometheus.query(f'sum by (otel_events_turn_outcome) '
                                       f'(otel_events_turns_total{{exported_job="{service}"}})'),
        "otel_events_turns_total in Prometheus", timeout=30, interval=0.2)
    outcomes = {r["metric"]["otel_events_turn_outcome"]: float(r["value"][1]) for r in turns}
    assert outcomes == {"completed": 2.0, "failed": 1.0}

    def errors() -> dict[str, Any] | None:
        response = httpx.get(f"{stack.jaeger.query_url}/api/metrics/errors",
                             # Turns are INTERNAL spans; the API defaults to server spans.
                             params={"service": service, "groupByOperation": "true",
                                     "spanKind": "internal", "endTs": int(time.time() * 1000),
                                     "lookback": 300_000, "step": 1000, "ratePer": 60_000},
                             timeout=5)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body if body.get("metrics") else None

    body = wait_for(errors, "Jaeger's /api/metrics/errors for the service", timeout=30,
                    interval=0.5)
    # Only the wiring is checked (metric names, labels, the Prometheus backend): the rates
    # themselves are 0 here, as rate() of a series that only just appeared always is.
    operations = {label["value"] for metric in body["metrics"] for label in metric["labels"]
                  if label["name"] == "operation"}
    assert "invoke_agent data-agent" in operations


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
