"""The scripted scenarios the real Codex CLI runs, and the driver that runs them.

Each scenario is a prompt tagged ``[scenario:NAME]``, the fake model's replies to it
(fake_model.py) and, for some, extra CLI options or an action on a line of output.
``python -m tests.codex.record`` runs them all and rewrites tests/fixtures/codex/.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fake_model import (
    Reply,
    Step,
    Usage,
    call,
    custom_call,
    message,
    reasoning,
    tool_output,
    web_search,
)
from .harness import Codex, CodexRun

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codex"
#: Recorded streams name this directory instead of the test's own.
WORKDIR_PLACEHOLDER = "/home/user/project"

OnLine = Callable[[str, "subprocess.Popen[str]"], None]


def _wait_for_spawned(body: dict[str, Any]) -> Reply:
    agent = json.loads(tool_output(body, "call_1"))["agent_id"]
    return Reply([call("wait_agent", {"targets": [agent], "timeout_ms": 30000},
                       call_id="call_2", namespace="multi_agent_v1")])


def _interrupt_on_command(line: str, process: subprocess.Popen[str]) -> None:
    """SIGINT as soon as the command is running: Ctrl-C mid-turn."""
    event = json.loads(line)
    if event["type"] == "item.started" and event["item"]["type"] == "command_execution":
        process.send_signal(signal.SIGINT)


@dataclass
class Scenario:
    name: str
    steps: dict[str, list[Step]]
    args: tuple[str, ...] = ()
    model: str | None = None
    on_line: OnLine | None = None
    #: Another scenario whose thread this one resumes (``codex exec resume``).
    resumes: str | None = None
    #: Codex's exit status.
    returncode: int = 0
    #: Whether tests/fixtures/codex/ keeps a recording of it.
    recorded: bool = True

    @property
    def prompt(self) -> str:
        return f"[scenario:{self.name}] go"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("command_ok", {"command_ok": [
        Reply([reasoning("Listing first"), call("exec_command", {"cmd": "echo hello"})]),
        Reply([message("It printed hello.")])]}),
    Scenario("command_fails", {"command_fails": [
        Reply([call("exec_command", {"cmd": "ls /nonexistent-dir"})]),
        Reply([message("The directory does not exist.")])]}),
    Scenario("http_500", {"http_500": [Reply(status=500)]}, returncode=1),
    Scenario("response_failed", {"response_failed": [
        Reply([message("Starting")], failed="the model fell over")]}, returncode=1),
    # Cut before response.completed; with one stream retry allowed Codex reconnects.
    Scenario("stream_retry", {"stream_retry": [[
        Reply([message("Hello")], cut_after=3), Reply([message("Hello again")])]]},
        args=("-c", "model_providers.fake.stream_max_retries=1")),
    Scenario("plan", {"plan": [
        Reply([call("update_plan", {"plan": [{"step": "Read the code", "status": "completed"},
                                             {"step": "Fix the bug",
                                              "status": "in_progress"}]})]),
        Reply([message("Plan made.")])]}),
    Scenario("web_search", {"web_search": [
        Reply([web_search("opentelemetry genai semantic conventions", "ws_0a1b2c"),
               message("Found them.")])]}),
    Scenario("file_change", {"file_change": [
        Reply([custom_call("apply_patch", "*** Begin Patch\n*** Add File: hello.txt\n+hi\n"
                                          "*** End Patch\n")]),
        Reply([message("Added hello.txt.")])]}),
    Scenario("mcp", {"mcp": [
        Reply([call("add", {"a": 2, "b": 3}, namespace="mcp__calc")]),
        Reply([message("2 + 3 = 5")])]}),
    Scenario("collab", {
        "collab": [
            Reply([call("spawn_agent", {"message": "[scenario:collab_child] count files"},
                        namespace="multi_agent_v1")]),
            _wait_for_spawned,
            Reply([message("The sub-agent is done.")])],
        "collab_child": [Reply([message("There are 3 files.")])]}),
    Scenario("resume_first", {"resume_first": [
        Reply([message("First answer.")], usage=Usage(100, 40, 10, 3, 5))]}),
    Scenario("resume", {"resume": [
        Reply([message("Second answer.")], usage=Usage(1000, 400, 100, 30, 50))]},
        resumes="resume_first"),
    Scenario("unknown_model", {"unknown_model": [Reply([message("Hi.")])]},
             model="no-such-model"),
    Scenario("sigint", {"sigint": [
        Reply([call("exec_command", {"cmd": "sleep 60", "yield_time_ms": 90000})]),
        Reply([message("Not reached.")])]},
        on_line=_interrupt_on_command, returncode=1),
    # For `otel-events run`: a command that takes a known time.
    Scenario("command_sleeps", {"command_sleeps": [
        Reply([call("exec_command", {"cmd": "sleep 0.6"})]), Reply([message("Slept.")])]},
        recorded=False),
]}


def script() -> dict[str, list[Step]]:
    """Every scenario's replies, for one fake model server."""
    out: dict[str, list[Step]] = {}
    for scenario in SCENARIOS.values():
        out.update(scenario.steps)
    return out


def run(codex: Codex, name: str, workdir: Path,
        runs: dict[str, CodexRun] | None = None) -> list[CodexRun]:
    """Run one scenario in ``workdir``: its runs, the first run first when it resumes
    another's thread. ``runs`` holds the scenarios run so far, and gets this one."""
    scenario = SCENARIOS[name]
    runs = runs if runs is not None else {}
    before: list[CodexRun] = []
    resume = None
    if scenario.resumes is not None:
        if scenario.resumes not in runs:
            run(codex, scenario.resumes, workdir, runs)
        before = [runs[scenario.resumes]]
        resume = before[0].thread_id
    runs[name] = codex.exec(scenario.prompt, workdir, *scenario.args, model=scenario.model,
                            on_line=scenario.on_line, resume=resume)
    return [*before, runs[name]]


def shape(lines: list[str]) -> list[tuple[str, ...]]:
    """What a stream is made of, without ids and text: event type, item type, status."""
    out = []
    for line in lines:
        event = json.loads(line)
        item = event.get("item") or {}
        out.append(tuple(str(part) for part in (event["type"], item.get("type"),
                                                 item.get("status")) if part is not None))
    return out


def normalized(lines: list[str], workdir: Path) -> list[str]:
    """Lines as recorded: the machine's directory replaced by a placeholder."""
    return [line.replace(str(workdir), WORKDIR_PLACEHOLDER) for line in lines]
