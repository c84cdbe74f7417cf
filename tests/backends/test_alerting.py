"""3. Alerting end to end: emitter -> Jaeger (spanmetrics, and the emitter's own metrics
through its `prometheus` exporter) -> Prometheus (both shipped rule sets) -> Alertmanager
(the shipped routing) -> a webhook in this test.

Prometheus runs a rendered copy of the shipped rules in which every duration is divided
by 60 (the 1 h / 5 m burn-rate windows become 1 min / 5 s, `offset 5m` becomes 5 s), so a
burn shows in seconds; the expressions, labels and thresholds are the shipped ones (the
promtool tests in test_configs.py check the shipped windows). Each alert of the copy also
carries `rule_set` (spanmetrics or emitter), so the test tells the two sets apart.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.trace import Status, StatusCode

import otel_events
from otel_events import EventEmitter, ItemType

from .servers import (
    DEPLOY,
    Alertmanager,
    Jaeger,
    Notification,
    Prometheus,
    Webhook,
    free_port,
    load_yaml,
    require_tool,
    wait_for,
    write_yaml,
)

# Newer Collector releases add collector_instance_id by default; v0.140 (in Jaeger v1.76.0)
# behind this gate. On, so the rules are tested against the label they must aggregate away.
INSTANCE_ID_GATE = "connector.spanmetrics.includeCollectorInstanceID"

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_SETS = {
    "spanmetrics": ["alert-rules.yml", "slo-turns.spanmetrics.yml"],
    "emitter": ["alert-rules.emitter.yml", "slo-turns.emitter.yml"],
}
TIME_SCALE = 60
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class QueryFailed(Exception):
    pass


def scaled(duration: str) -> str:
    """A Prometheus duration (``5m``, ``1h``, ``30d``) divided by TIME_SCALE, in seconds."""
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    assert match, duration
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    return f"{max(1, seconds // TIME_SCALE)}s"


def render_rules(path: Path, rule_set: str, out: Path) -> Path:
    """The shipped rule file with every range, offset and `for` scaled down, and a
    ``rule_set`` label on each alert."""
    data = load_yaml(path)
    for group in data["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(
                r"(\[|offset )(\d+[smhd])",
                lambda m: m[1] + scaled(m[2]), rule["expr"])
            if "for" in rule:
                rule["for"] = scaled(rule["for"])
            if "alert" in rule:
                rule.setdefault("labels", {})["rule_set"] = rule_set
    return write_yaml(out, data)


def test_rendering_scales_every_window_of_the_rules(tmp_path: Path) -> None:
    """The copy keeps the shipped expressions but for their durations (so the fast burn is
    still 14.4x over the long and the short window)."""
    rendered = load_yaml(render_rules(PROMETHEUS_DIR / "slo-turns.spanmetrics.yml",
                                      "spanmetrics", tmp_path / "r.yml"))
    exprs = {r.get("record") or r["alert"]: r["expr"]
             for g in rendered["groups"] for r in g["rules"]}
    assert "[60s]" in exprs["slo:sli_error:ratio_rate1h"]
    assert "[5s]" in exprs["slo:sli_error:ratio_rate5m"]
    assert "[43200s]" in exprs["slo:sli_error:ratio_rate30d"]
    assert "14.4 * 0.01" in exprs["AgentTurnsFailing"] and "6 * 0.01" in exprs["AgentTurnsFailing"]
    assert not re.search(r"\[\d+[mhd]\]|offset \d+[mhd]", str(rendered))
    hand = load_yaml(render_rules(PROMETHEUS_DIR / "alert-rules.yml", "spanmetrics",
                                  tmp_path / "h.yml"))
    rules = {r["alert"]: r for g in hand["groups"] for r in g["rules"]}
    assert "offset 5s" in rules["AgentTurnFailed"]["expr"]
    assert rules["AgentStepLatencyP95High"]["for"] == "10s"
    assert rules["AgentTurnFailed"]["labels"] == {"severity": "ticket", "rule_set": "spanmetrics"}


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
    rule_files = [render_rules(PROMETHEUS_DIR / name, rule_set, workdir / "rules" / name)
                  for rule_set, names in RULE_SETS.items() for name in names]
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
                                alertmanager=alertmanager.address, port=prometheus_port,
                                rule_files=rule_files)
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


def alerts_of(notification: Notification, alertname: str, service: str,
              **labels: str) -> list[dict[str, Any]]:
    return [alert for alert in notification.body.get("alerts", [])
            if alert["labels"].get("alertname") == alertname
            and alert["labels"].get("service_name") == service
            and all(alert["labels"].get(k) == v for k, v in labels.items())
            and alert["status"] == "firing"]


def mentions(notification: Notification, service: str) -> bool:
    return any(a["labels"].get("service_name") == service
               for a in notification.body.get("alerts", []))


def telemetry(stack: Stack, service: str) -> otel_events.Telemetry:
    # Metrics every 0.5 s: the emitter's counters must show a rate within the 5 s window.
    return otel_events.configure(service_name=service, endpoint=stack.jaeger.otlp_grpc,
                                 protocol="grpc", set_global=False,
                                 metric_export_interval_ms=500)


def emitter_of(tel: otel_events.Telemetry) -> EventEmitter:
    return EventEmitter(agent_name="data-agent", tracer_provider=tel.tracer_provider,
                        meter_provider=tel.meter_provider)


def failing_turn(emitter: EventEmitter) -> None:
    with pytest.raises(QueryFailed), emitter.turn() as turn:
        with turn.item(ItemType.SQL_EXECUTION, "Running the revenue query", name="sqlite"):
            raise QueryFailed("no such table: revenew")


def completed_turn(emitter: EventEmitter) -> None:
    with emitter.turn() as turn, turn.item(ItemType.SQL_EXECUTION, "Query",
                                           name="sqlite") as item:
        item.complete(output={"rows": 1})


def cancelled_turn(emitter: EventEmitter) -> None:
    with emitter.turn() as turn:
        with turn.item(ItemType.SQL_EXECUTION, "Running the revenue query", name="sqlite"):
            turn.cancel("the user closed the tab")


def foreign_cancelled_turn(tel: otel_events.Telemetry) -> None:
    """A turn span as another GenAI instrumentation may write a cancellation: status ERROR
    with error.type "cancelled". The rules must exclude it by error_type alone."""
    tracer = tel.tracer_provider.get_tracer("another-instrumentation")
    with tracer.start_as_current_span("invoke_agent data-agent", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "data-agent",
            "error.type": "cancelled"}, record_exception=False,
            set_status_on_exception=False) as span:
        span.set_status(Status(StatusCode.ERROR, "cancelled by the user"))


@dataclass
class Hops:
    """When each hop of one rule set first saw the burst, in seconds after its start."""
    scraped: float | None = None
    firing: float | None = None
    paged: Notification | None = None
    paged_after: float | None = None


def seconds(value: float | None) -> str:
    # A hop that happened between two polls of the loop has no time of its own.
    return "between polls" if value is None else f"{value:.2f} s"


def test_failing_turns_page_and_cancelled_turns_page_nobody(stack: Stack) -> None:
    failing = f"e2e-failing-{uuid.uuid4().hex[:8]}"
    cancelling = f"e2e-cancelling-{uuid.uuid4().hex[:8]}"
    failing_tel, cancelling_tel = telemetry(stack, failing), telemetry(stack, cancelling)
    failing_emitter, cancelling_emitter = emitter_of(failing_tel), emitter_of(cancelling_tel)
    error_series = {
        "spanmetrics": f'traces_span_metrics_calls_total{{service_name="{failing}",'
                       f'status_code="STATUS_CODE_ERROR"}}',
        "emitter": f'otel_events_turns_total{{exported_job="{failing}",'
                   f'otel_events_turn_outcome="failed"}}',
    }
    hops = {rule_set: Hops() for rule_set in RULE_SETS}
    rounds = 0
    began = time.monotonic()
    try:
        # Both services run side by side until the failing one is paged by both rule
        # sets: 3 of 10 turns fail there, while the other's turns are 7 in 10 cancelled
        # (2 of them marked ERROR as another instrumentation would). Each round waits up
        # to 0.25 s for the page, which paces the traffic (about 40 turns a second).
        deadline = began + 120
        while not all(h.paged for h in hops.values()):
            assert time.monotonic() < deadline, (
                f"no page from every rule set within 120 s: {hops}; received "
                f"{[(n.path, n.body['alerts']) for n in stack.webhook.notifications]}")
            rounds += 1
            for i in range(10):
                (failing_turn if i < 3 else completed_turn)(failing_emitter)
                if i < 5:
                    cancelled_turn(cancelling_emitter)
                elif i < 7:
                    foreign_cancelled_turn(cancelling_tel)
                else:
                    completed_turn(cancelling_emitter)
            assert failing_tel.force_flush() and cancelling_tel.force_flush()
            now = time.monotonic() - began
            firing = {a["labels"].get("rule_set") for a in stack.prometheus.alerts()
                      if a["labels"]["alertname"] == "AgentTurnsFailing"
                      and a["labels"].get("service_name") == failing
                      and a["state"] == "firing"}
            for rule_set, hop in hops.items():
                if hop.scraped is None and stack.prometheus.query(error_series[rule_set]):
                    hop.scraped = now
                if hop.firing is None and rule_set in firing:
                    hop.firing = now
            try:
                stack.webhook.wait_for(
                    lambda n: n.path == "/alerts/page" and any(
                        not hops[a["labels"]["rule_set"]].paged
                        for a in alerts_of(n, "AgentTurnsFailing", failing)),
                    "a page", timeout=0.25)
            except TimeoutError:
                pass
            for notification in stack.webhook.notifications:
                if notification.path != "/alerts/page":
                    continue
                for alert in alerts_of(notification, "AgentTurnsFailing", failing):
                    hop = hops[alert["labels"]["rule_set"]]
                    if hop.paged is None:
                        hop.paged = notification
                        hop.paged_after = notification.received - began
        for rule_set, hop in hops.items():
            print(f"[alerting] {rule_set}: failing turns start -> error series scraped "
                  f"{seconds(hop.scraped)} -> AgentTurnsFailing firing {seconds(hop.firing)} "
                  f"-> page at the webhook {seconds(hop.paged_after)} "
                  f"({rounds} rounds, {rounds * 10} turns per service)")
    finally:
        failing_tel.shutdown()
        cancelling_tel.shutdown()

    for rule_set, hop in hops.items():
        assert hop.paged is not None
        (page,) = alerts_of(hop.paged, "AgentTurnsFailing", failing, rule_set=rule_set)
        assert page["labels"] == {
            "alertname": "AgentTurnsFailing", "severity": "page", "sloth_severity": "page",
            "service_name": failing, "gen_ai_agent_name": "data-agent", "rule_set": rule_set,
            "sloth_id": f"otel-events-turn-success-{rule_set}", "sloth_service": "otel-events",
            "sloth_slo": f"turn-success-{rule_set}"}
        assert page["annotations"]["runbook_url"] == "deploy/README.md#agentturnsfailing"
        assert failing in page["annotations"]["summary"]
        assert hop.paged.body["groupLabels"] == {"service_name": failing,
                                                 "gen_ai_agent_name": "data-agent"}

    # The cancelling service's turns reached Prometheus, as cancellations: through
    # spanmetrics with status UNSET (the emitter's) and ERROR (the foreign spans), and in
    # the emitter's counter as outcome "cancelled".
    by_status = {s["metric"]["status_code"] for s in stack.prometheus.query(
        f'traces_span_metrics_calls_total{{service_name="{cancelling}",'
        f'span_name="invoke_agent data-agent",error_type="cancelled"}}')}
    assert by_status == {"STATUS_CODE_UNSET", "STATUS_CODE_ERROR"}
    outcomes = {s["metric"]["otel_events_turn_outcome"] for s in stack.prometheus.query(
        f'otel_events_turns_total{{exported_job="{cancelling}"}}')}
    assert outcomes == {"completed", "cancelled"}

    # Once Prometheus holds every cancelled turn (8 a round in the emitter's counter, all 10
    # as turn spans) and every rule group has evaluated since, no alert of any kind
    # (pending or firing) names the cancelling service.
    def counted(promql: str, expected: int) -> bool:
        return [float(s["value"][1]) for s in stack.prometheus.query(promql)] == [expected]

    wait_for(lambda: counted(f'sum(otel_events_turns_total{{exported_job="{cancelling}"}})',
                             8 * rounds)
             and counted(f'sum(traces_span_metrics_calls_total{{service_name="{cancelling}",'
                         f'span_name="invoke_agent data-agent"}})', 10 * rounds),
             "every cancelled turn in Prometheus", timeout=30, interval=0.2)
    all_in = time.time()

    def evaluated_since(moment: float) -> bool:
        response = httpx.get(f"{stack.prometheus.url}/api/v1/rules", timeout=5)
        groups = response.json()["data"]["groups"]
        return all(datetime.fromisoformat(g["lastEvaluation"]).timestamp() > moment
                   for g in groups)

    wait_for(lambda: evaluated_since(all_in), "a rule evaluation after that", timeout=30,
             interval=0.2)
    assert not [a for a in stack.prometheus.alerts()
                if a["labels"].get("service_name") == cancelling]
    assert not [n for n in stack.webhook.notifications if mentions(n, cancelling)]


def test_a_failed_turn_opens_tickets_and_pages_nobody(stack: Stack) -> None:
    service = f"e2e-ticket-{uuid.uuid4().hex[:8]}"
    healthy_service = f"e2e-healthy-{uuid.uuid4().hex[:8]}"
    healthy, tel = telemetry(stack, healthy_service), telemetry(stack, service)
    try:
        completed_turn(emitter_of(healthy))
        healthy.force_flush()
        # The first failure this service ever had: brand-new error series, which
        # `increase(...) > 0` alone would never see.
        failing_turn(emitter_of(tel))
        failed_at = time.monotonic()
        assert tel.force_flush()
        expected = {(name, rule_set) for name in ("AgentTurnFailed", "AgentStepFailed")
                    for rule_set in RULE_SETS}
        seen: dict[tuple[str, str], dict[str, Any]] = {}

        def all_tickets() -> bool:
            for n in stack.webhook.notifications:
                for a in n.body.get("alerts", []):
                    labels = a["labels"]
                    if n.path == "/alerts/ticket" and labels.get("service_name") == service:
                        seen.setdefault((labels["alertname"], labels["rule_set"]), a)
            return expected <= set(seen)

        try:
            wait_for(all_tickets, "AgentTurnFailed and AgentStepFailed tickets from both "
                     "rule sets", timeout=60, interval=0.1)
        except TimeoutError as error:
            firing = [a["labels"] for a in stack.prometheus.alerts()
                      if a["labels"].get("service_name") == service]
            raise AssertionError(f"{error}; delivered {sorted(seen)}; in Prometheus "
                                 f"{firing}") from error
        print(f"[alerting] one failed turn -> both tickets of both rule sets at the webhook "
              f"{time.monotonic() - failed_at:.2f} s")
    finally:
        tel.shutdown()
        healthy.shutdown()

    for rule_set in RULE_SETS:
        turn = seen[("AgentTurnFailed", rule_set)]
        assert turn["labels"] == {"alertname": "AgentTurnFailed", "severity": "ticket",
                                  "service_name": service, "gen_ai_agent_name": "data-agent",
                                  "error_type": "QueryFailed", "rule_set": rule_set}
        assert turn["annotations"]["runbook_url"] == "deploy/README.md#agentturnfailed"
    assert seen[("AgentStepFailed", "spanmetrics")]["labels"]["span_name"] == "execute_tool sqlite"
    assert seen[("AgentStepFailed", "emitter")]["labels"]["otel_events_item_type"] == \
        "sql_execution"
    assert {seen[("AgentStepFailed", s)]["labels"]["error_type"] for s in RULE_SETS} == \
        {"QueryFailed"}

    # One failure among no other turns is no burn: no page, in Prometheus or at the webhook.
    assert not [a for a in stack.prometheus.alerts()
                if a["labels"].get("service_name") == service
                and a["labels"]["alertname"] == "AgentTurnsFailing"]
    assert not [n for n in stack.webhook.notifications
                if n.path == "/alerts/page" and mentions(n, service)]

    # The series under the alerts carry collector_instance_id; the alerts do not.
    series = stack.prometheus.query(
        f'traces_span_metrics_calls_total{{service_name="{service}",'
        f'status_code="STATUS_CODE_ERROR"}}')
    assert {(s["metric"]["span_name"], s["metric"]["error_type"]) for s in series} == {
        ("invoke_agent data-agent", "QueryFailed"), ("execute_tool sqlite", "QueryFailed")}
    assert all(s["metric"].get("collector_instance_id") for s in series)

    # The healthy service's turn was counted, and alerts nobody.
    assert stack.prometheus.query(
        f'traces_span_metrics_calls_total{{service_name="{healthy_service}"}}')
    assert not [a for a in stack.prometheus.alerts()
                if a["labels"].get("service_name") == healthy_service]
    assert not [n for n in stack.webhook.notifications if mentions(n, healthy_service)]


def post_alerts(stack: Stack, alerts: list[dict[str, Any]]) -> None:
    response = httpx.post(f"http://{stack.alertmanager.address}/api/v2/alerts", json=alerts,
                          timeout=5)
    response.raise_for_status()


def test_a_page_inhibits_the_tickets_of_its_service_until_it_resolves(stack: Stack) -> None:
    """Alerts posted straight to Alertmanager: the shipped routing and inhibition."""
    paged, other = f"e2e-paged-{uuid.uuid4().hex[:8]}", f"e2e-other-{uuid.uuid4().hex[:8]}"
    page = {"labels": {"alertname": "AgentTurnsFailing", "severity": "page",
                       "service_name": paged, "gen_ai_agent_name": "data-agent"}}
    ticket = {"alertname": "AgentStepFailed", "severity": "ticket",
              "span_name": "execute_tool sqlite", "error_type": "QueryFailed"}
    post_alerts(stack, [page, {"labels": {**ticket, "service_name": paged}},
                        {"labels": {**ticket, "service_name": other}}])
    stack.webhook.wait_for(lambda n: n.path == "/alerts/page" and mentions(n, paged),
                           "the page", timeout=30)
    stack.webhook.wait_for(lambda n: n.path == "/alerts/ticket" and mentions(n, other),
                           "the other service's ticket", timeout=30)

    def state_of_paged_ticket() -> dict[str, Any] | None:
        response = httpx.get(f"http://{stack.alertmanager.address}/api/v2/alerts",
                             params={"filter": [f'service_name="{paged}"',
                                                'severity="ticket"']}, timeout=5)
        found = response.json()
        return found[0]["status"] if found else None

    status = wait_for(state_of_paged_ticket, "the paged service's ticket in Alertmanager",
                      timeout=10, interval=0.1)
    assert status["state"] == "suppressed" and status["inhibitedBy"], status
    assert not [n for n in stack.webhook.notifications
                if n.path == "/alerts/ticket" and mentions(n, paged)]

    # The page resolves; the ticket, still firing, goes out.
    now = datetime.now(UTC).isoformat()
    post_alerts(stack, [{**page, "endsAt": now},
                        {"labels": {**ticket, "service_name": paged}}])
    stack.webhook.wait_for(lambda n: n.path == "/alerts/ticket" and mentions(n, paged),
                           "the ticket once the page resolved", timeout=30)


def test_agent_metrics_and_jaeger_monitor_data_reach_prometheus(stack: Stack) -> None:
    """The agent's own OTLP metrics go through the same Jaeger to Prometheus, and Jaeger's
    Monitor API (per-operation calls and errors) reads span metrics back from it."""
    service = f"e2e-metrics-{uuid.uuid4().hex[:8]}"
    tel = otel_events.configure(service_name=service, endpoint=stack.jaeger.otlp_grpc,
                                protocol="grpc", set_global=False)
    emitter = emitter_of(tel)
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
    # alert-rules.emitter.yml and slo-turns.emitter.yml read these names.
    turns = wait_for(
        lambda: stack.prometheus.query(f'sum by (otel_events_turn_outcome, error_type, '
                                       f'gen_ai_agent_name) '
                                       f'(otel_events_turns_total{{exported_job="{service}"}})'),
        "otel_events_turns_total in Prometheus", timeout=30, interval=0.2)
    outcomes = {(r["metric"]["otel_events_turn_outcome"], r["metric"].get("error_type"),
                 r["metric"]["gen_ai_agent_name"]): float(r["value"][1]) for r in turns}
    assert outcomes == {("completed", None, "data-agent"): 2.0,
                        ("failed", "QueryFailed", "data-agent"): 1.0}

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
