"""A small data-analysis agent, observed with otel-events (what ``make demo`` runs).

It answers "What was revenue by region last quarter?" with real work: a SQLite query,
retrieval over the Markdown files in ``examples/docs``, an SVG chart written to disk and a
guardrail check on the answer. One step fails on purpose (a query against a table that
no longer exists) and the agent recovers, as agents do.

While it runs, a subscriber draws live progress in the terminal (rich). Afterwards:

* ``out/events.jsonl``: the event stream, readable by anything that reads
  ``codex exec --json`` output;
* ``out/traces.jsonl``: the spans as OTLP JSON (load it in Jaeger's UI), unless
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, in which case spans and metrics go there.

The model is simulated (fixed token counts and a short think time); everything else is real.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

import otel_events
from otel_events import EventEmitter, ItemType, JsonlSink, Subscription

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("OTEL_EVENTS_DEMO_OUT", HERE.parent / "out"))
THINK = float(os.environ.get("OTEL_EVENTS_DEMO_THINK", "0.3"))  # simulated model latency, s

QUESTION = "What was revenue by region last quarter?"


def make_database() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, region TEXT, amount REAL,"
               " refunded REAL, shipped TEXT)")
    rows = []
    for i in range(1, 401):
        region = ("EMEA", "AMER", "APAC", "LATAM")[i % 4]
        amount = 100 + (i * 37) % 900
        rows.append((i, region, amount, amount * 0.05 if i % 9 == 0 else 0.0,
                     f"2026-{7 + i % 3:02d}-{1 + i % 28:02d}"))
    db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", rows)
    return db


def retrieve(query: str, k: int = 2) -> list[dict[str, Any]]:
    """Keyword retrieval: documents ranked by how many query words they contain."""
    words = {w for w in re.findall(r"[a-z]+", query.lower()) if len(w) > 3}
    scored = []
    for path in sorted((HERE / "docs").glob("*.md")):
        text = path.read_text()
        score = sum(text.lower().count(word) for word in words)
        scored.append({"doc": path.name, "score": score, "excerpt": text.split("\n")[2]})
    return sorted(scored, key=lambda d: -d["score"])[:k]


def bar_chart_svg(data: list[tuple[str, float]], path: Path) -> None:
    """One bar per region, sorted by value, labelled in thousands (the style guide's rules)."""
    width, bar, gap = 480, 28, 12
    top = max(value for _, value in data)
    bars = []
    for i, (label, value) in enumerate(data):
        y = 20 + i * (bar + gap)
        w = int((width - 140) * value / top)
        bars.append(f'<text x="10" y="{y + 19}" font-size="14">{label}</text>'
                    f'<rect x="70" y="{y}" width="{w}" height="{bar}" fill="#1f5fbf"/>'
                    f'<text x="{76 + w}" y="{y + 19}" font-size="12">{value / 1000:.1f}k</text>')
    height = 20 + len(data) * (bar + gap)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
                    f'height="{height}">{"".join(bars)}</svg>\n')


def check_answer(text: str) -> list[str]:
    """The guardrail: no e-mail addresses or card numbers in what we tell the user."""
    found = []
    if re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text):
        found.append("email")
    if re.search(r"\b(?:\d[ -]?){13,16}\b", text):
        found.append("card_number")
    return found


