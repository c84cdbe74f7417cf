"""``make live``: the demo agent fills a bridge it starts, the page shows it, Ctrl-C ends it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.page_support import ROOT, launch_browser, new_page, text_problems

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


def test_make_live_serves_the_demo_agents_threads(browser: Any) -> None:
    demo = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "live_demo.py"), "--port", "0",
         "--runs", "3", "--think", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "OTEL_EVENTS_DEMO_OUT": str(ROOT / "out" / "live-demo")})
    ctx = None
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()  # printed once the bridge answers
        match = re.search(r"http://127\.0\.0\.1:\d+/", first)
        assert match, first
        assert "Ctrl-C" in first
        # The runs finish; it keeps serving.
        assert "Still serving" in demo.stdout.readline()
        ctx, page = new_page(browser, viewport={"width": 1280, "height": 900})
        page.goto(match.group(0))
        # No thread in the address: the page follows the newest thread.
        page.wait_for_selector('.item[data-item-id="item_8"][data-status="completed"]')
        assert "thread=data-agent-" in page.url
        page.wait_for_function("() => document.querySelectorAll('#threads li').length === 2")
        # The demo's story: the failed query, the guardrail, the answer as text.
        failed = page.text_content('.item[data-status="failed"]')
        assert "no such table: legacy_orders" in failed
        assert "Net revenue last quarter" in page.text_content('.item[data-item-id="item_8"]')
        assert page.query_selector(".turn a.trace") is not None  # spans had trace ids
        problems = text_problems(page)
        assert problems["words"] == [] and problems["overlaps"] == [], problems
        assert page.errors == []
        # The thread that answered twice shows both turns.
        page.click("#threads li:last-child a")
        page.wait_for_selector('.turn[data-turn-id="turn_2"][data-status="completed"]')
        assert page.query_selector('.turn[data-turn-id="turn_1"]') is not None
    finally:
        if ctx is not None:
            ctx.close()
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            code = demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert code == 0, demo.stderr.read() if demo.stderr else code
