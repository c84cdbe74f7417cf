"""The thread list, the address bar and the connection state, in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.bridge_support import Bridge, running_bridge, start_bridge, turn_events
from tests.page_support import (
    Turn,
    demo_thread,
    launch_browser,
    new_page,
    now_ms,
    post_many,
    rendered,
    stamp,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx, page = new_page(browser, viewport={"width": 1280, "height": 900})
    yield page
    ctx.close()


def finished(thread: int, base: float, outcome: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"type": "turn.started", "turn_id": "t",
                                     "timestamp": stamp(base)}]
    end = {"turn_id": "t", "timestamp": stamp(base + 500)}
    if outcome == "running":
        events.append({"type": "item.started", "turn_id": "t", "timestamp": stamp(base + 1),
                       "item": {"id": "i", "type": "x", "description": f"working on {thread}"}})
    elif outcome == "completed":
        events.append({"type": "turn.completed", **end,
                       "usage": {"input_tokens": 10, "output_tokens": 2}})
    else:
        events.append({"type": "turn.failed", **end,
                       "error": {"message": "x", "type": None if outcome == "failed"
                                 else outcome}})
    return events


def listed(page: Any) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#threads li", "els => els.filter(e => !e.hidden).map(e => [e.dataset.threadId,"
        " e.dataset.outcome])")
    return rows


def test_threads_newest_first_with_status_filter_and_counts(page: Any) -> None:
    with running_bridge() as bridge:
        base = now_ms() - 600_000
        outcomes = ["completed", "failed", "cancelled", "abandoned", "running", "completed"]
        for n, outcome in enumerate(outcomes):
            bridge.post(f"job-{n}", finished(n, base + n * 1000, outcome))
        page.goto(f"{bridge.url}/")
        # No thread in the address: the newest is followed, and put in the address.
        page.wait_for_selector('.turn[data-turn-id="t"]')
        assert page.url.endswith("?thread=job-5")
        assert listed(page) == [[f"job-{n}", outcomes[n]] for n in range(5, -1, -1)]
        assert page.text_content("#counts") == "6 threads · 1 running · 1 failed"
        assert page.get_attribute('#threads a[data-thread-id="job-5"]', "aria-current") == "page"
        running = page.text_content('#threads li[data-thread-id="job-4"]')
        assert "running" in running and "now: working on 4" in running
        for outcome, mark in [("cancelled", "■"), ("abandoned", "⚠"), ("failed", "✗")]:
            row = page.query_selector(f'#threads li[data-outcome="{outcome}"] .badge')
            assert row.text_content() == f"{mark} {outcome}"
        # The filter: by id, by status word, by the status list; counts follow.
        page.fill("#filter", "job-1")
        page.wait_for_function("() => document.querySelector('#counts').textContent"
                               ".startsWith('1 shown of')")
        assert listed(page) == [["job-1", "failed"]]
        page.fill("#filter", "cancelled")
        page.wait_for_function("() => document.querySelector("
                               "'#threads li[data-thread-id=\"job-1\"]').hidden")
        assert listed(page) == [["job-2", "cancelled"]]
        page.fill("#filter", "")
        page.select_option("#status-filter", "completed")
        page.wait_for_function("() => document.querySelector('#counts').textContent"
                               ".startsWith('2 shown of')")
        assert [row[0] for row in listed(page)] == ["job-5", "job-0"]
        # "/" jumps to the filter box.
        page.focus("body")
        page.keyboard.press("/")
        assert page.evaluate("() => document.activeElement.id") == "filter"


def test_the_selected_thread_is_in_the_address_and_history(page: Any) -> None:
    with running_bridge() as bridge:
        bridge.post("first", turn_events("a", 1))
        bridge.post("second", turn_events("b", 2))
        page.goto(f"{bridge.url}/?thread=first")
        page.wait_for_selector('.turn[data-turn-id="a"]')
        page.wait_for_selector('#threads a[data-thread-id="second"]')
        page.click('#threads a[data-thread-id="second"]')
        page.wait_for_selector('.turn[data-turn-id="b"]')
        assert page.url == f"{bridge.url}/?thread=second"
        assert page.title().startswith("second")
        page.go_back()
        page.wait_for_selector('.turn[data-turn-id="a"]')
        assert page.url == f"{bridge.url}/?thread=first"
        assert page.query_selector('.turn[data-turn-id="b"]') is None
        # The link works on its own: a new tab on the address shows that thread.
        other = page.context.new_page()
        other.goto(f"{bridge.url}/?thread=second")
        other.wait_for_selector('.turn[data-turn-id="b"][data-status="completed"]')
        other.close()


def test_the_token_is_taken_from_the_address_once_and_removed(page: Any) -> None:
    with running_bridge(token="s3cret-token") as bridge:
        bridge.post("th", turn_events("t1", 1), Authorization="Bearer s3cret-token")
        page.goto(f"{bridge.url}/?token=s3cret-token&thread=th")
        page.wait_for_selector('.item[data-item-id="t1-item-1"][data-status="completed"]')
        assert "token" not in page.url and page.url.endswith("?thread=th")
        assert page.evaluate("() => sessionStorage.getItem('otel-events-token')") == \
            "s3cret-token"
        page.reload()  # the address no longer has it: the tab remembers it
        page.wait_for_selector('.item[data-item-id="t1-item-1"][data-status="completed"]')
        page.wait_for_selector('#threads li[data-thread-id="th"]')
        # A new tab without it is asked for it, and then works.
        other = page.context.new_page()
        other.goto(f"{bridge.url}/?thread=th")
        other.wait_for_selector("#token-form:not([hidden])")
        assert other.get_attribute("#connection", "data-state") == "unauthorized"
        other.fill("#token", "s3cret-token")
        other.click("#token-form button")
        other.wait_for_selector('.item[data-item-id="t1-item-1"][data-status="completed"]')
        other.close()


def test_connection_states_and_what_a_reset_means(page: Any) -> None:
    bridge: Bridge = start_bridge(retention_count=4)
    try:
        page.goto(f"{bridge.url}/?thread=th")
        # Connected to a thread that has no event yet: live, and it says it waits.
        page.wait_for_selector("#connection[data-state=live]")
        page.wait_for_selector(".hint:not([hidden])")
        assert "waiting for its first" in page.text_content(".hint")
        base = now_ms() - 10_000
        bridge.post("th", Turn("t", base).start(0)
                    .item("i", "x", "step", 0, 10, output="0123456789" * 500).events)
        page.wait_for_selector('.item[data-item-id="i"]')
        assert page.is_hidden(".hint")
        # An agent's own "error" event is content: shown, and the stream stays live.
        bridge.post("th", [{"type": "error", "message": "rate limited, retrying"}])
        page.wait_for_selector(".notice:not([hidden])")
        assert "rate limited, retrying" in page.text_content(".notice")
        rendered(page)
        assert page.get_attribute("#connection", "data-state") == "live"
        assert page.is_hidden("#reset-banner")
        # A page joining after the start was let go gets a reset, and says what it means.
        bridge.post("th", Turn("t", base).item("j", "x", "later", 20, 30).end(40).events)
        other = page.context.new_page()
        other.goto(f"{bridge.url}/?thread=th")
        other.wait_for_selector("body[data-last-reset=history_expired]")
        banner = other.text_content("#reset-banner")
        assert "the start of this thread is older than the bridge keeps" in banner
        assert "shows the thread as the bridge holds it" in banner
        assert other.text_content("#connection") == "live · reset"
        other.wait_for_selector('.turn[data-turn-id="t"][data-status="completed"]')
        # The state came from the reset's snapshot: outputs as the bridge keeps them.
        other.click('.item[data-item-id="i"] .label')
        more = '.item[data-item-id="i"] .details .more'
        assert other.text_content(more) == "Show all 4,096 characters"  # folded
        other.click(more)
        block = other.text_content('.item[data-item-id="i"] .details .block')
        assert "Cut by the bridge to its first 4,096 characters" in block
        assert ("0123456789" * 409) in block and ("0123456789" * 410) not in block
        other.click("#reset-dismiss")
        assert other.is_hidden("#reset-banner")
        other.close()
    finally:
        bridge.stop()


def test_a_thousand_threads_list_and_filter(page: Any) -> None:
    with running_bridge() as bridge:
        base = now_ms() - 3_600_000
        post_many(bridge.url, {
            f"run-{n:04d}": finished(n, base + n * 1000, "failed" if n % 100 == 7
                                     else "completed") for n in range(1000)})
        page.goto(f"{bridge.url}/?thread=run-0500")
        page.wait_for_selector('.turn[data-turn-id="t"]')
        page.wait_for_function("() => document.querySelectorAll('#threads li').length === 1000")
        assert page.text_content("#counts") == "1,000 threads · 10 failed"
        first = page.eval_on_selector_all("#threads li", "els => els.slice(0, 3).map("
                                          "e => e.dataset.threadId)")
        assert first == ["run-0999", "run-0998", "run-0997"]
        page.fill("#filter", "failed")
        page.wait_for_function("() => document.querySelector('#counts').textContent"
                               ".startsWith('10 shown of')")
        assert len(listed(page)) == 10


ROWS_JS = """els => els.map(e => [e.dataset.itemId, e.dataset.status, e.dataset.outcome,
    e.querySelector('.desc').textContent, e.querySelector('.dur').textContent,
    e.querySelector('.kind').textContent, e.querySelector('.sub')?.textContent || '',
    e.hasAttribute('data-slow'),
    e.querySelector('.bar').style.getPropertyValue('--s'),
    e.querySelector('.bar').style.getPropertyValue('--d')])"""
HEAD_JS = """els => els.map(e => [e.dataset.turnId, e.dataset.outcome,
    e.querySelector('.turn-head').textContent,
    e.querySelector('.waterfall').style.getPropertyValue('--span')])"""


def test_a_reset_draws_the_thread_as_the_live_stream_did(browser: Any) -> None:
    """The page folds events as the bridge's snapshot does: a thread followed live and
    the same thread given whole by a reset look the same, row for row."""
    base = now_ms() - 60_000
    events = demo_thread(base)
    events += Turn("turn_2", base).item("export", "command_execution", "Exporting the report",
                                        2630, 3100).end(3200).events[-2:]
    with running_bridge(retention_count=8) as bridge:
        ctx, live = new_page(browser, viewport={"width": 1280, "height": 900})
        try:
            live.goto(f"{bridge.url}/?thread=th")
            live.wait_for_selector("#connection[data-state=live]")
            bridge.post("th", events)  # followed as it happens
            live.wait_for_selector('.turn[data-turn-id="turn_2"][data-status="completed"]')
            rendered(live)
            late = ctx.new_page()
            late.goto(f"{bridge.url}/?thread=th")  # the start is gone: a reset
            late.wait_for_selector("body[data-last-reset=history_expired]")
            late.wait_for_selector('.turn[data-turn-id="turn_2"][data-status="completed"]')
            rendered(late)
            assert late.eval_on_selector_all(".item", ROWS_JS) == \
                live.eval_on_selector_all(".item", ROWS_JS)
            assert late.eval_on_selector_all(".turn", HEAD_JS) == \
                live.eval_on_selector_all(".turn", HEAD_JS)
            assert late.text_content(".thread-meta") == live.text_content(".thread-meta")
            for page in (live, late):
                page.click('.item[data-item-id="query"] .label')
            details = '.item[data-item-id="query"] .details'
            assert late.text_content(details) == live.text_content(details)
        finally:
            ctx.close()
