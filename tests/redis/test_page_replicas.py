"""The live page behind a load balancer whose replica dies: every event shown once.

Debian's Chromium through Playwright, as tests/test_page.py; the replicas are real
processes on a real Redis, and a TCP relay plays the load balancer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bridge_support import NDJSON, ndjson, turn_events
from tests.redis.replicas import Relay, Replica
from tests.redis.server import RedisServer
from tests.test_page import browser, item, page

__all__ = ["browser", "page"]

pytestmark = pytest.mark.browser


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def factory(url: str) -> Replica:
        replica = Replica(url, log=tmp_path / f"replica-{len(started)}.log")
        started.append(replica)
        return replica.start()

    yield factory
    for replica in started:
        replica.stop()


def post(replica: Replica, thread: str, events: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{replica.url}/v1/threads/{thread}/events",
                          content=ndjson(events), headers=NDJSON, timeout=10.0)
    assert response.status_code == 200, response.text


def test_page_through_a_replica_killed_and_replaced_shows_every_event_once(
        page: Any, redis_server: RedisServer, start: Callable[[str], Replica]) -> None:
    serving, producer = start(redis_server.url), start(redis_server.url)
    relay = Relay(serving.port)
    try:
        events = turn_events("t1", 6)
        post(producer, "page-th", events[:6])  # turn.started, items 1-2, item 3 started
        page.goto(f"{relay.url}/?thread=page-th")
        item(page, "t1-item-3", "in_progress")
        page.wait_for_selector("#connection[data-state=live]")

        replacement = start(redis_server.url)
        serving.kill()  # the replica the page reads from dies...
        relay.switch(replacement.port)  # ...and the load balancer sends it elsewhere
        # The page notices at once and waits its retry delay (2 s) before reconnecting.
        page.wait_for_selector("#connection[data-state=reconnecting]")
        post(producer, "page-th", events[6:9])  # while the page is away
        item(page, "t1-item-4", "completed")
        page.wait_for_selector("#connection[data-state=live]")
        post(producer, "page-th", events[9:])
        page.wait_for_selector(".turn[data-turn-id=t1][data-status=completed]")
        ids = page.eval_on_selector_all(".item", "els => els.map(e => e.dataset.itemId)")
        assert ids == [f"t1-item-{n}" for n in range(1, 7)]
        # Resumed on the new replica (same epoch): no reset, every event applied once.
        assert page.get_attribute("body", "data-resets") is None
        assert page.get_attribute("body", "data-applied") == str(len(events))
    finally:
        relay.close()
