"""Real servers for the end-to-end tests: Jaeger v2, Prometheus, Alertmanager, a webhook.

Each server runs as a plain process bound to 127.0.0.1 on free ports, with a config
derived from the file we ship (deploy/..., collector-config.yaml): only addresses and
intervals are rewritten, so the tests exercise what users copy. Every start polls a health
endpoint with a deadline; every server is stopped by its fixture.

Binaries come from scripts/install-servers.sh (Jaeger: .cache/bin/jaeger, or
$OTEL_EVENTS_JAEGER_BIN; the others from PATH). Without one, a test skips with the reason,
except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest
import yaml

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
COLLECTOR_CONFIG = REPO_ROOT / "collector-config.yaml"
JAEGER_CONFIG = DEPLOY / "jaeger" / "config.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alert-rules.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"

IN_CI = os.environ.get("CI") == "true"

T = TypeVar("T")


class ServerError(RuntimeError):
    """A server did not start, or exited."""


def missing(reason: str) -> NoReturn:
    """A server the test needs is not installed: fail under CI=true, else skip."""
    hint = "run scripts/install-servers.sh"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing server is a failure; {hint})", pytrace=False)
    pytest.skip(f"{reason}; {hint}")


def jaeger_binary() -> Path | None:
    override = os.environ.get("OTEL_EVENTS_JAEGER_BIN")
    path = Path(override) if override else REPO_ROOT / ".cache" / "bin" / "jaeger"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def tool(*names: str) -> str | None:
    """The first of ``names`` found on PATH."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_jaeger() -> Path:
    binary = jaeger_binary()
    if binary is None:
        missing("Jaeger not built (.cache/bin/jaeger)")
    return binary


