"""The live page in one command (what ``make live`` runs).

Starts a bridge in this process (in memory, loopback), runs the demo agent of
``examples/data_agent.py`` against it a few times through ``HttpSink`` (one thread
answering twice, then the other runs at once, a thread each), prints the page's
address, and keeps serving until Ctrl-C, so the page can be looked at and shared.

    python examples/live_demo.py [--port 8765] [--runs 4] [--think 1.0]

The agent's model is simulated; ``--think`` is its latency in seconds, long enough by
default to watch the steps run. Spans get real trace ids (the page links each turn to
its trace); they are exported only if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, for
example to the Jaeger the page links to. Nothing is written but the demo's chart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def listening_socket(port: int) -> socket.socket:
    """Loopback, on ``port`` if it is free, else on any free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"the bridge at {url} did not come up")


def run_agents(url: str, runs: int) -> None:
    """The demo agent, ``runs`` times: two turns on one thread, then the rest at once."""
    # Imported here: data_agent reads OTEL_EVENTS_DEMO_THINK when it is imported.
    import data_agent

    import otel_events
    from otel_events import EventEmitter, HttpSink

    data_agent.OUT.mkdir(parents=True, exist_ok=True)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        telemetry = otel_events.configure("data-agent")
    else:
        telemetry = otel_events.configure("data-agent", traces_exporter="none",
                                          metrics_exporter="none")

    def emitter(thread_id: str) -> EventEmitter:
        return EventEmitter(thread_id, agent_name="data-agent", sinks=[HttpSink(url)],
                            tracer_provider=telemetry.tracer_provider,
                            meter_provider=telemetry.meter_provider)

    async def one(thread_id: str, turns: int) -> None:
        agent = emitter(thread_id)
        try:
            for _ in range(turns):
                await data_agent.run_agent(agent, data_agent.make_database())
        finally:
            # The sink delivers what is left; off the loop, where other agents still run.
            await asyncio.to_thread(agent.close, 5.0)

    async def main() -> None:
        stamp = time.strftime("%H%M%S")
        await one(f"data-agent-{stamp}-1", 2 if runs > 1 else 1)
        await asyncio.gather(*(one(f"data-agent-{stamp}-{n}", 1) for n in range(2, runs)))

    asyncio.run(main())
    telemetry.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="The live page, fed by the demo agent.")
    parser.add_argument("--port", type=int, default=8765,
                        help="port (if busy, any free one); 0: any free one")
    parser.add_argument("--runs", type=int, default=4, help="how many times the agent runs")
    parser.add_argument("--think", type=float, default=1.0,
                        help="the simulated model's latency per step, seconds")
    args = parser.parse_args()
    os.environ["OTEL_EVENTS_DEMO_THINK"] = str(args.think)

    from otel_events.bridge import BridgeSettings, create_server

    sock = listening_socket(args.port)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = create_server(BridgeSettings(port=port))

    def feed() -> None:
        wait_until_up(url)
        print(f"Live page: {url}/  (the agent is running; Ctrl-C to stop)", flush=True)
        run_agents(url, args.runs)
        print(f"The agent ran {args.runs} times. Still serving {url}/ until Ctrl-C.",
              flush=True)

    threading.Thread(target=feed, name="demo-agent", daemon=True).start()
    # uvicorn handles Ctrl-C: it ends the page's streams, shuts down, then raises the
    # signal again as KeyboardInterrupt, which is how this demo is meant to end.
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        print("Stopped.")


if __name__ == "__main__":
    main()
