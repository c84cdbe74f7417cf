"""Record the real CLI's streams as fixtures: ``python -m tests.codex.record [NAME...]``.

Writes tests/fixtures/codex/NAME.jsonl for each scenario (all by default) from a run of
the installed Codex CLI against the fake model server, so the unit tests of ingest run
without npm. ``resume.jsonl`` holds both runs: the first ``codex exec`` and its resume.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .fake_model import FakeModel
from .harness import Codex, codex_binary, write_home
from .scenarios import FIXTURES, SCENARIOS, normalized, run, script

#: Scenarios recorded only as part of another's fixture.
_PART_OF = {"resume_first"}


def main(names: list[str]) -> int:
    binary = codex_binary()
    if binary is None:
        print("Codex CLI not installed: run scripts/install-codex.sh", file=sys.stderr)
        return 1
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, FakeModel(script()) as model:
        home = Path(tmp) / "codex-home"
        write_home(binary, home, model.base_url)
        codex = Codex(binary, home, model.socket_path, model.port)
        default = [n for n, s in SCENARIOS.items() if s.recorded and n not in _PART_OF]
        for name in names or default:
            workdir = Path(tmp) / "work"
            lines = []
            for result in run(codex, name, workdir):
                lines += normalized(result.lines, workdir)
                print(f"{name}: exit {result.returncode}", file=sys.stderr)
            (FIXTURES / f"{name}.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