def require_tool(*names: str) -> str:
    found = tool(*names)
    if found is None:
        missing(f"{' / '.join(names)} not installed")
    return found


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout: float,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``check`` until it returns a truthy value, or fail after ``timeout`` seconds.

    Exceptions from ``check`` count as "not yet". ``alive`` returns a reason when the
    thing waited for can no longer happen (its process exited), which fails at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except Exception as error:  # a failed poll is just "not yet"
            result, last_error = None, error
        if result:
            return result
        if alive is not None:
            reason = alive()
            if reason:
                raise ServerError(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s{detail}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


def set_at(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping; the path must already exist (a renamed key in
    a shipped config then fails here instead of silently keeping its default)."""
    *parents, last = path.split(".")
    node: Any = config
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"{path}: no {key!r} in the shipped config")
        node = node[key]
    if not isinstance(node, dict) or last not in node:
        raise KeyError(f"{path}: no {last!r} in the shipped config")
    node[last] = value


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


class Server:
    """A process with a log file in its work directory and a health URL."""

    def __init__(self, name: str, argv: list[str], workdir: Path, health_url: str,
                 env: Mapping[str, str] | None = None, start_timeout: float = 60.0) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.health_url = health_url
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env={**os.environ, **self.env},
            )
        try:
            wait_for(lambda: http_ok(self.health_url), f"{self.name} health {self.health_url}",
                     self.start_timeout, alive=self._exited)
        except BaseException as error:
            self.stop()
            raise ServerError(f"{error}\n--- {self.name} log ---\n{self.log_tail()}") from error
        self.started_in = time.monotonic() - began
        print(f"[servers] {self.name} healthy after {self.started_in:.2f} s")

    def _exited(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return f"exited with status {self.process.returncode}"
        return None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


# -- Jaeger -----------------------------------------------------------------------------


@dataclass
class JaegerPorts:
    otlp_grpc: int
    otlp_http: int
    query_http: int
    query_grpc: int
    health: int
    metrics: int  # the prometheus exporter of span metrics

    @classmethod
    def pick(cls) -> JaegerPorts:
        return cls(*(free_port() for _ in range(6)))


class Jaeger(Server):
    """``jaeger --config`` with deploy/jaeger/config.yaml on free ports; a query client."""

    def __init__(self, binary: Path, workdir: Path, prometheus_url: str | None = None,
                 flush_interval: str = "1s", feature_gates: list[str] | None = None) -> None:
        self.ports = JaegerPorts.pick()
        p = self.ports
        config = load_yaml(JAEGER_CONFIG)
        set_at(config, "extensions.healthcheckv2.http.endpoint", f"127.0.0.1:{p.health}")
        set_at(config, "extensions.jaeger_query.http.endpoint", f"127.0.0.1:{p.query_http}")
        set_at(config, "extensions.jaeger_query.grpc.endpoint", f"127.0.0.1:{p.query_grpc}")
        set_at(config, "extensions.jaeger_storage.metric_backends.promstore.prometheus.endpoint",
               prometheus_url or f"http://127.0.0.1:{free_port()}")
        set_at(config, "receivers.otlp.protocols.grpc.endpoint", f"127.0.0.1:{p.otlp_grpc}")
        set_at(config, "receivers.otlp.protocols.http.endpoint", f"127.0.0.1:{p.otlp_http}")
        set_at(config, "exporters.prometheus.endpoint", f"127.0.0.1:{p.metrics}")
        set_at(config, "connectors.spanmetrics.metrics_flush_interval", flush_interval)
        config_path = write_yaml(workdir / "jaeger.yaml", config)
        argv = [str(binary), "--config", str(config_path)]
        if feature_gates:
            argv.append("--feature-gates=" + ",".join(feature_gates))
        super().__init__("jaeger", argv, workdir, f"http://127.0.0.1:{p.health}/status")

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.ports.otlp_grpc}"

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.ports.otlp_http}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.query_http}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.ports.metrics}"

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace in the legacy JSON API (``/api/traces/{id}``), None if not (yet) stored."""
        response = httpx.get(f"{self.query_url}/api/traces/{trace_id}", timeout=5.0)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        data = response.json().get("data") or []
        return data[0] if data else None

    def trace_v3(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as OTLP JSON (``/api/v3/traces/{id}``), None if not (yet) stored."""
        response = httpx.get(f"{self.query_url}/api/v3/traces/{trace_id}", timeout=5.0)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json().get("result") or {}
        return result if result.get("resourceSpans") else None

    def wait_for_trace(self, trace_id: str, spans: int = 1,
                       timeout: float = 30.0) -> dict[str, Any]:
        """Poll until the trace holds at least ``spans`` spans."""

        def ready() -> dict[str, Any] | None:
            found = self.trace(trace_id)
            return found if found and len(found["spans"]) >= spans else None

        return wait_for(ready, f"trace {trace_id} with {spans} span(s) in Jaeger", timeout,
                        interval=0.2, alive=self._exited)

    def trace_ids(self, service: str, limit: int = 1000) -> set[str]:
        """Ids of the stored traces of ``service`` (legacy search API)."""
        response = httpx.get(f"{self.query_url}/api/traces",
                             params={"service": service, "limit": limit, "lookback": "1h"},
                             timeout=10.0)
        if response.status_code == 404:
            return set()
        response.raise_for_status()
        return {t["traceID"] for t in response.json().get("data") or []}

    def services(self) -> list[str]:
        response = httpx.get(f"{self.query_url}/api/services", timeout=5.0)
        response.raise_for_status()
        return list(response.json().get("data") or [])


class Collector(Server):
    """collector-config.yaml in the Jaeger binary (a Collector distribution) on free
    ports, exporting to the given OTLP gRPC endpoints for "Jaeger" and "Tempo"."""

    def __init__(self, binary: Path, workdir: Path, jaeger_otlp: str, tempo_otlp: str,
                 decision_wait: str = "1s", slow_turn_ms: int | None = None) -> None:
        self.grpc_port, self.http_port, self.health_port, self.metrics_port = (
            free_port() for _ in range(4))
        config = load_yaml(COLLECTOR_CONFIG)
        set_at(config, "processors.tail_sampling.decision_wait", decision_wait)
        if slow_turn_ms is not None:
            policy = self.policy(config, "latency")
            policy["latency"]["threshold_ms"] = slow_turn_ms
        set_at(config, "processors.batch.timeout", "200ms")
        set_at(config, "connectors.spanmetrics.metrics_flush_interval", "1s")
        # The Collector's own metrics would bind :8888, shared by every instance.
        config["service"].setdefault("telemetry", {})["metrics"] = {"level": "none"}
        self.config = config
        config_path = write_yaml(workdir / "collector.yaml", config)
        # Endpoints go through the environment variables the shipped file reads.
        env = {
            "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.grpc_port}",
            "OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.http_port}",
            "PROMETHEUS_EXPORTER_ENDPOINT": f"127.0.0.1:{self.metrics_port}",
            "HEALTHCHECK_ENDPOINT": f"127.0.0.1:{self.health_port}",
            "JAEGER_OTLP_ENDPOINT": jaeger_otlp.removeprefix("http://"),
            "TEMPO_OTLP_ENDPOINT": tempo_otlp.removeprefix("http://"),
        }
        super().__init__("collector", [str(binary), "--config", str(config_path)], workdir,
                         f"http://127.0.0.1:{self.health_port}/status", env=env)

    @staticmethod
    def policy(config: Mapping[str, Any], policy_type: str) -> dict[str, Any]:
        for policy in config["processors"]["tail_sampling"]["policies"]:
            if policy["type"] == policy_type:
                found: dict[str, Any] = policy  # the mapping itself, for edits
                return found
        raise KeyError(f"no {policy_type} policy in collector-config.yaml")

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"


# -- Prometheus, Alertmanager, a webhook ------------------------------------------------------


class Prometheus(Server):
    """deploy/prometheus/prometheus.yml with the shipped rules (or ``rule_files``), 1 s
    intervals, scraping ``targets`` and alerting ``alertmanager`` (host:port)."""

    def __init__(self, binary: str, workdir: Path, targets: list[str],
                 alertmanager: str | None, port: int | None = None,
                 rule_files: list[Path] | None = None) -> None:
        self.port = port or free_port()
        config = load_yaml(PROMETHEUS_CONFIG)
        set_at(config, "global.scrape_interval", "1s")
        set_at(config, "global.evaluation_interval", "1s")
        # The shipped rule files are relative to the shipped config's directory.
        shipped = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
        set_at(config, "rule_files", [str(p) for p in rule_files] if rule_files else shipped)
        set_at(config, "scrape_configs", [
            {**config["scrape_configs"][0], "static_configs": [{"targets": targets}]}])
        alerting = config["alerting"]["alertmanagers"][0]
        alerting["static_configs"] = [{"targets": [alertmanager]}] if alertmanager else []
        config_path = write_yaml(workdir / "prometheus.yml", config)
        argv = [binary, f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        super().__init__("prometheus", argv, workdir, f"{self.url}/-/ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5.0)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/alerts", timeout=5.0)
        response.raise_for_status()
        return list(response.json()["data"]["alerts"])


class Alertmanager(Server):
    """deploy/alertmanager/alertmanager.yml with 1 s grouping, webhooks sent to
    ``webhook_base`` (the shipped URLs' paths are kept)."""

    SHIPPED_BASE = "http://127.0.0.1:5001"

    def __init__(self, binary: str, workdir: Path, webhook_base: str) -> None:
        self.port = free_port()
        config = load_yaml(ALERTMANAGER_CONFIG)
        route = config["route"]
        set_at(config, "route.group_wait", "1s")
        set_at(config, "route.group_interval", "1s")
        for child in route.get("routes", []):
            for key in ("group_wait", "group_interval"):
                if key in child:
                    child[key] = "1s"
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                url = hook["url"]
                assert url.startswith(self.SHIPPED_BASE), url
                hook["url"] = webhook_base + url.removeprefix(self.SHIPPED_BASE)
        config_path = write_yaml(workdir / "alertmanager.yml", config)
        argv = [binary, f"--config.file={config_path}", f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                "--log.level=warn"]
        super().__init__("alertmanager", argv, workdir, f"http://127.0.0.1:{self.port}/-/ready")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Notification:
    path: str
    body: dict[str, Any]
    received: float  # time.monotonic()


class Webhook:
    """An HTTP server in a thread that records the JSON POSTed to it."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._changed = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._changed:
                    outer.notifications.append(Notification(self.path, body, time.monotonic()))
                    outer._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, match: Callable[[Notification], bool], what: str,
                 timeout: float) -> Notification:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for notification in self.notifications:
                    if match(notification):
                        return notification
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(n.path, [a["labels"] for a in n.body.get("alerts", [])])
                            for n in self.notifications]
                    raise TimeoutError(f"{what}: not within {timeout:.0f} s; received {seen}")
                self._changed.wait(remaining)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
