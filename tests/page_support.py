"""The live page in Debian's Chromium, through Playwright: the browser, what a person sees.

Without Chromium (or Playwright's package) the page tests skip, except under CI=true,
where that is a failure. Screenshots go to ``out/page/`` (git-ignored), kept as the
tests' artifacts.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("OTEL_EVENTS_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 10_000
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "out" / "page"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def launch_browser() -> Iterator[Any]:
    """Chromium, for a module-scoped fixture: skip (or fail under CI=true) if missing."""

    def missing(reason: str) -> None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: a missing browser is a failure)", pytrace=False)
        pytest.skip(reason)

    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        missing(f"Debian's chromium is not installed ({CHROMIUM}); "
                "run scripts/install-servers.sh")
    try:
        import playwright.sync_api as sync_api
    except ImportError:
        missing("Playwright's Python package is not installed (pip install -e '.[dev]')")
    executable = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or "")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable), args=ARGS)
        yield chromium
        chromium.close()


def new_page(browser: Any, **context: Any) -> tuple[Any, Any]:
    """A page in a fresh context; page errors are collected on ``page.errors``."""
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    page.errors = errors
    return ctx, page


def rendered(page: Any) -> None:
    """Wait until the page has drawn what it received, then one more frame."""
    page.wait_for_function(
        "() => performance.getEntriesByName('otel-events:render').length > 0")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def post_many(url: str, threads: dict[str, list[dict[str, Any]]],
              concurrency: int = 32) -> None:
    """Post many threads' events at once: one request each, ``concurrency`` in flight
    (one at a time, each small request waits out a delayed ACK of about 40 ms).
    Threads, not asyncio: Playwright's sync API already runs a loop on this one."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import orjson

    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=url, timeout=30.0, limits=limits) as client:
        def post(item: tuple[str, list[dict[str, Any]]]) -> None:
            body = b"".join(orjson.dumps(event) + b"\n" for event in item[1])
            client.post(f"/v1/threads/{item[0]}/events", content=body,
                        headers={"content-type": "application/x-ndjson"}).raise_for_status()

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, threads.items()))


def stamp(ms: float) -> str:
    """An RFC 3339 timestamp (UTC, microseconds) for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def now_ms() -> float:
    return time.time() * 1000


class Turn:
    """Builds one turn's events at chosen times (ms after ``base``)."""

    def __init__(self, turn_id: str, base: float, trace_id: str = TRACE_ID) -> None:
        self.turn_id = turn_id
        self.base = base
        self.trace_id = trace_id
        self.events: list[dict[str, Any]] = []
        self._spans = 0

    def _event(self, kind: str, at: float, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "turn_id": self.turn_id, "timestamp": stamp(self.base + at),
                 "trace_id": self.trace_id, **fields}
        self.events.append(event)
        return event

    def start(self, at: float = 0) -> Turn:
        self._event("turn.started", at, span_id="a" * 16)
        return self

    def end(self, at: float, usage: dict[str, int] | None = None,
            error: dict[str, Any] | None = None) -> Turn:
        fields: dict[str, Any] = {"usage": usage or {"input_tokens": 0, "output_tokens": 0}}
        if error is not None:
            self._event("turn.failed", at, error=error, **fields)
        else:
            self._event("turn.completed", at, **fields)
        return self

    def item(self, item_id: str, kind: str, description: str, start: float,
             end: float | None = None, status: str = "completed", **fields: Any) -> Turn:
        """An item from ``start`` to ``end`` (ms); without ``end`` it is left running."""
        self._spans += 1
        span = f"{self._spans:016x}"
        started = {"id": item_id, "type": kind, "description": description,
                   "status": "in_progress", "started_at": stamp(self.base + start)}
        for key in ("name", "parent_id", "text"):
            if key in fields:
                started[key] = fields[key]
        self._event("item.started", start, item=started, span_id=span)
        if end is not None:
            done = {**started, **fields, "status": status,
                    "completed_at": stamp(self.base + end), "duration_ms": end - start}
            self._event("item.completed", end, item=done, span_id=span)
        return self

    def progress(self, item_id: str, at: float, fraction: float, message: str) -> Turn:
        self._event("progress.update", at, item_id=item_id, fraction=fraction, message=message)
        return self

    def tokens(self, at: float, **usage: int) -> Turn:
        self._event("token.count", at, usage={"input_tokens": 0, "cached_input_tokens": 0,
                                               "output_tokens": 0, **usage})
        return self


