"""The shipped configurations pass their tools' checks: promtool (rules, their unit
tests, the Prometheus config), amtool (the Alertmanager config and its routing) and
`jaeger validate` (the Jaeger config and collector-config.yaml)."""

from __future__ import annotations

import subprocess
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
    load_yaml,
    require_tool,
    write_yaml,
)


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                          check=False)


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "test", "rules", DEPLOY / "prometheus" / "alert-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_and_rules_check() -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
    result = run(promtool, "check", "rules", ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_aggregates_the_collector_instance_away() -> None:
    """spanmetrics adds a per-process collector_instance_id; a rule that keeps it pages once
    per Collector (and again after each restart)."""
    for group in load_yaml(ALERT_RULES)["groups"]:
        for rule in group["rules"]:
            assert "sum by (" in rule["expr"], rule["alert"]
            assert "collector_instance_id" not in rule["expr"], rule["alert"]


def test_alertmanager_config_checks_and_routes_pages_to_oncall() -> None:
    amtool = require_tool("amtool")
    result = run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    routes = {
        "severity=page": "agent-oncall",
        "severity=ticket": "agent-tickets",
        "alertname=AgentStepFailed": "agent-tickets",
    }
    for labels, receiver in routes.items():
        result = run(amtool, "config", "routes", "test",
                     f"--config.file={ALERTMANAGER_CONFIG}", labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == receiver, (labels, result.stdout)


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
