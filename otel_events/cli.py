"""The ``otel-events`` command: ``schema``, ``ingest``, ``bridge``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Make an AI agent's work observable: events, traces, metrics, SSE.",
                  no_args_is_help=True, add_completion=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of one event of the protocol."""
    from otel_events.protocol import event_json_schema

    sys.stdout.write(orjson.dumps(event_json_schema(), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")

# Where spans and metrics go, and under which names: the same options on every command.
ServiceName = Annotated[
    str | None, typer.Option(help="service.name (else OTEL_SERVICE_NAME).")]
AgentName = Annotated[
    str | None, typer.Option(help="gen_ai.agent.name (else the service name).")]
Endpoint = Annotated[
    str | None, typer.Option(help="OTLP endpoint (else OTEL_EXPORTER_OTLP_ENDPOINT).")]
OtlpProtocol = Annotated[
    str | None, typer.Option(help="grpc or http/protobuf (else OTEL_EXPORTER_OTLP_PROTOCOL).")]
UsageState = Annotated[
    str | None, typer.Option(help="Codex's usage sums per thread, kept across runs, for "
                                  "per-turn usage of resumed sessions "
                                  "(`run`'s default: $XDG_STATE_HOME/otel-events/"
                                  "codex-usage.json).")]


@app.command()
def ingest(
    file: Annotated[str, typer.Argument(help="A Codex JSONL file, or - for stdin.")] = "-",
    service_name: ServiceName = None,
    agent_name: AgentName = None,
    endpoint: Endpoint = None,
    protocol: OtlpProtocol = None,
    usage_state: UsageState = None,
) -> None:
    """Replay a `codex exec --json` stream as OpenTelemetry spans and metrics.

    Bad lines are reported on stderr as `line N: ...`; the rest are still ingested, and
    the exit status is 1 if any line was rejected. Codex reports usage summed over the
    session: a resumed session's stream alone needs `--usage-state` (the file `run`
    keeps, or one shared by earlier ingests) for each turn's own usage.
    """
    from otel_events.config import configure, live_span_delay
    from otel_events.ingest import Ingester, UsageLedger

    # Read from a pipe, spans leave a moment after their turn ends (a live view).
    telemetry = configure(service_name, endpoint=endpoint, protocol=protocol, set_global=False,
                          span_delay_ms=live_span_delay() if file == "-" else None)
    ingester = Ingester.from_providers(telemetry.tracer_provider, telemetry.meter_provider,
                                       agent_name, usage=UsageLedger(usage_state))
    if file == "-":
        result = ingester.feed_lines(sys.stdin)
    else:
        with Path(file).open(encoding="utf-8") as lines:
            result = ingester.feed_lines(lines)
    telemetry.shutdown(timeout=60.0)  # a whole file's spans may still be queued
    for number, error in result.rejected:
        typer.echo(f"line {number}: {error}", err=True)
    typer.echo(f"ingested {result.turns} turns, {result.items} items from {result.lines} lines"
               f" ({len(result.rejected)} rejected); traces: {' '.join(result.trace_ids)}",
               err=True)
    if result.rejected:
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def bridge(ctx: typer.Context) -> None:
    """Run the SSE bridge (needs the [bridge] extra; `otel-events bridge --help`)."""
    # The bridge's stack (FastAPI, uvicorn) loads only when the bridge runs.
    try:
        from otel_events.bridge.command import bridge_command
    except ImportError as exc:
        typer.echo(f"the bridge needs its extra: pip install 'otel-events[bridge]' ({exc})",
                   err=True)
        raise typer.Exit(2) from None
    bridge_app = typer.Typer(add_completion=False)
    bridge_app.command()(bridge_command)
    bridge_app(ctx.args, prog_name="otel-events bridge")


@app.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
def run(
    command: Annotated[list[str], typer.Argument(
        help="The command, after `--`: for example codex exec --json \"...\".")],
    events: Annotated[str | None, typer.Option(
        help="Append the stream to this file, with arrival timestamps added.")] = None,
    bridge: Annotated[str | None, typer.Option(
        help="Post the events to the bridge at this URL as they arrive.")] = None,
    bridge_token: Annotated[str | None, typer.Option(
        envvar="OTEL_EVENTS_BRIDGE_TOKEN", help="The bridge's bearer token.")] = None,
    service_name: ServiceName = None,
    agent_name: AgentName = None,
    endpoint: Endpoint = None,
    protocol: OtlpProtocol = None,
    usage_state: UsageState = None,
) -> None:
    """Run COMMAND and watch its Codex JSONL live: `otel-events run -- codex exec --json "..."`.

    Its stdout passes through unchanged; its events become spans and metrics with the
    times they arrived. Exits with COMMAND's status.
    """
    from otel_events.run import main  # the SDK loads only when a run starts

    raise typer.Exit(main(command, service_name=service_name, agent_name=agent_name,
                          endpoint=endpoint, protocol=protocol, events=events, bridge=bridge,
                          bridge_token=bridge_token, usage_state=usage_state))