def demo_thread(base: float) -> list[dict[str, Any]]:
    """A thread as the demo agent makes it, and more: one turn done, one running with
    nested and concurrent steps, a failure, a cancel, a decline, abandoned work, the
    agent's answer and a step still running with progress."""
    first = (Turn("turn_1", base).start(0)
             .item("p0", "reasoning", "Reading the question", 10, 300,
                   text="The user asks for revenue by region.")
             .end(400, usage={"input_tokens": 1850, "cached_input_tokens": 1024,
                              "output_tokens": 96}))
    rows = [{"region": "EMEA", "revenue": 55044.4}, {"region": "LATAM", "revenue": 54092.55},
            {"region": "APAC", "revenue": 53140.7}, {"region": "AMER", "revenue": 52998.85}]
    answer = "Net revenue last quarter: EMEA 55.0k, LATAM 54.1k, APAC 53.1k, AMER 53.0k."
    second = (Turn("turn_2", base).start(1000)
              .item("plan", "reasoning", "Planning the analysis", 1010, 1310,
                    text="Query revenue by region, check the definitions, chart it.")
              .tokens(1311, input_tokens=1850, cached_input_tokens=1024, output_tokens=96)
              .item("docs", "doc_retrieval", "Looking up how revenue is defined", 1320, 1650,
                    name="docs", output=[{"doc": "revenue-definitions.md", "score": 7}])
              .item("wiki", "web_search", "Searching the wiki", 1330, 1600,
                    parent_id="docs", output={"hits": 3})
              .item("dq", "doc_retrieval", "Reading data-quality.md", 1335, 1500,
                    parent_id="docs", output={"doc": "data-quality.md", "lines": 41})
              .item("legacy", "sql_execution", "Querying legacy_orders by region", 1660, 1700,
                    status="failed", name="sqlite",
                    error={"message": "no such table: legacy_orders",
                           "type": "OperationalError"})
              .item("query", "sql_execution", "Querying net revenue by region", 1710, 2400,
                    name="sqlite", output=rows)
              .item("chart", "chart_generation", "Drawing revenue by region", 2410, 2450,
                    status="cancelled", name="svg_bar_chart")
              .item("pii", "guardrail_check", "Checking the answer for personal data", 2460,
                    2500, status="declined", name="pii")
              .item("rates", "mcp_tool_call", "Fetching exchange rates", 2510, 2600,
                    status="failed", error={"message": "left open when its block ended",
                                            "type": "abandoned"})
              .item("answer", "agent_message", "Answering", 2610, 2620, text=answer)
              .tokens(2621, input_tokens=4250, cached_input_tokens=1024, output_tokens=306)
              .item("export", "command_execution", "Exporting the report", 2630)
              .progress("export", 2700, 0.4, "writing rows"))
    return [{"type": "thread.started", "timestamp": stamp(base)}, *first.events,
            *second.events]


# What a person should never read on the page, and text drawn over other text.
# Visible text: text nodes with a box after clipping by every ancestor that clips
# (overflow, clip-path), which leaves out screen-reader-only text.
_TEXT_PROBLEMS_JS = """
() => {
  const clipOf = (el) => {
    let box = null;
    for (let a = el; a && a !== document.documentElement; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.overflowX !== "visible" || cs.overflowY !== "visible" || cs.clipPath !== "none") {
        const r = a.getBoundingClientRect();
        const inset = cs.clipPath.startsWith("inset(50%") ? r.width / 2 : 0;
        const c = {left: r.left + inset, top: r.top, right: r.right - inset, bottom: r.bottom};
        box = box ? {left: Math.max(box.left, c.left), top: Math.max(box.top, c.top),
                     right: Math.min(box.right, c.right), bottom: Math.min(box.bottom, c.bottom)}
                  : c;
      }
    }
    return box;
  };
  const boxes = [];
  const words = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent;
    const el = node.parentElement;
    if (!text.trim() || !el || el.closest("select, option, script, style")) continue;
    if (!el.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const clip = clipOf(el);
    const rects = [];
    for (const r of range.getClientRects()) {
      let b = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
      if (clip) b = {left: Math.max(b.left, clip.left), top: Math.max(b.top, clip.top),
                     right: Math.min(b.right, clip.right), bottom: Math.min(b.bottom, clip.bottom)};
      if (b.right - b.left > 0.5 && b.bottom - b.top > 0.5) rects.push(b);
    }
    if (!rects.length) continue;
    const bad = text.match(/\\b(null|undefined|NaN)\\b|\\[object Object\\]/);
    if (bad) words.push(`${bad[0]} in ${JSON.stringify(text.slice(0, 80))}`);
    for (const r of rects) boxes.push({r, node, text: text.trim().slice(0, 40)});
  }
  boxes.sort((a, b) => a.r.top - b.r.top);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length && boxes[j].r.top < boxes[i].r.bottom; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.node === b.node) continue;
      const dx = Math.min(a.r.right, b.r.right) - Math.max(a.r.left, b.r.left);
      const dy = Math.min(a.r.bottom, b.r.bottom) - Math.max(a.r.top, b.r.top);
      if (dx > 1.5 && dy > 2.5) {
        overlaps.push(`${JSON.stringify(a.text)} / ${JSON.stringify(b.text)}`);
      }
    }
  }
  return {words, overlaps, texts: boxes.length};
}
"""


def text_problems(page: Any) -> dict[str, Any]:
    """Visible ``null``/``undefined``/``NaN``/``[object Object]``, and overlapping text."""
    result: dict[str, Any] = page.evaluate(_TEXT_PROBLEMS_JS)
    return result


def screenshot(page: Any, name: str) -> Path:
    """The whole page as a window that tall would show it, kept under ``out/page/``.

    The window is made as tall as the page first, and stays so (check the text after):
    rows out of view skip rendering (content-visibility), and a full-page capture of a
    short window would show them blank.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    width = page.viewport_size["width"]
    for _ in range(3):  # the page may grow as rows outside the old window get drawn
        height = page.evaluate("() => document.documentElement.scrollHeight")
        page.set_viewport_size({"width": width, "height": height})
        rendered(page)
        if page.evaluate("() => document.documentElement.scrollHeight") <= height:
            break
    page.screenshot(path=str(path), animations="disabled")
    return path
