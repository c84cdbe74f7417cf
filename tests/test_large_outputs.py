"""An output larger than a bridge takes in one request: the event carries its start and
how much was cut, so the step's completion still reaches every reader (before, the whole
``item.completed`` was refused by the bridge, and the live view showed the step running
forever in a turn that had ended)."""

from __future__ import annotations

import orjson

from otel_events import EventEmitter
from otel_events.http_sink import HttpSink
from otel_events.redaction import Content
from tests.bridge_support import running_bridge
from tests.conftest import Telemetry

BIG = "x" * (5 * 2**20)  # past the bridge's default body limit (4 MiB)


def test_a_huge_output_still_completes_its_step_on_the_bridge(telemetry: Telemetry) -> None:
    with running_bridge() as bridge:
        sink = HttpSink(bridge.url)
        emitter = EventEmitter("big", tracer_provider=telemetry.tracer_provider,
                               meter_provider=telemetry.meter_provider, sinks=[sink])
        with emitter.turn() as turn:
            turn.item("command_execution", "dump the table").complete(output=BIG)
        emitter.close(timeout=10.0)
        assert sink.dropped == 0
        state = bridge.client.get("/v1/threads/big").json()
        assert state["status"] == "completed"
        assert [item["status"] for item in state["turns"][0]["items"]] == ["completed"]
    completed = next(orjson.loads(entry.json) for entry in emitter.log.read(1)[0]
                     if entry.type == "item.completed")
    output = completed["item"]["output"]
    limit = Content().max_value_chars
    assert isinstance(output, str) and len(output) < limit + 100
    assert output.endswith(f"...[truncated {len(BIG) + 2 - limit} chars]")
    span = next(s for s in telemetry.spans() if s.name.startswith("execute_tool"))
    assert span.attributes is not None
    assert len(str(span.attributes["otel_events.item.output"])) < 5000  # spans cut as before


def test_messages_and_fields_are_cut_alike() -> None:
    content = Content(max_value_chars=10)
    assert content.encode("short") == '"short"'
    cut = orjson.loads(content.encode({"rows": "y" * 50}))
    assert cut.startswith('{"rows":"y') and cut.endswith("...[truncated 51 chars]")
    assert content.text("z" * 25) == "zzzzzzzzzz...[truncated 15 chars]"