async def run_agent(emitter: EventEmitter, db: sqlite3.Connection) -> str:
    async with emitter.turn() as turn:
        async with turn.item(ItemType.REASONING, "Planning the analysis") as plan:
            await asyncio.sleep(THINK)
            plan.complete(text="Query revenue by region, check the definitions, chart it.")
        turn.add_usage(input_tokens=1850, output_tokens=96, cached_input_tokens=1024)

        async with turn.item(ItemType.DOC_RETRIEVAL, "Looking up how revenue is defined",
                             name="docs") as search:
            search.progress(0.2, "scanning examples/docs")
            docs = retrieve("net revenue region quarterly orders table")
            search.complete(output=docs)

        # The deliberate failure: the old table name, which the data-quality note retired.
        try:
            async with turn.item(ItemType.SQL_EXECUTION, "Querying legacy_orders by region",
                                 name="sqlite"):
                db.execute("SELECT region, SUM(amount) FROM legacy_orders GROUP BY region")
        except sqlite3.OperationalError:
            pass  # recorded as a failed item; the agent retries with the right table

        async with turn.item(ItemType.SQL_EXECUTION, "Querying net revenue by region",
                             name="sqlite") as query:
            rows = db.execute(
                "SELECT region, ROUND(SUM(amount - refunded), 2) AS revenue FROM orders"
                " WHERE shipped BETWEEN '2026-07-01' AND '2026-09-30'"
                " GROUP BY region ORDER BY revenue DESC").fetchall()
            query.complete(output=[{"region": r, "revenue": v} for r, v in rows])

        async with turn.item(ItemType.CHART_GENERATION, "Drawing revenue by region",
                             name="svg_bar_chart") as chart:
            path = OUT / "revenue-by-region.svg"
            bar_chart_svg(rows, path)
            chart.complete(output={"path": str(path.relative_to(OUT.parent)), "bars": len(rows)})

        async with turn.item(ItemType.REASONING, "Writing the answer") as think:
            await asyncio.sleep(THINK)
            answer = "Net revenue last quarter: " + ", ".join(
                f"{region} {value / 1000:.1f}k" for region, value in rows) + "."
            think.complete(text=answer)
        turn.add_usage(input_tokens=2400, output_tokens=210)

        async with turn.item(ItemType.GUARDRAIL_CHECK, "Checking the answer for personal data",
                             name="pii") as guard:
            problems = check_answer(answer)
            if problems:
                guard.fail(f"found {', '.join(problems)}", error_type="pii_found")
            else:
                guard.complete(output={"passed": True})

        async with turn.item(ItemType.AGENT_MESSAGE, "Answering", text=answer):
            pass
        return answer


async def show_progress(subscription: Subscription, console: Console) -> None:
    """Draw one row per item, updated as events arrive."""
    rows: dict[str, list[str]] = {}
    status_style = {"in_progress": "yellow", "completed": "green", "failed": "bold red",
                    "declined": "magenta"}

    def table() -> Table:
        grid = Table(title=QUESTION, expand=True)
        for column in ("item", "type", "what", "status", "ms"):
            grid.add_column(column)
        for item_id, (kind, what, status, ms) in rows.items():
            grid.add_row(item_id, kind, what,
                         f"[{status_style.get(status, 'white')}]{status}[/]", ms)
        return grid

    with Live(table(), console=console, refresh_per_second=12) as live:
        async for entry in subscription:
            event = entry.event
            item = getattr(event, "item", None)
            if item is not None:
                ms = f"{item.duration_ms:.0f}" if item.duration_ms is not None else ""
                rows[item.id] = [item.type, item.description or "", str(item.status), ms]
            elif event.type == "progress.update":
                row = rows.get(getattr(event, "item_id", ""))
                if row is not None:
                    row[2] = f"{row[2]} ({getattr(event, 'message', '')})"
            live.update(table())
            if event.type in ("turn.completed", "turn.failed"):
                return


async def main(events_path: Path, traces_path: Path, remote: bool) -> None:
    console = Console()
    if remote:
        telemetry = otel_events.configure("data-agent")
    else:
        telemetry = otel_events.configure("data-agent", traces_exporter="none",
                                          metrics_exporter="none", traces_file=traces_path)
    emitter = EventEmitter(agent_name="data-agent", sinks=[JsonlSink(events_path)],
                           tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider)
    subscription = emitter.subscribe()
    db = make_database()
    started = time.perf_counter()
    progress = asyncio.create_task(show_progress(subscription, console))
    answer = await run_agent(emitter, db)
    await progress
    emitter.close()
    telemetry.shutdown()
    console.print(f"\n[bold]{answer}[/]")
    console.print(f"Finished in {time.perf_counter() - started:.2f}s. Thread {emitter.thread_id}")
    console.print(f"Events (JSONL):  {events_path}")
    if remote:
        console.print(f"Spans exported to {os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']}")
    else:
        console.print(f"Traces (OTLP JSON, load in Jaeger's UI): {traces_path}")
    console.print(f"Chart: {OUT / 'revenue-by-region.svg'}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    events, traces = OUT / "events.jsonl", OUT / "traces.jsonl"
    events.unlink(missing_ok=True)
    traces.unlink(missing_ok=True)
    asyncio.run(main(events, traces, remote=bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))))
