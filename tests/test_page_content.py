"""Event content is text: markup in descriptions, outputs, errors and messages shows as
written and never runs; right-to-left text and emoji render as they were sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.bridge_support import start_bridge
from tests.page_support import (
    Turn,
    launch_browser,
    new_page,
    now_ms,
    rendered,
    screenshot,
    text_problems,
)

pytestmark = pytest.mark.browser

SCRIPT = "<script>window.__pwned = 'script'</script>"
IMG = "<img src=x onerror=\"window.__pwned='img'\">"
SVG = "<svg onload=\"window.__pwned='svg'\"></svg>"
ARABIC = "تم استعلام الإيرادات حسب المنطقة"
HEBREW = "שאילתה הושלמה"
EMOJI = "📈 revenue up 4% 🚀 👩🏽‍💻"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


def test_markup_in_any_field_is_shown_as_text_and_never_runs(browser: Any) -> None:
    bridge = start_bridge(tracing_ui_url="http://jaeger.test/trace/{trace_id}")
    ctx, page = new_page(browser, viewport={"width": 1280, "height": 900})
    try:
        base = now_ms() - 60_000
        turn = (Turn("t", base).start(0)
                .item("s", "x", SCRIPT, 0, 100, output={"html": IMG, SVG: SCRIPT})
                .item("i", IMG, IMG, 100, 200, status="failed",
                      error={"message": SVG, "type": "Injected"})
                .item("m", "agent_message", "Answering", 200, 210, text=f"{SCRIPT} {IMG}")
                .item("rtl", "agent_message", ARABIC, 210, 220, text=f"{ARABIC}\n{HEBREW}")
                .item("emoji", "x", EMOJI, 220, 300, output=EMOJI)
                .end(300, error={"message": IMG, "type": "RuntimeError"}))
        bridge.post("th", [*turn.events, {"type": "error", "message": SCRIPT}])
        page.goto(f"{bridge.url}/?thread=th")
        page.wait_for_selector('.turn[data-turn-id="t"][data-status="failed"]')
        for item_id in ("s", "i", "emoji"):
            page.click(f'.item[data-item-id="{item_id}"] .label')
        page.wait_for_selector('.item[data-item-id="emoji"] .details pre')
        rendered(page)
        screenshot(page, "content-as-text")
        # Nothing ran and no element came from content.
        assert page.evaluate("() => window.__pwned") is None
        assert page.eval_on_selector_all("#thread img, #thread svg, #thread script",
                                         "els => els.length") == 0
        # Each was shown exactly as written, in the row, the details, errors and messages.
        assert page.text_content('.item[data-item-id="s"] .desc') == SCRIPT
        details = page.text_content('.item[data-item-id="s"] .details')
        assert IMG.replace('"', '\\"') in details and SCRIPT in details
        assert page.text_content('.item[data-item-id="i"] .desc') == IMG
        assert SVG in page.text_content('.item[data-item-id="i"] .sub')
        assert page.text_content('.item[data-item-id="m"] .message') == f"{SCRIPT} {IMG}"
        assert IMG in page.text_content('.turn[data-turn-id="t"] .turn-error')
        assert SCRIPT in page.text_content(".notice")
        # Right-to-left text and emoji arrive whole, each paragraph in its own direction.
        assert page.text_content('.item[data-item-id="rtl"] .message') == f"{ARABIC}\n{HEBREW}"
        assert page.text_content('.item[data-item-id="rtl"] .desc') == ARABIC
        assert page.eval_on_selector('.item[data-item-id="rtl"] .message',
                                     "e => getComputedStyle(e).unicodeBidi") == "plaintext"
        assert page.text_content('.item[data-item-id="emoji"] .desc') == EMOJI
        assert EMOJI in page.text_content('.item[data-item-id="emoji"] .details pre')
        # The RTL message is drawn right-aligned (its own direction), the LTR one left.
        rtl_line = page.evaluate("""() => {
            const e = document.querySelector('.item[data-item-id="rtl"] .message');
            const r = document.createRange(); r.selectNodeContents(e);
            const text = r.getClientRects()[0], box = e.getBoundingClientRect();
            return [text.right, box.right, text.left, box.left];
        }""")
        assert rtl_line[1] - rtl_line[0] < rtl_line[2] - rtl_line[3]
        problems = text_problems(page)
        assert problems["words"] == [] and problems["overlaps"] == [], problems
        assert page.errors == []
    finally:
        ctx.close()
        bridge.stop()
