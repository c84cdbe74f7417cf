"""The live page in Chromium with 1,000 threads and a turn of 500 items.

Measured for the page and, as the baseline, the page as it was before the waterfall
(taken from git history, commit ``BASELINE``), each on its own bridge in this process,
both loaded with the same events:

* time to first render: from navigation to the 500th item's row being in the page, and
  to the thread list holding all 1,000 threads (median of a few loads);
* per-event render cost: the CPU time of Chromium's main thread (CDP ``ThreadTime``:
  script, style, layout, paint) per live event while the 500-item turn runs, with the
  cost of the same time without events taken out; events one at a time, then in a
  burst of 500. CPU time, not wall time: the machine may be busy with other work;
* the page's own render times (``performance.measure('otel-events:render')``) and JS heap.

Printed, with ratios to the baseline; nothing is asserted.
Run: ``python benchmarks/bench_page.py`` (about a minute; needs Debian's chromium).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The last commit with the page before issue 11 (a list of lines, redrawn whole).
BASELINE = "cb07dc4"
CHROMIUM = os.environ.get("OTEL_EVENTS_CHROMIUM", "/usr/bin/chromium")
THREADS = 1000
ITEMS = 500
BIG = "agent-big"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def stamp(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def small_thread(n: int, base: float) -> list[dict[str, Any]]:
    """A finished thread of one turn and three items."""
    out: list[dict[str, Any]] = [{"type": "turn.started", "turn_id": "t1",
                                  "timestamp": stamp(base)}]
    for i in range(3):
        item = {"id": f"i{i}", "type": "command_execution", "description": f"step {i} of {n}"}
        out.append({"type": "item.started", "turn_id": "t1", "timestamp": stamp(base + i),
                    "item": {**item, "status": "in_progress"}})
        out.append({"type": "item.completed", "turn_id": "t1",
                    "timestamp": stamp(base + i + 50),
                    "item": {**item, "status": "failed" if n % 50 == i else "completed",
                             "duration_ms": 50.0}})
    out.append({"type": "turn.completed", "turn_id": "t1", "timestamp": stamp(base + 200),
                "usage": {"input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 9}})
    return out


def item_events(n: int, base: float, running: bool = False) -> list[dict[str, Any]]:
    """Item ``n`` of the big turn: every tenth a parent of the nine after it; items
    overlap (each starts 40 ms after the previous and lasts 30 to 400 ms)."""
    start = base + n * 40
    item: dict[str, Any] = {"id": f"big-{n}", "type": "sql_execution" if n % 3 else "reasoning",
                            "description": f"step {n}: query partition {n % 17}",
                            "started_at": stamp(start)}
    if n % 10:
        item["parent_id"] = f"big-{n - n % 10}"
    events: list[dict[str, Any]] = [
        {"type": "item.started", "turn_id": "big", "timestamp": stamp(start),
         "trace_id": TRACE, "item": {**item, "status": "in_progress"}}]
    if not running:
        duration = 30 + (n * 37) % 370
        events.append({"type": "item.completed", "turn_id": "big",
                       "timestamp": stamp(start + duration), "trace_id": TRACE,
                       "item": {**item, "status": "failed" if n % 97 == 5 else "completed",
                                "duration_ms": float(duration), "output": {"rows": n}}})
    return events


def big_thread(base: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"type": "turn.started", "turn_id": "big",
                                     "timestamp": stamp(base), "trace_id": TRACE}]
    for n in range(1, ITEMS + 1):
        events.extend(item_events(n, base, running=n > ITEMS - 5))
    return events


# -- servers ---------------------------------------------------------------------------


def baseline_static() -> Path | None:
    """The page as it was at BASELINE, in a temporary folder (None without git)."""
    folder = Path(tempfile.mkdtemp(prefix="otel-events-page-baseline-"))
    try:
        for name in ("index.html", "app.js", "style.css"):
            text = subprocess.run(
                ["git", "show", f"{BASELINE}:otel_events/bridge/static/{name}"], cwd=ROOT,
                check=True, capture_output=True).stdout
            (folder / name).write_bytes(text)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return folder


def serve(static: Path | None) -> tuple[str, Any, threading.Thread]:
    """A bridge on loopback serving the page from ``static`` (None: the package's)."""
    import uvicorn

    import otel_events.bridge.app as bridge_app
    from otel_events.bridge import BridgeSettings, create_app

    saved = bridge_app._STATIC
    if static is not None:
        bridge_app._STATIC = static  # create_app reads the page from here once
    try:
        app = create_app(BridgeSettings(retention_age=None, idle_expiry=None))
    finally:
        bridge_app._STATIC = saved
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the bridge did not start")
        time.sleep(0.05)
    return url, server, thread


def post_all(url: str, threads: dict[str, list[dict[str, Any]]]) -> None:
    with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=32)) as c:
        def post(item: tuple[str, list[dict[str, Any]]]) -> None:
            body = b"".join(orjson.dumps(e) + b"\n" for e in item[1])
            c.post(f"/v1/threads/{item[0]}/events", content=body,
                   headers={"content-type": "application/x-ndjson"}).raise_for_status()

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(post, threads.items()))


