"""What a person sees: the page at 1,280 and 390 pixels, light and dark, read back.

Each screenshot is kept under ``out/page/``. The checks read the rendered page: no
visible ``null``, ``undefined``, ``NaN`` or ``[object Object]``, no text drawn over other
text, nothing wider than the window. ``OTEL_EVENTS_PAGE_DOCS=1`` also writes the
README's screenshot (docs/page.png) from the light 1,280-pixel render.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bridge_support import Bridge, start_bridge
from tests.page_support import (
    ROOT,
    demo_thread,
    launch_browser,
    new_page,
    now_ms,
    rendered,
    screenshot,
    text_problems,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture(scope="module")
def bridge() -> Iterator[Bridge]:
    bridge = start_bridge(tracing_ui_url="http://127.0.0.1:16686/trace/{trace_id}")
    # The followed thread started three seconds ago and is still running; a few other
    # threads, done, failed or cancelled, fill the list.
    bridge.post("data-agent-7f3a", demo_thread(now_ms() - 3000))
    base = now_ms() - 60_000
    for n, ending in enumerate(["completed", "failed", "cancelled", "completed"]):
        turn = [{"type": "turn.started", "turn_id": "t", "timestamp": _at(base + n * 1000)}]
        end: dict[str, Any] = {"turn_id": "t", "timestamp": _at(base + n * 1000 + 800),
                               "usage": {"input_tokens": 900 + n, "output_tokens": 40}}
        if ending == "completed":
            turn.append({"type": "turn.completed", **end})
        else:
            turn.append({"type": "turn.failed", **end,
                         "error": {"message": "stopped", "type": "cancelled"
                                   if ending == "cancelled" else "RuntimeError"}})
        bridge.post(f"nightly-report-{n}", turn)
    yield bridge
    bridge.stop()


def _at(ms: float) -> str:
    from tests.page_support import stamp

    return stamp(ms)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_the_page_reads_cleanly(browser: Any, bridge: Bridge, width: int, scheme: str) -> None:
    ctx, page = new_page(browser, viewport={"width": width, "height": 900},
                         color_scheme=scheme)
    try:
        page.goto(f"{bridge.url}/?thread=data-agent-7f3a")
        page.wait_for_selector('.item[data-item-id="export"]')
        page.wait_for_selector('.threads li[data-thread-id="nightly-report-3"]', state="attached")
        # Open the query's details: its output, pretty JSON, is part of what is read.
        page.click('.item[data-item-id="query"] .label')
        page.wait_for_selector('.item[data-item-id="query"] .details pre')
        rendered(page)
        path = screenshot(page, f"page-{width}-{scheme}")
        problems = text_problems(page)
        assert problems["texts"] > 40, problems  # the check did read the page
        assert problems["words"] == [], problems["words"]
        assert problems["overlaps"] == [], problems["overlaps"]
        # Nothing runs off the side: no horizontal scrolling at either width.
        scroll = page.evaluate("() => document.scrollingElement.scrollWidth")
        assert scroll <= width, f"the page is {scroll}px wide in a {width}px window"
        # The colour scheme is the one asked for (the background follows it).
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        luminance = sum(int(c) for c in background[4:-1].split(",")[:3])
        assert (luminance > 600) == (scheme == "light"), background
        assert page.errors == []
        if width == 1280 and scheme == "light" and os.environ.get("OTEL_EVENTS_PAGE_DOCS"):
            shutil.copyfile(path, ROOT / "docs" / "page.png")
    finally:
        ctx.close()


def test_the_thread_list_opens_on_a_phone(browser: Any, bridge: Bridge) -> None:
    ctx, page = new_page(browser, viewport={"width": 390, "height": 800})
    try:
        page.goto(f"{bridge.url}/?thread=data-agent-7f3a")
        page.wait_for_selector('.item[data-item-id="export"]')
        assert not page.is_visible("#threads")  # folded away: the thread has the room
        page.click("#nav-toggle")
        page.wait_for_selector('#threads li[data-thread-id="nightly-report-1"]')
        assert page.get_attribute("#nav-toggle", "aria-expanded") == "true"
        screenshot(page, "page-390-threads")
        problems = text_problems(page)
        assert problems["words"] == [] and problems["overlaps"] == [], problems
        page.click('#threads a[data-thread-id="nightly-report-1"]')
        page.wait_for_selector('.turn[data-turn-id="t"][data-outcome="failed"]')
        assert not page.is_visible("#threads")
        assert page.url.endswith("?thread=nightly-report-1")
    finally:
        ctx.close()
