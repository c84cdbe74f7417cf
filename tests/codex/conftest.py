"""Session fixtures for the real-CLI tests: one fake model server and one CODEX_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_model import FakeModel
from .harness import Codex, require_codex, write_home
from .scenarios import script


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "codex: runs the real Codex CLI (scripts/install-codex.sh)")


@pytest.fixture(scope="session")
def fake_model() -> Iterator[FakeModel]:
    with FakeModel(script()) as model:
        yield model


@pytest.fixture(scope="session")
def codex(fake_model: FakeModel, tmp_path_factory: pytest.TempPathFactory) -> Codex:
    """The installed CLI with a CODEX_HOME of the session's own (no global config used)."""
    binary = require_codex()
    home = tmp_path_factory.mktemp("codex-home")
    write_home(binary, home, fake_model.base_url)
    return Codex(binary, home, fake_model.socket_path, fake_model.port)


@pytest.fixture(scope="session")
def threads() -> dict[str, str]:
    """Thread ids of the scenarios run so far (a resume needs its first run's)."""
    return {}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "project"
