"""The shipped configurations pass their tools' checks: promtool (both rule sets, their
unit tests, the Prometheus config), Sloth (the SLO rules are generated from the spec),
amtool (the Alertmanager config and its routing) and `jaeger validate` (the Jaeger config
and collector-config.yaml)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .servers import (
    ALERT_RULES,
    ALERTMANAGER_CONFIG,
    COLLECTOR_CONFIG,
    DEPLOY,
    JAEGER_CONFIG,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    load_yaml,
    missing,
    require_tool,
    tool,
    write_yaml,
)


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                          check=False)


PROMETHEUS_DIR = DEPLOY / "prometheus"
# The two rule sets, each a hand-written file of tickets and a Sloth-generated file with
# the page; a Prometheus loads one set.
RULE_SETS = {
    "spanmetrics": [ALERT_RULES, PROMETHEUS_DIR / "slo-turns.spanmetrics.yml"],
    "emitter": [PROMETHEUS_DIR / "alert-rules.emitter.yml",
                PROMETHEUS_DIR / "slo-turns.emitter.yml"],
}
RULE_TESTS = {"spanmetrics": PROMETHEUS_DIR / "alert-rules.test.yml",
              "emitter": PROMETHEUS_DIR / "alert-rules.emitter.test.yml"}
ALERTS = {  # name -> severity; users route on both
    "AgentTurnsFailing": "page",
    "AgentTurnFailed": "ticket",
    "AgentTurnsAbandoned": "ticket",
    "AgentStepFailed": "ticket",
    "AgentStepLatencyP95High": "ticket",
}
SLO_SPEC = DEPLOY / "sloth" / "agent-turns.slo.yml"


def rules_of(rule_set: str) -> list[dict[str, Any]]:
    return [rule for path in RULE_SETS[rule_set] for group in load_yaml(path)["groups"]
            for rule in group["rules"]]


@pytest.mark.parametrize("rule_set", sorted(RULE_TESTS))
def test_alert_rules_pass_their_promtool_unit_tests(rule_set: str) -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "test", "rules", RULE_TESTS[rule_set])
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert of the set is exercised, firing at least once.
    text = RULE_TESTS[rule_set].read_text(encoding="utf-8")
    for name in ALERTS:
        assert f"alertname: {name}" in text, (rule_set, name)


def test_prometheus_config_and_rules_check() -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout + result.stderr
    loaded = {PROMETHEUS_DIR / name for name in load_yaml(PROMETHEUS_CONFIG)["rule_files"]}
    assert loaded == set(RULE_SETS["spanmetrics"])
    for paths in RULE_SETS.values():
        result = run(promtool, "check", "rules", *paths)
        assert result.returncode == 0, result.stdout + result.stderr


def test_both_rule_sets_have_the_same_alerts_and_severities() -> None:
    for rule_set in RULE_SETS:
        alerts = {(r["alert"], r["labels"]["severity"]) for r in rules_of(rule_set)
                  if "alert" in r}
        assert alerts == set(ALERTS.items()), rule_set


def test_every_span_metrics_rule_aggregates_the_collector_instance_away() -> None:
    """spanmetrics adds a per-process collector_instance_id; a rule that keeps it pages once
    per Collector (and again after each restart). Sloth's alerts read its recording rules,
    which aggregate."""
    for rule in rules_of("spanmetrics"):
        if "traces_span_metrics" in rule["expr"]:
            assert "sum by (" in rule["expr"], rule.get("alert") or rule["record"]
        assert "collector_instance_id" not in rule["expr"], rule.get("alert") or rule["record"]


def github_anchor(heading: str) -> str:
    """The fragment GitHub (and most Markdown renderers) give a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_every_alert_links_a_runbook_section_of_deploy_readme() -> None:
    anchors, in_code = set(), False
    for line in (DEPLOY / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code  # a `# comment` in a code block is no heading
        elif line.startswith("#") and not in_code:
            anchors.add(github_anchor(line.lstrip("#")))
    for rule_set in RULE_SETS:
        for rule in rules_of(rule_set):
            if "alert" not in rule:
                continue
            url = rule["annotations"]["runbook_url"]
            path, _, anchor = url.partition("#")
            assert path == "deploy/README.md", (rule_set, rule["alert"], url)
            assert anchor == rule["alert"].lower(), (rule_set, rule["alert"], url)
            assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in deploy/README.md"


def sloth_binary() -> Path:
    override = os.environ.get("OTEL_EVENTS_SLOTH_BIN")
    built = REPO_ROOT / ".cache" / "bin" / "sloth"
    found = Path(override) if override else built if built.is_file() else None
    if found is None:
        on_path = tool("sloth")
        found = Path(on_path) if on_path else None
    if found is None:
        missing("Sloth not built (.cache/bin/sloth)")
    return found


def test_slo_rules_are_generated_from_the_spec_by_sloth() -> None:
    """The checked-in slo-turns.*.yml are exactly what Sloth makes of the spec, and the
    spec has one objective for both SLOs."""
    spec = load_yaml(SLO_SPEC)
    assert len({slo["objective"] for slo in spec["slos"]}) == 1
    assert len(re.findall(r"^\s*objective: &objective", SLO_SPEC.read_text(encoding="utf-8"),
                          re.MULTILINE)) == 1
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "sloth" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "OTEL_EVENTS_SLOTH_BIN": str(sloth_binary())})
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_checks_and_routes_pages_apart() -> None:
    amtool = require_tool("amtool")
    result = run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    routes: dict[tuple[str, ...], str] = {
        ("severity=page", "alertname=AgentTurnsFailing"): "agent-oncall",
        **{("severity=ticket", f"alertname={name}"): "agent-tickets"
           for name, severity in ALERTS.items() if severity == "ticket"},
        ("alertname=SomethingElse",): "agent-tickets",
    }
    for labels, receiver in routes.items():
        result = run(amtool, "config", "routes", "test",
                     f"--config.file={ALERTMANAGER_CONFIG}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == receiver, (labels, result.stdout)
    # Grouped per service and agent; a page inhibits the tickets of its service.
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert config["route"]["group_by"] == ["service_name", "gen_ai_agent_name"]
    assert config["inhibit_rules"] == [{"source_matchers": ['severity="page"'],
                                        "target_matchers": ['severity="ticket"'],
                                        "equal": ["service_name"]}]


@pytest.mark.parametrize("config_path", [JAEGER_CONFIG, COLLECTOR_CONFIG],
                         ids=["deploy-jaeger", "collector-config"])
def test_span_metrics_carry_the_dimensions_the_rules_read(config_path: Path) -> None:
    """error_type tells a cancelled turn from a failed one; gen_ai_agent_name keeps agents
    apart (the end-to-end alerting test reads both labels from a real Jaeger)."""
    dimensions = [d["name"] for d in load_yaml(config_path)["connectors"]["spanmetrics"]
                  ["dimensions"]]
    assert dimensions == ["error.type", "gen_ai.agent.name"]


def test_alertmanager_check_rejects_a_broken_config(tmp_path: Path) -> None:
    """amtool really checks (so the pass above means something)."""
    amtool = require_tool("amtool")
    config = load_yaml(ALERTMANAGER_CONFIG)
    config["route"]["receiver"] = "nobody"
    result = run(amtool, "check-config", write_yaml(tmp_path / "am.yml", config))
    assert result.returncode != 0


def test_jaeger_has_every_component_the_configs_use(jaeger_bin: Path) -> None:
    result = run(jaeger_bin, "components")
    assert result.returncode == 0, result.stderr
    components = load_yaml_text(result.stdout)
    names = {kind: {c["name"] for c in components.get(kind) or []}
             for kind in ("receivers", "processors", "exporters", "connectors", "extensions")}
    for config_path in (JAEGER_CONFIG, COLLECTOR_CONFIG):
        config = load_yaml(config_path)
        for kind in names:
            for component_id in config.get(kind) or {}:
                kind_name = component_id.split("/")[0]
                assert kind_name in names[kind], f"{config_path.name}: {kind} {kind_name}"
    # Jaeger lacks none of them. It lacks the loadbalancing exporter of the first tier in
    # deploy/README.md ("Scaling past one Collector"); that tier runs otelcol-contrib, and
    # no config here uses it.


@pytest.mark.parametrize("config_path", [JAEGER_CONFIG, COLLECTOR_CONFIG],
                         ids=["deploy-jaeger", "collector-config"])
def test_jaeger_validates_the_shipped_config(jaeger_bin: Path, config_path: Path) -> None:
    """Both files also run for real (test_jaeger_export, test_tail_sampling): `validate`
    decodes settings but does not build components (an unknown sampling policy type
    passes it)."""
    result = run(jaeger_bin, "validate", "--config", config_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_jaeger_validate_rejects_a_misspelt_setting(jaeger_bin: Path, tmp_path: Path) -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    tail = config["processors"]["tail_sampling"]
    tail["decision_wiat"] = tail.pop("decision_wait")
    result = run(jaeger_bin, "validate", "--config", write_yaml(tmp_path / "c.yaml", config))
    assert result.returncode != 0
    assert "decision_wiat" in result.stdout + result.stderr


def load_yaml_text(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data
