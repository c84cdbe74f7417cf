"""The live page in Debian's Chromium (never a downloaded browser): live updates,
reconnection, resume and reset.

Without /usr/bin/chromium the tests skip, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bridge_support import Bridge, bound_socket, start_bridge, turn_events, wait_for
from tests.page_support import launch_browser

pytestmark = pytest.mark.browser

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def item(page: Any, item_id: str, status: str) -> Any:
    return page.wait_for_selector(f'.item[data-item-id="{item_id}"][data-status="{status}"]')


def test_items_appear_while_the_turn_runs_and_failures_show(page: Any) -> None:
    bridge = start_bridge(retry_ms=300, tracing_ui_url="http://jaeger.test/trace/{trace_id}")
    try:
        turn = {"type": "turn.started", "turn_id": "t1", "trace_id": TRACE_ID,
                "span_id": "00f067aa0ba902b7", "timestamp": "2026-11-25T10:00:00.000Z"}
        step = {"id": "i1", "type": "sql_execution", "description": "count the orders"}
        bridge.post("th", [turn, {"type": "item.started", "turn_id": "t1",
                                  "item": {**step, "status": "in_progress"}}])
        page.goto(f"{bridge.url}/?thread=th")
        running = item(page, "i1", "in_progress")
        assert "count the orders" in running.text_content()
        assert page.get_attribute(".turn[data-turn-id=t1]", "data-status") == "running"
        link = page.wait_for_selector(".turn[data-turn-id=t1] a.trace")
        assert link.get_attribute("href") == f"http://jaeger.test/trace/{TRACE_ID}"

        # Live: the page was already open when these happen.
        bridge.post("th", [
            {"type": "item.completed", "turn_id": "t1",
             "item": {**step, "status": "failed", "duration_ms": 1234.0,
                      "error": {"message": "relation orders does not exist"}}},
            {"type": "item.started", "turn_id": "t1",
             "item": {"id": "i2", "type": "agent_message", "description": "explain"}},
        ])
        failed = item(page, "i1", "failed")
        assert "✗ failed" in failed.text_content()  # mark and word, not colour alone
        assert "relation orders does not exist" in failed.text_content()
        assert "1.23 s" in failed.text_content()
        item(page, "i2", "in_progress")
        bridge.post("th", [{"type": "turn.failed", "turn_id": "t1",
                            "error": {"message": "the agent gave up"},
                            "usage": {"input_tokens": 120, "output_tokens": 30}}])
        page.wait_for_selector(".turn[data-turn-id=t1][data-status=failed]")
        text = page.text_content(".turn[data-turn-id=t1]")
        assert "the agent gave up" in text and "120 in" in text
    finally:
        bridge.stop()


class _Proxy:
    """A TCP relay whose connections can all be cut at once (a network drop)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, sock=self.sock)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers.difference_update((writer, up_writer))

    def cut(self) -> None:
        async def cut() -> None:
            for writer in list(self.writers):
                sock = writer.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                writer.close()
        asyncio.run_coroutine_threadsafe(cut(), self.loop).result(5)

    def close(self) -> None:
        async def close() -> None:
            self.server.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def readers(bridge: Bridge, thread_id: str) -> int:
    return bridge.broker.readers(thread_id)


def test_page_resumes_after_a_dropped_connection_without_duplicates(page: Any) -> None:
    bridge = start_bridge(retry_ms=300)
    proxy = _Proxy(int(bridge.url.rsplit(":", 1)[1]))
    try:
        events = turn_events("t1", 6)
        bridge.post("th", events[:6])  # turn.started, items 1 and 2, item 3 started
        page.goto(f"http://127.0.0.1:{proxy.port}/?thread=th")
        item(page, "t1-item-3", "in_progress")
        wait_for(lambda: readers(bridge, "th") == 1, what="the page's stream")
        proxy.cut()
        wait_for(lambda: readers(bridge, "th") == 0, what="the cut to reach the bridge")
        bridge.post("th", events[6:9])  # what happens while the page is away
        wait_for(lambda: readers(bridge, "th") == 1, what="the page to reconnect")
        item(page, "t1-item-4", "completed")
        bridge.post("th", events[9:])
        page.wait_for_selector(".turn[data-turn-id=t1][data-status=completed]")
        ids = page.eval_on_selector_all(".item", "els => els.map(e => e.dataset.itemId)")
        assert ids == [f"t1-item-{n}" for n in range(1, 7)]
        assert page.get_attribute("body", "data-resets") is None  # replayed, no reset
        # Every event applied exactly once: nothing replayed twice, nothing skipped.
        assert page.get_attribute("body", "data-applied") == str(len(events))
    finally:
        proxy.close()
        bridge.stop()


def test_page_resumes_after_the_server_restarts(page: Any) -> None:
    bridge = start_bridge(retry_ms=300)
    port = int(bridge.url.rsplit(":", 1)[1])
    try:
        bridge.post("th", turn_events("t1", 2))
        page.goto(f"{bridge.url}/?thread=th")
        page.wait_for_selector(".turn[data-turn-id=t1][data-status=completed]")
    finally:
        bridge.stop()
    page.wait_for_selector("#connection[data-state=reconnecting]")
    bridge = start_bridge(port=port, retry_ms=300)  # a new process would start empty too
    try:
        # The thread is not there yet: the page waits for it without creating it.
        wait_for(lambda: readers(bridge, "th") == 1, what="the page to reconnect")
        bridge.post("th", turn_events("t2", 1)[:2])
        # Its position is from the old process's epoch: a reset, not a silent resume
        # (the new numbering has a seq 2 too).
        page.wait_for_selector("body[data-last-reset=epoch_changed]")
        item(page, "t2-item-1", "in_progress")
        assert page.query_selector(".turn[data-turn-id=t1]") is None  # state follows bridge
        page.wait_for_selector("#connection[data-state=live]")
    finally:
        bridge.stop()
