"""Fixtures for the end-to-end tests against real servers (see servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import Jaeger, require_jaeger


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def jaeger_bin() -> Path:
    return require_jaeger()


@pytest.fixture(scope="session")
def jaeger(jaeger_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """One Jaeger (deploy/jaeger/config.yaml) shared by the tests that only read traces
    back; each test uses its own service name."""
    server = Jaeger(jaeger_bin, tmp_path_factory.mktemp("jaeger"))
    server.start()
    yield server
    server.stop()
