"""Drive the real Codex CLI (npm ``@openai/codex``, from scripts/install-codex.sh) offline.

A ``CODEX_HOME`` of our own points Codex at the fake model server (fake_model.py) through
a ``model_providers`` entry, with approvals off and the sandbox off, a model catalog of
one model (``fake-model``, cloned from the CLI's own catalog so its prompts match the
version), and the stdio MCP server of mcp_server.py. Where unprivileged user namespaces
work, Codex runs in a network namespace that has only loopback (netns.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
IN_CI = os.environ.get("CI") == "true"
MODEL = "fake-model"
#: The catalog entry fake-model is cloned from (tools: apply_patch, MCP, sub-agents).
TEMPLATE_MODEL = "gpt-5.5"
TIMEOUT = 60.0


def missing(reason: str) -> NoReturn:
    """The Codex CLI is not installed: fail under CI=true, else skip."""
    hint = "run scripts/install-codex.sh (make servers)"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing Codex is a failure; {hint})", pytrace=False)
    pytest.skip(f"{reason}; {hint}")


def codex_binary() -> Path | None:
    override = os.environ.get("OTEL_EVENTS_CODEX_BIN")
    path = Path(override) if override else (
        REPO_ROOT / ".cache" / "codex" / "node_modules" / ".bin" / "codex")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_codex() -> Path:
    binary = codex_binary()
    if binary is None:
        missing("Codex CLI not installed (.cache/codex)")
    return binary


@cache
def netns_available() -> bool:
    """Whether ``unshare -n -r`` works here (unprivileged user namespaces)."""
    try:
        return subprocess.run(["unshare", "-n", "-r", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _catalog(binary: Path, home: Path) -> dict[str, Any]:
    # A home without our config: the CLI's built-in catalog, not the one written below.
    bare = home / "bare"
    bare.mkdir(exist_ok=True)
    run = subprocess.run([str(binary), "debug", "models"], capture_output=True, text=True,
                         env={**os.environ, "CODEX_HOME": str(bare)}, timeout=TIMEOUT,
                         check=True)
    models = json.loads(run.stdout)["models"]
    template = next(m for m in models if m["slug"] == TEMPLATE_MODEL)
    # supports_search_tool would hide MCP tools behind a search tool: list them directly.
    entry = {**template, "slug": MODEL, "display_name": MODEL, "supports_search_tool": False,
             "upgrade": None, "availability_nux": None}
    return {"models": [entry]}


def write_home(binary: Path, home: Path, base_url: str) -> None:
    """A CODEX_HOME whose config sends every model call to ``base_url``."""
    (home / "user").mkdir(parents=True, exist_ok=True)
    catalog = home / "catalog.json"
    catalog.write_text(json.dumps(_catalog(binary, home)))
    mcp = [sys.executable, str(HERE / "mcp_server.py")]
    (home / "config.toml").write_text(f"""\
model = "{MODEL}"
model_provider = "fake"
model_catalog_json = {json.dumps(str(catalog))}
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[analytics]
enabled = false

[tools.update_plan]
enabled = true

[model_providers.fake]
name = "fake"
base_url = "{base_url}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[mcp_servers.calc]
command = {json.dumps(mcp[0])}
args = [{json.dumps(mcp[1])}]
""")


@dataclass
class CodexRun:
    """One finished ``codex exec``: its stdout lines, status and stderr."""

    args: list[str]
    lines: list[str] = field(default_factory=list)
    returncode: int = 0
    stderr: str = ""

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.strip()]

    @property
    def thread_id(self) -> str:
        return next(str(e["thread_id"]) for e in self.events() if e["type"] == "thread.started")


class Codex:
    """``codex exec`` with our CODEX_HOME, isolated when the machine allows it."""

    def __init__(self, binary: Path, home: Path, socket_path: str, port: int) -> None:
        self.binary, self.home = binary, home
        self.socket_path, self.port = socket_path, port

    def command(self, args: Sequence[str]) -> list[str]:
        """The argv that runs ``codex ARGS`` (inside a loopback-only namespace if possible)."""
        codex = [str(self.binary), *args]
        if not netns_available():
            return codex
        return ["unshare", "-n", "-r", sys.executable, str(HERE / "netns.py"), "--lo-up",
                self.socket_path, str(self.port), "--", *codex]

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("OPENAI_", "CODEX_", "OTEL_"))}
        # A HOME of its own too: Codex's shells source ~/.bashrc, and a user's (pyenv
        # rehash waiting on its lock, say) must not stall or change the scenarios.
        return {**env, "CODEX_HOME": str(self.home), "HOME": str(self.home / "user"),
                "NO_COLOR": "1", "RUST_LOG": "error"}

    @staticmethod
    def exec_args(prompt: str, *extra: str, model: str | None = None,
                  resume: str | None = None) -> list[str]:
        """The arguments of ``codex exec --json [resume ID] PROMPT``."""
        args = ["exec", "--json", "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox", *extra]
        if model is not None:
            args += ["-m", model]
        if resume is not None:
            args += ["resume", resume]
        return [*args, prompt]

    def exec(self, prompt: str, cwd: Path, *extra: str, model: str | None = None,
             on_line: Callable[[str, subprocess.Popen[str]], None] | None = None,
             resume: str | None = None) -> CodexRun:
        """Run ``codex exec``; ``on_line`` sees each line of its stdout as it comes."""
        return self.run(self.exec_args(prompt, *extra, model=model, resume=resume), cwd,
                        on_line)

    def run(self, args: Sequence[str], cwd: Path,
            on_line: Callable[[str, subprocess.Popen[str]], None] | None = None) -> CodexRun:
        cwd.mkdir(parents=True, exist_ok=True)
        result = CodexRun(list(args))
        process = subprocess.Popen(self.command(args), cwd=cwd, env=self.env(), text=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()
                                                               if process.stderr else ""))
        reader.start()
        watchdog = threading.Timer(TIMEOUT, lambda: process.send_signal(signal.SIGKILL))
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                result.lines.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line, process)
            result.returncode = process.wait()
        finally:
            watchdog.cancel()
            reader.join()
        result.stderr = "".join(stderr)
        return result
