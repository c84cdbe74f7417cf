"""``otel-events run -- COMMAND``: a live tee of COMMAND's Codex stream into spans, a file
and a bridge, with arrival times; first with small shell producers, then the real CLI."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from otel_events.ingest import Ingester
from otel_events.metrics import AgentMetrics
from otel_events.run import stamped, watch

from ..bridge_support import running_bridge, wait_for
from ..conftest import Telemetry
from ..otlp_receiver import Received, http_receiver
from .expected import AGENT, COMMAND, attrs, turns
from .fake_model import FakeModel, tool_output
from .harness import Codex
from .scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]
THREAD = "0199f000-0000-7000-8000-000000000001"
STARTED = [
    {"type": "thread.started", "thread_id": THREAD},
    {"type": "turn.started"},
    {"type": "item.started", "item": {"id": "item_0", "type": "command_execution",
                                      "command": "sleep 0.6", "aggregated_output": "",
                                      "exit_code": None, "status": "in_progress"}},
]
FINISHED = [
    {"type": "item.completed", "item": {"id": "item_0", "type": "command_execution",
                                        "command": "sleep 0.6", "aggregated_output": "",
                                        "exit_code": 0, "status": "completed"}},
    {"type": "turn.completed", "usage": {"input_tokens": 7, "cached_input_tokens": 2,
                                         "output_tokens": 3}},
]


def lines(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(event) + "\n" for event in events)


def producer(tmp_path: Path, middle: str, after: str = lines(FINISHED), status: int = 0,
             ) -> list[str]:
    """A shell script printing STARTED, running ``middle``, printing ``after``."""
    script = tmp_path / "producer.sh"
    script.write_text(f"cat <<'EOF'\n{lines(STARTED)}EOF\n{middle}\n"
                      f"printf '%s' '{after}'\nexit {status}\n")
    return ["sh", str(script)]


def ingester(telemetry: Telemetry) -> Ingester:
    return Ingester(telemetry.tracer_provider.get_tracer("t"),
                    AgentMetrics(telemetry.meter_provider.get_meter("t")), AGENT)


def seconds(span: Any) -> float:
    if isinstance(span, ProtoSpan):
        return (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
    return float(span.end_time - span.start_time) / 1e9


def test_a_command_that_sleeps_in_a_live_run_gives_a_span_that_long(
        telemetry: Telemetry, tmp_path: Path) -> None:
    out = io.BytesIO()
    status = watch(producer(tmp_path, "sleep 0.6"), ingester(telemetry), out)
    assert status == 0
    assert out.getvalue().decode() == lines(STARTED + FINISHED)  # passed through unchanged
    assert seconds(telemetry.span(COMMAND)) >= 0.55
    assert seconds(turns(telemetry)[0]) >= 0.55


def test_a_saved_stream_replays_without_time_and_a_stamped_one_with_it(
        telemetry: Telemetry, tmp_path: Path) -> None:
    events = io.BytesIO()
    watch(producer(tmp_path, "sleep 0.6"), ingester(telemetry), io.BytesIO(), events=events)
    stamped_lines = events.getvalue().decode().splitlines()
    assert all(json.loads(line)["timestamp"].endswith("Z") for line in stamped_lines)
    assert [{k: v for k, v in json.loads(line).items() if k != "timestamp"}
            for line in stamped_lines] == STARTED + FINISHED
    telemetry.exporter.clear()
    ingester(telemetry).feed_lines(lines(STARTED + FINISHED).splitlines())
    assert seconds(telemetry.span(COMMAND)) < 0.1  # Codex's own lines: read time only
    telemetry.exporter.clear()
    ingester(telemetry).feed_lines(stamped_lines)
    assert seconds(telemetry.span(COMMAND)) >= 0.55


def test_stamping_keeps_every_byte_codex_wrote() -> None:
    twice = b'{"type":"item.started","item":{"id":"item_0","type":"web_search","id":"ws_1"}}\n'
    assert stamped(twice, "T") == b'{"timestamp":"T",' + twice[1:]
    assert stamped(b"{}\n", "T") == b'{"timestamp":"T"}\n'
    assert stamped(b"not json\n", "T") == b"not json\n"
    with_time = b'{"type":"turn.started","timestamp":"2026-01-01T00:00:00Z"}\n'
    assert stamped(with_time, "T") == with_time


# --- the command line, as a process ----------------------------------------------------


@pytest.fixture
def otlp() -> Iterator[tuple[str, Received]]:
    with http_receiver() as receiver:
        yield receiver


def run_command(otlp_url: str, tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "otel_events", "run", "--endpoint", otlp_url,
            "--protocol", "http/protobuf", "--usage-state", str(tmp_path / "usage.json"),
            "--agent-name", AGENT, *args]


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "OTEL_METRICS_EXPORTER": "none", "PYTHONPATH": str(REPO), **extra}


def by_name(received: Received, count: int) -> dict[str, ProtoSpan]:
    return {span.name: span for _, span in received.wait_for(count)}


def proto_attrs(span: ProtoSpan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value") or "string_value")
    return out


def test_run_tees_stamps_exports_and_exits_with_the_commands_status(
        otlp: tuple[str, Received], tmp_path: Path) -> None:
    url, received = otlp
    events = tmp_path / "events.jsonl"
    after = "plain text, not an event\n" + lines(FINISHED) + '{"partial":'
    run = subprocess.run(
        run_command(url, tmp_path, "--events", str(events), "--",
                    *producer(tmp_path, "sleep 0.6", after, status=3)),
        capture_output=True, env=run_env(), timeout=60)
    assert run.returncode == 3, run.stderr
    assert run.stdout.decode() == lines(STARTED) + after  # byte for byte, no extra output
    recorded = events.read_text().splitlines()
    assert len(recorded) == len(STARTED) + len(FINISHED) + 2
    spans = by_name(received, 2)
    assert seconds(spans[COMMAND]) >= 0.55
    turn = spans[f"invoke_agent {AGENT}"]
    assert proto_attrs(turn)["gen_ai.usage.input_tokens"] == 7


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_for_the_events_file_does_not_stop_the_run(
        otlp: tuple[str, Received], tmp_path: Path) -> None:
    # The events file is a record beside the run: a full disk must cost that record,
    # not the agent's run (it ended run with a traceback, and COMMAND with it).
    url, received = otlp
    run = subprocess.run(
        run_command(url, tmp_path, "--events", "/dev/full", "--",
                    *producer(tmp_path, "sleep 0.1", status=3)),
        capture_output=True, env=run_env(), timeout=60)
    assert run.returncode == 3, run.stderr
    assert run.stdout.decode() == lines(STARTED) + lines(FINISHED)
    errors = run.stderr.decode()
    assert "Traceback" not in errors
    assert errors.count("/dev/full") == 1, errors  # said once, not once a line
    assert "No space left on device" in errors
    spans = by_name(received, 2)  # the traces are whole
    assert proto_attrs(spans[f"invoke_agent {AGENT}"])["gen_ai.usage.input_tokens"] == 7


def test_sigint_reaches_the_command_and_abandons_the_turn(
        otlp: tuple[str, Received], tmp_path: Path) -> None:
    url, received = otlp
    # No terminal on stdin or stderr: the signal cannot have reached the command already.
    run = subprocess.Popen(run_command(url, tmp_path, "--", *producer(tmp_path, "exec sleep 30")),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=run_env())
    assert run.stdout is not None
    seen = [run.stdout.readline() for _ in STARTED]  # the command is running now
    assert b"item.started" in seen[-1]
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == 128 + signal.SIGINT  # sleep died of it
    spans = by_name(received, 2)
    turn = spans[f"invoke_agent {AGENT}"]
    assert proto_attrs(turn)["error.type"] == "abandoned"
    assert turn.status.message == "interrupted (SIGINT)"
    assert proto_attrs(spans[COMMAND])["error.type"] == "abandoned"


def test_the_bridge_shows_the_run_while_it_runs(tmp_path: Path) -> None:
    with running_bridge() as bridge, http_receiver() as (url, _):
        run = subprocess.Popen(
            run_command(url, tmp_path, "--bridge", bridge.url, "--",
                        *producer(tmp_path, "read release")),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=run_env())
        assert run.stdin is not None

        def running_item() -> dict[str, Any] | None:
            reply = bridge.client.get(f"/v1/threads/{THREAD}")
            if reply.status_code != 200:
                return None
            current: dict[str, Any] | None = reply.json().get("current_item")
            return current

        # The command is still waiting on its stdin: the bridge has it as it happens.
        assert wait_for(running_item, 15.0, "the running item on the bridge")["id"] == "item_0"
        run.stdin.write(b"go\n")
        run.stdin.close()
        assert run.wait(timeout=30) == 0
        state = bridge.client.get(f"/v1/threads/{THREAD}").json()
        (turn,) = state["turns"]
        assert turn["status"] == "completed" and turn["usage"]["input_tokens"] == 7
        (item,) = turn["items"]
        assert item["status"] == "completed" and item["description"] == "Running sleep 0.6"
        assert turn["trace_id"]

        # The same thread again (a resume), opening with a warning before its turn: the
        # warning stays with the thread, not with the turn that ended before it.
        warning = {"type": "item.completed", "item": {"id": "item_9", "type": "error",
                                                      "message": "Model metadata not found"}}
        script = tmp_path / "again.sh"
        summed = {"type": "turn.completed",  # Codex's usage: the session's sum
                  "usage": {"input_tokens": 14, "cached_input_tokens": 4, "output_tokens": 6}}
        script.write_text(f"cat <<'EOF'\n{lines([STARTED[0], warning, *STARTED[1:]])}"
                          f"{lines([FINISHED[0], summed])}EOF\n")
        again = subprocess.run(run_command(url, tmp_path, "--bridge", bridge.url, "--", "sh",
                                           str(script)), env=run_env(), capture_output=True)
        assert again.returncode == 0, again.stderr
        state = bridge.client.get(f"/v1/threads/{THREAD}").json()
        assert [t["status"] for t in state["turns"]] == ["completed", "completed"]
        assert [[i["id"] for i in t["items"]] for t in state["turns"]] == [["item_0"]] * 2
        assert [i["id"] for i in state["items"]] == ["item_9"]
        assert [t["usage"]["input_tokens"] for t in state["turns"]] == [7, 7]


def test_a_huge_command_output_still_completes_its_step_on_the_bridge(tmp_path: Path) -> None:
    # A command that printed 5 MB: Codex's item.completed carries all of it, past the
    # bridge's 4 MiB body limit; the step must still complete there (cut, and saying so).
    big = {"type": "item.completed", "item": {**FINISHED[0]["item"],
                                              "aggregated_output": "y" * (5 * 2**20)}}
    stream = tmp_path / "big.jsonl"
    stream.write_text(lines([*STARTED, big, FINISHED[1]]))
    with running_bridge() as bridge, http_receiver() as (url, _):
        run = subprocess.run(run_command(url, tmp_path, "--bridge", bridge.url, "--",
                                         "cat", str(stream)),
                             env=run_env(), capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert b"did not reach the bridge" not in run.stderr
        state = bridge.client.get(f"/v1/threads/{THREAD}").json()
        (turn,) = state["turns"]
        assert [item["status"] for item in turn["items"]] == ["completed"]
        completed = [orjson.loads(entry.json) for entry in
                     bridge.thread_state(THREAD).log.read(1, limit=100)[0]
                     if entry.type == "item.completed"]
    output = completed[0]["item"]["aggregated_output"]
    assert len(output) < 2**20 + 100 and output.endswith("chars]")
    assert run.stdout == stream.read_bytes()  # the tee is Codex's stream, whole


# --- the real CLI ------------------------------------------------------------------------


@pytest.mark.codex
def test_real_codex_in_a_live_run(codex: Codex, workdir: Path, tmp_path: Path,
                                  otlp: tuple[str, Received], fake_model: FakeModel) -> None:
    """A command that sleeps 0.6 s inside Codex: the turn lasts that long and the command's
    span as long as Codex itself timed it; then a resume of the same thread, in a second
    run, reports its turn's own usage."""
    url, received = otlp
    workdir.mkdir(parents=True)
    scenario = SCENARIOS["command_sleeps"]
    first = subprocess.run(
        run_command(url, tmp_path, "--events", str(tmp_path / "events.jsonl"), "--",
                    *codex.command(codex.exec_args(scenario.prompt))),
        cwd=workdir, capture_output=True, env=run_env(**_codex_env(codex)), timeout=120)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    spans = by_name(received, 3)
    assert seconds(spans[f"invoke_agent {AGENT}"]) >= 0.55
    # Codex writes item.started only once the command has run a while (~0.15 s here), so
    # the span can hold only what Codex's events bound: the wall time it tells the model.
    (told,) = [tool_output(r.body, "call_1") for r in fake_model.requests
               if r.scenario == "command_sleeps" and r.step == 1]
    wall = float(re.search(r"Wall time: ([0-9.]+) seconds", told).group(1))  # type: ignore[union-attr]
    assert seconds(spans[COMMAND]) >= wall - 0.1
    thread = json.loads(first.stdout.splitlines()[0])["thread_id"]
    resumed = subprocess.run(
        run_command(url, tmp_path, "--", *codex.command(codex.exec_args(
            SCENARIOS["resume"].prompt, resume=thread))),
        cwd=workdir, capture_output=True, env=run_env(**_codex_env(codex)), timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    reported = [json.loads(line) for line in resumed.stdout.splitlines()][-1]["usage"]
    turn_spans = [s for _, s in received.wait_for(5) if s.name == f"invoke_agent {AGENT}"]
    usage = [proto_attrs(s)["gen_ai.usage.input_tokens"] for s in turn_spans]
    assert reported["input_tokens"] == 200 + 1000  # Codex: the session's sum
    assert usage == [200, 1000]  # the spans: each turn's own


def _codex_env(codex: Codex) -> dict[str, str]:
    return {k: v for k, v in codex.env().items() if not k.startswith("OTEL_")}


@pytest.mark.codex
def test_real_codex_sigint_through_run(codex: Codex, workdir: Path, telemetry: Telemetry,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C on a live run of Codex: `run` passes it on, Codex stops, the turn ends as
    abandoned."""
    # As from a script: no terminal delivered the signal to Codex too (see _terminal_delivered).
    monkeypatch.setattr("otel_events.run._terminal_delivered", lambda: False)
    workdir.mkdir(parents=True)
    env = codex.env()
    command = ["env", "-C", str(workdir), *(f"{k}={env[k]}" for k in _CODEX_VARIABLES),
               *codex.command(codex.exec_args(SCENARIOS["sigint"].prompt))]
    out = _LineWaiter(b'"command_execution"')

    def interrupt() -> None:
        if out.seen.wait(30):
            os.kill(os.getpid(), signal.SIGINT)  # to `run`, which passes it on

    threading.Thread(target=interrupt, daemon=True).start()
    # Codex's own status, passed through (not 128+2: Codex handled the signal). Codex
    # exits 1 after an interrupt; once, on a machine loaded by a parallel test run, it
    # exited 0 ("failed to record rollout items: thread ... not found" on its stderr).
    # What `run` owes either way: the status passed through, the turn abandoned.
    assert watch(command, ingester(telemetry), out) in (0, 1)
    (turn,) = turns(telemetry)
    assert attrs(turn)["error.type"] == "abandoned"
    assert attrs(telemetry.span(COMMAND))["error.type"] == "abandoned"


_CODEX_VARIABLES = ("CODEX_HOME", "HOME", "NO_COLOR", "RUST_LOG")


class _LineWaiter(io.BytesIO):
    """An output that notes when a line containing ``marker`` went through."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker
        self.seen = threading.Event()

    def write(self, data: Any) -> int:
        if self.marker in bytes(data):
            self.seen.set()
        return super().write(data)


def test_run_loads_only_what_it_uses(tmp_path: Path) -> None:
    """Importing the run module costs the standard library only; a run without
    --bridge loads no HTTP client, no server stack, no rich."""
    code = ("import sys; import otel_events.run as r; before = set(sys.modules); "
            f"r.main(['true'], usage_state={str(tmp_path / 'u.json')!r}); "
            "print(' '.join(before), '|', ' '.join(sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=run_env(OTEL_TRACES_EXPORTER="none"), timeout=60, check=True)
    at_import, after_run = (set(part.split()) for part in done.stderr.rsplit("\n", 2)[-2]
                            .split("|"))

    # What pydantic itself loads here (its plugins: logfire brings rich) is not ours.
    plugins = subprocess.run(
        [sys.executable, "-c", "import sys, pydantic\nclass M(pydantic.BaseModel): x: int\n"
                               "print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=60).stdout.split()

    def heavy(modules: set[str], names: tuple[str, ...]) -> set[str]:
        return {n for n in names if any(m == n or m.startswith(n + ".") for m in modules)}

    server_side = ("httpx", "fastapi", "uvicorn", "starlette", "rich", "otel_events.bridge",
                   "otel_events.http_sink")
    assert heavy(at_import, ("pydantic", "opentelemetry.sdk", "httpx", "otel_events.ingest",
                             "otel_events.protocol")) == set()
    assert heavy(after_run, server_side) - heavy(set(plugins), server_side) == set()
