"""The waterfall's geometry, read from the rendered page: bars where their times say.

Bars are on the turn's time axis: left = start, width = duration, both as fractions of
the track. These tests measure the boxes Chromium drew.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.bridge_support import Bridge, start_bridge
from tests.page_support import Turn, launch_browser, new_page, now_ms, rendered

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    bridge = start_bridge(tracing_ui_url="http://jaeger.test/trace/{trace_id}")
    yield bridge
    bridge.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx, page = new_page(browser, viewport={"width": 1280, "height": 900})
    yield page
    assert page.errors == []
    ctx.close()


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.query_selector(selector)
    assert found is not None, selector
    rect: dict[str, float] = found.bounding_box()
    return rect


def bar(page: Any, item_id: str) -> dict[str, float]:
    return box(page, f'.turn[data-turn-id="t"] [data-bar-for="{item_id}"]')


def track(page: Any) -> dict[str, float]:
    return box(page, '.turn[data-turn-id="t"] .item .track')


def test_bars_are_placed_by_start_and_sized_by_duration(page: Any, bridge: Bridge) -> None:
    base = now_ms() - 60_000
    turn = (Turn("t", base).start(0)
            .item("outer", "x", "outer step", 0, 1000)
            .item("inner", "x", "inner step", 200, 700, parent_id="outer")
            .item("beside", "x", "concurrent step", 500, 1500)
            .item("late", "x", "late step", 1600, 2000)
            .end(2000))
    bridge.post("th", turn.events)
    page.goto(f"{bridge.url}/?thread=th")
    page.wait_for_selector('.turn[data-turn-id="t"][data-status="completed"]')
    rendered(page)
    lane = track(page)
    scale = lane["width"] / 2000  # px per ms: the axis is the turn, 0 to 2,000 ms
    for item_id, start, duration in [("outer", 0, 1000), ("inner", 200, 500),
                                     ("beside", 500, 1000), ("late", 1600, 400)]:
        drawn = bar(page, item_id)
        assert abs(drawn["x"] - (lane["x"] + start * scale)) <= 1, (item_id, drawn, lane)
        assert abs(drawn["width"] - duration * scale) <= 1, (item_id, drawn, lane)
    # The child's bar lies within its parent's span.
    outer, inner = bar(page, "outer"), bar(page, "inner")
    assert outer["x"] <= inner["x"] and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
    # Concurrent items overlap on the axis (in rows of their own).
    beside = bar(page, "beside")
    assert beside["x"] < outer["x"] + outer["width"] and beside["y"] > outer["y"]
    # Rows follow the tree: the child right under its parent, indented.
    ids = page.eval_on_selector_all('.turn[data-turn-id="t"] .item',
                                    "els => els.map(e => e.dataset.itemId)")
    assert ids == ["outer", "inner", "beside", "late"]
    assert box(page, '.item[data-item-id="inner"] .mark')["x"] > \
        box(page, '.item[data-item-id="outer"] .mark')["x"]
    # The axis has a scale: ticks from 0 to the turn's end, in order, inside the track.
    ticks = page.eval_on_selector_all(
        '.turn[data-turn-id="t"] .tick',
        "els => els.map(e => [e.textContent, e.getBoundingClientRect().left,"
        " e.getBoundingClientRect().right])")
    assert ticks[0][0] == "0" and ticks[-1][0] == "2 s", ticks
    assert [t[1] for t in ticks] == sorted(t[1] for t in ticks)
    assert ticks[0][1] >= lane["x"] - 1 and ticks[-1][2] <= lane["x"] + lane["width"] + 1


def test_a_running_bar_grows_between_frames(page: Any, bridge: Bridge) -> None:
    base = now_ms() - 1000
    turn = Turn("t", base).start(0).item("done", "x", "done", 0, 400).item("run", "x", "run", 500)
    bridge.post("th", turn.events)
    page.goto(f"{bridge.url}/?thread=th")
    page.wait_for_selector('.item[data-item-id="run"][data-status="in_progress"]')
    rendered(page)
    first = bar(page, "run")["width"]
    # Nothing is posted: the bar grows with time alone.
    page.wait_for_function(
        "w => document.querySelector('[data-bar-for=\"run\"]').getBoundingClientRect().width"
        " > w + 3", arg=first)
    # It ends at now, drawn as a line on the axis, which keeps some room ahead of now;
    # the finished bar keeps its duration as a share of the axis.
    # One read of all three in one frame: the axis moves on while the test reads.
    lane, running, now_line = page.evaluate(
        """() => ['.turn[data-turn-id="t"] .item .track',
                  '.turn[data-turn-id="t"] [data-bar-for="run"]',
                  '.turn[data-turn-id="t"] .now-line'].map(s => {
            const r = document.querySelector(s).getBoundingClientRect();
            return {x: r.left, width: r.width};
        })""")
    assert abs(running["x"] + running["width"] - now_line["x"]) <= 1.5
    assert lane["x"] + lane["width"] * 0.7 < now_line["x"] < lane["x"] + lane["width"]
    done, span, width = page.evaluate(
        """() => [document.querySelector('.turn[data-turn-id="t"] [data-bar-for="done"]')
                      .getBoundingClientRect().width,
                  Number(getComputedStyle(document.querySelector('.turn .waterfall'))
                      .getPropertyValue('--span')),
                  document.querySelector('.turn[data-turn-id="t"] .item .track')
                      .getBoundingClientRect().width]""")
    assert abs(done - 400 * width / span) <= 1.5
    # The turn ends: the bar stops at the turn's end (marked as never ended).
    bridge.post("th", Turn("t", base).end(3000).events)
    page.wait_for_selector('.turn[data-turn-id="t"][data-status="completed"]')
    rendered(page)
    lane, stopped = track(page), bar(page, "run")
    assert abs(stopped["width"] - 2500 * lane["width"] / 3000) <= 1.5
    assert "no end reported" in page.text_content('.item[data-item-id="run"] .dur')


def test_failed_bars_say_why_and_the_slowest_print_their_duration(page: Any,
                                                                   bridge: Bridge) -> None:
    base = now_ms() - 60_000
    turn = (Turn("t", base).start(0)
            .item("a", "x", "quick", 0, 100)
            .item("b", "x", "slowest", 100, 1300)
            .item("c", "x", "second", 1300, 2000)
            .item("d", "x", "third", 2000, 2500)
            .item("e", "x", "broken", 2500, 2550, status="failed",
                  error={"message": "relation orders does not exist", "type": "UndefinedTable"})
            .item("f", "x", "stopped", 2550, 2600, status="cancelled")
            .item("g", "x", "left", 2600, 2700, status="failed",
                  error={"message": "never closed", "type": "abandoned"})
            .end(2700))
    bridge.post("th", turn.events)
    page.goto(f"{bridge.url}/?thread=th")
    page.wait_for_selector('.turn[data-turn-id="t"][data-status="completed"]')
    rendered(page)
    slow = page.eval_on_selector_all(
        ".item[data-slow]", "els => els.map(e => [e.dataset.itemId,"
        " e.querySelector('.bar-note').textContent, e.querySelector('.bar-note').hidden])")
    assert slow == [["b", "1.20 s", False], ["c", "700 ms", False], ["d", "500 ms", False]]
    # The printed duration sits on the bar's track, next to the bar, not over the labels.
    note, lane = box(page, '.item[data-item-id="b"] .bar-note'), track(page)
    assert lane["x"] <= note["x"] and note["x"] + note["width"] <= lane["x"] + lane["width"]
    # A failure's error: inline under the row and on the bar (hover and screen readers).
    row = page.text_content('.item[data-item-id="e"]')
    assert "relation orders does not exist" in row and "UndefinedTable" in row
    failed_bar = page.query_selector('[data-bar-for="e"]')
    assert "relation orders does not exist" in failed_bar.get_attribute("title")
    assert failed_bar.get_attribute("role") == "img"
    assert "failed" in failed_bar.get_attribute("aria-label")
    # Cancelled and abandoned are not failures: their own words, marks and looks.
    outcomes = page.eval_on_selector_all(
        ".item", "els => els.map(e => [e.dataset.itemId, e.dataset.status, e.dataset.outcome,"
        " e.querySelector('.mark').textContent,"
        " getComputedStyle(e.querySelector('.bar')).backgroundImage,"
        " getComputedStyle(e.querySelector('.bar')).backgroundColor])")
    by_id = {row[0]: row[1:] for row in outcomes}
    assert by_id["e"][:3] == ["failed", "failed", "✗"]
    assert by_id["f"][:3] == ["cancelled", "cancelled", "■"]
    assert by_id["g"][:3] == ["failed", "abandoned", "⚠"]
    looks = {tuple(by_id[key][3:]) for key in "efg"}
    assert len(looks) == 3, looks  # three different renderings
    assert "cancelled" in page.text_content('.item[data-item-id="f"] .sub')
    assert "abandoned: never closed" in page.text_content('.item[data-item-id="g"] .sub')


def test_items_added_live_go_under_their_parent(page: Any, bridge: Bridge) -> None:
    base = now_ms() - 5000
    bridge.post("th", Turn("t", base).start(0).item("p", "x", "parent", 0)
                .item("q", "x", "sibling", 10, 20).events)
    page.goto(f"{bridge.url}/?thread=th")
    page.wait_for_selector('.item[data-item-id="q"]')
    rendered(page)
    bridge.post("th", Turn("t", base).item("c1", "x", "child one", 30, 40, parent_id="p")
                .item("c2", "x", "child two", 50, 60, parent_id="p")
                .item("g", "x", "grandchild", 55, 58, parent_id="c2")
                .item("r", "x", "after", 70, 80).events)
    page.wait_for_selector('.item[data-item-id="r"]')
    ids = page.eval_on_selector_all('.turn[data-turn-id="t"] .item',
                                    "els => els.map(e => e.dataset.itemId)")
    assert ids == ["p", "c1", "c2", "g", "q", "r"]


def test_items_open_with_their_output_and_the_keyboard_moves_between_them(
        browser: Any, bridge: Bridge) -> None:
    ctx, page = new_page(browser, viewport={"width": 1280, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        output = {"rows": [{"region": "EMEA", "revenue": 55044.4}], "sql": "SELECT 1"}
        long_text = "\n".join(f"line {n}" for n in range(1, 101))
        base = now_ms() - 60_000
        turn = (Turn("t", base).start(0)
                .item("q", "sql_execution", "Querying revenue", 0, 50, name="sqlite",
                      output=output, usage={"input_tokens": 12, "output_tokens": 3})
                .item("log", "command_execution", "Reading the log", 60, 90,
                      command="cat app.log", aggregated_output=long_text, exit_code=0)
                .end(100))
        bridge.post("th", turn.events)
        page.goto(f"{bridge.url}/?thread=th")
        page.wait_for_selector('.turn[data-status="completed"]')
        label = '.item[data-item-id="q"] .label'
        page.focus(label)
        page.keyboard.press("Enter")
        details = page.wait_for_selector('.item[data-item-id="q"] .details')
        assert page.get_attribute(label, "aria-expanded") == "true"
        text = details.text_content()
        assert '"rows": [{"region": "EMEA", "revenue": 55044.4}]' in text  # pretty JSON
        for expected in ("Querying revenue", "sqlite", "50 ms", "12 input", "3 output",
                         "4bf92f3577b34da6a3ce929d0e0e4736", "0000000000000001"):
            assert expected in text, expected
        link = details.query_selector("a.trace")
        assert link.get_attribute("href") == \
            "http://jaeger.test/trace/4bf92f3577b34da6a3ce929d0e0e4736"
        details.query_selector("button.copy").click()
        page.wait_for_function("() => document.querySelector('.details .copy')"
                               ".textContent === 'Copied'")
        copied = page.evaluate("() => navigator.clipboard.readText()")
        assert copied.startswith("{") and '"sql": "SELECT 1"' in copied
        # Arrow keys move to the next row; Enter opens it; long text opens folded.
        page.focus(label)
        page.keyboard.press("ArrowDown")
        assert page.evaluate("() => document.activeElement.closest('.item').dataset.itemId") \
            == "log"
        page.keyboard.press("Enter")
        pre = page.wait_for_selector('.item[data-item-id="log"] .details .block:has(.more) pre')
        assert "line 12" in pre.text_content() and "line 13" not in pre.text_content()
        page.click('.item[data-item-id="log"] .details .more')
        assert "line 100" in pre.text_content()
        assert "cat app.log" in page.text_content('.item[data-item-id="log"] .details')
        # Escape folds the row again.
        page.focus('.item[data-item-id="log"] .label')
        page.keyboard.press("Escape")
        assert page.get_attribute('.item[data-item-id="log"] .label', "aria-expanded") == "false"
        # The waterfall is labelled for screen readers.
        assert "time axis" in page.get_attribute('.turn[data-turn-id="t"] .rows', "aria-label")
        assert page.errors == []
    finally:
        ctx.close()


def test_progress_and_tokens_live_and_one_render_per_frame(page: Any, bridge: Bridge) -> None:
    base = now_ms() - 2000
    bridge.post("th", Turn("t", base).start(0).item("run", "x", "exporting", 10).events)
    page.goto(f"{bridge.url}/?thread=th")
    page.wait_for_selector('.item[data-item-id="run"][data-status="in_progress"]')
    rendered(page)
    bridge.post("th", Turn("t", base).progress("run", 500, 0.4, "writing rows")
                .tokens(600, input_tokens=1200, cached_input_tokens=800, output_tokens=75)
                .events)
    page.wait_for_selector('.item[data-item-id="run"] progress')
    assert page.eval_on_selector('.item[data-item-id="run"] progress', "e => e.value") == 0.4
    assert "40% · writing rows" in page.text_content('.item[data-item-id="run"] .sub')
    page.wait_for_function("() => document.querySelector('.turn .usage').textContent"
                           " === '1,200 in (800 cached) · 75 out tokens'")
    # 300 events at once: drawn in at most one render per animation frame, not per event.
    page.evaluate("""() => {
        window.__frames = 0;
        const count = () => { window.__frames += 1; requestAnimationFrame(count); };
        requestAnimationFrame(count);
        performance.clearMeasures('otel-events:render');
    }""")
    burst = Turn("t", base)
    for n in range(150):
        burst.item(f"b{n}", "x", f"batch step {n}", 700 + n, 710 + n)
    bridge.post("th", burst.events)
    page.wait_for_selector('.item[data-item-id="b149"][data-status="completed"]')
    renders = page.evaluate("() => performance.getEntriesByName('otel-events:render').length")
    frames = page.evaluate("() => window.__frames")
    assert 1 <= renders <= frames + 1, (renders, frames)
    assert renders < 30, renders  # 300 events
    # Done: the progress bar goes, the row says how long it took.
    bridge.post("th", Turn("t", base).item("run", "x", "exporting", 10, 1500).events[-1:])
    page.wait_for_selector('.item[data-item-id="run"][data-status="completed"]')
    assert page.query_selector('.item[data-item-id="run"] progress') is None
    assert page.text_content('.item[data-item-id="run"] .dur') == "1.49 s"