# -- measuring ---------------------------------------------------------------------------

# Records when the last row of the big turn and the 1,000th thread first exist.
_WATCH = """
(() => {
  const seen = {};
  const check = () => {
    const now = performance.now();
    if (!seen.rows && document.querySelector('[data-item-id="big-ITEMS"]')) seen.rows = now;
    if (!seen.threads && document.querySelectorAll('#threads li').length >= THREADS) {
      seen.threads = now;
    }
    if (!seen.rows || !seen.threads) requestAnimationFrame(check);
  };
  window.__bench = seen;
  requestAnimationFrame(check);
})();
""".replace("ITEMS", str(ITEMS)).replace("THREADS", str(THREADS))


def busy(cdp: Any) -> float:
    """CPU seconds the page's main thread has used."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return float(metrics["ThreadTime"])


def heap(cdp: Any) -> float:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return float(metrics["JSHeapUsedSize"])


def measure(browser: Any, url: str, loads: int, live: int, base: float) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": [], "threads": []}
    for _ in range(loads):
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.add_init_script(_WATCH)
        page.goto(f"{url}/?thread={BIG}")
        page.wait_for_function("() => window.__bench.rows && window.__bench.threads",
                               timeout=120_000)
        seen = page.evaluate("() => window.__bench")
        out["rows"].append(seen["rows"])
        out["threads"].append(seen["threads"])
        ctx.close()

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(f"{url}/?thread={BIG}")
    page.wait_for_selector(f'[data-item-id="big-{ITEMS}"]', timeout=120_000)
    page.wait_for_timeout(1000)  # let the first polls and renders settle
    cdp = ctx.new_cdp_session(page)
    cdp.send("Performance.enable")
    out["heap"] = heap(cdp)
    # The cost of time alone (running bars, the 3 s poll of 1,000 threads).
    start, t0 = busy(cdp), time.perf_counter()
    time.sleep(6.0)
    idle_rate = (busy(cdp) - start) / (time.perf_counter() - t0)
    out["idle"] = idle_rate
    client = httpx.Client(base_url=url, timeout=30)

    def post(events: list[dict[str, Any]]) -> None:
        body = b"".join(orjson.dumps(e) + b"\n" for e in events)
        client.post(f"/v1/threads/{BIG}/events", content=body,
                    headers={"content-type": "application/x-ndjson"}).raise_for_status()

    # One event at a time, as an agent reports steps (each post is its own delivery).
    page.evaluate("() => performance.clearMeasures('otel-events:render')")
    applied = int(page.get_attribute("body", "data-applied") or 0)
    start, t0 = busy(cdp), time.perf_counter()
    sent = 0
    for n in range(ITEMS + 1, ITEMS + 1 + live // 2):
        for event in item_events(n, base):
            post([event])
            sent += 1
    page.wait_for_function(f"() => Number(document.body.dataset.applied) >= {applied + sent}")
    elapsed = time.perf_counter() - t0
    out["single"] = ((busy(cdp) - start) - idle_rate * elapsed) / sent
    out["renders"] = page.evaluate(
        "() => performance.getEntriesByName('otel-events:render').map(e => e.duration)")
    # A burst: 500 events in one post (the page draws them in one frame or a few).
    burst: list[dict[str, Any]] = []
    for n in range(ITEMS + 1 + live // 2, ITEMS + 1 + live // 2 + 250):
        burst.extend(item_events(n, base))
    applied = int(page.get_attribute("body", "data-applied") or 0)
    start, t0 = busy(cdp), time.perf_counter()
    post(burst)
    page.wait_for_function(
        f"() => Number(document.body.dataset.applied) >= {applied + len(burst)}")
    page.wait_for_timeout(200)  # the frame that draws them
    elapsed = time.perf_counter() - t0
    out["burst"] = ((busy(cdp) - start) - idle_rate * elapsed) / len(burst)
    client.close()
    ctx.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=3, help="page loads timed (median)")
    parser.add_argument("--live", type=int, default=100, help="live events sent one by one")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: run scripts/install-servers.sh")
    # The big turn runs: it started a minute ago, and its last five items still run.
    base = time.time() * 1000 - 60_000
    threads = {f"thread-{n:04d}": small_thread(n, base - 3_600_000 + n * 1000)
               for n in range(THREADS - 1)}
    threads[BIG] = big_thread(base)
    variants: dict[str, Path | None] = {"page": None}
    old = baseline_static()
    if old is not None:
        variants["baseline"] = old
    else:
        print(f"(no baseline: git cannot show {BASELINE})")
    results: dict[str, dict[str, Any]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        for name, static in variants.items():
            url, server, thread = serve(static)
            post_all(url, threads)
            results[name] = measure(browser, url, args.loads, args.live, base)
            server.should_exit = True
            thread.join(15)
        browser.close()
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    report(results, args)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    page = results["page"]
    old = results.get("baseline")

    def ratio(key: str, agg: Any = statistics.median) -> str:
        if old is None:
            return ""
        a, b = agg(page[key]) if agg else page[key], agg(old[key]) if agg else old[key]
        return f"   baseline {b:9.1f}   ({a / b:.2f}x)" if b else ""

    print(f"Live page: {THREADS:,} threads, the followed one a running turn of {ITEMS} items "
          f"(Chromium, 1280x900; median of {args.loads} loads)")
    print(f"  first render, 500th row in the page, ms     page "
          f"{statistics.median(page['rows']):9.1f}" + ratio("rows"))
    print(f"  thread list, 1,000th row in the page, ms    page "
          f"{statistics.median(page['threads']):9.1f}" + ratio("threads"))
    scale = 1000.0  # s -> ms
    for key, label in [("single", f"per live event, one at a time ({args.live}), ms"),
                       ("burst", "per live event, a burst of 500, ms")]:
        line = f"  {label:<44} page {page[key] * scale:9.3f}"
        if old is not None:
            line += f"   baseline {old[key] * scale:9.3f}   ({page[key] / old[key]:.2f}x)"
        print(line)
    line = f"  {'main thread CPU with no event, ms per s':<44} page {page['idle'] * scale:9.1f}"
    if old is not None:
        line += f"   baseline {old['idle'] * scale:9.1f}"
    print(line)
    line = f"  {'JS heap after load, MiB':<44} page {page['heap'] / 2**20:9.1f}"
    if old is not None:
        line += f"   baseline {old['heap'] / 2**20:9.1f}"
    print(line)
    renders = sorted(page["renders"])
    if renders:
        p95 = renders[int(0.95 * (len(renders) - 1))]
        print(f"  page's own render (script only), ms: median {statistics.median(renders):.2f},"
              f" p95 {p95:.2f}, max {renders[-1]:.2f} over {len(renders)} frames")


if __name__ == "__main__":
    main()
